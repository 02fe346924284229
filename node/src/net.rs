//! Replication between nodes over libp2p.
//!
//! Tasks and flow:
//! - **Discovery**: mDNS (when enabled) and BOOTSTRAP_PEERS find nodes; bootstrap peers are
//!   redialled with exponential backoff while disconnected. Identify tells every new peer's
//!   deployment (MDNS_SERVICE_NAME, in the identify protocol version) and site id (in the agent
//!   string); peers of another deployment are disconnected and ignored.
//! - **Gossip**: when a local write commits, the store bumps a watch channel; the loop reads the
//!   node's own changes above what it last published and publishes each transaction as one
//!   message on the deployment's gossipsub topic. Received messages are validated, accepted or
//!   rejected (which lowers the sender's score), and merged.
//! - **Anti-entropy**: on identify and every SYNC_INTERVAL_SECS, the node asks each peer for its
//!   changes above the watermark it keeps for that peer's site, page by page; each page is
//!   merged and the watermark advanced in the same transaction. This repairs whatever gossip
//!   missed: restarts, partitions, late joiners.
//! - **Relays**: for each of RELAY_ADDRS the node keeps a reservation (listens on
//!   `<relay>/p2p-circuit`), so others reach it at `<relay>/p2p-circuit/p2p/<its id>`; when the
//!   reservation ends (the relay restarted, the connection dropped, the relay refused) it asks
//!   again with backoff. BOOTSTRAP_PEERS may be such circuit addresses. DCUtR then tries to
//!   replace a relayed connection with a direct one (hole punching). Relays are recognised by
//!   being configured or by offering the relay protocol; they are kept connected but never
//!   synced with.
//! - **Hostile input** (undecodable bytes, wrong schema, oversized batches, absurd versions)
//!   is logged, applies nothing, and gets the peer disconnected and banned for a while.
//!
//! Database work runs on the blocking pool; results come back to the loop as `Done` messages,
//! so the swarm is never stalled by SQLite.

mod backoff;
pub mod protocol;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use changeset::{Change, DbVersion, SiteId};
use futures::StreamExt;
use libp2p::connection_limits::{self, ConnectionLimits};
use libp2p::core::transport::ListenerId;
use libp2p::gossipsub::{self, IdentTopic, MessageAcceptance};
use libp2p::multiaddr::Protocol;
use libp2p::request_response::{self, OutboundRequestId, ProtocolSupport, ResponseChannel};
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::swarm::{ConnectionId, NetworkBehaviour, SwarmEvent};
use libp2p::{
    Multiaddr, PeerId, Swarm, dcutr, identify, mdns, memory_connection_limits, noise, ping, relay,
    tcp, yamux,
};
use serde::Serialize;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, RelayAddr};
use crate::db::{Store, Watermark};
use backoff::Backoff;
use protocol::{GossipMessage, SyncCodec, SyncRequest, SyncResponse};

/// Changes per sync page: large enough that catching up 100,000 changes takes few round trips,
/// small enough that one page is a few MiB and one SQLite transaction of well under a second.
const SYNC_PAGE_CHANGES: usize = 5_000;
/// How long a peer that sent hostile input is refused.
const BAN_DURATION: Duration = Duration::from_secs(60);
/// Bounded queues: commands from the HTTP side, and results of database work.
const COMMAND_QUEUE: usize = 64;
const DONE_QUEUE: usize = 256;
/// Gossip merges in flight at once. Past this, a received message is dropped (and counted in
/// the logs): anti-entropy brings its changes anyway, so a flood cannot pile up tasks.
const GOSSIP_MERGES_IN_FLIGHT: usize = 8;
/// Sync pages being read for peers at once: each reads up to 5,000 changes (a few MiB), so
/// this bounds the memory peers can make a node spend on them; more than the two cores can
/// use anyway.
const SYNC_SERVES_IN_FLIGHT: usize = 8;
/// Incoming connections still in their handshake: a flood of half-open dials cannot pile up.
const MAX_PENDING_INCOMING: u32 = 64;

#[derive(NetworkBehaviour)]
pub struct Behaviour {
    /// Refuses connections over MAX_CONNECTIONS / MAX_CONNECTIONS_PER_PEER.
    limits: connection_limits::Behaviour,
    /// Refuses new connections while the process uses more than MAX_MEMORY_MIB.
    memory: memory_connection_limits::Behaviour,
    identify: identify::Behaviour,
    ping: ping::Behaviour,
    gossipsub: gossipsub::Behaviour,
    mdns: Toggle<mdns::tokio::Behaviour>,
    sync: request_response::Behaviour<SyncCodec>,
    relay_client: relay::client::Behaviour,
    dcutr: dcutr::Behaviour,
}

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
}

#[derive(Debug, Clone, Serialize)]
pub struct NetStatus {
    pub peer_id: String,
    pub listen_addrs: Vec<String>,
    pub peers: Vec<PeerInfo>,
    pub relays: Vec<RelayInfo>,
}

enum Command {
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

/// Results of blocking work, sent back to the loop.
enum Done {
    PublishReady {
        changes: Vec<Change>,
        since: DbVersion,
    },
    Published {
        up_to: DbVersion,
    },
    PublishFailed,
    ServeSync(
        ResponseChannel<SyncResponse>,
        Result<SyncResponse, String>,
        PeerId,
    ),
    SyncWatermark {
        peer: PeerId,
        since: DbVersion,
    },
    SyncMerged {
        peer: PeerId,
        site: SiteId,
        more: bool,
        up_to: DbVersion,
        changes: usize,
        impacted: i64,
        started: Instant,
    },
    MergeFailed {
        peer: PeerId,
        error: String,
    },
    GossipMerged {
        peer: PeerId,
        changes: usize,
        impacted: i64,
    },
}

struct PeerState {
    /// Open connections: remote address, and whether it goes through a relay.
    connections: HashMap<ConnectionId, (Multiaddr, bool)>,
    /// A relay (configured, or offering the relay protocol): kept, never synced with.
    relay: bool,
    site: Option<SiteId>,
    node_name: Option<String>,
    public_url: Option<String>,
    /// Same deployment (identify said so): only these are synced with.
    accepted: bool,
    syncing: Option<OutboundRequestId>,
    round_started: Option<Instant>,
    round_changes: usize,
    last_sync: Option<Instant>,
    watermark: Option<DbVersion>,
}

/// A peer to dial again, with backoff, while not connected: a bootstrap peer (for ever), or one
/// found by mDNS (until its mDNS record expires, or it turns out to be of another deployment).
struct Redial {
    addr: Multiaddr,
    next_at: Instant,
    backoff: Backoff,
    from_mdns: bool,
}

/// A relay of RELAY_ADDRS and the node's reservation on it.
impl RelayState {
    fn new(addr: Multiaddr, now: Instant) -> Self {
        Self {
            addr,
            listener: None,
            reserved: false,
            next_at: now,
            backoff: Backoff::new(),
            last_error: None,
        }
    }
}

struct RelayState {
    addr: Multiaddr,
    /// The `<relay>/p2p-circuit` listener while a reservation is asked for or held.
    listener: Option<ListenerId>,
    reserved: bool,
    next_at: Instant,
    backoff: Backoff,
    last_error: Option<String>,
}

/// Builds the swarm and starts the network loop; returns its handle and task.
pub fn start(
    config: &Config,
    store: Arc<Store>,
    local_writes: watch::Receiver<u64>,
    shutdown: CancellationToken,
) -> anyhow::Result<(NetHandle, tokio::task::JoinHandle<()>)> {
    let key = p2p_identity::load_or_create(&config.data_dir)?;
    let site = SiteId(store.site_id());
    let service = config.mdns_service_name.clone();
    let protocol_version = deployment_tag(&service);
    let mut agent = format!(
        "todo-node/{} site={} name={}",
        env!("CARGO_PKG_VERSION"),
        site,
        config.node_name.replace(' ', "_")
    );
    if let Some(url) = &config.public_url {
        agent.push_str(&format!(" url={url}"));
    }
    let enable_mdns = config.enable_mdns;
    let max_connections = config.max_connections;
    let max_connections_per_peer = config.max_connections_per_peer;
    let max_memory_bytes = config.max_memory_mib.saturating_mul(1024 * 1024) as usize;
    let sync_protocol = protocol::sync_protocol(&service);

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
        .with_relay_client(noise::Config::new, yamux::Config::default)
        .context("relay client transport")?
        .with_behaviour(|key, relay_client| {
            let connection_limits = ConnectionLimits::default()
                .with_max_established(Some(max_connections))
                .with_max_established_per_peer(Some(max_connections_per_peer))
                .with_max_pending_incoming(Some(MAX_PENDING_INCOMING));
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
                        .with_agent_version(agent),
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
    let now = Instant::now();
    let redials = config
        .bootstrap_peers
        .iter()
        .filter_map(|addr| {
            let peer = peer_of(addr)?;
            Some((
                peer,
                Redial {
                    addr: addr.clone(),
                    next_at: now,
                    backoff: Backoff::new(),
                    from_mdns: false,
                },
            ))
        })
        .collect();

    let relays: HashMap<PeerId, RelayState> = config
        .relay_addrs
        .iter()
        .filter_map(|relay| match relay {
            RelayAddr::Peer(addr) => Some((peer_of(addr)?, RelayState::new(addr.clone(), now))),
            RelayAddr::Http(_) => None,
        })
        .collect();
    // Relays named in circuit addresses of BOOTSTRAP_PEERS are relays too.
    let known_relays = relays
        .keys()
        .copied()
        .chain(config.bootstrap_peers.iter().filter_map(relay_of))
        .collect();

    let (commands_tx, commands) = mpsc::channel(COMMAND_QUEUE);
    let (done_tx, done) = mpsc::channel(DONE_QUEUE);
    let last_published = DbVersion(*local_writes.borrow());
    let event_loop = EventLoop {
        swarm,
        store,
        site,
        service: config.mdns_service_name.clone(),
        topic: changes_topic(&config.mdns_service_name),
        commands,
        local_writes,
        last_published,
        publishing: false,
        done_tx,
        done,
        peers: HashMap::new(),
        banned: HashMap::new(),
        redials,
        relays,
        known_relays,
        sync_interval: Duration::from_secs(config.sync_interval_secs),
        gossip_enabled: config.gossip,
        gossip_slots: Arc::new(tokio::sync::Semaphore::new(GOSSIP_MERGES_IN_FLIGHT)),
        serve_slots: Arc::new(tokio::sync::Semaphore::new(SYNC_SERVES_IN_FLIGHT)),
        tasks: JoinSet::new(),
        shutdown: shutdown.clone(),
    };
    for relay in &config.relay_addrs {
        if let RelayAddr::Http(url) = relay {
            tokio::spawn(resolve_relay(
                url.clone(),
                commands_tx.clone(),
                shutdown.clone(),
            ));
        }
    }
    let task = tokio::spawn(event_loop.run());
    Ok((
        NetHandle {
            commands: commands_tx,
        },
        task,
    ))
}

/// What a relay's `GET /addrs` says (only what is used here).
#[derive(serde::Deserialize)]
struct RelayAddrs {
    addrs: Vec<String>,
}

/// Reads a relay's id and addresses from its HTTP server (`<url>/addrs`), retrying with
/// backoff until it answers (a relay may start after the node), then hands the address to the
/// loop. The relay keeps its id across restarts, so once is enough.
async fn resolve_relay(url: String, commands: mpsc::Sender<Command>, shutdown: CancellationToken) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build();
    let Ok(client) = client else {
        tracing::error!(%url, "cannot make an HTTP client to ask the relay for its addresses");
        return;
    };
    let mut backoff = Backoff::new();
    loop {
        let answer = async {
            let response = client.get(format!("{url}/addrs")).send().await?;
            response.error_for_status()?.json::<RelayAddrs>().await
        };
        match answer.await {
            Ok(found) => match pick_relay_addr(&url, &found.addrs) {
                Some(addr) => {
                    let _ = commands.send(Command::AddRelay(addr)).await;
                    return;
                }
                None => {
                    tracing::warn!(%url, addrs = ?found.addrs, "the relay lists no TCP or QUIC address with its id")
                }
            },
            Err(error) => tracing::info!(%url, %error, "relay not answering yet; asking again"),
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(backoff.next_delay()) => {}
        }
    }
}

/// The relay address to use from its /addrs: TCP (or else QUIC) with its id, preferring the
/// host the URL names (the address this node can reach it at).
fn pick_relay_addr(url: &str, addrs: &[String]) -> Option<Multiaddr> {
    let host = url
        .split_once("://")
        .map_or(url, |(_, rest)| rest)
        .split([':', '/'])
        .next()
        .unwrap_or_default();
    let candidates: Vec<Multiaddr> = addrs
        .iter()
        .filter_map(|a| a.parse::<Multiaddr>().ok())
        .filter(|a| peer_of(a).is_some() && !is_relayed(a))
        .filter(|a| {
            !a.iter()
                .any(|p| matches!(p, Protocol::Ws(_) | Protocol::Wss(_)))
        })
        .collect();
    let on_host = |a: &Multiaddr| {
        a.iter().next().is_some_and(|p| match p {
            Protocol::Ip4(ip) => ip.to_string() == host,
            Protocol::Ip6(ip) => ip.to_string() == host.trim_matches(['[', ']']),
            Protocol::Dns(h) | Protocol::Dns4(h) | Protocol::Dns6(h) => h == host,
            _ => false,
        })
    };
    let tcp = |a: &Multiaddr| a.iter().any(|p| matches!(p, Protocol::Tcp(_)));
    let rank = |a: &Multiaddr| (!on_host(a), !tcp(a));
    candidates.into_iter().min_by_key(rank)
}

fn deployment_tag(service: &str) -> String {
    format!("/todo-hybrid/{service}/1")
}

fn changes_topic(service: &str) -> IdentTopic {
    IdentTopic::new(format!("todo-hybrid/{service}/changes/1"))
}

fn peer_of(addr: &Multiaddr) -> Option<PeerId> {
    match addr.iter().last() {
        Some(Protocol::P2p(peer)) => Some(peer),
        _ => None,
    }
}

/// The relay of a circuit address (`<relay>/p2p/<relay id>/p2p-circuit/...`).
fn relay_of(addr: &Multiaddr) -> Option<PeerId> {
    let mut relay = None;
    for p in addr.iter() {
        match p {
            Protocol::P2p(peer) => relay = Some(peer),
            Protocol::P2pCircuit => return relay,
            _ => {}
        }
    }
    None
}

fn is_relayed(addr: &Multiaddr) -> bool {
    addr.iter().any(|p| matches!(p, Protocol::P2pCircuit))
}

/// What a node says of itself in its identify agent string.
#[derive(Debug, Default, PartialEq)]
struct Agent {
    site: Option<SiteId>,
    name: Option<String>,
    /// Where browsers reach it (PUBLIC_URL).
    url: Option<String>,
}

/// Reads `site=<hex>`, `name=<name>` and `url=<origin>` from a peer's identify agent string.
fn parse_agent(agent: &str) -> Agent {
    let mut out = Agent::default();
    for part in agent.split_whitespace() {
        if let Some(hex) = part.strip_prefix("site=") {
            out.site = hex.parse().ok();
        } else if let Some(n) = part.strip_prefix("name=") {
            out.name = Some(n.to_owned());
        } else if let Some(u) = part.strip_prefix("url=")
            && (u.starts_with("http://") || u.starts_with("https://"))
        {
            out.url = Some(u.to_owned());
        }
    }
    out
}

struct EventLoop {
    swarm: Swarm<Behaviour>,
    store: Arc<Store>,
    site: SiteId,
    service: String,
    topic: IdentTopic,
    commands: mpsc::Receiver<Command>,
    local_writes: watch::Receiver<u64>,
    last_published: DbVersion,
    publishing: bool,
    done_tx: mpsc::Sender<Done>,
    done: mpsc::Receiver<Done>,
    peers: HashMap<PeerId, PeerState>,
    banned: HashMap<PeerId, Instant>,
    redials: HashMap<PeerId, Redial>,
    relays: HashMap<PeerId, RelayState>,
    /// Configured relays and those named in bootstrap circuit addresses.
    known_relays: HashSet<PeerId>,
    sync_interval: Duration,
    /// GOSSIP: publish local writes at once (false: anti-entropy alone).
    gossip_enabled: bool,
    gossip_slots: Arc<tokio::sync::Semaphore>,
    /// Sync requests being answered; more are dropped (the asker retries next round).
    serve_slots: Arc<tokio::sync::Semaphore>,
    /// Every database task the loop started: bounded by the slots above and by one sync round
    /// per peer, and aborted with the loop.
    tasks: JoinSet<()>,
    shutdown: CancellationToken,
}

impl EventLoop {
    async fn run(mut self) {
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut writes_open = true;
        loop {
            tokio::select! {
                biased;
                () = self.shutdown.cancelled() => break,
                Some(done) = self.done.recv() => self.on_done(done),
                changed = self.local_writes.changed(), if writes_open => match changed {
                    Ok(()) => self.publish_local_changes(),
                    Err(_) => writes_open = false,
                },
                Some(command) = self.commands.recv() => self.on_command(command),
                Some(_) = self.tasks.join_next(), if !self.tasks.is_empty() => {}
                event = self.swarm.select_next_some() => self.on_swarm_event(event),
                _ = tick.tick() => self.on_tick(),
            }
        }
        tracing::info!("network loop stopped");
    }

    /// Runs `work` on the blocking pool; its result comes back to the loop as `Done`. The task
    /// belongs to the loop's JoinSet, so none outlives the loop.
    fn spawn_db<F>(&mut self, work: F)
    where
        F: FnOnce(&Store) -> Done + Send + 'static,
    {
        let store = self.store.clone();
        let done = self.done_tx.clone();
        self.tasks.spawn(async move {
            if let Ok(result) = tokio::task::spawn_blocking(move || work(&store)).await {
                // The loop may have stopped; nothing to report to then.
                let _ = done.send(result).await;
            }
        });
    }

    fn on_command(&mut self, command: Command) {
        match command {
            Command::AddRelay(addr) => {
                if let Some(peer) = peer_of(&addr) {
                    tracing::info!(relay = %peer, %addr, "relay found through its /addrs");
                    self.known_relays.insert(peer);
                    self.relays
                        .entry(peer)
                        .or_insert_with(|| RelayState::new(addr, Instant::now()));
                    self.reserve_on_relays(Instant::now());
                }
            }
            Command::Gossip(changes) => {
                self.gossip_transactions(&changes);
            }
            Command::Status(reply) => {
                let peers = self
                    .peers
                    .iter()
                    .filter(|(_, p)| p.accepted)
                    .map(|(id, p)| {
                        let relayed = p.connections.values().filter(|(_, r)| *r).count();
                        let direct = p.connections.len() - relayed;
                        PeerInfo {
                            peer_id: id.to_string(),
                            addresses: p.connections.values().map(|(a, _)| a.to_string()).collect(),
                            connection: if direct > 0 {
                                ConnectionKind::Direct
                            } else {
                                ConnectionKind::Relayed
                            },
                            direct_connections: direct,
                            relayed_connections: relayed,
                            site_id: p.site.map(|s| s.to_string()),
                            node: p.node_name.clone(),
                            public_url: p.public_url.clone(),
                            last_sync_secs_ago: p.last_sync.map(|t| t.elapsed().as_secs()),
                            watermark: p.watermark.map(|w| w.0),
                        }
                    })
                    .collect();
                let relays = self
                    .relays
                    .iter()
                    .map(|(id, r)| RelayInfo {
                        peer_id: id.to_string(),
                        addr: r.addr.to_string(),
                        reservation: match (r.reserved, r.listener.is_some()) {
                            (true, _) => Reservation::Active,
                            (false, true) => Reservation::Pending,
                            (false, false) => Reservation::None,
                        },
                        connected: self.swarm.is_connected(id),
                        last_error: r.last_error.clone(),
                    })
                    .collect();
                let _ = reply.send(NetStatus {
                    peer_id: self.swarm.local_peer_id().to_string(),
                    listen_addrs: self.swarm.listeners().map(ToString::to_string).collect(),
                    peers,
                    relays,
                });
            }
        }
    }

    fn on_tick(&mut self) {
        let now = Instant::now();
        self.banned.retain(|_, until| *until > now);
        self.reserve_on_relays(now);
        let due: Vec<(PeerId, Multiaddr)> = self
            .redials
            .iter()
            .filter(|(peer, r)| {
                r.next_at <= now
                    && !self.swarm.is_connected(peer)
                    && !self.banned.contains_key(*peer)
            })
            .map(|(peer, r)| (*peer, r.addr.clone()))
            .collect();
        for (peer, addr) in due {
            tracing::debug!(%peer, %addr, "dialing peer again");
            if let Err(error) = self.swarm.dial(addr.clone()) {
                tracing::warn!(%peer, %addr, %error, "dial failed");
            }
            if let Some(r) = self.redials.get_mut(&peer) {
                r.next_at = now + r.backoff.next_delay();
            }
        }
        let due: Vec<PeerId> = self
            .peers
            .iter()
            .filter(|(_, p)| {
                p.accepted
                    && p.syncing.is_none()
                    && p.round_started.is_none()
                    && p.last_sync
                        .is_none_or(|t| t.elapsed() >= self.sync_interval)
            })
            .map(|(id, _)| *id)
            .collect();
        for peer in due {
            self.begin_sync_round(peer);
        }
    }

    /// Asks each relay without a reservation (or a request under way) for one, once its
    /// backoff has passed. Listening on `<relay>/p2p-circuit` dials the relay if needed.
    fn reserve_on_relays(&mut self, now: Instant) {
        for (peer, relay) in &mut self.relays {
            if relay.listener.is_some() || relay.next_at > now {
                continue;
            }
            let circuit = relay.addr.clone().with(Protocol::P2pCircuit);
            match self.swarm.listen_on(circuit) {
                Ok(id) => {
                    tracing::debug!(relay = %peer, addr = %relay.addr, "asking the relay for a reservation");
                    relay.listener = Some(id);
                }
                Err(error) => {
                    tracing::warn!(relay = %peer, addr = %relay.addr, %error, "cannot listen through the relay");
                    relay.last_error = Some(error.to_string());
                    relay.next_at = now + relay.backoff.next_delay();
                }
            }
        }
    }

    /// A relay listener closed: the reservation ended (or was never granted). Ask again
    /// after the backoff.
    fn on_relay_listener_closed(&mut self, listener: ListenerId, error: Option<String>) {
        let Some((peer, relay)) = self
            .relays
            .iter_mut()
            .find(|(_, r)| r.listener == Some(listener))
        else {
            return;
        };
        let was_reserved = relay.reserved;
        relay.listener = None;
        relay.reserved = false;
        let retry = relay.backoff.next_delay();
        relay.next_at = Instant::now() + retry;
        let retry_secs = retry.as_secs_f64();
        relay.last_error = Some(
            error
                .clone()
                .unwrap_or_else(|| "connection to the relay closed".to_owned()),
        );
        if was_reserved {
            tracing::warn!(relay = %peer, error = ?error, retry_secs, "relay reservation lost; asking again");
        } else {
            tracing::info!(relay = %peer, error = ?error, retry_secs, "relay reservation not granted; asking again later");
        }
    }

    fn on_swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::NewListenAddr { address, .. } => {
                if is_relayed(&address) {
                    tracing::info!(%address, "reachable through the relay");
                } else {
                    tracing::info!(%address, peer_id = %self.swarm.local_peer_id(), "p2p listening");
                }
            }
            SwarmEvent::ListenerClosed {
                listener_id,
                reason,
                ..
            } => self.on_relay_listener_closed(listener_id, reason.err().map(|e| e.to_string())),
            SwarmEvent::ConnectionEstablished {
                peer_id,
                connection_id,
                endpoint,
                ..
            } => {
                if self.banned.contains_key(&peer_id) {
                    let _ = self.swarm.disconnect_peer_id(peer_id);
                    return;
                }
                let relay = self.known_relays.contains(&peer_id);
                let state = self.peers.entry(peer_id).or_insert_with(|| PeerState {
                    connections: HashMap::new(),
                    relay,
                    site: None,
                    node_name: None,
                    public_url: None,
                    accepted: false,
                    syncing: None,
                    round_started: None,
                    round_changes: 0,
                    last_sync: None,
                    watermark: None,
                });
                let addr = endpoint.get_remote_address().clone();
                let relayed = endpoint.is_relayed();
                state
                    .connections
                    .insert(connection_id, (addr.clone(), relayed));
                if let Some(r) = self.redials.get_mut(&peer_id) {
                    r.backoff.reset();
                }
                if state.accepted {
                    tracing::info!(%peer_id, %addr, relayed, "another connection to a peer");
                } else {
                    tracing::debug!(%peer_id, %addr, relayed, "connected");
                }
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                connection_id,
                num_established,
                ..
            } => {
                if let Some(p) = self.peers.get_mut(&peer_id) {
                    p.connections.remove(&connection_id);
                }
                if num_established == 0
                    && let Some(p) = self.peers.remove(&peer_id)
                {
                    if p.accepted {
                        tracing::info!(%peer_id, node = ?p.node_name, "peer disconnected");
                    }
                    if let Some(r) = self.redials.get_mut(&peer_id) {
                        r.next_at = Instant::now() + r.backoff.delay();
                    }
                }
            }
            SwarmEvent::OutgoingConnectionError { peer_id, error, .. } => {
                tracing::debug!(?peer_id, %error, "outgoing connection failed");
            }
            SwarmEvent::Behaviour(event) => self.on_behaviour_event(event),
            _ => {}
        }
    }

    fn on_behaviour_event(&mut self, event: BehaviourEvent) {
        match event {
            BehaviourEvent::Mdns(mdns::Event::Discovered(found)) => {
                for (peer, addr) in found {
                    if peer == *self.swarm.local_peer_id()
                        || self.banned.contains_key(&peer)
                        || self.swarm.is_connected(&peer)
                    {
                        continue;
                    }
                    tracing::info!(%peer, %addr, "discovered by mDNS");
                    let addr = addr.with_p2p(peer).unwrap_or_else(|a| a);
                    // Both nodes hear each other's mDNS answer at the same moment; if both dial
                    // at once from their listening port, the two TCP handshakes can merge into
                    // one connection that both sides think they dialled, and it fails. So only
                    // the node with the lower peer id dials at once; the other one dials a
                    // second later if still not connected, and both keep redialling with
                    // backoff while the mDNS record lasts.
                    if *self.swarm.local_peer_id() < peer
                        && let Err(error) = self.swarm.dial(addr.clone())
                    {
                        tracing::debug!(%peer, %error, "dial after mDNS failed");
                    }
                    self.redials.entry(peer).or_insert_with(|| Redial {
                        addr,
                        next_at: Instant::now() + Backoff::FIRST,
                        backoff: Backoff::new(),
                        from_mdns: true,
                    });
                }
            }
            BehaviourEvent::Mdns(mdns::Event::Expired(gone)) => {
                for (peer, _) in gone {
                    self.forget_mdns_redial(&peer);
                }
            }
            BehaviourEvent::Identify(identify::Event::Received { peer_id, info, .. }) => {
                self.on_identified(peer_id, info);
            }
            BehaviourEvent::Gossipsub(gossipsub::Event::Message {
                propagation_source,
                message_id,
                message,
            }) => self.on_gossip(propagation_source, message_id, message),
            BehaviourEvent::Sync(event) => self.on_sync_event(event),
            BehaviourEvent::RelayClient(relay::client::Event::ReservationReqAccepted {
                relay_peer_id,
                renewal,
                ..
            }) => {
                if let Some(relay) = self.relays.get_mut(&relay_peer_id) {
                    relay.reserved = true;
                    relay.backoff.reset();
                    relay.last_error = None;
                }
                if renewal {
                    tracing::debug!(relay = %relay_peer_id, "relay reservation renewed");
                } else {
                    tracing::info!(relay = %relay_peer_id, "relay reservation accepted");
                }
            }
            BehaviourEvent::RelayClient(relay::client::Event::InboundCircuitEstablished {
                src_peer_id,
                ..
            }) => {
                tracing::debug!(peer = %src_peer_id, "inbound connection through a relay");
            }
            BehaviourEvent::Dcutr(dcutr::Event {
                remote_peer_id,
                result,
            }) => match result {
                Ok(_) => {
                    tracing::info!(peer = %remote_peer_id, "direct connection established by hole punching (DCUtR); the relayed one is no longer needed")
                }
                Err(error) => {
                    tracing::info!(peer = %remote_peer_id, %error, "hole punching failed; the connection stays relayed")
                }
            },
            _ => {}
        }
    }

    fn on_identified(&mut self, peer_id: PeerId, info: identify::Info) {
        let ours = deployment_tag(&self.service);
        let is_relay = self.known_relays.contains(&peer_id)
            || info.protocols.contains(&relay::HOP_PROTOCOL_NAME);
        if info.protocol_version != ours && is_relay {
            if let Some(state) = self.peers.get_mut(&peer_id)
                && !state.relay
            {
                state.relay = true;
                tracing::info!(%peer_id, agent = %info.agent_version, "connected to a relay");
            }
            return;
        }
        if info.protocol_version != ours {
            tracing::info!(%peer_id, theirs = %info.protocol_version, %ours, "peer belongs to another deployment; disconnecting");
            self.forget_mdns_redial(&peer_id);
            self.banned.insert(peer_id, Instant::now() + BAN_DURATION);
            let _ = self.swarm.disconnect_peer_id(peer_id);
            return;
        }
        let agent = parse_agent(&info.agent_version);
        let Some(state) = self.peers.get_mut(&peer_id) else {
            return;
        };
        let newly = !state.accepted;
        state.accepted = true;
        state.site = agent.site;
        state.node_name = agent.name;
        state.public_url = agent.url;
        if newly {
            tracing::info!(%peer_id, node = ?state.node_name, site = ?state.site.map(|s| s.to_string()), "peer joined");
            self.swarm
                .behaviour_mut()
                .gossipsub
                .add_explicit_peer(&peer_id);
            self.begin_sync_round(peer_id);
        }
    }

    /// Starts an anti-entropy round: look up the watermark for the peer's site, then ask.
    fn begin_sync_round(&mut self, peer: PeerId) {
        let Some(state) = self.peers.get_mut(&peer) else {
            return;
        };
        if state.syncing.is_some() || state.round_started.is_some() {
            return;
        }
        state.round_started = Some(Instant::now());
        state.round_changes = 0;
        match state.site {
            Some(site) => {
                self.spawn_db(
                    move |store| match store.watermark(&peer.to_string(), site) {
                        Ok(since) => Done::SyncWatermark { peer, since },
                        Err(e) => Done::MergeFailed {
                            peer,
                            error: format!("reading watermark: {e}"),
                        },
                    },
                )
            }
            // A peer that did not say its site id: pull everything (merging is idempotent).
            None => self.request_page(peer, DbVersion(0)),
        }
    }

    fn request_page(&mut self, peer: PeerId, since: DbVersion) {
        let request = SyncRequest {
            requester: self.site,
            since,
            limits: changeset::PageLimits {
                max_changes: SYNC_PAGE_CHANGES,
                ..changeset::PageLimits::default()
            },
        };
        let id = self.swarm.behaviour_mut().sync.send_request(&peer, request);
        if let Some(state) = self.peers.get_mut(&peer) {
            state.syncing = Some(id);
        }
    }

    fn on_sync_event(&mut self, event: request_response::Event<SyncRequest, SyncResponse>) {
        match event {
            request_response::Event::Message { peer, message, .. } => match message {
                request_response::Message::Request {
                    request, channel, ..
                } => {
                    let accepted = self.peers.get(&peer).is_some_and(|p| p.accepted);
                    if !accepted {
                        tracing::debug!(%peer, "sync request before identify; dropped");
                        return;
                    }
                    let Ok(slot) = self.serve_slots.clone().try_acquire_owned() else {
                        // The peer's request fails and it asks again next round.
                        tracing::debug!(%peer, "busy serving {SYNC_SERVES_IN_FLIGHT} sync requests; dropped one");
                        return;
                    };
                    let site = self.site;
                    let max = request
                        .limits
                        .max_changes
                        .min(changeset::MAX_CHANGES_PER_BATCH);
                    self.spawn_db(move |store| {
                        let _slot = slot;
                        let response = store
                            .sync_page(request.since, request.requester, max)
                            .map(|(page, up_to)| SyncResponse {
                                source: site,
                                changes: page.changes,
                                up_to,
                                more: page.more,
                            })
                            .map_err(|e| e.to_string());
                        Done::ServeSync(channel, response, peer)
                    });
                }
                request_response::Message::Response {
                    request_id,
                    response,
                } => {
                    self.on_sync_response(peer, request_id, response);
                }
            },
            request_response::Event::OutboundFailure { peer, error, .. } => {
                tracing::warn!(%peer, %error, "sync request failed");
                if let Some(state) = self.peers.get_mut(&peer) {
                    state.syncing = None;
                    state.round_started = None;
                    state.last_sync = Some(Instant::now());
                }
            }
            request_response::Event::InboundFailure { peer, error, .. } => {
                tracing::debug!(%peer, %error, "serving a sync request failed");
            }
            request_response::Event::ResponseSent { .. } => {}
        }
    }

    fn on_sync_response(
        &mut self,
        peer: PeerId,
        request_id: OutboundRequestId,
        response: SyncResponse,
    ) {
        let Some(state) = self.peers.get_mut(&peer) else {
            return;
        };
        if state.syncing != Some(request_id) {
            return;
        }
        state.syncing = None;
        if state.site.is_some_and(|s| s != response.source) {
            self.penalise(
                peer,
                "sync response from a site other than the one it identified as",
            );
            return;
        }
        state.site = Some(response.source);
        let checked = changeset::validate(&response.changes).and_then(|()| {
            changeset::validate::page_up_to(&response.changes, response.up_to, response.more)
        });
        if let Err(error) = checked {
            self.penalise(peer, &format!("invalid sync page: {error}"));
            return;
        }
        let started = state.round_started.unwrap_or_else(Instant::now);
        let site = response.source;
        let count = response.changes.len();
        let (more, up_to) = (response.more, response.up_to);
        let watermark = Watermark {
            peer: peer.to_string(),
            source: site,
            version: up_to,
        };
        self.spawn_db(
            move |store| match store.merge(&response.changes, Some(&watermark)) {
                Ok(outcome) => Done::SyncMerged {
                    peer,
                    site,
                    more,
                    up_to,
                    changes: count,
                    impacted: outcome.rows_impacted,
                    started,
                },
                Err(e) => Done::MergeFailed {
                    peer,
                    error: e.to_string(),
                },
            },
        );
    }

    fn on_gossip(&mut self, source: PeerId, id: gossipsub::MessageId, message: gossipsub::Message) {
        let decoded = protocol::decode_gossip(&message.data)
            .map_err(|e| e.to_string())
            .and_then(|m| {
                changeset::validate(&m.changes)
                    .map(|()| m)
                    .map_err(|e| e.to_string())
            });
        let gossip = &mut self.swarm.behaviour_mut().gossipsub;
        match decoded {
            Ok(GossipMessage { changes }) => {
                gossip.report_message_validation_result(&id, &source, MessageAcceptance::Accept);
                let Ok(slot) = self.gossip_slots.clone().try_acquire_owned() else {
                    tracing::debug!(peer = %source, "busy: leaving a gossip message to anti-entropy");
                    return;
                };
                let count = changes.len();
                self.spawn_db(move |store| match store.merge(&changes, None) {
                    Ok(outcome) => {
                        drop(slot);
                        Done::GossipMerged {
                            peer: source,
                            changes: count,
                            impacted: outcome.rows_impacted,
                        }
                    }
                    Err(e) => Done::MergeFailed {
                        peer: source,
                        error: e.to_string(),
                    },
                });
            }
            Err(error) => {
                gossip.report_message_validation_result(&id, &source, MessageAcceptance::Reject);
                self.penalise(source, &format!("invalid gossip message: {error}"));
            }
        }
    }

    /// Stops redialling a peer that mDNS found (bootstrap peers are redialled for ever).
    fn forget_mdns_redial(&mut self, peer: &PeerId) {
        if self.redials.get(peer).is_some_and(|r| r.from_mdns) {
            self.redials.remove(peer);
        }
    }

    fn penalise(&mut self, peer: PeerId, reason: &str) {
        tracing::warn!(%peer, %reason, "rejected input from peer; disconnecting and banning for {}s", BAN_DURATION.as_secs());
        self.banned.insert(peer, Instant::now() + BAN_DURATION);
        let _ = self.swarm.disconnect_peer_id(peer);
        self.peers.remove(&peer);
    }

    fn publish_local_changes(&mut self) {
        if self.publishing {
            return; // the running publication re-checks when it finishes
        }
        self.publishing = true;
        let since = self.last_published;
        // Reading happens off the loop; publishing needs the swarm, so it comes back as Done.
        self.spawn_db(move |store| match store.local_changes_since(since) {
            Ok(changes) => Done::PublishReady { changes, since },
            Err(e) => {
                tracing::warn!(error = %e, "reading local changes for gossip");
                Done::PublishFailed
            }
        });
    }

    /// Publishes each transaction (db_version) as one message. With no peer subscribed the
    /// publish fails; that is fine, anti-entropy delivers the changes when a peer appears.
    fn publish(&mut self, changes: Vec<Change>, since: DbVersion) {
        let up_to = self.gossip_transactions(&changes).max(since);
        self.on_done(Done::Published { up_to });
    }

    /// Publishes each transaction (db_version) of `changes` as one gossip message; returns the
    /// highest db_version published (0 for none).
    fn gossip_transactions(&mut self, changes: &[Change]) -> DbVersion {
        let mut up_to = DbVersion(0);
        if !self.gossip_enabled {
            // Anti-entropy alone delivers them (GOSSIP=false).
            return changes.iter().map(|c| c.db_version).max().unwrap_or(up_to);
        }
        for transaction in changes.chunk_by(|a, b| a.db_version == b.db_version) {
            let version = transaction[0].db_version;
            let bytes = protocol::encode_gossip(&GossipMessage {
                changes: transaction.to_vec(),
            });
            let topic = self.topic.clone();
            match self.swarm.behaviour_mut().gossipsub.publish(topic, bytes) {
                Ok(_) => tracing::debug!(
                    db_version = version.0,
                    changes = transaction.len(),
                    "published"
                ),
                Err(gossipsub::PublishError::NoPeersSubscribedToTopic) => {}
                Err(error) => {
                    tracing::warn!(%error, db_version = version.0, "gossip publish failed")
                }
            }
            up_to = up_to.max(version);
        }
        up_to
    }

    fn on_done(&mut self, done: Done) {
        match done {
            Done::Published { up_to } => {
                self.last_published = self.last_published.max(up_to);
                self.publishing = false;
                if self.local_writes.has_changed().unwrap_or(false) {
                    self.publish_local_changes();
                }
            }
            Done::PublishReady { changes, since } => self.publish(changes, since),
            Done::PublishFailed => self.publishing = false,
            Done::ServeSync(channel, response, peer) => match response {
                Ok(response) => {
                    tracing::debug!(%peer, changes = response.changes.len(), more = response.more, "serving sync page");
                    if self
                        .swarm
                        .behaviour_mut()
                        .sync
                        .send_response(channel, response)
                        .is_err()
                    {
                        tracing::debug!(%peer, "peer went away before its sync page was sent");
                    }
                }
                Err(error) => tracing::error!(%peer, %error, "reading changes for a peer failed"),
            },
            Done::SyncWatermark { peer, since } => {
                if let Some(state) = self.peers.get_mut(&peer) {
                    state.watermark = Some(since);
                }
                self.request_page(peer, since);
            }
            Done::SyncMerged {
                peer,
                site,
                more,
                up_to,
                changes,
                impacted,
                started,
            } => {
                let Some(state) = self.peers.get_mut(&peer) else {
                    return;
                };
                state.watermark = Some(up_to);
                state.round_changes += changes;
                if more {
                    self.request_page(peer, up_to);
                    return;
                }
                state.round_started = None;
                state.last_sync = Some(Instant::now());
                let total = state.round_changes;
                if total > 0 {
                    tracing::info!(%peer, node = ?state.node_name, %site, changes = total, impacted, up_to = up_to.0, duration_ms = started.elapsed().as_millis() as u64, "sync round");
                } else {
                    tracing::debug!(%peer, %site, up_to = up_to.0, duration_ms = started.elapsed().as_millis() as u64, "sync round: up to date");
                }
            }
            Done::MergeFailed { peer, error } => {
                tracing::error!(%peer, %error, "merging changes failed; nothing was applied");
                if let Some(state) = self.peers.get_mut(&peer) {
                    state.syncing = None;
                    state.round_started = None;
                    state.last_sync = Some(Instant::now());
                }
            }
            Done::GossipMerged {
                peer,
                changes,
                impacted,
            } => {
                tracing::debug!(%peer, changes, impacted, "merged gossip");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_relay_address_from_addrs_is_tcp_on_the_host_of_the_url() {
        let id = "12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN";
        let addrs: Vec<String> = [
            format!("/ip4/10.0.0.9/tcp/4001/p2p/{id}"),
            format!("/ip4/172.20.0.10/tcp/4002/ws/p2p/{id}"),
            format!("/ip4/172.20.0.10/udp/4001/quic-v1/p2p/{id}"),
            format!("/ip4/172.20.0.10/tcp/4001/p2p/{id}"),
        ]
        .into();
        let picked = pick_relay_addr("http://172.20.0.10:4000", &addrs).expect("an address");
        assert_eq!(
            picked.to_string(),
            format!("/ip4/172.20.0.10/tcp/4001/p2p/{id}")
        );
        // Another host name: any TCP address with the id.
        let picked = pick_relay_addr("http://relay:4000", &addrs).expect("an address");
        assert!(picked.to_string().contains("/tcp/4001/p2p/"), "{picked}");
        assert_eq!(pick_relay_addr("http://relay:4000", &[]), None);
        assert_eq!(
            pick_relay_addr("http://relay:4000", &["/ip4/1.2.3.4/tcp/1".into()]),
            None
        );
    }

    #[test]
    fn agent_strings_name_site_node_and_public_url() {
        let site = SiteId([0xAB; 16]);
        let agent = parse_agent(&format!(
            "todo-node/0.1.0 site={site} name=a url=http://10.0.0.2:3001"
        ));
        assert_eq!(
            agent,
            Agent {
                site: Some(site),
                name: Some("a".into()),
                url: Some("http://10.0.0.2:3001".into()),
            }
        );
        // A url that is not http(s) is ignored: pages would be sent there.
        assert_eq!(parse_agent("x url=javascript:alert(1)").url, None);
        assert_eq!(parse_agent("todo-node/0.1.0"), Agent::default());
    }
}
