//! The JSON API for machines: health, the todos, and the replica's cr-sqlite changes (the
//! basis on which browsers and the edge sync with the node).

use app::Todo;
use axum::Json;
use axum::extract::{Query, State};
use changeset::http::{ChangesPage, PushBody};
use changeset::{DbVersion, MAX_CHANGES_PER_BATCH, PageLimits, validate};
use serde::{Deserialize, Serialize};

use crate::net::NetStatus;

use super::error::JsonError;
use super::{AppError, AppState};

#[derive(Debug, Serialize)]
pub struct Health {
    status: &'static str,
    node_name: String,
    /// MDNS_SERVICE_NAME: the deployment this node belongs to.
    deployment: String,
    site_id: String,
    db_version: i64,
    todos: i64,
    version: &'static str,
    crsqlite_version: &'static str,
    peer_id: String,
    /// Nodes of this deployment currently connected.
    peers: usize,
    /// Relays (of RELAY_ADDRS) holding a reservation for this node, out of how many.
    relay_reservations: usize,
    relays: usize,
}

pub async fn health(State(state): State<AppState>) -> Result<Json<Health>, JsonError> {
    let info = state.with_store(|s| s.info()).await?;
    let net = state.net.status().await?;
    Ok(Json(Health {
        peer_id: net.peer_id,
        peers: net.peers.len(),
        relay_reservations: net
            .relays
            .iter()
            .filter(|r| r.reservation == crate::net::Reservation::Active)
            .count(),
        relays: net.relays.len(),
        status: "ok",
        node_name: state.node_name.to_string(),
        deployment: state.deployment.to_string(),
        site_id: info.site_id,
        db_version: info.db_version,
        todos: info.todos,
        version: env!("CARGO_PKG_VERSION"),
        crsqlite_version: crate::db::CRSQLITE_VERSION,
    }))
}

pub async fn todos(State(state): State<AppState>) -> Result<Json<Vec<Todo>>, JsonError> {
    Ok(Json(state.with_store(|s| s.list()).await?))
}

/// `/api/peers`: the network's status, and the deployment's edge workers (EDGE_URLS), which
/// a page may fail over to like to another node.
#[derive(Debug, Serialize)]
pub struct Peers {
    #[serde(flatten)]
    net: NetStatus,
    edges: Vec<String>,
}

pub async fn peers(State(state): State<AppState>) -> Result<Json<Peers>, JsonError> {
    Ok(Json(Peers {
        net: state.net.status().await?,
        edges: state.edge_urls.to_vec(),
    }))
}

#[derive(Debug, Deserialize)]
pub struct ChangesQuery {
    #[serde(default)]
    since: u64,
    #[serde(default)]
    limit: Option<usize>,
}

/// Default and largest page for `GET /api/changes`.
const CHANGES_PAGE: usize = 5_000;

pub async fn changes(
    State(state): State<AppState>,
    Query(query): Query<ChangesQuery>,
) -> Result<Json<ChangesPage>, JsonError> {
    let max = query.limit.unwrap_or(CHANGES_PAGE).clamp(1, CHANGES_PAGE);
    let since = DbVersion(query.since);
    let limits = PageLimits {
        max_changes: max,
        ..PageLimits::default()
    };
    let page = state
        .with_store(move |s| s.changes_page(since, limits))
        .await?;
    Ok(Json(ChangesPage::from(page)))
}

#[derive(Debug, Serialize)]
pub struct PushOutcome {
    /// Changes received.
    received: usize,
    /// Of those, how many altered this replica (the rest it had already).
    impacted: i64,
    /// This node's db_version after the merge.
    db_version: i64,
}

/// `POST /api/changes`: a browser (or edge) replica pushes changes made while it worked
/// without this node. Validated like changes from a peer node, merged in one transaction
/// (durable when this answers 200), then gossiped to the other nodes. Pushing the same
/// changes again is harmless: cr-sqlite merges are idempotent.
pub async fn push(
    State(state): State<AppState>,
    body: Result<Json<PushBody>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<PushOutcome>, JsonError> {
    let Json(body) = body.map_err(|e| match e.status() {
        axum::http::StatusCode::UNSUPPORTED_MEDIA_TYPE => {
            AppError::UnsupportedMediaType("Changes are pushed as application/json.".to_owned())
        }
        _ => AppError::BadRequest(format!("Unreadable changes: {}", e.body_text())),
    })?;
    if body.changes.len() > MAX_CHANGES_PER_BATCH {
        return Err(AppError::PayloadTooLarge(format!(
            "At most {MAX_CHANGES_PER_BATCH} changes per push; split the batch."
        ))
        .into());
    }
    validate(&body.changes)
        .map_err(|e| AppError::BadRequest(format!("Refused the changes: {e}.")))?;
    let changes = body.changes;
    let received = changes.len();
    let (outcome, info, changes) = state
        .with_store(move |s| {
            let outcome = s.merge(&changes, None)?;
            Ok((outcome, s.info()?, changes))
        })
        .await?;
    tracing::info!(
        received,
        impacted = outcome.rows_impacted,
        "merged changes pushed by a client"
    );
    if outcome.rows_impacted > 0 {
        state.net.gossip(changes);
    }
    Ok(Json(PushOutcome {
        received,
        impacted: outcome.rows_impacted,
        db_version: info.db_version,
    }))
}
