//! One exchange with a token endpoint: the request, its redirects refused, the answer read
//! within its cap, its failures typed and stripped of every credential; recovery probes; the
//! configured URL printed redacted.

use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use base64::Engine;
use bytes::Bytes;
use http::header::{ACCEPT, CONTENT_TYPE};
use http::{HeaderName, HeaderValue, Request, StatusCode, Uri};
use tokenwarden_core::{BoxError, ConfigError, FetchError, Probe, Token};
use tokenwarden_origin::{Origin, RedactedUri, redact_url, transport_allowed};

use crate::error::TransportError;
use crate::http::{ReadFailed, RedirectFollowed, TooLarge};
use crate::redact::Secrets;

use super::calendar::retry_after;
use crate::{DEFAULT_MAX_RESPONSE, GatewayError, HttpSend};

/// How much of a recovery probe's answer is read: its status is all that counts.
const PROBE_MAX_BODY: usize = 4096;

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

    /// Whether the endpoint URL had `user:password@`, sent as HTTP Basic credentials.
    pub(crate) fn has_url_credentials(&self) -> bool {
        self.basic.is_some()
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
            .map(|(status, _, body)| (status, body))
    }

    /// [`post`](Self::post), with the answer's headers.
    pub(crate) async fn post_with_headers(
        &self,
        content_type: Option<&'static str>,
        headers: &[(HeaderName, HeaderValue)],
        body: Bytes,
    ) -> Result<(StatusCode, http::HeaderMap, Bytes), GatewayError> {
        self.exchange(http::Method::POST, content_type, headers, body)
            .await
    }

    /// The endpoint's URL, without any `user:password@`.
    pub(crate) fn url(&self) -> String {
        self.uri.to_string()
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
            .map(|(status, _, body)| (status, body))
    }

    async fn exchange(
        &self,
        method: http::Method,
        content_type: Option<&'static str>,
        headers: &[(HeaderName, HeaderValue)],
        body: Bytes,
    ) -> Result<(StatusCode, http::HeaderMap, Bytes), GatewayError> {
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
            Ok(response) => {
                let (parts, body) = response.into_parts();
                Ok((parts.status, parts.headers, body))
            }
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
}
