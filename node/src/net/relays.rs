//! Relays: finding them (RELAY_ADDRS, as multiaddrs or as the URL of a relay's HTTP server)
//! and keeping a reservation on each, so others reach this node through them.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use libp2p::core::transport::ListenerId;
use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId, relay};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::discovery::{is_relayed, peer_of, relay_of};
use super::event_loop::EventLoop;
use super::handle::{Command, RelayInfo, Reservation};
use super::protocol::Backoff;
use crate::config::{Config, RelayAddr};

/// The relays this node knows of.
pub(super) struct Relays {
    /// RELAY_ADDRS, and the reservation on each.
    reservations: HashMap<PeerId, RelayState>,
    /// Those, and the relays named in circuit addresses of BOOTSTRAP_PEERS: all are treated as
    /// relays when they connect, never synced with.
    known: HashSet<PeerId>,
}

/// A relay of RELAY_ADDRS and this node's reservation on it.
struct RelayState {
    addr: Multiaddr,
    reservation: ReservationState,
    backoff: Backoff,
    /// Why the last reservation ended or failed, if it did.
    last_error: Option<String>,
    /// Its WebSocket addresses, as it said in identify: where browsers reach it.
    browser_addrs: Vec<Multiaddr>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReservationState {
    /// Not listening through the relay; ask at `next_at`.
    Waiting { next_at: Instant },
    /// Listening on `<relay>/p2p-circuit`: the reservation is asked for.
    Asked(ListenerId),
    /// The relay granted it: others can reach this node through it.
    Held(ListenerId),
}

impl RelayState {
    fn new(addr: Multiaddr, now: Instant) -> Self {
        Self {
            addr,
            reservation: ReservationState::Waiting { next_at: now },
            backoff: Backoff::new(),
            last_error: None,
            browser_addrs: Vec::new(),
        }
    }

    fn listener(&self) -> Option<ListenerId> {
        match self.reservation {
            ReservationState::Waiting { .. } => None,
            ReservationState::Asked(id) | ReservationState::Held(id) => Some(id),
        }
    }
}

impl Relays {
    pub fn configured(config: &Config, now: Instant) -> Self {
        let reservations: HashMap<PeerId, RelayState> = config
            .relay_addrs
            .iter()
            .filter_map(|relay| match relay {
                RelayAddr::Peer(addr) => Some((peer_of(addr)?, RelayState::new(addr.clone(), now))),
                // Added when its /addrs answers (resolve_relay).
                RelayAddr::Http(_) => None,
            })
            .collect();
        let known = reservations
            .keys()
            .copied()
            .chain(config.bootstrap_peers.iter().filter_map(relay_of))
            .collect();
        Self {
            reservations,
            known,
        }
    }

    pub fn is_known(&self, peer: &PeerId) -> bool {
        self.known.contains(peer)
    }

    /// A relay of RELAY_ADDRS told its listen addresses (identify): keep the WebSocket ones,
    /// with its id, for browsers.
    pub fn learned_addrs(&mut self, peer: PeerId, addrs: &[Multiaddr]) {
        if let Some(relay) = self.reservations.get_mut(&peer) {
            relay.browser_addrs = addrs
                .iter()
                .filter(|a| is_websocket(a))
                .map(|a| a.clone().with_p2p(peer).unwrap_or_else(|a| a))
                .collect();
        }
    }
}

/// A direct WebSocket address (what a browser can dial), not a circuit.
pub(super) fn is_websocket(addr: &Multiaddr) -> bool {
    !is_relayed(addr)
        && addr
            .iter()
            .any(|p| matches!(p, Protocol::Ws(_) | Protocol::Wss(_)))
}

impl EventLoop {
    pub(super) fn relay_infos(&self) -> Vec<RelayInfo> {
        self.relays
            .reservations
            .iter()
            .map(|(id, r)| RelayInfo {
                peer_id: id.to_string(),
                addr: r.addr.to_string(),
                reservation: match r.reservation {
                    ReservationState::Held(_) => Reservation::Active,
                    ReservationState::Asked(_) => Reservation::Pending,
                    ReservationState::Waiting { .. } => Reservation::None,
                },
                connected: self.swarm.is_connected(id),
                last_error: r.last_error.clone(),
                browser_addrs: r.browser_addrs.iter().map(ToString::to_string).collect(),
            })
            .collect()
    }

    /// A relay of RELAY_ADDRS given by URL, found through its /addrs.
    pub(super) fn add_relay(&mut self, addr: Multiaddr) {
        let Some(peer) = peer_of(&addr) else {
            return;
        };
        tracing::info!(relay = %peer, %addr, "relay found through its /addrs");
        let now = Instant::now();
        self.relays.known.insert(peer);
        self.relays
            .reservations
            .entry(peer)
            .or_insert_with(|| RelayState::new(addr, now));
        self.reserve_on_relays(now);
    }

    /// Asks each relay without a reservation (or a request under way) for one, once its
    /// backoff has passed. Listening on `<relay>/p2p-circuit` dials the relay if needed.
    pub(super) fn reserve_on_relays(&mut self, now: Instant) {
        for (peer, relay) in &mut self.relays.reservations {
            let ReservationState::Waiting { next_at } = relay.reservation else {
                continue;
            };
            if next_at > now {
                continue;
            }
            let circuit = relay.addr.clone().with(Protocol::P2pCircuit);
            match self.swarm.listen_on(circuit) {
                Ok(id) => {
                    tracing::debug!(relay = %peer, addr = %relay.addr, "asking the relay for a reservation");
                    relay.reservation = ReservationState::Asked(id);
                }
                Err(error) => {
                    tracing::warn!(relay = %peer, addr = %relay.addr, %error, "cannot listen through the relay");
                    relay.last_error = Some(error.to_string());
                    relay.reservation = ReservationState::Waiting {
                        next_at: now + relay.backoff.next_delay(),
                    };
                }
            }
        }
    }

    pub(super) fn on_relay_client_event(&mut self, event: relay::client::Event) {
        match event {
            relay::client::Event::ReservationReqAccepted {
                relay_peer_id,
                renewal,
                ..
            } => {
                if let Some(relay) = self.relays.reservations.get_mut(&relay_peer_id)
                    && let Some(listener) = relay.listener()
                {
                    relay.reservation = ReservationState::Held(listener);
                    relay.backoff.reset();
                    relay.last_error = None;
                }
                if renewal {
                    tracing::debug!(relay = %relay_peer_id, "relay reservation renewed");
                } else {
                    tracing::info!(relay = %relay_peer_id, "relay reservation accepted");
                }
            }
            relay::client::Event::InboundCircuitEstablished { src_peer_id, .. } => {
                tracing::debug!(peer = %src_peer_id, "inbound connection through a relay");
            }
            relay::client::Event::OutboundCircuitEstablished { relay_peer_id, .. } => {
                tracing::debug!(relay = %relay_peer_id, "outbound connection through a relay");
            }
        }
    }

    /// A relay listener closed: the reservation ended (or was never granted). Ask again
    /// after the backoff.
    pub(super) fn on_relay_listener_closed(&mut self, listener: ListenerId, error: Option<String>) {
        let Some((peer, relay)) = self
            .relays
            .reservations
            .iter_mut()
            .find(|(_, r)| r.listener() == Some(listener))
        else {
            return;
        };
        let was_held = matches!(relay.reservation, ReservationState::Held(_));
        let retry = relay.backoff.next_delay();
        relay.reservation = ReservationState::Waiting {
            next_at: Instant::now() + retry,
        };
        let retry_secs = retry.as_secs_f64();
        relay.last_error = Some(
            error
                .clone()
                .unwrap_or_else(|| "connection to the relay closed".to_owned()),
        );
        if was_held {
            tracing::warn!(relay = %peer, error = ?error, retry_secs, "relay reservation lost; asking again");
        } else {
            tracing::info!(relay = %peer, error = ?error, retry_secs, "relay reservation not granted; asking again later");
        }
    }
}

/// What a relay's `GET /addrs` says (only what is used here).
#[derive(serde::Deserialize)]
struct RelayAddrs {
    addrs: Vec<String>,
}

/// Reads a relay's id and addresses from its HTTP server (`<url>/addrs`), retrying with
/// backoff until it answers (a relay may start after the node), then hands the address to the
/// loop. The relay keeps its id across restarts, so once is enough.
pub(super) async fn resolve_relay(
    url: String,
    commands: mpsc::Sender<Command>,
    shutdown: CancellationToken,
) {
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
}
