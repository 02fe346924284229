//! The HTTP face of a node: server-rendered pages with plain-form actions (no JavaScript
//! needed), a JSON API for machines, and the static assets.
//!
//! Every response carries security headers (a CSP that allows only same-origin scripts); every
//! POST must come from this origin; request bodies are capped; requests time out.

mod api;
mod assets;
mod error;
mod etag;
mod guard;
mod todos;

use std::sync::Arc;
use std::time::Duration;

use app::Templates;
use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request};
use axum::http::{HeaderName, HeaderValue, Method, StatusCode, header};
use axum::routing::{get, post};
use tower_http::compression::CompressionLayer;
use tower_http::cors::{Any, CorsLayer};
use tower_http::set_header::SetResponseHeaderLayer;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

pub use assets::{build_version, export_assets};
pub use error::AppError;

use crate::db::Store;

/// Form posts are a title and a few hidden fields (`app::site::MAX_FORM_BYTES`).
pub const MAX_BODY_BYTES: usize = app::site::MAX_FORM_BYTES;
/// A request that takes longer than this is answered 408 and its work abandoned.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Largest `POST /api/changes` body: a push of up to 10,000 changes with 500-character titles.
pub const MAX_PUSH_BYTES: usize = 8 * 1024 * 1024;

/// The one policy of every replica's pages (`app::site`).
const CONTENT_SECURITY_POLICY: &str = app::site::CONTENT_SECURITY_POLICY;

#[derive(Clone)]
pub struct AppState {
    pub store: Arc<Store>,
    pub templates: Arc<Templates>,
    pub node_name: Arc<str>,
    /// MDNS_SERVICE_NAME, reported by /health.
    pub deployment: Arc<str>,
    /// EDGE_URLS, listed by /api/peers.
    pub edge_urls: Arc<[String]>,
    pub net: crate::net::NetHandle,
}

impl AppState {
    /// Runs a blocking store call on the blocking pool.
    pub async fn with_store<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Store) -> Result<T, crate::db::StoreError> + Send + 'static,
    ) -> Result<T, AppError> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || f(&store))
            .await
            .map_err(|e| AppError::Internal(anyhow::anyhow!("store task failed: {e}")))?
            .map_err(AppError::from)
    }
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route(
            "/",
            get(todos::page).layer(axum::middleware::from_fn_with_state(
                state.clone(),
                etag::tag_pages,
            )),
        )
        .route("/todos", post(todos::page))
        .route("/todos/clear-completed", post(todos::page))
        .route("/todos/{id}/toggle", post(todos::page))
        .route("/todos/{id}/title", post(todos::page))
        .route("/todos/{id}/delete", post(todos::page))
        .route("/static/{*path}", get(assets::serve))
        .route("/sw.js", get(assets::service_worker))
        .merge(api_router())
        .fallback(todos::page)
        .layer(axum::middleware::from_fn(guard::same_origin_posts))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(security_header(
            header::CONTENT_SECURITY_POLICY,
            CONTENT_SECURITY_POLICY,
        ))
        .layer(security_header(header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .layer(security_header(header::X_FRAME_OPTIONS, "DENY"))
        .layer(security_header(header::REFERRER_POLICY, "same-origin"))
        // Pages and JSON, compressed when the client accepts br, zstd or gzip; static assets
        // come precompressed (assets.rs) and pass through untouched.
        .layer(CompressionLayer::new())
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            REQUEST_TIMEOUT,
        ))
        .layer(
            TraceLayer::new_for_http().make_span_with(|request: &Request| {
                let route = request
                    .extensions()
                    .get::<MatchedPath>()
                    .map(MatchedPath::as_str)
                    .unwrap_or("-");
                tracing::info_span!("http", method = %request.method(), %route)
            }),
        )
        .with_state(state)
}

/// The JSON API, open to pages of other origins (a page of node A fails over to node B): it
/// uses no cookies or other ambient credentials, so CORS `*` gives nothing away.
fn api_router() -> Router<AppState> {
    let cors = CorsLayer::new()
        .allow_origin(Any)
        .allow_methods([Method::GET, Method::POST])
        .allow_headers([header::CONTENT_TYPE]);
    Router::new()
        .route("/health", get(api::health))
        .route("/api/todos", get(api::todos))
        .route(
            "/api/changes",
            get(api::changes)
                .post(api::push)
                .layer(DefaultBodyLimit::max(MAX_PUSH_BYTES)),
        )
        .route("/api/peers", get(api::peers))
        .layer(cors)
}

fn security_header(name: HeaderName, value: &'static str) -> SetResponseHeaderLayer<HeaderValue> {
    SetResponseHeaderLayer::if_not_present(name, HeaderValue::from_static(value))
}
