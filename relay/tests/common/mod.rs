//! Test kit for the relay: the real `todo-relay` binary as a child process on loopback, and
//! in-process libp2p peers (relay client, identify, ping and an echo protocol) that reserve
//! slots on it, dial each other through it and push bytes over the circuits.
//!
//! Also used by `benches/load.rs` (included by path), hence the `dead_code` allowance.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, StreamExt};
use libp2p::identity::Keypair;
use libp2p::multiaddr::Protocol;
use libp2p::request_response::{self, OutboundRequestId, ProtocolSupport};
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{
    Multiaddr, PeerId, StreamProtocol, Swarm, identify, noise, ping, relay, rendezvous, tcp, yamux,
};
use tokio::sync::{mpsc, oneshot};

pub const RELAY_BIN: &str = env!("CARGO_BIN_EXE_todo-relay");

pub use test_kit::eventually;

/// A `todo-relay` child process on loopback, restarted on the same ports so clients find it
/// again (`test_kit::restartable_port`: ports no other test's port-0 bind can take while it is
/// down). Killed when dropped, also when a test panics.
pub struct RelayProcess {
    child: Option<Child>,
    pub http_port: u16,
    pub tcp_port: u16,
    pub ws_port: u16,
    pub data_dir: PathBuf,
    pub log_path: PathBuf,
    env: Vec<(String, String)>,
    pub peer_id: PeerId,
}

impl RelayProcess {
    /// Starts the relay with its data and log in `dir`, and `env` on top of the defaults.
    pub async fn start(dir: &Path, env: &[(&str, &str)]) -> Self {
        let mut relay = Self {
            child: None,
            http_port: test_kit::restartable_port(),
            tcp_port: test_kit::restartable_port(),
            ws_port: test_kit::restartable_port(),
            data_dir: dir.join("relay-data"),
            log_path: dir.join("relay.log"),
            env: env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            peer_id: PeerId::random(),
        };
        relay.spawn().await;
        relay
    }

    async fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .expect("relay log file");
        let mut command = Command::new(RELAY_BIN);
        command
            .env("HOST", "127.0.0.1")
            .env("HTTP_PORT", self.http_port.to_string())
            .env("DATA_DIR", &self.data_dir)
            .env(
                "P2P_LISTEN",
                format!(
                    "/ip4/127.0.0.1/tcp/{},/ip4/127.0.0.1/tcp/{}/ws",
                    self.tcp_port, self.ws_port
                ),
            )
            .env("LOG", "todo_relay=debug,info")
            .stdout(Stdio::from(log.try_clone().expect("log handle")))
            .stderr(Stdio::from(log));
        for (k, v) in &self.env {
            command.env(k, v);
        }
        self.child = Some(command.spawn().expect("start todo-relay"));
        let health = eventually("the relay answers /health", Duration::from_secs(20), || {
            let url = self.url("/health");
            async move { get_json(&url).await }
        })
        .await;
        self.peer_id = health["peer_id"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .expect("/health names the relay's peer id");
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.http_port)
    }

    /// The relay's TCP address, ending in `/p2p/<relay id>`.
    pub fn tcp_addr(&self) -> Multiaddr {
        format!("/ip4/127.0.0.1/tcp/{}/p2p/{}", self.tcp_port, self.peer_id)
            .parse()
            .expect("multiaddr")
    }

    /// The relay's WebSocket address, ending in `/p2p/<relay id>`.
    pub fn ws_addr(&self) -> Multiaddr {
        format!(
            "/ip4/127.0.0.1/tcp/{}/ws/p2p/{}",
            self.ws_port, self.peer_id
        )
        .parse()
        .expect("multiaddr")
    }

    /// `<relay>/p2p-circuit/p2p/<peer>`: how to reach `peer` through the relay.
    pub fn circuit_to(&self, peer: PeerId) -> Multiaddr {
        self.tcp_addr()
            .with(Protocol::P2pCircuit)
            .with(Protocol::P2p(peer))
    }

    pub async fn health(&self) -> serde_json::Value {
        get_json(&self.url("/health"))
            .await
            .expect("the relay answers /health")
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Everything the relay logged so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// SIGTERM, then waits for a clean exit (status 0) within 10 s.
    pub async fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pid = libc::pid_t::try_from(child.id()).expect("pid");
        // SAFETY: signalling our own child process by its pid.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let status = eventually(
            "the relay exits after SIGTERM",
            Duration::from_secs(10),
            || {
                let status = child.try_wait().expect("wait for the relay");
                async move { status }
            },
        )
        .await;
        assert!(
            status.success(),
            "the relay exited with {status} after SIGTERM; log:\n{}",
            self.logs()
        );
    }

    /// Stops the relay gracefully and starts it again with the same data, ports and settings.
    pub async fn restart(&mut self) {
        self.stop().await;
        self.spawn().await;
    }
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("client")
}

pub async fn get_json(url: &str) -> Option<serde_json::Value> {
    let r = http().get(url).send().await.ok()?;
    if !r.status().is_success() {
        return None;
    }
    r.json().await.ok()
}

/// The echo protocol the test peers speak through circuits: a request is a u32 big-endian
/// length and that many bytes; the response is the same bytes.
pub const ECHO_PROTOCOL: StreamProtocol = StreamProtocol::new("/todo-relay-test/echo/1");
const MAX_ECHO_BYTES: usize = 16 * 1024 * 1024;

#[derive(Debug, Clone, Default)]
pub struct EchoCodec;

async fn read_frame<T: AsyncRead + Unpin + Send>(io: &mut T) -> io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    io.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_ECHO_BYTES {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "echo too large"));
    }
    let mut buf = vec![0u8; len];
    io.read_exact(&mut buf).await?;
    Ok(buf)
}

async fn write_frame<T: AsyncWrite + Unpin + Send>(io: &mut T, bytes: &[u8]) -> io::Result<()> {
    let len = u32::try_from(bytes.len()).map_err(|_| io::Error::other("too large"))?;
    io.write_all(&len.to_be_bytes()).await?;
    io.write_all(bytes).await?;
    io.close().await
}

impl request_response::Codec for EchoCodec {
    type Protocol = StreamProtocol;
    type Request = Vec<u8>;
    type Response = Vec<u8>;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Vec<u8>>
    where
        T: AsyncRead + Unpin + Send,
    {
        read_frame(io).await
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Vec<u8>>
    where
        T: AsyncRead + Unpin + Send,
    {
        read_frame(io).await
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: Vec<u8>,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_frame(io, &req).await
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        res: Vec<u8>,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_frame(io, &res).await
    }
}

#[derive(NetworkBehaviour)]
pub struct PeerBehaviour {
    relay: relay::client::Behaviour,
    identify: identify::Behaviour,
    ping: ping::Behaviour,
    echo: request_response::Behaviour<EchoCodec>,
    rendezvous: rendezvous::client::Behaviour,
}

/// What a test peer has seen, read by tests while its swarm runs in its own task.
#[derive(Debug, Default, Clone)]
pub struct PeerState {
    /// Reservations accepted by a relay (renewals not counted).
    pub reservations: usize,
    /// Relay listeners that closed, with the error if any (a refused reservation shows here).
    pub listeners_closed: Vec<Option<String>>,
    /// Open connections per peer, and how many of them are relayed.
    pub connections: HashMap<PeerId, (usize, usize)>,
    /// Connections closed, with their cause.
    pub closed: Vec<(PeerId, Option<String>)>,
    /// Outgoing dials that failed.
    pub dial_errors: Vec<String>,
}

enum PeerCommand {
    Listen(Multiaddr, oneshot::Sender<Result<(), String>>),
    Dial(Multiaddr, oneshot::Sender<Result<(), String>>),
    Echo(PeerId, Vec<u8>, oneshot::Sender<Result<Vec<u8>, String>>),
    Register(String, PeerId, oneshot::Sender<Result<(), String>>),
    Discover(String, PeerId, oneshot::Sender<Result<Vec<PeerId>, String>>),
}

/// An in-process libp2p peer with a relay client, driven by its own task.
pub struct TestPeer {
    pub id: PeerId,
    state: Arc<Mutex<PeerState>>,
    commands: mpsc::Sender<PeerCommand>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TestPeer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TestPeer {
    pub async fn new() -> Self {
        Self::with_key(Keypair::generate_ed25519()).await
    }

    /// A peer with the given identity: several `TestPeer`s with one key are one peer id with
    /// several connections to the relay.
    pub async fn with_key(key: Keypair) -> Self {
        let swarm = swarm(key).await;
        let id = *swarm.local_peer_id();
        let state = Arc::new(Mutex::new(PeerState::default()));
        let (commands, rx) = mpsc::channel(64);
        let task = tokio::spawn(drive(swarm, rx, state.clone()));
        Self {
            id,
            state,
            commands,
            task,
        }
    }

    pub fn state(&self) -> PeerState {
        self.state.lock().expect("peer state").clone()
    }

    pub async fn listen(&self, addr: Multiaddr) -> Result<(), String> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(PeerCommand::Listen(addr, tx))
            .await
            .expect("peer task");
        rx.await.expect("peer task")
    }

    pub async fn dial(&self, addr: Multiaddr) -> Result<(), String> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(PeerCommand::Dial(addr, tx))
            .await
            .expect("peer task");
        rx.await.expect("peer task")
    }

    /// Sends `bytes` to `peer` (already connected) and returns what it echoed.
    pub async fn echo(&self, peer: PeerId, bytes: Vec<u8>) -> Result<Vec<u8>, String> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(PeerCommand::Echo(peer, bytes, tx))
            .await
            .expect("peer task");
        rx.await.expect("peer task")
    }

    /// Registers this peer under `namespace` at the rendezvous server `relay` (connected).
    pub async fn register(&self, namespace: &str, relay: PeerId) -> Result<(), String> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(PeerCommand::Register(namespace.to_owned(), relay, tx))
            .await
            .expect("peer task");
        rx.await.expect("peer task")
    }

    /// The peers registered under `namespace` at the rendezvous server `relay` (connected).
    pub async fn discover(&self, namespace: &str, relay: PeerId) -> Result<Vec<PeerId>, String> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(PeerCommand::Discover(namespace.to_owned(), relay, tx))
            .await
            .expect("peer task");
        rx.await.expect("peer task")
    }

    /// Listens on `<relay>/p2p-circuit` and waits until the relay accepts the reservation
    /// (Ok) or refuses it (Err with the reason).
    pub async fn reserve(&self, relay: &Multiaddr, timeout: Duration) -> Result<(), String> {
        let before = self.state();
        self.listen(relay.clone().with(Protocol::P2pCircuit))
            .await?;
        eventually("the reservation is accepted or refused", timeout, || {
            let s = self.state();
            let outcome = if s.reservations > before.reservations {
                Some(Ok(()))
            } else if s.listeners_closed.len() > before.listeners_closed.len() {
                Some(Err(s.listeners_closed[before.listeners_closed.len()]
                    .clone()
                    .unwrap_or_else(|| "listener closed".to_owned())))
            } else {
                None
            };
            async move { outcome }
        })
        .await
    }

    /// Dials `addr` (naming `peer`) and waits until connected (Ok) or the dial failed (Err).
    pub async fn connect(
        &self,
        addr: Multiaddr,
        peer: PeerId,
        timeout: Duration,
    ) -> Result<(), String> {
        let before = self.state().dial_errors.len();
        self.dial(addr).await?;
        eventually("the dial succeeds or fails", timeout, || {
            let s = self.state();
            let outcome = if s.connections.contains_key(&peer) {
                Some(Ok(()))
            } else if s.dial_errors.len() > before {
                Some(Err(s.dial_errors[before].clone()))
            } else {
                None
            };
            async move { outcome }
        })
        .await
    }
}

async fn swarm(key: Keypair) -> Swarm<PeerBehaviour> {
    libp2p::SwarmBuilder::with_existing_identity(key)
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux::Config::default,
        )
        .expect("tcp")
        .with_dns()
        .expect("dns")
        .with_websocket(noise::Config::new, yamux::Config::default)
        .await
        .expect("websocket")
        .with_relay_client(noise::Config::new, yamux::Config::default)
        .expect("relay client")
        .with_behaviour(|key, relay| PeerBehaviour {
            relay,
            identify: identify::Behaviour::new(identify::Config::new(
                "/todo-relay-test/1".into(),
                key.public(),
            )),
            ping: ping::Behaviour::default(),
            echo: request_response::Behaviour::with_codec(
                EchoCodec,
                [(ECHO_PROTOCOL, ProtocolSupport::Full)],
                request_response::Config::default()
                    .with_request_timeout(Duration::from_secs(60))
                    .with_max_concurrent_streams(256),
            ),
            rendezvous: rendezvous::client::Behaviour::new(key.clone()),
        })
        .expect("behaviour")
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
        .build()
}

async fn drive(
    mut swarm: Swarm<PeerBehaviour>,
    mut commands: mpsc::Receiver<PeerCommand>,
    state: Arc<Mutex<PeerState>>,
) {
    let mut pending: HashMap<OutboundRequestId, oneshot::Sender<Result<Vec<u8>, String>>> =
        HashMap::new();
    let mut registering: HashMap<String, oneshot::Sender<Result<(), String>>> = HashMap::new();
    let mut discovering: HashMap<String, oneshot::Sender<Result<Vec<PeerId>, String>>> =
        HashMap::new();
    loop {
        tokio::select! {
            command = commands.recv() => match command {
                None => return,
                Some(PeerCommand::Listen(addr, reply)) => {
                    let _ = reply.send(swarm.listen_on(addr).map(|_| ()).map_err(|e| e.to_string()));
                }
                Some(PeerCommand::Dial(addr, reply)) => {
                    let _ = reply.send(swarm.dial(addr).map_err(|e| e.to_string()));
                }
                Some(PeerCommand::Echo(peer, bytes, reply)) => {
                    let id = swarm.behaviour_mut().echo.send_request(&peer, bytes);
                    pending.insert(id, reply);
                }
                Some(PeerCommand::Register(namespace, relay, reply)) => {
                    let ns = rendezvous::Namespace::new(namespace.clone()).expect("namespace");
                    match swarm.behaviour_mut().rendezvous.register(ns, relay, Some(600)) {
                        Ok(()) => { registering.insert(namespace, reply); }
                        Err(e) => { let _ = reply.send(Err(e.to_string())); }
                    }
                }
                Some(PeerCommand::Discover(namespace, relay, reply)) => {
                    let ns = rendezvous::Namespace::new(namespace.clone()).expect("namespace");
                    swarm.behaviour_mut().rendezvous.discover(Some(ns), None, None, relay);
                    discovering.insert(namespace, reply);
                }
            },
            event = swarm.select_next_some() => {
                let mut s = state.lock().expect("peer state");
                match event {
                    SwarmEvent::Behaviour(PeerBehaviourEvent::Relay(
                        relay::client::Event::ReservationReqAccepted { renewal: false, .. },
                    )) => s.reservations += 1,
                    SwarmEvent::ListenerClosed { reason, .. } => {
                        s.listeners_closed.push(reason.err().map(|e| format!("{e:?}")));
                    }
                    SwarmEvent::ConnectionEstablished { peer_id, endpoint, .. } => {
                        let c = s.connections.entry(peer_id).or_default();
                        c.0 += 1;
                        if endpoint.is_relayed() {
                            c.1 += 1;
                        }
                    }
                    SwarmEvent::ConnectionClosed { peer_id, endpoint, cause, .. } => {
                        if let Some(c) = s.connections.get_mut(&peer_id) {
                            c.0 -= 1;
                            if endpoint.is_relayed() {
                                c.1 -= 1;
                            }
                            if c.0 == 0 {
                                s.connections.remove(&peer_id);
                            }
                        }
                        s.closed.push((peer_id, cause.map(|c| format!("{c:?}"))));
                    }
                    SwarmEvent::OutgoingConnectionError { error, .. } => {
                        s.dial_errors.push(format!("{error:?}"));
                    }
                    SwarmEvent::Behaviour(PeerBehaviourEvent::Echo(event)) => match event {
                        request_response::Event::Message { message, .. } => match message {
                            request_response::Message::Request { request, channel, .. } => {
                                let _ = swarm.behaviour_mut().echo.send_response(channel, request);
                            }
                            request_response::Message::Response { request_id, response } => {
                                if let Some(reply) = pending.remove(&request_id) {
                                    let _ = reply.send(Ok(response));
                                }
                            }
                        },
                        request_response::Event::OutboundFailure { request_id, error, .. } => {
                            if let Some(reply) = pending.remove(&request_id) {
                                let _ = reply.send(Err(error.to_string()));
                            }
                        }
                        _ => {}
                    },
                    SwarmEvent::Behaviour(PeerBehaviourEvent::Rendezvous(event)) => match event {
                        rendezvous::client::Event::Registered { namespace, .. } => {
                            if let Some(reply) = registering.remove(&namespace.to_string()) {
                                let _ = reply.send(Ok(()));
                            }
                        }
                        rendezvous::client::Event::RegisterFailed { namespace, error, .. } => {
                            if let Some(reply) = registering.remove(&namespace.to_string()) {
                                let _ = reply.send(Err(format!("{error:?}")));
                            }
                        }
                        rendezvous::client::Event::Discovered { registrations, .. } => {
                            for (namespace, reply) in discovering.drain() {
                                let peers = registrations
                                    .iter()
                                    .filter(|r| r.namespace.to_string() == namespace)
                                    .map(|r| r.record.peer_id())
                                    .collect();
                                let _ = reply.send(Ok(peers));
                            }
                        }
                        rendezvous::client::Event::DiscoverFailed { error, .. } => {
                            for (_, reply) in discovering.drain() {
                                let _ = reply.send(Err(format!("{error:?}")));
                            }
                        }
                        _ => {}
                    },
                    _ => {}
                }
            }
        }
    }
}
