//! The close handshake of one libp2p stream on a data channel (specs `webrtc/README.md`), as a
//! state machine without I/O: the data channel code feeds it what arrives and what the stream's
//! user does, and sends the flags it answers with.
//!
//! Writing ends with FIN, which the other side acknowledges with FIN_ACK; reading ends when the
//! other side's FIN arrives (answered with FIN_ACK) or when we ask it to STOP_SENDING. RESET
//! abandons both halves. The channel is closed once both halves are done, so neither side
//! loses data that is still in flight.

use super::proto::Flag;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadHalf {
    Open,
    /// The other side sent FIN: everything it wrote has arrived.
    Finished,
    /// We sent STOP_SENDING: what still arrives is dropped.
    Stopped,
    Reset,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteHalf {
    Open,
    /// FIN sent, FIN_ACK not yet back.
    FinSent,
    /// The other side has everything we wrote.
    FinAcked,
    /// The other side sent STOP_SENDING: writing fails.
    Stopped,
    Reset,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamState {
    pub read: ReadHalf,
    pub write: WriteHalf,
}

/// What an incoming frame means for the stream's user.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Incoming {
    /// Data to hand to the reader (dropped when reading has ended).
    pub deliver: Option<Vec<u8>>,
    /// A flag to send back (FIN_ACK for a FIN).
    pub reply: Option<Flag>,
}

impl Default for StreamState {
    fn default() -> Self {
        Self::new()
    }
}

impl StreamState {
    pub fn new() -> Self {
        Self {
            read: ReadHalf::Open,
            write: WriteHalf::Open,
        }
    }

    /// A frame from the other side.
    pub fn on_frame(&mut self, flag: Option<Flag>, message: Option<Vec<u8>>) -> Incoming {
        let mut incoming = Incoming::default();
        if self.read == ReadHalf::Open {
            incoming.deliver = message.filter(|m| !m.is_empty());
        }
        match flag {
            None => {}
            Some(Flag::Fin) => {
                if self.read == ReadHalf::Open || self.read == ReadHalf::Stopped {
                    self.read = ReadHalf::Finished;
                }
                if self.read != ReadHalf::Reset {
                    incoming.reply = Some(Flag::FinAck);
                }
            }
            Some(Flag::StopSending) if self.write == WriteHalf::Open => {
                self.write = WriteHalf::Stopped;
            }
            Some(Flag::StopSending) => {}
            Some(Flag::Reset) => {
                self.read = ReadHalf::Reset;
                self.write = WriteHalf::Reset;
            }
            Some(Flag::FinAck) if self.write == WriteHalf::FinSent => {
                self.write = WriteHalf::FinAcked;
            }
            Some(Flag::FinAck) => {}
        }
        incoming
    }

    /// Whether data may be written now.
    pub fn can_write(&self) -> bool {
        self.write == WriteHalf::Open
    }

    /// The user closes its writing half: the flag to send, if any.
    pub fn close_write(&mut self) -> Option<Flag> {
        match self.write {
            WriteHalf::Open => {
                self.write = WriteHalf::FinSent;
                Some(Flag::Fin)
            }
            _ => None,
        }
    }

    /// Whether closing the write half has finished (acknowledged, or nothing left to wait for).
    pub fn write_closed(&self) -> bool {
        !matches!(self.write, WriteHalf::Open | WriteHalf::FinSent)
    }

    /// The user stops reading: the flag to send, if any.
    pub fn close_read(&mut self) -> Option<Flag> {
        match self.read {
            ReadHalf::Open => {
                self.read = ReadHalf::Stopped;
                Some(Flag::StopSending)
            }
            _ => None,
        }
    }

    /// The user dropped the stream: RESET unless both halves ended cleanly.
    pub fn on_drop(&mut self) -> Option<Flag> {
        if self.is_done() {
            return None;
        }
        let was_reset = self.read == ReadHalf::Reset;
        self.read = ReadHalf::Reset;
        self.write = WriteHalf::Reset;
        (!was_reset).then_some(Flag::Reset)
    }

    /// The data channel closed under the stream: reading sees the end, writing fails, and a FIN
    /// still waiting for its FIN_ACK counts as delivered (js-libp2p does the same).
    pub fn on_channel_closed(&mut self) {
        if self.read == ReadHalf::Open {
            self.read = ReadHalf::Finished;
        }
        match self.write {
            WriteHalf::Open => self.write = WriteHalf::Stopped,
            WriteHalf::FinSent => self.write = WriteHalf::FinAcked,
            _ => {}
        }
    }

    /// The FIN_ACK did not come in time: stop waiting.
    pub fn on_fin_ack_timeout(&mut self) {
        if self.write == WriteHalf::FinSent {
            self.write = WriteHalf::FinAcked;
        }
    }

    /// Both halves are over: the data channel can be closed.
    pub fn is_done(&self) -> bool {
        self.read != ReadHalf::Open && self.write_closed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clean_close_is_fin_and_fin_ack_both_ways() {
        let (mut a, mut b) = (StreamState::new(), StreamState::new());
        let data = a.on_frame(None, Some(b"x".to_vec()));
        assert_eq!(data.deliver.as_deref(), Some(&b"x"[..]));
        // A closes its write half; B acknowledges and sees the end of what A writes.
        assert_eq!(a.close_write(), Some(Flag::Fin));
        assert_eq!(a.close_write(), None, "FIN goes once");
        assert!(!a.write_closed() && !a.can_write());
        let answer = b.on_frame(Some(Flag::Fin), None);
        assert_eq!(answer.reply, Some(Flag::FinAck));
        assert_eq!(b.read, ReadHalf::Finished);
        assert!(b.can_write(), "B may still write after A's FIN");
        a.on_frame(Some(Flag::FinAck), None);
        assert!(a.write_closed());
        assert!(!a.is_done() && !b.is_done());
        // Then B closes too.
        assert_eq!(b.close_write(), Some(Flag::Fin));
        assert_eq!(a.on_frame(Some(Flag::Fin), None).reply, Some(Flag::FinAck));
        b.on_frame(Some(Flag::FinAck), None);
        assert!(a.is_done() && b.is_done());
        assert_eq!(
            a.on_drop(),
            None,
            "a finished stream is not reset when dropped"
        );
    }

    #[test]
    fn data_after_the_end_of_reading_is_dropped() {
        let mut s = StreamState::new();
        assert_eq!(s.close_read(), Some(Flag::StopSending));
        assert_eq!(s.on_frame(None, Some(vec![1])).deliver, None);
        let mut s = StreamState::new();
        s.on_frame(Some(Flag::Fin), None);
        assert_eq!(s.on_frame(None, Some(vec![1])).deliver, None);
        // Data and FIN in one frame: the data still counts.
        let mut s = StreamState::new();
        let both = s.on_frame(Some(Flag::Fin), Some(vec![1]));
        assert_eq!(both.deliver, Some(vec![1]));
        assert_eq!(both.reply, Some(Flag::FinAck));
    }

    #[test]
    fn stop_sending_and_reset_end_writing() {
        let mut s = StreamState::new();
        s.on_frame(Some(Flag::StopSending), None);
        assert!(!s.can_write() && s.write_closed());
        assert_eq!(s.close_write(), None);
        let mut s = StreamState::new();
        s.on_frame(Some(Flag::Reset), None);
        assert_eq!((s.read, s.write), (ReadHalf::Reset, WriteHalf::Reset));
        assert!(s.is_done());
        assert_eq!(s.on_frame(Some(Flag::Fin), None).reply, None);
        assert_eq!(s.on_drop(), None, "no RESET back for a RESET");
    }

    #[test]
    fn dropping_an_unfinished_stream_resets_it() {
        let mut s = StreamState::new();
        s.close_write();
        assert_eq!(s.on_drop(), Some(Flag::Reset));
        assert!(s.is_done());
    }

    #[test]
    fn a_closed_channel_or_a_late_fin_ack_does_not_leave_the_writer_waiting() {
        let mut s = StreamState::new();
        s.close_write();
        s.on_channel_closed();
        assert!(s.write_closed() && s.is_done());
        let mut s = StreamState::new();
        s.close_write();
        s.on_fin_ack_timeout();
        assert!(s.write_closed());
        assert!(!s.is_done(), "still reading");
        let mut s = StreamState::new();
        s.on_channel_closed();
        assert_eq!(s.read, ReadHalf::Finished);
        assert!(!s.can_write());
    }
}
