//! The ID-token validator's refusals, each with keys made in the test.

use super::*;
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, Ed25519KeyPair, KeyPair, RsaKeyPair};
use serde_json::json;

const ISSUER: &str = "https://idp.example";
const CLIENT: &str = "bamf";
const NONCE: &str = "n-0S6_WzA2Mj";
const NOW: i64 = 1_800_000_000;

fn enc(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// A signer: a key pair of one algorithm, its JWK, and a key id.
enum Signer {
    Es256(EcdsaKeyPair),
    Ed(Ed25519KeyPair),
    Rsa(RsaKeyPair, Alg),
}

impl Signer {
    fn es256() -> Self {
        let rng = SystemRandom::new();
        let alg = &signature::ECDSA_P256_SHA256_FIXED_SIGNING;
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(alg, &rng).unwrap();
        Self::Es256(EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), &rng).unwrap())
    }

    fn ed25519() -> Self {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
        Self::Ed(Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap())
    }

    /// ring does not generate RSA keys: openssl does (it is on every test machine); with
    /// `-outform DER` it writes PKCS#1, which `from_der` reads.
    fn rsa(alg: Alg) -> Self {
        let out = std::process::Command::new("openssl")
            .args([
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
                "-outform",
                "DER",
            ])
            .output()
            .expect("openssl runs");
        assert!(out.status.success(), "openssl genpkey failed");
        Self::Rsa(RsaKeyPair::from_der(&out.stdout).unwrap(), alg)
    }

    fn alg(&self) -> Alg {
        match self {
            Self::Es256(_) => Alg::ES256,
            Self::Ed(_) => Alg::EdDSA,
            Self::Rsa(_, alg) => *alg,
        }
    }

    fn jwk(&self, kid: &str) -> serde_json::Value {
        match self {
            Self::Es256(k) => {
                let p = k.public_key().as_ref();
                json!({"kty": "EC", "crv": "P-256", "kid": kid, "use": "sig",
                       "x": enc(&p[1..33]), "y": enc(&p[33..65])})
            }
            Self::Ed(k) => {
                json!({"kty": "OKP", "crv": "Ed25519", "kid": kid, "x": enc(k.public_key().as_ref())})
            }
            Self::Rsa(k, _) => {
                let c = ring::rsa::PublicKeyComponents::<Vec<u8>>::from(k.public());
                json!({"kty": "RSA", "kid": kid, "n": enc(&c.n), "e": enc(&c.e)})
            }
        }
    }

    fn sign(&self, input: &[u8]) -> Vec<u8> {
        let rng = SystemRandom::new();
        match self {
            Self::Es256(k) => k.sign(&rng, input).unwrap().as_ref().to_vec(),
            Self::Ed(k) => k.sign(input).as_ref().to_vec(),
            Self::Rsa(k, alg) => {
                let padding: &dyn signature::RsaEncoding = match alg {
                    Alg::RS256 => &signature::RSA_PKCS1_SHA256,
                    Alg::PS256 => &signature::RSA_PSS_SHA256,
                    _ => unreachable!("tests sign RS256 and PS256"),
                };
                let mut sig = vec![0; k.public().modulus_len()];
                k.sign(padding, &rng, input, &mut sig).unwrap();
                sig
            }
        }
    }

    fn token(&self, kid: &str, claims: &serde_json::Value) -> String {
        let header = json!({"alg": self.alg().name(), "kid": kid, "typ": "JWT"});
        let input = format!(
            "{}.{}",
            enc(header.to_string().as_bytes()),
            enc(claims.to_string().as_bytes())
        );
        let sig = self.sign(input.as_bytes());
        format!("{input}.{}", enc(&sig))
    }
}

fn claims() -> serde_json::Value {
    json!({"iss": ISSUER, "sub": "248289761001", "aud": CLIENT, "exp": NOW + 300,
           "iat": NOW - 5, "nonce": NONCE, "groups": ["ops", "dev"], "email": "a@example.com"})
}

fn expect() -> Expect<'static> {
    Expect {
        issuer: ISSUER,
        client_id: CLIENT,
        nonce: Some(NONCE),
        now: NOW,
        skew: 60,
    }
}

fn set(keys: &[serde_json::Value]) -> JwkSet {
    JwkSet::parse(json!({ "keys": keys }).to_string().as_bytes()).unwrap()
}

fn check(signer: &Signer, token: &str) -> Result<Claims, TokenError> {
    validate(token, &set(&[signer.jwk("k1")]), &Alg::ALL, &expect())
}

fn with(change: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>)) -> serde_json::Value {
    let mut c = claims();
    change(c.as_object_mut().unwrap());
    c
}

#[test]
fn a_valid_token_of_each_algorithm_is_accepted() {
    for signer in [
        Signer::es256(),
        Signer::ed25519(),
        Signer::rsa(Alg::RS256),
        Signer::rsa(Alg::PS256),
    ] {
        let got = check(&signer, &signer.token("k1", &claims()))
            .unwrap_or_else(|e| panic!("{}: {e}", signer.alg()));
        assert_eq!(got.sub, "248289761001");
        assert_eq!(got.strings("groups"), ["ops", "dev"]);
        assert_eq!(got.string("email"), Some("a@example.com"));
    }
}

#[test]
fn wrong_audience_issuer_and_authorized_party_are_refused() {
    let s = Signer::es256();
    let cases = [
        (
            with(|c| drop(c.insert("aud".into(), json!("other")))),
            TokenError::Audience,
        ),
        (
            with(|c| drop(c.insert("aud".into(), json!(["other", "x"])))),
            TokenError::Audience,
        ),
        // Several audiences need azp naming us.
        (
            with(|c| drop(c.insert("aud".into(), json!([CLIENT, "other"])))),
            TokenError::Audience,
        ),
        (
            with(|c| drop(c.insert("azp".into(), json!("other")))),
            TokenError::Audience,
        ),
        (
            with(|c| drop(c.insert("iss".into(), json!("https://evil.example")))),
            TokenError::Issuer,
        ),
        (
            with(|c| drop(c.insert("iss".into(), json!(format!("{ISSUER}/"))))),
            TokenError::Issuer,
        ),
        (
            with(|c| drop(c.remove("aud"))),
            TokenError::Malformed("aud"),
        ),
    ];
    for (claims, want) in cases {
        assert_eq!(check(&s, &s.token("k1", &claims)), Err(want), "{claims}");
    }
    let ok = with(|c| {
        c.insert("aud".into(), json!([CLIENT, "other"]));
        c.insert("azp".into(), json!(CLIENT));
    });
    assert!(check(&s, &s.token("k1", &ok)).is_ok());
}

#[test]
fn expiry_and_not_before_allow_only_the_skew() {
    let s = Signer::ed25519();
    let at = |name: &str, t: i64| with(|c| drop(c.insert(name.into(), json!(t))));
    assert_eq!(
        check(&s, &s.token("k1", &at("exp", NOW - 61))),
        Err(TokenError::Expired)
    );
    assert_eq!(
        check(&s, &s.token("k1", &at("exp", NOW - 60))),
        Err(TokenError::Expired)
    );
    assert!(
        check(&s, &s.token("k1", &at("exp", NOW - 59))).is_ok(),
        "within the skew"
    );
    assert_eq!(
        check(&s, &s.token("k1", &at("nbf", NOW + 61))),
        Err(TokenError::NotYetValid)
    );
    assert!(check(&s, &s.token("k1", &at("nbf", NOW + 59))).is_ok());
    assert_eq!(
        check(&s, &s.token("k1", &at("iat", NOW + 3600))),
        Err(TokenError::NotYetValid)
    );
    let no_exp = with(|c| drop(c.remove("exp")));
    assert_eq!(
        check(&s, &s.token("k1", &no_exp)),
        Err(TokenError::Malformed("exp"))
    );
    let text_exp = with(|c| drop(c.insert("exp".into(), json!("tomorrow"))));
    assert_eq!(
        check(&s, &s.token("k1", &text_exp)),
        Err(TokenError::Malformed("exp"))
    );
}

#[test]
fn a_missing_or_other_nonce_is_refused() {
    let s = Signer::es256();
    let other = with(|c| drop(c.insert("nonce".into(), json!("replayed-from-another-flow"))));
    assert_eq!(check(&s, &s.token("k1", &other)), Err(TokenError::Nonce));
    let none = with(|c| drop(c.remove("nonce")));
    assert_eq!(check(&s, &s.token("k1", &none)), Err(TokenError::Nonce));
}

#[test]
fn the_device_grant_expects_no_nonce_and_gets_none() {
    let s = Signer::es256();
    let device = Expect {
        nonce: None,
        ..expect()
    };
    let keys = set(&[s.jwk("k1")]);
    let without = with(|c| drop(c.remove("nonce")));
    assert!(validate(&s.token("k1", &without), &keys, &Alg::ALL, &device).is_ok());
    // A nonce where none was sent is another flow's token.
    assert_eq!(
        validate(&s.token("k1", &claims()), &keys, &Alg::ALL, &device),
        Err(TokenError::Nonce)
    );
}

#[test]
fn a_tampered_token_does_not_verify() {
    for s in [Signer::es256(), Signer::rsa(Alg::RS256)] {
        let token = s.token("k1", &claims());
        let parts: Vec<&str> = token.split('.').collect();
        // Another payload under the original signature: a user who adds a group.
        let forged = with(|c| drop(c.insert("groups".into(), json!(["admin"]))));
        let swapped = format!(
            "{}.{}.{}",
            parts[0],
            enc(forged.to_string().as_bytes()),
            parts[2]
        );
        assert_eq!(check(&s, &swapped), Err(TokenError::Signature));
        // One bit of the signature flipped.
        let mut sig = URL_SAFE_NO_PAD.decode(parts[2]).unwrap();
        sig[10] ^= 1;
        let flipped = format!("{}.{}.{}", parts[0], parts[1], enc(&sig));
        assert_eq!(check(&s, &flipped), Err(TokenError::Signature));
        // Signed by another key that claims the same key id.
        let other = if matches!(s, Signer::Es256(_)) {
            Signer::es256()
        } else {
            Signer::rsa(Alg::RS256)
        };
        assert_eq!(
            check(&s, &other.token("k1", &claims())),
            Err(TokenError::Signature)
        );
    }
}

#[test]
fn alg_none_and_hmac_with_the_public_key_are_refused() {
    let s = Signer::rsa(Alg::RS256);
    let payload = enc(claims().to_string().as_bytes());
    for alg in ["none", "None", "NONE"] {
        let header = enc(json!({"alg": alg, "kid": "k1"}).to_string().as_bytes());
        for sig in ["", "AAAA"] {
            let token = format!("{header}.{payload}.{sig}");
            assert!(
                matches!(check(&s, &token), Err(TokenError::Algorithm(_))),
                "alg {alg}"
            );
        }
    }
    // The classic confusion: HS256 with the provider's public key (its JWK, its DER) as the
    // HMAC secret.
    let Signer::Rsa(pair, _) = &s else {
        unreachable!()
    };
    let c = ring::rsa::PublicKeyComponents::<Vec<u8>>::from(pair.public());
    for secret in [
        pair.public().as_ref().to_vec(),
        c.n.clone(),
        s.jwk("k1").to_string().into_bytes(),
    ] {
        for alg in ["HS256", "HS384", "HS512"] {
            let header = enc(json!({"alg": alg, "kid": "k1"}).to_string().as_bytes());
            let input = format!("{header}.{payload}");
            let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &secret);
            let tag = ring::hmac::sign(&key, input.as_bytes());
            let token = format!("{input}.{}", enc(tag.as_ref()));
            assert_eq!(check(&s, &token), Err(TokenError::Algorithm(alg.into())));
        }
    }
    // Even a JWK set offering a symmetric key does not make HS256 verifiable: it is dropped.
    let keys = set(&[json!({"kty": "oct", "kid": "k1", "k": enc(b"secret"), "alg": "HS256"})]);
    assert!(keys.keys.is_empty());
}

#[test]
fn a_provider_limited_to_some_algorithms_refuses_the_others() {
    let s = Signer::es256();
    let token = s.token("k1", &claims());
    let keys = set(&[s.jwk("k1")]);
    assert_eq!(
        validate(&token, &keys, &[Alg::RS256], &expect()),
        Err(TokenError::Algorithm("ES256".into()))
    );
    // A key that says it is for RS256 does not verify ES256.
    let mut jwk = s.jwk("k1");
    jwk["alg"] = json!("RS256");
    assert_eq!(
        validate(&token, &set(&[jwk]), &Alg::ALL, &expect()),
        Err(TokenError::UnknownKey)
    );
}

#[test]
fn keys_are_found_by_id_and_an_unknown_id_is_reported() {
    let (a, b) = (Signer::es256(), Signer::ed25519());
    let keys = set(&[a.jwk("a"), b.jwk("b")]);
    assert!(validate(&b.token("b", &claims()), &keys, &Alg::ALL, &expect()).is_ok());
    assert_eq!(
        validate(&a.token("rotated", &claims()), &keys, &Alg::ALL, &expect()),
        Err(TokenError::UnknownKey)
    );
}

#[test]
fn junk_never_panics() {
    let keys = set(&[Signer::es256().jwk("k1")]);
    let long = "a".repeat(MAX_TOKEN + 1);
    for junk in [
        "",
        ".",
        "..",
        "...",
        "a.b.c",
        "a.b.c.d",
        "e30.e30.",
        "e30.e30.AAAA",
        "!!!.@@@.###",
        "eyJhbGciOiJFUzI1NiJ9.e30.AAAA",
        long.as_str(),
    ] {
        assert!(
            validate(junk, &keys, &Alg::ALL, &expect()).is_err(),
            "{junk}"
        );
    }
    for doc in [
        "",
        "{}",
        "[]",
        r#"{"keys": 1}"#,
        r#"{"keys": [1, "x", {"kty": "EC"}]}"#,
    ] {
        let _ = JwkSet::parse(doc.as_bytes());
    }
    let odd = set(&[
        json!({"kty": "EC", "crv": "P-256", "x": "AAAA", "y": "AAAA"}),
        json!({"kty": "RSA", "n": "", "e": "AQAB"}),
        json!({"kty": "OKP", "crv": "X25519", "x": enc(&[0; 32])}),
        json!({"kty": "RSA", "use": "enc", "n": enc(&[1; 256]), "e": "AQAB"}),
    ]);
    assert!(odd.keys.is_empty(), "{odd:?}");
}
