//! The browser's replica and what the page asks of it, free of any browser API so it is
//! tested natively: render the app's pages from local data, apply the app's form posts
//! locally, and the two halves of syncing with a node over HTTP (push what no node holds yet,
//! pull what the node has that this replica lacks).
//!
//! Persisted state (one blob, written atomically by the page to OPFS):
//! ```text
//! state := "TPEER" version:u8(=1) meta_len:u32le meta:json snapshot
//! meta  := {"pulled": {"<site hex>": db_version, ...}, "pushed_up_to": db_version}
//! ```
//! `pushed_up_to` is this replica's db_version up to which every change is held by some node:
//! changes above it are "waiting to sync". It advances when a node acknowledges a push, and
//! when a pull merges while nothing was waiting (changes that came from a node need not go
//! back to it).

use std::collections::{BTreeMap, BTreeSet};

use app::site::{self, Answer, Context};
use app::{Templates, Todo};
use changeset::http::ChangesPage;
use changeset::sync::{Fetched, page as cut_page};
use changeset::{
    Change, DbVersion, EngineError, PageLimits, Replica, SiteId, SnapshotError, SyncState,
    TableSchema,
};
use serde::{Deserialize, Serialize};

const MAGIC: &[u8; 5] = b"TPEER";
const VERSION_1: u8 = 1;

#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error("saved browser state is not readable: {0}")]
    State(String),
    #[error("saved replica is not readable: {0}")]
    Snapshot(#[from] SnapshotError),
    #[error("replica refused the changes: {0}")]
    Engine(#[from] EngineError),
    #[error("a node's changes page is malformed: {0}")]
    Page(String),
    #[error("template rendering failed: {0}")]
    Render(#[from] app::RenderError),
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Meta {
    pulled: BTreeMap<String, u64>,
    pushed_up_to: u64,
}

/// A page to show: the same HTML a node would answer, with its status.
#[derive(Debug, Serialize)]
pub struct Rendered {
    pub status: u16,
    pub html: String,
}

/// What a form post did: like the node's answer, a redirect (303) or a page (error, 422).
pub type Outcome = Answer;

/// One push to a node: the body of `POST /api/changes` and where to acknowledge up to.
pub use changeset::http::PushBatch;

#[derive(Clone)]
pub struct Peer {
    replica: Replica,
    pulled: SyncState,
    pushed_up_to: DbVersion,
    templates: Templates,
}

/// Where merged changes came from: a node holds them already; another browser may not have
/// given them to any node yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    Node,
    Browser,
}

/// Merges `changes` as a node does: the sender's clock detached, in transactions small enough
/// to push on whole, all or nothing.
fn merge_whole(replica: &mut Replica, changes: &[Change]) -> Result<(), EngineError> {
    let mut changes = changes.to_vec();
    changeset::detach_sender_clock(&mut changes);
    let mut next = replica.clone();
    for chunk in changes.chunks(changeset::MAX_CHANGES_PER_TRANSACTION) {
        next.merge(chunk)?;
    }
    *replica = next;
    Ok(())
}

impl Peer {
    pub fn new(site: SiteId) -> Self {
        Self {
            replica: Replica::new(site, vec![TableSchema::todos()]),
            pulled: SyncState::default(),
            pushed_up_to: DbVersion(0),
            templates: Templates::embedded(),
        }
    }

    pub fn load(bytes: &[u8]) -> Result<Self, PeerError> {
        let rest = bytes
            .strip_prefix(MAGIC.as_slice())
            .ok_or_else(|| PeerError::State("bad magic bytes".into()))?;
        let (&version, rest) = rest
            .split_first()
            .ok_or_else(|| PeerError::State("truncated".into()))?;
        if version != VERSION_1 {
            return Err(PeerError::State(format!(
                "format version {version} is not supported (this build reads {VERSION_1})"
            )));
        }
        let (len, rest) = rest
            .split_first_chunk::<4>()
            .ok_or_else(|| PeerError::State("truncated".into()))?;
        let len = u32::from_le_bytes(*len) as usize;
        if rest.len() < len {
            return Err(PeerError::State("truncated".into()));
        }
        let (meta, snapshot) = rest.split_at(len);
        let meta: Meta =
            serde_json::from_slice(meta).map_err(|e| PeerError::State(e.to_string()))?;
        let pulled = meta
            .pulled
            .iter()
            .map(|(site, v)| {
                site.parse::<SiteId>()
                    .map(|s| (s, DbVersion(*v)))
                    .map_err(|e| PeerError::State(e.to_string()))
            })
            .collect::<Result<SyncState, _>>()?;
        Ok(Self {
            replica: Replica::from_snapshot(snapshot, vec![TableSchema::todos()])?,
            pulled,
            pushed_up_to: DbVersion(meta.pushed_up_to),
            templates: Templates::embedded(),
        })
    }

    pub fn save(&self) -> Vec<u8> {
        let meta = Meta {
            pulled: self
                .pulled
                .watermarks()
                .map(|(s, v)| (s.to_string(), v.0))
                .collect(),
            pushed_up_to: self.pushed_up_to.0,
        };
        let meta = serde_json::to_vec(&meta).unwrap_or_default();
        let mut out = Vec::with_capacity(meta.len() + 64);
        out.extend_from_slice(MAGIC);
        out.push(VERSION_1);
        out.extend_from_slice(&u32::try_from(meta.len()).unwrap_or(u32::MAX).to_le_bytes());
        out.extend_from_slice(&meta);
        out.extend_from_slice(&self.replica.to_snapshot());
        out
    }

    pub fn site_id(&self) -> SiteId {
        self.replica.site_id()
    }

    /// Every todo, in the node's order (created_at, then id).
    pub fn todos(&self) -> Vec<Todo> {
        app::replica::list(&self.replica)
    }

    /// Transactions made or received here that no node has acknowledged yet.
    pub fn pending_changes(&self) -> usize {
        self.replica
            .changes_since(self.pushed_up_to, None)
            .iter()
            .map(|c| c.db_version)
            .collect::<BTreeSet<_>>()
            .len()
    }

    /// The page at `path?query`, as the node would render it, in offline mode.
    pub fn render(&self, path: &str, query: &str, node_name: &str) -> Result<Rendered, PeerError> {
        // A GET changes nothing: the site gets a copy it may not write to.
        let mut replica = self.replica.clone();
        let request = site::Request {
            method: "GET",
            path,
            query,
            content_type: None,
            body: &[],
        };
        let context = offline(node_name, self.pending_changes(), 0, "");
        match answer(request, &mut replica, &self.templates, &context)? {
            Answer::Page { status, html } => Ok(Rendered { status, html }),
            Answer::Redirect { .. } => Err(PeerError::State("a page redirected".into())),
        }
    }

    /// Applies a form post to the local replica, as the node's handler for `path` would
    /// (`app::site::handle`, the node's own code path). `new_id` is used for a new todo whose
    /// form carried no id.
    pub fn submit(
        &mut self,
        path: &str,
        body: &str,
        now_ms: i64,
        new_id: &str,
        node_name: &str,
    ) -> Result<Outcome, PeerError> {
        let request = site::Request {
            method: "POST",
            path,
            query: "",
            content_type: Some("application/x-www-form-urlencoded"),
            body: body.as_bytes(),
        };
        let pending_changes = self.pending_changes();
        answer(
            request,
            &mut self.replica,
            &self.templates,
            &offline(node_name, pending_changes, now_ms, new_id),
        )
    }

    /// The next push: changes above `pushed_up_to`, whole transactions, at most about
    /// `max_changes`. `None` when nothing waits.
    pub fn push_batch(&self, max_changes: usize) -> Option<PushBatch> {
        let changes = self.replica.changes_since(self.pushed_up_to, None);
        if changes.is_empty() {
            return None;
        }
        let limits = PageLimits {
            max_changes: max_changes.max(1),
            ..PageLimits::default()
        };
        let page = cut_page(
            self.site_id(),
            changes,
            self.pushed_up_to,
            Fetched::All {
                current: self.replica.db_version(),
            },
            limits,
        );
        Some(PushBatch::of(&page))
    }

    /// A node merged a push durably: everything up to `up_to` is held by a node now.
    pub fn acknowledge_push(&mut self, up_to: DbVersion) {
        self.pushed_up_to = self.pushed_up_to.max(up_to);
    }

    /// Where to pull from `source` (a node's site id) next.
    pub fn watermark(&self, source: SiteId) -> DbVersion {
        self.pulled.watermark(source)
    }

    /// Merges one page of a node's changes; returns whether more pages follow.
    pub fn receive_page(&mut self, json: &str) -> Result<bool, PeerError> {
        let page = serde_json::from_str::<ChangesPage>(json)
            .map_err(|e| PeerError::Page(e.to_string()))?
            .into_page()
            .map_err(|e| PeerError::Page(e.to_string()))?;
        self.receive(page, Origin::Node)
    }

    /// Merges one page another browser served (`changeset::sync::wire`); whether more follow.
    /// What it brings is not held by a node yet, so it waits to be pushed to one.
    pub fn receive_peer_page(&mut self, wire: &[u8]) -> Result<bool, PeerError> {
        let page =
            changeset::sync::wire::decode_page(wire).map_err(|e| PeerError::Page(e.to_string()))?;
        self.receive(page, Origin::Browser)
    }

    fn receive(&mut self, page: changeset::Page, origin: Origin) -> Result<bool, PeerError> {
        let nothing_waiting = self.pushed_up_to >= self.replica.db_version();
        // The same rule as every node's for what it merges (changeset::validate).
        changeset::validate(&page.changes)
            .and_then(|()| changeset::validate::page_up_to(&page.changes, page.up_to, page.more))
            .map_err(|e| PeerError::Page(e.to_string()))?;
        let replica = &mut self.replica;
        let more = self
            .pulled
            .receive(&page, |changes| merge_whole(replica, changes))?;
        if nothing_waiting && origin == Origin::Node {
            self.pushed_up_to = self.replica.db_version();
        }
        Ok(more)
    }

    /// Answers another browser's sync request (`changeset::sync::wire`) from this replica,
    /// within the limits every receiver accepts.
    pub fn serve_peer(&self, request: &[u8]) -> Result<Vec<u8>, PeerError> {
        let mut request = changeset::sync::wire::decode_request(request)
            .map_err(|e| PeerError::Page(e.to_string()))?;
        request.limits.max_changes = request
            .limits
            .max_changes
            .clamp(1, changeset::MAX_CHANGES_PER_BATCH);
        request.limits.max_bytes = request
            .limits
            .max_bytes
            .min(PageLimits::default().max_bytes);
        Ok(changeset::sync::wire::encode_page(
            &self.replica.serve(&request),
        ))
    }

    /// Merges a transaction another browser pushed (a change batch, `changeset::wire`).
    pub fn merge_pushed(&mut self, batch: &[u8]) -> Result<usize, PeerError> {
        let changes =
            changeset::decode_changes(batch).map_err(|e| PeerError::Page(e.to_string()))?;
        changeset::validate(&changes).map_err(|e| PeerError::Page(e.to_string()))?;
        merge_whole(&mut self.replica, &changes)?;
        Ok(changes.len())
    }

    /// Every change above `since` (this replica's db_version before a write), at most a
    /// batch's worth of whole transactions, encoded as a change batch for pushing to peers;
    /// and the db_version it reaches. `None` when there is nothing.
    pub fn changes_since(&self, since: DbVersion) -> Option<(Vec<u8>, DbVersion)> {
        let changes = self.replica.changes_since(since, None);
        if changes.is_empty() {
            return None;
        }
        let limits = PageLimits {
            max_changes: changeset::MAX_CHANGES_PER_BATCH,
            ..PageLimits::default()
        };
        let current = self.replica.db_version();
        let page = cut_page(
            self.site_id(),
            changes,
            since,
            Fetched::All { current },
            limits,
        );
        Some((changeset::encode_changes(&page.changes), page.up_to))
    }

    pub fn db_version(&self) -> DbVersion {
        self.replica.db_version()
    }
}

fn offline<'a>(
    node_name: &'a str,
    pending_changes: usize,
    now_ms: i64,
    new_id: &'a str,
) -> Context<'a> {
    Context {
        node_name,
        mode: "offline",
        pending_changes,
        now_ms,
        new_id,
    }
}

fn answer(
    request: site::Request<'_>,
    replica: &mut Replica,
    templates: &Templates,
    context: &Context<'_>,
) -> Result<Answer, PeerError> {
    match site::handle(request, replica, templates, context) {
        Ok(answer) => Ok(answer),
        Err(site::SiteError::Render(e)) => Err(PeerError::Render(e)),
        Err(site::SiteError::Store(e)) => site::error_page(
            templates,
            500,
            "Error",
            format!("The change could not be saved in this browser: {e}"),
        )
        .map_err(|e| PeerError::State(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use app::replica::TODOS;
    use changeset::{Value, Write};

    const ID_A: &str = "0192f6a0-7c1e-7aaa-8bbb-00000000000a";
    const ID_B: &str = "0192f6a0-7c1e-7aaa-8bbb-00000000000b";

    fn peer() -> Peer {
        Peer::new(SiteId([7; 16]))
    }

    fn add(peer: &mut Peer, id: &str, title: &str) -> Outcome {
        let body = format!("title={title}&id={id}&return_to=%2F%3Ffilter%3Dactive");
        peer.submit("/todos", &body, 1_000, ID_B, "node-a")
            .expect("submit")
    }

    /// A node as the peer sees it: a replica answering `GET /api/changes?since=`.
    fn node_page(node: &Replica, since: DbVersion) -> String {
        let page = node.serve(&changeset::Request {
            requester: SiteId([0; 16]),
            since,
            limits: PageLimits::default(),
        });
        serde_json::json!({
            "site_id": page.source.to_string(),
            "changes": page.changes,
            "up_to": page.up_to.0,
            "more": page.more,
        })
        .to_string()
    }

    #[test]
    fn form_posts_apply_locally_and_wait_to_sync() {
        let mut p = peer();
        match add(&mut p, ID_A, "buy+milk") {
            Outcome::Redirect { location } => assert_eq!(location, "/?filter=active"),
            other => panic!("expected a redirect, got {other:?}"),
        }
        // The same post again (a replay) does not make a second todo.
        add(&mut p, ID_A, "buy+milk");
        assert_eq!(p.todos().len(), 1);
        p.submit(
            &format!("/todos/{ID_A}/toggle"),
            "completed=1",
            2,
            ID_B,
            "n",
        )
        .expect("toggle");
        assert!(p.todos()[0].completed);
        assert_eq!(p.pending_changes(), 2);

        let page = p.render("/", "filter=completed", "node-a").expect("render");
        assert_eq!(page.status, 200);
        assert!(page.html.contains("buy milk"), "{}", page.html);
        assert!(page.html.contains("banner-offline"));
        assert!(page.html.contains("2 changes waiting to sync"));

        p.submit("/todos/clear-completed", "", 3, ID_B, "n")
            .expect("clear");
        assert!(p.todos().is_empty());
    }

    #[test]
    fn bad_posts_answer_like_the_node() {
        let mut p = peer();
        match p
            .submit("/todos", "title=+++", 1, ID_A, "n")
            .expect("submit")
        {
            Outcome::Page { status, html } => {
                assert_eq!(status, 422);
                assert!(html.contains("A todo needs a title."));
            }
            other => panic!("expected the page again, got {other:?}"),
        }
        let missing = p
            .submit(&format!("/todos/{ID_B}/delete"), "", 1, ID_A, "n")
            .expect("submit");
        assert!(matches!(missing, Outcome::Page { status: 404, .. }));
        let bad_id = p
            .submit("/todos", "title=x&id=not-a-uuid", 1, ID_A, "n")
            .expect("submit");
        assert!(matches!(bad_id, Outcome::Page { status: 400, .. }));
        assert_eq!(p.render("/nope", "", "n").expect("render").status, 404);
        assert_eq!(
            p.render("/", "filter=bogus", "n").expect("render").status,
            400
        );
        assert!(p.todos().is_empty());
        assert_eq!(p.pending_changes(), 0);
    }

    #[test]
    fn saved_state_restores_todos_and_sync_progress() {
        let mut p = peer();
        add(&mut p, ID_A, "one");
        let restored = Peer::load(&p.save()).expect("load");
        assert_eq!(restored.todos(), p.todos());
        assert_eq!(restored.pending_changes(), 1);
        assert_eq!(restored.site_id(), p.site_id());

        assert!(Peer::load(b"TPEER\x09").is_err());
        assert!(Peer::load(b"nonsense").is_err());
        let mut damaged = p.save();
        damaged.truncate(damaged.len() - 3);
        assert!(Peer::load(&damaged).is_err());
    }

    #[test]
    fn push_then_pull_converges_with_a_node_and_clears_pending() {
        let mut p = peer();
        add(&mut p, ID_A, "offline+work");
        let mut node = Replica::new(SiteId([1; 16]), vec![TableSchema::todos()]);
        node.write(&[Write::Insert {
            table: TODOS.into(),
            pk: vec![Value::Text(ID_B.into())],
            values: vec![("title".into(), Value::Text("from the node".into()))],
        }])
        .expect("node write");

        // Push: the node merges the body (as POST /api/changes does) and acknowledges.
        let batch = p.push_batch(1000).expect("something waits");
        #[derive(Deserialize)]
        struct Body {
            changes: Vec<Change>,
        }
        let body: Body = serde_json::from_str(&batch.body).expect("push body");
        node.merge(&body.changes).expect("node merges");
        p.acknowledge_push(batch.up_to);
        assert_eq!(p.pending_changes(), 0);

        // Pull: pages until done; merged node changes are not "waiting".
        let source = node.site_id();
        while p
            .receive_page(&node_page(&node, p.watermark(source)))
            .expect("page")
        {}
        assert_eq!(p.pending_changes(), 0);
        assert!(p.push_batch(1000).is_none());
        assert_eq!(p.replica.rows(TODOS).ok(), node.rows(TODOS).ok());
        assert_eq!(p.todos().len(), 2);

        // A second pull moves nothing and keeps the watermark.
        let before = p.watermark(source);
        assert!(!p.receive_page(&node_page(&node, before)).expect("page"));
        assert_eq!(p.watermark(source), before);
    }

    #[test]
    fn pull_while_work_waits_keeps_it_waiting() {
        let mut p = peer();
        add(&mut p, ID_A, "mine");
        let mut node = Replica::new(SiteId([1; 16]), vec![TableSchema::todos()]);
        node.write(&[Write::Insert {
            table: TODOS.into(),
            pk: vec![Value::Text(ID_B.into())],
            values: vec![("title".into(), Value::Text("theirs".into()))],
        }])
        .expect("node write");
        p.receive_page(&node_page(&node, DbVersion(0)))
            .expect("page");
        assert!(p.pending_changes() >= 1);
        let batch = p.push_batch(1000).expect("mine still waits");
        assert!(batch.body.contains("mine"));
    }

    #[test]
    fn malformed_pages_are_refused_whole() {
        let mut p = peer();
        assert!(p.receive_page("{").is_err());
        let unknown_table = serde_json::json!({
            "site_id": SiteId([1; 16]).to_string(),
            "changes": [{"table": "users", "pk": "010B0161", "cid": "name",
                "val": ["text", "x"], "col_version": 1, "db_version": 1,
                "site_id": SiteId([1; 16]).to_string(), "cl": 1, "seq": 0}],
            "up_to": 1, "more": false,
        });
        assert!(p.receive_page(&unknown_table.to_string()).is_err());
        assert_eq!(p.watermark(SiteId([1; 16])), DbVersion(0));
        assert!(p.todos().is_empty());
    }

    /// Two browsers with no node: each pulls the other's work page by page and hears each
    /// new transaction by push; what came from the other browser waits to go to a node.
    #[test]
    fn two_browsers_sync_with_each_other_and_keep_it_for_a_node() {
        const ID_C: &str = "0190a0b0-0000-7000-8000-00000000000c";
        let mut alice = Peer::new(SiteId([0xA1; 16]));
        let mut bob = Peer::new(SiteId([0xB0; 16]));
        add(&mut alice, ID_A, "from alice");
        let pull = |from: &Peer, to: &mut Peer| {
            let mut rounds = 0;
            loop {
                let request = changeset::sync::wire::encode_request(&changeset::Request {
                    requester: to.site_id(),
                    since: to.watermark(from.site_id()),
                    limits: PageLimits {
                        max_changes: 2,
                        ..PageLimits::default()
                    },
                });
                let page = from.serve_peer(&request).expect("served");
                rounds += 1;
                if !to.receive_peer_page(&page).expect("merged") {
                    return rounds;
                }
            }
        };
        assert!(pull(&alice, &mut bob) >= 1);
        assert_eq!(bob.todos().len(), 1);
        assert!(
            bob.pending_changes() > 0,
            "alice's todo waits for a node at bob's too"
        );

        let before = bob.db_version();
        add(&mut bob, ID_C, "from bob");
        let (batch, _) = bob.changes_since(before).expect("bob's new transaction");
        assert_eq!(
            alice.merge_pushed(&batch).expect("pushed"),
            3,
            "title, completed, created_at"
        );
        let titles = |p: &Peer| {
            let mut t: Vec<String> = p.todos().into_iter().map(|t| t.title).collect();
            t.sort();
            t
        };
        assert_eq!(titles(&alice), ["from alice", "from bob"]);
        assert_eq!(titles(&alice), titles(&bob));
        // Pulling again moves nothing new, and bad bytes are refused whole.
        pull(&bob, &mut alice);
        assert_eq!(titles(&alice), ["from alice", "from bob"]);
        assert!(alice.merge_pushed(b"not a batch").is_err());
        assert!(alice.receive_peer_page(&[1, 2, 3]).is_err());
        assert!(alice.serve_peer(&[9; 29]).is_err());
    }
}
