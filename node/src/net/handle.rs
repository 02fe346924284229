//! What the HTTP side sees of the network: a handle to send commands to the loop, and the
//! status /api/peers shows.

use anyhow::Context;
use changeset::Change;
use libp2p::Multiaddr;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

use super::event_loop::EventLoop;

/// What /api/peers shows of a connected node.
#[derive(Debug, Clone, Serialize)]
pub struct PeerInfo {
    pub peer_id: String,
    pub addresses: Vec<String>,
    /// Direct when at least one connection is direct, else relayed (through a relay).
    pub connection: ConnectionKind,
    pub direct_connections: usize,
    pub relayed_connections: usize,
    pub site_id: Option<String>,
    pub node: Option<String>,
    /// Where browsers reach it: a page fails over to it when its own node is down.
    pub public_url: Option<String>,
    /// Seconds since the last completed anti-entropy round with this peer.
    pub last_sync_secs_ago: Option<u64>,
    pub watermark: Option<u64>,
    /// Its WebSocket addresses, where a browser can sync with it over libp2p.
    pub browser_addrs: Vec<String>,
}

/// How a peer is connected, as /api/peers says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ConnectionKind {
    Direct,
    /// Only through a relay's circuit.
    Relayed,
}

/// The state of this node's reservation on a relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Reservation {
    /// Others can reach this node through the relay.
    Active,
    /// Asked for, not granted yet.
    Pending,
    /// Waiting to ask again.
    None,
}

/// What /api/peers shows of a configured relay.
#[derive(Debug, Clone, Serialize)]
pub struct RelayInfo {
    pub peer_id: String,
    pub addr: String,
    pub reservation: Reservation,
    pub connected: bool,
    /// Why the last reservation ended or failed, if it did.
    pub last_error: Option<String>,
    /// Its WebSocket addresses (from identify): where browsers reach it.
    pub browser_addrs: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct NetStatus {
    pub peer_id: String,
    /// MDNS_SERVICE_NAME: browsers of this deployment meet under it on the relays.
    pub deployment: String,
    pub listen_addrs: Vec<String>,
    /// This node's WebSocket addresses (P2P_LISTEN with `/ws`), where a browser can sync with
    /// it over libp2p.
    pub browser_addrs: Vec<String>,
    pub peers: Vec<PeerInfo>,
    pub relays: Vec<RelayInfo>,
}

pub(super) enum Command {
    Status(oneshot::Sender<NetStatus>),
    /// A relay of RELAY_ADDRS given by URL, now that its /addrs named it.
    AddRelay(Multiaddr),
    /// Changes merged from outside the swarm (a browser's push), to announce to the nodes.
    Gossip(Vec<Change>),
}

/// The HTTP side's handle on the network loop.
#[derive(Clone)]
pub struct NetHandle {
    commands: mpsc::Sender<Command>,
}

impl NetHandle {
    pub(super) fn new(commands: mpsc::Sender<Command>) -> Self {
        Self { commands }
    }

    pub async fn status(&self) -> anyhow::Result<NetStatus> {
        let (reply, rx) = oneshot::channel();
        self.commands
            .send(Command::Status(reply))
            .await
            .context("network loop stopped")?;
        rx.await.context("network loop dropped the request")
    }

    /// Announces changes that a browser pushed to this node, so other nodes get them at once
    /// rather than at their next anti-entropy round. Dropped when the loop is busy: the
    /// changes are in the database, and anti-entropy delivers them anyway.
    pub fn gossip(&self, changes: Vec<Change>) {
        if let Err(e) = self.commands.try_send(Command::Gossip(changes)) {
            tracing::debug!(error = %e, "gossip of pushed changes skipped");
        }
    }
}

impl EventLoop {
    pub(super) fn status(&self) -> NetStatus {
        let me = *self.swarm.local_peer_id();
        NetStatus {
            peer_id: me.to_string(),
            deployment: self.service.clone(),
            listen_addrs: self.swarm.listeners().map(ToString::to_string).collect(),
            browser_addrs: self
                .swarm
                .listeners()
                .filter(|a| super::relays::is_websocket(a))
                .map(|a| a.clone().with_p2p(me).unwrap_or_else(|a| a).to_string())
                .collect(),
            peers: self.peer_infos(),
            relays: self.relay_infos(),
        }
    }
}
