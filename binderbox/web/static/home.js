// The home page: pick a provider and repository, get the launch link and badges.
(function () {
  "use strict";

  var form = document.getElementById("launch-form");
  var host = form.dataset.launchHost;
  var providerEl = document.getElementById("provider");
  var repoEl = document.getElementById("repo");
  var repoLabel = document.getElementById("repo-label");
  var refEl = document.getElementById("ref");
  var refField = document.getElementById("ref-field");
  var pathEl = document.getElementById("path");
  var pathTypeEl = document.getElementById("pathtype");
  var urlEl = document.getElementById("launch-url");
  var mdEl = document.getElementById("badge-md");
  var rstEl = document.getElementById("badge-rst");
  var badgeLink = document.getElementById("badge-link");
  var providers = {};

  // Providers whose repository part is one URL-escaped segment (as BinderHub does).
  var ESCAPED = { gl: true, git: true, ckan: true };
  var STRIP = {
    gh: /^(https?:\/\/)?(www\.)?github\.com\//,
    gist: /^(https?:\/\/)?gist\.github\.com\//,
    gl: /^(https?:\/\/)?gitlab\.com\//
  };

  function current() { return providers[providerEl.value] || {}; }
  function pick(obj, a, b) { return obj ? (obj[a] !== undefined ? obj[a] : obj[b]) : undefined; }

  function refConfig(p) { return p.ref || { enabled: true, default: "HEAD" }; }

  function repoSpec(prefix, repo) {
    repo = repo.trim();
    if (STRIP[prefix]) { repo = repo.replace(STRIP[prefix], ""); }
    if (prefix === "gh" || prefix === "gl") { repo = repo.replace(/\/+$/, "").replace(/\.git$/, ""); }
    return ESCAPED[prefix] ? encodeURIComponent(repo) : repo;
  }

  function launchUrl() {
    var prefix = providerEl.value;
    var repo = repoEl.value.trim();
    if (!prefix || !repo) { return ""; }
    var ref = refConfig(current());
    var url = host + "v2/" + prefix + "/" + repoSpec(prefix, repo);
    if (ref.enabled !== false) {
      url += "/" + (refEl.value.trim() || ref.default || "HEAD");
    }
    var path = pathEl.value.trim();
    if (path) { url += "?" + pathTypeEl.value + "path=" + encodeURIComponent(path); }
    return url;
  }

  function update() {
    var url = launchUrl();
    var badge = host + "badge_logo.svg";
    urlEl.value = url;
    badgeLink.href = url || "#";
    mdEl.value = url ? "[![Binder](" + badge + ")](" + url + ")" : "";
    rstEl.value = url ? ".. image:: " + badge + "\n   :target: " + url : "";
  }

  function onProvider() {
    var p = current();
    var repo = p.repo || {};
    repoLabel.textContent = repo.label || "Repository";
    repoEl.placeholder = repo.placeholder || "";
    var ref = refConfig(p);
    refEl.disabled = ref.enabled === false;
    refField.classList.toggle("disabled", ref.enabled === false);
    refEl.placeholder = ref.default || "HEAD";
    update();
  }

  function fill(list) {
    providerEl.innerHTML = "";
    list.forEach(function (p) {
      providers[p.id] = p;
      var option = document.createElement("option");
      option.value = p.id;
      option.textContent = pick(p, "display_name", "displayName") || p.id;
      providerEl.appendChild(option);
    });
    onProvider();
  }

  fetch(form.dataset.providersUrl, { headers: { Accept: "application/json" } })
    .then(function (r) { return r.json(); })
    .then(fill)
    .catch(function () { fill([{ id: "gh", display_name: "GitHub" }]); });

  providerEl.addEventListener("change", onProvider);
  [repoEl, refEl, pathEl, pathTypeEl].forEach(function (el) {
    el.addEventListener("input", update);
    el.addEventListener("change", update);
  });
  form.addEventListener("submit", function (e) {
    e.preventDefault();
    var url = launchUrl();
    if (!url) { return; }
    // the options menu's size goes with this launch (not into the shared link)
    var size = document.getElementById("menu-size");
    if (size && size.value) {
      url += (url.indexOf("?") < 0 ? "?" : "&") + "size=" + encodeURIComponent(size.value);
    }
    window.location.assign(url);
  });
  document.querySelectorAll("button.copy").forEach(function (button) {
    button.addEventListener("click", function () {
      var target = document.getElementById(button.dataset.copy);
      target.select();
      var done = function () {
        button.textContent = "Copied";
        setTimeout(function () { button.textContent = "Copy"; }, 1500);
      };
      if (navigator.clipboard && window.isSecureContext) {
        navigator.clipboard.writeText(target.value).then(done, function () { document.execCommand("copy"); done(); });
      } else {
        document.execCommand("copy");
        done();
      }
    });
  });
}());
