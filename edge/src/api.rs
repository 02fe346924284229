//! The edge's JSON API, as a node answers it (same paths, fields and rules): `/health`,
//! `/api/todos`, `/api/changes` (GET: the changes above `since`, cut on whole db_versions by
//! the one page cutter; POST: a browser's changes, validated like a peer's and merged in one
//! go), and `/api/peers` (the nodes, so a page served by the edge can fail over to them).

use std::collections::BTreeSet;

use changeset::http::{ChangesPage, PushBody};
use changeset::sync::{Fetched, page as cut_page};
use changeset::{Change, DbVersion, MAX_CHANGES_PER_BATCH, PageLimits, Replica};
use serde::Serialize;

use crate::config::Config;
use crate::sync::{NodeState, merge_whole};

/// Default and largest page for `GET /api/changes` (the node's).
pub const CHANGES_PAGE: usize = 5_000;
/// Largest `POST /api/changes` body (the node's).
pub const MAX_PUSH_BYTES: usize = 8 * 1024 * 1024;

/// An API error: status and message, answered as `{"error": message}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: u16,
    pub message: String,
}

impl ApiError {
    fn new(status: u16, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }

    pub fn body(&self) -> serde_json::Value {
        serde_json::json!({ "error": self.message })
    }
}

#[derive(Debug, Serialize)]
pub struct NodeHealth {
    url: String,
    site_id: Option<String>,
    ok: bool,
    failures: u32,
    last_error: Option<String>,
    pulled_up_to: u64,
    pushed_up_to: u64,
}

#[derive(Debug, Serialize)]
pub struct Health {
    status: &'static str,
    /// This is the edge, not a node.
    kind: &'static str,
    node_name: String,
    deployment: String,
    site_id: String,
    db_version: u64,
    todos: usize,
    version: &'static str,
    /// Transactions not yet pushed to every node.
    pending_changes: usize,
    nodes: Vec<NodeHealth>,
}

pub fn health(replica: &Replica, nodes: &[NodeState], config: &Config) -> Health {
    let lowest_push = nodes
        .iter()
        .map(|n| n.pushed_up_to)
        .min()
        .unwrap_or(DbVersion(u64::MAX));
    Health {
        status: "ok",
        kind: "edge",
        node_name: config.edge_name.clone(),
        deployment: config.deployment.clone(),
        site_id: replica.site_id().to_string(),
        db_version: replica.db_version().0,
        todos: app::replica::list(replica).len(),
        version: env!("CARGO_PKG_VERSION"),
        pending_changes: if lowest_push >= replica.db_version() {
            0
        } else {
            replica
                .changes_since(lowest_push, None)
                .iter()
                .map(|c| c.db_version)
                .collect::<BTreeSet<_>>()
                .len()
        },
        nodes: nodes
            .iter()
            .map(|n| NodeHealth {
                url: n.url.clone(),
                site_id: n.site.map(|s| s.to_string()),
                ok: n.failures == 0 && n.last_ok_ms.is_some(),
                failures: n.failures,
                last_error: n.last_error.clone(),
                pulled_up_to: n.since().0,
                pushed_up_to: n.pushed_up_to.0,
            })
            .collect(),
    }
}

/// `GET /api/peers`: the nodes as peers with their URLs (where a page may fail over to).
pub fn peers(replica: &Replica, nodes: &[NodeState], config: &Config) -> serde_json::Value {
    serde_json::json!({
        "kind": "edge",
        "deployment": config.deployment,
        "site_id": replica.site_id().to_string(),
        "peers": nodes.iter().map(|n| serde_json::json!({
            "public_url": n.url,
            "site_id": n.site.map(|s| s.to_string()),
        })).collect::<Vec<_>>(),
        "relays": [],
        "edges": [],
    })
}

/// `GET /api/changes?since=&limit=`.
pub fn changes(replica: &Replica, query: &str) -> Result<ChangesPage, ApiError> {
    let mut since = 0;
    let mut limit = CHANGES_PAGE;
    for (name, value) in form_urlencoded::parse(query.as_bytes()) {
        let number = || {
            value
                .parse::<u64>()
                .map_err(|_| ApiError::new(400, format!("{name} must be a number, not {value:?}")))
        };
        match &*name {
            "since" => since = number()?,
            "limit" => limit = usize::try_from(number()?).unwrap_or(usize::MAX),
            _ => {}
        }
    }
    let since = DbVersion(since);
    let limits = PageLimits {
        max_changes: limit.clamp(1, CHANGES_PAGE),
        ..PageLimits::default()
    };
    let current = replica.db_version();
    let page = cut_page(
        replica.site_id(),
        replica.changes_since(since, None),
        since,
        Fetched::All { current },
        limits,
    );
    Ok(ChangesPage::from(page))
}

#[derive(Debug, Serialize)]
pub struct PushOutcome {
    pub received: usize,
    pub impacted: u64,
    pub db_version: u64,
}

/// `POST /api/changes`: validated like a node validates a push, merged whole or not at all.
/// Returns the answer and the changes that came in (their rows are to be stored).
pub fn push(
    replica: &mut Replica,
    content_type: Option<&str>,
    body: &[u8],
) -> Result<(PushOutcome, Vec<Change>), ApiError> {
    let json = content_type
        .and_then(|t| t.split(';').next())
        .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"));
    if !json {
        return Err(ApiError::new(
            415,
            "Changes are pushed as application/json.",
        ));
    }
    if body.len() > MAX_PUSH_BYTES {
        return Err(ApiError::new(413, "The push is larger than 8 MiB."));
    }
    let body: PushBody = serde_json::from_slice(body)
        .map_err(|e| ApiError::new(400, format!("Unreadable changes: {e}")))?;
    if body.changes.len() > MAX_CHANGES_PER_BATCH {
        return Err(ApiError::new(
            413,
            format!("At most {MAX_CHANGES_PER_BATCH} changes per push; split the batch."),
        ));
    }
    changeset::validate(&body.changes)
        .map_err(|e| ApiError::new(400, format!("Refused the changes: {e}.")))?;
    let impacted = merge_whole(replica, &body.changes)
        .map_err(|e| ApiError::new(400, format!("Refused the changes: {e}.")))?;
    Ok((
        PushOutcome {
            received: body.changes.len(),
            impacted,
            db_version: replica.db_version().0,
        },
        body.changes,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use changeset::{SiteId, TableSchema, Value, Write};

    #[test]
    fn pushes_are_checked_and_merged_and_pages_served() {
        let mut browser = Replica::new(SiteId([9; 16]), vec![TableSchema::todos()]);
        browser
            .write(&[Write::Insert {
                table: "todos".into(),
                pk: vec![Value::Text("a".into())],
                values: vec![("title".into(), Value::Text("x".into()))],
            }])
            .expect("write");
        let body = serde_json::json!({ "changes": browser.changes() }).to_string();
        let mut edge = Replica::new(SiteId([0xED; 16]), vec![TableSchema::todos()]);
        let json = Some("application/json");
        assert_eq!(
            push(&mut edge, None, body.as_bytes())
                .map(|_| ())
                .expect_err("refused")
                .status,
            415
        );
        assert_eq!(
            push(&mut edge, json, b"{")
                .map(|_| ())
                .expect_err("refused")
                .status,
            400
        );
        let (outcome, incoming) = push(&mut edge, json, body.as_bytes()).expect("merged");
        assert_eq!((outcome.received, outcome.impacted), (3, 3));
        assert_eq!(incoming.len(), 3);
        let page = changes(&edge, "since=0&limit=2").expect("page");
        assert_eq!(page.changes.len(), 3, "one transaction is never split");
        assert!(!page.more);
        assert_eq!(
            changes(&edge, "since=x")
                .map(|_| ())
                .expect_err("refused")
                .status,
            400
        );
    }
}
