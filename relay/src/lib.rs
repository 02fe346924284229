//! The todo-hybrid relay: a circuit relay v2 server (with rendezvous, AutoNAT, identify and
//! ping) for nodes and browser peers that cannot reach each other directly, plus a small HTTP
//! server that tells them where it is (`/addrs`) and how it is doing (`/health`).
//!
//! `run` is the whole relay given a bound HTTP listener and a shutdown signal, so tests start
//! it exactly as the binary does.
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod config;
pub mod http;
pub mod net;

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use config::Config;

/// Serves the relay until `shutdown` completes, then closes the HTTP server and the swarm.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let key = p2p_identity::load_or_create(&config.data_dir)?;
    let peer_id = key.public().to_peer_id();
    let stop_net = CancellationToken::new();
    let (net, net_task) = net::start(&config, key, stop_net.clone())
        .await
        .context("starting the p2p network")?;
    tracing::info!(
        %peer_id,
        http = %listener.local_addr().context("listener address")?,
        max_reservations = config.max_reservations,
        max_reservations_per_peer = config.max_reservations_per_peer,
        reservation_duration_secs = config.reservation_duration_secs,
        max_circuits = config.max_circuits,
        max_circuits_per_peer = config.max_circuits_per_peer,
        max_circuit_duration_secs = config.max_circuit_duration_secs,
        max_circuit_bytes = config.max_circuit_bytes,
        reservation_rate_per_peer = %config.reservation_rate_per_peer,
        reservation_rate_per_ip = %config.reservation_rate_per_ip,
        circuit_rate_per_peer = %config.circuit_rate_per_peer,
        circuit_rate_per_ip = %config.circuit_rate_per_ip,
        "relay started"
    );
    let state = http::AppState {
        net,
        started: Arc::new(Instant::now()),
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
    tracing::info!("relay stopped");
    Ok(())
}
