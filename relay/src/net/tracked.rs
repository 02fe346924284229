//! `relay::Behaviour` with exact reservation accounting.
//!
//! libp2p-relay 0.22 keeps its reservations per connection, but its events name no connection
//! and it reports `ReservationClosed` for *every* closed connection, reserved or not. So
//! counting reservations from its events goes wrong as soon as a peer has a connection without
//! a reservation (a refused one, a dial-back, a reconnect overlap). This wrapper delegates
//! everything to the relay and, after each call that can produce events, drains them at once,
//! so each event is known to come from the connection that call was about. It then keeps the
//! set of (peer, connection) holding a reservation: added on accept, removed when the
//! reservation times out or its connection closes.

use std::collections::{HashSet, VecDeque};
use std::task::{Context, Poll, Waker};

use libp2p::PeerId;
use libp2p::core::transport::PortUse;
use libp2p::core::{Endpoint, Multiaddr};
use libp2p::relay;
use libp2p::swarm::{
    ConnectionDenied, ConnectionId, FromSwarm, NetworkBehaviour, THandler, THandlerInEvent,
    THandlerOutEvent, ToSwarm,
};

#[derive(Debug)]
pub enum Event {
    /// A relay event, with the connection it happened on when known. (Its
    /// `ReservationClosed` means "a connection closed"; see `ReservationEnded`.)
    Relay {
        event: relay::Event,
        connection: Option<ConnectionId>,
    },
    /// The connection holding `peer`'s reservation closed, ending the reservation.
    ReservationEnded {
        peer: PeerId,
        connection: ConnectionId,
    },
}

pub struct TrackedRelay {
    inner: relay::Behaviour,
    queue: VecDeque<ToSwarm<Event, THandlerInEvent<relay::Behaviour>>>,
    reserved: HashSet<(PeerId, ConnectionId)>,
}

impl TrackedRelay {
    pub fn new(inner: relay::Behaviour) -> Self {
        Self {
            inner,
            queue: VecDeque::new(),
            reserved: HashSet::new(),
        }
    }

    /// Reservations held now.
    pub fn reservations(&self) -> usize {
        self.reserved.len()
    }

    /// Moves whatever the relay queued in the call just made into our queue, tagged with the
    /// connection that call was about. The relay queues actions synchronously and we drain
    /// after every call, so its queue holds nothing older.
    fn drain(&mut self, connection: Option<(PeerId, ConnectionId)>) {
        let mut cx = Context::from_waker(Waker::noop());
        while let Poll::Ready(action) = self.inner.poll(&mut cx) {
            let action = action.map_out(|event| {
                if let Some(key) = connection {
                    match &event {
                        relay::Event::ReservationReqAccepted { .. } => {
                            self.reserved.insert(key);
                        }
                        relay::Event::ReservationTimedOut { .. } => {
                            self.reserved.remove(&key);
                        }
                        _ => {}
                    }
                }
                Event::Relay {
                    event,
                    connection: connection.map(|(_, c)| c),
                }
            });
            self.queue.push_back(action);
        }
    }
}

impl NetworkBehaviour for TrackedRelay {
    type ConnectionHandler = <relay::Behaviour as NetworkBehaviour>::ConnectionHandler;
    type ToSwarm = Event;

    fn handle_pending_inbound_connection(
        &mut self,
        connection_id: ConnectionId,
        local_addr: &Multiaddr,
        remote_addr: &Multiaddr,
    ) -> Result<(), ConnectionDenied> {
        self.inner
            .handle_pending_inbound_connection(connection_id, local_addr, remote_addr)
    }

    fn handle_established_inbound_connection(
        &mut self,
        connection_id: ConnectionId,
        peer: PeerId,
        local_addr: &Multiaddr,
        remote_addr: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.inner.handle_established_inbound_connection(
            connection_id,
            peer,
            local_addr,
            remote_addr,
        )
    }

    fn handle_pending_outbound_connection(
        &mut self,
        connection_id: ConnectionId,
        maybe_peer: Option<PeerId>,
        addresses: &[Multiaddr],
        effective_role: Endpoint,
    ) -> Result<Vec<Multiaddr>, ConnectionDenied> {
        self.inner.handle_pending_outbound_connection(
            connection_id,
            maybe_peer,
            addresses,
            effective_role,
        )
    }

    fn handle_established_outbound_connection(
        &mut self,
        connection_id: ConnectionId,
        peer: PeerId,
        addr: &Multiaddr,
        role_override: Endpoint,
        port_use: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.inner.handle_established_outbound_connection(
            connection_id,
            peer,
            addr,
            role_override,
            port_use,
        )
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        let closed = match &event {
            FromSwarm::ConnectionClosed(c) => Some((c.peer_id, c.connection_id)),
            _ => None,
        };
        self.inner.on_swarm_event(event);
        self.drain(None);
        if let Some((peer, connection)) = closed
            && self.reserved.remove(&(peer, connection))
        {
            self.queue
                .push_back(ToSwarm::GenerateEvent(Event::ReservationEnded {
                    peer,
                    connection,
                }));
        }
    }

    fn on_connection_handler_event(
        &mut self,
        peer_id: PeerId,
        connection_id: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        self.inner
            .on_connection_handler_event(peer_id, connection_id, event);
        self.drain(Some((peer_id, connection_id)));
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<ToSwarm<Event, THandlerInEvent<Self>>> {
        if let Some(action) = self.queue.pop_front() {
            return Poll::Ready(action);
        }
        // Polled with the swarm's waker, so the relay can wake the swarm itself.
        self.inner.poll(cx).map(|action| {
            action.map_out(|event| Event::Relay {
                event,
                connection: None,
            })
        })
    }
}
