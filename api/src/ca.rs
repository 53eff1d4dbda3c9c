//! The internal certificate authority: the only holder of the CA key, the only signer.
//!
//! Certificates are issued only from certificate signing requests, so private keys never
//! leave the host that uses them. The API, never the CSR, decides what goes into a
//! certificate: its identity (SAN URIs from `proto::san`), DNS names, usages and lifetime. A
//! CSR that *asks* for anything else (a bridge DNS name on a user route, a foreign URI) is
//! refused rather than quietly trimmed, so a confused or hostile client learns nothing useful
//! and the audit log records the attempt.

use std::fmt;
use std::time::Duration;

use bamf_proto::HostName;
use bamf_proto::san::Identity;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
    SignatureAlgorithm,
};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use time::OffsetDateTime;

/// Backdating of `not_before`, so a client whose clock runs a little behind still accepts a
/// certificate it has just been given.
const CLOCK_SKEW: Duration = Duration::from_secs(60);

/// How far a certificate living `lifetime` is backdated: [`CLOCK_SKEW`], but at most a
/// quarter of its life. Holders renew at half their certificate's validity, so a full minute
/// of backdating would put a short-lived certificate's half-life (a 20 s one's: 20 s before it
/// was issued) in the past, and its holder would renew again at once, in a loop.
fn backdating(lifetime: Duration) -> Duration {
    CLOCK_SKEW.min(lifetime / 4)
}

/// Lifetime of the CA certificate generated on first start.
const CA_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// Key algorithms a CSR may use. BAMF's own clients, agents and bridges generate ECDSA P-256
/// keys; P-384 and Ed25519 are accepted for operators with their own tooling. RSA is not:
/// nothing of ours needs it, and refusing it avoids judging modulus sizes.
///
/// rcgen names a CSR's key by the CSR's *signature* algorithm, so the key itself
/// (`subjectPublicKeyInfo`: key type and curve) is checked against it in [`key_algorithm`]:
/// each key is accepted with exactly one signature algorithm, the one rcgen writes it as.
static ACCEPTED_KEYS: [&SignatureAlgorithm; 3] = [
    &rcgen::PKCS_ECDSA_P256_SHA256,
    &rcgen::PKCS_ECDSA_P384_SHA384,
    &rcgen::PKCS_ED25519,
];

/// Why a certificate was not issued, or the CA could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CaError {
    /// The CSR is not PEM/DER, or its signature does not verify (no proof of possession).
    #[error("certificate signing request is malformed or its signature does not verify")]
    BadCsr,
    /// The CSR's key algorithm is not accepted.
    #[error(
        "certificate signing request uses a key type, or a key and signature hash, that is not \
         accepted (use ECDSA P-256 with SHA-256)"
    )]
    KeyType,
    /// The CSR asks for names or identities this route does not grant.
    #[error("certificate signing request asks for names this request does not grant")]
    ForeignNames,
    /// The PEM files of a brought-in CA do not form a usable CA.
    #[error("CA certificate or key is unusable: {0}")]
    BadCa(&'static str),
    /// Signing failed (should not happen with a valid key).
    #[error("signing failed")]
    Signing(#[source] rcgen::Error),
}

/// Default lifetimes per certificate kind (design: user 12 h, agent 1 year, bridge 24 h,
/// session 60 s to establish).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lifetimes {
    /// User certificates.
    pub user: Duration,
    /// Agent certificates (renewed at half-life).
    pub agent: Duration,
    /// Bridge certificates (renewed at half-life).
    pub bridge: Duration,
    /// Session certificates: time to *establish* a tunnel.
    pub session: Duration,
}

impl Default for Lifetimes {
    fn default() -> Self {
        Self {
            user: Duration::from_secs(12 * 3600),
            agent: Duration::from_secs(365 * 24 * 3600),
            bridge: Duration::from_secs(24 * 3600),
            session: Duration::from_secs(60),
        }
    }
}

impl Lifetimes {
    /// The lifetime for an identity's kind.
    pub fn for_identity(&self, identity: &Identity) -> Duration {
        match identity {
            Identity::User { .. } => self.user,
            Identity::Agent { .. } => self.agent,
            Identity::Bridge { .. } => self.bridge,
            Identity::Client { .. } => self.session,
        }
    }
}

/// A certificate just issued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issued {
    /// PEM of the certificate.
    pub pem: String,
    /// Serial number, lower-case hex (what revocation lists name).
    pub serial: String,
    /// SHA-256 of the DER, lower-case hex (revocation may name it instead).
    pub fingerprint: String,
    /// End of validity.
    pub not_after: OffsetDateTime,
}

/// The CA certificate and its signing key.
pub struct Authority {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
    key_pem: String,
}

impl fmt::Debug for Authority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the key.
        f.debug_struct("Authority")
            .field("cert_pem", &self.cert_pem)
            .finish_non_exhaustive()
    }
}

impl Authority {
    /// Generates a new CA (ECDSA P-256) named `name`, valid for ten years from `now`.
    ///
    /// # Errors
    ///
    /// [`CaError::Signing`] if key generation or self-signing fails.
    pub fn generate(name: &str, now: OffsetDateTime) -> Result<Self, CaError> {
        let key = KeyPair::generate().map_err(CaError::Signing)?;
        let mut params = CertificateParams::default();
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.distinguished_name.push(DnType::CommonName, name);
        params.not_before = now - CLOCK_SKEW;
        params.not_after = now + CA_LIFETIME;
        params.serial_number = Some(SerialNumber::from(random_serial()?.to_vec()));
        let cert = params.self_signed(&key).map_err(CaError::Signing)?;
        let cert_pem = cert.pem();
        let key_pem = key.serialize_pem();
        Ok(Self {
            issuer: Issuer::new(params, key),
            cert_pem,
            key_pem,
        })
    }

    /// Loads a CA from PEM ("bring your own CA", or the one persisted in the store).
    ///
    /// # Errors
    ///
    /// [`CaError::BadCa`] when the certificate is not a CA, or the key is not its key.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, CaError> {
        let key = KeyPair::from_pem(key_pem)
            .map_err(|_| CaError::BadCa("key is not a PEM private key"))?;
        let cert_der = CertificateDer::from_pem_slice(cert_pem.as_bytes())
            .map_err(|_| CaError::BadCa("certificate is not PEM"))?;
        let (is_ca, public_key) =
            inspect(&cert_der).ok_or(CaError::BadCa("certificate does not parse"))?;
        if !is_ca {
            return Err(CaError::BadCa("certificate is not a CA (basicConstraints)"));
        }
        if public_key != key.public_key_raw() {
            return Err(CaError::BadCa("key does not belong to the certificate"));
        }
        let issuer = Issuer::from_ca_cert_der(&cert_der, key)
            .map_err(|_| CaError::BadCa("certificate does not parse"))?;
        Ok(Self {
            issuer,
            cert_pem: cert_pem.to_owned(),
            key_pem: key_pem.to_owned(),
        })
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA key, PEM: only for persisting it (encrypted) in the store.
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// Issues a certificate for `identity` to the holder of the key in `csr_pem`.
    ///
    /// `dns_name` is added as a DNS SAN (bridges: `<n>.bridge.<tunnel-domain>`), and makes the
    /// certificate usable as a TLS server certificate too; so does being an agent's (the
    /// agent is the server of the end-to-end session with a client).
    ///
    /// # Errors
    ///
    /// [`CaError::BadCsr`], [`CaError::KeyType`] or [`CaError::ForeignNames`] for a CSR that
    /// does not fit; [`CaError::Signing`] if signing fails.
    pub fn issue(
        &self,
        csr_pem: &str,
        identity: &Identity,
        dns_name: Option<&HostName>,
        lifetime: Duration,
        now: OffsetDateTime,
    ) -> Result<Issued, CaError> {
        let mut sans: Vec<SanType> = Vec::new();
        for uri in identity.uris() {
            sans.push(SanType::URI(uri.try_into().map_err(CaError::Signing)?));
        }
        let common_name = format!("bamf {}", identity.kind());
        let server = dns_name.is_some() || matches!(identity, Identity::Agent { .. });
        self.sign(csr_pem, sans, dns_name, server, &common_name, lifetime, now)
    }

    /// Issues the API's own TLS server certificate: only DNS names, no identity.
    ///
    /// # Errors
    ///
    /// As [`Authority::issue`].
    pub fn issue_api_server(
        &self,
        csr_pem: &str,
        hosts: &[HostName],
        lifetime: Duration,
        now: OffsetDateTime,
    ) -> Result<Issued, CaError> {
        let (first, rest) = hosts.split_first().ok_or(CaError::BadCa("no host name"))?;
        let mut sans = Vec::new();
        for host in rest {
            sans.push(SanType::DnsName(
                host.as_str().try_into().map_err(CaError::Signing)?,
            ));
        }
        self.sign(csr_pem, sans, Some(first), true, "bamf api", lifetime, now)
    }

    /// Checks the CSR, then signs its key with exactly `sans` (plus `dns_name`), for TLS
    /// clients and, when `server`, servers.
    #[allow(clippy::too_many_arguments)]
    fn sign(
        &self,
        csr_pem: &str,
        mut sans: Vec<SanType>,
        dns_name: Option<&HostName>,
        server: bool,
        common_name: &str,
        lifetime: Duration,
        now: OffsetDateTime,
    ) -> Result<Issued, CaError> {
        let der =
            rustls_pki_types::CertificateSigningRequestDer::from_pem_slice(csr_pem.as_bytes())
                .map_err(|_| CaError::BadCsr)?;
        let algorithm = key_algorithm(der.as_ref())?;
        // Parsing verifies the CSR's signature: the requester holds the private key.
        let csr = CertificateSigningRequestParams::from_der(&der).map_err(|_| CaError::BadCsr)?;
        if !ACCEPTED_KEYS.contains(&algorithm) || csr.public_key.algorithm() != algorithm {
            return Err(CaError::KeyType);
        }
        if let Some(name) = dns_name {
            sans.push(SanType::DnsName(
                name.as_str().try_into().map_err(CaError::Signing)?,
            ));
        }
        // What the CSR asks for must be a subset of what we grant.
        if !csr
            .params
            .subject_alt_names
            .iter()
            .all(|asked| sans.contains(asked))
        {
            return Err(CaError::ForeignNames);
        }

        let mut params = CertificateParams::default();
        params.subject_alt_names = sans;
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        if server {
            params
                .extended_key_usages
                .push(ExtendedKeyUsagePurpose::ServerAuth);
        }
        params.use_authority_key_identifier_extension = true;
        params.not_before = now - backdating(lifetime);
        params.not_after = now + lifetime;
        let serial = random_serial()?;
        params.serial_number = Some(SerialNumber::from(serial.to_vec()));
        let cert = params
            .signed_by(&csr.public_key, &self.issuer)
            .map_err(CaError::Signing)?;
        Ok(Issued {
            fingerprint: fingerprint(cert.der()),
            pem: cert.pem(),
            serial: bamf_proto::hex::encode(&serial),
            not_after: params.not_after,
        })
    }
}

/// The key a CSR is for, as a session's **key id**: lower-case hex SHA-256 of the raw public
/// key (the subject public key's bits). Parsing verifies the CSR's signature, so whoever
/// sent it holds the private key.
///
/// # Errors
///
/// [`CaError::BadCsr`].
pub fn csr_key_id(csr_pem: &str) -> Result<String, CaError> {
    use rcgen::PublicKeyData;
    let der = rustls_pki_types::CertificateSigningRequestDer::from_pem_slice(csr_pem.as_bytes())
        .map_err(|_| CaError::BadCsr)?;
    let csr = CertificateSigningRequestParams::from_der(&der).map_err(|_| CaError::BadCsr)?;
    Ok(key_id(csr.public_key.der_bytes()))
}

/// A raw public key's key id (see [`csr_key_id`]).
pub fn key_id(raw_public_key: &[u8]) -> String {
    bamf_proto::hex::encode(ring::digest::digest(&ring::digest::SHA256, raw_public_key).as_ref())
}

/// SHA-256 of a DER certificate, lower-case hex.
pub fn fingerprint(der: &[u8]) -> String {
    bamf_proto::hex::encode(ring::digest::digest(&ring::digest::SHA256, der).as_ref())
}

/// The DER of the first certificate in a PEM text (to compare certificates, not texts).
pub fn pem_der(pem: &str) -> Option<Vec<u8>> {
    CertificateDer::from_pem_slice(pem.as_bytes())
        .ok()
        .map(|c| c.to_vec())
}

/// 16 random bytes, top bit clear so the DER integer stays positive and 16 bytes long.
fn random_serial() -> Result<[u8; 16], CaError> {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| CaError::Signing(rcgen::Error::RingUnspecified))?;
    bytes[0] &= 0x7f;
    bytes[0] |= 0x01;
    Ok(bytes)
}

/// The algorithm a CSR's key is used with, from its key type and curve, if the CSR's own
/// signature uses that same algorithm. A P-384 key signed with SHA-256, say, is refused: rcgen
/// would write its key as P-256 and issue a certificate whose key does not parse.
fn key_algorithm(csr_der: &[u8]) -> Result<&'static SignatureAlgorithm, CaError> {
    use x509_parser::certification_request::X509CertificationRequest;
    use x509_parser::oid_registry::{
        OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_SIG_ECDSA_WITH_SHA256,
        OID_SIG_ECDSA_WITH_SHA384, OID_SIG_ED25519,
    };
    use x509_parser::prelude::FromDer;
    let (_, csr) = X509CertificationRequest::from_der(csr_der).map_err(|_| CaError::BadCsr)?;
    let key = &csr.certification_request_info.subject_pki.algorithm;
    let signature = &csr.signature_algorithm.algorithm;
    let curve = key.parameters.as_ref().and_then(|p| p.as_oid().ok());
    let (algorithm, expected_signature) = if key.algorithm == OID_SIG_ED25519 {
        (&rcgen::PKCS_ED25519, OID_SIG_ED25519)
    } else if key.algorithm == OID_KEY_TYPE_EC_PUBLIC_KEY && curve == Some(OID_EC_P256) {
        (&rcgen::PKCS_ECDSA_P256_SHA256, OID_SIG_ECDSA_WITH_SHA256)
    } else if key.algorithm == OID_KEY_TYPE_EC_PUBLIC_KEY && curve == Some(OID_NIST_EC_P384) {
        (&rcgen::PKCS_ECDSA_P384_SHA384, OID_SIG_ECDSA_WITH_SHA384)
    } else {
        return Err(CaError::KeyType);
    };
    if *signature != expected_signature {
        return Err(CaError::KeyType);
    }
    Ok(algorithm)
}

/// Whether a DER certificate is a CA, and its subject public key (the BIT STRING's contents).
fn inspect(cert: &CertificateDer<'_>) -> Option<(bool, Vec<u8>)> {
    use x509_parser::prelude::FromDer;
    let (_, parsed) = x509_parser::certificate::X509Certificate::from_der(cert).ok()?;
    Some((
        parsed.is_ca(),
        parsed.public_key().subject_public_key.data.to_vec(),
    ))
}

#[cfg(test)]
mod tests;
