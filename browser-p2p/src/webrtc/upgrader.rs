//! The behaviour paired with [`super::Transport`]: it upgrades relayed connections to direct
//! WebRTC ones, and retires the relayed connection once the direct one is up.
//!
//! Only the side that dialled the relayed connection starts the upgrade (so two browsers do not
//! both dial), and only once the other side is known to speak `/webrtc-signaling/0.0.1` (the
//! page tells it from identify). A failed upgrade (ICE found no path) leaves the peers on the
//! relayed connection; it is tried again after [`RETRY_AFTER`].

use std::collections::{HashMap, HashSet, VecDeque};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use futures::FutureExt;
use libp2p::core::transport::{PortUse, TransportError};
use libp2p::core::{ConnectedPoint, Endpoint, Multiaddr};
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::{
    ConnectionClosed, ConnectionDenied, ConnectionId, DialError, DialFailure, FromSwarm,
    NetworkBehaviour, THandler, THandlerInEvent, THandlerOutEvent, ToSwarm, dummy,
};
use libp2p::{PeerId, swarm::CloseConnection};
use web_time::Instant;

/// Relayed addresses of peers a `/webrtc` dial is for, for [`Upgrader`] to dial when no
/// connection exists yet to carry the signalling stream (libp2p-stream's own dial is refused
/// by the swarm while the `/webrtc` dial to the same peer is in progress).
#[derive(Default)]
pub(crate) struct PendingCircuits {
    pub circuits: HashMap<PeerId, Multiaddr>,
    pub waker: Option<Waker>,
}

pub(crate) type SharedPending = Arc<Mutex<PendingCircuits>>;
use super::{Path, upgrade_address};

/// How long after a failed upgrade it is tried again.
pub const RETRY_AFTER: Duration = Duration::from_secs(60);
/// How long the listening side keeps the relayed connection after the direct one is up: the
/// dialer closes it at once, but a js-libp2p dialer still closes its signalling stream on it,
/// and fails its dial if the connection goes first.
const RETIRE_AFTER: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
pub enum Event {
    /// A direct connection is being set up.
    Upgrading { peer: PeerId },
    /// A direct connection is up; `after` is from the start of the upgrade (the dialer's side).
    Upgraded {
        peer: PeerId,
        after: Option<Duration>,
    },
    /// The upgrade failed: the peers stay on the relayed connection.
    Failed { peer: PeerId, error: String },
}

enum Attempt {
    InFlight(Instant),
    Failed(Instant),
}

struct Relayed {
    peer: PeerId,
    remote: Multiaddr,
    dialed: bool,
}

pub struct Upgrader {
    local: PeerId,
    pending: SharedPending,
    /// The upgrade dials this behaviour started, until they succeed or fail.
    our_dials: HashSet<ConnectionId>,
    /// Connections per peer, of any kind.
    connected: HashMap<PeerId, usize>,
    relayed: HashMap<ConnectionId, Relayed>,
    /// Direct connections: the peer, and whether this side dialled it.
    webrtc: HashMap<ConnectionId, (PeerId, bool)>,
    supported: HashSet<PeerId>,
    attempts: HashMap<PeerId, Attempt>,
    retire: Vec<(Instant, PeerId, ConnectionId)>,
    timer: Option<futures_timer::Delay>,
    events: VecDeque<ToSwarm<Event, Infallible>>,
}

impl Upgrader {
    /// `local`: this peer's id (ties between two browsers that both dialled are broken by it).
    pub fn new(local: PeerId) -> Self {
        Self {
            local,
            pending: SharedPending::default(),
            connected: HashMap::new(),
            our_dials: HashSet::new(),
            relayed: HashMap::new(),
            webrtc: HashMap::new(),
            supported: HashSet::new(),
            attempts: HashMap::new(),
            retire: Vec::new(),
            timer: None,
            events: VecDeque::new(),
        }
    }

    /// For the transport (wasm32 only) to hand its dials' circuits over.
    #[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]
    pub(crate) fn pending_circuits(&self) -> SharedPending {
        Arc::clone(&self.pending)
    }

    /// The peer said (identify) it speaks the signalling protocol.
    pub fn remote_supports_webrtc(&mut self, peer: PeerId) {
        self.supported.insert(peer);
        self.maybe_upgrade(peer);
    }

    /// Whether a direct connection to `peer` is up.
    pub fn is_direct(&self, peer: &PeerId) -> bool {
        self.webrtc.values().any(|(p, _)| p == peer)
    }

    fn maybe_upgrade(&mut self, peer: PeerId) {
        if !self.supported.contains(&peer) || self.is_direct(&peer) {
            return;
        }
        let now = Instant::now();
        match self.attempts.get(&peer) {
            Some(Attempt::InFlight(_)) => return,
            Some(Attempt::Failed(at)) if now.duration_since(*at) < RETRY_AFTER => return,
            _ => {}
        }
        // Both dialled a relayed connection: only the smaller id upgrades (the other one's
        // upgrade would make a second direct connection).
        let they_dialed_too = self.relayed.values().any(|r| r.peer == peer && !r.dialed);
        if they_dialed_too && self.local > peer {
            return;
        }
        let Some(address) = self
            .relayed
            .values()
            .find(|r| r.peer == peer && r.dialed)
            .and_then(|r| upgrade_address(&r.remote))
        else {
            return;
        };
        let opts = DialOpts::peer_id(peer)
            .addresses(vec![address])
            // Connected already (relayed): dial all the same.
            .condition(PeerCondition::Always)
            .build();
        self.our_dials.insert(opts.connection_id());
        self.attempts.insert(peer, Attempt::InFlight(now));
        self.events
            .push_back(ToSwarm::GenerateEvent(Event::Upgrading { peer }));
        self.events.push_back(ToSwarm::Dial { opts });
    }

    fn on_established(&mut self, peer: PeerId, id: ConnectionId, endpoint: &ConnectedPoint) {
        let remote = endpoint.get_remote_address();
        let dialed = endpoint.is_dialer();
        match Path::of_endpoint(endpoint) {
            Path::Relayed => {
                self.relayed.insert(
                    id,
                    Relayed {
                        peer,
                        remote: remote.clone(),
                        dialed,
                    },
                );
                self.maybe_upgrade(peer);
            }
            Path::Webrtc => {
                // Two direct connections (both upgraded at once): both sides keep the one the
                // smaller id dialled and close the other.
                let keep_dialed_by_us = self.local < peer;
                let duplicate = self
                    .webrtc
                    .iter()
                    .find(|(_, (p, _))| *p == peer)
                    .map(|(c, (_, d))| (*c, *d));
                if let Some((other, other_dialed)) = duplicate {
                    let close = if other_dialed == keep_dialed_by_us {
                        id
                    } else {
                        other
                    };
                    self.events.push_back(ToSwarm::CloseConnection {
                        peer_id: peer,
                        connection: CloseConnection::One(close),
                    });
                }
                self.webrtc.insert(id, (peer, dialed));
                let after = match self.attempts.remove(&peer) {
                    Some(Attempt::InFlight(at)) => Some(at.elapsed()),
                    _ => None,
                };
                self.events
                    .push_back(ToSwarm::GenerateEvent(Event::Upgraded { peer, after }));
                let relayed: Vec<ConnectionId> = self
                    .relayed
                    .iter()
                    .filter(|(_, r)| r.peer == peer)
                    .map(|(id, _)| *id)
                    .collect();
                let at = if dialed {
                    Instant::now()
                } else {
                    Instant::now() + RETIRE_AFTER
                };
                for connection in relayed {
                    self.retire.push((at, peer, connection));
                }
                self.timer = None;
            }
            Path::Direct => {}
        }
    }

    /// A failed dial: ours (by its id), or any that tried a `/webrtc` address (one the page
    /// started through the transport).
    fn on_dial_failure(&mut self, peer: PeerId, id: ConnectionId, error: &DialError) {
        let ours = self.our_dials.remove(&id);
        let webrtc_error = match error {
            DialError::Transport(errors) => errors
                .iter()
                .find(|(addr, _)| Path::of(addr) == Path::Webrtc)
                .map(|(_, e)| match e {
                    // Its Display says nothing of the cause.
                    TransportError::Other(e) => e.to_string(),
                    e => e.to_string(),
                }),
            _ => None,
        };
        let error = match (ours, webrtc_error) {
            (_, Some(e)) => e,
            (true, None) => error.to_string(),
            (false, None) => return,
        };
        self.attempts.insert(peer, Attempt::Failed(Instant::now()));
        self.events
            .push_back(ToSwarm::GenerateEvent(Event::Failed { peer, error }));
    }
}

impl NetworkBehaviour for Upgrader {
    type ConnectionHandler = dummy::ConnectionHandler;
    type ToSwarm = Event;

    fn handle_established_inbound_connection(
        &mut self,
        _: ConnectionId,
        _: PeerId,
        _: &Multiaddr,
        _: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(dummy::ConnectionHandler)
    }

    fn handle_established_outbound_connection(
        &mut self,
        _: ConnectionId,
        _: PeerId,
        _: &Multiaddr,
        _: Endpoint,
        _: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(dummy::ConnectionHandler)
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        match event {
            FromSwarm::ConnectionEstablished(e) => {
                self.our_dials.remove(&e.connection_id);
                *self.connected.entry(e.peer_id).or_default() += 1;
                self.on_established(e.peer_id, e.connection_id, e.endpoint);
            }
            FromSwarm::ConnectionClosed(ConnectionClosed {
                connection_id,
                peer_id,
                remaining_established,
                ..
            }) => {
                if remaining_established == 0 {
                    self.connected.remove(&peer_id);
                }
                self.relayed.remove(&connection_id);
                self.webrtc.remove(&connection_id);
                self.retire.retain(|(_, _, c)| *c != connection_id);
            }
            FromSwarm::DialFailure(DialFailure {
                peer_id: Some(peer),
                error,
                connection_id,
            }) => self.on_dial_failure(peer, connection_id, error),
            _ => {}
        }
    }

    fn on_connection_handler_event(
        &mut self,
        _: PeerId,
        _: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        libp2p::core::util::unreachable(event);
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<ToSwarm<Event, THandlerInEvent<Self>>> {
        let now = Instant::now();
        if let Some(i) = self.retire.iter().position(|(at, _, _)| *at <= now) {
            let (_, peer_id, connection) = self.retire.swap_remove(i);
            return Poll::Ready(ToSwarm::CloseConnection {
                peer_id,
                connection: CloseConnection::One(connection),
            });
        }
        if let Ok(mut pending) = self.pending.lock() {
            for (peer, circuit) in pending.circuits.drain() {
                // This dial is the upgrade: none is started when the relayed connection is up.
                self.attempts.insert(peer, Attempt::InFlight(now));
                if !self.connected.contains_key(&peer) {
                    // The relayed connection first: the signalling stream rides on it.
                    self.events.push_back(ToSwarm::Dial {
                        opts: DialOpts::peer_id(peer)
                            .addresses(vec![circuit])
                            .condition(PeerCondition::Always)
                            .build(),
                    });
                }
            }
            pending.waker = Some(cx.waker().clone());
        }
        if let Some(event) = self.events.pop_front() {
            return Poll::Ready(event);
        }
        if let Some(next) = self.retire.iter().map(|(at, _, _)| *at).min() {
            let timer = self
                .timer
                .get_or_insert_with(|| futures_timer::Delay::new(next.duration_since(now)));
            if timer.poll_unpin(cx).is_ready() {
                self.timer = None;
                cx.waker().wake_by_ref();
            }
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use libp2p::core::transport::PortUse;
    use libp2p::multiaddr::Protocol;
    use libp2p::swarm::behaviour::ConnectionEstablished;

    use super::*;

    fn relay_addr() -> Multiaddr {
        format!("/ip4/127.0.0.1/tcp/4002/ws/p2p/{}", PeerId::random())
            .parse()
            .expect("addr")
    }

    fn dialed(addr: Multiaddr) -> ConnectedPoint {
        ConnectedPoint::Dialer {
            address: addr,
            role_override: Endpoint::Dialer,
            port_use: PortUse::Reuse,
        }
    }

    fn circuit_out(relay: &Multiaddr, peer: PeerId) -> ConnectedPoint {
        dialed(
            relay
                .clone()
                .with(Protocol::P2pCircuit)
                .with(Protocol::P2p(peer)),
        )
    }

    fn circuit_in(relay: &Multiaddr, peer: PeerId) -> ConnectedPoint {
        ConnectedPoint::Listener {
            local_addr: relay.clone().with(Protocol::P2pCircuit),
            send_back_addr: Multiaddr::empty().with(Protocol::P2p(peer)),
        }
    }

    fn webrtc_out(relay: &Multiaddr, peer: PeerId) -> ConnectedPoint {
        dialed(
            relay
                .clone()
                .with(Protocol::P2pCircuit)
                .with(Protocol::WebRTC)
                .with(Protocol::P2p(peer)),
        )
    }

    fn webrtc_in(peer: PeerId) -> ConnectedPoint {
        ConnectedPoint::Listener {
            local_addr: Multiaddr::empty().with(Protocol::WebRTC),
            send_back_addr: Multiaddr::empty()
                .with(Protocol::WebRTC)
                .with(Protocol::P2p(peer)),
        }
    }

    fn establish(u: &mut Upgrader, peer: PeerId, endpoint: &ConnectedPoint) -> ConnectionId {
        let connection_id = ConnectionId::new_unchecked(rand_id());
        u.on_swarm_event(FromSwarm::ConnectionEstablished(ConnectionEstablished {
            peer_id: peer,
            connection_id,
            endpoint,
            failed_addresses: &[],
            other_established: 0,
        }));
        connection_id
    }

    fn rand_id() -> usize {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static NEXT: AtomicUsize = AtomicUsize::new(1_000);
        NEXT.fetch_add(1, Ordering::Relaxed)
    }

    /// Everything the behaviour has to say now.
    fn drain(u: &mut Upgrader) -> Vec<ToSwarm<Event, Infallible>> {
        let mut cx = Context::from_waker(futures::task::noop_waker_ref());
        let mut out = Vec::new();
        while let Poll::Ready(event) = u.poll(&mut cx) {
            out.push(event);
        }
        out
    }

    fn dials(events: &[ToSwarm<Event, Infallible>]) -> Vec<String> {
        events
            .iter()
            .filter_map(|e| match e {
                ToSwarm::Dial { opts } => Some(format!("{opts:?}")),
                _ => None,
            })
            .collect()
    }

    fn closed(events: &[ToSwarm<Event, Infallible>]) -> Vec<ConnectionId> {
        events
            .iter()
            .filter_map(|e| match e {
                ToSwarm::CloseConnection {
                    connection: CloseConnection::One(c),
                    ..
                } => Some(*c),
                _ => None,
            })
            .collect()
    }

    /// Two ids ordered as asked.
    fn ordered_pair() -> (PeerId, PeerId) {
        let (a, b) = (PeerId::random(), PeerId::random());
        if a < b { (a, b) } else { (b, a) }
    }

    #[test]
    fn the_dialer_of_a_relayed_connection_upgrades_once_the_peer_speaks_signalling() {
        let (me, peer) = (PeerId::random(), PeerId::random());
        let relay = relay_addr();
        let mut u = Upgrader::new(me);
        let relayed = establish(&mut u, peer, &circuit_out(&relay, peer));
        assert!(dials(&drain(&mut u)).is_empty(), "not before identify");
        u.remote_supports_webrtc(peer);
        let events = drain(&mut u);
        let dial = dials(&events);
        assert_eq!(dial.len(), 1, "{events:?}");
        assert!(dial[0].contains("/p2p-circuit/webrtc/p2p/"), "{dial:?}");
        assert!(matches!(
            events[0],
            ToSwarm::GenerateEvent(Event::Upgrading { .. })
        ));
        u.remote_supports_webrtc(peer);
        assert!(dials(&drain(&mut u)).is_empty(), "one upgrade at a time");
        // Up: reported with its duration, and the relayed connection is closed at once.
        establish(&mut u, peer, &webrtc_out(&relay, peer));
        let events = drain(&mut u);
        assert!(events.iter().any(|e| matches!(
            e,
            ToSwarm::GenerateEvent(Event::Upgraded { after: Some(_), .. })
        )));
        assert_eq!(closed(&events), [relayed]);
        assert!(u.is_direct(&peer));
    }

    #[test]
    fn the_side_that_accepted_the_relayed_connection_waits_to_be_dialled() {
        let (me, peer) = (PeerId::random(), PeerId::random());
        let relay = relay_addr();
        let mut u = Upgrader::new(me);
        let relayed = establish(&mut u, peer, &circuit_in(&relay, peer));
        u.remote_supports_webrtc(peer);
        assert!(dials(&drain(&mut u)).is_empty());
        establish(&mut u, peer, &webrtc_in(peer));
        let events = drain(&mut u);
        assert!(events.iter().any(|e| matches!(
            e,
            ToSwarm::GenerateEvent(Event::Upgraded { after: None, .. })
        )));
        assert!(
            closed(&events).is_empty(),
            "the listener leaves the relayed connection a while (RETIRE_AFTER)"
        );
        assert!(u.retire.iter().any(|(_, _, c)| *c == relayed));
    }

    #[test]
    fn when_both_dialled_only_the_smaller_id_upgrades() {
        let (small, big) = ordered_pair();
        let relay = relay_addr();
        for (me, peer, upgrades) in [(small, big, true), (big, small, false)] {
            let mut u = Upgrader::new(me);
            establish(&mut u, peer, &circuit_in(&relay, peer));
            establish(&mut u, peer, &circuit_out(&relay, peer));
            u.remote_supports_webrtc(peer);
            assert_eq!(!dials(&drain(&mut u)).is_empty(), upgrades, "me {me}");
        }
    }

    #[test]
    fn of_two_direct_connections_both_sides_keep_the_one_the_smaller_id_dialled() {
        let (small, big) = ordered_pair();
        let relay = relay_addr();
        // As `small` sees it: its own dial is kept, the accepted one closed; and `big` agrees.
        let mut u = Upgrader::new(small);
        let mine = establish(&mut u, big, &webrtc_out(&relay, big));
        drain(&mut u);
        let theirs = establish(&mut u, big, &webrtc_in(big));
        assert_eq!(closed(&drain(&mut u)), [theirs]);
        let mut u = Upgrader::new(big);
        let theirs = establish(&mut u, small, &webrtc_in(small));
        drain(&mut u);
        let mine_too = establish(&mut u, small, &webrtc_out(&relay, small));
        assert_eq!(closed(&drain(&mut u)), [mine_too]);
        let _ = (mine, theirs);
    }

    #[test]
    fn a_failed_upgrade_is_reported_and_not_retried_at_once() {
        let (me, peer) = (PeerId::random(), PeerId::random());
        let relay = relay_addr();
        let mut u = Upgrader::new(me);
        establish(&mut u, peer, &circuit_out(&relay, peer));
        u.remote_supports_webrtc(peer);
        let events = drain(&mut u);
        let id = events
            .iter()
            .find_map(|e| match e {
                ToSwarm::Dial { opts } => Some(opts.connection_id()),
                _ => None,
            })
            .expect("a dial");
        u.on_swarm_event(FromSwarm::DialFailure(DialFailure {
            peer_id: Some(peer),
            error: &DialError::Aborted,
            connection_id: id,
        }));
        let events = drain(&mut u);
        assert!(
            events
                .iter()
                .any(|e| matches!(e, ToSwarm::GenerateEvent(Event::Failed { .. }))),
            "{events:?}"
        );
        u.remote_supports_webrtc(peer);
        assert!(
            dials(&drain(&mut u)).is_empty(),
            "retried only after RETRY_AFTER"
        );
        assert!(!u.is_direct(&peer));
        // Other dials failing (say, a relay circuit) are none of its business.
        let other = PeerId::random();
        u.on_swarm_event(FromSwarm::DialFailure(DialFailure {
            peer_id: Some(other),
            error: &DialError::Aborted,
            connection_id: ConnectionId::new_unchecked(rand_id()),
        }));
        assert!(drain(&mut u).is_empty());
    }

    #[test]
    fn a_webrtc_dial_without_a_connection_has_the_circuit_dialled_first() {
        let (me, peer) = (PeerId::random(), PeerId::random());
        let relay = relay_addr();
        let mut u = Upgrader::new(me);
        let circuit = relay.with(Protocol::P2pCircuit).with(Protocol::P2p(peer));
        u.pending_circuits()
            .lock()
            .expect("lock")
            .circuits
            .insert(peer, circuit.clone());
        let dial = dials(&drain(&mut u));
        assert_eq!(dial.len(), 1);
        assert!(dial[0].contains(&circuit.to_string()), "{dial:?}");
        // And no second upgrade once that relayed connection is up.
        establish(&mut u, peer, &dialed(circuit));
        u.remote_supports_webrtc(peer);
        assert!(dials(&drain(&mut u)).is_empty());
    }
}
