//! Browser-to-browser WebRTC for rust-libp2p (the spec's `/webrtc` transport, libp2p/specs
//! `webrtc/webrtc.md`), which rust-libp2p does not have: two browsers that share a relayed
//! connection upgrade it to a direct `RTCPeerConnection`.
//!
//! Flow, as js-libp2p's `@libp2p/webrtc` does it (and interoperates with it):
//! 1. The dialer dials `<relay>/p2p-circuit/webrtc/p2p/<peer>`. [`Transport`] reuses the
//!    relayed connection to the peer (or has one dialled through [`Upgrader`]) and opens a
//!    `/webrtc-signaling/0.0.1` stream on it (libp2p-stream).
//! 2. The dialer creates an `RTCPeerConnection` and an `init` data channel, sends its SDP offer,
//!    reads the answer, and both sides trickle ICE candidates over the stream until the
//!    connection state is `connected`; the dialer then closes `init` and the stream.
//! 3. The connection is handed to the swarm with no Noise handshake: the remote's identity is the
//!    one the relayed connection authenticated. Each libp2p stream is a data channel carrying
//!    [`proto::Frame`]s (FIN / FIN_ACK close cleanly, see [`stream_state`]).
//! 4. [`Upgrader`] (a behaviour) starts step 1 for every relayed connection this browser dialled
//!    to a peer that speaks the signalling protocol, and closes the relayed connection once the
//!    direct one is up. When ICE fails the peers simply stay on the relayed connection.
//!
//! Transport order matters: the stock relay client accepts a trailing `/webrtc` as part of its
//! destination, so this transport must be asked first (see `build_swarm`).
//!
//! The codecs and the stream state machine are plain Rust, tested natively; the parts that
//! touch `RTCPeerConnection` exist only for wasm32.

use libp2p::core::ConnectedPoint;
use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId, StreamProtocol};

pub mod proto;
pub mod stream_state;

#[cfg(target_arch = "wasm32")]
mod connection;
#[cfg(target_arch = "wasm32")]
mod stream;
#[cfg(target_arch = "wasm32")]
mod transport;
mod upgrader;

#[cfg(target_arch = "wasm32")]
pub use connection::Connection;
#[cfg(target_arch = "wasm32")]
pub use transport::Transport;
pub use upgrader::{Event, Upgrader};

pub const SIGNALING_PROTOCOL: StreamProtocol = StreamProtocol::new("/webrtc-signaling/0.0.1");

/// How the page configures the transport.
#[derive(Debug, Clone, Default)]
pub struct Config {
    /// STUN server URLs (`stun:host:port`). Empty: host candidates only, enough on one machine
    /// or one LAN. Public ones, for peers behind NAT: `stun:stun.l.google.com:19302`,
    /// `stun:stun.cloudflare.com:3478`, `stun:global.stun.twilio.com:3478`.
    pub stun_servers: Vec<String>,
}

impl Config {
    /// The `RTCConfiguration` dictionary, as JSON.
    pub fn rtc_configuration_json(&self) -> String {
        let servers: Vec<serde_json::Value> = self
            .stun_servers
            .iter()
            .map(|url| serde_json::json!({ "urls": url }))
            .collect();
        serde_json::json!({ "iceServers": servers }).to_string()
    }
}

/// A dial address this transport takes, split: the peer, and the relayed address that reaches
/// it (`None` for `/webrtc/p2p/<peer>`, which needs a connection to exist already).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebRtcTarget {
    pub peer: PeerId,
    pub circuit: Option<Multiaddr>,
}

/// `<relay>/p2p-circuit/webrtc/p2p/<peer>` or `/webrtc/p2p/<peer>`; anything else is not ours.
pub fn parse_dial_address(addr: &Multiaddr) -> Option<WebRtcTarget> {
    let protocols: Vec<Protocol<'_>> = addr.iter().collect();
    let [before @ .., Protocol::WebRTC, Protocol::P2p(peer)] = protocols.as_slice() else {
        return None;
    };
    let circuit = match before {
        [] => None,
        [.., Protocol::P2pCircuit] => {
            let mut circuit: Multiaddr = before.iter().cloned().collect();
            circuit.push(Protocol::P2p(*peer));
            Some(circuit)
        }
        _ => return None,
    };
    Some(WebRtcTarget {
        peer: *peer,
        circuit,
    })
}

/// The `/webrtc` dial address for a relayed connection's remote address
/// (`<relay>/p2p-circuit/p2p/<peer>` → `<relay>/p2p-circuit/webrtc/p2p/<peer>`).
pub fn upgrade_address(circuit: &Multiaddr) -> Option<Multiaddr> {
    let protocols: Vec<Protocol<'_>> = circuit.iter().collect();
    let [before @ .., Protocol::P2pCircuit, Protocol::P2p(peer)] = protocols.as_slice() else {
        return None;
    };
    let mut addr: Multiaddr = before.iter().cloned().collect();
    addr.push(Protocol::P2pCircuit);
    addr.push(Protocol::WebRTC);
    addr.push(Protocol::P2p(*peer));
    Some(addr)
}

/// How a connection reaches its peer, read from its address (for status and for the upgrade).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Path {
    /// Straight to the peer (a node's WebSocket listener).
    Direct,
    /// Through a relay's circuit.
    Relayed,
    /// A direct WebRTC connection.
    Webrtc,
}

impl Path {
    /// A connection's path. A relayed connection this side accepted has only `/p2p/<peer>` as
    /// its remote address (the relay client's choice): its local address names the circuit.
    pub fn of_endpoint(endpoint: &ConnectedPoint) -> Self {
        match endpoint {
            ConnectedPoint::Dialer { address, .. } => Self::of(address),
            ConnectedPoint::Listener {
                local_addr,
                send_back_addr,
            } => match (Self::of(local_addr), Self::of(send_back_addr)) {
                (Self::Webrtc, _) | (_, Self::Webrtc) => Self::Webrtc,
                (Self::Relayed, _) | (_, Self::Relayed) => Self::Relayed,
                _ => Self::Direct,
            },
        }
    }

    pub fn of(addr: &Multiaddr) -> Self {
        if addr.iter().any(|p| matches!(p, Protocol::WebRTC)) {
            Self::Webrtc
        } else if addr.iter().any(|p| matches!(p, Protocol::P2pCircuit)) {
            Self::Relayed
        } else {
            Self::Direct
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> Multiaddr {
        s.parse().expect("multiaddr")
    }

    #[test]
    fn dial_addresses_name_the_relay_circuit_then_webrtc_then_the_peer() {
        let (relay, peer) = (PeerId::random(), PeerId::random());
        let relay_addr = format!("/ip4/127.0.0.1/tcp/4002/ws/p2p/{relay}");
        let circuit = addr(&format!("{relay_addr}/p2p-circuit/p2p/{peer}"));
        let webrtc = addr(&format!("{relay_addr}/p2p-circuit/webrtc/p2p/{peer}"));
        assert_eq!(upgrade_address(&circuit), Some(webrtc.clone()));
        assert_eq!(
            parse_dial_address(&webrtc),
            Some(WebRtcTarget {
                peer,
                circuit: Some(circuit.clone())
            })
        );
        assert_eq!(
            parse_dial_address(&addr(&format!("/webrtc/p2p/{peer}"))),
            Some(WebRtcTarget {
                peer,
                circuit: None
            })
        );
        // Not ours: plain circuits, WebRTC-direct, /webrtc without the circuit before it.
        assert_eq!(parse_dial_address(&circuit), None);
        assert_eq!(
            parse_dial_address(&addr(&format!("/ip4/1.2.3.4/udp/1/webrtc/p2p/{peer}"))),
            None
        );
        assert_eq!(parse_dial_address(&addr("/webrtc")), None);
        assert_eq!(upgrade_address(&webrtc), None);
        assert_eq!(upgrade_address(&addr(&relay_addr)), None);
        assert_eq!(Path::of(&webrtc), Path::Webrtc);
        assert_eq!(Path::of(&circuit), Path::Relayed);
        assert_eq!(Path::of(&addr(&relay_addr)), Path::Direct);
    }

    #[test]
    fn accepted_connections_are_classified_by_their_local_address_too() {
        let peer = PeerId::random();
        let relay_addr = addr(&format!(
            "/ip4/127.0.0.1/tcp/4002/ws/p2p/{}",
            PeerId::random()
        ));
        let accepted = |local: Multiaddr, remote: Multiaddr| ConnectedPoint::Listener {
            local_addr: local,
            send_back_addr: remote,
        };
        // What the relay client reports for an incoming circuit.
        let circuit_in = accepted(
            relay_addr.clone().with(Protocol::P2pCircuit),
            Multiaddr::empty().with(Protocol::P2p(peer)),
        );
        assert_eq!(Path::of_endpoint(&circuit_in), Path::Relayed);
        // What this crate's transport reports for an incoming WebRTC connection.
        let webrtc_in = accepted(
            Multiaddr::empty().with(Protocol::WebRTC),
            addr(&format!("/webrtc/p2p/{peer}")),
        );
        assert_eq!(Path::of_endpoint(&webrtc_in), Path::Webrtc);
        let ws_in = accepted(
            addr("/ip4/127.0.0.1/tcp/1/ws"),
            addr("/ip4/127.0.0.1/tcp/2/ws"),
        );
        assert_eq!(Path::of_endpoint(&ws_in), Path::Direct);
        let dialed = ConnectedPoint::Dialer {
            address: relay_addr
                .with(Protocol::P2pCircuit)
                .with(Protocol::P2p(peer)),
            role_override: libp2p::core::Endpoint::Dialer,
            port_use: libp2p::core::transport::PortUse::Reuse,
        };
        assert_eq!(Path::of_endpoint(&dialed), Path::Relayed);
    }

    #[test]
    fn stun_servers_become_the_rtc_configuration() {
        assert_eq!(
            Config::default().rtc_configuration_json(),
            r#"{"iceServers":[]}"#
        );
        let config = Config {
            stun_servers: vec!["stun:stun.l.google.com:19302".into()],
        };
        assert_eq!(
            config.rtc_configuration_json(),
            r#"{"iceServers":[{"urls":"stun:stun.l.google.com:19302"}]}"#
        );
    }
}
