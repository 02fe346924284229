// The service worker: keeps the app openable when no node answers.
//
// Pages (navigations) go to the network first; when the node does not answer (a network error,
// or no answer within the timeout) the cached app shell is served instead, and the page's
// script renders the list from the replica kept in this browser. A form posted while the node
// is down is handed to the shell with its fields, so the action is applied locally: nothing
// typed is lost. Static files are served from the cache of this worker's version; the node
// puts a digest of every asset into VERSION, so a deploy installs a new worker that replaces
// the old cache.
const VERSION = "__BUILD_VERSION__";
const CACHE_PREFIX = "todo-shell-";
const CACHE = CACHE_PREFIX + VERSION;
const SHELL = "/static/shell.html";
const PRECACHE = [
  SHELL,
  "/static/style.css",
  "/static/app.js",
  "/static/wasm/wasm_peer.js",
  "/static/wasm/wasm_peer_bg.wasm",
  // Only pages in offline mode load the peer-to-peer module; it is cached for them.
  "/static/wasm/browser_p2p.js",
  "/static/wasm/browser_p2p_bg.wasm",
  "/static/manifest.webmanifest",
  "/static/icons/icon.svg",
  "/static/icons/icon-192.png",
  "/static/icons/icon-512.png",
  "/static/icons/icon-maskable-512.png",
];
// A node that has not answered a page within this long is treated as down: long enough for a
// busy node, short enough that a user does not give up first.
const PAGE_TIMEOUT_MS = 4000;
// Form posts get longer: a slow answer is better than a local copy of the action.
const POST_TIMEOUT_MS = 10000;

self.addEventListener("install", (event) => {
  event.waitUntil(
    (async () => {
      const cache = await caches.open(CACHE);
      await cache.addAll(PRECACHE.map((url) => new Request(url, { cache: "reload" })));
      await self.skipWaiting();
    })(),
  );
});

self.addEventListener("activate", (event) => {
  event.waitUntil(
    (async () => {
      for (const key of await caches.keys()) {
        if (key.startsWith(CACHE_PREFIX) && key !== CACHE) await caches.delete(key);
      }
      await self.clients.claim();
    })(),
  );
});

self.addEventListener("fetch", (event) => {
  const request = event.request;
  const url = new URL(request.url);
  if (url.origin !== self.location.origin) return;
  if (request.mode === "navigate") {
    event.respondWith(navigate(request));
  } else if (request.method === "GET" && PRECACHE.includes(url.pathname)) {
    event.respondWith(cacheFirst(request));
  }
});

async function navigate(request) {
  const post = request.method === "POST";
  const fields = post ? await request.clone().text() : null;
  try {
    return await withTimeout(fetch(request), post ? POST_TIMEOUT_MS : PAGE_TIMEOUT_MS);
  } catch (error) {
    return offlineShell(new URL(request.url).pathname, fields);
  }
}

async function cacheFirst(request) {
  const cached = await caches.match(request, { cacheName: CACHE, ignoreSearch: true });
  return cached || fetch(request);
}

// The shell, with the fields of a form post that did not reach the node (a JSON data block,
// which the page's script applies to the local replica).
async function offlineShell(path, fields) {
  const shell = await caches.match(SHELL, { cacheName: CACHE });
  if (!shell) return Response.error();
  let html = await shell.text();
  if (fields !== null) {
    const data = JSON.stringify({ action: path, fields }).replace(/</g, "\\u003c");
    html = html.replace("<!--replay-->", `<script type="application/json" id="replay">${data}</script>`);
  }
  const headers = new Headers(shell.headers);
  headers.delete("Content-Length");
  headers.delete("ETag");
  return new Response(html, { status: 200, headers });
}

function withTimeout(promise, ms) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no answer within ${ms} ms`)), ms);
    promise.then(
      (value) => {
        clearTimeout(timer);
        resolve(value);
      },
      (error) => {
        clearTimeout(timer);
        reject(error);
      },
    );
  });
}
