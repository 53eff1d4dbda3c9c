//! The tunnel's own wire formats: what an agent says after its TLS handshake with a bridge,
//! how the bridge hands both sides over to each other, and the dial command the API sends an
//! agent.
//!
//! A client says nothing: its session certificate names the session, the resource, the
//! agent and the bridge. An agent's certificate names only the agent, so it sends one fixed
//! line naming the session it dials for, [`AGENT_PREAMBLE_LEN`] bytes:
//! `BAMF-AGENT <session uuid>\n` when it reached the target, or `BAMF-AFAIL <session uuid>\n`
//! when it could not (the bridge then ends the client's side at once instead of letting it
//! wait out the match timeout).
//!
//! **The handover.** The TLS session each side holds with the bridge (the *outer* layer)
//! only authorizes and pairs; the bytes of the session travel end to end:
//! 1. each side finishes its outer handshake (the agent then sends its preamble) and sends
//!    `close_notify`: it will send nothing more on the outer layer;
//! 2. the bridge reads each side's outer layer up to that `close_notify` (anything else is
//!    refused), pairs the sides, writes one [`Handover`] byte and its own `close_notify` to
//!    each, and from then on splices the two raw TCP connections;
//! 3. each side reads the outer layer up to the bridge's `close_notify` without reading one
//!    byte past that record, and on [`Handover::Paired`] runs the *inner* TLS 1.3 session
//!    over the same TCP connection: the client as TLS client with its session certificate,
//!    the agent as TLS server with its agent certificate, each checking the other's identity.
//!
//! The bridge therefore moves ciphertext of a session it holds no keys for.

use crate::san::{AgentId, SessionId};

const PREAMBLE_PREFIX: &[u8] = b"BAMF-AGENT ";
const FAILURE_PREFIX: &[u8] = b"BAMF-AFAIL ";
/// Length of the agent's preamble: prefix, a 36-character UUID, newline.
pub const AGENT_PREAMBLE_LEN: usize = PREAMBLE_PREFIX.len() + 36 + 1;

/// Whether the agent reached the session's target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// Connected: bytes will flow.
    Reached,
    /// The agent could not connect to the target; the tunnel ends at once.
    Unreachable,
}

/// The preamble an agent sends for `session`.
pub fn agent_preamble(session: SessionId) -> Vec<u8> {
    preamble(PREAMBLE_PREFIX, session)
}

/// The preamble an agent sends for `session` when it could not reach the target.
pub fn agent_failure_preamble(session: SessionId) -> Vec<u8> {
    preamble(FAILURE_PREFIX, session)
}

fn preamble(prefix: &[u8], session: SessionId) -> Vec<u8> {
    let mut out = prefix.to_vec();
    out.extend_from_slice(session.to_string().as_bytes());
    out.push(b'\n');
    out
}

/// Why a preamble was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PreambleError {
    /// Not `BAMF-AGENT <uuid>\n`.
    #[error("malformed agent preamble")]
    Malformed,
}

/// Parses an agent's preamble.
///
/// # Errors
///
/// [`PreambleError::Malformed`] for anything but the exact form.
pub fn parse_agent_preamble(
    bytes: &[u8; AGENT_PREAMBLE_LEN],
) -> Result<(SessionId, Target), PreambleError> {
    let (rest, target) = if let Some(rest) = bytes.strip_prefix(PREAMBLE_PREFIX) {
        (rest, Target::Reached)
    } else if let Some(rest) = bytes.strip_prefix(FAILURE_PREFIX) {
        (rest, Target::Unreachable)
    } else {
        return Err(PreambleError::Malformed);
    };
    let session = rest
        .strip_suffix(b"\n")
        .and_then(|r| std::str::from_utf8(r).ok())
        .and_then(|s| s.parse().ok())
        .ok_or(PreambleError::Malformed)?;
    Ok((session, target))
}

/// The one byte the bridge writes on a side's outer layer before its `close_notify` (see
/// the handover above).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handover {
    /// Paired: the inner session starts on the raw connection.
    Paired,
    /// The agent could not reach the target (sent to the client; the connection then closes).
    TargetUnreachable,
}

impl Handover {
    /// Its byte on the wire.
    pub const fn byte(self) -> u8 {
        match self {
            Self::Paired => b'P',
            Self::TargetUnreachable => b'U',
        }
    }

    /// The handover a byte stands for, if any.
    pub const fn from_byte(byte: u8) -> Option<Self> {
        match byte {
            b'P' => Some(Self::Paired),
            b'U' => Some(Self::TargetUnreachable),
            _ => None,
        }
    }
}

/// The dial command: sent by the API on the agent's command stream as one server-sent event
/// `event: dial` whose `data:` is this, as JSON.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct DialCommand {
    /// The session to serve.
    pub session: SessionId,
    /// The agent it is for (an agent ignores commands for another).
    pub agent: AgentId,
    /// The resource (by name, from the agent's own configuration).
    pub resource: String,
    /// The bridge's name (SNI), `n.bridge.<tunnel-domain>`.
    pub bridge_host: String,
    /// The bridges' public port.
    pub bridge_port: u16,
    /// The session's client attached again (`POST /api/v1/sessions/{id}/resume`): only an
    /// agent still serving the session takes it; one that is not (the session ended there,
    /// its end still on the way to the API, or the agent restarted) refuses it at the
    /// bridge instead of starting the stream afresh. Left out when false, so that agents
    /// older than it (which refuse unknown fields) still take every first dial during an
    /// upgrade.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub reattach: bool,
}

/// A bridge's report about one of its sessions (`POST /api/v1/bridges/reports`, a batch of
/// these under `events`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, tag = "kind", rename_all = "snake_case")]
pub enum SessionEvent {
    /// Both sides paired.
    Start {
        /// The session.
        session: SessionId,
        /// When, Unix milliseconds.
        at_ms: i64,
    },
    /// The tunnel closed.
    End {
        /// The session.
        session: SessionId,
        /// When it paired, if it did.
        started_at_ms: Option<i64>,
        /// When it ended.
        at_ms: i64,
        /// Client → agent bytes.
        bytes_up: u64,
        /// Agent → client bytes.
        bytes_down: u64,
        /// Why, e.g. `closed`, `idle_timeout`, `killed`, `target_unreachable`.
        reason: String,
    },
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn preambles_round_trip_and_nothing_else_parses() {
        let session: SessionId = "0b6f1a52-3c0e-4d7e-9a41-5a4f6c3b2d10".parse().unwrap();
        let bytes = agent_preamble(session);
        assert_eq!(bytes.len(), AGENT_PREAMBLE_LEN);
        let array: [u8; AGENT_PREAMBLE_LEN] = bytes.clone().try_into().unwrap();
        assert_eq!(parse_agent_preamble(&array), Ok((session, Target::Reached)));
        let failed: [u8; AGENT_PREAMBLE_LEN] = agent_failure_preamble(session).try_into().unwrap();
        assert_eq!(
            parse_agent_preamble(&failed),
            Ok((session, Target::Unreachable))
        );
        for i in 0..AGENT_PREAMBLE_LEN {
            let mut bad = array;
            bad[i] ^= 0x20;
            // Flipping case in the hex digits still names a valid UUID only if the parser
            // accepted upper case; it must not.
            assert_eq!(
                parse_agent_preamble(&bad),
                Err(PreambleError::Malformed),
                "byte {i}"
            );
        }
    }

    #[test]
    fn session_events_are_tagged_json() {
        let text = r#"{"kind":"end","session":"0b6f1a52-3c0e-4d7e-9a41-5a4f6c3b2d10","started_at_ms":1,"at_ms":2,"bytes_up":3,"bytes_down":4,"reason":"closed"}"#;
        let event: SessionEvent = serde_json::from_str(text).unwrap();
        assert!(matches!(&event, SessionEvent::End { bytes_up: 3, .. }));
        assert_eq!(serde_json::to_string(&event).unwrap(), text);
        assert!(serde_json::from_str::<SessionEvent>(&text.replace("end", "stop")).is_err());
    }

    #[test]
    fn dial_commands_are_json_with_typed_ids() {
        let text = r#"{"session":"0b6f1a52-3c0e-4d7e-9a41-5a4f6c3b2d10","agent":"1b6f1a52-3c0e-4d7e-9a41-5a4f6c3b2d10","resource":"db-1","bridge_host":"0.bridge.example.com","bridge_port":443,"reattach":true}"#;
        let c: DialCommand = serde_json::from_str(text).unwrap();
        assert_eq!((c.resource.as_str(), c.reattach), ("db-1", true));
        assert_eq!(serde_json::to_string(&c).unwrap(), text);
        // A first dial does not name the field, as before it existed.
        let first_text = text.replace(r#","reattach":true"#, "");
        let first: DialCommand = serde_json::from_str(&first_text).unwrap();
        assert!(!first.reattach);
        assert_eq!(serde_json::to_string(&first).unwrap(), first_text);
        let bad_id = text.replace("0b6f1a52", "0B6F1A52");
        assert!(serde_json::from_str::<DialCommand>(&bad_id).is_err());
        let extra = text.replace("}", r#","x":1}"#);
        assert!(serde_json::from_str::<DialCommand>(&extra).is_err());
    }
}
