//! TLS alert records the front door sends before closing a connection it will not route.
//!
//! The front door never terminates TLS, so these are the only TLS bytes it ever writes. A
//! plaintext alert is valid at this point of the handshake (RFC 8446 §6), and clients print
//! a readable reason ("unrecognized name") instead of "connection reset".

/// A fatal alert with the given description, as one complete TLS 1.2-framed record.
///
/// The record version is TLS 1.2 (`0x0303`), which every TLS 1.2 and 1.3 client accepts in
/// an alert sent before the server hello.
pub const fn fatal(description: AlertDescription) -> [u8; 7] {
    [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, description as u8]
}

/// The alert descriptions the front door uses (RFC 8446 §6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum AlertDescription {
    /// The hello named no server, or one we do not route.
    UnrecognizedName = 112,
    /// The hello could not be parsed, or was larger than we accept.
    DecodeError = 50,
    /// The upstream refused or did not answer; the client may retry.
    InternalError = 80,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unrecognized_name_record() {
        assert_eq!(
            fatal(AlertDescription::UnrecognizedName),
            [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x70]
        );
    }
}
