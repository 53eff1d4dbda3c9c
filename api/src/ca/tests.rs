use std::time::Duration;

use bamf_proto::san::Identity;
use rcgen::{CertificateParams, KeyPair};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use super::*;

const AGENT: &str = "0123abcd-0000-4000-8000-00000000cafe";
const SESSION: &str = "6f1c2d3e-4b5a-4c6d-8e7f-0a1b2c3d4e5f";

fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

/// A CSR for a fresh P-256 key asking for `names`: `bamf://…` as URI SANs, the rest as DNS.
fn csr(names: &[&str]) -> String {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::default();
    for name in names {
        let text = (*name).to_owned().try_into().unwrap();
        params
            .subject_alt_names
            .push(if name.starts_with("bamf://") {
                SanType::URI(text)
            } else {
                SanType::DnsName(text)
            });
    }
    params.serialize_request(&key).unwrap().pem().unwrap()
}

fn der(pem: &str) -> CertificateDer<'static> {
    CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()
}

/// Verifies `leaf` against `ca` at `at` for client (or server) auth, the way the bridge and
/// the API will, and returns the identity its SAN URIs carry.
fn verify(ca: &str, leaf: &str, at: OffsetDateTime, server: bool) -> Result<Identity, String> {
    let ca_der = der(ca);
    let anchor = webpki::anchor_from_trusted_cert(&ca_der).map_err(|e| e.to_string())?;
    let leaf_der = der(leaf);
    let ee = webpki::EndEntityCert::try_from(&leaf_der).map_err(|e| e.to_string())?;
    let algs = rustls::crypto::ring::default_provider()
        .signature_verification_algorithms
        .all;
    let time = UnixTime::since_unix_epoch(Duration::from_secs(
        u64::try_from(at.unix_timestamp()).unwrap(),
    ));
    let usage = if server {
        webpki::KeyUsage::server_auth()
    } else {
        webpki::KeyUsage::client_auth()
    };
    ee.verify_for_usage(algs, &[anchor], &[], time, usage, None, None)
        .map_err(|e| e.to_string())?;
    let uris: Vec<String> = ee.valid_uri_names().map(str::to_owned).collect();
    Identity::from_uris(uris.iter().map(String::as_str)).map_err(|e| e.to_string())
}

#[test]
fn issued_certificates_chain_to_the_ca_and_carry_exactly_their_identity() {
    let ca = Authority::generate("BAMF test CA", now()).unwrap();
    let lifetimes = Lifetimes::default();
    let identities = [
        Identity::User {
            user: "alice".parse().unwrap(),
        },
        Identity::Agent {
            agent: AGENT.parse().unwrap(),
        },
        Identity::Client {
            session: SESSION.parse().unwrap(),
            user: "alice".parse().unwrap(),
            resource: "db".parse().unwrap(),
            agent: AGENT.parse().unwrap(),
            bridge: 2,
        },
    ];
    for identity in identities {
        let issued = ca
            .issue(
                &csr(&[]),
                &identity,
                None,
                lifetimes.for_identity(&identity),
                now(),
            )
            .unwrap();
        assert_eq!(
            verify(ca.cert_pem(), &issued.pem, now(), false),
            Ok(identity.clone())
        );
        // Only an agent's is a server certificate too (the end-to-end session's server).
        assert_eq!(
            verify(ca.cert_pem(), &issued.pem, now(), true).is_ok(),
            matches!(identity, Identity::Agent { .. }),
            "{identity:?}"
        );
        assert_eq!(issued.serial.len(), 32);
    }
}

#[test]
fn a_bridge_certificate_names_the_bridge_and_serves_tls() {
    let ca = Authority::generate("BAMF test CA", now()).unwrap();
    let name: HostName = "3.bridge.tunnel.test".parse().unwrap();
    let identity = Identity::Bridge { ordinal: 3 };
    let issued = ca
        .issue(
            &csr(&[]),
            &identity,
            Some(&name),
            Lifetimes::default().bridge,
            now(),
        )
        .unwrap();
    assert_eq!(
        verify(ca.cert_pem(), &issued.pem, now(), true),
        Ok(identity)
    );
    let leaf = der(&issued.pem);
    let ee = webpki::EndEntityCert::try_from(&leaf).unwrap();
    ee.verify_is_valid_for_subject_name(&ServerName::try_from("3.bridge.tunnel.test").unwrap())
        .unwrap();
    assert!(
        ee.verify_is_valid_for_subject_name(&ServerName::try_from("4.bridge.tunnel.test").unwrap())
            .is_err()
    );
}

#[test]
fn lifetimes_end_where_configured() {
    let ca = Authority::generate("BAMF test CA", now()).unwrap();
    let identity = Identity::Client {
        session: SESSION.parse().unwrap(),
        user: "alice".parse().unwrap(),
        resource: "db".parse().unwrap(),
        agent: AGENT.parse().unwrap(),
        bridge: 0,
    };
    let issued_at = now();
    let issued = ca
        .issue(
            &csr(&[]),
            &identity,
            None,
            Duration::from_secs(60),
            issued_at,
        )
        .unwrap();
    assert_eq!(issued.not_after, issued_at + Duration::from_secs(60));
    assert!(
        verify(
            ca.cert_pem(),
            &issued.pem,
            issued_at + Duration::from_secs(55),
            false
        )
        .is_ok()
    );
    let expired = verify(
        ca.cert_pem(),
        &issued.pem,
        issued_at + Duration::from_secs(62),
        false,
    );
    assert!(expired.unwrap_err().contains("Expired"));
}

/// A certificate is backdated a minute for clocks that run behind, but never so far that its
/// half-life, when its holder renews it, has passed when it is issued.
#[test]
fn a_short_lived_certificates_half_life_is_ahead_when_it_is_issued() {
    let ca = Authority::generate("BAMF test CA", now()).unwrap();
    let identity = Identity::Agent {
        agent: AGENT.parse().unwrap(),
    };
    let issued_at = now();
    let valid_from = |lifetime: u64, before: u64| {
        let issued = ca
            .issue(
                &csr(&[]),
                &identity,
                None,
                Duration::from_secs(lifetime),
                issued_at,
            )
            .unwrap();
        verify(
            ca.cert_pem(),
            &issued.pem,
            issued_at - Duration::from_secs(before),
            false,
        )
        .is_ok()
    };
    // An hour: a minute of backdating.
    assert!(valid_from(3600, 59));
    assert!(!valid_from(3600, 61));
    // 20 s: a quarter of its life, so its half-life is 7.5 s after issue.
    assert!(valid_from(20, 4));
    assert!(!valid_from(20, 6), "backdated past its half-life");
}

#[test]
fn the_csr_decides_nothing() {
    let ca = Authority::generate("BAMF test CA", now()).unwrap();
    let user = Identity::User {
        user: "alice".parse().unwrap(),
    };
    let lifetime = Lifetimes::default().user;
    // A user asking for a bridge DNS name, or for a foreign identity URI: refused.
    for asked in [
        &["0.bridge.tunnel.test"][..],
        &["bamf://kind/bridge"],
        &["bamf://user/root"],
    ] {
        let refused = ca.issue(&csr(asked), &user, None, lifetime, now());
        assert!(
            matches!(refused, Err(CaError::ForeignNames)),
            "{asked:?}: {refused:?}"
        );
    }
    // Asking for exactly what is granted is fine.
    assert!(
        ca.issue(
            &csr(&["bamf://kind/user", "bamf://user/alice"]),
            &user,
            None,
            lifetime,
            now()
        )
        .is_ok()
    );
}

#[test]
fn a_csr_must_prove_possession_and_use_an_accepted_key() {
    let ca = Authority::generate("BAMF test CA", now()).unwrap();
    let user = Identity::User {
        user: "alice".parse().unwrap(),
    };
    let lifetime = Lifetimes::default().user;
    // Change one base64 character inside the signature (the end of the PEM body): the CSR
    // no longer proves possession of the key.
    let good = csr(&[]);
    let body_end = good.rfind("\n-----END").unwrap();
    let at = good[..body_end]
        .rfind(|c: char| c.is_ascii_alphanumeric())
        .unwrap()
        - 4;
    let flipped = if &good[at..=at] == "A" { "B" } else { "A" };
    let tampered = format!("{}{flipped}{}", &good[..at], &good[at + 1..]);
    assert!(matches!(
        ca.issue(&tampered, &user, None, lifetime, now()),
        Err(CaError::BadCsr)
    ));
    assert!(matches!(
        ca.issue("not a csr", &user, None, lifetime, now()),
        Err(CaError::BadCsr)
    ));
    // Ed25519 is accepted; RSA (made by openssl) is not.
    let ed = KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    let ed_csr = CertificateParams::default()
        .serialize_request(&ed)
        .unwrap()
        .pem()
        .unwrap();
    assert!(ca.issue(&ed_csr, &user, None, lifetime, now()).is_ok());
    let rsa = std::process::Command::new("openssl")
        .args([
            "req",
            "-new",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=x",
            "-keyout",
            "/dev/null",
        ])
        .output()
        .expect("openssl runs");
    let rsa_csr = String::from_utf8(rsa.stdout).unwrap();
    assert!(
        matches!(
            ca.issue(&rsa_csr, &user, None, lifetime, now()),
            Err(CaError::KeyType)
        ),
        "{rsa_csr}"
    );
}

#[test]
fn a_ca_brought_in_as_pem_keeps_issuing_and_a_wrong_key_is_refused() {
    let original = Authority::generate("BAMF test CA", now()).unwrap();
    let loaded = Authority::from_pem(original.cert_pem(), original.key_pem()).unwrap();
    let user = Identity::User {
        user: "bob".parse().unwrap(),
    };
    let issued = loaded
        .issue(&csr(&[]), &user, None, Lifetimes::default().user, now())
        .unwrap();
    assert_eq!(
        verify(original.cert_pem(), &issued.pem, now(), false),
        Ok(user)
    );
    let other = Authority::generate("another CA", now()).unwrap();
    assert!(matches!(
        Authority::from_pem(original.cert_pem(), other.key_pem()),
        Err(CaError::BadCa(_))
    ));
    // A certificate from another CA does not verify against ours.
    let foreign = other
        .issue(
            &csr(&[]),
            &Identity::User {
                user: "eve".parse().unwrap(),
            },
            None,
            Duration::from_secs(60),
            now(),
        )
        .unwrap();
    assert!(verify(original.cert_pem(), &foreign.pem, now(), false).is_err());
    // A leaf is not a CA.
    assert!(matches!(
        Authority::from_pem(&issued.pem, original.key_pem()),
        Err(CaError::BadCa(_))
    ));
    // The key never shows in Debug output.
    assert!(!format!("{loaded:?}").contains("PRIVATE KEY"));
}

/// A CSR made by openssl with `key_args` (an `openssl req -newkey` argument) and `digest`.
fn openssl_csr(key_args: &[&str], digest: Option<&str>) -> String {
    let dir = std::env::temp_dir().join(format!(
        "bamf-ca-csr-{}-{}",
        std::process::id(),
        key_args.join("-").replace(['/', ':'], "_")
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let key = dir.join("key.pem");
    let made = std::process::Command::new("openssl")
        .arg("genpkey")
        .args(key_args)
        .arg("-out")
        .arg(&key)
        .output()
        .expect("openssl runs");
    assert!(made.status.success(), "{made:?}");
    let mut req = std::process::Command::new("openssl");
    req.args(["req", "-new", "-subj", "/CN=x", "-key"])
        .arg(&key);
    if let Some(digest) = digest {
        req.arg(format!("-{digest}"));
    }
    let out = req.output().expect("openssl runs");
    assert!(out.status.success(), "{out:?}");
    std::fs::remove_dir_all(&dir).unwrap();
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn each_key_is_signed_only_with_its_own_hash_and_issued_keys_parse() {
    use x509_parser::prelude::FromDer;
    let ca = Authority::generate("BAMF test CA", now()).unwrap();
    let user = Identity::User {
        user: "alice".parse().unwrap(),
    };
    let lifetime = Lifetimes::default().user;
    let p256 = ["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"];
    let p384 = ["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-384"];
    let p521 = ["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-521"];
    let cases: [(&[&str], Option<&str>, bool); 11] = [
        (&p256, Some("sha256"), true),
        (&p256, Some("sha384"), false),
        (&p256, Some("sha512"), false),
        (&p384, Some("sha256"), false),
        (&p384, Some("sha384"), true),
        (&p384, Some("sha512"), false),
        (&p521, Some("sha256"), false),
        (&p521, Some("sha384"), false),
        (&p521, Some("sha512"), false),
        (&["-algorithm", "ED25519"], None, true),
        (&["-algorithm", "ED448"], None, false),
    ];
    for (key, digest, accepted) in cases {
        let csr_pem = openssl_csr(key, digest);
        let result = ca.issue(&csr_pem, &user, None, lifetime, now());
        let what = format!("{key:?} {digest:?}");
        if !accepted {
            assert!(
                matches!(result, Err(CaError::KeyType)),
                "{what}: {result:?}"
            );
            continue;
        }
        let issued = result.unwrap_or_else(|e| panic!("{what}: {e}"));
        // The certificate carries the CSR's key exactly, under an algorithm that parses.
        let cert_der = der(&issued.pem);
        let (_, cert) = x509_parser::certificate::X509Certificate::from_der(&cert_der).unwrap();
        let csr_der =
            rustls_pki_types::CertificateSigningRequestDer::from_pem_slice(csr_pem.as_bytes())
                .unwrap();
        let (_, request) =
            x509_parser::certification_request::X509CertificationRequest::from_der(&csr_der)
                .unwrap();
        assert_eq!(
            cert.public_key().raw,
            request.certification_request_info.subject_pki.raw,
            "{what}"
        );
        assert!(cert.public_key().parsed().is_ok(), "{what}");
        // And openssl, an independent parser, reads the key too.
        let path = std::env::temp_dir().join(format!("bamf-ca-issued-{}.pem", std::process::id()));
        std::fs::write(&path, &issued.pem).unwrap();
        let read = std::process::Command::new("openssl")
            .args(["x509", "-noout", "-pubkey", "-in"])
            .arg(&path)
            .output()
            .unwrap();
        std::fs::remove_file(&path).unwrap();
        assert!(read.status.success(), "{what}: {read:?}");
        let pubkey = String::from_utf8(read.stdout).unwrap();
        let check = std::process::Command::new("openssl")
            .args(["pkey", "-pubin", "-noout"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut child| {
                use std::io::Write;
                child.stdin.take().unwrap().write_all(pubkey.as_bytes())?;
                child.wait_with_output()
            })
            .unwrap();
        assert!(check.status.success(), "{what}: {check:?}");
    }
}
