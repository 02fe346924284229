//! The JSON API for machines: health, the todos, and the replica's cr-sqlite changes (the
//! basis on which browsers and the edge sync with the node).

use app::Todo;
use axum::Json;
use axum::extract::State;
use serde::Serialize;

use super::AppState;
use super::error::JsonError;

#[derive(Debug, Serialize)]
pub struct Health {
    status: &'static str,
    node_name: String,
    site_id: String,
    db_version: i64,
    todos: i64,
    version: &'static str,
    crsqlite_version: &'static str,
}

pub async fn health(State(state): State<AppState>) -> Result<Json<Health>, JsonError> {
    let info = state.with_store(|s| s.info()).await?;
    Ok(Json(Health {
        status: "ok",
        node_name: state.node_name.to_string(),
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
