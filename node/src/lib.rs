//! A todo node: serves the server-rendered app from its cr-sqlite replica.
//!
//! `run` is the whole server given a bound listener and a shutdown signal, so tests and
//! benchmarks start real nodes on port 0 exactly as the binary does.
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod config;
pub mod db;
pub mod http;
pub mod net;

use std::future::Future;
use std::sync::Arc;

use anyhow::Context;
use app::Templates;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use config::Config;
use db::Store;

/// What this binary was built without (node/build.rs warned at build time, naming the script
/// that builds it). A node missing either refuses to start: it would lose data (no cr-sqlite) or
/// offer an offline mode that cannot work (no browser peer).
pub const BUILD_PROBLEMS: &[&str] = &[
    #[cfg(crsqlite_missing)]
    env!("CRSQLITE_BUILD_PROBLEM"),
    #[cfg(wasm_bundle_missing)]
    env!("WASM_BUNDLE_BUILD_PROBLEM"),
];

/// Serves the node on `listener` until `shutdown` completes, then finishes in-flight requests
/// and closes the database cleanly.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    if !BUILD_PROBLEMS.is_empty() {
        anyhow::bail!(
            "this todo-node was built without what it embeds:\n- {}",
            BUILD_PROBLEMS.join("\n- ")
        );
    }
    let mut config = config;
    let local = listener.local_addr().context("listener address")?;
    if config.public_url.is_none() && !local.ip().is_unspecified() {
        config.public_url = Some(format!("http://{local}"));
    }
    let data_dir = config.data_dir.clone();
    let store = tokio::task::spawn_blocking(move || Store::open(&data_dir))
        .await
        .context("opening the store")?
        .with_context(|| format!("opening the database in {}", config.data_dir.display()))?;
    let store = Arc::new(store);
    let templates = match &config.templates_dir {
        Some(dir) => {
            tracing::info!(dir = %dir.display(), "templates reload from disk on every render");
            Templates::reloading(dir)
        }
        None => Templates::embedded(),
    };
    let info = store.info().context("reading the replica")?;
    tracing::info!(
        addr = %listener.local_addr().context("listener address")?,
        node = %config.node_name,
        site_id = %info.site_id,
        db_version = info.db_version,
        todos = info.todos,
        db = %store.path().display(),
        "node listening"
    );
    let stop_net = CancellationToken::new();
    let (net, net_task) = net::start(
        &config,
        store.clone(),
        store.subscribe_local_writes(),
        stop_net.clone(),
    )
    .await
    .context("starting the p2p network")?;
    let state = http::AppState {
        store: store.clone(),
        templates: Arc::new(templates),
        node_name: config.node_name.as_str().into(),
        deployment: config.mdns_service_name.as_str().into(),
        edge_urls: config.edge_urls.clone().into(),
        net,
    };
    let served = axum::serve(listener, http::router(state))
        .with_graceful_shutdown(shutdown)
        .await
        .context("serving HTTP");
    stop_net.cancel();
    if let Err(error) = net_task.await {
        tracing::warn!(%error, "network task ended abnormally");
    }
    served?;
    tracing::info!("node stopped");
    Ok(())
}
