//! Sync with the nodes, sans-IO: what to push to a node, how to take a page it answered, and
//! when to try a node again. The worker does the HTTP (`worker_main`).
//!
//! Per node the edge keeps how far it has pushed (its own db_versions: every change above that
//! mark the node may lack is pushed, in whole transactions, at most [`PUSH_BATCH`] changes per
//! `POST /api/changes`) and how far it has pulled (the node's db_versions, kept per the node's
//! site id, as a browser does). A change is never dropped while a node is down: the marks only
//! move when a node has answered 200 for a push, or when a pulled page has been merged and
//! stored. A node that fails is tried again after 1 s, doubling up to [`MAX_BACKOFF_MS`]; one
//! that answers is synced every `SYNC_INTERVAL_SECS`, and at once after each write.

use changeset::http::{ChangesPage, PushBatch};
use changeset::sync::{Fetched, page as cut_page};
use changeset::{Change, DbVersion, EngineError, PageLimits, Replica, SiteId, SyncState};

/// Changes per push: what the browser pushes too, far under a node's 10,000 and 8 MiB.
pub const PUSH_BATCH: usize = 2_000;
/// The longest wait before trying a failing node again.
pub const MAX_BACKOFF_MS: f64 = 30_000.0;

/// One node, as the edge syncs with it.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeState {
    pub url: String,
    /// The node's site id, learnt from its first page.
    pub site: Option<SiteId>,
    pub pulled: SyncState,
    /// Every change of this replica up to here that the node may lack has been pushed to it.
    pub pushed_up_to: DbVersion,
    /// Failures in a row; 0 while it answers.
    pub failures: u32,
    /// Not before this (ms since the epoch).
    pub next_try_ms: f64,
    pub last_error: Option<String>,
    pub last_ok_ms: Option<f64>,
}

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("unreachable: {0}")]
    Unreachable(String),
    #[error("answered {status}: {body}")]
    Refused { status: u16, body: String },
    #[error("malformed answer: {0}")]
    Malformed(String),
    #[error("could not merge its changes: {0}")]
    Merge(#[from] EngineError),
    #[error("storage: {0}")]
    Storage(String),
}

impl NodeState {
    pub fn new(url: String) -> Self {
        Self {
            url,
            site: None,
            pulled: SyncState::default(),
            pushed_up_to: DbVersion(0),
            failures: 0,
            next_try_ms: 0.0,
            last_error: None,
            last_ok_ms: None,
        }
    }

    /// Where to pull from next (`since`).
    pub fn since(&self) -> DbVersion {
        self.site
            .map_or(DbVersion(0), |site| self.pulled.watermark(site))
    }

    pub fn succeeded(&mut self, now_ms: f64, interval_secs: u64) {
        self.failures = 0;
        self.last_error = None;
        self.last_ok_ms = Some(now_ms);
        self.next_try_ms = now_ms + interval_secs as f64 * 1000.0;
    }

    pub fn failed(&mut self, now_ms: f64, error: &SyncError) {
        self.failures = self.failures.saturating_add(1);
        self.last_error = Some(error.to_string());
        self.next_try_ms = now_ms + backoff_ms(self.failures);
    }

    /// A write happened: a node that answers is synced at once; a failing one keeps its wait.
    pub fn wake(&mut self) {
        if self.failures == 0 {
            self.next_try_ms = 0.0;
        }
    }
}

/// 1 s after the first failure, doubling, at most [`MAX_BACKOFF_MS`].
pub fn backoff_ms(failures: u32) -> f64 {
    let exp = failures.saturating_sub(1).min(16);
    (1000.0 * f64::from(1u32 << exp)).min(MAX_BACKOFF_MS)
}

/// The next push to `node`: changes above its push mark, except those that came from the node
/// itself, in whole transactions. `None` when the node has everything.
pub fn push_batch(replica: &Replica, node: &NodeState) -> Option<PushBatch> {
    let current = replica.db_version();
    if current <= node.pushed_up_to {
        return None;
    }
    let changes: Vec<Change> = replica
        .changes_since(node.pushed_up_to, node.site)
        .into_iter()
        .collect();
    let limits = PageLimits {
        max_changes: PUSH_BATCH,
        ..PageLimits::default()
    };
    let page = cut_page(
        replica.site_id(),
        changes,
        node.pushed_up_to,
        Fetched::All { current },
        limits,
    );
    Some(PushBatch::of(&page))
}

/// What taking a page did.
#[derive(Debug)]
pub enum Received {
    /// Merged: these changes came in (their rows are to be stored); whether more follow.
    Merged { incoming: Vec<Change>, more: bool },
    /// The node answered as another site than before (its data was replaced): the marks for it
    /// start again from 0; ask again.
    NewSite,
}

/// Validates and merges one page `node` answered, as every replica takes changes
/// (`changeset::validate`, the sender's clock detached, whole transactions), and advances the
/// node's pull mark. On error nothing is merged and the mark stays.
pub fn receive_page(
    replica: &mut Replica,
    node: &mut NodeState,
    json: &str,
) -> Result<Received, SyncError> {
    let page = serde_json::from_str::<ChangesPage>(json)
        .map_err(|e| SyncError::Malformed(e.to_string()))?
        .into_page()
        .map_err(|e| SyncError::Malformed(e.to_string()))?;
    if node.site != Some(page.source) {
        let known = node.site.is_some();
        node.site = Some(page.source);
        if known {
            node.pushed_up_to = DbVersion(0);
            node.pulled = SyncState::default();
            return Ok(Received::NewSite);
        }
    }
    changeset::validate(&page.changes)
        .and_then(|()| changeset::validate::page_up_to(&page.changes, page.up_to, page.more))
        .map_err(|e| SyncError::Malformed(e.to_string()))?;
    let more = node
        .pulled
        .receive(&page, |changes| merge_whole(replica, changes).map(drop))?;
    Ok(Received::Merged {
        incoming: page.changes,
        more,
    })
}

/// Merges `changes` as a node does: the sender's clock detached, in transactions small enough
/// to push on whole, all or nothing.
pub fn merge_whole(replica: &mut Replica, changes: &[Change]) -> Result<u64, EngineError> {
    let mut changes = changes.to_vec();
    changeset::detach_sender_clock(&mut changes);
    let mut next = replica.clone();
    let mut impacted = 0;
    for chunk in changes.chunks(changeset::MAX_CHANGES_PER_TRANSACTION) {
        impacted += next.merge(chunk)?;
    }
    *replica = next;
    Ok(impacted)
}

#[cfg(test)]
mod tests {
    use super::*;
    use changeset::{TableSchema, Value, Write};

    fn replica(site: u8) -> Replica {
        Replica::new(SiteId([site; 16]), vec![TableSchema::todos()])
    }

    fn add(r: &mut Replica, id: &str) {
        r.write(&[Write::Insert {
            table: "todos".into(),
            pk: vec![Value::Text(id.into())],
            values: vec![("title".into(), Value::Text(id.into()))],
        }])
        .expect("write");
    }

    fn node_page(node: &Replica, since: DbVersion) -> String {
        let page = node.serve(&changeset::Request {
            requester: SiteId([0; 16]),
            since,
            limits: PageLimits {
                max_changes: 3,
                ..PageLimits::default()
            },
        });
        serde_json::json!({
            "site_id": page.source.to_string(), "changes": page.changes,
            "up_to": page.up_to.0, "more": page.more,
        })
        .to_string()
    }

    #[test]
    fn push_then_pull_converges_and_marks_move() {
        let mut edge = replica(0xED);
        let mut node = replica(1);
        add(&mut edge, "from-edge");
        add(&mut node, "n1");
        add(&mut node, "n2");
        let mut state = NodeState::new("http://n".into());

        let batch = push_batch(&edge, &state).expect("something to push");
        let body: changeset::http::PushBody = serde_json::from_str(&batch.body).expect("body");
        merge_whole(&mut node, &body.changes).expect("node merges");
        state.pushed_up_to = batch.up_to;
        assert!(push_batch(&edge, &state).is_none());

        let mut pages = 0;
        loop {
            pages += 1;
            let json = node_page(&node, state.since());
            match receive_page(&mut edge, &mut state, &json).expect("page") {
                Received::Merged { more: false, .. } => break,
                Received::Merged { .. } => {}
                Received::NewSite => panic!("same node"),
            }
        }
        assert!(pages >= 2, "small pages");
        assert_eq!(edge.rows("todos").ok(), node.rows("todos").ok());
        // What came from the node is not pushed back to it.
        let batch = push_batch(&edge, &state);
        assert!(batch.as_ref().is_none_or(|b| b.changes == 0), "{batch:?}");
    }

    #[test]
    fn a_bad_page_merges_nothing_and_keeps_the_mark() {
        let mut edge = replica(0xED);
        let mut state = NodeState::new("http://n".into());
        assert!(receive_page(&mut edge, &mut state, "{").is_err());
        let forged = serde_json::json!({
            "site_id": SiteId([1; 16]).to_string(),
            "changes": [{"table": "users", "pk": "010B0161", "cid": "name",
                "val": ["text", "x"], "col_version": 1, "db_version": 1,
                "site_id": SiteId([1; 16]).to_string(), "cl": 1, "seq": 0}],
            "up_to": 1, "more": false,
        });
        assert!(receive_page(&mut edge, &mut state, &forged.to_string()).is_err());
        assert_eq!(state.since(), DbVersion(0));
        assert!(edge.changes().is_empty());
    }

    #[test]
    fn failing_nodes_back_off_and_a_write_wakes_only_healthy_ones() {
        assert_eq!(backoff_ms(1), 1000.0);
        assert_eq!(backoff_ms(3), 4000.0);
        assert_eq!(backoff_ms(40), MAX_BACKOFF_MS);
        let mut n = NodeState::new("http://n".into());
        n.failed(100.0, &SyncError::Unreachable("refused".into()));
        n.failed(100.0, &SyncError::Unreachable("refused".into()));
        assert_eq!(n.next_try_ms, 2100.0);
        n.wake();
        assert_eq!(n.next_try_ms, 2100.0);
        n.succeeded(5000.0, 10);
        assert_eq!(n.next_try_ms, 15000.0);
        n.wake();
        assert_eq!(n.next_try_ms, 0.0);
    }
}
