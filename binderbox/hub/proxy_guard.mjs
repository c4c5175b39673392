// binderbox's guard for the Node configurable-http-proxy: a request path the
// proxy cannot route safely gets 400 Bad Request, not 500 and a stack trace.
//
// Why: configurable-http-proxy (5.3.0, the newest release when this was
// written) picks a route with
//     decodeURIComponent(new URL(req.url, "http://example.com").pathname)
// in ConfigurableProxy.targetForReq.  A path with a bad percent-escape (a lone
// "%", "%zz", "%FF", an overlong UTF-8 sequence such as "%C0%AE") makes that
// throw URIError; handleProxy's catch answers 500 and logs the error object,
// stack and all, once per request.  Neither --error-target nor --error-path
// can change that status: both only supply the body of the code the proxy
// chose.  A path whose decoded form holds a NUL (%00) is routed, and
// JupyterHub's static files (/hub/static/) answer it with 500 and a traceback.
//
// What: loaded before the proxy's own code (NODE_OPTIONS="--import=<this
// file>", see binderbox/hub/proxy.py), it wraps handleProxy: a path that the
// proxy's decoding rejects, or that decodes to a NUL, is answered by the
// proxy's own handleProxyError with code 400, i.e. through --error-target (the
// hub's error page) like the proxy's other errors, with one log line and no
// stack.  Every other request goes to the original code unchanged.  The
// proxy's module is found from the script node runs (argv[1], the proxy's
// bin/configurable-http-proxy), so it is the very module instance the proxy
// imports next.  A proxy without the methods this relies on does not start,
// with a plain message in its log.

import { realpathSync } from "node:fs";
import { dirname, join } from "node:path";
import { pathToFileURL } from "node:url";

function refuse(message) {
  console.error(`binderbox proxy guard: ${message}`);
  process.exit(1);
}

let library;
let loaded;
try {
  library = join(dirname(realpathSync(process.argv[1])), "..", "lib", "configproxy.js");
  loaded = await import(pathToFileURL(library).href);
} catch (error) {
  refuse(`cannot load the proxy's lib/configproxy.js next to ${process.argv[1]}: ${error.message}`);
}
const proto = (loaded.ConfigurableProxy ?? loaded.default)?.prototype;
if (typeof proto?.handleProxy !== "function" || typeof proto?.handleProxyError !== "function") {
  refuse(`${library} has no ConfigurableProxy.handleProxy/handleProxyError: unsupported version`);
}

// true when the proxy's own route lookup can decode the path of `url`, and
// the decoded path holds no NUL (no file or URL path can; JupyterHub's static
// file handler answers one with 500 and a traceback)
function routable(url) {
  try {
    return !decodeURIComponent(new URL(url, "http://example.com").pathname).includes("\0");
  } catch {
    return false;
  }
}

const handleProxy = proto.handleProxy;
// kind is "web" (req, res) or "ws" (req, socket, head)
proto.handleProxy = function (kind, req, res, ...rest) {
  if (routable(req.url)) {
    return handleProxy.call(this, kind, req, res, ...rest);
  }
  this.handleProxyError(400, kind, req, res);
  if (kind === "ws" && !res.destroyed) {
    res.end(); // the proxy's ws error path leaves closing the socket to http-proxy
  }
  return Promise.resolve();
};
