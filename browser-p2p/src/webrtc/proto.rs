//! The wire formats of libp2p's browser-to-browser WebRTC, written out by hand (two tiny proto2
//! messages do not need a protobuf code generator):
//!
//! - the signalling messages of `/webrtc-signaling/0.0.1` (specs `webrtc/webrtc.md`):
//!   `message Message { enum Type { SDP_OFFER = 0; SDP_ANSWER = 1; ICE_CANDIDATE = 2; }
//!   optional Type type = 1; optional string data = 2; }`
//! - the frames on each data channel (specs `webrtc/README.md`):
//!   `message Message { enum Flag { FIN = 0; STOP_SENDING = 1; RESET = 2; FIN_ACK = 3; }
//!   optional Flag flag = 1; optional bytes message = 2; }`
//!
//! Both travel as unsigned-varint length prefix + protobuf bytes. [`FrameDecoder`] cuts such
//! frames out of whatever chunks the bytes arrive in (a frame may span data-channel messages).

use std::fmt;

/// Largest data-channel message this implementation sends, as the spec and js-libp2p say
/// (16 KiB, including the length prefix and protobuf fields).
pub const MAX_MESSAGE_SIZE: usize = 16 * 1024;
/// Payload bytes per data frame: the message less its prefix and fields (length prefix 2 bytes,
/// tag 1, payload length 2, room for a flag 2; rounded down generously).
pub const MAX_PAYLOAD: usize = MAX_MESSAGE_SIZE - 16;
/// Largest signalling message accepted (an SDP with every candidate in it stays far below).
pub const MAX_SIGNALLING_MESSAGE: usize = 256 * 1024;
/// Largest data-channel frame accepted from a peer: what the spec allows, with slack.
pub const MAX_DATA_FRAME: usize = 64 * 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// A varint longer than 10 bytes, or one overflowing u64.
    BadVarint,
    /// The protobuf ended inside a field.
    Truncated,
    /// A length prefix above the limit for this kind of frame.
    TooLarge { len: u64, max: usize },
    /// A wire type protobuf does not have (groups, 6, 7).
    BadWireType(u8),
    /// Signalling `data` that is not UTF-8.
    NotUtf8,
    /// An enum value outside the protocol's.
    UnknownEnum { field: &'static str, value: u64 },
    /// A signalling message without its type.
    MissingType,
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BadVarint => write!(f, "malformed varint"),
            Self::Truncated => write!(f, "protobuf message ends inside a field"),
            Self::TooLarge { len, max } => write!(f, "frame of {len} bytes, over the {max} limit"),
            Self::BadWireType(t) => write!(f, "unsupported protobuf wire type {t}"),
            Self::NotUtf8 => write!(f, "signalling data is not UTF-8"),
            Self::UnknownEnum { field, value } => write!(f, "unknown {field} {value}"),
            Self::MissingType => write!(f, "signalling message without a type"),
        }
    }
}

impl std::error::Error for DecodeError {}

pub fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// A varint at the start of `bytes`: `Ok(None)` when more bytes are needed, else the value and
/// how many bytes it took.
pub fn get_varint(bytes: &[u8]) -> Result<Option<(u64, usize)>, DecodeError> {
    let mut value: u64 = 0;
    for (i, byte) in bytes.iter().enumerate() {
        if i == 10 || (i == 9 && *byte > 1) {
            return Err(DecodeError::BadVarint);
        }
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok(Some((value, i + 1)));
        }
    }
    if bytes.len() >= 10 {
        return Err(DecodeError::BadVarint);
    }
    Ok(None)
}

fn varint_field(bytes: &[u8], at: &mut usize) -> Result<u64, DecodeError> {
    match get_varint(&bytes[*at..])? {
        Some((value, used)) => {
            *at += used;
            Ok(value)
        }
        None => Err(DecodeError::Truncated),
    }
}

/// Walks the fields of one protobuf message: `(field number, Varint(v) | Bytes(b))`; fixed-size
/// fields are skipped (neither message has any).
fn fields(bytes: &[u8]) -> Result<Vec<(u64, Field<'_>)>, DecodeError> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let key = varint_field(bytes, &mut at)?;
        let number = key >> 3;
        match (key & 7) as u8 {
            0 => out.push((number, Field::Varint(varint_field(bytes, &mut at)?))),
            1 | 5 => {
                let width = if key & 7 == 1 { 8 } else { 4 };
                if bytes.len() - at < width {
                    return Err(DecodeError::Truncated);
                }
                at += width;
            }
            2 => {
                let len = varint_field(bytes, &mut at)?;
                if len > (bytes.len() - at) as u64 {
                    return Err(DecodeError::Truncated);
                }
                let end = at + len as usize;
                out.push((number, Field::Bytes(&bytes[at..end])));
                at = end;
            }
            other => return Err(DecodeError::BadWireType(other)),
        }
    }
    Ok(out)
}

enum Field<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
}

/// Prefixes a protobuf message with its length.
fn framed(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 3);
    put_varint(&mut out, body.len() as u64);
    out.extend_from_slice(body);
    out
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignalType {
    SdpOffer,
    SdpAnswer,
    IceCandidate,
}

/// One message of `/webrtc-signaling/0.0.1`. ICE candidates are carried as the JSON of
/// `RTCIceCandidate.toJSON()`; `""` or `"null"` means the end of candidates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signal {
    pub kind: SignalType,
    pub data: String,
}

impl Signal {
    pub fn new(kind: SignalType, data: impl Into<String>) -> Self {
        Self {
            kind,
            data: data.into(),
        }
    }

    /// Length-prefixed, ready to write.
    pub fn encode(&self) -> Vec<u8> {
        let mut body = Vec::with_capacity(self.data.len() + 8);
        body.push(0x08);
        put_varint(
            &mut body,
            match self.kind {
                SignalType::SdpOffer => 0,
                SignalType::SdpAnswer => 1,
                SignalType::IceCandidate => 2,
            },
        );
        body.push(0x12);
        put_varint(&mut body, self.data.len() as u64);
        body.extend_from_slice(self.data.as_bytes());
        framed(&body)
    }

    /// From the protobuf bytes (the length prefix already removed).
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut kind = None;
        let mut data = String::new();
        for (number, field) in fields(bytes)? {
            match (number, field) {
                (1, Field::Varint(v)) => {
                    kind = Some(match v {
                        0 => SignalType::SdpOffer,
                        1 => SignalType::SdpAnswer,
                        2 => SignalType::IceCandidate,
                        value => {
                            return Err(DecodeError::UnknownEnum {
                                field: "signalling type",
                                value,
                            });
                        }
                    })
                }
                (2, Field::Bytes(b)) => {
                    data = std::str::from_utf8(b)
                        .map_err(|_| DecodeError::NotUtf8)?
                        .to_owned()
                }
                _ => {}
            }
        }
        Ok(Self {
            kind: kind.ok_or(DecodeError::MissingType)?,
            data,
        })
    }

    /// An ICE candidate message that ends the candidates rather than carrying one.
    pub fn is_end_of_candidates(&self) -> bool {
        let data = self.data.trim();
        data.is_empty() || data == "null" || data == "\"\""
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flag {
    /// The sender will send no more data on this stream.
    Fin,
    /// The sender will read no more: stop sending.
    StopSending,
    /// The sender abandons the stream in both directions.
    Reset,
    /// The sender received the other side's FIN.
    FinAck,
}

/// One frame on a data channel: data, a flag, or both.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Frame {
    pub flag: Option<Flag>,
    pub message: Option<Vec<u8>>,
}

impl Frame {
    pub fn data(bytes: &[u8]) -> Vec<u8> {
        let mut body = Vec::with_capacity(bytes.len() + 4);
        body.push(0x12);
        put_varint(&mut body, bytes.len() as u64);
        body.extend_from_slice(bytes);
        framed(&body)
    }

    pub fn flag(flag: Flag) -> Vec<u8> {
        let value = match flag {
            Flag::Fin => 0,
            Flag::StopSending => 1,
            Flag::Reset => 2,
            Flag::FinAck => 3,
        };
        framed(&[0x08, value])
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut frame = Frame::default();
        for (number, field) in fields(bytes)? {
            match (number, field) {
                (1, Field::Varint(v)) => {
                    frame.flag = Some(match v {
                        0 => Flag::Fin,
                        1 => Flag::StopSending,
                        2 => Flag::Reset,
                        3 => Flag::FinAck,
                        value => {
                            return Err(DecodeError::UnknownEnum {
                                field: "flag",
                                value,
                            });
                        }
                    })
                }
                (2, Field::Bytes(b)) => frame.message = Some(b.to_vec()),
                _ => {}
            }
        }
        Ok(frame)
    }
}

/// Cuts length-prefixed frames out of a byte stream that arrives in arbitrary chunks.
#[derive(Debug)]
pub struct FrameDecoder {
    buffer: Vec<u8>,
    max: usize,
}

impl FrameDecoder {
    pub fn new(max: usize) -> Self {
        Self {
            buffer: Vec::new(),
            max,
        }
    }

    pub fn push(&mut self, bytes: &[u8]) {
        self.buffer.extend_from_slice(bytes);
    }

    /// The next whole frame's body, if one has arrived.
    pub fn next_frame(&mut self) -> Result<Option<Vec<u8>>, DecodeError> {
        let Some((len, used)) = get_varint(&self.buffer)? else {
            return Ok(None);
        };
        if len > self.max as u64 {
            return Err(DecodeError::TooLarge { len, max: self.max });
        }
        let end = used + len as usize;
        if self.buffer.len() < end {
            return Ok(None);
        }
        let body = self.buffer[used..end].to_vec();
        self.buffer.drain(..end);
        Ok(Some(body))
    }

    /// Bytes received but not yet part of a whole frame.
    pub fn pending(&self) -> usize {
        self.buffer.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one_frame(bytes: &[u8], max: usize) -> Vec<u8> {
        let mut decoder = FrameDecoder::new(max);
        decoder.push(bytes);
        let body = decoder.next_frame().expect("decodes").expect("whole");
        assert_eq!(decoder.pending(), 0);
        body
    }

    #[test]
    fn varints_round_trip_and_reject_overlong_ones() {
        for value in [
            0,
            1,
            127,
            128,
            300,
            16_383,
            16_384,
            u32::MAX as u64,
            u64::MAX,
        ] {
            let mut out = Vec::new();
            put_varint(&mut out, value);
            assert_eq!(get_varint(&out), Ok(Some((value, out.len()))));
            assert_eq!(get_varint(&out[..out.len() - 1]), Ok(None));
        }
        assert_eq!(get_varint(&[0xff; 11]), Err(DecodeError::BadVarint));
        assert_eq!(get_varint(&[0x80, 0x01]), Ok(Some((128, 2))));
    }

    #[test]
    fn signalling_messages_match_the_protobuf_encoding() {
        // What js-libp2p's protons encoder writes for {type: SDP_ANSWER, data: "v=0"}.
        let bytes = Signal::new(SignalType::SdpAnswer, "v=0").encode();
        assert_eq!(bytes, [7, 0x08, 1, 0x12, 3, b'v', b'=', b'0']);
        // SDP_OFFER is 0 and still written (proto2 optional), so the type is never lost.
        let offer = Signal::new(SignalType::SdpOffer, "o");
        assert_eq!(offer.encode(), [5, 0x08, 0, 0x12, 1, b'o']);
        for signal in [
            offer,
            Signal::new(
                SignalType::IceCandidate,
                r#"{"candidate":"candidate:1 1 udp"}"#,
            ),
            Signal::new(SignalType::SdpOffer, "x".repeat(20_000)),
        ] {
            let body = one_frame(&signal.encode(), MAX_SIGNALLING_MESSAGE);
            assert_eq!(Signal::decode(&body), Ok(signal));
        }
    }

    #[test]
    fn signalling_decoding_refuses_what_the_protocol_does_not_have() {
        assert_eq!(Signal::decode(&[0x12, 0]), Err(DecodeError::MissingType));
        assert_eq!(
            Signal::decode(&[0x08, 7]),
            Err(DecodeError::UnknownEnum {
                field: "signalling type",
                value: 7
            })
        );
        assert_eq!(
            Signal::decode(&[0x08, 0, 0x12, 5, b'a']),
            Err(DecodeError::Truncated)
        );
        assert_eq!(
            Signal::decode(&[0x08, 0, 0x12, 1, 0xff]),
            Err(DecodeError::NotUtf8)
        );
        assert_eq!(Signal::decode(&[0x0b]), Err(DecodeError::BadWireType(3)));
        // Unknown fields are skipped, as protobuf requires.
        assert_eq!(
            Signal::decode(&[0x18, 5, 0x08, 2, 0x25, 0, 0, 0, 0]),
            Ok(Signal::new(SignalType::IceCandidate, ""))
        );
    }

    #[test]
    fn end_of_candidates_is_recognised_in_every_form_peers_send() {
        for data in ["", "null", "\"\"", " null "] {
            assert!(Signal::new(SignalType::IceCandidate, data).is_end_of_candidates());
        }
        assert!(!Signal::new(SignalType::IceCandidate, "{}").is_end_of_candidates());
    }

    #[test]
    fn data_channel_frames_carry_flags_and_data() {
        // FIN is 0 and must still be on the wire.
        assert_eq!(Frame::flag(Flag::Fin), [2, 0x08, 0]);
        assert_eq!(Frame::flag(Flag::FinAck), [2, 0x08, 3]);
        for (flag, expected) in [
            (Flag::Fin, Flag::Fin),
            (Flag::StopSending, Flag::StopSending),
            (Flag::Reset, Flag::Reset),
            (Flag::FinAck, Flag::FinAck),
        ] {
            let frame = Frame::decode(&one_frame(&Frame::flag(flag), MAX_DATA_FRAME));
            assert_eq!(
                frame,
                Ok(Frame {
                    flag: Some(expected),
                    message: None
                })
            );
        }
        let payload = vec![7u8; MAX_PAYLOAD];
        let bytes = Frame::data(&payload);
        assert!(bytes.len() <= MAX_MESSAGE_SIZE, "{} bytes", bytes.len());
        let frame = Frame::decode(&one_frame(&bytes, MAX_DATA_FRAME)).expect("decodes");
        assert_eq!(frame.message.as_deref(), Some(payload.as_slice()));
        assert_eq!(frame.flag, None);
        // A frame with both (allowed by the spec): data first, then the flag applies.
        let both = Frame::decode(&[0x08, 0, 0x12, 2, 1, 2]).expect("decodes");
        assert_eq!(both.flag, Some(Flag::Fin));
        assert_eq!(both.message, Some(vec![1, 2]));
        assert!(Frame::decode(&[0x08, 9]).is_err());
    }

    #[test]
    fn the_decoder_reassembles_frames_split_anywhere_and_bounds_them() {
        let mut stream = Vec::new();
        let frames = [
            Frame::data(b"hello"),
            Frame::flag(Flag::Fin),
            Frame::data(&[9; 300]),
        ];
        for f in &frames {
            stream.extend_from_slice(f);
        }
        for chunk in 1..stream.len() {
            let mut decoder = FrameDecoder::new(MAX_DATA_FRAME);
            let mut got = Vec::new();
            for piece in stream.chunks(chunk) {
                decoder.push(piece);
                while let Some(body) = decoder.next_frame().expect("decodes") {
                    got.push(body);
                }
            }
            assert_eq!(got.len(), 3, "chunks of {chunk}");
            assert_eq!(decoder.pending(), 0);
            assert_eq!(Frame::decode(&got[1]).expect("flag").flag, Some(Flag::Fin));
        }
        let mut decoder = FrameDecoder::new(16);
        decoder.push(&Frame::data(&[0; 64]));
        assert!(matches!(
            decoder.next_frame(),
            Err(DecodeError::TooLarge { max: 16, .. })
        ));
    }
}
