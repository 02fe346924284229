//! Finding nodes: mDNS on the local network and BOOTSTRAP_PEERS, each redialled with backoff
//! while disconnected; and reading peer ids and relays out of multiaddrs.

use std::collections::HashMap;
use std::time::Instant;

use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId, mdns};

use super::event_loop::EventLoop;
use super::protocol::Backoff;

/// A peer to dial again, with backoff, while not connected: a bootstrap peer (for ever), or one
/// found by mDNS (until its mDNS record expires, or it turns out to be of another deployment).
pub(super) struct Redial {
    addr: Multiaddr,
    next_at: Instant,
    backoff: Backoff,
    source: Found,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Found {
    Bootstrap,
    Mdns,
}

/// BOOTSTRAP_PEERS that name their peer id, all due at once.
pub(super) fn bootstrap_redials(addrs: &[Multiaddr], now: Instant) -> HashMap<PeerId, Redial> {
    addrs
        .iter()
        .filter_map(|addr| {
            let redial = Redial {
                addr: addr.clone(),
                next_at: now,
                backoff: Backoff::new(),
                source: Found::Bootstrap,
            };
            Some((peer_of(addr)?, redial))
        })
        .collect()
}

impl EventLoop {
    /// Dials every peer to redial whose backoff has passed and that is neither connected nor
    /// banned.
    pub(super) fn redial_due(&mut self, now: Instant) {
        for (peer, redial) in &mut self.redials {
            if redial.next_at > now
                || self.swarm.is_connected(peer)
                || self.banned.contains_key(peer)
            {
                continue;
            }
            tracing::debug!(%peer, addr = %redial.addr, "dialing peer again");
            if let Err(error) = self.swarm.dial(redial.addr.clone()) {
                tracing::warn!(%peer, addr = %redial.addr, %error, "dial failed");
            }
            redial.next_at = now + redial.backoff.next_delay();
        }
    }

    /// Connected: the next time it goes away, redial it quickly.
    pub(super) fn redial_connected(&mut self, peer: &PeerId) {
        if let Some(redial) = self.redials.get_mut(peer) {
            redial.backoff.reset();
        }
    }

    /// Its last connection closed: redial after the backoff.
    pub(super) fn redial_disconnected(&mut self, peer: &PeerId) {
        if let Some(redial) = self.redials.get_mut(peer) {
            redial.next_at = Instant::now() + redial.backoff.delay();
        }
    }

    /// Stops redialling a peer that mDNS found (bootstrap peers are redialled for ever).
    pub(super) fn forget_mdns_redial(&mut self, peer: &PeerId) {
        if self
            .redials
            .get(peer)
            .is_some_and(|r| r.source == Found::Mdns)
        {
            self.redials.remove(peer);
        }
    }

    pub(super) fn on_mdns(&mut self, event: mdns::Event) {
        match event {
            mdns::Event::Discovered(found) => {
                for (peer, addr) in found {
                    self.on_mdns_discovered(peer, addr);
                }
            }
            mdns::Event::Expired(gone) => {
                for (peer, _) in gone {
                    self.forget_mdns_redial(&peer);
                }
            }
        }
    }

    fn on_mdns_discovered(&mut self, peer: PeerId, addr: Multiaddr) {
        let local = *self.swarm.local_peer_id();
        if peer == local || self.banned.contains_key(&peer) || self.swarm.is_connected(&peer) {
            return;
        }
        tracing::info!(%peer, %addr, "discovered by mDNS");
        let addr = addr.with_p2p(peer).unwrap_or_else(|a| a);
        // Both nodes hear each other's mDNS answer at the same moment; if both dial at once
        // from their listening port, the two TCP handshakes can merge into one connection that
        // both sides think they dialled, and it fails. So only the node with the lower peer id
        // dials at once; the other one dials a second later if still not connected, and both
        // keep redialling with backoff while the mDNS record lasts.
        if local < peer
            && let Err(error) = self.swarm.dial(addr.clone())
        {
            tracing::debug!(%peer, %error, "dial after mDNS failed");
        }
        self.redials.entry(peer).or_insert_with(|| Redial {
            addr,
            next_at: Instant::now() + Backoff::FIRST,
            backoff: Backoff::new(),
            source: Found::Mdns,
        });
    }
}

/// The peer an address ends with (`…/p2p/<id>`).
pub(super) fn peer_of(addr: &Multiaddr) -> Option<PeerId> {
    match addr.iter().last() {
        Some(Protocol::P2p(peer)) => Some(peer),
        _ => None,
    }
}

/// The relay of a circuit address (`<relay>/p2p/<relay id>/p2p-circuit/...`).
pub(super) fn relay_of(addr: &Multiaddr) -> Option<PeerId> {
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

pub(super) fn is_relayed(addr: &Multiaddr) -> bool {
    addr.iter().any(|p| matches!(p, Protocol::P2pCircuit))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_and_relay_ids_are_read_from_circuit_addresses() {
        let relay = PeerId::random();
        let node = PeerId::random();
        let direct: Multiaddr = format!("/ip4/10.0.0.2/tcp/4001/p2p/{node}")
            .parse()
            .expect("addr");
        let circuit: Multiaddr =
            format!("/ip4/10.0.0.9/tcp/4001/p2p/{relay}/p2p-circuit/p2p/{node}")
                .parse()
                .expect("addr");
        assert_eq!(peer_of(&direct), Some(node));
        assert_eq!(relay_of(&direct), None);
        assert!(!is_relayed(&direct));
        assert_eq!(peer_of(&circuit), Some(node));
        assert_eq!(relay_of(&circuit), Some(relay));
        assert!(is_relayed(&circuit));
        let bare: Multiaddr = "/ip4/10.0.0.2/tcp/4001".parse().expect("addr");
        assert_eq!(peer_of(&bare), None);
        let only = bootstrap_redials(&[bare, direct], Instant::now());
        assert_eq!(
            only.keys().collect::<Vec<_>>(),
            [&node],
            "an address without an id is not redialled"
        );
    }
}
