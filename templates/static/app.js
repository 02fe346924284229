// The page's enhancement: keeps a replica of the todos in this browser and takes over when the
// node stops answering. Every page works without it (plain forms, server-rendered).
//
// Server mode (the node rendered this page): sync with the node every few seconds (push what
// waits, pull what is new), so the replica is current when the node dies. If a sync fails, the
// page switches to offline mode in place.
// Offline mode (the service worker served the cached shell, or a sync failed): the wasm peer
// renders the same templates from the replica; forms and filter links are applied locally; the
// known nodes are probed, and when one answers, the waiting changes are pushed, the missed ones
// pulled, and the page returns to server mode by itself.
//
// Peer-to-peer (offline mode only; a page in server mode never downloads it): the browser's
// libp2p peer (browser-p2p) reserves a slot on the deployment's relays, finds the other browsers
// there by rendezvous (and redials those it met before), and syncs this replica with them and
// with any node it reaches over libp2p. Changes from other browsers wait in the replica and are
// pushed to a node when one answers again.
//
// The replica is one blob in OPFS (localStorage when OPFS is missing), read and written under a
// Web Lock, so tabs of the same origin never overwrite each other's changes.
import init, { Peer } from "/static/wasm/wasm_peer.js";

const STATE_FILE = "todo-replica.v1";
const LOCK = "todo-replica";
const KNOWN_NODES_KEY = "todo-known-nodes";
const NODE_NAME_KEY = "todo-node-name";
// What the node told about peer-to-peer: {deployment, relays: [multiaddr], nodes: [peer id],
// direct: [multiaddr of a node's WebSocket listener]}.
const P2P_CONFIG_KEY = "todo-p2p-config";
// This browser's libp2p identity (protobuf, base64), and the peers it met (peer ids).
const P2P_KEY_KEY = "todo-p2p-key";
const P2P_PEERS_KEY = "todo-p2p-peers";
// STUN server URLs for direct WebRTC between browsers (JSON array); none by default.
const P2P_STUN_KEY = "todo-p2p-stun";
// Only one tab of an origin runs the libp2p peer (they share the identity and the replica).
const P2P_LOCK = "todo-p2p";
// How often a page in server mode syncs with its node. Also how long, at worst, a change made
// on another node takes to reach this browser's replica.
const SYNC_INTERVAL_MS = 2000;
// How often an offline page probes the known nodes: the time from a node's return to server mode.
const PROBE_INTERVAL_MS = 1000;
const HEALTH_TIMEOUT_MS = 2000;
const TRANSFER_TIMEOUT_MS = 15000;
const PUSH_MAX_CHANGES = 2000;

const status = {
  mode: document.body.hasAttribute("data-shell") ? "offline" : "server",
  storage: null,
  ready: false,
  lastSync: null,
  lastError: null,
  pending: 0,
};
// The offline probe's timer, and whether a probe is under way.
let probing = null;
let probeRunning = false;

// For people debugging, and for the browser tests.
window.todoApp = status;
status.replicaTodos = () => withPeer((p) => JSON.parse(p.todosJson()));
// The libp2p peer, once started (offline mode).
let p2p = null;
status.p2p = () => (p2p ? JSON.parse(p2p.status()) : null);
// The peer's last log lines (it logs to the console as "p2p: …"), for people debugging and
// for the browser tests' failure messages.
status.p2pLog = [];
for (const level of ["info", "warn"]) {
  const original = console[level].bind(console);
  console[level] = (...args) => {
    if (typeof args[0] === "string" && args[0].startsWith("p2p: ")) {
      status.p2pLog.push(`${new Date().toISOString().slice(11, 23)} ${args[0]}`);
      if (status.p2pLog.length > 100) status.p2pLog.shift();
    }
    original(...args);
  };
}

const storage = await openStorage();
status.storage = storage.kind;
await init();

if (navigator.serviceWorker) {
  navigator.serviceWorker.register("/sw.js").catch((e) => console.warn("service worker not registered:", e));
}
navigator.storage?.persist?.().catch(() => {});
rememberNode(location.origin);

document.addEventListener("submit", onSubmit);
document.addEventListener("click", onClick);
window.addEventListener("popstate", () => status.mode === "offline" && renderLocal());
window.addEventListener("online", () => status.mode === "offline" && probe());

if (status.mode === "offline") {
  await startOffline();
} else {
  await syncRound();
  status.ready = true;
  setInterval(syncRound, SYNC_INTERVAL_MS);
}

// --- storage -------------------------------------------------------------------------------

async function openStorage() {
  try {
    const root = await navigator.storage.getDirectory();
    return {
      kind: "opfs",
      async read() {
        try {
          const file = await (await root.getFileHandle(STATE_FILE)).getFile();
          return new Uint8Array(await file.arrayBuffer());
        } catch (e) {
          if (e.name === "NotFoundError") return null;
          throw e;
        }
      },
      // createWritable writes a swap file and swaps it in on close: a crash leaves the old
      // state or the new one, never half of each.
      async write(bytes) {
        const handle = await root.getFileHandle(STATE_FILE, { create: true });
        const writable = await handle.createWritable();
        await writable.write(bytes);
        await writable.close();
      },
    };
  } catch (e) {
    console.warn("OPFS unavailable, keeping the replica in localStorage:", e);
    return {
      kind: "localStorage",
      async read() {
        const text = localStorage.getItem(STATE_FILE);
        return text === null ? null : Uint8Array.from(atob(text), (c) => c.charCodeAt(0));
      },
      async write(bytes) {
        let text = "";
        for (let i = 0; i < bytes.length; i += 0x8000) {
          text += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
        }
        localStorage.setItem(STATE_FILE, btoa(text));
      },
    };
  }
}

async function loadPeer() {
  const bytes = await storage.read();
  if (bytes) {
    try {
      return Peer.load(bytes);
    } catch (e) {
      // Never silently drop data: keep the unreadable state beside the new one.
      console.error("the saved replica is unreadable; keeping it aside and starting afresh:", e);
      localStorage.setItem(`${STATE_FILE}.unreadable-${Date.now()}`, String(e));
    }
  }
  return Peer.create(crypto.getRandomValues(new Uint8Array(16)));
}

// Runs `fn` on the replica under the lock; with `save`, writes the replica back before the lock
// is released (so a change is durable before the page shows it).
function withPeer(fn, { save = false } = {}) {
  return navigator.locks.request(LOCK, async () => {
    const peer = await loadPeer();
    try {
      const result = fn(peer);
      if (save) await storage.write(peer.save());
      status.pending = peer.pendingChanges();
      return result;
    } finally {
      peer.free();
    }
  });
}

// --- sync with a node ----------------------------------------------------------------------

async function fetchWithTimeout(url, options, ms) {
  const controller = new AbortController();
  const timer = setTimeout(() => controller.abort(), ms);
  try {
    return await fetch(url, { ...options, signal: controller.signal, cache: "no-store" });
  } finally {
    clearTimeout(timer);
  }
}

async function expectOk(response, what) {
  if (!response.ok) throw new Error(`${what}: ${response.status} ${await response.text()}`);
  return response;
}

// One round with the node at `base` ("" is this page's origin): push everything waiting, then
// pull until the node has nothing more. Throws if the node does not answer.
async function syncWith(base) {
  const health = await (
    await expectOk(await fetchWithTimeout(`${base}/health`, {}, HEALTH_TIMEOUT_MS), "health")
  ).json();
  localStorage.setItem(NODE_NAME_KEY, health.node_name);
  for (;;) {
    const batch = await withPeer((p) => {
      const b = p.pushBatch(PUSH_MAX_CHANGES);
      if (!b) return null;
      const out = { body: b.body, upTo: b.upTo, changes: b.changes };
      b.free();
      return out;
    });
    if (!batch) break;
    const options = { method: "POST", headers: { "Content-Type": "application/json" }, body: batch.body };
    await expectOk(await fetchWithTimeout(`${base}/api/changes`, options, TRANSFER_TIMEOUT_MS), "push");
    await withPeer((p) => p.acknowledgePush(batch.upTo), { save: true });
    console.info(`pushed ${batch.changes} changes to ${base || location.origin}`);
  }
  for (;;) {
    const since = await withPeer((p) => p.watermark(health.site_id));
    const page = await (
      await expectOk(await fetchWithTimeout(`${base}/api/changes?since=${since}`, {}, TRANSFER_TIMEOUT_MS), "pull")
    ).text();
    const more = await withPeer((p) => p.receivePage(page), { save: true });
    if (!more) break;
  }
  if (base === "") await learnNodes();
  status.lastSync = Date.now();
  status.lastError = null;
  return health;
}

async function syncRound() {
  if (status.mode !== "server") return;
  try {
    await syncWith("");
  } catch (e) {
    status.lastError = String(e);
    if (status.mode === "server") {
      console.warn("the node does not answer; working offline:", e);
      await startOffline();
    }
  }
}

// --- offline mode --------------------------------------------------------------------------

async function startOffline() {
  status.mode = "offline";
  const replay = document.getElementById("replay");
  if (replay) {
    // A form post that the node did not get: apply it here, then show where it leads.
    const { action, fields } = JSON.parse(replay.textContent);
    replay.remove();
    await applyLocally(action, fields, { replace: true });
  } else {
    await renderLocal();
  }
  status.ready = true;
  if (!probing) probing = setInterval(probe, PROBE_INTERVAL_MS);
  startP2p().catch((e) => console.warn("peer-to-peer not started:", e));
}

// --- peer-to-peer (offline mode) ------------------------------------------------------------

function bytesToBase64(bytes) {
  return btoa(String.fromCharCode(...bytes));
}

function base64ToBytes(text) {
  return Uint8Array.from(atob(text), (c) => c.charCodeAt(0));
}

async function startP2p() {
  if (p2p) return;
  const config = JSON.parse(localStorage.getItem(P2P_CONFIG_KEY) || "null");
  if (!config || config.relays.length === 0) {
    console.info("peer-to-peer: no relay known yet (a node tells them once it serves a page)");
    return;
  }
  // Held for the life of the page: another tab of this origin runs the peer meanwhile.
  navigator.locks.request(P2P_LOCK, { ifAvailable: true }, async (lock) => {
    if (!lock) {
      console.info("peer-to-peer runs in another tab");
      return;
    }
    const { default: initP2p, P2p } = await import("/static/wasm/browser_p2p.js");
    await initP2p();
    let key = localStorage.getItem(P2P_KEY_KEY);
    if (!key) {
      key = bytesToBase64(P2p.newKey());
      localStorage.setItem(P2P_KEY_KEY, key);
    }
    const siteId = await withPeer((p) => p.siteId);
    const remembered = JSON.parse(localStorage.getItem(P2P_PEERS_KEY) || "[]");
    p2p = P2p.start({
      key: base64ToBytes(key),
      deployment: config.deployment,
      siteId,
      relays: config.relays,
      direct: config.direct || [],
      knownPeers: [...remembered, ...config.nodes.filter((n) => !remembered.includes(n))],
      serve: (request) => withPeer((p) => p.servePeer(request)),
      receive: (page) => mergeFromPeer((p) => p.receivePeerPage(page)),
      merge: (batch) => mergeFromPeer((p) => p.mergePushed(batch)),
      watermark: (site) => withPeer((p) => p.watermark(site)),
      remember: (peers) => localStorage.setItem(P2P_PEERS_KEY, JSON.stringify(peers)),
      // STUN servers for WebRTC between browsers (none: host candidates only, which is enough
      // on one machine or LAN). E.g. ["stun:stun.l.google.com:19302"].
      stunServers: JSON.parse(localStorage.getItem(P2P_STUN_KEY) || "[]"),
    });
    await new Promise(() => {}); // keep the lock while the page lives
  });
}

// Merges what a peer sent (saved before it is shown); the page is rendered again only when it
// changed the replica.
async function mergeFromPeer(merge) {
  const { result, changed } = await withPeer(
    (p) => {
      const before = p.dbVersion;
      const result = merge(p);
      return { result, changed: p.dbVersion !== before };
    },
    { save: true },
  );
  if (changed) scheduleRender();
  return result;
}

// Shows what peers brought. What the user is typing stays: the new-todo field is carried over
// into the new page as it is (same element, value and focus); and while it has something typed
// in it and the focus, the page waits (up to 3 s), so the user's next click lands on the page
// they see.
let renderTimer = null;
function scheduleRender(waited = 0) {
  if (status.mode !== "offline" || renderTimer) return;
  renderTimer = setTimeout(async () => {
    renderTimer = null;
    const typing = document.getElementById("new-title");
    if (typing && document.activeElement === typing && typing.value && waited < 3000) {
      scheduleRender(waited + 300);
      return;
    }
    await renderLocal({ keepTyping: true });
  }, waited === 0 ? 100 : 300);
}

function nodeName() {
  return localStorage.getItem(NODE_NAME_KEY) || "";
}

async function renderLocal({ keepTyping = false } = {}) {
  const json = await withPeer((p) => p.render(location.pathname, location.search.slice(1), nodeName()));
  show(JSON.parse(json).html, { keepTyping });
}

function show(html, { keepTyping = false } = {}) {
  const doc = new DOMParser().parseFromString(html, "text/html");
  document.title = doc.title;
  const typing = keepTyping ? document.getElementById("new-title") : null;
  const focused = typing && document.activeElement === typing;
  const body = document.adoptNode(doc.body);
  const slot = typing && body.querySelector("#new-title");
  if (slot) slot.replaceWith(typing);
  document.body.replaceWith(body);
  if (focused) typing.focus();
  else if (!keepTyping) document.querySelector("[autofocus]")?.focus();
}

// Adds many todos in one local transaction (offline mode), pushed to peers like any other: how
// the browser tests and figures make a sync of a megabyte or more. Returns the batch's size.
status.addTodos = async (titles) => {
  const batch = await withPeer(
    (p) => {
      const before = p.dbVersion;
      for (const title of titles) {
        const body = new URLSearchParams({ title, id: uuidv7() }).toString();
        p.submit("/todos", body, Date.now(), uuidv7(), nodeName());
      }
      return p.changesSince(before);
    },
    { save: true },
  );
  if (p2p && batch.length > 0) p2p.announce(batch);
  scheduleRender();
  return batch.length;
};

async function applyLocally(action, fields, { replace = false } = {}) {
  const { json, batch } = await withPeer(
    (p) => {
      const before = p.dbVersion;
      const json = p.submit(action, fields, Date.now(), uuidv7(), nodeName());
      return { json, batch: p.changesSince(before) };
    },
    { save: true },
  );
  if (p2p && batch.length > 0) p2p.announce(batch);
  const outcome = JSON.parse(json);
  if (outcome.kind === "redirect") {
    const same = location.pathname + location.search === outcome.location;
    history[replace || same ? "replaceState" : "pushState"](null, "", outcome.location);
    await renderLocal();
  } else {
    show(outcome.html);
  }
}

async function probe() {
  if (probeRunning || status.mode !== "offline") return;
  probeRunning = true;
  try {
    for (const base of knownNodes()) {
      try {
        await syncWith(base === location.origin ? "" : base);
      } catch (e) {
        status.lastError = `${base}: ${e}`;
        continue; // not answering: try the next one
      }
      clearInterval(probing);
      probing = null;
      status.mode = "returning";
      if (base === location.origin) {
        location.reload();
      } else {
        location.assign(base + location.pathname + location.search);
      }
      return;
    }
  } finally {
    probeRunning = false;
  }
}

// --- events --------------------------------------------------------------------------------

function onSubmit(event) {
  const form = event.target;
  if (!(form instanceof HTMLFormElement)) return;
  const action = new URL(form.action).pathname;
  // A new todo gets its id here, so a post that is retried or replayed makes one todo.
  if (action === "/todos") {
    let id = form.querySelector('input[name="id"]');
    if (!id) {
      id = Object.assign(document.createElement("input"), { type: "hidden", name: "id" });
      form.append(id);
    }
    id.value = uuidv7();
  }
  if (status.mode !== "offline") return; // the browser posts it to the node
  event.preventDefault();
  applyLocally(action, new URLSearchParams(new FormData(form)).toString()).catch((e) =>
    console.error("could not apply the change locally:", e),
  );
}

function onClick(event) {
  if (status.mode !== "offline" || event.defaultPrevented || event.button !== 0) return;
  if (event.metaKey || event.ctrlKey || event.shiftKey || event.altKey) return;
  const link = event.target.closest?.("a[href]");
  if (!link) return;
  const url = new URL(link.href);
  if (url.origin !== location.origin) return;
  event.preventDefault();
  history.pushState(null, "", url.pathname + url.search);
  renderLocal();
}

// --- known nodes ---------------------------------------------------------------------------

function knownNodes() {
  let nodes = [];
  try {
    nodes = JSON.parse(localStorage.getItem(KNOWN_NODES_KEY) || "[]");
  } catch {
    nodes = [];
  }
  return [location.origin, ...nodes.filter((n) => n !== location.origin)];
}

// The other nodes of the deployment, from this node's peers: where to fail over to.
async function learnNodes() {
  try {
    const peers = await (await fetchWithTimeout("/api/peers", {}, HEALTH_TIMEOUT_MS)).json();
    for (const peer of peers.peers || []) if (peer.public_url) rememberNode(peer.public_url);
    // The deployment's edge workers come after its nodes: the last place to fail over to.
    for (const edge of peers.edges || []) rememberNode(edge);
    const relays = (peers.relays || []).flatMap((r) => r.browser_addrs || []);
    if (peers.deployment && relays.length > 0) {
      const nodes = [peers.peer_id, ...(peers.peers || []).map((p) => p.peer_id)];
      // Nodes that listen on WebSocket can be dialled directly, without the relay.
      const direct = [...(peers.browser_addrs || []), ...(peers.peers || []).flatMap((p) => p.browser_addrs || [])];
      localStorage.setItem(P2P_CONFIG_KEY, JSON.stringify({ deployment: peers.deployment, relays, nodes, direct }));
    }
  } catch (e) {
    console.debug("could not list the other nodes:", e);
  }
}

function rememberNode(origin) {
  const nodes = knownNodes();
  if (!nodes.includes(origin)) nodes.push(origin);
  localStorage.setItem(KNOWN_NODES_KEY, JSON.stringify(nodes));
}

function uuidv7() {
  const b = crypto.getRandomValues(new Uint8Array(16));
  let ms = Date.now();
  for (let i = 5; i >= 0; i--) {
    b[i] = ms % 256;
    ms = Math.floor(ms / 256);
  }
  b[6] = (b[6] & 0x0f) | 0x70;
  b[8] = (b[8] & 0x3f) | 0x80;
  const h = Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}
