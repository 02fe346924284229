//! The relay's HTTP side: `GET /health` and `GET /addrs`, both JSON, both readable from pages
//! on any origin (`Access-Control-Allow-Origin: *`): a page served by a node fetches the
//! relay's addresses to dial it over WebSocket.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use libp2p::Multiaddr;
use serde::Serialize;
use tower_http::cors::{Any, CorsLayer};
use tower_http::set_header::SetResponseHeaderLayer;
use tower_http::timeout::TimeoutLayer;

use crate::net::{self, NetHandle};

#[derive(Clone)]
pub struct AppState {
    pub net: NetHandle,
    pub started: Arc<Instant>,
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/addrs", get(addrs))
        .layer(
            CorsLayer::new()
                .allow_origin(Any)
                .allow_methods([Method::GET]),
        )
        .layer(SetResponseHeaderLayer::overriding(
            header::CACHE_CONTROL,
            HeaderValue::from_static("no-store"),
        ))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::SERVICE_UNAVAILABLE,
            Duration::from_secs(10),
        ))
        .with_state(state)
}

/// The network loop is gone (shutting down): answer 503 with a JSON reason.
pub struct Unavailable(anyhow::Error);

impl IntoResponse for Unavailable {
    fn into_response(self) -> Response {
        tracing::warn!(error = %self.0, "relay status unavailable");
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({ "status": "unavailable" })),
        )
            .into_response()
    }
}

#[derive(Debug, Serialize)]
pub struct Health {
    status: &'static str,
    version: &'static str,
    peer_id: String,
    /// Reservations held: peers reachable through the relay.
    reservations: usize,
    /// Relayed connections open.
    circuits: usize,
    peers: usize,
    connections: usize,
    /// Rendezvous registrations stored.
    registrations: usize,
    /// Whether the relay protocol is advertised (needs an external address).
    hop_advertised: bool,
    uptime_secs: u64,
}

pub async fn health(State(state): State<AppState>) -> Result<Json<Health>, Unavailable> {
    let s = state.net.status().await.map_err(Unavailable)?;
    Ok(Json(Health {
        status: "ok",
        version: env!("CARGO_PKG_VERSION"),
        peer_id: s.peer_id.to_string(),
        reservations: s.reservations,
        circuits: s.circuits,
        peers: s.peers,
        connections: s.connections,
        registrations: s.registrations,
        hop_advertised: s.hop_advertised,
        uptime_secs: state.started.elapsed().as_secs(),
    }))
}

/// Where to reach the relay: full multiaddrs ending in `/p2p/<relay id>`, ready for a node's
/// RELAY_ADDRS or a browser's dial.
#[derive(Debug, Serialize)]
pub struct Addrs {
    peer_id: String,
    /// Every external address (EXTERNAL_ADDRS, and the listen addresses unless turned off).
    addrs: Vec<String>,
    /// The WebSocket ones among them: what a browser can dial.
    ws: Vec<String>,
    /// What the relay listens on (may include addresses only reachable locally).
    listen_addrs: Vec<String>,
}

pub async fn addrs(State(state): State<AppState>) -> Result<Json<Addrs>, Unavailable> {
    let s = state.net.status().await.map_err(Unavailable)?;
    let full = |addrs: &[Multiaddr]| -> Vec<String> {
        let mut out: Vec<String> = addrs
            .iter()
            .map(|a| net::with_peer(a, s.peer_id).to_string())
            .collect();
        out.sort();
        out.dedup();
        out
    };
    let ws: Vec<Multiaddr> = s
        .external_addrs
        .iter()
        .filter(|a| net::is_websocket(a))
        .cloned()
        .collect();
    Ok(Json(Addrs {
        peer_id: s.peer_id.to_string(),
        addrs: full(&s.external_addrs),
        ws: full(&ws),
        listen_addrs: full(&s.listen_addrs),
    }))
}
