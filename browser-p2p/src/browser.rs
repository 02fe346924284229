//! The swarm and its loop, on the browser's event loop (wasm-bindgen futures). One task owns
//! the swarm; calls into the page's replica run as their own tasks and come back as `Done`.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

use changeset::{DbVersion, SiteId};
use futures::channel::mpsc;
use futures::{FutureExt, StreamExt};
use js_sys::{Array, Function, Promise, Reflect, Uint8Array};
use libp2p::core::muxing::StreamMuxerBox;
use libp2p::core::transport::ListenerId;
use libp2p::core::upgrade::Version;
use libp2p::identity::Keypair;
use libp2p::multiaddr::Protocol;
use libp2p::request_response::{self, OutboundRequestId, ProtocolSupport, ResponseChannel};
use libp2p::swarm::{ConnectionId, NetworkBehaviour, SwarmEvent};
use libp2p::{
    Multiaddr, PeerId, Swarm, Transport, identify, noise, ping, relay, rendezvous,
    websocket_websys, yamux,
};
use p2p_protocol::{
    Agent, Backoff, GossipMessage, PushAck, PushCodec, SyncCodec, SyncRequest, SyncResponse,
};
use serde::Serialize;
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::{JsFuture, spawn_local};
use web_time::Instant;

use crate::webrtc::{self, Path};
use crate::{KnownPeers, circuit_to, peer_of};

/// How often each peer is asked for what it has (pushes bring new work sooner).
const SYNC_INTERVAL: Duration = Duration::from_secs(3);
/// How often the relays are asked who else is registered.
const DISCOVER_INTERVAL: Duration = Duration::from_secs(5);
/// How often remembered peers that are not connected are dialled again.
const REDIAL_INTERVAL: Duration = Duration::from_secs(5);
/// The relay's shortest registration (RENDEZVOUS_MIN_TTL): a closed tab is forgotten soon.
const REGISTRATION_TTL_SECS: u64 = 60;
/// Registrations are renewed well before they lapse.
const REREGISTER: Duration = Duration::from_secs(30);
/// How long a peer that sent something the replica refused is ignored.
const BAN: Duration = Duration::from_secs(60);
const TICK: Duration = Duration::from_millis(500);
/// Changes per page pulled from a peer (as a node asks).
const PAGE_CHANGES: usize = 5_000;

#[wasm_bindgen]
extern "C" {
    #[wasm_bindgen(js_namespace = console, js_name = info)]
    fn console_info(s: &str);
    #[wasm_bindgen(js_namespace = console, js_name = warn)]
    fn console_warn(s: &str);
}

pub(crate) fn info(s: &str) {
    console_info(&format!("p2p: {s}"));
}

pub(crate) fn warn(s: &str) {
    console_warn(&format!("p2p: {s}"));
}

#[derive(NetworkBehaviour)]
struct Behaviour {
    relay_client: relay::client::Behaviour,
    identify: identify::Behaviour,
    ping: ping::Behaviour,
    rendezvous: rendezvous::client::Behaviour,
    sync: request_response::Behaviour<SyncCodec>,
    push: request_response::Behaviour<PushCodec>,
    /// Opens and accepts the WebRTC signalling streams (for [`webrtc::Transport`]).
    stream: libp2p_stream::Behaviour,
    webrtc: webrtc::Upgrader,
}

/// The page's replica, as async functions over bytes.
struct Replica {
    /// `(request) => Promise<Uint8Array>`: a sync page for another peer.
    serve: Function,
    /// `(page) => Promise<boolean>`: merges a page; whether more follow.
    receive: Function,
    /// `(batch) => Promise<number>`: merges a pushed transaction.
    merge: Function,
    /// `(siteHex) => Promise<number>`: where to pull that site from.
    watermark: Function,
    /// `(peerIds) => void`: the peers to remember across reloads.
    remember: Function,
}

impl Replica {
    async fn call(f: &Function, arg: &JsValue) -> Result<JsValue, String> {
        let value = f.call1(&JsValue::NULL, arg).map_err(js_error)?;
        JsFuture::from(Promise::resolve(&value))
            .await
            .map_err(js_error)
    }

    async fn bytes(f: &Function, arg: &[u8]) -> Result<JsValue, String> {
        Self::call(f, &Uint8Array::from(arg).into()).await
    }
}

fn js_error(e: JsValue) -> String {
    match e.dyn_ref::<js_sys::Error>() {
        Some(error) => String::from(error.message()),
        None => e.as_string().unwrap_or_else(|| format!("{e:?}")),
    }
}

/// Results of calls into the replica, back to the loop.
enum Done {
    Served {
        peer: PeerId,
        channel: ResponseChannel<SyncResponse>,
        page: Result<SyncResponse, String>,
    },
    WatermarkRead {
        peer: PeerId,
        since: Result<DbVersion, String>,
    },
    PageMerged {
        peer: PeerId,
        up_to: DbVersion,
        more: Result<bool, String>,
    },
    PushMerged {
        peer: PeerId,
        channel: ResponseChannel<PushAck>,
        merged: Result<(), String>,
    },
}

enum Command {
    /// A local transaction (a change batch) to push to every connected peer.
    Announce(Vec<u8>),
    Stop,
}

/// What the peer is to this browser.
enum Role {
    /// Connected; identify has not said what it is.
    Unidentified,
    /// A node or browser of this deployment: synced with.
    Partner(Partner),
}

struct Partner {
    agent: Agent,
    round: Round,
    last_round: Option<Instant>,
}

/// Pulling from one peer: one round at a time, a page at a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Round {
    Idle,
    ReadingWatermark,
    AwaitingPage(OutboundRequestId),
    Merging,
}

/// A relay and this browser's reservation (and rendezvous registration) on it.
struct RelayState {
    addr: Multiaddr,
    reservation: Reservation,
    backoff: Backoff,
    registered_at: Option<Instant>,
    discover_at: Instant,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reservation {
    Waiting { next_at: Instant },
    Asked(ListenerId),
    Held(ListenerId),
}

impl Reservation {
    fn listener(self) -> Option<ListenerId> {
        match self {
            Self::Waiting { .. } => None,
            Self::Asked(id) | Self::Held(id) => Some(id),
        }
    }
}

/// What `P2p.status()` shows (the page's peers panel and the browser tests read it).
#[derive(Debug, Default, Serialize)]
struct Status {
    peer_id: String,
    relays: Vec<RelayStatus>,
    peers: Vec<PeerStatus>,
    known_peers: Vec<String>,
}

#[derive(Debug, Serialize)]
struct RelayStatus {
    peer_id: String,
    addr: String,
    reservation: &'static str,
    registered: bool,
}

#[derive(Debug, Serialize)]
struct PeerStatus {
    peer_id: String,
    site_id: Option<String>,
    /// A node's NODE_NAME (browsers have none).
    node: Option<String>,
    last_sync_ms_ago: Option<u64>,
    /// How the peer is reached: `webrtc` (direct), `relayed` (a relay's circuit) or `direct` (a
    /// node's WebSocket listener); the best path when there are several.
    connection: Option<Path>,
    /// The last word on upgrading to WebRTC: `upgrading`, `upgraded in N ms`, or why it failed
    /// (the peer then stays relayed).
    webrtc: Option<String>,
}

/// The browser's libp2p peer (see the crate's docs). Lives until `stop()` or the page goes.
#[wasm_bindgen]
pub struct P2p {
    commands: mpsc::UnboundedSender<Command>,
    status: Rc<RefCell<String>>,
}

fn field(options: &JsValue, name: &str) -> Result<JsValue, JsError> {
    Reflect::get(options, &JsValue::from_str(name))
        .map_err(|_| JsError::new(&format!("options.{name} cannot be read")))
}

fn function(options: &JsValue, name: &str) -> Result<Function, JsError> {
    field(options, name)?
        .dyn_into::<Function>()
        .map_err(|_| JsError::new(&format!("options.{name} must be a function")))
}

fn strings(options: &JsValue, name: &str) -> Result<Vec<String>, JsError> {
    let value = field(options, name)?;
    if value.is_undefined() || value.is_null() {
        return Ok(Vec::new());
    }
    let array = value
        .dyn_into::<Array>()
        .map_err(|_| JsError::new(&format!("options.{name} must be an array of strings")))?;
    Ok(array.iter().filter_map(|v| v.as_string()).collect())
}

fn string(options: &JsValue, name: &str) -> Result<String, JsError> {
    field(options, name)?
        .as_string()
        .ok_or_else(|| JsError::new(&format!("options.{name} must be a string")))
}

#[wasm_bindgen]
impl P2p {
    /// A new identity (protobuf-encoded): the page keeps it, so this browser's peer id
    /// survives reloads and others can find it again.
    #[wasm_bindgen(js_name = newKey)]
    pub fn new_key() -> Result<Vec<u8>, JsError> {
        Keypair::generate_ed25519()
            .to_protobuf_encoding()
            .map_err(|e| JsError::new(&e.to_string()))
    }

    /// Starts the peer. `options`: `key` (from `newKey`), `deployment` (MDNS_SERVICE_NAME),
    /// `siteId` (the replica's, hex), `relays` (multiaddrs ending in `/p2p/<relay id>`),
    /// `direct` (nodes' WebSocket multiaddrs, dialled without a relay), `knownPeers` (peer
    /// ids), `stunServers` (STUN URLs for WebRTC between browsers; none by default), and the
    /// replica's functions `serve`, `receive`, `merge`,
    /// `watermark`, `remember`.
    pub fn start(options: JsValue) -> Result<P2p, JsError> {
        let key_bytes = field(&options, "key")?
            .dyn_into::<Uint8Array>()
            .map_err(|_| JsError::new("options.key must be a Uint8Array"))?
            .to_vec();
        let key = Keypair::from_protobuf_encoding(&key_bytes)
            .map_err(|e| JsError::new(&format!("options.key: {e}")))?;
        let deployment = string(&options, "deployment")?;
        let site: SiteId = string(&options, "siteId")?
            .parse()
            .map_err(|e| JsError::new(&format!("options.siteId: {e}")))?;
        let mut relays = HashMap::new();
        for addr in strings(&options, "relays")? {
            let parsed: Multiaddr = addr
                .parse()
                .map_err(|e| JsError::new(&format!("relay address {addr:?}: {e}")))?;
            let peer = peer_of(&parsed).ok_or_else(|| {
                JsError::new(&format!("relay address {addr:?} does not end in /p2p/<id>"))
            })?;
            relays.insert(peer, parsed);
        }
        let mut direct = Vec::new();
        for addr in strings(&options, "direct")? {
            match addr.parse::<Multiaddr>() {
                Ok(parsed) if peer_of(&parsed).is_some() => direct.push(parsed),
                _ => warn(&format!(
                    "ignoring node address {addr:?}: not a multiaddr ending in /p2p/<id>"
                )),
            }
        }
        let known =
            KnownPeers::from_strings(strings(&options, "knownPeers")?.iter().map(String::as_str));
        let replica = Rc::new(Replica {
            serve: function(&options, "serve")?,
            receive: function(&options, "receive")?,
            merge: function(&options, "merge")?,
            watermark: function(&options, "watermark")?,
            remember: function(&options, "remember")?,
        });
        let webrtc_config = webrtc::Config {
            stun_servers: strings(&options, "stunServers")?,
        };
        let mut swarm = build_swarm(key, &deployment, site, webrtc_config)?;
        // Other browsers' signalling streams, on any relayed connection.
        if let Err(e) = swarm.listen_on(Multiaddr::empty().with(Protocol::WebRTC)) {
            warn(&format!("cannot accept WebRTC connections: {e}"));
        }
        let (commands_tx, commands) = mpsc::unbounded();
        let (done_tx, done) = mpsc::unbounded();
        let status = Rc::new(RefCell::new(String::new()));
        let now = Instant::now();
        let namespace = rendezvous::Namespace::new(p2p_protocol::rendezvous_namespace(&deployment))
            .map_err(|e| JsError::new(&format!("deployment name: {e}")))?;
        let peer = Peer {
            swarm,
            replica,
            site,
            deployment_tag: p2p_protocol::deployment_tag(&deployment),
            namespace,
            relays: relays
                .into_iter()
                .map(|(id, addr)| {
                    let state = RelayState {
                        addr,
                        reservation: Reservation::Waiting { next_at: now },
                        backoff: Backoff::new(),
                        registered_at: None,
                        discover_at: now,
                    };
                    (id, state)
                })
                .collect(),
            peers: HashMap::new(),
            paths: HashMap::new(),
            webrtc_notes: HashMap::new(),
            known,
            direct,
            redial_at: now,
            banned: HashMap::new(),
            done_tx,
            status: status.clone(),
        };
        info(&format!(
            "starting as {} with {} relay(s) and {} remembered peer(s)",
            peer.swarm.local_peer_id(),
            peer.relays.len(),
            peer.known.iter().count()
        ));
        peer.publish_status();
        spawn_local(peer.run(commands, done));
        Ok(P2p {
            commands: commands_tx,
            status,
        })
    }

    /// Pushes a local transaction (a change batch from the replica) to every connected peer.
    pub fn announce(&self, batch: &[u8]) {
        let _ = self
            .commands
            .unbounded_send(Command::Announce(batch.to_vec()));
    }

    /// This peer, its relays and its peers, as JSON.
    pub fn status(&self) -> String {
        self.status.borrow().clone()
    }

    pub fn stop(&self) {
        let _ = self.commands.unbounded_send(Command::Stop);
    }
}

fn build_swarm(
    key: Keypair,
    deployment: &str,
    site: SiteId,
    webrtc_config: webrtc::Config,
) -> Result<Swarm<Behaviour>, JsError> {
    let tag = p2p_protocol::deployment_tag(deployment);
    let agent = Agent {
        site: Some(site),
        ..Agent::default()
    }
    .to_agent_string(concat!("todo-browser/", env!("CARGO_PKG_VERSION")));
    let sync_protocol = p2p_protocol::sync_protocol(deployment);
    let push_protocol = p2p_protocol::push_protocol(deployment);
    let (relay_transport, relay_client) = relay::client::new(key.public().to_peer_id());
    let stream = libp2p_stream::Behaviour::new();
    let upgrader = webrtc::Upgrader::new(key.public().to_peer_id());
    let webrtc_transport = webrtc::Transport::new(stream.new_control(), webrtc_config, &upgrader);
    let swarm = libp2p::SwarmBuilder::with_existing_identity(key)
        .with_wasm_bindgen()
        .with_other_transport(|key| transport(key, relay_transport, webrtc_transport))
        .map_err(|e| JsError::new(&format!("transports: {e}")))?
        .with_behaviour(|key| Behaviour {
            relay_client,
            identify: identify::Behaviour::new(
                identify::Config::new(tag, key.public()).with_agent_version(agent),
            ),
            ping: ping::Behaviour::default(),
            rendezvous: rendezvous::client::Behaviour::new(key.clone()),
            sync: request_response::Behaviour::with_codec(
                SyncCodec,
                [(sync_protocol, ProtocolSupport::Full)],
                request_response::Config::default().with_request_timeout(Duration::from_secs(60)),
            ),
            push: request_response::Behaviour::with_codec(
                PushCodec,
                [(push_protocol, ProtocolSupport::Full)],
                request_response::Config::default().with_request_timeout(Duration::from_secs(30)),
            ),
            stream,
            webrtc: upgrader,
        })
        .map_err(|e| JsError::new(&format!("behaviour: {e}")))?
        // Connections to peers stay while the page is open, idle or not.
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(3600)))
        .build();
    Ok(swarm)
}

/// WebRTC, then the relay client, then WebSocket. WebRTC comes first: the relay client would
/// take `<relay>/p2p-circuit/webrtc/p2p/<id>` for a circuit to a peer and silently give a
/// relayed connection.
pub(crate) fn transport(
    key: &Keypair,
    relay_transport: relay::client::Transport,
    webrtc_transport: webrtc::Transport,
) -> Result<
    libp2p::core::transport::Boxed<(PeerId, StreamMuxerBox)>,
    Box<dyn std::error::Error + Send + Sync>,
> {
    let webrtc = webrtc_transport.map(|(peer, c), _| (peer, StreamMuxerBox::new(c)));
    let relayed = relay_transport
        .upgrade(Version::V1Lazy)
        .authenticate(noise::Config::new(key)?)
        .multiplex(yamux::Config::default())
        .map(|(peer, m), _| (peer, StreamMuxerBox::new(m)));
    let websocket = websocket_websys::Transport::default()
        .upgrade(Version::V1Lazy)
        .authenticate(noise::Config::new(key)?)
        .multiplex(yamux::Config::default())
        .map(|(peer, m), _| (peer, StreamMuxerBox::new(m)));
    Ok(webrtc
        .or_transport(relayed)
        .or_transport(websocket)
        .map(|output, _| match output {
            futures::future::Either::Left(futures::future::Either::Left(o))
            | futures::future::Either::Left(futures::future::Either::Right(o))
            | futures::future::Either::Right(o) => o,
        })
        .boxed())
}

struct Peer {
    swarm: Swarm<Behaviour>,
    replica: Rc<Replica>,
    site: SiteId,
    deployment_tag: String,
    namespace: rendezvous::Namespace,
    relays: HashMap<PeerId, RelayState>,
    peers: HashMap<PeerId, Role>,
    /// Every connection to a peer, and how it reaches it.
    paths: HashMap<ConnectionId, (PeerId, Path)>,
    /// The last word on each peer's WebRTC upgrade (for status).
    webrtc_notes: HashMap<PeerId, String>,
    known: KnownPeers,
    /// Nodes' own WebSocket addresses: dialled directly while not connected.
    direct: Vec<Multiaddr>,
    redial_at: Instant,
    banned: HashMap<PeerId, Instant>,
    done_tx: mpsc::UnboundedSender<Done>,
    status: Rc<RefCell<String>>,
}

impl Peer {
    async fn run(
        mut self,
        mut commands: mpsc::UnboundedReceiver<Command>,
        mut done: mpsc::UnboundedReceiver<Done>,
    ) {
        let mut tick = futures_timer::Delay::new(Duration::ZERO).fuse();
        loop {
            futures::select! {
                event = self.swarm.select_next_some() => self.on_swarm_event(event),
                command = commands.next() => match command {
                    Some(Command::Announce(batch)) => self.announce(&batch),
                    Some(Command::Stop) | None => break,
                },
                result = done.select_next_some() => self.on_done(result),
                () = tick => {
                    self.on_tick(Instant::now());
                    tick = futures_timer::Delay::new(TICK).fuse();
                }
            }
            self.publish_status();
        }
        info("stopped");
    }

    /// Runs a call into the replica as its own task; its result comes back as `Done`.
    fn spawn<F>(&self, work: F)
    where
        F: std::future::Future<Output = Done> + 'static,
    {
        let done = self.done_tx.clone();
        spawn_local(async move {
            let _ = done.unbounded_send(work.await);
        });
    }

    fn publish_status(&self) {
        let now = Instant::now();
        let status = Status {
            peer_id: self.swarm.local_peer_id().to_string(),
            relays: self
                .relays
                .iter()
                .map(|(id, r)| RelayStatus {
                    peer_id: id.to_string(),
                    addr: r.addr.to_string(),
                    reservation: match r.reservation {
                        Reservation::Held(_) => "active",
                        Reservation::Asked(_) => "pending",
                        Reservation::Waiting { .. } => "none",
                    },
                    registered: r.registered_at.is_some(),
                })
                .collect(),
            peers: self
                .peers
                .iter()
                .filter_map(|(id, role)| match role {
                    Role::Partner(p) => Some(PeerStatus {
                        peer_id: id.to_string(),
                        site_id: p.agent.site.map(|s| s.to_string()),
                        node: p.agent.name.clone(),
                        last_sync_ms_ago: p
                            .last_round
                            .map(|t| now.duration_since(t).as_millis() as u64),
                        connection: self.path_to(id),
                        webrtc: self.webrtc_notes.get(id).cloned(),
                    }),
                    Role::Unidentified => None,
                })
                .collect(),
            known_peers: self.known.to_strings(),
        };
        if let Ok(json) = serde_json::to_string(&status) {
            *self.status.borrow_mut() = json;
        }
    }

    /// The best way this browser reaches `peer` now: WebRTC, then a node's own listener, then
    /// a relay.
    fn path_to(&self, peer: &PeerId) -> Option<Path> {
        let paths = self
            .paths
            .values()
            .filter(|(p, _)| p == peer)
            .map(|(_, path)| *path);
        paths.max_by_key(|path| match path {
            Path::Webrtc => 2,
            Path::Direct => 1,
            Path::Relayed => 0,
        })
    }

    fn on_tick(&mut self, now: Instant) {
        self.banned.retain(|_, until| *until > now);
        self.reserve(now);
        let held: Vec<PeerId> = self
            .relays
            .iter()
            .filter(|(_, r)| matches!(r.reservation, Reservation::Held(_)))
            .map(|(id, _)| *id)
            .collect();
        for relay in &held {
            self.register_and_discover(*relay, now);
        }
        if now >= self.redial_at {
            self.redial_at = now + REDIAL_INTERVAL;
            self.redial(&held);
        }
        let due: Vec<PeerId> = self
            .peers
            .iter()
            .filter(|(_, role)| match role {
                Role::Partner(p) => {
                    p.round == Round::Idle
                        && p.last_round
                            .is_none_or(|t| now.duration_since(t) >= SYNC_INTERVAL)
                }
                Role::Unidentified => false,
            })
            .map(|(id, _)| *id)
            .collect();
        for peer in due {
            self.begin_round(peer);
        }
    }

    /// Asks every relay without a reservation for one, once its backoff has passed.
    fn reserve(&mut self, now: Instant) {
        for (id, relay) in &mut self.relays {
            let Reservation::Waiting { next_at } = relay.reservation else {
                continue;
            };
            if next_at > now {
                continue;
            }
            match self
                .swarm
                .listen_on(relay.addr.clone().with(Protocol::P2pCircuit))
            {
                Ok(listener) => relay.reservation = Reservation::Asked(listener),
                Err(e) => {
                    warn(&format!("cannot listen through relay {id}: {e}"));
                    relay.reservation = Reservation::Waiting {
                        next_at: now + relay.backoff.next_delay(),
                    };
                }
            }
        }
    }

    fn register_and_discover(&mut self, relay: PeerId, now: Instant) {
        let Some(state) = self.relays.get_mut(&relay) else {
            return;
        };
        let rendezvous = &mut self.swarm.behaviour_mut().rendezvous;
        if state
            .registered_at
            .is_none_or(|t| now.duration_since(t) >= REREGISTER)
        {
            match rendezvous.register(self.namespace.clone(), relay, Some(REGISTRATION_TTL_SECS)) {
                // Counted as registered when the relay says so; asking again every tick
                // until then would flood it, so the time is taken now.
                Ok(()) => state.registered_at = Some(now),
                Err(e) => warn(&format!("cannot register at relay {relay} yet: {e}")),
            }
        }
        if state.discover_at <= now {
            state.discover_at = now + DISCOVER_INTERVAL;
            rendezvous.discover(Some(self.namespace.clone()), None, None, relay);
        }
    }

    /// Dials the nodes' WebSocket addresses, and every remembered peer through every relay
    /// holding this browser's reservation, unless connected already.
    fn redial(&mut self, held: &[PeerId]) {
        for addr in self.direct.clone() {
            if peer_of(&addr).is_some_and(|p| !self.swarm.is_connected(&p))
                && let Err(e) = self.swarm.dial(addr.clone())
            {
                warn(&format!("cannot dial node at {addr}: {e}"));
            }
        }
        if held.is_empty() {
            return;
        }
        let absent: Vec<PeerId> = self
            .known
            .iter()
            .filter(|p| !self.swarm.is_connected(p) && !self.banned.contains_key(p))
            .copied()
            .collect();
        for peer in absent {
            self.dial_through_relays(peer, held);
        }
    }

    fn dial_through_relays(&mut self, peer: PeerId, relays: &[PeerId]) {
        for relay in relays {
            let Some(state) = self.relays.get(relay) else {
                continue;
            };
            if let Err(e) = self.swarm.dial(circuit_to(&state.addr, peer)) {
                warn(&format!("cannot dial {peer} through {relay}: {e}"));
            }
        }
    }

    fn on_swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::NewListenAddr { address, .. } => {
                // The circuit address is how others reach this browser: rendezvous publishes it.
                info(&format!("reachable at {address}"));
                self.swarm.add_external_address(address);
            }
            SwarmEvent::ListenerClosed {
                listener_id,
                reason,
                addresses,
                ..
            } => {
                for address in addresses {
                    self.swarm.remove_external_address(&address);
                }
                if let Some((id, relay)) = self
                    .relays
                    .iter_mut()
                    .find(|(_, r)| r.reservation.listener() == Some(listener_id))
                {
                    let delay = relay.backoff.next_delay();
                    warn(&format!(
                        "reservation on relay {id} ended ({:?}); asking again in {} s",
                        reason.err().map(|e| e.to_string()),
                        delay.as_secs()
                    ));
                    relay.reservation = Reservation::Waiting {
                        next_at: Instant::now() + delay,
                    };
                    relay.registered_at = None;
                }
            }
            SwarmEvent::ConnectionEstablished {
                peer_id,
                endpoint,
                connection_id,
                ..
            } => {
                self.paths
                    .insert(connection_id, (peer_id, Path::of_endpoint(&endpoint)));
                if self.relays.contains_key(&peer_id) {
                    info(&format!(
                        "connected to relay {peer_id} at {}",
                        endpoint.get_remote_address()
                    ));
                }
                if self.banned.contains_key(&peer_id) {
                    let _ = self.swarm.disconnect_peer_id(peer_id);
                } else if !self.relays.contains_key(&peer_id) {
                    self.peers.entry(peer_id).or_insert(Role::Unidentified);
                }
            }
            SwarmEvent::ConnectionClosed {
                connection_id,
                num_established,
                ..
            } if num_established > 0 => {
                self.paths.remove(&connection_id);
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                connection_id,
                cause,
                ..
            } => {
                self.paths.remove(&connection_id);
                if self.relays.contains_key(&peer_id) {
                    warn(&format!("disconnected from relay {peer_id}: {cause:?}"));
                }
                if let Some(Role::Partner(_)) = self.peers.remove(&peer_id) {
                    info(&format!("peer {peer_id} disconnected"));
                }
            }
            SwarmEvent::OutgoingConnectionError { peer_id, error, .. }
                if peer_id.is_some_and(|p| self.relays.contains_key(&p)) =>
            {
                warn(&format!("cannot reach the relay: {error}"));
            }
            SwarmEvent::Behaviour(event) => self.on_behaviour_event(event),
            _ => {}
        }
    }

    fn on_behaviour_event(&mut self, event: BehaviourEvent) {
        match event {
            BehaviourEvent::RelayClient(relay::client::Event::ReservationReqAccepted {
                relay_peer_id,
                renewal,
                ..
            }) => {
                if let Some(relay) = self.relays.get_mut(&relay_peer_id)
                    && let Some(listener) = relay.reservation.listener()
                {
                    relay.reservation = Reservation::Held(listener);
                    relay.backoff.reset();
                    if !renewal {
                        info(&format!("reservation accepted by relay {relay_peer_id}"));
                        relay.registered_at = None;
                        relay.discover_at = Instant::now();
                        // Peers met before are dialled at once, before rendezvous answers.
                        self.redial_at = Instant::now();
                    }
                }
            }
            BehaviourEvent::Identify(identify::Event::Received { peer_id, info, .. }) => {
                self.on_identified(peer_id, info);
            }
            BehaviourEvent::Rendezvous(event) => self.on_rendezvous(event),
            BehaviourEvent::Sync(event) => self.on_sync_event(event),
            BehaviourEvent::Push(event) => self.on_push_event(event),
            BehaviourEvent::Webrtc(event) => self.on_webrtc_event(event),
            _ => {}
        }
    }

    fn on_webrtc_event(&mut self, event: webrtc::Event) {
        let (peer, note) = match event {
            webrtc::Event::Upgrading { peer } => {
                info(&format!("upgrading {peer} to WebRTC"));
                (peer, "upgrading".to_owned())
            }
            webrtc::Event::Upgraded { peer, after } => {
                let note = match after {
                    Some(after) => format!("upgraded in {} ms", after.as_millis()),
                    None => "upgraded".to_owned(),
                };
                info(&format!("{peer} reached over WebRTC ({note})"));
                (peer, note)
            }
            webrtc::Event::Failed { peer, error } => {
                warn(&format!(
                    "WebRTC to {peer} failed, staying on the relayed connection: {error}"
                ));
                (peer, format!("failed: {error}"))
            }
        };
        self.webrtc_notes.insert(peer, note);
    }

    fn on_identified(&mut self, peer: PeerId, identified: identify::Info) {
        if self.relays.contains_key(&peer) {
            return;
        }
        if identified.protocol_version != self.deployment_tag {
            let _ = self.swarm.disconnect_peer_id(peer);
            return;
        }
        if identified.protocols.contains(&webrtc::SIGNALING_PROTOCOL) {
            self.swarm
                .behaviour_mut()
                .webrtc
                .remote_supports_webrtc(peer);
        }
        let agent = Agent::parse(&identified.agent_version);
        let Some(role) = self.peers.get_mut(&peer) else {
            return;
        };
        match role {
            Role::Partner(partner) => partner.agent = agent,
            Role::Unidentified => {
                info(&format!(
                    "syncing with {peer} ({})",
                    agent.name.as_deref().unwrap_or("a browser")
                ));
                *role = Role::Partner(Partner {
                    agent,
                    round: Round::Idle,
                    last_round: None,
                });
                if self.known.met(peer) {
                    let ids: Array = self
                        .known
                        .to_strings()
                        .into_iter()
                        .map(JsValue::from)
                        .collect();
                    if let Err(e) = self.replica.remember.call1(&JsValue::NULL, &ids) {
                        warn(&format!("remembering peers: {}", js_error(e)));
                    }
                }
                self.begin_round(peer);
            }
        }
    }

    fn on_rendezvous(&mut self, event: rendezvous::client::Event) {
        match event {
            rendezvous::client::Event::Discovered {
                rendezvous_node,
                registrations,
                ..
            } => {
                let me = *self.swarm.local_peer_id();
                for registration in registrations {
                    let peer = registration.record.peer_id();
                    if peer == me
                        || self.swarm.is_connected(&peer)
                        || self.banned.contains_key(&peer)
                    {
                        continue;
                    }
                    info(&format!("found {peer} at relay {rendezvous_node}"));
                    self.dial_through_relays(peer, &[rendezvous_node]);
                }
            }
            rendezvous::client::Event::RegisterFailed {
                rendezvous_node,
                error,
                ..
            } => {
                warn(&format!(
                    "registering at {rendezvous_node} failed: {error:?}"
                ));
                if let Some(relay) = self.relays.get_mut(&rendezvous_node) {
                    relay.registered_at = None;
                }
            }
            rendezvous::client::Event::Registered {
                rendezvous_node, ..
            } => info(&format!("registered at relay {rendezvous_node}")),
            _ => {}
        }
    }

    fn partner(&mut self, peer: &PeerId) -> Option<&mut Partner> {
        match self.peers.get_mut(peer) {
            Some(Role::Partner(p)) => Some(p),
            _ => None,
        }
    }

    /// A peer sent what the replica refused: drop it and ignore it for a while.
    fn penalise(&mut self, peer: PeerId, reason: &str) {
        warn(&format!("dropping {peer}: {reason}"));
        self.banned.insert(peer, Instant::now() + BAN);
        self.peers.remove(&peer);
        let _ = self.swarm.disconnect_peer_id(peer);
    }

    fn begin_round(&mut self, peer: PeerId) {
        let Some(partner) = self.partner(&peer) else {
            return;
        };
        if partner.round != Round::Idle {
            return;
        }
        partner.round = Round::ReadingWatermark;
        let Some(site) = partner.agent.site else {
            // A peer that did not say its site: pull everything (merging is idempotent).
            self.request_page(peer, DbVersion(0));
            return;
        };
        let replica = self.replica.clone();
        self.spawn(async move {
            let since = Replica::call(&replica.watermark, &JsValue::from_str(&site.to_string()))
                .await
                .and_then(|v| v.as_f64().ok_or_else(|| "watermark is not a number".into()))
                .map(|v| DbVersion(v as u64));
            Done::WatermarkRead { peer, since }
        });
    }

    fn request_page(&mut self, peer: PeerId, since: DbVersion) {
        let request = SyncRequest {
            requester: self.site,
            since,
            limits: changeset::PageLimits {
                max_changes: PAGE_CHANGES,
                ..changeset::PageLimits::default()
            },
        };
        let id = self.swarm.behaviour_mut().sync.send_request(&peer, request);
        if let Some(partner) = self.partner(&peer) {
            partner.round = Round::AwaitingPage(id);
        }
    }

    fn end_round(&mut self, peer: PeerId) {
        if let Some(partner) = self.partner(&peer) {
            partner.round = Round::Idle;
            partner.last_round = Some(Instant::now());
        }
    }

    fn on_sync_event(&mut self, event: request_response::Event<SyncRequest, SyncResponse>) {
        match event {
            request_response::Event::Message { peer, message, .. } => match message {
                request_response::Message::Request {
                    request, channel, ..
                } => self.serve(peer, request, channel),
                request_response::Message::Response {
                    request_id,
                    response,
                } => self.on_page(peer, request_id, response),
            },
            request_response::Event::OutboundFailure { peer, error, .. } => {
                warn(&format!("sync with {peer} failed: {error}"));
                self.end_round(peer);
            }
            _ => {}
        }
    }

    fn serve(
        &mut self,
        peer: PeerId,
        request: SyncRequest,
        channel: ResponseChannel<SyncResponse>,
    ) {
        if self.partner(&peer).is_none() {
            return;
        }
        let replica = self.replica.clone();
        self.spawn(async move {
            let wire = changeset::sync::wire::encode_request(&request);
            let page = Replica::bytes(&replica.serve, &wire).await.and_then(|v| {
                let bytes = Uint8Array::new(&v).to_vec();
                changeset::sync::wire::decode_page(&bytes).map_err(|e| e.to_string())
            });
            Done::Served {
                peer,
                channel,
                page,
            }
        });
    }

    fn on_page(&mut self, peer: PeerId, request_id: OutboundRequestId, page: SyncResponse) {
        let Some(partner) = self.partner(&peer) else {
            return;
        };
        if partner.round != Round::AwaitingPage(request_id) {
            return;
        }
        if partner.agent.site.is_some_and(|s| s != page.source) {
            self.penalise(peer, "a sync page from a site other than the one it named");
            return;
        }
        partner.agent.site = Some(page.source);
        partner.round = Round::Merging;
        let replica = self.replica.clone();
        let up_to = page.up_to;
        self.spawn(async move {
            let wire = changeset::sync::wire::encode_page(&page);
            let more = Replica::bytes(&replica.receive, &wire)
                .await
                .map(|v| v.as_bool().unwrap_or(false));
            Done::PageMerged { peer, up_to, more }
        });
    }

    fn on_push_event(&mut self, event: request_response::Event<GossipMessage, PushAck>) {
        match event {
            request_response::Event::Message {
                peer,
                message:
                    request_response::Message::Request {
                        request, channel, ..
                    },
                ..
            } => {
                if self.partner(&peer).is_none() {
                    return;
                }
                let replica = self.replica.clone();
                self.spawn(async move {
                    let batch = changeset::encode_changes(&request.changes);
                    let merged = Replica::bytes(&replica.merge, &batch).await.map(|_| ());
                    Done::PushMerged {
                        peer,
                        channel,
                        merged,
                    }
                });
            }
            request_response::Event::Message {
                peer,
                message:
                    request_response::Message::Response {
                        response: PushAck::Refused,
                        ..
                    },
                ..
            } => warn(&format!("{peer} refused a pushed transaction")),
            request_response::Event::OutboundFailure { peer, error, .. } => {
                warn(&format!("push to {peer} failed: {error}"));
            }
            _ => {}
        }
    }

    fn announce(&mut self, batch: &[u8]) {
        let changes = match changeset::decode_changes(batch) {
            Ok(changes) if !changes.is_empty() => changes,
            Ok(_) => return,
            Err(e) => {
                warn(&format!("not announcing an unreadable batch: {e}"));
                return;
            }
        };
        let partners: Vec<PeerId> = self
            .peers
            .iter()
            .filter(|(_, role)| matches!(role, Role::Partner(_)))
            .map(|(id, _)| *id)
            .collect();
        for peer in partners {
            let push = GossipMessage {
                changes: changes.clone(),
            };
            self.swarm.behaviour_mut().push.send_request(&peer, push);
        }
    }

    fn on_done(&mut self, done: Done) {
        match done {
            Done::Served {
                peer,
                channel,
                page,
            } => match page {
                Ok(page) => {
                    let _ = self.swarm.behaviour_mut().sync.send_response(channel, page);
                }
                Err(e) => warn(&format!("cannot serve {peer}: {e}")),
            },
            Done::WatermarkRead { peer, since } => match since {
                Ok(since) => self.request_page(peer, since),
                Err(e) => {
                    warn(&format!("reading the watermark for {peer}: {e}"));
                    self.end_round(peer);
                }
            },
            Done::PageMerged { peer, up_to, more } => match more {
                Ok(true) => self.request_page(peer, up_to),
                Ok(false) => self.end_round(peer),
                Err(e) => self.penalise(peer, &format!("its sync page was refused: {e}")),
            },
            Done::PushMerged {
                peer,
                channel,
                merged,
            } => {
                let ack = if merged.is_ok() {
                    PushAck::Merged
                } else {
                    PushAck::Refused
                };
                let _ = self.swarm.behaviour_mut().push.send_response(channel, ack);
                if let Err(e) = merged {
                    self.penalise(peer, &format!("its push was refused: {e}"));
                }
            }
        }
    }
}
