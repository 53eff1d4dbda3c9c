//! The resumable stream: how a client and an agent carry an application's bytes inside their
//! end-to-end session, so that the session outlives the bridge (and the TLS session) it runs
//! through.
//!
//! Each direction is one stream of bytes numbered from 0; its end (FIN) takes one more
//! offset, so that it is acknowledged like a byte. A sender keeps what it sent until the
//! receiver acknowledges it (the *replay buffer*); a receiver counts what it has *delivered*
//! to its application, never more. When the path breaks, both sides attach again (a new
//! end-to-end session through a live bridge), each says how much it has received, and each
//! sends again from there: nothing is lost, nothing is delivered twice.
//!
//! Frames, each a type byte and a fixed body (integers big-endian):
//!
//! | type | name | body | meaning |
//! |---|---|---|---|
//! | 1 | `RESUME` | version `u8`, received `u64`, window `u32` | first frame of every attachment; the window is the most the sender keeps unacknowledged (what the receiver must be ready to hold) |
//! | 2 | `DATA` | length `u16` (1 ..= [`MAX_DATA`]), then that many bytes | the next bytes of the sender's stream |
//! | 3 | `ACK` | received `u64` | cumulative: the peer may forget everything before it |
//! | 4 | `FIN` | — | the sender's stream ends here |
//! | 5 | `PING` | — | keep-alive: both sides send one after a quiet spell; needs no answer |
//! | 6 | `CLOSE` | reason `u8` | the sender ends the session abnormally; no resume |
//!
//! [`Header`] parses and writes frame headers; [`Outgoing`] and [`Incoming`] keep one
//! direction's offsets and refuse what a correct peer never sends. The caller owns the
//! sockets and the bytes.

/// The version this module speaks, sent in `RESUME`.
pub const VERSION: u8 = 1;

/// Largest `DATA` payload: header and payload fit one TLS record (16 KiB).
pub const MAX_DATA: usize = 16 * 1024 - 16;

/// Longest frame header.
pub const MAX_HEADER_LEN: usize = 14;

const RESUME: u8 = 1;
const DATA: u8 = 2;
const ACK: u8 = 3;
const FIN: u8 = 4;
const PING: u8 = 5;
const CLOSE: u8 = 6;

/// A frame's header (for `DATA`, the payload follows it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Header {
    /// First frame of an attachment: bytes of the peer's stream received so far, and how
    /// much of its own stream the sender may have in flight.
    Resume {
        /// Delivered to the application, FIN included.
        received: u64,
        /// The sender's replay buffer: it never has more unacknowledged bytes than this.
        window: u32,
    },
    /// `len` bytes of the stream follow.
    Data {
        /// 1 ..= [`MAX_DATA`].
        len: u16,
    },
    /// Cumulative acknowledgement.
    Ack {
        /// Delivered to the application, FIN included.
        received: u64,
    },
    /// The sender's stream ends.
    Fin,
    /// Keep-alive.
    Ping,
    /// The session ends abnormally.
    Close {
        /// Why.
        reason: CloseReason,
    },
}

/// Why a side closed the session abnormally.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// Its application side failed (a reset, a write error).
    LocalError,
    /// It went idle past its deadline.
    IdleTimeout,
    /// It was told to end the session (a kill, shutdown).
    Stopped,
    /// The peer broke this protocol.
    Protocol,
    /// A reason this version does not know.
    Other(u8),
}

impl CloseReason {
    const fn byte(self) -> u8 {
        match self {
            Self::LocalError => 1,
            Self::IdleTimeout => 2,
            Self::Stopped => 3,
            Self::Protocol => 4,
            Self::Other(b) => b,
        }
    }

    const fn from_byte(b: u8) -> Self {
        match b {
            1 => Self::LocalError,
            2 => Self::IdleTimeout,
            3 => Self::Stopped,
            4 => Self::Protocol,
            other => Self::Other(other),
        }
    }
}

/// What a peer sent or did that this protocol does not allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum StreamError {
    /// An unknown frame type.
    #[error("unknown frame type {0}")]
    UnknownFrame(u8),
    /// A `DATA` frame of length 0 or over [`MAX_DATA`].
    #[error("bad DATA length {0}")]
    BadLength(u16),
    /// A `RESUME` of another version.
    #[error("unsupported resume version {0}")]
    Version(u8),
    /// More bytes in flight than the sender's window.
    #[error("more data in flight than the window")]
    OverWindow,
    /// An acknowledgement of bytes never sent, or going backwards.
    #[error("acknowledgement {0} outside what was sent")]
    BadAck(u64),
    /// Bytes after the stream's end.
    #[error("data after FIN")]
    AfterFin,
    /// A stream longer than 2^64 - 2 bytes.
    #[error("stream offset overflow")]
    Overflow,
}

impl Header {
    /// The header's length given its first byte (the type).
    ///
    /// # Errors
    ///
    /// [`StreamError::UnknownFrame`].
    pub const fn len_for(kind: u8) -> Result<usize, StreamError> {
        match kind {
            RESUME => Ok(14),
            DATA => Ok(3),
            ACK => Ok(9),
            FIN | PING => Ok(1),
            CLOSE => Ok(2),
            other => Err(StreamError::UnknownFrame(other)),
        }
    }

    /// Parses a complete header: `bytes` must be exactly [`Header::len_for`] its first byte.
    ///
    /// # Errors
    ///
    /// A [`StreamError`] for anything but a valid header; a wrong length is an
    /// [`StreamError::UnknownFrame`] of its first byte (or 0 when empty).
    pub fn parse(bytes: &[u8]) -> Result<Self, StreamError> {
        let kind = *bytes.first().ok_or(StreamError::UnknownFrame(0))?;
        if bytes.len() != Self::len_for(kind)? {
            return Err(StreamError::UnknownFrame(kind));
        }
        let u64_at = |at: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&bytes[at..at + 8]);
            u64::from_be_bytes(b)
        };
        Ok(match kind {
            RESUME if bytes[1] != VERSION => return Err(StreamError::Version(bytes[1])),
            RESUME => Self::Resume {
                received: u64_at(2),
                window: u32::from_be_bytes([bytes[10], bytes[11], bytes[12], bytes[13]]),
            },
            DATA => {
                let len = u16::from_be_bytes([bytes[1], bytes[2]]);
                if len == 0 || usize::from(len) > MAX_DATA {
                    return Err(StreamError::BadLength(len));
                }
                Self::Data { len }
            }
            ACK => Self::Ack {
                received: u64_at(1),
            },
            FIN => Self::Fin,
            PING => Self::Ping,
            _ => Self::Close {
                reason: CloseReason::from_byte(bytes[1]),
            },
        })
    }

    /// Writes the header into `out`; returns its length.
    pub fn write(self, out: &mut [u8; MAX_HEADER_LEN]) -> usize {
        match self {
            Self::Resume { received, window } => {
                out[0] = RESUME;
                out[1] = VERSION;
                out[2..10].copy_from_slice(&received.to_be_bytes());
                out[10..14].copy_from_slice(&window.to_be_bytes());
                14
            }
            Self::Data { len } => {
                out[0] = DATA;
                out[1..3].copy_from_slice(&len.to_be_bytes());
                3
            }
            Self::Ack { received } => {
                out[0] = ACK;
                out[1..9].copy_from_slice(&received.to_be_bytes());
                9
            }
            Self::Fin => {
                out[0] = FIN;
                1
            }
            Self::Ping => {
                out[0] = PING;
                1
            }
            Self::Close { reason } => {
                out[0] = CLOSE;
                out[1] = reason.byte();
                2
            }
        }
    }
}

/// One direction as its sender sees it: what the application gave, what the peer
/// acknowledged, and where sending stands in the current attachment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Outgoing {
    /// Offsets below this are acknowledged (and forgotten).
    pub acked: u64,
    /// Bytes taken from the application (the FIN not included).
    pub end: u64,
    /// The application's stream ended: a FIN follows the bytes.
    pub fin: bool,
    /// The next offset to send in this attachment.
    pub next: u64,
    /// The highest offset sent in any attachment (what an acknowledgement may reach).
    pub sent: u64,
}

impl Outgoing {
    /// The stream's length in offsets, FIN included once it is known.
    pub const fn total(&self) -> u64 {
        self.end + self.fin as u64
    }

    /// Bytes kept for replay.
    pub const fn unacked(&self) -> u64 {
        self.end
            - if self.acked > self.end {
                self.end
            } else {
                self.acked
            }
    }

    /// The application gave `n` more bytes.
    ///
    /// # Errors
    ///
    /// [`StreamError::AfterFin`] or [`StreamError::Overflow`] (a bug of the caller).
    pub fn took(&mut self, n: usize) -> Result<(), StreamError> {
        if self.fin {
            return Err(StreamError::AfterFin);
        }
        self.end = self
            .end
            .checked_add(n as u64)
            .filter(|e| *e < u64::MAX)
            .ok_or(StreamError::Overflow)?;
        Ok(())
    }

    /// `n` bytes (or the FIN, as 1) were written into the attachment.
    pub fn sent(&mut self, n: u64) {
        self.next += n;
        self.sent = self.sent.max(self.next);
    }

    /// The peer acknowledged everything below `received`; returns how many buffered bytes
    /// may now be dropped.
    ///
    /// # Errors
    ///
    /// [`StreamError::BadAck`] when it goes backwards or past what was ever sent.
    pub fn on_ack(&mut self, received: u64) -> Result<u64, StreamError> {
        if received < self.acked || received > self.sent {
            return Err(StreamError::BadAck(received));
        }
        let dropped = received.min(self.end) - self.acked.min(self.end);
        self.acked = received;
        Ok(dropped)
    }

    /// A new attachment: the peer has everything below `received`; sending resumes there.
    /// Returns how many buffered bytes may now be dropped.
    ///
    /// # Errors
    ///
    /// [`StreamError::BadAck`] when `received` is behind what it acknowledged before or past
    /// what was ever sent.
    pub fn on_resume(&mut self, received: u64) -> Result<u64, StreamError> {
        let dropped = self.on_ack(received)?;
        self.next = received;
        Ok(dropped)
    }

    /// Whether the whole stream, FIN included, is acknowledged.
    pub const fn finished(&self) -> bool {
        self.fin && self.acked == self.end + 1
    }
}

/// One direction as its receiver sees it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Incoming {
    /// Offsets delivered to the application (the FIN counts one).
    pub received: u64,
    /// The last acknowledgement sent.
    pub acked: u64,
    /// The FIN arrived.
    pub fin: bool,
}

impl Incoming {
    /// `n` bytes were delivered to the application.
    ///
    /// # Errors
    ///
    /// [`StreamError::AfterFin`], [`StreamError::Overflow`].
    pub fn delivered(&mut self, n: usize) -> Result<(), StreamError> {
        if self.fin {
            return Err(StreamError::AfterFin);
        }
        self.received = self
            .received
            .checked_add(n as u64)
            .filter(|r| *r < u64::MAX)
            .ok_or(StreamError::Overflow)?;
        Ok(())
    }

    /// The FIN arrived (and was passed on).
    ///
    /// # Errors
    ///
    /// [`StreamError::AfterFin`] for a second one.
    pub fn on_fin(&mut self) -> Result<(), StreamError> {
        if self.fin {
            return Err(StreamError::AfterFin);
        }
        self.fin = true;
        self.received += 1;
        Ok(())
    }

    /// Bytes delivered but not yet acknowledged.
    pub const fn unacknowledged(&self) -> u64 {
        self.received - self.acked
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn every_header_round_trips_and_lengths_agree() {
        let headers = [
            Header::Resume {
                received: 7,
                window: 4 << 20,
            },
            Header::Resume {
                received: u64::MAX - 1,
                window: u32::MAX,
            },
            Header::Data { len: 1 },
            Header::Data {
                len: MAX_DATA as u16,
            },
            Header::Ack { received: 0 },
            Header::Fin,
            Header::Ping,
            Header::Close {
                reason: CloseReason::LocalError,
            },
            Header::Close {
                reason: CloseReason::Other(200),
            },
        ];
        for header in headers {
            let mut out = [0u8; MAX_HEADER_LEN];
            let n = header.write(&mut out);
            assert_eq!(Header::len_for(out[0]), Ok(n));
            assert_eq!(Header::parse(&out[..n]), Ok(header));
        }
    }

    #[test]
    fn bad_headers_are_refused() {
        assert_eq!(Header::parse(&[]), Err(StreamError::UnknownFrame(0)));
        assert_eq!(Header::parse(&[9]), Err(StreamError::UnknownFrame(9)));
        assert_eq!(Header::parse(&[DATA, 0, 0]), Err(StreamError::BadLength(0)));
        assert_eq!(
            Header::parse(&[DATA, 0x40, 0]),
            Err(StreamError::BadLength(0x4000))
        );
        assert_eq!(
            Header::parse(&[RESUME, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
            Err(StreamError::Version(2))
        );
        assert_eq!(
            Header::parse(&[ACK, 0]),
            Err(StreamError::UnknownFrame(ACK))
        );
    }

    #[test]
    fn acknowledgements_free_the_replay_buffer_and_never_go_backwards() {
        let mut out = Outgoing::default();
        out.took(100).unwrap();
        out.sent(100);
        assert_eq!(out.on_ack(40), Ok(40));
        assert_eq!(out.unacked(), 60);
        assert_eq!(out.on_ack(30), Err(StreamError::BadAck(30)));
        assert_eq!(out.on_ack(101), Err(StreamError::BadAck(101)));
        // The path breaks; the peer has 70: sending starts again at 70.
        assert_eq!(out.on_resume(70), Ok(30));
        assert_eq!(out.next, 70);
        out.fin = true;
        out.sent(30);
        out.sent(1);
        assert!(!out.finished());
        assert_eq!(out.on_ack(101), Ok(30));
        assert!(out.finished());
        assert_eq!(out.took(1), Err(StreamError::AfterFin));
    }

    #[test]
    fn a_resume_behind_an_acknowledgement_is_refused() {
        let mut out = Outgoing::default();
        out.took(10).unwrap();
        out.sent(10);
        out.on_ack(8).unwrap();
        assert_eq!(out.on_resume(5), Err(StreamError::BadAck(5)));
    }

    #[test]
    fn nothing_is_received_after_the_fin() {
        let mut inc = Incoming::default();
        inc.delivered(5).unwrap();
        inc.on_fin().unwrap();
        assert_eq!(inc.received, 6);
        assert_eq!(inc.delivered(1), Err(StreamError::AfterFin));
        assert_eq!(inc.on_fin(), Err(StreamError::AfterFin));
    }
}
