//! The [`libp2p::Transport`] for `/webrtc`: dials `<relay>/p2p-circuit/webrtc/p2p/<peer>` (and
//! `/webrtc/p2p/<peer>` over a connection that exists), and listens on `/webrtc`, that is for
//! signalling streams on any relayed connection.

use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use libp2p::core::transport::{DialOpts, ListenerId, TransportError, TransportEvent};
use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId};
use send_wrapper::SendWrapper;

use super::connection::{self, Connection, Error};
use super::upgrader::SharedPending;
use super::{Config, SIGNALING_PROTOCOL, parse_dial_address};

pub struct Transport {
    control: libp2p_stream::Control,
    config: Config,
    pending: SharedPending,
    listener: Option<(ListenerId, libp2p_stream::IncomingStreams)>,
    closed_listener: Option<ListenerId>,
    waker: Option<Waker>,
}

impl Transport {
    /// `control` is the libp2p-stream behaviour's, so signalling streams ride on the swarm's
    /// connections; `upgrader` is the behaviour paired with this transport.
    pub fn new(
        control: libp2p_stream::Control,
        config: Config,
        upgrader: &super::Upgrader,
    ) -> Self {
        Self {
            control,
            config,
            pending: upgrader.pending_circuits(),
            listener: None,
            closed_listener: None,
            waker: None,
        }
    }
}

type Output = (PeerId, Connection);

fn boxed(
    future: impl std::future::Future<Output = Result<Output, Error>> + 'static,
) -> BoxFuture<'static, Result<Output, Error>> {
    SendWrapper::new(future.boxed_local()).boxed()
}

impl libp2p::Transport for Transport {
    type Output = Output;
    type Error = Error;
    type ListenerUpgrade = BoxFuture<'static, Result<Output, Error>>;
    type Dial = BoxFuture<'static, Result<Output, Error>>;

    fn listen_on(
        &mut self,
        id: ListenerId,
        addr: Multiaddr,
    ) -> Result<(), TransportError<Self::Error>> {
        if addr.iter().collect::<Vec<_>>() != [Protocol::WebRTC] {
            return Err(TransportError::MultiaddrNotSupported(addr));
        }
        if self.listener.is_some() {
            return Err(TransportError::Other(Error::AlreadyListening));
        }
        let incoming = self
            .control
            .accept(SIGNALING_PROTOCOL)
            .map_err(|_| TransportError::Other(Error::AlreadyListening))?;
        self.listener = Some((id, incoming));
        if let Some(w) = self.waker.take() {
            w.wake();
        }
        Ok(())
    }

    fn remove_listener(&mut self, id: ListenerId) -> bool {
        if self.listener.as_ref().is_some_and(|(l, _)| *l == id) {
            self.listener = None;
            self.closed_listener = Some(id);
            if let Some(w) = self.waker.take() {
                w.wake();
            }
            return true;
        }
        false
    }

    fn dial(
        &mut self,
        addr: Multiaddr,
        opts: DialOpts,
    ) -> Result<Self::Dial, TransportError<Self::Error>> {
        let Some(target) = parse_dial_address(&addr) else {
            return Err(TransportError::MultiaddrNotSupported(addr));
        };
        if opts.role.is_listener() {
            // Hole punching (DCUtR) has no meaning here: signalling does that job.
            return Err(TransportError::MultiaddrNotSupported(addr));
        }
        if let Some(circuit) = target.circuit
            && let Ok(mut pending) = self.pending.lock()
        {
            pending.circuits.insert(target.peer, circuit);
            if let Some(w) = pending.waker.take() {
                w.wake();
            }
        }
        let control = self.control.clone();
        let config = self.config.clone();
        let peer = target.peer;
        Ok(boxed(async move {
            connection::dial(control, peer, config)
                .await
                .map(|c| (peer, c))
        }))
    }

    fn poll(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<TransportEvent<Self::ListenerUpgrade, Self::Error>> {
        if let Some(listener_id) = self.closed_listener.take() {
            return Poll::Ready(TransportEvent::ListenerClosed {
                listener_id,
                reason: Ok(()),
            });
        }
        if let Some((listener_id, incoming)) = self.listener.as_mut()
            && let Poll::Ready(Some((peer, stream))) = incoming.poll_next_unpin(cx)
        {
            let listener_id = *listener_id;
            let config = self.config.clone();
            let upgrade =
                boxed(async move { connection::answer(stream, config).await.map(|c| (peer, c)) });
            return Poll::Ready(TransportEvent::Incoming {
                listener_id,
                upgrade,
                local_addr: Multiaddr::empty().with(Protocol::WebRTC),
                send_back_addr: Multiaddr::empty()
                    .with(Protocol::WebRTC)
                    .with(Protocol::P2p(peer)),
            });
        }
        self.waker = Some(cx.waker().clone());
        Poll::Pending
    }
}
