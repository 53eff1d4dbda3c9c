//! Server-sent events (the WHATWG `text/event-stream` format), parsed without I/O.
//!
//! The command stream is one long HTTP response; its bytes arrive in chunks cut anywhere,
//! even inside a line ending. [`Parser::feed`] takes each chunk and yields the complete
//! events it finishes. Lines are bounded ([`MAX_LINE`]) and so is one event's data
//! ([`MAX_EVENT`]): a misbehaving server cannot make the agent buffer without limit.
//!
//! Only what the command stream uses is kept: `event` and `data`. `id` and `retry` are
//! accepted and ignored (the agent's reconnect policy is its own, and commands are not
//! replayed), as are comment lines, which the API sends as keep-alives.

/// Longest line, line ending excluded.
pub const MAX_LINE: usize = 64 * 1024;
/// Most data one event may carry (all its `data:` lines together).
pub const MAX_EVENT: usize = 64 * 1024;

/// One dispatched event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// The `event:` field; `message` when the event named none.
    pub event: String,
    /// The `data:` lines joined with `\n`.
    pub data: String,
}

/// Why the stream cannot be parsed further (the caller drops the connection).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SseError {
    /// A line longer than [`MAX_LINE`].
    #[error("a server-sent event line is longer than {MAX_LINE} bytes")]
    LineTooLong,
    /// An event with more than [`MAX_EVENT`] bytes of data.
    #[error("a server-sent event carries more than {MAX_EVENT} bytes of data")]
    EventTooLarge,
}

/// The parser's state between chunks.
#[derive(Debug, Default)]
pub struct Parser {
    /// The line being read (no line ending yet).
    line: Vec<u8>,
    /// The last chunk ended in CR: an LF at the start of the next one belongs to it.
    after_cr: bool,
    /// At least one line has ended (a byte-order mark is only stripped from the first).
    started: bool,
    /// The pending event's type, if it named one.
    event: Option<String>,
    /// The pending event's data, each line followed by `\n`.
    data: String,
    /// At least one `data` field was seen for the pending event.
    has_data: bool,
}

impl Parser {
    /// A parser at the start of a stream.
    pub fn new() -> Self {
        Self::default()
    }

    /// Consumes `bytes` and appends every event they complete to `out`.
    ///
    /// # Errors
    ///
    /// [`SseError`]; the parser must not be fed again after one.
    pub fn feed(&mut self, mut bytes: &[u8], out: &mut Vec<Event>) -> Result<(), SseError> {
        while !bytes.is_empty() {
            if std::mem::take(&mut self.after_cr)
                && let Some(rest) = bytes.strip_prefix(b"\n")
            {
                bytes = rest;
                continue;
            }
            match bytes.iter().position(|&b| b == b'\n' || b == b'\r') {
                Some(end) => {
                    let (line, rest) = bytes.split_at(end);
                    self.extend_line(line)?;
                    // `rest` starts with the line ending found above.
                    self.after_cr = rest.first() == Some(&b'\r');
                    bytes = rest.get(1..).unwrap_or_default();
                    self.end_line(out)?;
                }
                None => {
                    self.extend_line(bytes)?;
                    break;
                }
            }
        }
        Ok(())
    }

    fn extend_line(&mut self, bytes: &[u8]) -> Result<(), SseError> {
        if self.line.len() + bytes.len() > MAX_LINE {
            return Err(SseError::LineTooLong);
        }
        self.line.extend_from_slice(bytes);
        Ok(())
    }

    fn end_line(&mut self, out: &mut Vec<Event>) -> Result<(), SseError> {
        let mut line = std::mem::take(&mut self.line);
        let mut text: &[u8] = &line;
        if !std::mem::replace(&mut self.started, true) {
            text = text.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(text);
        }
        let result = self.field(text, out);
        line.clear();
        // Keep the allocation for the next line.
        self.line = line;
        result
    }

    fn field(&mut self, line: &[u8], out: &mut Vec<Event>) -> Result<(), SseError> {
        if line.is_empty() {
            let event = self.event.take();
            if std::mem::take(&mut self.has_data) {
                let mut data = std::mem::take(&mut self.data);
                data.pop(); // the `\n` after the last data line
                out.push(Event {
                    event: event.unwrap_or_else(|| "message".to_owned()),
                    data,
                });
            }
            return Ok(());
        }
        if line.starts_with(b":") {
            return Ok(()); // a comment: the API's keep-alive
        }
        let (name, value) = match line.iter().position(|&b| b == b':') {
            Some(colon) => {
                let value = line.get(colon + 1..).unwrap_or_default();
                (
                    line.get(..colon).unwrap_or_default(),
                    value.strip_prefix(b" ").unwrap_or(value),
                )
            }
            None => (line, &[][..]),
        };
        let value = String::from_utf8_lossy(value);
        match name {
            b"event" => self.event = Some(value.into_owned()),
            b"data" => {
                if self.data.len() + value.len() + 1 > MAX_EVENT {
                    return Err(SseError::EventTooLarge);
                }
                self.data.push_str(&value);
                self.data.push('\n');
                self.has_data = true;
            }
            _ => {} // id, retry and unknown fields
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn parse_chunks(chunks: &[&[u8]]) -> Result<Vec<Event>, SseError> {
        let mut parser = Parser::new();
        let mut out = Vec::new();
        for chunk in chunks {
            parser.feed(chunk, &mut out)?;
        }
        Ok(out)
    }

    fn ev(event: &str, data: &str) -> Event {
        Event {
            event: event.into(),
            data: data.into(),
        }
    }

    const STREAM: &[u8] = b": keep-alive\n\nevent: dial\ndata: {\"a\":1}\n\n: keep-alive\n\n\
        data:first\ndata: second\ndata\n\nevent: dial\r\ndata: crlf\r\n\r\nevent: dial\rdata: cr\r\r\
        id: 7\nretry: 1000\nevent: dial\nunknown: x\ndata:  two spaces\n\n";

    fn expected() -> Vec<Event> {
        vec![
            ev("dial", "{\"a\":1}"),
            ev("message", "first\nsecond\n"),
            ev("dial", "crlf"),
            ev("dial", "cr"),
            ev("dial", " two spaces"),
        ]
    }

    #[test]
    fn events_comments_and_every_line_ending_parse() {
        assert_eq!(parse_chunks(&[STREAM]).unwrap(), expected());
    }

    #[test]
    fn chunks_split_anywhere_give_the_same_events() {
        for cut in 0..=STREAM.len() {
            let (a, b) = STREAM.split_at(cut);
            assert_eq!(parse_chunks(&[a, b]).unwrap(), expected(), "cut at {cut}");
        }
        let bytes: Vec<&[u8]> = STREAM.chunks(1).collect();
        assert_eq!(parse_chunks(&bytes).unwrap(), expected());
    }

    #[test]
    fn comments_and_events_without_data_dispatch_nothing() {
        let out = parse_chunks(&[b": keep-alive\n\n: x\n\nevent: dial\n\nid: 1\n\n"]).unwrap();
        assert!(out.is_empty(), "{out:?}");
        // The type of an event without data does not leak into the next event.
        let out = parse_chunks(&[b"event: dial\n\ndata: x\n\n"]).unwrap();
        assert_eq!(out, vec![ev("message", "x")]);
        // An unfinished event is not dispatched.
        assert!(
            parse_chunks(&[b"event: dial\ndata: x\n"])
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn a_byte_order_mark_is_stripped_from_the_first_line_only() {
        let out = parse_chunks(&[b"\xEF\xBB\xBFdata: a\n\n"]).unwrap();
        assert_eq!(out, vec![ev("message", "a")]);
        let out = parse_chunks(&[b"\n\xEF\xBB\xBFdata: a\n\n"]).unwrap();
        assert!(out.is_empty());
    }

    #[test]
    fn oversized_lines_and_events_are_refused() {
        let long = vec![b'x'; MAX_LINE + 1];
        assert_eq!(parse_chunks(&[&long]), Err(SseError::LineTooLong));
        // Split over many chunks, still counted.
        let pieces: Vec<&[u8]> = long.chunks(1000).collect();
        assert_eq!(parse_chunks(&pieces), Err(SseError::LineTooLong));
        // Exactly the limit is fine.
        let mut line = b"data:".to_vec();
        line.resize(MAX_LINE, b'y');
        line.extend_from_slice(b"\n\n");
        let out = parse_chunks(&[&line]).unwrap();
        assert_eq!(out[0].data.len(), MAX_LINE - 5);
        // Many short data lines add up.
        let many = b"data: 0123456789abcdef\n".repeat(MAX_EVENT / 16);
        assert_eq!(parse_chunks(&[&many]), Err(SseError::EventTooLarge));
    }
}
