//! The payment-grade OAuth 2.0 mode: a client-credentials token endpoint that authenticates
//! clients by `private_key_jwt` assertions (RFC 7523) and binds its tokens to the key of a
//! DPoP proof (RFC 9449), and an API that takes only such tokens, with a proof on every
//! request. One server nonce serves both.
//!
//! Refusals say what failed in `error_description`, never echoing what the client sent; the
//! logs get the same words and nothing else.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use http::header::{AUTHORIZATION, CACHE_CONTROL, WWW_AUTHENTICATE};
use http::request::Parts;
use http::{HeaderValue, Method, Response, StatusCode};
use http_body_util::Full;
use ring::rand::{SecureRandom, SystemRandom};
use serde_json::{Value, json};

use crate::issuers::{json_response, respond};
use crate::jws::Jws;
use crate::proof::{Expected, Refusal, check_proof, dpop_token};

/// The token endpoint's path.
pub(crate) const TOKEN_PATH: &str = "/oauth2/token";
/// The API's paths start with this.
pub(crate) const API_PREFIX: &str = "/oauth2/api/";

/// How far a proof's `iat` may be from now, either way, and an assertion's `iat` ahead of
/// now, in seconds.
pub(crate) const IAT_WINDOW: f64 = 60.0;
/// The signature algorithms taken, as `WWW-Authenticate` lists them.
const ALGS: &str = "ES256 EdDSA PS256 RS256";
const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

type Answer = Response<Full<Bytes>>;

/// What the sandbox saw of its OAuth 2.0 mode ([`Sandbox::oauth2_stats`](crate::Sandbox::oauth2_stats)).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct OAuth2Stats {
    /// Requests to the token endpoint.
    pub token_requests: u64,
    /// Tokens issued.
    pub tokens_issued: u64,
    /// Requests to the API.
    pub api_requests: u64,
    /// API requests answered 200.
    pub api_accepted: u64,
    /// Requests (to either) answered `use_dpop_nonce`.
    pub nonce_challenges: u64,
    /// Requests (to either) refused for any other reason.
    pub refused: u64,
}

#[derive(Default)]
struct Counters {
    token_requests: AtomicU64,
    tokens_issued: AtomicU64,
    api_requests: AtomicU64,
    api_accepted: AtomicU64,
    nonce_challenges: AtomicU64,
    refused: AtomicU64,
}

/// An issued token: the thumbprint of the key it is bound to, and when it expires.
struct Bound {
    jkt: String,
    expires: SystemTime,
}

/// The `jti`s accepted, each kept while a JWT carrying it could still pass the time checks.
#[derive(Default)]
struct Seen(Mutex<SeenInner>);

#[derive(Default)]
struct SeenInner {
    live: HashMap<String, f64>,
    /// The size at which the ones past their time are dropped next.
    prune_at: usize,
}

impl Seen {
    /// Records `jti` as live until `until`; `false` if it is live already.
    fn first(&self, jti: &str, until: f64, now: f64) -> bool {
        let mut seen = lock(&self.0);
        if seen.live.len() >= seen.prune_at {
            seen.live.retain(|_, live| *live >= now);
            seen.prune_at = (seen.live.len() * 2).max(1024);
        }
        if seen.live.get(jti).is_some_and(|live| *live >= now) {
            return false;
        }
        seen.live.insert(jti.to_owned(), until);
        true
    }
}

/// The state of the OAuth 2.0 mode.
pub(crate) struct OAuth2 {
    /// `http://127.0.0.1:<port>`.
    origin: String,
    clients: Mutex<HashMap<String, Value>>,
    nonce: Mutex<String>,
    tokens: Mutex<HashMap<String, Bound>>,
    assertions: Seen,
    proofs: Seen,
    counters: Counters,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// `n` random bytes from the system's generator, base64url.
fn random(n: usize) -> String {
    let mut bytes = vec![0_u8; n];
    // ring's generator does not fail on the platforms it supports; fastrand is the fallback.
    if SystemRandom::new().fill(&mut bytes).is_err() {
        bytes.iter_mut().for_each(|b| *b = fastrand::u8(..));
    }
    URL_SAFE_NO_PAD.encode(bytes)
}

fn now_secs() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

impl OAuth2 {
    pub(crate) fn new(origin: String) -> Self {
        Self {
            origin,
            clients: Mutex::default(),
            nonce: Mutex::new(random(16)),
            tokens: Mutex::default(),
            assertions: Seen::default(),
            proofs: Seen::default(),
            counters: Counters::default(),
        }
    }

    pub(crate) fn token_url(&self) -> String {
        format!("{}{TOKEN_PATH}", self.origin)
    }

    pub(crate) fn register(&self, client_id: &str, jwk: Value) {
        lock(&self.clients).insert(client_id.to_owned(), jwk);
    }

    pub(crate) fn rotate_nonce(&self) {
        *lock(&self.nonce) = random(16);
    }

    pub(crate) fn stats(&self) -> OAuth2Stats {
        let c = &self.counters;
        OAuth2Stats {
            token_requests: c.token_requests.load(Relaxed),
            tokens_issued: c.tokens_issued.load(Relaxed),
            api_requests: c.api_requests.load(Relaxed),
            api_accepted: c.api_accepted.load(Relaxed),
            nonce_challenges: c.nonce_challenges.load(Relaxed),
            refused: c.refused.load(Relaxed),
        }
    }

    /// The answer to a request below `/oauth2/`, or `None` for any other path. Every answer
    /// carries the current nonce.
    pub(crate) fn handle(&self, parts: &Parts, body: &[u8], lifetime: Duration) -> Option<Answer> {
        let path = parts.uri.path();
        let nonce = lock(&self.nonce).clone();
        let mut answer = if path == TOKEN_PATH {
            self.token(parts, body, lifetime, &nonce)
        } else if path.starts_with(API_PREFIX) {
            self.api(parts, &nonce)
        } else if path.starts_with("/oauth2/") {
            respond(StatusCode::NOT_FOUND, r#"{"error":"not found"}"#)
        } else {
            return None;
        };
        if let Ok(value) = HeaderValue::from_str(&nonce) {
            answer.headers_mut().insert("dpop-nonce", value);
        }
        Some(answer)
    }

    fn token(&self, parts: &Parts, body: &[u8], lifetime: Duration, nonce: &str) -> Answer {
        self.counters.token_requests.fetch_add(1, Relaxed);
        let mut answer = self.token_answer(parts, body, lifetime, nonce);
        answer
            .headers_mut()
            .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        answer
    }

    fn token_answer(&self, parts: &Parts, body: &[u8], lifetime: Duration, nonce: &str) -> Answer {
        if parts.method != Method::POST {
            return self.refuse_token(
                StatusCode::METHOD_NOT_ALLOWED,
                "invalid_request",
                "the token endpoint takes POST",
            );
        }
        let form = match parse_form(body) {
            Ok(form) => form,
            Err(reason) => {
                return self.refuse_token(StatusCode::BAD_REQUEST, "invalid_request", reason);
            }
        };
        match form.get("grant_type").map(String::as_str) {
            Some("client_credentials") => {}
            Some(_) => {
                return self.refuse_token(
                    StatusCode::BAD_REQUEST,
                    "unsupported_grant_type",
                    "only client_credentials is granted here",
                );
            }
            None => {
                return self.refuse_token(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    "no grant_type",
                );
            }
        }
        let now = now_secs();
        let (client_jti, client_until) = match self.authenticate(&form, now) {
            Ok(assertion) => assertion,
            Err(reason) => {
                return self.refuse_token(StatusCode::UNAUTHORIZED, "invalid_client", reason);
            }
        };
        let expected = Expected {
            htm: "POST",
            htu: &self.token_url(),
            token: None,
            nonce,
            now,
        };
        let proven = match check_proof(&parts.headers, &expected) {
            Ok(proven) => proven,
            Err(Refusal::Nonce(reason)) => {
                tracing::debug!(reason, "sandbox oauth2: token request asked for the nonce");
                self.counters.nonce_challenges.fetch_add(1, Relaxed);
                return oauth_error(StatusCode::BAD_REQUEST, "use_dpop_nonce", reason);
            }
            Err(Refusal::Proof(reason)) => {
                return self.refuse_token(StatusCode::BAD_REQUEST, "invalid_dpop_proof", reason);
            }
        };
        if !self.proofs.first(&proven.jti, proven.iat + IAT_WINDOW, now) {
            return self.refuse_token(
                StatusCode::BAD_REQUEST,
                "invalid_dpop_proof",
                "the proof's jti was used before",
            );
        }
        if !self.assertions.first(&client_jti, client_until, now) {
            return self.refuse_token(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                "the assertion's jti was used before",
            );
        }
        let token = random(32);
        let issued = SystemTime::now();
        {
            let mut tokens = lock(&self.tokens);
            tokens.retain(|_, t| t.expires > issued);
            tokens.insert(
                token.clone(),
                Bound {
                    jkt: proven.jkt,
                    expires: issued + lifetime,
                },
            );
        }
        self.counters.tokens_issued.fetch_add(1, Relaxed);
        json_response(
            StatusCode::OK,
            &json!({"access_token": token, "token_type": "DPoP", "expires_in": lifetime.as_secs()}),
        )
    }

    fn refuse_token(&self, status: StatusCode, error: &str, reason: &'static str) -> Answer {
        tracing::debug!(error, reason, "sandbox oauth2: token request refused");
        self.counters.refused.fetch_add(1, Relaxed);
        oauth_error(status, error, reason)
    }

    /// Checks the client's `private_key_jwt` assertion; returns its `jti` and `exp`.
    fn authenticate(
        &self,
        form: &HashMap<String, String>,
        now: f64,
    ) -> Result<(String, f64), &'static str> {
        match form.get("client_assertion_type").map(String::as_str) {
            Some(JWT_BEARER) => {}
            Some(_) => return Err("client_assertion_type is not jwt-bearer"),
            None => return Err("no client_assertion: clients authenticate with private_key_jwt"),
        }
        let text = form.get("client_assertion").ok_or("no client_assertion")?;
        let jws = Jws::parse(text).map_err(|_| "the client assertion is not a compact JWS")?;
        let claims = &jws.claims;
        let iss = claims["iss"].as_str().ok_or("the assertion has no iss")?;
        if claims["sub"].as_str() != Some(iss) {
            return Err("the assertion's sub is not its iss");
        }
        if form.get("client_id").is_some_and(|id| id != iss) {
            return Err("client_id is not the assertion's iss");
        }
        let jwk = lock(&self.clients)
            .get(iss)
            .cloned()
            .ok_or("the client is not registered")?;
        if let (Some(used), Some(registered)) = (jws.header["kid"].as_str(), jwk["kid"].as_str())
            && used != registered
        {
            return Err("the assertion's kid is not the registered key's");
        }
        if jws.header.get("crit").is_some() {
            return Err("the assertion names crit parameters: none is understood here");
        }
        jws.verify(&jwk)
            .map_err(|_| "the assertion does not verify with the registered key")?;
        let audience = [
            self.token_url(),
            self.origin.clone(),
            format!("{}/", self.origin),
        ];
        let ours = |aud: &Value| {
            aud.as_str()
                .is_some_and(|a| audience.iter().any(|x| x == a))
        };
        let aud_ok = match &claims["aud"] {
            Value::Array(auds) => auds.iter().any(ours),
            aud => ours(aud),
        };
        if !aud_ok {
            return Err("the assertion's aud is neither the token endpoint nor the sandbox");
        }
        let exp = claims["exp"]
            .as_f64()
            .ok_or("the assertion has no numeric exp")?;
        if exp <= now {
            return Err("the assertion has expired");
        }
        match &claims["iat"] {
            Value::Null => {}
            Value::Number(iat) if iat.as_f64().is_some_and(|iat| iat <= now + IAT_WINDOW) => {}
            Value::Number(_) => return Err("the assertion's iat is more than 60 s ahead"),
            _ => return Err("the assertion's iat is not a number"),
        }
        match claims["jti"].as_str() {
            Some(jti) if !jti.is_empty() => Ok((jti.to_owned(), exp)),
            _ => Err("the assertion has no jti"),
        }
    }

    fn api(&self, parts: &Parts, nonce: &str) -> Answer {
        self.counters.api_requests.fetch_add(1, Relaxed);
        let mut authorization = parts.headers.get_all(AUTHORIZATION).iter();
        let token = match (authorization.next(), authorization.next()) {
            (None, _) => return self.refuse_api(None, "no Authorization header"),
            (Some(_), Some(_)) => {
                return self.refuse_api(Some("invalid_request"), "more than one Authorization");
            }
            (Some(value), None) => match dpop_token(value) {
                Ok(token) => token,
                Err(reason) => return self.refuse_api(Some("invalid_token"), reason),
            },
        };
        let jkt = {
            let tokens = lock(&self.tokens);
            match tokens.get(token) {
                Some(bound) if SystemTime::now() < bound.expires => bound.jkt.clone(),
                Some(_) => return self.refuse_api(Some("invalid_token"), "the token has expired"),
                None => return self.refuse_api(Some("invalid_token"), "the token is unknown"),
            }
        };
        let now = now_secs();
        let htu = format!("{}{}", self.origin, parts.uri.path());
        let expected = Expected {
            htm: parts.method.as_str(),
            htu: &htu,
            token: Some((token, &jkt)),
            nonce,
            now,
        };
        let proven = match check_proof(&parts.headers, &expected) {
            Ok(proven) => proven,
            Err(Refusal::Nonce(reason)) => {
                tracing::debug!(reason, "sandbox oauth2: API request asked for the nonce");
                self.counters.nonce_challenges.fetch_add(1, Relaxed);
                return challenge("use_dpop_nonce", reason);
            }
            Err(Refusal::Proof(reason)) => {
                return self.refuse_api(Some("invalid_dpop_proof"), reason);
            }
        };
        if !self.proofs.first(&proven.jti, proven.iat + IAT_WINDOW, now) {
            return self.refuse_api(
                Some("invalid_dpop_proof"),
                "the proof's jti was used before",
            );
        }
        self.counters.api_accepted.fetch_add(1, Relaxed);
        json_response(StatusCode::OK, &json!({"ok": true}))
    }

    /// `401` (`400` for `invalid_request`) with a `DPoP` challenge naming `error`, or naming
    /// none when no credentials came (RFC 6750 §3.1).
    fn refuse_api(&self, error: Option<&str>, reason: &'static str) -> Answer {
        tracing::debug!(error, reason, "sandbox oauth2: API request refused");
        self.counters.refused.fetch_add(1, Relaxed);
        match error {
            Some(error) => challenge(error, reason),
            None => {
                let mut answer = respond(StatusCode::UNAUTHORIZED, r#"{"error":"unauthorized"}"#);
                if let Ok(value) = HeaderValue::from_str(&format!(r#"DPoP algs="{ALGS}""#)) {
                    answer.headers_mut().insert(WWW_AUTHENTICATE, value);
                }
                answer
            }
        }
    }
}

/// An OAuth 2.0 error answer (RFC 6749 §5.2).
fn oauth_error(status: StatusCode, error: &str, description: &str) -> Answer {
    json_response(
        status,
        &json!({"error": error, "error_description": description}),
    )
}

/// A `DPoP` challenge (RFC 9449 §7.1): `401` (`400` for `invalid_request`) with
/// `WWW-Authenticate: DPoP error="…", error_description="…", algs="…"`.
fn challenge(error: &str, description: &'static str) -> Answer {
    let status = if error == "invalid_request" {
        StatusCode::BAD_REQUEST
    } else {
        StatusCode::UNAUTHORIZED
    };
    let mut answer = oauth_error(status, error, description);
    // Kept to plain words in the header: some clients split challenges at commas.
    let plain: String = description
        .chars()
        .map(|c| {
            if matches!(c, ',' | '"' | '\\') {
                ' '
            } else {
                c
            }
        })
        .collect();
    let value = format!(r#"DPoP error="{error}", error_description="{plain}", algs="{ALGS}""#);
    if let Ok(value) = HeaderValue::from_str(&value) {
        answer.headers_mut().insert(WWW_AUTHENTICATE, value);
    }
    answer
}

/// A form body, each parameter once (RFC 6749 §3.2).
fn parse_form(body: &[u8]) -> Result<HashMap<String, String>, &'static str> {
    let mut form = HashMap::new();
    for (name, value) in form_urlencoded::parse(body).into_owned() {
        if form.insert(name, value).is_some() {
            return Err("a parameter is repeated");
        }
    }
    Ok(form)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_jti_is_refused_while_it_is_live() {
        let seen = Seen::default();
        assert!(seen.first("a", 100.0, 10.0));
        assert!(!seen.first("a", 200.0, 99.0));
        assert!(seen.first("b", 100.0, 99.0));
        // Past its time it is forgotten: a JWT carrying it fails the time checks anyway.
        assert!(seen.first("a", 300.0, 101.0));
    }
}
