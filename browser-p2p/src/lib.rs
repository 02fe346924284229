//! The browser's libp2p peer, loaded by the page only when no node answers over HTTP (offline
//! mode): a page in server mode never downloads it.
//!
//! It reaches the deployment's relays over WebSocket (Noise, Yamux) and holds a circuit relay v2
//! reservation on each, so other browsers can dial it at `<relay>/p2p-circuit/p2p/<its id>`. It
//! registers there under the deployment's rendezvous namespace and discovers the other browsers
//! registered there; peers it met before are remembered by the page and dialled again after a
//! reload, before rendezvous answers. With every peer of the deployment (browsers, and nodes
//! reached through a relay or over a node's `/ws` address) it speaks what nodes speak to each
//! other (`crates/p2p-protocol`): sync pages for catch-up, and a push of each local transaction
//! for liveness.
//!
//! The replica itself stays with the page's other module (wasm-peer, in OPFS under a Web Lock):
//! this peer reaches it through functions the page hands over, with bytes in the formats of
//! `crates/changeset` (sync request and page, change batch), so what a browser accepts from a
//! peer passes the same `changeset::validate` as on a node.

use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId};

#[cfg(target_arch = "wasm32")]
mod browser;
pub mod webrtc;
#[cfg(target_arch = "wasm32")]
pub use browser::P2p;
#[cfg(all(target_arch = "wasm32", feature = "probe"))]
mod probe;
#[cfg(all(target_arch = "wasm32", feature = "probe"))]
pub use probe::Probe;

/// How many peers the page remembers: enough for a team, and a reload never redials hundreds.
pub const MAX_KNOWN_PEERS: usize = 32;

/// `<relay>/p2p-circuit/p2p/<peer>`: how to reach `peer` through `relay` (an address ending in
/// the relay's `/p2p/<id>`).
pub fn circuit_to(relay: &Multiaddr, peer: PeerId) -> Multiaddr {
    relay
        .clone()
        .with(Protocol::P2pCircuit)
        .with(Protocol::P2p(peer))
}

/// The peer an address ends with (`…/p2p/<id>`).
pub fn peer_of(addr: &Multiaddr) -> Option<PeerId> {
    match addr.iter().last() {
        Some(Protocol::P2p(peer)) => Some(peer),
        _ => None,
    }
}

/// Peers met before, most recent first, at most [`MAX_KNOWN_PEERS`]: the page keeps them (in
/// localStorage) so a reloaded or restarted browser dials them at once.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KnownPeers(Vec<PeerId>);

impl KnownPeers {
    /// From what the page kept; ids that do not parse are dropped.
    pub fn from_strings<'a>(ids: impl IntoIterator<Item = &'a str>) -> Self {
        let mut known = Self::default();
        let parsed: Vec<PeerId> = ids.into_iter().filter_map(|s| s.parse().ok()).collect();
        for id in parsed.into_iter().rev() {
            known.met(id);
        }
        known
    }

    /// `peer` was just seen: first in the list. True when the list changed.
    pub fn met(&mut self, peer: PeerId) -> bool {
        if self.0.first() == Some(&peer) {
            return false;
        }
        self.0.retain(|p| *p != peer);
        self.0.insert(0, peer);
        self.0.truncate(MAX_KNOWN_PEERS);
        true
    }

    pub fn iter(&self) -> impl Iterator<Item = &PeerId> {
        self.0.iter()
    }

    pub fn to_strings(&self) -> Vec<String> {
        self.0.iter().map(ToString::to_string).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn circuit_addresses_name_the_relay_then_the_peer() {
        let relay = PeerId::random();
        let peer = PeerId::random();
        let relay_addr: Multiaddr = format!("/ip4/127.0.0.1/tcp/4002/ws/p2p/{relay}")
            .parse()
            .expect("addr");
        let circuit = circuit_to(&relay_addr, peer);
        assert_eq!(
            circuit.to_string(),
            format!("/ip4/127.0.0.1/tcp/4002/ws/p2p/{relay}/p2p-circuit/p2p/{peer}")
        );
        assert_eq!(peer_of(&circuit), Some(peer));
        assert_eq!(peer_of(&relay_addr), Some(relay));
    }

    #[test]
    fn known_peers_keep_the_most_recent_first_without_repeats_and_bounded() {
        let (a, b) = (PeerId::random(), PeerId::random());
        let mut known = KnownPeers::from_strings([a.to_string().as_str(), "garbage"]);
        assert_eq!(known.to_strings(), [a.to_string()]);
        assert!(known.met(b));
        assert!(known.met(a));
        assert!(!known.met(a), "seeing the first one again changes nothing");
        assert_eq!(known.to_strings(), [a.to_string(), b.to_string()]);
        let restored = KnownPeers::from_strings(known.to_strings().iter().map(String::as_str));
        assert_eq!(restored, known, "the page's list restores in order");
        for _ in 0..MAX_KNOWN_PEERS {
            known.met(PeerId::random());
        }
        assert_eq!(known.iter().count(), MAX_KNOWN_PEERS);
        assert!(!known.iter().any(|p| *p == b), "the oldest went first");
    }
}
