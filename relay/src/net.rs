//! The relay's libp2p swarm and its event loop.
//!
//! Tasks and flow:
//! - **Relay (circuit relay v2, HOP)**: peers that cannot be reached directly (nodes behind NAT,
//!   browsers) reserve a slot; others open circuits to them through the relay. The limits of
//!   `Config` apply (reservations, circuits, their duration and bytes, rate limits per peer and
//!   per IP). libp2p only advertises HOP while the relay has external addresses, so the
//!   configured EXTERNAL_ADDRS, and by default every concrete listen address, are added as
//!   external addresses.
//! - **Rendezvous server**: browser peers register under the app's namespace and discover each
//!   other's peer ids.
//! - **AutoNAT servers (v1 and v2)**: peers ask the relay to dial them back, to learn whether
//!   they are reachable.
//! - **Identify, ping**: addresses, protocols, liveness.
//!
//! The loop keeps counters for /health (reservations, circuits, registrations) and logs every
//! reservation and circuit decision with the peers involved. The HTTP side asks for a snapshot
//! through a bounded command channel.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use anyhow::Context;
use futures::StreamExt;
use libp2p::connection_limits::{self, ConnectionLimits};
use libp2p::identity::Keypair;
use libp2p::multiaddr::Protocol;
use libp2p::swarm::{ConnectionId, NetworkBehaviour, SwarmEvent};
use libp2p::{
    Multiaddr, PeerId, Swarm, autonat, identify, noise, ping, relay, rendezvous, tcp, yamux,
};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::config::Config;

mod tracked;

/// Identify's protocol version: tells nodes that this peer is the deployment's relay, not a
/// node of some other deployment.
pub const PROTOCOL_VERSION: &str = "/todo-hybrid/relay/1";
/// Commands from the HTTP side waiting for the loop.
const COMMAND_QUEUE: usize = 64;
/// A connection with neither a reservation nor a circuit on it is closed after this long.
const IDLE_CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);
/// Shortest rendezvous registration accepted, in seconds: browsers come and go, so they
/// register for minutes and refresh (libp2p's minimum is 2 hours, which would list a closed
/// tab's id for that long).
const RENDEZVOUS_MIN_TTL: u64 = 60;

#[derive(NetworkBehaviour)]
pub struct Behaviour {
    limits: connection_limits::Behaviour,
    relay: tracked::TrackedRelay,
    identify: identify::Behaviour,
    ping: ping::Behaviour,
    autonat: autonat::v1::Behaviour,
    autonat_v2: autonat::v2::server::Behaviour,
    rendezvous: rendezvous::server::Behaviour,
}

/// A snapshot of the relay for /health and /addrs.
#[derive(Debug, Clone)]
pub struct RelayStatus {
    pub peer_id: PeerId,
    /// Reservations held (peers reachable through the relay).
    pub reservations: usize,
    /// Circuits open (relayed connections).
    pub circuits: usize,
    /// Peers connected, and their connections.
    pub peers: usize,
    pub connections: usize,
    /// Rendezvous registrations stored.
    pub registrations: usize,
    /// Whether the relay (HOP) protocol is advertised: false until it has an external address.
    pub hop_advertised: bool,
    pub listen_addrs: Vec<Multiaddr>,
    pub external_addrs: Vec<Multiaddr>,
}

enum Command {
    Status(oneshot::Sender<RelayStatus>),
}

/// The HTTP side's handle on the network loop.
#[derive(Clone)]
pub struct NetHandle {
    commands: mpsc::Sender<Command>,
}

impl NetHandle {
    pub async fn status(&self) -> anyhow::Result<RelayStatus> {
        let (reply, rx) = oneshot::channel();
        self.commands
            .send(Command::Status(reply))
            .await
            .context("network loop stopped")?;
        rx.await.context("network loop dropped the request")
    }
}

/// Builds the swarm, starts listening (errors name P2P_LISTEN) and spawns the loop.
pub async fn start(
    config: &Config,
    key: Keypair,
    shutdown: CancellationToken,
) -> anyhow::Result<(NetHandle, tokio::task::JoinHandle<()>)> {
    let limits = ConnectionLimits::default()
        .with_max_established(Some(config.max_connections))
        .with_max_established_per_peer(Some(config.max_connections_per_peer));
    let relay_config = config.relay_config();
    let rendezvous_config = rendezvous::server::Config::default()
        .with_min_ttl(RENDEZVOUS_MIN_TTL)
        .with_max_registration_total(config.rendezvous_max_registrations as usize);

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
        .with_behaviour(|key| {
            let peer_id = key.public().to_peer_id();
            Behaviour {
                limits: connection_limits::Behaviour::new(limits),
                relay: tracked::TrackedRelay::new(relay::Behaviour::new(peer_id, relay_config)),
                identify: identify::Behaviour::new(
                    identify::Config::new(PROTOCOL_VERSION.to_owned(), key.public())
                        .with_agent_version(format!("todo-relay/{}", env!("CARGO_PKG_VERSION"))),
                ),
                ping: ping::Behaviour::default(),
                // Only the server side matters: the relay's own reachability is configured,
                // not probed through its clients.
                autonat: autonat::v1::Behaviour::new(
                    peer_id,
                    autonat::v1::Config {
                        use_connected: false,
                        ..Default::default()
                    },
                ),
                autonat_v2: autonat::v2::server::Behaviour::default(),
                rendezvous: rendezvous::server::Behaviour::new(rendezvous_config),
            }
        })
        .map_err(|e| anyhow::anyhow!("building the network behaviour: {e}"))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(IDLE_CONNECTION_TIMEOUT))
        .build();

    for addr in &config.p2p_listen {
        swarm
            .listen_on(addr.clone())
            .with_context(|| format!("P2P_LISTEN: cannot listen on {addr}"))?;
    }
    for addr in &config.external_addrs {
        swarm.add_external_address(addr.clone());
    }

    let (commands_tx, commands) = mpsc::channel(COMMAND_QUEUE);
    let event_loop = EventLoop {
        swarm,
        commands,
        advertise_listen_addrs: config.advertise_listen_addrs,
        configured_external: config.external_addrs.iter().cloned().collect(),
        connections: HashMap::new(),
        circuits: 0,
        registrations: HashSet::new(),
        hop_advertised: false,
        shutdown,
    };
    let task = tokio::spawn(event_loop.run());
    Ok((
        NetHandle {
            commands: commands_tx,
        },
        task,
    ))
}

/// Appends `/p2p/<peer>` unless the address already names a peer.
pub fn with_peer(addr: &Multiaddr, peer: PeerId) -> Multiaddr {
    match addr.iter().last() {
        Some(Protocol::P2p(_)) => addr.clone(),
        _ => addr.clone().with(Protocol::P2p(peer)),
    }
}

/// Whether browsers can dial the address (WebSocket, plain or TLS).
pub fn is_websocket(addr: &Multiaddr) -> bool {
    addr.iter()
        .any(|p| matches!(p, Protocol::Ws(_) | Protocol::Wss(_) | Protocol::Tls))
}

struct EventLoop {
    swarm: Swarm<Behaviour>,
    commands: mpsc::Receiver<Command>,
    advertise_listen_addrs: bool,
    configured_external: HashSet<Multiaddr>,
    /// Every open connection and the address it comes from.
    connections: HashMap<PeerId, HashMap<ConnectionId, Multiaddr>>,
    circuits: usize,
    registrations: HashSet<(PeerId, String)>,
    hop_advertised: bool,
    shutdown: CancellationToken,
}

impl EventLoop {
    async fn run(mut self) {
        loop {
            tokio::select! {
                biased;
                () = self.shutdown.cancelled() => break,
                Some(command) = self.commands.recv() => self.on_command(command),
                event = self.swarm.select_next_some() => self.on_swarm_event(event),
            }
        }
        tracing::info!(
            reservations = self.reservation_count(),
            circuits = self.circuits,
            "relay network loop stopped"
        );
    }

    fn reservation_count(&self) -> usize {
        self.swarm.behaviour().relay.reservations()
    }

    /// The address a peer is connected from (its first connection), for the logs.
    fn addr_of(&self, peer: &PeerId) -> String {
        self.connections
            .get(peer)
            .and_then(|c| c.values().next())
            .map(ToString::to_string)
            .unwrap_or_default()
    }

    fn on_command(&mut self, command: Command) {
        match command {
            Command::Status(reply) => {
                let _ = reply.send(RelayStatus {
                    peer_id: *self.swarm.local_peer_id(),
                    reservations: self.reservation_count(),
                    circuits: self.circuits,
                    peers: self.connections.len(),
                    connections: self.connections.values().map(HashMap::len).sum(),
                    registrations: self.registrations.len(),
                    hop_advertised: self.hop_advertised,
                    listen_addrs: self.swarm.listeners().cloned().collect(),
                    external_addrs: self.swarm.external_addresses().cloned().collect(),
                });
            }
        }
    }

    fn on_swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::NewListenAddr { address, .. } => {
                tracing::info!(%address, peer_id = %self.swarm.local_peer_id(), "p2p listening");
                if self.advertise_listen_addrs && !is_unspecified(&address) {
                    self.swarm.add_external_address(address);
                }
            }
            SwarmEvent::ExpiredListenAddr { address, .. } => {
                tracing::info!(%address, "listen address expired");
                if !self.configured_external.contains(&address) {
                    self.swarm.remove_external_address(&address);
                }
            }
            SwarmEvent::ListenerClosed {
                addresses, reason, ..
            } => match reason {
                Ok(()) => tracing::info!(?addresses, "listener closed"),
                Err(error) => tracing::error!(?addresses, %error, "listener failed"),
            },
            SwarmEvent::ListenerError { error, .. } => {
                tracing::warn!(%error, "listener error");
            }
            SwarmEvent::ExternalAddrConfirmed { address } => {
                tracing::info!(%address, "external address");
            }
            SwarmEvent::ConnectionEstablished {
                peer_id,
                connection_id,
                endpoint,
                ..
            } => {
                let addr = endpoint.get_remote_address().clone();
                tracing::debug!(%peer_id, %addr, "connected");
                self.connections
                    .entry(peer_id)
                    .or_default()
                    .insert(connection_id, addr);
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                connection_id,
                cause,
                ..
            } => self.on_connection_closed(peer_id, connection_id, cause.map(|c| c.to_string())),
            SwarmEvent::IncomingConnectionError {
                send_back_addr,
                error,
                ..
            } => {
                tracing::debug!(addr = %send_back_addr, %error, "incoming connection failed");
            }
            SwarmEvent::Behaviour(event) => self.on_behaviour_event(event),
            _ => {}
        }
    }

    fn on_connection_closed(
        &mut self,
        peer: PeerId,
        connection: ConnectionId,
        cause: Option<String>,
    ) {
        if let Some(c) = self.connections.get_mut(&peer) {
            c.remove(&connection);
            if c.is_empty() {
                self.connections.remove(&peer);
            }
        }
        tracing::debug!(%peer, ?cause, "disconnected");
    }

    fn on_behaviour_event(&mut self, event: BehaviourEvent) {
        match event {
            BehaviourEvent::Relay(tracked::Event::Relay { event, .. }) => {
                self.on_relay_event(event)
            }
            BehaviourEvent::Relay(tracked::Event::ReservationEnded { peer, .. }) => {
                tracing::info!(%peer, reservations = self.reservation_count(), "reservation ended with its connection");
            }
            BehaviourEvent::Rendezvous(event) => self.on_rendezvous_event(event),
            BehaviourEvent::Identify(identify::Event::Received { peer_id, info, .. }) => {
                tracing::debug!(%peer_id, agent = %info.agent_version, observed = %info.observed_addr, "identified");
            }
            BehaviourEvent::Autonat(autonat::v1::Event::InboundProbe(probe)) => {
                tracing::debug!(?probe, "AutoNAT probe");
            }
            BehaviourEvent::AutonatV2(event) => {
                tracing::debug!(peer = %event.client, result = ?event.result.map_err(|e| e.to_string()), "AutoNAT v2 dial-back");
            }
            _ => {}
        }
    }

    #[allow(deprecated)] // the failure variants are deprecated upstream but still reported
    fn on_relay_event(&mut self, event: relay::Event) {
        use relay::Event as E;
        match event {
            E::ReservationReqAccepted {
                src_peer_id,
                renewed,
            } => {
                if renewed {
                    tracing::debug!(peer = %src_peer_id, "reservation renewed");
                    return;
                }
                tracing::info!(peer = %src_peer_id, addr = %self.addr_of(&src_peer_id), reservations = self.reservation_count(), "reservation accepted");
            }
            E::ReservationReqDenied {
                src_peer_id,
                status,
            } => {
                tracing::info!(peer = %src_peer_id, addr = %self.addr_of(&src_peer_id), ?status, reservations = self.reservation_count(), "reservation denied");
            }
            E::ReservationTimedOut { src_peer_id } => {
                tracing::info!(peer = %src_peer_id, reservations = self.reservation_count(), "reservation expired (not renewed)");
            }
            // Reported for every closed connection; `ReservationEnded` is the real thing.
            E::ReservationClosed { .. } => {}
            E::ReservationReqAcceptFailed { src_peer_id, error } => {
                tracing::debug!(peer = %src_peer_id, %error, "accepting a reservation failed");
            }
            E::ReservationReqDenyFailed { src_peer_id, error } => {
                tracing::debug!(peer = %src_peer_id, %error, "denying a reservation failed");
            }
            E::CircuitReqAccepted {
                src_peer_id,
                dst_peer_id,
            } => {
                self.circuits += 1;
                tracing::info!(src = %src_peer_id, dst = %dst_peer_id, src_addr = %self.addr_of(&src_peer_id), circuits = self.circuits, "circuit opened");
            }
            E::CircuitReqDenied {
                src_peer_id,
                dst_peer_id,
                status,
            } => {
                tracing::info!(src = %src_peer_id, dst = %dst_peer_id, src_addr = %self.addr_of(&src_peer_id), ?status, circuits = self.circuits, "circuit denied");
            }
            E::CircuitClosed {
                src_peer_id,
                dst_peer_id,
                error,
            } => {
                self.circuits = self.circuits.saturating_sub(1);
                match error {
                    Some(error) => {
                        tracing::info!(src = %src_peer_id, dst = %dst_peer_id, %error, circuits = self.circuits, "circuit closed")
                    }
                    None => {
                        tracing::info!(src = %src_peer_id, dst = %dst_peer_id, circuits = self.circuits, "circuit closed")
                    }
                }
            }
            E::CircuitReqOutboundConnectFailed {
                src_peer_id,
                dst_peer_id,
                error,
            } => {
                tracing::info!(src = %src_peer_id, dst = %dst_peer_id, %error, "circuit failed: the destination did not accept it");
            }
            E::CircuitReqAcceptFailed {
                src_peer_id,
                dst_peer_id,
                error,
            } => {
                tracing::info!(src = %src_peer_id, dst = %dst_peer_id, %error, "circuit failed while being accepted");
            }
            E::CircuitReqDenyFailed {
                src_peer_id,
                dst_peer_id,
                error,
            } => {
                tracing::debug!(src = %src_peer_id, dst = %dst_peer_id, %error, "denying a circuit failed");
            }
            E::StatusChanged { status } => {
                self.hop_advertised = status == relay::Status::Enable;
                tracing::info!(
                    hop_advertised = self.hop_advertised,
                    "relay protocol advertisement changed"
                );
            }
        }
    }

    fn on_rendezvous_event(&mut self, event: rendezvous::server::Event) {
        use rendezvous::server::Event as E;
        match event {
            E::PeerRegistered { peer, registration } => {
                let namespace = registration.namespace.to_string();
                tracing::info!(%peer, %namespace, ttl = registration.ttl, "rendezvous registration");
                self.registrations.insert((peer, namespace));
            }
            E::PeerNotRegistered {
                peer,
                namespace,
                error,
            } => {
                tracing::info!(%peer, %namespace, ?error, "rendezvous registration refused");
            }
            E::PeerUnregistered { peer, namespace } => {
                self.registrations.remove(&(peer, namespace.to_string()));
            }
            E::RegistrationExpired(registration) => {
                self.registrations.remove(&(
                    registration.record.peer_id(),
                    registration.namespace.to_string(),
                ));
            }
            E::DiscoverServed {
                enquirer,
                registrations,
            } => {
                tracing::debug!(peer = %enquirer, found = registrations.len(), "rendezvous discover");
            }
            E::DiscoverNotServed { enquirer, error } => {
                tracing::debug!(peer = %enquirer, ?error, "rendezvous discover refused");
            }
        }
    }
}

fn is_unspecified(addr: &Multiaddr) -> bool {
    addr.iter().any(|p| match p {
        Protocol::Ip4(ip) => ip.is_unspecified(),
        Protocol::Ip6(ip) => ip.is_unspecified(),
        _ => false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_ids_are_appended_once() {
        let peer = Keypair::generate_ed25519().public().to_peer_id();
        let addr: Multiaddr = "/ip4/127.0.0.1/tcp/4002/ws".parse().expect("addr");
        let full = with_peer(&addr, peer);
        assert_eq!(
            full.to_string(),
            format!("/ip4/127.0.0.1/tcp/4002/ws/p2p/{peer}")
        );
        assert_eq!(with_peer(&full, peer), full);
        assert!(is_websocket(&full));
        assert!(!is_websocket(
            &"/ip4/127.0.0.1/tcp/4001".parse().expect("addr")
        ));
    }

    #[test]
    fn unspecified_addresses_are_not_advertised() {
        assert!(is_unspecified(
            &"/ip4/0.0.0.0/tcp/4001".parse().expect("addr")
        ));
        assert!(is_unspecified(&"/ip6/::/tcp/4001".parse().expect("addr")));
        assert!(!is_unspecified(
            &"/ip4/10.0.0.1/tcp/4001".parse().expect("addr")
        ));
    }
}
