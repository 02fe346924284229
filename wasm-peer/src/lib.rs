//! The browser peer, compiled to WebAssembly: the todo replica ([`peer::Peer`]) behind a small
//! wasm-bindgen surface for templates/static/app.js, which does the browser's I/O (OPFS,
//! fetch, the DOM). Structured answers cross the boundary as JSON strings, db_versions as
//! numbers (they are below 2^53 by the changeset rules).
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod peer;

use changeset::{DbVersion, SiteId};
use wasm_bindgen::prelude::*;

#[wasm_bindgen(js_name = Peer)]
pub struct WasmPeer(peer::Peer);

#[wasm_bindgen]
pub struct PushBatch {
    body: String,
    up_to: f64,
    changes: usize,
}

#[wasm_bindgen]
impl PushBatch {
    #[wasm_bindgen(getter)]
    pub fn body(&self) -> String {
        self.body.clone()
    }

    #[wasm_bindgen(getter, js_name = upTo)]
    pub fn up_to(&self) -> f64 {
        self.up_to
    }

    #[wasm_bindgen(getter)]
    pub fn changes(&self) -> usize {
        self.changes
    }
}

fn js_err(e: impl std::fmt::Display) -> JsError {
    JsError::new(&e.to_string())
}

fn to_json(value: &impl serde::Serialize) -> Result<String, JsError> {
    serde_json::to_string(value).map_err(js_err)
}

fn version(v: f64) -> DbVersion {
    // db_versions are integers below 2^53; anything else is a caller bug, clamped to 0.
    DbVersion(if v.is_finite() && v >= 0.0 {
        v as u64
    } else {
        0
    })
}

#[wasm_bindgen(js_class = Peer)]
impl WasmPeer {
    /// A new, empty replica with a site id made of 16 random bytes.
    pub fn create(site_id: &[u8]) -> Result<WasmPeer, JsError> {
        let site: [u8; 16] = site_id
            .try_into()
            .map_err(|_| JsError::new("a site id is 16 bytes"))?;
        Ok(Self(peer::Peer::new(SiteId(site))))
    }

    /// The replica saved by [`WasmPeer::save`].
    pub fn load(state: &[u8]) -> Result<WasmPeer, JsError> {
        peer::Peer::load(state).map(Self).map_err(js_err)
    }

    pub fn save(&self) -> Vec<u8> {
        self.0.save()
    }

    #[wasm_bindgen(getter, js_name = siteId)]
    pub fn site_id(&self) -> String {
        self.0.site_id().to_string()
    }

    #[wasm_bindgen(js_name = pendingChanges)]
    pub fn pending_changes(&self) -> usize {
        self.0.pending_changes()
    }

    /// `{"status": 200, "html": "..."}` for the page at `path?query`.
    pub fn render(&self, path: &str, query: &str, node_name: &str) -> Result<String, JsError> {
        to_json(&self.0.render(path, query, node_name).map_err(js_err)?)
    }

    /// Applies a form post; `{"kind": "redirect", "location"}` or `{"kind": "page", "status",
    /// "html"}`.
    pub fn submit(
        &mut self,
        path: &str,
        body: &str,
        now_ms: f64,
        new_id: &str,
        node_name: &str,
    ) -> Result<String, JsError> {
        let outcome = self
            .0
            .submit(path, body, now_ms as i64, new_id, node_name)
            .map_err(js_err)?;
        to_json(&outcome)
    }

    #[wasm_bindgen(js_name = pushBatch)]
    pub fn push_batch(&self, max_changes: usize) -> Option<PushBatch> {
        self.0.push_batch(max_changes).map(|b| PushBatch {
            body: b.body,
            up_to: b.up_to.0 as f64,
            changes: b.changes,
        })
    }

    #[wasm_bindgen(js_name = acknowledgePush)]
    pub fn acknowledge_push(&mut self, up_to: f64) {
        self.0.acknowledge_push(version(up_to));
    }

    pub fn watermark(&self, source_site_id: &str) -> Result<f64, JsError> {
        let site: SiteId = source_site_id.parse().map_err(js_err)?;
        Ok(self.0.watermark(site).0 as f64)
    }

    /// Merges one `GET /api/changes` answer; returns whether more pages follow.
    #[wasm_bindgen(js_name = receivePage)]
    pub fn receive_page(&mut self, json: &str) -> Result<bool, JsError> {
        self.0.receive_page(json).map_err(js_err)
    }

    /// Answers another browser's sync request (bytes in, bytes out: `changeset::sync::wire`).
    #[wasm_bindgen(js_name = servePeer)]
    pub fn serve_peer(&self, request: &[u8]) -> Result<Vec<u8>, JsError> {
        self.0.serve_peer(request).map_err(js_err)
    }

    /// Merges one page another browser served; returns whether more pages follow.
    #[wasm_bindgen(js_name = receivePeerPage)]
    pub fn receive_peer_page(&mut self, page: &[u8]) -> Result<bool, JsError> {
        self.0.receive_peer_page(page).map_err(js_err)
    }

    /// Merges a transaction another browser pushed; returns how many changes it held.
    #[wasm_bindgen(js_name = mergePushed)]
    pub fn merge_pushed(&mut self, batch: &[u8]) -> Result<usize, JsError> {
        self.0.merge_pushed(batch).map_err(js_err)
    }

    /// The replica's db_version: before a write, where to announce it from.
    #[wasm_bindgen(getter, js_name = dbVersion)]
    pub fn db_version(&self) -> f64 {
        self.0.db_version().0 as f64
    }

    /// Changes above `since` as a change batch to push to peers (empty when none).
    #[wasm_bindgen(js_name = changesSince)]
    pub fn changes_since(&self, since: f64) -> Vec<u8> {
        self.0
            .changes_since(version(since))
            .map(|(batch, _)| batch)
            .unwrap_or_default()
    }

    /// Every todo as JSON (for tests and debugging).
    #[wasm_bindgen(js_name = todosJson)]
    pub fn todos_json(&self) -> Result<String, JsError> {
        to_json(&self.0.todos())
    }
}
