//! [`DpopApi`]: an API on loopback that accepts a request only with a DPoP-bound access token
//! and a DPoP proof (RFC 9449) passing every check of §4.3 and §7.1, and that asks for a
//! nonce as §9 says.
//!
//! The checks themselves are plain functions ([`verify_dpop`], [`jwk_thumbprint`]), apart
//! from the server, so that they can be tried on proofs made by hand.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value;

use crate::{Answer, Listener, LoopbackApi, Received};

/// How far a proof's `iat` may be from this machine's clock, either way, in seconds.
const IAT_WINDOW: f64 = 60.0;

/// JWK members that only a private or a symmetric key has.
const PRIVATE_MEMBERS: [&str; 8] = ["d", "p", "q", "dp", "dq", "qi", "oth", "k"];

/// What a request must match to pass [`verify_dpop`].
#[derive(Clone, Copy, Debug)]
pub struct DpopExpected<'a> {
    /// The request's method (`htm`).
    pub method: &'a str,
    /// The request's URI without query and fragment (`htu`), compared as is.
    pub htu: &'a str,
    /// The RFC 7638 thumbprint of the key the token is bound to.
    pub jkt: &'a str,
    /// The nonce the server currently asks for.
    pub nonce: &'a str,
    /// Now, in seconds since the Unix epoch.
    pub now: f64,
}

/// A request that passed [`verify_dpop`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DpopVerified {
    /// The access token.
    pub token: String,
    /// The proof's `jti`, for the caller to refuse it a second time.
    pub jti: String,
}

/// Why [`verify_dpop`] turned a request away.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DpopRefusal {
    /// No `Authorization: DPoP <token>` (`error="invalid_token"`).
    Token(String),
    /// A missing or bad proof (`error="invalid_dpop_proof"`).
    Proof(String),
    /// A good proof without the current nonce (`error="use_dpop_nonce"`).
    Nonce(String),
}

/// Checks a request's `Authorization` values and `DPoP` values against `expected`: one
/// `DPoP <token>` and one proof, whose JOSE header has `typ` `dpop+jwt`, an `alg` of ES256,
/// EdDSA, PS256 or RS256, and the public `jwk` of the bound key, which signed it; whose claims
/// have the method, the URI, an `iat` within 60 s, a `jti`, the token's `ath`, and last the
/// current nonce. Whether the `jti` is new is for the caller to say.
///
/// # Errors
///
/// The first check that failed, and why.
pub fn verify_dpop(
    authorization: &[&str],
    proofs: &[&str],
    expected: &DpopExpected<'_>,
) -> Result<DpopVerified, DpopRefusal> {
    let token = match authorization {
        [] => return Err(DpopRefusal::Token("no Authorization header".into())),
        [one] => dpop_token(one).map_err(DpopRefusal::Token)?,
        _ => return Err(DpopRefusal::Token("more than one Authorization".into())),
    };
    let proof = match proofs {
        [] => return Err(DpopRefusal::Proof("no DPoP header".into())),
        [one] => *one,
        _ => return Err(DpopRefusal::Proof("more than one DPoP header".into())),
    };
    let claims = verify_proof(proof, expected.jkt).map_err(DpopRefusal::Proof)?;
    let jti = check_claims(&claims, token, expected).map_err(DpopRefusal::Proof)?;
    match &claims["nonce"] {
        Value::String(nonce) if nonce == expected.nonce => Ok(DpopVerified {
            token: token.to_owned(),
            jti,
        }),
        Value::String(nonce) => Err(DpopRefusal::Nonce(format!("stale nonce {nonce:?}"))),
        Value::Null => Err(DpopRefusal::Nonce("no nonce".into())),
        other => Err(DpopRefusal::Proof(format!("nonce {other} is not a string"))),
    }
}

/// The token of `DPoP <token>` (the scheme in any case), if it is a token68. The reason for a
/// refusal names the scheme only, never the credential.
fn dpop_token(authorization: &str) -> Result<&str, String> {
    let (scheme, token) = authorization.split_once(' ').unwrap_or((authorization, ""));
    if !scheme.eq_ignore_ascii_case("DPoP") {
        let scheme: String = scheme.chars().take(16).collect();
        return Err(format!("the Authorization scheme {scheme:?} is not DPoP"));
    }
    let token68 = |c: char| c.is_ascii_alphanumeric() || "-._~+/=".contains(c);
    if token.is_empty() || !token.chars().all(token68) {
        return Err("the DPoP token is missing or not a token68".into());
    }
    Ok(token)
}

/// Checks the proof's JOSE header, that its key is the one thumbprinted `jkt`, and its
/// signature; returns its claims.
fn verify_proof(proof: &str, jkt: &str) -> Result<Value, String> {
    let header = proof.split('.').next().unwrap_or_default();
    let header: Value = URL_SAFE_NO_PAD
        .decode(header)
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .ok_or("the JOSE header is not base64url JSON")?;
    if header["typ"] != "dpop+jwt" {
        return Err(format!("typ {} is not \"dpop+jwt\"", header["typ"]));
    }
    let alg = match header["alg"].as_str() {
        Some("ES256") => Algorithm::ES256,
        Some("EdDSA") => Algorithm::EdDSA,
        Some("PS256") => Algorithm::PS256,
        Some("RS256") => Algorithm::RS256,
        _ => return Err(format!("alg {} is not allowed", header["alg"])),
    };
    let jwk = &header["jwk"];
    if !jwk.is_object() {
        return Err("no jwk in the JOSE header".into());
    }
    if let Some(member) = PRIVATE_MEMBERS.iter().find(|m| jwk.get(**m).is_some()) {
        return Err(format!("the jwk is not a public key (it has {member:?})"));
    }
    let thumbprint = jwk_thumbprint(jwk)?;
    if thumbprint != jkt {
        return Err(format!(
            "the proof's key {thumbprint} is not the token's {jkt}"
        ));
    }
    let key = serde_json::from_value::<Jwk>(jwk.clone())
        .map_err(|e| e.to_string())
        .and_then(|jwk| DecodingKey::from_jwk(&jwk).map_err(|e| e.to_string()))
        .map_err(|e| format!("unusable jwk: {e}"))?;
    let mut validation = Validation::new(alg);
    validation.validate_exp = false;
    validation.validate_aud = false;
    validation.required_spec_claims.clear();
    jsonwebtoken::decode::<Value>(proof, &key, &validation)
        .map(|data| data.claims)
        .map_err(|e| format!("the proof does not verify: {e}"))
}

/// Checks every claim but the nonce; returns the `jti`.
fn check_claims(
    claims: &Value,
    token: &str,
    expected: &DpopExpected<'_>,
) -> Result<String, String> {
    let text = |name: &str| claims[name].as_str();
    if text("htm") != Some(expected.method) {
        return Err(format!("htm {} is not {}", claims["htm"], expected.method));
    }
    if text("htu") != Some(expected.htu) {
        return Err(format!("htu {} is not {}", claims["htu"], expected.htu));
    }
    let iat = claims["iat"].as_f64().ok_or("no numeric iat")?;
    if (iat - expected.now).abs() > IAT_WINDOW {
        return Err(format!(
            "iat {iat} is more than 60 s from now ({})",
            expected.now
        ));
    }
    let ath = URL_SAFE_NO_PAD.encode(sha256(token.as_bytes()));
    if text("ath") != Some(ath.as_str()) {
        return Err(format!("ath {} is not the token's {ath}", claims["ath"]));
    }
    match text("jti") {
        Some(jti) if !jti.is_empty() => Ok(jti.to_owned()),
        _ => Err(format!("jti {} is not a string", claims["jti"])),
    }
}

/// The RFC 7638 thumbprint of a public JWK (EC, OKP or RSA): SHA-256 of its required members,
/// in lexicographic order and without whitespace, in base64url without padding.
///
/// # Errors
///
/// If the key type is another, or a required member is missing or not a string.
pub fn jwk_thumbprint(jwk: &Value) -> Result<String, String> {
    let members: &[&str] = match jwk["kty"].as_str() {
        Some("EC") => &["crv", "kty", "x", "y"],
        Some("OKP") => &["crv", "kty", "x"],
        Some("RSA") => &["e", "kty", "n"],
        _ => return Err(format!("kty {} is not EC, OKP or RSA", jwk["kty"])),
    };
    let mut canonical = Vec::with_capacity(members.len());
    for name in members {
        let value = jwk[*name]
            .as_str()
            .ok_or_else(|| format!("the jwk has no {name}"))?;
        canonical.push(format!("\"{name}\":{}", Value::from(value)));
    }
    let canonical = format!("{{{}}}", canonical.join(","));
    Ok(URL_SAFE_NO_PAD.encode(sha256(canonical.as_bytes())))
}

fn sha256(bytes: &[u8]) -> ring::digest::Digest {
    ring::digest::digest(&ring::digest::SHA256, bytes)
}

/// Every value of header `name` (lowercase), in order.
fn header_values<'a>(received: &'a Received, name: &str) -> Vec<&'a str> {
    let named = received.headers.iter().filter(|(n, _)| n == name);
    named.map(|(_, v)| v.as_str()).collect()
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What the API keeps between requests.
#[derive(Debug, Default)]
struct State {
    jkt: String,
    /// The origins of the API's two ports, known once they are bound.
    origins: OnceLock<[String; 2]>,
    nonce: Mutex<String>,
    nonces_made: AtomicUsize,
    jtis: Mutex<HashSet<String>>,
    tokens: Mutex<Vec<String>>,
    refusals: Mutex<Vec<String>>,
    accepted: AtomicUsize,
    refused: AtomicUsize,
    nonce_challenges: AtomicUsize,
}

impl State {
    fn fresh_nonce(&self) -> String {
        let n = self.nonces_made.fetch_add(1, SeqCst);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        format!("n{n}-{nanos:08x}")
    }

    fn answer(&self, received: &Received) -> Answer {
        let Some(origins) = self.origins.get() else {
            return self.refuse(DpopRefusal::Proof("the API is not started yet".into()));
        };
        let origin = &origins[usize::from(received.listener == Listener::Other)];
        let htu = format!("{origin}{}", received.path);
        let nonce = lock(&self.nonce).clone();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        let expected = DpopExpected {
            method: received.method.as_str(),
            htu: &htu,
            jkt: &self.jkt,
            nonce: &nonce,
            now,
        };
        let verified = verify_dpop(
            &header_values(received, "authorization"),
            &header_values(received, "dpop"),
            &expected,
        )
        .and_then(|verified| {
            if lock(&self.jtis).insert(verified.jti.clone()) {
                Ok(verified)
            } else {
                let jti = &verified.jti;
                Err(DpopRefusal::Proof(format!("jti {jti:?} was used before")))
            }
        });
        match verified {
            Ok(DpopVerified { token, .. }) => {
                self.accepted.fetch_add(1, SeqCst);
                let mut tokens = lock(&self.tokens);
                if !tokens.contains(&token) {
                    tokens.push(token);
                }
                Answer::new(200, "ok").with_header_owned("dpop-nonce", nonce)
            }
            Err(DpopRefusal::Nonce(reason)) => {
                tracing::debug!(%reason, "DpopApi: nonce asked for");
                self.nonce_challenges.fetch_add(1, SeqCst);
                Answer::new(401, "use_dpop_nonce")
                    .with_header(
                        "www-authenticate",
                        "DPoP error=\"use_dpop_nonce\", \
                         error_description=\"Resource server requires nonce in DPoP proof\"",
                    )
                    .with_header_owned("dpop-nonce", nonce)
            }
            Err(refusal) => self.refuse(refusal),
        }
    }

    fn refuse(&self, refusal: DpopRefusal) -> Answer {
        let (error, challenge, reason) = match refusal {
            DpopRefusal::Token(reason) => ("invalid_token", "DPoP error=\"invalid_token\"", reason),
            DpopRefusal::Proof(reason) | DpopRefusal::Nonce(reason) => (
                "invalid_dpop_proof",
                "DPoP error=\"invalid_dpop_proof\"",
                reason,
            ),
        };
        tracing::debug!(%reason, error, "DpopApi: request refused");
        self.refused.fetch_add(1, SeqCst);
        lock(&self.refusals).push(reason);
        Answer::new(401, error).with_header("www-authenticate", challenge)
    }
}

/// An API on loopback that accepts a request only with `Authorization: DPoP <token>` and one
/// `DPoP` proof that [`verify_dpop`] passes for the key thumbprinted `expected_jkt`, with a
/// `jti` it never saw and its current nonce. Without that nonce (or with an older one) it
/// answers `401` with `WWW-Authenticate: DPoP error="use_dpop_nonce"` and a `DPoP-Nonce`
/// header; any other failure gets `401` with `error="invalid_dpop_proof"` or, without a DPoP
/// token, `error="invalid_token"`. It answers `200 ok` with the current `DPoP-Nonce` otherwise.
/// Stops when dropped.
#[derive(Debug)]
pub struct DpopApi {
    api: LoopbackApi,
    state: Arc<State>,
}

impl DpopApi {
    /// Starts the API on loopback, for tokens bound to the key thumbprinted `expected_jkt`.
    ///
    /// # Panics
    ///
    /// If no loopback port can be bound.
    pub async fn start(expected_jkt: String) -> Self {
        let state = Arc::new(State {
            jkt: expected_jkt,
            ..State::default()
        });
        *lock(&state.nonce) = state.fresh_nonce();
        let route = Arc::clone(&state);
        let api = LoopbackApi::start(move |received| route.answer(received)).await;
        let other = api.other_url("");
        let _ = state.origins.set([api.origin(), other]);
        Self { api, state }
    }

    /// The API's origin, `http://127.0.0.1:port`.
    #[must_use]
    pub fn origin(&self) -> String {
        self.api.origin()
    }

    /// A URL on the API.
    #[must_use]
    pub fn url(&self, path: &str) -> String {
        self.api.url(path)
    }

    /// A URL on the API's other port (another origin, checked the same way).
    #[must_use]
    pub fn other_url(&self, path: &str) -> String {
        self.api.other_url(path)
    }

    /// Requests accepted.
    #[must_use]
    pub fn accepted(&self) -> usize {
        self.state.accepted.load(SeqCst)
    }

    /// Requests refused, nonce challenges aside.
    #[must_use]
    pub fn refused(&self) -> usize {
        self.state.refused.load(SeqCst)
    }

    /// Requests answered `use_dpop_nonce`.
    #[must_use]
    pub fn nonce_challenges(&self) -> usize {
        self.state.nonce_challenges.load(SeqCst)
    }

    /// Why each refused request was refused, in order.
    #[must_use]
    pub fn refusals(&self) -> Vec<String> {
        lock(&self.state.refusals).clone()
    }

    /// Each token of an accepted request, once, in the order first seen.
    #[must_use]
    pub fn tokens(&self) -> Vec<String> {
        lock(&self.state.tokens).clone()
    }

    /// The nonce proofs must carry now.
    #[must_use]
    pub fn nonce(&self) -> String {
        lock(&self.state.nonce).clone()
    }

    /// Asks for a new nonce from now on: proofs with the one before are challenged.
    pub fn rotate_nonce(&self) {
        let fresh = self.state.fresh_nonce();
        *lock(&self.state.nonce) = fresh;
    }
}
