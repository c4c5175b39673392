// The launch page: follow /build/<provider>/<spec> live, then open the session.
(function () {
  "use strict";

  var root = document.getElementById("launch");
  var logEl = document.getElementById("log");
  var statusEl = document.getElementById("status");
  var errorEl = document.getElementById("error");
  var stepsEl = document.getElementById("steps");
  var PAGE_ONLY = ["urlpath", "labpath", "filepath"];
  var STEP_OF_PHASE = {
    fetching: "fetching", building: "building", built: "building",
    launching: "launching", ready: "ready"
  };
  var STATUS_OF_PHASE = {
    waiting: "Waiting for a build slot…",
    fetching: "Fetching the repository…",
    building: "Building the environment…",
    built: "Environment ready.",
    launching: "Starting your session…",
    ready: "Ready: opening your session…",
    unknown: null
  };
  var pageParams = new URLSearchParams(window.location.search);
  var finished = false;

  function buildUrl() {
    var params = new URLSearchParams();
    pageParams.forEach(function (value, key) {
      if (PAGE_ONLY.indexOf(key) < 0) { params.append(key, value); }
    });
    if (root.dataset.buildToken) { params.set("build_token", root.dataset.buildToken); }
    // a logged-in visitor's event stream is cookie-authenticated: it carries the xsrf token
    if (root.dataset.xsrf) { params.set("_xsrf", root.dataset.xsrf); }
    var query = params.toString();
    return root.dataset.buildUrl + (query ? "?" + query : "");
  }

  // Where to go inside the session: urlpath, or the legacy labpath / filepath.  A
  // persistent home has the repository in a folder (repoDir): paths of the file
  // browsers are relative to it.
  var TREES = /^(lab\/tree|tree|notebooks|doc\/tree|voila\/render)\//;
  function sessionPath(repoDir) {
    var inRepo = repoDir ? repoDir + "/" : "";
    var urlpath = pageParams.get("urlpath");
    if (urlpath) {
      urlpath = urlpath.replace(/^\/+/, "");
      return inRepo ? urlpath.replace(TREES, function (tree) { return tree + inRepo; }) : urlpath;
    }
    var labpath = pageParams.get("labpath");
    if (labpath) { return "lab/tree/" + inRepo + labpath.replace(/^\/+/, ""); }
    var filepath = pageParams.get("filepath");
    if (filepath) { return "tree/" + inRepo + filepath.replace(/^\/+/, ""); }
    return "";
  }

  function sessionUrl(serverUrl, token, repoDir) {
    var base = new URL(serverUrl, window.location.href);
    if (!/\/$/.test(base.pathname)) { base.pathname += "/"; }
    // "./" keeps the path inside the session (no scheme or host from urlpath)
    var target = new URL("./" + sessionPath(repoDir), base);
    target.searchParams.append("token", token);
    return target.href;
  }

  function appendLog(text, cls) {
    if (!text) { return; }
    var stick = logEl.scrollHeight - logEl.scrollTop - logEl.clientHeight < 40;
    var line = document.createElement("span");
    if (cls) { line.className = cls; }
    line.textContent = /\n$/.test(text) ? text : text + "\n";
    logEl.appendChild(line);
    if (stick) { logEl.scrollTop = logEl.scrollHeight; }
  }

  function showStep(phase) {
    var step = STEP_OF_PHASE[phase];
    if (!step) { return; }
    var items = stepsEl.querySelectorAll("li");
    var reached = false;
    for (var i = items.length - 1; i >= 0; i--) {
      var item = items[i];
      var current = item.dataset.step === step;
      item.classList.toggle("active", current && phase !== "ready");
      item.classList.toggle("done", reached || (current && phase === "ready"));
      if (current) { reached = true; }
    }
  }

  function setStatus(text) { statusEl.textContent = text; }

  function fail(message) {
    finished = true;
    statusEl.classList.remove("busy");
    stepsEl.classList.add("failed");
    setStatus("Launch failed");
    errorEl.textContent = message || "The launch failed.";
    errorEl.hidden = false;
    document.title = "Failed · " + document.title;
  }

  var source = new EventSource(buildUrl());

  function handle(event) {
    var phase = event.phase || "unknown";
    var message = event.message || "";
    showStep(phase);
    if (phase === "failed") {
      source.close();
      appendLog(message, "failed");
      fail(message);
      return;
    }
    if (phase === "building" || phase === "unknown") {
      appendLog(message);
    } else {
      appendLog(message, "phase");
    }
    if (STATUS_OF_PHASE[phase]) { setStatus(message && phase !== "building" ? message : STATUS_OF_PHASE[phase]); }
    if (phase === "ready") {
      finished = true;
      source.close();
      setStatus(STATUS_OF_PHASE.ready);
      window.location.assign(sessionUrl(event.url, event.token, event.repo_dir || ""));
    } else if (phase === "built" && pageParams.get("build_only") === "true") {
      finished = true;
      statusEl.classList.remove("busy");
      source.close();
      setStatus("Built.");
    }
  }

  source.onmessage = function (msg) {
    var event;
    try { event = JSON.parse(msg.data); } catch (e) { return; }
    handle(event);
  };
  source.onerror = function () {
    if (finished) { return; }
    if (source.readyState === EventSource.CLOSED) {
      fail("Lost the connection to the server. Reload the page to try again.");
    } else {
      setStatus("Connection lost, reconnecting…");
    }
  };
}());
