//! The app as a Cloudflare Worker: the edge.
//!
//! The worker itself only forwards each request to one Durable Object, [`EdgeReplica`], which
//! holds the edge's replica (a `changeset` replica, its change log kept as rows in the
//! object's SQLite storage: [`store`]) and answers as a node does: the pages and form actions
//! through `app::site::handle` (the node's and the browser peer's own code path), and the JSON
//! API `/health`, `/api/todos`, `/api/changes` (GET and POST) and `/api/peers` ([`api`]). The
//! PWA's static files and `/sw.js` are the node's own assets, exported by `todo-export-assets`
//! and served by the platform from wrangler.toml's `[assets]`.
//!
//! The edge is a peer like a browser: it pushes what the nodes lack (`POST /api/changes`) and
//! pulls what it lacks (`GET /api/changes?since=`) on every write and on the object's alarm,
//! every `SYNC_INTERVAL_SECS`, with a backoff per node that fails ([`sync`]). Settings come
//! from wrangler.toml's `[vars]`: `NODE_URLS`, `DEPLOYMENT`, `EDGE_NAME`,
//! `SYNC_INTERVAL_SECS` ([`config`]).
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod api;
pub mod config;
pub mod store;
pub mod sync;

#[cfg(target_arch = "wasm32")]
mod worker_main;

#[cfg(target_arch = "wasm32")]
pub use worker_main::EdgeReplica;
