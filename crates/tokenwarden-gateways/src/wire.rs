//! The parts every gateway shares: one exchange with the issuer, JSON reading with precise
//! errors, and expiry from a JWT or a local wall-clock time.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use bytes::Bytes;
use http::header::{ACCEPT, CONTENT_TYPE};
use http::{HeaderName, HeaderValue, Request, StatusCode, Uri};
use serde_json::Value;
use tokenwarden_core::{BoxError, ConfigError, Expiry, FetchError, Probe, Token};
use tokenwarden_origin::{Origin, RedactedUri, redact_url, transport_allowed};

/// How much of a recovery probe's answer is read: its status is all that counts.
const PROBE_MAX_BODY: usize = 4096;

use crate::error::TransportError;
use crate::http::{ReadFailed, RedirectFollowed, TooLarge};
use crate::redact::Secrets;
use crate::{DEFAULT_MAX_RESPONSE, GatewayError, HttpSend};

/// One token endpoint and the client that reaches it: what every source has.
#[derive(Clone)]
pub(crate) struct Issuer {
    sender: Arc<dyn HttpSend>,
    /// The endpoint, without any `user:pass@`.
    uri: Uri,
    /// `Authorization: Basic …` from the URL's `user:pass@`, if it had one (sensitive).
    basic: Option<HeaderValue>,
    gateway: &'static str,
    max_response: usize,
    /// Every credential the source sends, taken out of the errors it returns.
    secrets: Secrets,
}

impl fmt::Debug for Issuer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Issuer")
            .field("gateway", &self.gateway)
            .field("uri", &RedactedUri(self.uri.clone()))
            .field("max_response", &self.max_response)
            .finish_non_exhaustive()
    }
}

impl Issuer {
    /// The endpoint `base` + `path`, parsed once, when a source is built.
    pub(crate) fn new(
        sender: Arc<dyn HttpSend>,
        gateway: &'static str,
        base: &str,
        path: &str,
        setting: &'static str,
    ) -> Result<Self, ConfigError> {
        let url = format!("{}{path}", base.trim_end_matches('/'));
        let invalid = ConfigError::Invalid {
            name: setting,
            reason: "must be an absolute https URL with a valid port (plain http only to loopback)",
        };
        let uri: Uri = url.parse().map_err(|_| invalid.clone())?;
        // Scheme, host and port checked by the same rules as a token scope's origins.
        let origin = Origin::of_url(&url).map_err(|_| invalid)?;
        if transport_allowed(
            origin.scheme(),
            origin.host(),
            sender.allows_insecure_http(),
        )
        .is_err()
        {
            return Err(ConfigError::Invalid {
                name: setting,
                reason: "is plain http to a host that is not loopback, which would send the \
                         credentials in clear text: use https (or, on a network you trust end to \
                         end, wrap the sender in InsecureHttp)",
            });
        }
        // The URL's own secrets: its password and query values, as written and decoded.
        let mut secrets = Vec::new();
        if let Some((userinfo, _)) = uri.authority().and_then(|a| a.as_str().rsplit_once('@'))
            && let Some((_, password)) = userinfo.split_once(':')
        {
            secrets.push(password.to_owned());
            secrets.extend(percent_decode(password));
        }
        for (_, value) in form_urlencoded::parse(uri.query().unwrap_or("").as_bytes()) {
            secrets.push(value.into_owned());
        }
        for pair in uri.query().unwrap_or("").split('&') {
            secrets.extend(pair.split_once('=').map(|(_, value)| value.to_owned()));
        }
        tls_available(origin.scheme(), sender.speaks_https(), setting)?;
        let (uri, basic) = split_userinfo(uri).ok_or(ConfigError::Invalid {
            name: setting,
            reason: "has credentials (user:password@) that are not valid percent-encoded UTF-8",
        })?;
        Ok(Self {
            sender,
            uri,
            basic,
            gateway,
            max_response: DEFAULT_MAX_RESPONSE,
            secrets: Secrets::default().with(secrets),
        })
    }

    /// Adds credentials the source sends (a secret, a password, a header's value): they are
    /// taken out of every error the source returns (see [`redacted`](Self::redacted)).
    pub(crate) fn with_secrets<S: AsRef<str>>(
        mut self,
        secrets: impl IntoIterator<Item = S>,
    ) -> Self {
        self.secrets = self.secrets.with(secrets);
        self
    }

    /// `error` with every credential the source sends taken out of its text.
    pub(crate) fn redacted(&self, error: GatewayError) -> GatewayError {
        error.redacted(&self.secrets)
    }

    pub(crate) fn with_gateway(mut self, gateway: &'static str) -> Self {
        self.gateway = gateway;
        self
    }

    pub(crate) fn with_max_response(mut self, bytes: usize) -> Self {
        self.max_response = bytes;
        self
    }

    /// POSTs `body` (of `content_type`, if any) with `headers`, accepting JSON; returns the
    /// status and the body, read up to the cap.
    pub(crate) async fn post(
        &self,
        content_type: Option<&'static str>,
        headers: &[(HeaderName, HeaderValue)],
        body: Bytes,
    ) -> Result<(StatusCode, Bytes), GatewayError> {
        self.exchange(http::Method::POST, content_type, headers, body)
            .await
    }

    /// A source's answer as the cache takes it. A failure to reach the issuer at all — no
    /// connection, no answer, or a proxy's `502`/`504` — carries a [`Probe`] of this endpoint,
    /// so callers waiting through an outage get a token as soon as the issuer answers again,
    /// not at the end of a long backoff. Where the issuer itself answered (any other status, a
    /// malformed or oversized body), a bare request would reach it and prove nothing: no probe.
    ///
    /// Every credential the source sends is taken out of the error's text first (see
    /// [`redacted`](Self::redacted)): whatever the issuer echoed, it goes no further.
    pub(crate) fn fetched(&self, result: Result<Token, GatewayError>) -> Result<Token, FetchError> {
        result.map_err(|error| {
            let error = self.redacted(error);
            let unreachable = match &error {
                GatewayError::Unreachable { .. } => true,
                GatewayError::Status { status, .. } => {
                    matches!(
                        *status,
                        StatusCode::BAD_GATEWAY | StatusCode::GATEWAY_TIMEOUT
                    )
                }
                _ => false,
            };
            let error = FetchError::from(error);
            if unreachable && error.is_retryable() && error.retry_after().is_none() {
                error.with_probe(self.probe())
            } else {
                error
            }
        })
    }

    /// A bare `GET` of the endpoint's path — no query, no credentials, no body — through the
    /// same sender (and so the same proxy and TLS settings). The issuer answers again when it
    /// gets any status but a `5xx` or `429`: a `405` or `400` from a token endpoint is a server
    /// that is up.
    fn probe(&self) -> Probe {
        let sender = Arc::clone(&self.sender);
        let mut parts = self.uri.clone().into_parts();
        parts.path_and_query = Some(
            http::uri::PathAndQuery::from_maybe_shared(Bytes::copy_from_slice(
                self.uri.path().as_bytes(),
            ))
            .unwrap_or_else(|_| http::uri::PathAndQuery::from_static("/")),
        );
        let uri = Uri::from_parts(parts).unwrap_or_else(|_| self.uri.clone());
        Probe::new(move || {
            let sender = Arc::clone(&sender);
            let request = Request::get(uri.clone()).body(Bytes::new());
            async move {
                let Ok(request) = request else {
                    return false;
                };
                match sender.send(request, PROBE_MAX_BODY).await {
                    Ok(response) => {
                        let status = response.status();
                        !(status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS)
                    }
                    // It answered, at length.
                    Err(error) => error.is::<TooLarge>(),
                }
            }
        })
    }

    /// GETs the endpoint (a metadata document), accepting JSON, under the same rules.
    pub(crate) async fn get(&self) -> Result<(StatusCode, Bytes), GatewayError> {
        self.exchange(http::Method::GET, None, &[], Bytes::new())
            .await
    }

    async fn exchange(
        &self,
        method: http::Method,
        content_type: Option<&'static str>,
        headers: &[(HeaderName, HeaderValue)],
        body: Bytes,
    ) -> Result<(StatusCode, Bytes), GatewayError> {
        let mut request = Request::builder()
            .method(method)
            .uri(self.uri.clone())
            .header(ACCEPT, "application/json");
        if let Some(content_type) = content_type {
            request = request.header(CONTENT_TYPE, content_type);
        }
        for (name, value) in headers {
            request = request.header(name, value);
        }
        if let Some(basic) = &self.basic
            && !headers
                .iter()
                .any(|(name, _)| name == http::header::AUTHORIZATION)
        {
            request = request.header(http::header::AUTHORIZATION, basic);
        }
        let request = request.body(body).map_err(|e| GatewayError::Unreachable {
            gateway: self.gateway,
            source: self.transport(Box::new(e)),
        })?;
        match self.sender.send(request, self.max_response).await {
            Ok(response) if response.status().is_redirection() => Err(GatewayError::Redirected {
                gateway: self.gateway,
                status: response.status(),
                target: self.redirect_target(response.headers()),
            }),
            // Busy or down, saying when to come back: an error for every gateway, carrying the
            // hint. (Without one, the source reads the answer as it documents it.)
            Ok(response)
                if matches!(
                    response.status(),
                    StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
                ) && response.headers().contains_key(http::header::RETRY_AFTER) =>
            {
                Err(GatewayError::Status {
                    gateway: self.gateway,
                    status: response.status(),
                    retry_after: retry_after(response.headers(), SystemTime::now()),
                })
            }
            Ok(response) => Ok((response.status(), response.into_body())),
            Err(error) if error.is::<TooLarge>() => Err(GatewayError::TooLarge {
                gateway: self.gateway,
                limit: self.max_response,
            }),
            Err(error) => match error.downcast::<RedirectFollowed>() {
                Ok(followed) => Err(GatewayError::Redirected {
                    gateway: self.gateway,
                    status: followed.status,
                    target: followed.to,
                }),
                Err(error) => match error.downcast::<ReadFailed>() {
                    Ok(failed) => Err(GatewayError::Interrupted {
                        gateway: self.gateway,
                        status: failed.status,
                        source: self.transport(failed.error),
                    }),
                    Err(error) => Err(GatewayError::Unreachable {
                        gateway: self.gateway,
                        source: self.transport(error),
                    }),
                },
            },
        }
    }

    /// A transport error, shown with this endpoint's secrets taken out.
    fn transport(&self, error: BoxError) -> TransportError {
        let text = self.scrub(&TransportError::describe(&*error));
        TransportError::new(error, text)
    }

    /// A transport error's text with this endpoint's secrets taken out, should a sender have
    /// put the URL in it.
    fn scrub(&self, text: &str) -> String {
        let mut text = text.to_owned();
        let full = self.uri.to_string();
        if text.contains(&full) {
            text = text.replace(&full, &redact_url(&full));
        }
        let authority = self.uri.authority().map_or("", |a| a.as_str());
        let secrets = [
            self.uri.query().unwrap_or(""),
            authority
                .rsplit_once('@')
                .map_or("", |(userinfo, _)| userinfo),
        ];
        for secret in secrets.into_iter().filter(|s| !s.is_empty()) {
            text = text.replace(secret, "[redacted]");
        }
        text
    }

    /// The origin a redirect pointed to, for the error: never its path or query.
    fn redirect_target(&self, headers: &http::HeaderMap) -> String {
        let Some(location) = headers.get(http::header::LOCATION) else {
            return "nowhere (no Location header)".to_owned();
        };
        let Some(location) = location.to_str().ok().and_then(|l| l.parse::<Uri>().ok()) else {
            return "an unreadable Location".to_owned();
        };
        let location = match (location.scheme_str(), location.authority()) {
            // `//host/path`: the endpoint's scheme, another host.
            (None, _) if location.path().starts_with("//") => {
                let scheme = self.uri.scheme_str().unwrap_or("https");
                match format!("{scheme}:{location}").parse::<Uri>() {
                    Ok(absolute) => absolute,
                    Err(_) => return "an unreadable Location".to_owned(),
                }
            }
            _ => location,
        };
        match location.scheme_str() {
            // A relative reference: the endpoint's own origin.
            None => Origin::describe(&self.uri),
            Some(_) => Origin::describe(&location),
        }
    }
}

/// Refuses an `https` endpoint for a sender that cannot speak TLS (`tls` false): every fetch
/// would fail as "could not be reached" and be retried for ever. Said when the source is built,
/// with the feature to turn on.
fn tls_available(scheme: &str, tls: bool, setting: &'static str) -> Result<(), ConfigError> {
    if scheme == "https" && !tls {
        return Err(ConfigError::Invalid {
            name: setting,
            reason: "is https, but the HTTP client was built without TLS: turn on feature \
                     `rustls` of tokenwarden-gateways (on by default; `tokenwarden` forwards it) \
                     or a TLS feature of reqwest",
        });
    }
    Ok(())
}

/// Takes `user:pass@` out of an endpoint URL and turns it into HTTP Basic credentials, as
/// curl and browsers do: the transport (and its logs, connection-pool keys included) never
/// sees them. `None` if they are not valid percent-encoded UTF-8.
fn split_userinfo(uri: Uri) -> Option<(Uri, Option<HeaderValue>)> {
    let Some((userinfo, host)) = uri
        .authority()
        .and_then(|a| a.as_str().rsplit_once('@'))
        .map(|(u, h)| (u.to_owned(), h.to_owned()))
    else {
        return Some((uri, None));
    };
    let (user, password) = userinfo.split_once(':').unwrap_or((&userinfo, ""));
    let credentials = format!("{}:{}", percent_decode(user)?, percent_decode(password)?);
    let mut basic = HeaderValue::try_from(format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(credentials)
    ))
    .ok()?;
    basic.set_sensitive(true);
    let mut parts = uri.into_parts();
    parts.authority = Some(host.parse().ok()?);
    Some((Uri::from_parts(parts).ok()?, Some(basic)))
}

fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// A configured URL: printed redacted (credentials and query values), used as it is.
#[derive(Clone)]
pub(crate) struct UrlText(pub(crate) String);

impl fmt::Debug for UrlText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", redact_url(&self.0))
    }
}

/// A JSON answer being read, with errors that say what is wrong where.
pub(crate) struct Answer {
    pub(crate) gateway: &'static str,
    pub(crate) status: StatusCode,
    pub(crate) json: Value,
}

impl Answer {
    /// Parses the body as a JSON object.
    pub(crate) fn parse(
        gateway: &'static str,
        status: StatusCode,
        body: &[u8],
    ) -> Result<Self, GatewayError> {
        let malformed = |problem: String| GatewayError::Malformed {
            gateway,
            status,
            problem,
        };
        match serde_json::from_slice::<Value>(body) {
            Ok(json @ Value::Object(_)) => Ok(Self {
                gateway,
                status,
                json,
            }),
            Ok(other) => Err(malformed(format!(
                "expected a JSON object, got {}",
                kind(&other)
            ))),
            Err(e) => Err(malformed(format!("not JSON ({e})"))),
        }
    }

    pub(crate) fn malformed(&self, problem: impl Into<String>) -> GatewayError {
        GatewayError::Malformed {
            gateway: self.gateway,
            status: self.status,
            problem: problem.into(),
        }
    }

    pub(crate) fn get(&self, pointer: &str) -> Option<&Value> {
        self.json.pointer(pointer).filter(|v| !v.is_null())
    }

    /// A non-empty string at `pointer`.
    pub(crate) fn string(&self, pointer: &str) -> Result<&str, GatewayError> {
        match self.get(pointer) {
            None => Err(self.malformed(format!("`{pointer}` is missing"))),
            Some(Value::String(s)) if s.trim().is_empty() => {
                Err(self.malformed(format!("`{pointer}` is empty")))
            }
            Some(Value::String(s)) => Ok(s),
            Some(other) => {
                Err(self.malformed(format!("`{pointer}` is {}, not a string", kind(other))))
            }
        }
    }

    /// An integer at `pointer` (a number, or a string of digits as some gateways send).
    pub(crate) fn integer(&self, pointer: &str) -> Result<i64, GatewayError> {
        match self.get(pointer) {
            None => Err(self.malformed(format!("`{pointer}` is missing"))),
            Some(Value::Number(n)) => n
                .as_i64()
                .ok_or_else(|| self.malformed(format!("`{pointer}` is not an integer"))),
            Some(Value::String(s)) => s
                .trim()
                .parse()
                .map_err(|_| self.malformed(format!("`{pointer}` is not an integer"))),
            Some(other) => {
                Err(self.malformed(format!("`{pointer}` is {}, not an integer", kind(other))))
            }
        }
    }

    /// A count of seconds at `pointer` — a non-negative JSON number, whole or not (`3600`,
    /// `3600.0`, `3600.5`), or a string of one, as some gateways send — or `None` when the
    /// field is absent or null. Negative, not a finite number, or past `i64::MAX` seconds (as
    /// for an integer that large) is malformed; the cache caps lifetimes at a year anyway.
    pub(crate) fn seconds(&self, pointer: &str) -> Result<Option<Duration>, GatewayError> {
        let Some(value) = self.get(pointer) else {
            return Ok(None);
        };
        let number = match value {
            Value::Number(n) => n.as_u64().map(Seconds::Whole).or_else(|| {
                n.as_i64()
                    .map(|_| Seconds::Negative)
                    .or_else(|| n.as_f64().map(Seconds::Fraction))
            }),
            Value::String(s) => {
                let s = s.trim();
                s.parse::<u64>()
                    .map(Seconds::Whole)
                    .ok()
                    .or_else(|| s.parse::<f64>().ok().map(Seconds::Fraction))
            }
            _ => None,
        };
        const MAX: u64 = i64::MAX as u64;
        match number {
            Some(Seconds::Whole(secs)) if secs <= MAX => Ok(Some(Duration::from_secs(secs))),
            Some(Seconds::Fraction(secs)) if secs.is_finite() && secs < 0.0 => {
                Err(self.malformed(format!("`{pointer}` is negative")))
            }
            Some(Seconds::Fraction(secs)) if secs.is_finite() && secs <= MAX as f64 => Ok(Some(
                Duration::try_from_secs_f64(secs.max(0.0))
                    .map_err(|_| self.malformed(format!("`{pointer}` is out of range")))?,
            )),
            Some(Seconds::Negative) => Err(self.malformed(format!("`{pointer}` is negative"))),
            Some(Seconds::Whole(_) | Seconds::Fraction(_)) => Err(self.malformed(format!(
                "`{pointer}` is not a finite number of seconds up to {MAX}"
            ))),
            None => Err(self.malformed(format!(
                "`{pointer}` is {}, not a number of seconds",
                kind(value)
            ))),
        }
    }

    /// A string or number at `pointer`, as text (for codes and references).
    pub(crate) fn text(&self, pointer: &str) -> Option<String> {
        match self.get(pointer)? {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        }
    }
}

/// A number of seconds as the answer wrote it.
enum Seconds {
    Whole(u64),
    Negative,
    Fraction(f64),
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The `exp` claim of a JWT, if the token is one and the claim is readable. The signature is
/// not checked: the issuer is trusted, the claim only tells when to stop using the token.
#[must_use]
pub fn jwt_expiry(token: &str) -> Option<SystemTime> {
    jwt_time(token, "exp")
}

/// A time claim (`exp`, `iat`: seconds since the epoch) of a JWT, read without checking it.
fn jwt_time(token: &str, claim: &str) -> Option<SystemTime> {
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let claims: Value = serde_json::from_slice(&bytes).ok()?;
    let value = claims.get(claim)?;
    let secs = value
        .as_u64()
        .or_else(|| value.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64))?;
    UNIX_EPOCH.checked_add(Duration::from_secs(secs))
}

/// `YYYY-MM-DD HH:MM:SS` read as wall-clock time at `utc_offset` seconds east of UTC.
#[must_use]
pub fn local_time(text: &str, utc_offset: i32) -> Option<SystemTime> {
    let (date, time) = text.trim().split_once([' ', 'T'])?;
    let mut d = date.splitn(3, '-').map(|p| p.parse::<i64>().ok());
    let (year, month, day) = (d.next()??, d.next()??, d.next()??);
    let mut t = time.splitn(3, ':').map(|p| p.parse::<i64>().ok());
    let (hour, minute, second) = (t.next()??, t.next()??, t.next()??);
    let valid = (1970..=9999).contains(&year)
        && (1..=12).contains(&month)
        && (1..=31).contains(&day)
        && (0..24).contains(&hour)
        && (0..60).contains(&minute)
        && (0..61).contains(&second);
    if !valid {
        return None;
    }
    let seconds = days_from_civil(year, month, day) * 86_400 + hour * 3_600 + minute * 60 + second
        - i64::from(utc_offset);
    UNIX_EPOCH.checked_add(Duration::from_secs(u64::try_from(seconds).ok()?))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's `days_from_civil`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The error an answer with error `status` stands for: an RFC 6749 §5.2 error
/// (`{"error": "...", "error_description": "..."}`) when its body is one, else the status.
pub(crate) fn error_answer(gateway: &'static str, status: StatusCode, body: &[u8]) -> GatewayError {
    oauth_error(gateway, status, body).unwrap_or(GatewayError::Status {
        gateway,
        status,
        retry_after: None,
    })
}

fn oauth_error(gateway: &'static str, status: StatusCode, body: &[u8]) -> Option<GatewayError> {
    let value: Value = serde_json::from_slice(body).ok()?;
    let error = value.get("error")?.as_str()?;
    // Error codes are printable ASCII without quotes or backslashes (§5.2); anything else is
    // not a standard error body.
    if error.is_empty()
        || !error
            .bytes()
            .all(|b| (0x20..=0x7e).contains(&b) && b != b'"' && b != b'\\')
    {
        return None;
    }
    let description = value
        .get("error_description")
        .and_then(Value::as_str)
        .map(|d| d.chars().filter(|c| !c.is_control()).take(300).collect());
    Some(GatewayError::OAuth {
        gateway,
        status,
        error: error.to_owned(),
        description,
    })
}

/// How far this host's clock may be from the issuer's, as a JWT's `iat` shows it, before
/// the JWT's `exp` is no longer compared with this host's clock (network time, and `iat`
/// rounded down to the second, stay well within it).
const CLOCK_TOLERANCE: Duration = Duration::from_secs(5);

/// `token` with the earlier of `stated` (the answer's own expiry field, if it had one) and the
/// JWT's `exp` (if `secret` is a JWT that has one): a token is not used past either. With
/// neither, as it is (the cache then gives it its default lifetime).
///
/// `exp` is compared with this host's clock (which catches an issuer that rounds `iat` down
/// and so issues tokens ending up to a second before `expires_in` implies), unless the JWT's
/// `iat` shows that clock more than [`CLOCK_TOLERANCE`] from the issuer's: the JWT's own life,
/// `exp - iat`, then caps `expires_in`, and a WARN names the difference. Without `iat`, an
/// `exp` already past by this host's clock while `expires_in` gives time left is taken as this
/// clock being wrong: `expires_in` is used, with a WARN.
pub(crate) fn with_expiry(token: Token, secret: &str, stated: Option<Expiry>) -> Token {
    let jwt = jwt_expiry(secret);
    let expiry = match (stated, jwt) {
        (None | Some(Expiry::Unknown), None) => return token,
        (Some(stated), None) => stated,
        (None | Some(Expiry::Unknown), Some(exp)) => Expiry::At(exp),
        (Some(Expiry::At(at)), Some(exp)) => Expiry::At(at.min(exp)),
        (Some(Expiry::In(lifetime)), Some(exp)) => {
            let now = SystemTime::now();
            let issued = jwt_time(secret, "iat");
            let apart = issued.map(|iat| {
                now.duration_since(iat)
                    .unwrap_or_else(|early| early.duration())
            });
            match (issued, apart) {
                (Some(iat), Some(apart)) if apart > CLOCK_TOLERANCE => {
                    tracing::warn!(
                        apart_s = apart.as_secs(),
                        "this host's clock and the token issuer's disagree (by the token's iat); \
                         its expiry is counted from its own stated life, not this clock: check NTP"
                    );
                    let life = exp.duration_since(iat).unwrap_or_default();
                    Expiry::In(lifetime.min(life))
                }
                _ => match exp.duration_since(now) {
                    Ok(left) if left < lifetime => Expiry::At(exp),
                    Ok(_) => Expiry::In(lifetime),
                    Err(_) if issued.is_none() && !lifetime.is_zero() => {
                        tracing::warn!(
                            "the token's exp is already past by this host's clock while its \
                             expires_in is not: using expires_in; check this host's clock"
                        );
                        Expiry::In(lifetime)
                    }
                    Err(_) => Expiry::At(exp),
                },
            }
        }
        // A kind of expiry this crate does not know of: as stated.
        (Some(stated), Some(_)) => stated,
    };
    token.with_expiry(expiry)
}

/// The `Retry-After` of an answer (RFC 9110 §10.2.3): delay-seconds, or an HTTP date (a date
/// already past is "now"). `None` when absent or unreadable.
pub(crate) fn retry_after(headers: &http::HeaderMap, now: SystemTime) -> Option<Duration> {
    let value = headers
        .get(http::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn userinfo_becomes_basic_credentials() {
        let uri: Uri = "https://app:p%40ss@auth.example.com/token?x=1"
            .parse()
            .unwrap();
        let (uri, basic) = split_userinfo(uri).unwrap();
        assert_eq!(uri, "https://auth.example.com/token?x=1");
        let basic = basic.unwrap();
        assert!(basic.is_sensitive());
        // base64("app:p@ss")
        assert_eq!(basic, "Basic YXBwOnBAc3M=");
        let plain: Uri = "https://auth.example.com/token".parse().unwrap();
        assert_eq!(split_userinfo(plain.clone()), Some((plain, None)));
        let bad: Uri = "https://a:%ZZ@auth.example.com/".parse().unwrap();
        assert!(split_userinfo(bad).is_none());
    }

    #[test]
    fn an_https_endpoint_needs_a_sender_that_speaks_tls() {
        let refused = tls_available("https", false, "token_url").unwrap_err();
        let text = refused.to_string();
        assert!(
            text.contains("token_url") && text.contains("`rustls`"),
            "{text}"
        );
        assert!(tls_available("https", true, "token_url").is_ok());
        // Plain http to loopback needs no TLS.
        assert!(tls_available("http", false, "token_url").is_ok());
    }

    #[cfg(feature = "reqwest")]
    #[test]
    fn an_issuer_client_with_tls_takes_an_https_endpoint() {
        use crate::HttpSend;
        let client = crate::IssuerClient::new().unwrap();
        // Feature `rustls` on (as in the workspace's tests): reqwest has TLS, and it is seen.
        if cfg!(feature = "rustls") {
            assert!(client.speaks_https());
            let issuer = Issuer::new(
                Arc::new(client),
                "test",
                "https://auth.example.com",
                "/token",
                "base_url",
            );
            assert!(issuer.is_ok(), "{issuer:?}");
        }
    }

    #[test]
    fn reads_local_times() {
        let utc = |s| {
            local_time(s, 0)
                .unwrap()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_secs()
        };
        assert_eq!(utc("1970-01-01 00:00:00"), 0);
        assert_eq!(utc("2000-03-01 00:00:00"), 951_868_800);
        assert_eq!(utc("2021-01-29 13:46:01"), 1_611_927_961);
        let turkey = local_time("2021-01-29 16:46:01", 3 * 3600).unwrap();
        assert_eq!(
            turkey.duration_since(UNIX_EPOCH).unwrap().as_secs(),
            1_611_927_961
        );
        for bad in [
            "",
            "2021-13-01 00:00:00",
            "2021-01-29",
            "yesterday",
            "2021-01-29 25:00:00",
        ] {
            assert!(local_time(bad, 0).is_none(), "{bad}");
        }
    }

    #[test]
    fn reads_jwt_expiry() {
        // {"exp":1611927961}
        let token = "eyJhbGciOiJIUzI1NiJ9.eyJleHAiOjE2MTE5Mjc5NjF9.sig";
        let exp = jwt_expiry(token).unwrap();
        assert_eq!(
            exp.duration_since(UNIX_EPOCH).unwrap().as_secs(),
            1_611_927_961
        );
        assert!(jwt_expiry("not-a-jwt").is_none());
        assert!(jwt_expiry("a.%%%.c").is_none());
        assert!(jwt_expiry("eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.sig").is_none()); // no exp
    }
}

#[cfg(test)]
mod retry_after_tests {
    use super::*;

    #[test]
    fn reads_seconds_and_http_dates() {
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let header = |v: &str| {
            let mut h = http::HeaderMap::new();
            h.insert(http::header::RETRY_AFTER, HeaderValue::from_str(v).unwrap());
            h
        };
        assert_eq!(retry_after(&header("5"), now), Some(Duration::from_secs(5)));
        assert_eq!(
            retry_after(&header(" 120 "), now),
            Some(Duration::from_secs(120))
        );
        let later = httpdate::fmt_http_date(now + Duration::from_secs(30));
        assert_eq!(
            retry_after(&header(&later), now),
            Some(Duration::from_secs(30))
        );
        let earlier = httpdate::fmt_http_date(now - Duration::from_secs(30));
        assert_eq!(retry_after(&header(&earlier), now), Some(Duration::ZERO));
        assert_eq!(retry_after(&header("soon"), now), None);
        assert_eq!(retry_after(&header("-1"), now), None);
        assert_eq!(retry_after(&http::HeaderMap::new(), now), None);
    }
}
