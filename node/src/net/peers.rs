//! Each connected peer and what it is: not yet identified, a relay (kept, never synced with),
//! or a node of this deployment, whose anti-entropy round is a small state machine. Also
//! identify, and banning peers that sent hostile input.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use changeset::{DbVersion, SiteId};
use libp2p::core::ConnectedPoint;
use libp2p::request_response::OutboundRequestId;
use libp2p::swarm::ConnectionId;
use libp2p::{Multiaddr, PeerId, identify, relay};

use super::BAN_DURATION;
use super::event_loop::EventLoop;
use super::handle::{ConnectionKind, PeerInfo};
use super::protocol::{Agent, deployment_tag};

pub(super) struct Peer {
    pub connections: HashMap<ConnectionId, Connection>,
    pub role: Role,
}

pub(super) struct Connection {
    pub addr: Multiaddr,
    /// Through a relay's circuit.
    pub relayed: bool,
}

pub(super) enum Role {
    /// Connected; identify has not said what it is yet. Nothing is synced with it.
    Unidentified,
    /// A relay (configured, or offering the relay protocol): kept connected, never synced.
    Relay,
    /// A node of this deployment (identify said so): synced with.
    Node(NodePeer),
}

/// A node of this deployment, as it said in identify, and the anti-entropy with it.
pub(super) struct NodePeer {
    pub site: Option<SiteId>,
    pub name: Option<String>,
    /// Where browsers reach it (its PUBLIC_URL).
    pub public_url: Option<String>,
    pub round: Round,
    /// When the last round ended (completed or failed): the next is due a sync interval later.
    pub last_sync: Option<Instant>,
    /// How far this node has merged the peer's changes.
    pub watermark: Option<DbVersion>,
    /// Its WebSocket listen addresses (identify), where browsers can reach it over libp2p.
    pub browser_addrs: Vec<Multiaddr>,
}

/// Anti-entropy with one peer: one round at a time, a page at a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Round {
    Idle,
    Running {
        started: Instant,
        /// Changes merged so far in this round.
        changes: usize,
        step: Step,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Step {
    /// Reading the watermark kept for the peer's site.
    ReadingWatermark,
    /// A page was asked for.
    AwaitingPage(OutboundRequestId),
    /// A page arrived and is being merged.
    Merging,
}

/// How a round ended, for the log.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct RoundSummary {
    pub changes: usize,
    pub duration: Duration,
}

impl NodePeer {
    fn new(agent: Agent) -> Self {
        Self {
            site: agent.site,
            name: agent.name,
            public_url: agent.url,
            round: Round::Idle,
            last_sync: None,
            watermark: None,
            browser_addrs: Vec::new(),
        }
    }

    /// No round running, and the interval since the last one has passed (or there was none).
    pub fn round_due(&self, interval: Duration, now: Instant) -> bool {
        self.round == Round::Idle
            && self
                .last_sync
                .is_none_or(|t| now.saturating_duration_since(t) >= interval)
    }

    /// Starts a round; false when one is running already.
    pub fn start_round(&mut self, now: Instant) -> bool {
        if self.round != Round::Idle {
            return false;
        }
        self.round = Round::Running {
            started: now,
            changes: 0,
            step: Step::ReadingWatermark,
        };
        true
    }

    pub fn page_requested(&mut self, request: OutboundRequestId) {
        if let Round::Running { step, .. } = &mut self.round {
            *step = Step::AwaitingPage(request);
        }
    }

    /// A response to `request` arrived. True when it is the page this round waits for (the
    /// round moves on to merging it); false for anything else, which is ignored.
    pub fn page_arrived(&mut self, request: OutboundRequestId) -> bool {
        match &mut self.round {
            Round::Running { step, .. } if *step == Step::AwaitingPage(request) => {
                *step = Step::Merging;
                true
            }
            _ => false,
        }
    }

    /// A page was merged up to `up_to`. With `more`, the round goes on (the next page is
    /// asked for from there); otherwise it ends, and its summary is returned.
    pub fn page_merged(
        &mut self,
        up_to: DbVersion,
        merged: usize,
        more: bool,
        now: Instant,
    ) -> Option<RoundSummary> {
        self.watermark = Some(up_to);
        let Round::Running {
            started, changes, ..
        } = &mut self.round
        else {
            return None;
        };
        *changes += merged;
        if more {
            return None;
        }
        let summary = RoundSummary {
            changes: *changes,
            duration: now.saturating_duration_since(*started),
        };
        self.round = Round::Idle;
        self.last_sync = Some(now);
        Some(summary)
    }

    /// The round failed (the request, or the database): try again a sync interval later.
    pub fn round_failed(&mut self, now: Instant) {
        self.round = Round::Idle;
        self.last_sync = Some(now);
    }
}

impl Peer {
    pub fn node(&self) -> Option<&NodePeer> {
        match &self.role {
            Role::Node(node) => Some(node),
            _ => None,
        }
    }

    pub fn node_mut(&mut self) -> Option<&mut NodePeer> {
        match &mut self.role {
            Role::Node(node) => Some(node),
            _ => None,
        }
    }

    fn info(&self, id: &PeerId, node: &NodePeer) -> PeerInfo {
        let relayed = self.connections.values().filter(|c| c.relayed).count();
        let direct = self.connections.len() - relayed;
        PeerInfo {
            peer_id: id.to_string(),
            addresses: self
                .connections
                .values()
                .map(|c| c.addr.to_string())
                .collect(),
            connection: if direct > 0 {
                ConnectionKind::Direct
            } else {
                ConnectionKind::Relayed
            },
            direct_connections: direct,
            relayed_connections: relayed,
            site_id: node.site.map(|s| s.to_string()),
            node: node.name.clone(),
            public_url: node.public_url.clone(),
            last_sync_secs_ago: node.last_sync.map(|t| t.elapsed().as_secs()),
            watermark: node.watermark.map(|w| w.0),
            browser_addrs: node.browser_addrs.iter().map(ToString::to_string).collect(),
        }
    }
}

impl EventLoop {
    /// The nodes of this deployment, for /api/peers.
    pub(super) fn peer_infos(&self) -> Vec<PeerInfo> {
        self.peers
            .iter()
            .filter_map(|(id, peer)| Some(peer.info(id, peer.node()?)))
            .collect()
    }

    pub(super) fn on_connection_established(
        &mut self,
        peer_id: PeerId,
        connection_id: ConnectionId,
        endpoint: &ConnectedPoint,
    ) {
        if self.banned.contains_key(&peer_id) {
            let _ = self.swarm.disconnect_peer_id(peer_id);
            return;
        }
        let role = if self.relays.is_known(&peer_id) {
            Role::Relay
        } else {
            Role::Unidentified
        };
        let peer = self.peers.entry(peer_id).or_insert_with(|| Peer {
            connections: HashMap::new(),
            role,
        });
        let addr = endpoint.get_remote_address().clone();
        let relayed = endpoint.is_relayed();
        peer.connections.insert(
            connection_id,
            Connection {
                addr: addr.clone(),
                relayed,
            },
        );
        if peer.node().is_some() {
            tracing::info!(%peer_id, %addr, relayed, "another connection to a peer");
        } else {
            tracing::debug!(%peer_id, %addr, relayed, "connected");
        }
        self.redial_connected(&peer_id);
    }

    pub(super) fn on_connection_closed(
        &mut self,
        peer_id: PeerId,
        connection_id: ConnectionId,
        num_established: u32,
    ) {
        if let Some(peer) = self.peers.get_mut(&peer_id) {
            peer.connections.remove(&connection_id);
        }
        if num_established > 0 {
            return;
        }
        if let Some(peer) = self.peers.remove(&peer_id) {
            if let Some(node) = peer.node() {
                tracing::info!(%peer_id, node = ?node.name, "peer disconnected");
            }
            self.redial_disconnected(&peer_id);
        }
    }

    /// Identify says what a peer is: a node of this deployment (synced with at once), a relay
    /// (kept), or anything else (disconnected and refused for a while).
    pub(super) fn on_identified(&mut self, peer_id: PeerId, info: identify::Info) {
        let ours = deployment_tag(&self.service);
        self.relays.learned_addrs(peer_id, &info.listen_addrs);
        if info.protocol_version != ours {
            let is_relay = self.relays.is_known(&peer_id)
                || info.protocols.contains(&relay::HOP_PROTOCOL_NAME);
            if !is_relay {
                tracing::info!(%peer_id, theirs = %info.protocol_version, %ours, "peer belongs to another deployment; disconnecting");
                self.forget_mdns_redial(&peer_id);
                self.ban(peer_id);
                return;
            }
            if let Some(peer) = self.peers.get_mut(&peer_id)
                && !matches!(peer.role, Role::Relay)
            {
                peer.role = Role::Relay;
                tracing::info!(%peer_id, agent = %info.agent_version, "connected to a relay");
            }
            return;
        }
        let agent = Agent::parse(&info.agent_version);
        let browser_addrs: Vec<Multiaddr> = info
            .listen_addrs
            .iter()
            .filter(|a| super::relays::is_websocket(a))
            .map(|a| a.clone().with_p2p(peer_id).unwrap_or_else(|a| a))
            .collect();
        let Some(peer) = self.peers.get_mut(&peer_id) else {
            return;
        };
        match &mut peer.role {
            // Identify again (a push, or the periodic one): keep the round, take the news.
            Role::Node(node) => {
                node.site = agent.site;
                node.name = agent.name;
                node.public_url = agent.url;
                node.browser_addrs = browser_addrs;
            }
            Role::Unidentified | Role::Relay => {
                let mut node = NodePeer::new(agent);
                node.browser_addrs = browser_addrs;
                tracing::info!(%peer_id, node = ?node.name, site = ?node.site.map(|s| s.to_string()), "peer joined");
                peer.role = Role::Node(node);
                self.swarm
                    .behaviour_mut()
                    .gossipsub
                    .add_explicit_peer(&peer_id);
                self.begin_sync_round(peer_id);
            }
        }
    }

    /// Hostile input: disconnect the peer and refuse it for [`BAN_DURATION`].
    pub(super) fn penalise(&mut self, peer: PeerId, reason: &str) {
        tracing::warn!(%peer, %reason, "rejected input from peer; disconnecting and banning for {}s", BAN_DURATION.as_secs());
        self.ban(peer);
        self.peers.remove(&peer);
    }

    fn ban(&mut self, peer: PeerId) {
        self.banned.insert(peer, Instant::now() + BAN_DURATION);
        let _ = self.swarm.disconnect_peer_id(peer);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node() -> NodePeer {
        NodePeer::new(Agent::default())
    }

    /// Outbound request ids can only be made by a real behaviour: send two requests to an
    /// unconnected peer (they fail later; the ids are all this needs).
    fn request_ids() -> (OutboundRequestId, OutboundRequestId) {
        use libp2p::request_response::{self, ProtocolSupport};
        let mut behaviour = request_response::Behaviour::with_codec(
            p2p_protocol::SyncCodec,
            [(p2p_protocol::sync_protocol("test"), ProtocolSupport::Full)],
            request_response::Config::default(),
        );
        let peer = PeerId::random();
        let request = changeset::Request {
            requester: SiteId([1; 16]),
            since: DbVersion(0),
            limits: changeset::PageLimits::default(),
        };
        let a = behaviour.send_request(&peer, request);
        let b = behaviour.send_request(&peer, request);
        (a, b)
    }

    #[test]
    fn a_round_runs_page_by_page_and_ends_idle_with_the_watermark() {
        let (first, second) = request_ids();
        let t0 = Instant::now();
        let mut peer = node();
        assert!(peer.round_due(Duration::from_secs(1), t0));
        assert!(peer.start_round(t0));
        assert!(!peer.start_round(t0), "one round at a time");
        assert!(!peer.round_due(Duration::ZERO, t0));

        peer.page_requested(first);
        assert!(peer.page_arrived(first));
        assert_eq!(peer.page_merged(DbVersion(5_000), 5_000, true, t0), None);
        peer.page_requested(second);
        assert!(!peer.page_arrived(first), "a stale response is ignored");
        assert!(peer.page_arrived(second));
        assert!(!peer.page_arrived(second), "and so is the same one twice");
        let end = t0 + Duration::from_millis(300);
        let summary = peer.page_merged(DbVersion(5_001), 1, false, end);
        assert_eq!(
            summary,
            Some(RoundSummary {
                changes: 5_001,
                duration: Duration::from_millis(300),
            })
        );
        assert_eq!(peer.round, Round::Idle);
        assert_eq!(peer.watermark, Some(DbVersion(5_001)));
        assert!(!peer.round_due(Duration::from_secs(1), end));
        assert!(peer.round_due(Duration::from_secs(1), end + Duration::from_secs(1)));
    }

    #[test]
    fn a_failed_round_waits_a_sync_interval_and_ignores_its_late_page() {
        let (first, _) = request_ids();
        let t0 = Instant::now();
        let mut peer = node();
        assert!(peer.start_round(t0));
        peer.page_requested(first);
        peer.round_failed(t0);
        assert_eq!(peer.round, Round::Idle);
        assert!(!peer.page_arrived(first));
        assert!(!peer.round_due(Duration::from_secs(1), t0));
        assert!(peer.round_due(Duration::from_secs(1), t0 + Duration::from_secs(1)));
    }
}
