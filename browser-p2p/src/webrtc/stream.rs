//! One libp2p stream on one `RTCDataChannel`: [`proto::Frame`]s in and out, the close handshake
//! of [`StreamState`]. Data channel events arrive through JS callbacks, which fill a shared
//! buffer and wake whoever polls the stream.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use futures::{AsyncRead, AsyncWrite, FutureExt};
use js_sys::{ArrayBuffer, Uint8Array};
use send_wrapper::SendWrapper;
use wasm_bindgen::prelude::*;
use web_sys::{Event, MessageEvent, RtcDataChannel, RtcDataChannelState, RtcDataChannelType};

use super::proto::{self, Flag, Frame, FrameDecoder};
use super::stream_state::{ReadHalf, StreamState, WriteHalf};

/// Writing pauses while the channel holds this much unsent data (js-libp2p allows 2 MiB; less
/// keeps memory small and the round trip of a full buffer short).
const MAX_BUFFERED: u32 = 1024 * 1024;
/// Writing resumes when the unsent data drops below this (the `bufferedamountlow` event).
const LOW_BUFFERED: u32 = 256 * 1024;
/// How long closing waits for the FIN_ACK (js-libp2p waits 10 s).
const FIN_ACK_TIMEOUT: Duration = Duration::from_secs(10);

struct Shared {
    channel: RtcDataChannel,
    state: StreamState,
    decoder: FrameDecoder,
    received: VecDeque<u8>,
    open: bool,
    closed: bool,
    /// A frame the other side sent that this stream cannot read: the stream is reset.
    broken: Option<String>,
    read_waker: Option<Waker>,
    write_waker: Option<Waker>,
}

impl Shared {
    fn wake(&mut self) {
        if let Some(w) = self.read_waker.take() {
            w.wake();
        }
        if let Some(w) = self.write_waker.take() {
            w.wake();
        }
    }

    fn send(&self, bytes: &[u8]) -> Result<(), JsValue> {
        self.channel.send_with_u8_array(bytes)
    }

    fn send_flag(&self, flag: Flag) {
        if self.open && !self.closed {
            let _ = self.send(&Frame::flag(flag));
        }
    }

    /// Closes the channel once neither half has anything left to do.
    fn close_if_done(&mut self) {
        if self.state.is_done() && !self.closed {
            self.closed = true;
            self.channel.close();
        }
    }

    fn on_bytes(&mut self, bytes: &[u8]) {
        self.decoder.push(bytes);
        loop {
            let frame = match self.decoder.next_frame() {
                Ok(Some(body)) => Frame::decode(&body),
                Ok(None) => break,
                Err(e) => Err(e),
            };
            match frame {
                Ok(frame) => {
                    let incoming = self.state.on_frame(frame.flag, frame.message);
                    if let Some(data) = incoming.deliver {
                        self.received.extend(data);
                    }
                    if let Some(reply) = incoming.reply {
                        self.send_flag(reply);
                    }
                }
                Err(e) => {
                    self.broken = Some(e.to_string());
                    self.send_flag(Flag::Reset);
                    self.state.on_frame(Some(Flag::Reset), None);
                    break;
                }
            }
        }
        self.close_if_done();
        self.wake();
    }
}

struct Inner {
    shared: Rc<RefCell<Shared>>,
    fin_ack_timer: Option<futures_timer::Delay>,
    _on_message: Closure<dyn FnMut(MessageEvent)>,
    _on_open: Closure<dyn FnMut(Event)>,
    _on_close: Closure<dyn FnMut(Event)>,
    _on_low: Closure<dyn FnMut(Event)>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        let mut shared = self.shared.borrow_mut();
        if let Some(flag) = shared.state.on_drop() {
            shared.send_flag(flag);
        }
        let channel = shared.channel.clone();
        channel.set_onmessage(None);
        channel.set_onopen(None);
        channel.set_onclose(None);
        channel.set_onerror(None);
        channel.set_onbufferedamountlow(None);
        if !shared.closed {
            shared.closed = true;
            channel.close();
        }
    }
}

/// A libp2p stream over a data channel (`Send` only in name: the browser has one thread).
pub struct Stream {
    inner: SendWrapper<Inner>,
}

impl Stream {
    /// Takes over `channel` at once, so that no message arriving before the first poll is lost.
    pub fn new(channel: RtcDataChannel) -> Self {
        channel.set_binary_type(RtcDataChannelType::Arraybuffer);
        channel.set_buffered_amount_low_threshold(LOW_BUFFERED);
        let shared = Rc::new(RefCell::new(Shared {
            channel: channel.clone(),
            state: StreamState::new(),
            decoder: FrameDecoder::new(proto::MAX_DATA_FRAME),
            received: VecDeque::new(),
            open: channel.ready_state() == RtcDataChannelState::Open,
            closed: matches!(
                channel.ready_state(),
                RtcDataChannelState::Closing | RtcDataChannelState::Closed
            ),
            broken: None,
            read_waker: None,
            write_waker: None,
        }));
        let on_message = {
            let shared = shared.clone();
            Closure::<dyn FnMut(MessageEvent)>::new(move |event: MessageEvent| {
                if let Ok(buffer) = event.data().dyn_into::<ArrayBuffer>() {
                    let bytes = Uint8Array::new(&buffer).to_vec();
                    shared.borrow_mut().on_bytes(&bytes);
                }
            })
        };
        let on_open = {
            let shared = shared.clone();
            Closure::<dyn FnMut(Event)>::new(move |_: Event| {
                let mut shared = shared.borrow_mut();
                shared.open = true;
                shared.wake();
            })
        };
        let on_close = {
            let shared = shared.clone();
            Closure::<dyn FnMut(Event)>::new(move |_: Event| {
                let mut shared = shared.borrow_mut();
                shared.closed = true;
                shared.state.on_channel_closed();
                shared.wake();
            })
        };
        let on_low = {
            let shared = shared.clone();
            Closure::<dyn FnMut(Event)>::new(move |_: Event| {
                if let Some(w) = shared.borrow_mut().write_waker.take() {
                    w.wake();
                }
            })
        };
        channel.set_onmessage(Some(on_message.as_ref().unchecked_ref()));
        channel.set_onopen(Some(on_open.as_ref().unchecked_ref()));
        channel.set_onclose(Some(on_close.as_ref().unchecked_ref()));
        channel.set_onerror(Some(on_close.as_ref().unchecked_ref()));
        channel.set_onbufferedamountlow(Some(on_low.as_ref().unchecked_ref()));
        Self {
            inner: SendWrapper::new(Inner {
                shared,
                fin_ack_timer: None,
                _on_message: on_message,
                _on_open: on_open,
                _on_close: on_close,
                _on_low: on_low,
            }),
        }
    }
}

fn reset_error(shared: &Shared) -> io::Error {
    match &shared.broken {
        Some(e) => io::Error::new(io::ErrorKind::InvalidData, e.clone()),
        None => io::Error::new(io::ErrorKind::ConnectionReset, "stream reset"),
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let mut shared = self.inner.shared.borrow_mut();
        if !shared.received.is_empty() {
            let (front, _) = shared.received.as_slices();
            let n = front.len().min(buf.len());
            buf[..n].copy_from_slice(&front[..n]);
            shared.received.drain(..n);
            return Poll::Ready(Ok(n));
        }
        match shared.state.read {
            ReadHalf::Open if !shared.closed => {
                shared.read_waker = Some(cx.waker().clone());
                Poll::Pending
            }
            ReadHalf::Reset => Poll::Ready(Err(reset_error(&shared))),
            _ => Poll::Ready(Ok(0)),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let mut shared = self.inner.shared.borrow_mut();
        if shared.state.write == WriteHalf::Reset {
            return Poll::Ready(Err(reset_error(&shared)));
        }
        if !shared.state.can_write() || shared.closed {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        if !shared.open || shared.channel.buffered_amount() > MAX_BUFFERED {
            shared.write_waker = Some(cx.waker().clone());
            return Poll::Pending;
        }
        let n = buf.len().min(proto::MAX_PAYLOAD);
        match shared.send(&Frame::data(&buf[..n])) {
            Ok(()) => Poll::Ready(Ok(n)),
            Err(e) => Poll::Ready(Err(io::Error::other(format!("data channel send: {e:?}")))),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Everything written is handed to the channel already; SCTP delivers it in order.
        Poll::Ready(Ok(()))
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let inner = &mut *self.get_mut().inner;
        let mut shared = inner.shared.borrow_mut();
        if shared.state.write == WriteHalf::Open {
            if !shared.open && !shared.closed {
                shared.write_waker = Some(cx.waker().clone());
                return Poll::Pending;
            }
            if let Some(flag) = shared.state.close_write() {
                shared.send_flag(flag);
                inner.fin_ack_timer = Some(futures_timer::Delay::new(FIN_ACK_TIMEOUT));
            }
        }
        if shared.closed {
            shared.state.on_channel_closed();
        }
        if !shared.state.write_closed() {
            let timed_out = inner
                .fin_ack_timer
                .as_mut()
                .is_some_and(|t| t.poll_unpin(cx).is_ready());
            if !timed_out {
                shared.write_waker = Some(cx.waker().clone());
                return Poll::Pending;
            }
            shared.state.on_fin_ack_timeout();
        }
        inner.fin_ack_timer = None;
        shared.close_if_done();
        Poll::Ready(Ok(()))
    }
}
