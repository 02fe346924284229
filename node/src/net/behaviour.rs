//! The libp2p behaviours a node runs, and the swarm built from them.

use std::time::Duration;

use anyhow::Context;
use changeset::SiteId;
use libp2p::connection_limits::{self, ConnectionLimits};
use libp2p::gossipsub::{self, IdentTopic};
use libp2p::identity::Keypair;
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::NetworkBehaviour;
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::{
    Swarm, dcutr, identify, mdns, memory_connection_limits, noise, ping, relay, tcp, yamux,
};

use super::MAX_PENDING_INCOMING;
use super::protocol::{self, PushCodec, SyncCodec};
use crate::config::Config;

#[derive(NetworkBehaviour)]
pub(super) struct Behaviour {
    /// Refuses connections over MAX_CONNECTIONS / MAX_CONNECTIONS_PER_PEER.
    limits: connection_limits::Behaviour,
    /// Refuses new connections while the process uses more than MAX_MEMORY_MIB.
    memory: memory_connection_limits::Behaviour,
    pub identify: identify::Behaviour,
    ping: ping::Behaviour,
    pub gossipsub: gossipsub::Behaviour,
    pub mdns: Toggle<mdns::tokio::Behaviour>,
    pub sync: request_response::Behaviour<SyncCodec>,
    /// Transactions pushed by browsers (which run no gossipsub), and pushed to them.
    pub push: request_response::Behaviour<PushCodec>,
    pub relay_client: relay::client::Behaviour,
    pub dcutr: dcutr::Behaviour,
}

pub(super) fn changes_topic(service: &str) -> IdentTopic {
    IdentTopic::new(format!("todo-hybrid/{service}/changes/1"))
}

/// Identify's agent string: how this node names itself to others.
fn agent_string(config: &Config, site: SiteId) -> String {
    let agent = protocol::Agent {
        site: Some(site),
        name: Some(config.node_name.clone()),
        url: config.public_url.clone(),
    };
    agent.to_agent_string(concat!("todo-node/", env!("CARGO_PKG_VERSION")))
}

/// TCP, QUIC, WebSocket (for browsers), DNS, the relay client transport, and the behaviours
/// above, listening on P2P_LISTEN.
pub(super) async fn build_swarm(
    config: &Config,
    key: Keypair,
    site: SiteId,
) -> anyhow::Result<Swarm<Behaviour>> {
    let service = config.mdns_service_name.clone();
    let protocol_version = protocol::deployment_tag(&service);
    let agent = agent_string(config, site);
    let enable_mdns = config.enable_mdns;
    let connection_limits = ConnectionLimits::default()
        .with_max_established(Some(config.max_connections))
        .with_max_established_per_peer(Some(config.max_connections_per_peer))
        .with_max_pending_incoming(Some(MAX_PENDING_INCOMING));
    let max_memory_bytes = config.max_memory_mib.saturating_mul(1024 * 1024) as usize;
    let sync_protocol = protocol::sync_protocol(&service);
    let push_protocol = protocol::push_protocol(&service);

    let mut swarm = libp2p::SwarmBuilder::with_existing_identity(key)
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux::Config::default,
        )
        .context("TCP transport")?
        .with_quic()
        .with_dns()
        .context("DNS resolver")?
        .with_websocket(noise::Config::new, yamux::Config::default)
        .await
        .context("WebSocket transport")?
        .with_relay_client(noise::Config::new, yamux::Config::default)
        .context("relay client transport")?
        .with_behaviour(|key, relay_client| {
            let peer_id = key.public().to_peer_id();
            let gossipsub_config = gossipsub::ConfigBuilder::default()
                .validation_mode(gossipsub::ValidationMode::Strict)
                .validate_messages()
                .max_transmit_size(4 * 1024 * 1024)
                .heartbeat_interval(Duration::from_millis(500))
                .build()?;
            let mut gossipsub = gossipsub::Behaviour::new(
                gossipsub::MessageAuthenticity::Signed(key.clone()),
                gossipsub_config,
            )?;
            gossipsub.subscribe(&changes_topic(&service))?;
            let mdns = if enable_mdns {
                Some(mdns::tokio::Behaviour::new(
                    mdns::Config {
                        query_interval: Duration::from_secs(5),
                        ..Default::default()
                    },
                    peer_id,
                )?)
            } else {
                None
            };
            Ok(Behaviour {
                limits: connection_limits::Behaviour::new(connection_limits),
                memory: memory_connection_limits::Behaviour::with_max_bytes(max_memory_bytes),
                identify: identify::Behaviour::new(
                    identify::Config::new(protocol_version.clone(), key.public())
                        .with_agent_version(agent)
                        // Peers hear of listeners that come up after they connected (a
                        // WebSocket one, a relay circuit), which browsers are told about.
                        .with_push_listen_addr_updates(true),
                ),
                ping: ping::Behaviour::default(),
                gossipsub,
                mdns: Toggle::from(mdns),
                sync: request_response::Behaviour::with_codec(
                    SyncCodec,
                    [(sync_protocol, ProtocolSupport::Full)],
                    request_response::Config::default()
                        .with_request_timeout(Duration::from_secs(60)),
                ),
                push: request_response::Behaviour::with_codec(
                    PushCodec,
                    [(push_protocol, ProtocolSupport::Full)],
                    request_response::Config::default()
                        .with_request_timeout(Duration::from_secs(30)),
                ),
                relay_client,
                dcutr: dcutr::Behaviour::new(peer_id),
            })
        })
        .map_err(|e| anyhow::anyhow!("building the network behaviour: {e}"))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
        .build();

    for addr in &config.p2p_listen {
        swarm
            .listen_on(addr.clone())
            .with_context(|| format!("P2P_LISTEN: cannot listen on {addr}"))?;
    }
    Ok(swarm)
}
