//! The `RTCPeerConnection`: set up by the signalling exchange (dialer: [`dial`], listener:
//! [`answer`]), then a [`StreamMuxer`] whose substreams are data channels.

use std::cell::RefCell;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use futures::channel::mpsc;
use futures::io::{ReadHalf, WriteHalf};
use futures::stream::LocalBoxStream;
use futures::{AsyncReadExt, AsyncWriteExt, FutureExt, StreamExt};
use js_sys::{JSON, Reflect};
use libp2p::core::muxing::{StreamMuxer, StreamMuxerEvent};
use send_wrapper::SendWrapper;
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::{JsFuture, spawn_local};
use web_sys::{
    Event, RtcConfiguration, RtcDataChannel, RtcDataChannelEvent, RtcDataChannelInit,
    RtcIceCandidateInit, RtcPeerConnection, RtcPeerConnectionIceEvent, RtcPeerConnectionState,
    RtcSessionDescriptionInit,
};

use super::proto::{self, FrameDecoder, Signal, SignalType};
use super::stream::Stream;
use super::{Config, SIGNALING_PROTOCOL};

/// How long ICE may take once the descriptions are exchanged; after it the peers stay on the
/// relayed connection. Below the swarm's 10 s transport timeout, so the error says why.
const ICE_TIMEOUT: Duration = Duration::from_secs(8);
/// How long the dialer waits for the `init` channel to open after ICE connected.
const INIT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the listener keeps the signalling stream for the dialer to close it.
const SIGNALLING_LINGER: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot open the signalling stream: {0}")]
    OpenSignalling(String),
    #[error("signalling: {0}")]
    Signalling(String),
    #[error("signalling stream: {0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Js(String),
    #[error("ICE failed (connection state {0})")]
    IceFailed(String),
    #[error("ICE did not connect within {} s", ICE_TIMEOUT.as_secs())]
    IceTimeout,
    #[error("the WebRTC connection closed")]
    Closed,
    #[error("already listening on /webrtc")]
    AlreadyListening,
}

fn js(e: JsValue) -> Error {
    Error::Js(
        e.dyn_ref::<js_sys::Error>()
            .map(|e| String::from(e.message()))
            .or_else(|| e.as_string())
            .unwrap_or_else(|| format!("{e:?}")),
    )
}

/// What the JS callbacks of the peer connection tell the Rust side.
#[derive(Default)]
struct Watch {
    failed: bool,
    waker: Option<Waker>,
}

struct Inner {
    pc: RtcPeerConnection,
    watch: Rc<RefCell<Watch>>,
    inbound: mpsc::UnboundedReceiver<Stream>,
    states: mpsc::UnboundedReceiver<RtcPeerConnectionState>,
    candidates: mpsc::UnboundedReceiver<String>,
    _on_channel: Closure<dyn FnMut(RtcDataChannelEvent)>,
    _on_state: Closure<dyn FnMut(Event)>,
    _on_candidate: Closure<dyn FnMut(RtcPeerConnectionIceEvent)>,
}

impl Inner {
    fn new(config: &Config) -> Result<Self, Error> {
        let rtc_config: RtcConfiguration = JSON::parse(&config.rtc_configuration_json())
            .map_err(js)?
            .unchecked_into();
        let pc = RtcPeerConnection::new_with_configuration(&rtc_config).map_err(js)?;
        let watch = Rc::new(RefCell::new(Watch::default()));
        let (inbound_tx, inbound) = mpsc::unbounded();
        let on_channel =
            Closure::<dyn FnMut(RtcDataChannelEvent)>::new(move |event: RtcDataChannelEvent| {
                let channel = event.channel();
                // The dialer's `init` channel only makes the SDP carry a data section.
                if channel.label() != "init" {
                    let _ = inbound_tx.unbounded_send(Stream::new(channel));
                }
            });
        let (states_tx, states) = mpsc::unbounded();
        let on_state = {
            let watch = watch.clone();
            let pc = pc.clone();
            Closure::<dyn FnMut(Event)>::new(move |_: Event| {
                let state = pc.connection_state();
                if matches!(
                    state,
                    RtcPeerConnectionState::Failed | RtcPeerConnectionState::Closed
                ) {
                    let mut watch = watch.borrow_mut();
                    watch.failed = true;
                    if let Some(w) = watch.waker.take() {
                        w.wake();
                    }
                }
                let _ = states_tx.unbounded_send(state);
            })
        };
        let (candidates_tx, candidates) = mpsc::unbounded();
        let on_candidate = Closure::<dyn FnMut(RtcPeerConnectionIceEvent)>::new(
            move |event: RtcPeerConnectionIceEvent| {
                let Some(candidate) = event.candidate() else {
                    return;
                };
                if candidate.candidate().is_empty() {
                    return;
                }
                if let Ok(json) = JSON::stringify(&candidate.to_json())
                    && let Some(json) = json.as_string()
                {
                    let _ = candidates_tx.unbounded_send(json);
                }
            },
        );
        pc.set_ondatachannel(Some(on_channel.as_ref().unchecked_ref()));
        pc.set_onconnectionstatechange(Some(on_state.as_ref().unchecked_ref()));
        pc.set_onicecandidate(Some(on_candidate.as_ref().unchecked_ref()));
        Ok(Self {
            pc,
            watch,
            inbound,
            states,
            candidates,
            _on_channel: on_channel,
            _on_state: on_state,
            _on_candidate: on_candidate,
        })
    }

    fn closed(&self) -> bool {
        self.watch.borrow().failed
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.pc.set_ondatachannel(None);
        self.pc.set_onconnectionstatechange(None);
        self.pc.set_onicecandidate(None);
        self.pc.close();
    }
}

/// A direct WebRTC connection to a peer; its substreams are data channels.
pub struct Connection {
    inner: SendWrapper<Inner>,
}

impl StreamMuxer for Connection {
    type Substream = Stream;
    type Error = Error;

    fn poll_inbound(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Self::Substream, Self::Error>> {
        let inner = &mut *self.get_mut().inner;
        match inner.inbound.poll_next_unpin(cx) {
            Poll::Ready(Some(stream)) => Poll::Ready(Ok(stream)),
            Poll::Ready(None) => Poll::Ready(Err(Error::Closed)),
            Poll::Pending if inner.closed() => Poll::Ready(Err(Error::Closed)),
            Poll::Pending => Poll::Pending,
        }
    }

    fn poll_outbound(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Result<Self::Substream, Self::Error>> {
        let inner = &*self.inner;
        if inner.closed() {
            return Poll::Ready(Err(Error::Closed));
        }
        let init = RtcDataChannelInit::new();
        init.set_ordered(true);
        let channel: RtcDataChannel = inner
            .pc
            .create_data_channel_with_data_channel_dict("", &init);
        Poll::Ready(Ok(Stream::new(channel)))
    }

    fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.pc.close();
        Poll::Ready(Ok(()))
    }

    fn poll(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<StreamMuxerEvent, Self::Error>> {
        let inner = &*self.inner;
        let mut watch = inner.watch.borrow_mut();
        if watch.failed {
            return Poll::Ready(Err(Error::Closed));
        }
        watch.waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

type Signals = LocalBoxStream<'static, Result<Signal, Error>>;

/// The signalling messages arriving on `reader`, one at a time (a stream, so that waiting for
/// the next one can be raced with other events without losing bytes).
fn signals(reader: ReadHalf<libp2p::Stream>) -> Signals {
    futures::stream::unfold(
        (
            reader,
            FrameDecoder::new(proto::MAX_SIGNALLING_MESSAGE),
            false,
        ),
        |(mut reader, mut decoder, failed)| async move {
            if failed {
                return None;
            }
            let mut chunk = [0u8; 4096];
            loop {
                match decoder.next_frame() {
                    Ok(Some(body)) => {
                        let signal =
                            Signal::decode(&body).map_err(|e| Error::Signalling(e.to_string()));
                        let failed = signal.is_err();
                        return Some((signal, (reader, decoder, failed)));
                    }
                    Ok(None) => {}
                    Err(e) => {
                        return Some((
                            Err(Error::Signalling(e.to_string())),
                            (reader, decoder, true),
                        ));
                    }
                }
                match reader.read(&mut chunk).await {
                    Ok(0) => return None,
                    Ok(n) => decoder.push(&chunk[..n]),
                    Err(e) => return Some((Err(e.into()), (reader, decoder, true))),
                }
            }
        },
    )
    .boxed_local()
}

async fn send(writer: &mut WriteHalf<libp2p::Stream>, signal: Signal) -> Result<(), Error> {
    writer.write_all(&signal.encode()).await?;
    writer.flush().await?;
    Ok(())
}

async fn next_signal(signals: &mut Signals, expected: SignalType) -> Result<Signal, Error> {
    match signals.next().await {
        Some(Ok(signal)) if signal.kind == expected => Ok(signal),
        Some(Ok(signal)) => Err(Error::Signalling(format!(
            "expected {expected:?}, got {:?}",
            signal.kind
        ))),
        Some(Err(e)) => Err(e),
        None => Err(Error::Signalling(format!(
            "the stream ended before the {expected:?}"
        ))),
    }
}

fn description(kind: &str, sdp: &str) -> Result<RtcSessionDescriptionInit, Error> {
    let value = serde_json::json!({ "type": kind, "sdp": sdp }).to_string();
    Ok(JSON::parse(&value).map_err(js)?.unchecked_into())
}

fn sdp_of(description: &JsValue) -> Result<String, Error> {
    Reflect::get(description, &JsValue::from_str("sdp"))
        .map_err(js)?
        .as_string()
        .ok_or_else(|| Error::Js("a session description without sdp".into()))
}

/// Trickles candidates both ways until ICE connects (or fails, or takes too long).
async fn exchange_candidates(
    inner: &mut Inner,
    signals: &mut Signals,
    writer: &mut WriteHalf<libp2p::Stream>,
) -> Result<(), Error> {
    let mut timeout = futures_timer::Delay::new(ICE_TIMEOUT).fuse();
    let mut remote_done = false;
    loop {
        if inner.pc.connection_state() == RtcPeerConnectionState::Connected {
            return Ok(());
        }
        let mut next_signal = if remote_done {
            futures::future::pending().boxed_local()
        } else {
            signals.next().boxed_local()
        }
        .fuse();
        futures::select! {
            candidate = inner.candidates.select_next_some() => {
                // Once connected the other side stops reading: failures here do not matter.
                let _ = send(writer, Signal::new(SignalType::IceCandidate, candidate)).await;
            }
            signal = next_signal => match signal {
                Some(Ok(signal)) if signal.kind == SignalType::IceCandidate => {
                    if !signal.is_end_of_candidates() {
                        let init: RtcIceCandidateInit =
                            JSON::parse(&signal.data).map_err(js)?.unchecked_into();
                        let added = JsFuture::from(
                            inner.pc.add_ice_candidate_with_opt_rtc_ice_candidate_init(Some(&init)),
                        )
                        .await;
                        if let Err(e) = added {
                            crate::browser::info(&format!("a candidate was refused: {}", js(e)));
                        }
                    }
                }
                Some(Ok(signal)) => {
                    return Err(Error::Signalling(format!(
                        "expected an ICE candidate, got {:?}",
                        signal.kind
                    )));
                }
                Some(Err(e)) => return Err(e),
                // The other side closed the stream: it has said all; wait for ICE.
                None => remote_done = true,
            },
            state = inner.states.select_next_some() => match state {
                RtcPeerConnectionState::Connected => return Ok(()),
                RtcPeerConnectionState::Failed | RtcPeerConnectionState::Closed => {
                    return Err(Error::IceFailed(format!("{state:?}").to_lowercase()));
                }
                _ => {}
            },
            () = timeout => return Err(Error::IceTimeout),
        }
    }
}

/// The dialer's side: offer, answer, candidates, then the `init` channel is closed and so is
/// the signalling stream.
pub async fn dial(
    mut control: libp2p_stream::Control,
    peer: libp2p::PeerId,
    config: Config,
) -> Result<Connection, Error> {
    let stream = control
        .open_stream(peer, SIGNALING_PROTOCOL)
        .await
        .map_err(|e| Error::OpenSignalling(e.to_string()))?;
    let (reader, mut writer) = stream.split();
    let mut signals = signals(reader);
    let mut inner = Inner::new(&config)?;
    let init = inner.pc.create_data_channel("init");
    let offer = JsFuture::from(inner.pc.create_offer()).await.map_err(js)?;
    send(
        &mut writer,
        Signal::new(SignalType::SdpOffer, sdp_of(&offer)?),
    )
    .await?;
    JsFuture::from(inner.pc.set_local_description(offer.unchecked_ref()))
        .await
        .map_err(js)?;
    let answer = next_signal(&mut signals, SignalType::SdpAnswer).await?;
    JsFuture::from(
        inner
            .pc
            .set_remote_description(&description("answer", &answer.data)?),
    )
    .await
    .map_err(js)?;
    exchange_candidates(&mut inner, &mut signals, &mut writer).await?;
    wait_for_init(&init).await;
    init.close();
    // Closing the signalling stream tells the listener it is done.
    let _ = futures::future::select(
        writer.close().boxed_local(),
        futures_timer::Delay::new(INIT_TIMEOUT),
    )
    .await;
    Ok(Connection {
        inner: SendWrapper::new(inner),
    })
}

/// The `init` channel opens once the SCTP association is up; a listener (js-libp2p's, now and
/// then) may close it first, which counts as done too.
async fn wait_for_init(init: &RtcDataChannel) {
    use web_sys::RtcDataChannelState as S;
    let deadline = web_time::Instant::now() + INIT_TIMEOUT;
    while init.ready_state() == S::Connecting && web_time::Instant::now() < deadline {
        futures_timer::Delay::new(Duration::from_millis(10)).await;
    }
}

/// The listener's side: reads the offer, answers, trickles candidates until connected. The
/// signalling stream is left for the dialer to close.
pub async fn answer(stream: libp2p::Stream, config: Config) -> Result<Connection, Error> {
    let (reader, mut writer) = stream.split();
    let mut signals = signals(reader);
    let mut inner = Inner::new(&config)?;
    let offer = next_signal(&mut signals, SignalType::SdpOffer).await?;
    JsFuture::from(
        inner
            .pc
            .set_remote_description(&description("offer", &offer.data)?),
    )
    .await
    .map_err(js)?;
    let answer = JsFuture::from(inner.pc.create_answer()).await.map_err(js)?;
    send(
        &mut writer,
        Signal::new(SignalType::SdpAnswer, sdp_of(&answer)?),
    )
    .await?;
    JsFuture::from(inner.pc.set_local_description(answer.unchecked_ref()))
        .await
        .map_err(js)?;
    exchange_candidates(&mut inner, &mut signals, &mut writer).await?;
    spawn_local(async move {
        let drain = async {
            while signals.next().await.is_some() {}
            let _ = writer.close().await;
        };
        let _ = futures::future::select(
            drain.boxed_local(),
            futures_timer::Delay::new(SIGNALLING_LINGER),
        )
        .await;
    });
    Ok(Connection {
        inner: SendWrapper::new(inner),
    })
}
