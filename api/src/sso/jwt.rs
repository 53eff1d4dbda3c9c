//! ID tokens: a compact JWS and the provider's JWK set parsed into typed values at the edge,
//! the signature verified with ring, and the claims checked against what the flow expects.
//!
//! Only asymmetric algorithms exist here ([`Alg`]): `none` and the `HS*` family cannot even
//! be named, and symmetric (`oct`) keys in a JWK set are dropped when it is parsed, so a
//! token "signed" with a provider's public key as an HMAC secret has nothing to verify
//! against. Nothing here panics on input: every length and field is checked.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::signature::{self, RsaPublicKeyComponents, UnparsedPublicKey};
use serde::Deserialize;

/// Largest ID token accepted.
pub const MAX_TOKEN: usize = 16 * 1024;
/// Most keys taken from a JWK set.
pub const MAX_KEYS: usize = 64;

/// A signature algorithm we verify (JWA names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[allow(clippy::upper_case_acronyms)]
pub enum Alg {
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    RS256,
    /// RSASSA-PKCS1-v1_5 with SHA-384.
    RS384,
    /// RSASSA-PKCS1-v1_5 with SHA-512.
    RS512,
    /// RSASSA-PSS with SHA-256.
    PS256,
    /// RSASSA-PSS with SHA-384.
    PS384,
    /// RSASSA-PSS with SHA-512.
    PS512,
    /// ECDSA P-256 with SHA-256.
    ES256,
    /// ECDSA P-384 with SHA-384.
    ES384,
    /// Ed25519.
    EdDSA,
}

impl Alg {
    /// Every algorithm we verify.
    pub const ALL: [Self; 9] = [
        Self::RS256,
        Self::RS384,
        Self::RS512,
        Self::PS256,
        Self::PS384,
        Self::PS512,
        Self::ES256,
        Self::ES384,
        Self::EdDSA,
    ];

    /// The JWA name.
    pub fn name(self) -> &'static str {
        match self {
            Self::RS256 => "RS256",
            Self::RS384 => "RS384",
            Self::RS512 => "RS512",
            Self::PS256 => "PS256",
            Self::PS384 => "PS384",
            Self::PS512 => "PS512",
            Self::ES256 => "ES256",
            Self::ES384 => "ES384",
            Self::EdDSA => "EdDSA",
        }
    }

    /// The algorithm of a JWA name; `None` for anything we do not verify (`none`, `HS256`, …).
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.name() == name)
    }

    fn rsa(self) -> Option<&'static signature::RsaParameters> {
        Some(match self {
            Self::RS256 => &signature::RSA_PKCS1_2048_8192_SHA256,
            Self::RS384 => &signature::RSA_PKCS1_2048_8192_SHA384,
            Self::RS512 => &signature::RSA_PKCS1_2048_8192_SHA512,
            Self::PS256 => &signature::RSA_PSS_2048_8192_SHA256,
            Self::PS384 => &signature::RSA_PSS_2048_8192_SHA384,
            Self::PS512 => &signature::RSA_PSS_2048_8192_SHA512,
            Self::ES256 | Self::ES384 | Self::EdDSA => return None,
        })
    }
}

impl std::fmt::Display for Alg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Why an ID token was refused. [`TokenError::reason`] is the stable word audited.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not a compact JWS, or a part is not what it must be.
    #[error("the ID token is malformed ({0})")]
    Malformed(&'static str),
    /// An algorithm we never accept, or one the provider is not allowed to use.
    #[error("the ID token's algorithm {0} is not allowed")]
    Algorithm(String),
    /// No key of the provider matches the token's key id and algorithm.
    #[error("no key of the provider matches the ID token")]
    UnknownKey,
    /// The signature does not verify.
    #[error("the ID token's signature does not verify")]
    Signature,
    /// `iss` is not the provider's issuer.
    #[error("the ID token is from another issuer")]
    Issuer,
    /// `aud` does not name us (or `azp` names another client).
    #[error("the ID token is for another audience")]
    Audience,
    /// `exp` has passed.
    #[error("the ID token has expired")]
    Expired,
    /// `nbf` or `iat` is in the future.
    #[error("the ID token is not valid yet")]
    NotYetValid,
    /// `nonce` is missing or not this flow's.
    #[error("the ID token's nonce is not this sign-in's")]
    Nonce,
}

impl TokenError {
    /// A stable word for the audit log.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Malformed(_) => "malformed",
            Self::Algorithm(_) => "algorithm",
            Self::UnknownKey => "unknown_key",
            Self::Signature => "signature",
            Self::Issuer => "issuer",
            Self::Audience => "audience",
            Self::Expired => "expired",
            Self::NotYetValid => "not_yet_valid",
            Self::Nonce => "nonce",
        }
    }
}

/// A JWS header, typed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// The algorithm.
    pub alg: Alg,
    /// The key id, when given.
    pub kid: Option<String>,
}

#[derive(Deserialize)]
struct RawHeader {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    crit: Option<serde_json::Value>,
}

/// A compact JWS, split and decoded, not yet verified.
#[derive(Debug)]
pub struct Jws {
    /// Its header.
    pub header: Header,
    signing_input: Vec<u8>,
    payload: Vec<u8>,
    signature: Vec<u8>,
}

fn b64(part: &str, what: &'static str) -> Result<Vec<u8>, TokenError> {
    URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| TokenError::Malformed(what))
}

/// A printable, bounded rendering of an algorithm name from the network (for errors).
fn shown(name: &str) -> String {
    name.chars()
        .take(16)
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '?' })
        .collect()
}

impl Jws {
    /// Splits and decodes `token`; refuses any algorithm outside `allowed` before anything
    /// else is looked at.
    ///
    /// # Errors
    ///
    /// [`TokenError::Malformed`], [`TokenError::Algorithm`].
    pub fn parse(token: &str, allowed: &[Alg]) -> Result<Self, TokenError> {
        if token.len() > MAX_TOKEN {
            return Err(TokenError::Malformed("too long"));
        }
        let mut parts = token.split('.');
        let (Some(h), Some(p), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed("not three parts"));
        };
        let raw: RawHeader = serde_json::from_slice(&b64(h, "header")?)
            .map_err(|_| TokenError::Malformed("header"))?;
        if raw.crit.is_some() {
            return Err(TokenError::Malformed("critical header parameters"));
        }
        let alg = Alg::parse(&raw.alg)
            .filter(|a| allowed.contains(a))
            .ok_or_else(|| TokenError::Algorithm(shown(&raw.alg)))?;
        let signature = b64(s, "signature")?;
        if signature.is_empty() {
            return Err(TokenError::Signature);
        }
        Ok(Self {
            header: Header { alg, kid: raw.kid },
            signing_input: format!("{h}.{p}").into_bytes(),
            payload: b64(p, "payload")?,
            signature,
        })
    }

    /// The key of `keys` this token names: by key id when the header has one, else the
    /// only key usable with the algorithm.
    pub fn key<'k>(&self, keys: &'k JwkSet) -> Option<&'k Jwk> {
        let mut usable = keys.keys.iter().filter(|k| k.usable_with(self.header.alg));
        match &self.header.kid {
            Some(kid) => usable.find(|k| k.kid.as_deref() == Some(kid.as_str())),
            None => {
                let first = usable.next()?;
                usable.next().is_none().then_some(first)
            }
        }
    }

    /// Verifies the signature with `key` and returns the payload.
    ///
    /// # Errors
    ///
    /// [`TokenError::UnknownKey`] when the key cannot serve the algorithm,
    /// [`TokenError::Signature`] when the signature does not verify.
    pub fn verify(&self, key: &Jwk) -> Result<&[u8], TokenError> {
        if !key.usable_with(self.header.alg) {
            return Err(TokenError::UnknownKey);
        }
        let (msg, sig) = (self.signing_input.as_slice(), self.signature.as_slice());
        let ok = match (&key.material, self.header.alg) {
            (KeyMaterial::Rsa { n, e }, alg) => alg.rsa().is_some_and(|params| {
                RsaPublicKeyComponents {
                    n: n.as_slice(),
                    e: e.as_slice(),
                }
                .verify(params, msg, sig)
                .is_ok()
            }),
            (KeyMaterial::P256(point), Alg::ES256) => {
                UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, point)
                    .verify(msg, sig)
                    .is_ok()
            }
            (KeyMaterial::P384(point), Alg::ES384) => {
                UnparsedPublicKey::new(&signature::ECDSA_P384_SHA384_FIXED, point)
                    .verify(msg, sig)
                    .is_ok()
            }
            (KeyMaterial::Ed25519(public), Alg::EdDSA) => {
                UnparsedPublicKey::new(&signature::ED25519, public)
                    .verify(msg, sig)
                    .is_ok()
            }
            _ => false,
        };
        if ok {
            Ok(&self.payload)
        } else {
            Err(TokenError::Signature)
        }
    }
}

/// A public key's material.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyMaterial {
    /// RSA modulus and exponent, big-endian without leading zeros.
    Rsa {
        /// Modulus.
        n: Vec<u8>,
        /// Exponent.
        e: Vec<u8>,
    },
    /// An uncompressed P-256 point (`04 || x || y`).
    P256(Vec<u8>),
    /// An uncompressed P-384 point.
    P384(Vec<u8>),
    /// An Ed25519 public key.
    Ed25519(Vec<u8>),
}

/// One signing key of a provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Jwk {
    /// Key id.
    pub kid: Option<String>,
    /// The one algorithm the key is for, when the set says so.
    pub alg: Option<Alg>,
    /// The key.
    pub material: KeyMaterial,
}

impl Jwk {
    fn usable_with(&self, alg: Alg) -> bool {
        if self.alg.is_some_and(|a| a != alg) {
            return false;
        }
        matches!(
            (&self.material, alg),
            (
                KeyMaterial::Rsa { .. },
                Alg::RS256 | Alg::RS384 | Alg::RS512 | Alg::PS256 | Alg::PS384 | Alg::PS512
            ) | (KeyMaterial::P256(_), Alg::ES256)
                | (KeyMaterial::P384(_), Alg::ES384)
                | (KeyMaterial::Ed25519(_), Alg::EdDSA)
        )
    }
}

#[derive(Deserialize)]
struct RawJwk {
    kty: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default, rename = "use")]
    usage: Option<String>,
    #[serde(default)]
    alg: Option<String>,
    #[serde(default)]
    n: Option<String>,
    #[serde(default)]
    e: Option<String>,
    #[serde(default)]
    crv: Option<String>,
    #[serde(default)]
    x: Option<String>,
    #[serde(default)]
    y: Option<String>,
}

#[derive(Deserialize)]
struct RawJwkSet {
    keys: Vec<serde_json::Value>,
}

/// A provider's signing keys (its `jwks_uri`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JwkSet {
    /// The keys usable for signatures.
    pub keys: Vec<Jwk>,
}

impl JwkSet {
    /// Parses a JWK set, keeping the signature keys we can use (at most [`MAX_KEYS`]):
    /// symmetric keys, encryption keys, unknown key types and malformed keys are dropped.
    ///
    /// # Errors
    ///
    /// [`TokenError::Malformed`] when the document is not a JWK set.
    pub fn parse(json: &[u8]) -> Result<Self, TokenError> {
        let raw: RawJwkSet =
            serde_json::from_slice(json).map_err(|_| TokenError::Malformed("JWK set"))?;
        let keys = raw
            .keys
            .into_iter()
            .filter_map(|v| serde_json::from_value::<RawJwk>(v).ok())
            .filter_map(|k| Self::key(&k))
            .take(MAX_KEYS)
            .collect();
        Ok(Self { keys })
    }

    fn key(raw: &RawJwk) -> Option<Jwk> {
        if raw.usage.as_deref().is_some_and(|u| u != "sig") {
            return None;
        }
        // A key that names an algorithm we do not verify (HS256, none, …) is not ours to use.
        let alg = match &raw.alg {
            Some(name) => Some(Alg::parse(name)?),
            None => None,
        };
        let field = |v: &Option<String>| URL_SAFE_NO_PAD.decode(v.as_deref()?).ok();
        let material = match (raw.kty.as_str(), raw.crv.as_deref()) {
            ("RSA", _) => {
                let strip = |b: Vec<u8>| {
                    let zeros = b.iter().take_while(|x| **x == 0).count();
                    b.get(zeros..).map(<[u8]>::to_vec).unwrap_or_default()
                };
                let (n, e) = (strip(field(&raw.n)?), strip(field(&raw.e)?));
                if n.is_empty() || e.is_empty() {
                    return None;
                }
                KeyMaterial::Rsa { n, e }
            }
            ("EC", Some(curve @ ("P-256" | "P-384"))) => {
                let size = if curve == "P-256" { 32 } else { 48 };
                let (x, y) = (field(&raw.x)?, field(&raw.y)?);
                if x.len() != size || y.len() != size {
                    return None;
                }
                let mut point = Vec::with_capacity(1 + 2 * size);
                point.push(4);
                point.extend_from_slice(&x);
                point.extend_from_slice(&y);
                if size == 32 {
                    KeyMaterial::P256(point)
                } else {
                    KeyMaterial::P384(point)
                }
            }
            ("OKP", Some("Ed25519")) => {
                let x = field(&raw.x)?;
                if x.len() != 32 {
                    return None;
                }
                KeyMaterial::Ed25519(x)
            }
            _ => return None,
        };
        Some(Jwk {
            kid: raw.kid.clone(),
            alg,
            material,
        })
    }
}

/// The claims of a verified ID token.
#[derive(Debug, Clone, PartialEq)]
pub struct Claims {
    /// Issuer.
    pub iss: String,
    /// Subject: the user's stable id at the provider.
    pub sub: String,
    /// Audiences.
    pub aud: Vec<String>,
    /// Expiry, Unix seconds.
    pub exp: i64,
    /// Every claim, for the user name and role rules.
    pub all: serde_json::Map<String, serde_json::Value>,
}

impl Claims {
    /// A claim that is a string.
    pub fn string(&self, name: &str) -> Option<&str> {
        self.all.get(name).and_then(serde_json::Value::as_str)
    }

    /// A claim's strings: a string claim, or the strings of an array claim.
    pub fn strings(&self, name: &str) -> Vec<&str> {
        match self.all.get(name) {
            Some(serde_json::Value::String(s)) => vec![s.as_str()],
            Some(serde_json::Value::Array(items)) => {
                items.iter().filter_map(serde_json::Value::as_str).collect()
            }
            _ => Vec::new(),
        }
    }
}

/// What an ID token must say.
#[derive(Debug, Clone)]
pub struct Expect<'a> {
    /// The provider's issuer, exactly.
    pub issuer: &'a str,
    /// Our client id.
    pub client_id: &'a str,
    /// The flow's nonce; `None` for the device grant, which has none (then the token must
    /// carry none either).
    pub nonce: Option<&'a str>,
    /// Now, Unix seconds.
    pub now: i64,
    /// Clock skew allowed on `exp`, `nbf` and `iat`, seconds.
    pub skew: i64,
}

/// A NumericDate: an integer or a fraction of seconds.
fn seconds(v: Option<&serde_json::Value>, what: &'static str) -> Result<Option<i64>, TokenError> {
    match v {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::Number(n)) => n
            .as_i64()
            .or_else(|| {
                n.as_f64()
                    .filter(|f| f.is_finite() && f.abs() < 1e15)
                    .map(|f| f.floor() as i64)
            })
            .map(Some)
            .ok_or(TokenError::Malformed(what)),
        Some(_) => Err(TokenError::Malformed(what)),
    }
}

impl Expect<'_> {
    /// Checks the verified `payload`'s claims: issuer, audience (and `azp` when present),
    /// expiry, not-before and issued-at with the skew, nonce.
    ///
    /// # Errors
    ///
    /// The first [`TokenError`] found.
    pub fn check(&self, payload: &[u8]) -> Result<Claims, TokenError> {
        let all: serde_json::Map<String, serde_json::Value> =
            serde_json::from_slice(payload).map_err(|_| TokenError::Malformed("claims"))?;
        let text = |name: &'static str| {
            all.get(name)
                .and_then(serde_json::Value::as_str)
                .map(str::to_owned)
                .ok_or(TokenError::Malformed(name))
        };
        let iss = text("iss")?;
        if iss != self.issuer {
            return Err(TokenError::Issuer);
        }
        let sub = text("sub")?;
        if sub.is_empty() || sub.len() > 255 {
            return Err(TokenError::Malformed("sub"));
        }
        let aud: Vec<String> = match all.get("aud") {
            Some(serde_json::Value::String(a)) => vec![a.clone()],
            Some(serde_json::Value::Array(items)) => items
                .iter()
                .map(|v| v.as_str().map(str::to_owned))
                .collect::<Option<_>>()
                .ok_or(TokenError::Malformed("aud"))?,
            _ => return Err(TokenError::Malformed("aud")),
        };
        if !aud.iter().any(|a| a == self.client_id) {
            return Err(TokenError::Audience);
        }
        match all.get("azp") {
            None => {
                if aud.len() > 1 {
                    return Err(TokenError::Audience);
                }
            }
            Some(serde_json::Value::String(azp)) if azp == self.client_id => {}
            Some(_) => return Err(TokenError::Audience),
        }
        let exp = seconds(all.get("exp"), "exp")?.ok_or(TokenError::Malformed("exp"))?;
        if exp.saturating_add(self.skew) <= self.now {
            return Err(TokenError::Expired);
        }
        for name in ["nbf", "iat"] {
            let when = seconds(all.get(name), name)?;
            if when.is_some_and(|t| t > self.now.saturating_add(self.skew)) {
                return Err(TokenError::NotYetValid);
            }
        }
        let nonce = all.get("nonce").and_then(serde_json::Value::as_str);
        let nonce_ok = match (nonce, self.nonce) {
            (Some(got), Some(want)) => constant_time_eq(got.as_bytes(), want.as_bytes()),
            (None, None) => true,
            _ => false,
        };
        if !nonce_ok {
            return Err(TokenError::Nonce);
        }
        Ok(Claims {
            iss,
            sub,
            aud,
            exp,
            all,
        })
    }
}

/// Equality whose time does not depend on where the inputs differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Parses, verifies and checks `token` against `keys` in one step (what a sign-in does once
/// it has the keys).
///
/// # Errors
///
/// [`TokenError`].
pub fn validate(
    token: &str,
    keys: &JwkSet,
    allowed: &[Alg],
    expect: &Expect<'_>,
) -> Result<Claims, TokenError> {
    let jws = Jws::parse(token, allowed)?;
    let key = jws.key(keys).ok_or(TokenError::UnknownKey)?;
    expect.check(jws.verify(key)?)
}

#[cfg(test)]
mod tests;
