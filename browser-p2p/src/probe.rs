//! `Probe`: a bare libp2p peer with this crate's transports (WebRTC, relay client, WebSocket)
//! and nothing of the app: identify, ping, and `/echo/1.0.0` (as js-libp2p's `@libp2p/echo`
//! speaks it). The interoperability test with js-libp2p and the WebRTC throughput figure drive
//! it from a page; the app never starts it.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

use futures::channel::mpsc;
use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
use js_sys::Promise;
use libp2p::identity::Keypair;
use libp2p::multiaddr::Protocol;
use libp2p::swarm::{ConnectionId, NetworkBehaviour, SwarmEvent};
use libp2p::{Multiaddr, PeerId, StreamProtocol, Swarm, identify, ping, relay};
use serde::Serialize;
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::{future_to_promise, spawn_local};

use crate::browser::{info, transport, warn};
use crate::webrtc::{self, Path};

pub const ECHO_PROTOCOL: StreamProtocol = StreamProtocol::new("/echo/1.0.0");

#[derive(NetworkBehaviour)]
struct Behaviour {
    relay_client: relay::client::Behaviour,
    identify: identify::Behaviour,
    ping: ping::Behaviour,
    stream: libp2p_stream::Behaviour,
    webrtc: webrtc::Upgrader,
}

#[derive(Debug, Default, Serialize)]
struct Status {
    peer_id: String,
    listen_addrs: Vec<String>,
    reservation: bool,
    connections: Vec<ConnectionStatus>,
    webrtc: HashMap<String, String>,
}

#[derive(Debug, Clone, Serialize)]
struct ConnectionStatus {
    peer_id: String,
    addr: String,
    path: Path,
    /// The last ping's round trip on this connection.
    ping_ms: Option<f64>,
}

#[wasm_bindgen]
pub struct Probe {
    dials: mpsc::UnboundedSender<Multiaddr>,
    control: libp2p_stream::Control,
    status: Rc<RefCell<Status>>,
}

#[wasm_bindgen]
impl Probe {
    /// Starts a peer with a new identity that reserves a slot on `relay` (a multiaddr ending in
    /// `/p2p/<id>`) and accepts WebRTC; `stun`: STUN URLs (may be empty).
    pub fn start(relay: &str, stun: Vec<String>) -> Result<Probe, JsError> {
        let relay: Multiaddr = relay
            .parse()
            .map_err(|e| JsError::new(&format!("relay address: {e}")))?;
        let key = Keypair::generate_ed25519();
        let (relay_transport, relay_client) = relay::client::new(key.public().to_peer_id());
        let stream = libp2p_stream::Behaviour::new();
        let mut control = stream.new_control();
        let upgrader = webrtc::Upgrader::new(key.public().to_peer_id());
        let config = webrtc::Config { stun_servers: stun };
        let webrtc_transport = webrtc::Transport::new(stream.new_control(), config, &upgrader);
        let mut swarm: Swarm<Behaviour> = libp2p::SwarmBuilder::with_existing_identity(key)
            .with_wasm_bindgen()
            .with_other_transport(|key| transport(key, relay_transport, webrtc_transport))
            .map_err(|e| JsError::new(&format!("transports: {e}")))?
            .with_behaviour(|key| Behaviour {
                relay_client,
                identify: identify::Behaviour::new(identify::Config::new(
                    "/ipfs/id/1.0.0".into(),
                    key.public(),
                )),
                ping: ping::Behaviour::new(
                    ping::Config::new().with_interval(Duration::from_secs(1)),
                ),
                stream,
                webrtc: upgrader,
            })
            .map_err(|e| JsError::new(&format!("behaviour: {e}")))?
            .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(3600)))
            .build();
        swarm
            .listen_on(relay.clone().with(Protocol::P2pCircuit))
            .map_err(|e| JsError::new(&format!("listening through the relay: {e}")))?;
        swarm
            .listen_on(Multiaddr::empty().with(Protocol::WebRTC))
            .map_err(|e| JsError::new(&format!("listening on /webrtc: {e}")))?;
        let incoming = control
            .accept(ECHO_PROTOCOL)
            .map_err(|e| JsError::new(&e.to_string()))?;
        spawn_local(serve_echo(incoming));
        let status = Rc::new(RefCell::new(Status {
            peer_id: swarm.local_peer_id().to_string(),
            ..Status::default()
        }));
        let (dials, dial_rx) = mpsc::unbounded();
        spawn_local(run(swarm, dial_rx, status.clone()));
        Ok(Probe {
            dials,
            control,
            status,
        })
    }

    /// Its peer id, listen addresses, reservation and connections (with their path), as JSON.
    pub fn status(&self) -> String {
        serde_json::to_string(&*self.status.borrow()).unwrap_or_default()
    }

    /// Dials an address (e.g. `<relay>/p2p-circuit/webrtc/p2p/<id>`).
    pub fn dial(&self, addr: &str) -> Result<(), JsError> {
        let addr: Multiaddr = addr.parse().map_err(|e| JsError::new(&format!("{e}")))?;
        self.dials
            .unbounded_send(addr)
            .map_err(|_| JsError::new("the probe stopped"))
    }

    /// Sends `len` bytes on an `/echo/1.0.0` stream to `peer`, reads them back, checks them;
    /// resolves to the milliseconds it took.
    pub fn echo(&self, peer: &str, len: usize) -> Promise {
        let mut control = self.control.clone();
        let peer: Result<PeerId, _> = peer.parse();
        future_to_promise(async move {
            let peer = peer.map_err(|e| JsError::new(&format!("peer id: {e}")))?;
            let started = web_time::Instant::now();
            let stream = control
                .open_stream(peer, ECHO_PROTOCOL)
                .await
                .map_err(|e| JsError::new(&format!("opening the echo stream: {e}")))?;
            let (mut reader, mut writer) = stream.split();
            let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let write = async {
                writer.write_all(&data).await?;
                writer.close().await
            };
            let mut back = Vec::with_capacity(len);
            let read = reader.read_to_end(&mut back);
            let (written, read) = futures::join!(write, read);
            written.map_err(|e| JsError::new(&format!("writing: {e}")))?;
            read.map_err(|e| JsError::new(&format!("reading: {e}")))?;
            if back != data {
                return Err(JsError::new(&format!(
                    "echo: {} bytes back for {len} sent, or different ones",
                    back.len()
                ))
                .into());
            }
            Ok(JsValue::from_f64(started.elapsed().as_secs_f64() * 1000.0))
        })
    }
}

/// Answers `/echo/1.0.0`: everything read is written back; the end of reading closes writing.
async fn serve_echo(mut incoming: libp2p_stream::IncomingStreams) {
    while let Some((peer, stream)) = incoming.next().await {
        spawn_local(async move {
            let (mut reader, mut writer) = stream.split();
            let mut buf = vec![0u8; 64 * 1024];
            let result: std::io::Result<usize> = async {
                let mut total = 0;
                loop {
                    let n = reader.read(&mut buf).await?;
                    if n == 0 {
                        writer.close().await?;
                        return Ok(total);
                    }
                    writer.write_all(&buf[..n]).await?;
                    total += n;
                }
            }
            .await;
            match result {
                Ok(n) => info(&format!("echoed {n} bytes to {peer}")),
                Err(e) => warn(&format!("echo for {peer}: {e}")),
            }
        });
    }
}

async fn run(
    mut swarm: Swarm<Behaviour>,
    mut dials: mpsc::UnboundedReceiver<Multiaddr>,
    status: Rc<RefCell<Status>>,
) {
    let mut connections: HashMap<ConnectionId, ConnectionStatus> = HashMap::new();
    loop {
        futures::select! {
            addr = dials.select_next_some() => {
                if let Err(e) = swarm.dial(addr.clone()) {
                    warn(&format!("dialing {addr}: {e}"));
                }
            }
            event = swarm.select_next_some() => {
                let mut status = status.borrow_mut();
                match event {
                    SwarmEvent::NewListenAddr { address, .. } => {
                        info(&format!("probe reachable at {address}"));
                        status.listen_addrs.push(address.to_string());
                    }
                    SwarmEvent::ConnectionEstablished { peer_id, connection_id, endpoint, .. } => {
                        let addr = endpoint.get_remote_address();
                        info(&format!("probe connected to {peer_id} at {addr}"));
                        connections.insert(connection_id, ConnectionStatus {
                            peer_id: peer_id.to_string(),
                            addr: addr.to_string(),
                            path: Path::of_endpoint(&endpoint),
                            ping_ms: None,
                        });
                    }
                    SwarmEvent::ConnectionClosed { connection_id, .. } => {
                        connections.remove(&connection_id);
                    }
                    SwarmEvent::OutgoingConnectionError { error, .. } => {
                        warn(&format!("probe dial failed: {error}"));
                    }
                    SwarmEvent::Behaviour(BehaviourEvent::RelayClient(
                        relay::client::Event::ReservationReqAccepted { .. },
                    )) => status.reservation = true,
                    SwarmEvent::Behaviour(BehaviourEvent::Ping(ping::Event {
                        connection,
                        result: Ok(rtt),
                        ..
                    })) => {
                        if let Some(c) = connections.get_mut(&connection) {
                            c.ping_ms = Some(rtt.as_secs_f64() * 1000.0);
                        }
                    }
                    SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received {
                        peer_id,
                        info,
                        ..
                    })) if info.protocols.contains(&webrtc::SIGNALING_PROTOCOL) => {
                        swarm.behaviour_mut().webrtc.remote_supports_webrtc(peer_id);
                    }
                    SwarmEvent::Behaviour(BehaviourEvent::Webrtc(event)) => {
                        info(&format!("probe: {event:?}"));
                        let (peer, note) = match event {
                            webrtc::Event::Upgrading { peer } => (peer, "upgrading".to_owned()),
                            webrtc::Event::Upgraded { peer, after } => {
                                (peer, format!("upgraded after {after:?}"))
                            }
                            webrtc::Event::Failed { peer, error } => (peer, format!("failed: {error}")),
                        };
                        status.webrtc.insert(peer.to_string(), note);
                    }
                    _ => {}
                }
                status.connections = connections.values().cloned().collect();
            }
        }
    }
}
