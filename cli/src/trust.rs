//! First contact like ssh: which CA the API must chain to, decided before any credential is
//! sent.
//!
//! - `--ca-file`: that file (checked against `--ca-fingerprint` when both are given).
//! - A pinned CA (an earlier login to this API): it must still verify, checked with a
//!   request that carries nothing (`GET /health`). If it no longer does and the API now
//!   presents another CA, the login is refused loudly, saying what to do.
//! - A publicly certified API (its certificate verifies against the system's roots): the
//!   BAMF CA is fetched over that verified connection, no question asked.
//! - Otherwise the CA the API serves is fetched unverified and shown by SHA-256
//!   fingerprint; it is trusted only when it equals `--ca-fingerprint`, with `--yes`, or when
//!   the user answers `yes` on a terminal. Without a terminal and without those flags the
//!   login is refused.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;

use bamf_client::https::{Api, HttpsError};

use crate::error::{Error, Result, Status};
use crate::net::Net;
use crate::output;

/// ALPN for API connections.
const HTTP1: &[&[u8]] = &[b"http/1.1"];

/// A certificate's SHA-256 fingerprint. Parsed from hex with or without colons, any case,
/// optionally prefixed `SHA256:` or `sha256/`; shown as colon-separated upper-case hex (the
/// form `openssl x509 -fingerprint -sha256` prints).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fingerprint([u8; 32]);

impl std::str::FromStr for Fingerprint {
    type Err = String;

    fn from_str(text: &str) -> std::result::Result<Self, Self::Err> {
        let bad =
            || format!("'{text}' is not a SHA-256 fingerprint (64 hex digits, colons allowed)");
        let trimmed = text.trim();
        let lower = trimmed.to_ascii_lowercase();
        let hex: String = lower
            .strip_prefix("sha256:")
            .or_else(|| lower.strip_prefix("sha256/"))
            .or_else(|| lower.strip_prefix("sha256 fingerprint="))
            .unwrap_or(&lower)
            .chars()
            .filter(|c| *c != ':')
            .collect();
        if hex.len() != 64 {
            return Err(bad());
        }
        let mut bytes = [0u8; 32];
        for (i, byte) in bytes.iter_mut().enumerate() {
            *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2).ok_or_else(bad)?, 16)
                .map_err(|_| bad())?;
        }
        Ok(Self(bytes))
    }
}

impl std::fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, b) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(":")?;
            }
            write!(f, "{b:02X}")?;
        }
        Ok(())
    }
}

impl Fingerprint {
    /// The fingerprint of the first certificate in `pem`.
    pub fn of_pem(pem: &str) -> Option<Self> {
        use rustls_pki_types::CertificateDer;
        use rustls_pki_types::pem::PemObject;
        let der = CertificateDer::from_pem_slice(pem.as_bytes()).ok()?;
        let digest = ring::digest::digest(&ring::digest::SHA256, &der);
        digest.as_ref().try_into().ok().map(Self)
    }
}

/// What the user said about trusting an API (`bamf login`'s flags).
#[derive(Debug, Clone, Default)]
pub struct TrustArgs {
    /// `--yes`: trust the CA of a first contact without asking.
    pub yes: bool,
    /// `--ca-file`.
    pub ca_file: Option<PathBuf>,
    /// `--ca-fingerprint`.
    pub ca_fingerprint: Option<Fingerprint>,
}

/// Why the CA is trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Basis {
    /// Pinned at an earlier login, and it still verifies.
    Pinned,
    /// `--ca-file`.
    File,
    /// Fetched from an API whose certificate the system's roots verify.
    Public,
    /// Equal to `--ca-fingerprint`.
    Fingerprint,
    /// `--yes`.
    Yes,
    /// The user answered yes on the terminal.
    Confirmed,
}

impl Basis {
    /// A stable word for `--json`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pinned => "pinned",
            Self::File => "ca_file",
            Self::Public => "public",
            Self::Fingerprint => "fingerprint",
            Self::Yes => "yes",
            Self::Confirmed => "confirmed",
        }
    }
}

/// The CA to verify the API with, and why.
#[derive(Debug)]
pub struct Anchor {
    /// The CA, PEM.
    pub ca_pem: String,
    /// Its fingerprint.
    pub fingerprint: Fingerprint,
    /// Why it is trusted.
    pub basis: Basis,
    /// An endpoint already verified with it (its connection is kept), when one was made.
    pub api: Option<Api>,
}

/// Where the login goes.
#[derive(Debug)]
pub struct Contact<'a> {
    /// `https://host[:port]`.
    pub url: &'a str,
    /// `host:port`, as shown to the user.
    pub authority: String,
    /// Where to dial instead of resolving names.
    pub via: Option<SocketAddr>,
    /// The profile's name, for the messages.
    pub profile: &'a str,
}

fn anchor(ca_pem: String, basis: Basis, api: Option<Api>) -> Result<Anchor> {
    let fingerprint = Fingerprint::of_pem(&ca_pem)
        .ok_or_else(|| Error::msg("the CA is not a PEM certificate"))?;
    bamf_client::roots(&ca_pem)?;
    Ok(Anchor {
        ca_pem,
        fingerprint,
        basis,
        api,
    })
}

/// Whether a connection failed because the server's certificate did not verify.
fn untrusted_certificate(e: &HttpsError) -> bool {
    matches!(e, HttpsError::Connect(_, why) if why.contains("certificate"))
}

/// Decides which CA to verify the API with (see the module's description). Nothing but
/// `GET /health` and `GET /api/v1/ca` is sent before this returns.
///
/// # Errors
///
/// Status 7 (not trusted) when the CA is not confirmed, does not match, or changed; 6 when
/// the API cannot be reached.
pub async fn establish(
    net: &Net,
    contact: &Contact<'_>,
    pinned: Option<String>,
    args: &TrustArgs,
) -> Result<Anchor> {
    if let Some(path) = &args.ca_file {
        let pem = std::fs::read_to_string(path)
            .map_err(|e| Error::usage(format!("--ca-file {}: {e}", path.display())))?;
        let given = anchor(pem, Basis::File, None)
            .map_err(|e| Error::usage(format!("--ca-file {}: {e}", path.display())))?;
        if let Some(expected) = args.ca_fingerprint
            && expected != given.fingerprint
        {
            return Err(Error::of(
                Status::Untrusted,
                format!(
                    "the CA in {} has SHA-256 fingerprint {}, not the {expected} given with \
                     --ca-fingerprint: nothing was sent",
                    path.display(),
                    given.fingerprint
                ),
            ));
        }
        return Ok(given);
    }
    if let Some(pin) = pinned {
        return check_pin(net, contact, pin, args).await;
    }
    first_contact(net, contact, args).await
}

/// A known API: the pin must still verify.
async fn check_pin(
    net: &Net,
    contact: &Contact<'_>,
    pin: String,
    args: &TrustArgs,
) -> Result<Anchor> {
    let tls = bamf_client::api_tls_config(&pin, None, HTTP1)?;
    let api = net.endpoint(contact.url, tls, contact.via)?;
    match api.health().await {
        Ok(_) => anchor(pin, Basis::Pinned, Some(api)),
        Err(e) if untrusted_certificate(&e) => {
            let pinned = Fingerprint::of_pem(&pin)
                .ok_or_else(|| Error::msg("the pinned CA is not a PEM certificate"))?;
            let presented = crate::tofu::fetch_ca(net, contact.url, contact.via).await?;
            let now = Fingerprint::of_pem(&presented)
                .ok_or_else(|| Error::msg("the API's CA is not a PEM certificate"))?;
            if now == pinned {
                return Err(Error::of(
                    Status::Untrusted,
                    format!(
                        "the API's certificate does not verify against its pinned CA ({e}): \
                         nothing was sent"
                    ),
                ));
            }
            if args.ca_fingerprint == Some(now) {
                output::note(format!(
                    "the CA of {} changed; trusting the new one, SHA-256 {now}, as \
                     --ca-fingerprint says (it was {pinned})",
                    contact.url
                ));
                return anchor(presented, Basis::Fingerprint, None);
            }
            Err(Error::of(
                Status::Untrusted,
                format!(
                    "THE BAMF CA OF {url} HAS CHANGED (profile '{profile}'): nothing was sent.\n\
                     \x20 pinned:    SHA-256 {pinned}\n\
                     \x20 presented: SHA-256 {now}\n\
                     Someone may be intercepting the connection (a man in the middle), or the \
                     deployment's CA was replaced.\n\
                     If your administrator confirms the new CA's fingerprint, log in with \
                     `bamf login --profile {profile} --ca-fingerprint {now}` (or --ca-file \
                     NEW-CA.pem); to forget this API: `bamf profiles rm {profile}`",
                    url = contact.url,
                    profile = contact.profile,
                ),
            ))
        }
        Err(e) => Err(Error::api(e)),
    }
}

/// An API never seen: publicly certified, or confirmed by fingerprint, flag or the user.
async fn first_contact(net: &Net, contact: &Contact<'_>, args: &TrustArgs) -> Result<Anchor> {
    if let Ok(public) = bamf_client::public_tls_config(HTTP1) {
        let api = net.endpoint(contact.url, public, contact.via)?;
        match api.text("/api/v1/ca").await {
            Ok(pem) => {
                let found = anchor(pem, Basis::Public, None)?;
                if let Some(expected) = args.ca_fingerprint
                    && expected != found.fingerprint
                {
                    return Err(mismatch(contact, found.fingerprint, expected));
                }
                return Ok(found);
            }
            Err(e) if untrusted_certificate(&e) => {}
            Err(e) => return Err(Error::api(e)),
        }
    }
    let pem = crate::tofu::fetch_ca(net, contact.url, contact.via).await?;
    let found = anchor(pem, Basis::Confirmed, None)?;
    let fingerprint = found.fingerprint;
    if let Some(expected) = args.ca_fingerprint {
        if expected != fingerprint {
            return Err(mismatch(contact, fingerprint, expected));
        }
        return Ok(Anchor {
            basis: Basis::Fingerprint,
            ..found
        });
    }
    if args.yes {
        output::note(format!(
            "trusting the CA of {} without asking (--yes); its SHA-256 fingerprint is\n  {fingerprint}",
            contact.url
        ));
        return Ok(Anchor {
            basis: Basis::Yes,
            ..found
        });
    }
    if !std::io::stdin().is_terminal() {
        return Err(Error::of(
            Status::Untrusted,
            format!(
                "the authenticity of the BAMF API {} cannot be established, and there is no \
                 terminal to ask on: nothing was sent. Its CA's SHA-256 fingerprint is {fingerprint}; \
                 pass --ca-fingerprint FINGERPRINT (as your administrator gives it), \
                 --ca-file CA.pem, or --yes to trust it without checking",
                contact.url
            ),
        ));
    }
    output::prompt(format!(
        "The authenticity of the BAMF API '{}' can't be established.\n\
         Its CA's SHA-256 fingerprint is\n  {fingerprint}\n\
         Compare it with the one your administrator gave you \
         (openssl x509 -noout -fingerprint -sha256 -in ca.pem).\n\
         Trust this CA and continue (yes/no)? ",
        contact.authority
    ));
    let mut answer = String::new();
    std::io::stdin()
        .read_line(&mut answer)
        .map_err(|e| Error::msg(format!("reading the answer: {e}")))?;
    let answer = answer.trim();
    let confirmed = answer.eq_ignore_ascii_case("yes")
        || answer.eq_ignore_ascii_case("y")
        || answer.parse::<Fingerprint>().ok() == Some(fingerprint);
    if !confirmed {
        return Err(Error::of(
            Status::Untrusted,
            format!("not trusted: nothing was sent to {}", contact.url),
        ));
    }
    Ok(found)
}

fn mismatch(contact: &Contact<'_>, found: Fingerprint, expected: Fingerprint) -> Error {
    Error::of(
        Status::Untrusted,
        format!(
            "the BAMF API {} presents a CA with SHA-256 fingerprint {found}, not the {expected} \
             given with --ca-fingerprint: nothing was sent (someone may be intercepting the \
             connection)",
            contact.url
        ),
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn fingerprints_parse_in_every_usual_form() {
        let colons = "AB:".repeat(31) + "CD";
        let fp: Fingerprint = colons.parse().unwrap();
        assert_eq!(fp.to_string(), colons);
        let plain = "ab".repeat(31) + "cd";
        assert_eq!(plain.parse::<Fingerprint>().unwrap(), fp);
        assert_eq!(
            format!("SHA256:{colons}").parse::<Fingerprint>().unwrap(),
            fp
        );
        assert_eq!(
            format!("sha256 Fingerprint={colons}")
                .parse::<Fingerprint>()
                .unwrap(),
            fp
        );
        assert!("abcd".parse::<Fingerprint>().is_err());
        assert!(("zz".repeat(32)).parse::<Fingerprint>().is_err());
        assert!(Fingerprint::of_pem("not a certificate").is_none());
    }
}
