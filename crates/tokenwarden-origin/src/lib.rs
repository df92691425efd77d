//! Where tokens may go: origins parsed and normalised once, scopes made of them, the
//! plain-text rule, and URLs printed without their secrets.
//!
//! HTTP policy kept out of the token cache: the layers (through `tokenwarden-http`) decide
//! with a [`Scope`] which requests get a token, and the gateways check their issuer URLs with
//! the same plain-text rule ([`check_transport`]) and print them with [`redact_url`]. The
//! `tokenwarden` facade re-exports [`Scope`], [`Origin`] and [`InsecureTransport`].
#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![warn(missing_debug_implementations, rust_2018_idioms, unreachable_pub)]

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use http::Uri;

use tokenwarden_core::ConfigError;

/// An origin: scheme, host and port, normalised (scheme and host lower-case, the default
/// port filled in, one trailing dot of the host dropped; a request to `host.` still does not
/// match, which fails closed).
///
/// Parsed once, from `scheme://host[:port]`; anything else is an error, never a silent no-op:
///
/// ```
/// use tokenwarden_origin::Origin;
///
/// let api = Origin::parse("https://API.example.com")?;
/// assert_eq!(api, Origin::parse("https://api.example.com:443/")?);
/// assert_eq!(api.to_string(), "https://api.example.com");
///
/// assert!(Origin::parse("api.example.com").is_err()); // no scheme
/// assert!(Origin::parse("https://user:pw@api.example.com").is_err()); // credentials
/// assert!(Origin::parse("https://api.example.com/v1").is_err()); // a path
/// assert!(Origin::parse("ftp://api.example.com").is_err()); // not http(s) or ws(s)
/// # Ok::<_, tokenwarden_core::ConfigError>(())
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Origin {
    scheme: Scheme,
    /// Lower-case; IPv6 addresses in brackets.
    host: Box<str>,
    port: u16,
    /// Whether `host` is loopback, decided once.
    loopback: bool,
    /// `host:port`, as a request's authority most often reads: compared as text first.
    authority: Box<str>,
}

/// The schemes an origin can have: the two HTTP clients speak. (`ws`/`wss` are not among
/// them: an HTTP client given a `wss://` URL, say by a redirect, would send it in clear text
/// to port 80.)
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Scheme {
    Http,
    Https,
}

impl Scheme {
    fn parse(text: &str) -> Option<Self> {
        [("https", Scheme::Https), ("http", Scheme::Http)]
            .into_iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(text))
            .map(|(_, scheme)| scheme)
    }

    fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }

    fn default_port(self) -> u16 {
        match self {
            Scheme::Http => 80,
            Scheme::Https => 443,
        }
    }

    fn is_secure(self) -> bool {
        matches!(self, Scheme::Https)
    }
}

impl Origin {
    /// Parses `scheme://host[:port]` (a trailing `/` is allowed). The scheme is `https` or
    /// `http`.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Origin`] if the text has no scheme or host, another scheme, credentials
    /// (`user:pass@`), a path, a query or a fragment, or port 0.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let problem = |problem| ConfigError::Origin {
            origin: redact_url(text),
            problem,
        };
        if text.contains('#') {
            return Err(problem("it has a fragment"));
        }
        let uri: Uri = text
            .parse()
            .map_err(|_| problem("it is not a URL (write it as scheme://host[:port])"))?;
        let Some(scheme) = uri.scheme_str() else {
            return Err(problem(
                "it has no scheme (write it as https://host[:port])",
            ));
        };
        let scheme =
            Scheme::parse(scheme).ok_or_else(|| problem("its scheme is not https or http"))?;
        let authority = uri.authority().ok_or_else(|| problem("it has no host"))?;
        if authority.as_str().contains('@') {
            return Err(problem(
                "it carries credentials (user:password@); origins never do",
            ));
        }
        if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
            return Err(problem(
                "it has a path or query; an origin is scheme://host[:port] only",
            ));
        }
        let host =
            normalise_host(authority.host()).ok_or_else(|| problem("its host is not valid"))?;
        if !port_text_valid(authority.as_str()) {
            return Err(problem("its port is not a number from 1 to 65535"));
        }
        let port = match authority.port_u16() {
            Some(0) => return Err(problem("its port is 0")),
            Some(port) => port,
            None if authority.as_str().ends_with(':') => {
                return Err(problem("its port is empty"));
            }
            None => scheme.default_port(),
        };
        Ok(Self::new(scheme, host, port))
    }

    fn new(scheme: Scheme, host: String, port: u16) -> Self {
        Self {
            loopback: is_loopback(&host),
            authority: format!("{host}:{port}").into(),
            scheme,
            host: host.into(),
            port,
        }
    }

    /// Whether a request with this scheme and authority text is to this origin, read off the
    /// text without parsing it: `host:port`, or `host` where the port is the scheme's default,
    /// any case. `false` means only "not in this spelling" (the parsed comparison decides).
    #[inline]
    fn spelled_as(&self, scheme: &str, authority: &str) -> bool {
        let same = |ours: &str| {
            ours.len() == authority.len()
                && (*ours == *authority || ours.eq_ignore_ascii_case(authority))
        };
        self.scheme.as_str() == scheme
            && (same(&self.authority)
                || (self.port == self.scheme.default_port() && same(&self.host)))
    }

    /// The origin of an absolute URL such as an API's base URL (`https://api.example.com/v1`):
    /// its path, query and any credentials are left out.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Origin`] if it is not an absolute `https` or `http` URL.
    pub fn of_url(url: &str) -> Result<Self, ConfigError> {
        url.parse::<Uri>()
            .ok()
            .filter(|uri| uri.authority().is_some_and(|a| port_text_valid(a.as_str())))
            .and_then(|uri| Self::from_uri(&uri))
            .filter(|origin| origin.port != 0)
            .ok_or_else(|| ConfigError::Origin {
                origin: redact_url(url),
                problem: "it is not an absolute https or http URL with a valid port",
            })
    }

    /// The origin of `uri` as text for messages — `scheme://host[:port]`, never a path, a
    /// query or credentials — or what the URI is instead.
    ///
    /// ```
    /// use tokenwarden_origin::Origin;
    ///
    /// let uri = "http://user:pw@evil.example:8080/steal?code=1".parse().unwrap();
    /// assert_eq!(Origin::describe(&uri), "http://evil.example:8080");
    /// assert_eq!(Origin::describe(&"/v1".parse().unwrap()), "a relative URL");
    /// ```
    #[must_use]
    pub fn describe(uri: &Uri) -> String {
        match (uri.scheme_str(), Self::from_uri(uri)) {
            (_, Some(origin)) => origin.to_string(),
            (None, None) => "a relative URL".to_owned(),
            (Some(_), None) => "a URL with no http(s) origin".to_owned(),
        }
    }

    /// The origin of an absolute URI; `None` for a relative one or another scheme.
    #[must_use]
    pub fn from_uri(uri: &Uri) -> Option<Self> {
        let scheme = Scheme::parse(uri.scheme_str()?)?;
        let host = normalise_host(uri.host()?)?;
        let port = uri.port_u16().unwrap_or(scheme.default_port());
        Some(Self::new(scheme, host, port))
    }

    /// `https` or `http`.
    #[must_use]
    pub fn scheme(&self) -> &'static str {
        self.scheme.as_str()
    }

    /// The host, lower-case (IPv6 addresses in brackets).
    #[must_use]
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The port, the scheme's default filled in.
    #[must_use]
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Whether the scheme encrypts (`https`).
    #[must_use]
    pub fn is_secure(&self) -> bool {
        self.scheme.is_secure()
    }

    /// Whether the host is loopback: `localhost`, `127.0.0.0/8` or `[::1]`.
    #[must_use]
    pub fn is_loopback(&self) -> bool {
        self.loopback
    }

    /// Whether the plain-text rule lets a token go here.
    pub(crate) fn transport_ok(&self, allow_insecure: bool) -> bool {
        self.scheme.is_secure() || self.loopback || allow_insecure
    }

    /// Whether a request to `scheme`, `host` and `port` (`None`: the scheme's default) is to
    /// this origin.
    #[must_use]
    pub fn matches(&self, scheme: &str, host: &str, port: Option<u16>) -> bool {
        port.unwrap_or(self.scheme.default_port()) == self.port
            && self.scheme.as_str().eq_ignore_ascii_case(scheme)
            && host_eq(&self.host, host)
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}", self.scheme.as_str(), self.host)?;
        if self.port != self.scheme.default_port() {
            write!(f, ":{}", self.port)?;
        }
        Ok(())
    }
}

impl fmt::Debug for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Origin({self})")
    }
}

impl std::str::FromStr for Origin {
    type Err = ConfigError;

    fn from_str(text: &str) -> Result<Self, ConfigError> {
        Self::parse(text)
    }
}

/// Whether the port part of an authority (`host`, `host:443`, `[::1]:80`) is absent or a
/// number from 0 to 65535 — `http` reads anything else as "no port", which would silently
/// become the default one.
fn port_text_valid(authority: &str) -> bool {
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let port = match host_port.strip_prefix('[') {
        Some(rest) => match rest.split_once(']') {
            Some((_, "")) => return true,
            Some((_, after)) => match after.strip_prefix(':') {
                Some(port) => port,
                None => return false,
            },
            None => return false,
        },
        None => match host_port.split_once(':') {
            Some((_, port)) => port,
            None => return true,
        },
    };
    port.is_empty() || (port.bytes().all(|b| b.is_ascii_digit()) && port.parse::<u16>().is_ok())
}

/// Compares a normalised host with one from a request, ASCII case-insensitively. A request's
/// trailing dot (`api.example.com.`) does not match: such a name may resolve differently (and
/// `localhost.` may go to DNS), so it fails closed.
///
/// An IPv6 address can be written many ways (`[::ffff:7f00:1]` is `[::ffff:127.0.0.1]`,
/// `[0:0:0:0:0:0:0:1]` is `[::1]`): a request's bracketed host that is not the normalised
/// text is compared as an address. Only a host starting with `[` is parsed, and only when the
/// text differs, so names cost no more than before.
#[inline]
fn host_eq(normalised: &str, host: &str) -> bool {
    if normalised.eq_ignore_ascii_case(host) {
        return true;
    }
    host.starts_with('[')
        && normalised.starts_with('[')
        && ipv6(host).is_some_and(|address| ipv6(normalised) == Some(address))
}

/// The address of a bracketed IPv6 host (`[::1]`), if it is one.
fn ipv6(host: &str) -> Option<Ipv6Addr> {
    host.strip_prefix('[')?.strip_suffix(']')?.parse().ok()
}

fn normalise_host(host: &str) -> Option<String> {
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.is_empty() {
        return None;
    }
    if let Some(v6) = host.strip_prefix('[') {
        let address: Ipv6Addr = v6.strip_suffix(']')?.parse().ok()?;
        return Some(format!("[{address}]"));
    }
    Some(host.to_ascii_lowercase())
}

/// Whether `host` (as in a URL: IPv6 in brackets) is this machine: `localhost`, an address in
/// `127.0.0.0/8`, or `[::1]` (also written in full, or IPv4-mapped). Other names, even ones
/// ending in `.localhost` and `localhost.` itself, may be sent to DNS and do not count.
#[must_use]
pub fn is_loopback(host: &str) -> bool {
    if let Some(v6) = host.strip_prefix('[') {
        return v6
            .strip_suffix(']')
            .and_then(|v6| v6.parse::<Ipv6Addr>().ok())
            .is_some_and(|ip| {
                ip.is_loopback() || ip.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
            });
    }
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<Ipv4Addr>().is_ok_and(|ip| ip.is_loopback())
}

/// The origins a layer puts tokens on: a list given explicitly, or — as a named opt-in —
/// any origin at all.
///
/// ```
/// use tokenwarden_origin::Scope;
///
/// let scope = Scope::origin("https://api.example.com")?
///     .with_origin("https://files.example.com:8443")?;
/// assert!(scope.covers(Some("https"), Some("API.example.com"), None));
/// assert!(scope.covers(Some("https"), Some("files.example.com"), Some(8443)));
/// assert!(!scope.covers(Some("https"), Some("files.example.com"), None));
/// assert!(!scope.covers(Some("http"), Some("api.example.com"), None));
/// assert!(!scope.covers(None, None, None)); // a relative URI: its origin is unknown
/// # Ok::<_, tokenwarden_core::ConfigError>(())
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct Scope(Kind);

#[derive(Clone, PartialEq, Eq)]
enum Kind {
    Origins(Arc<[Origin]>),
    Any,
}

impl Scope {
    /// Tokens go to this one origin (`scheme://host[:port]`).
    ///
    /// # Errors
    ///
    /// [`ConfigError::Origin`] if it is not a usable origin (see [`Origin::parse`]).
    pub fn origin(origin: &str) -> Result<Self, ConfigError> {
        Ok(Origin::parse(origin)?.into())
    }

    /// Tokens go to the origin of this URL (an API's base URL, path and all; see
    /// [`Origin::of_url`]).
    ///
    /// # Errors
    ///
    /// [`ConfigError::Origin`] if it is not an absolute `https` or `http` URL.
    pub fn origin_of(url: &str) -> Result<Self, ConfigError> {
        Ok(Origin::of_url(url)?.into())
    }

    /// Tokens go to these origins.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Origin`] for an unusable origin, [`ConfigError::Invalid`] for none.
    pub fn origins<'a>(origins: impl IntoIterator<Item = &'a str>) -> Result<Self, ConfigError> {
        let origins = origins
            .into_iter()
            .map(Origin::parse)
            .collect::<Result<Vec<_>, _>>()?;
        if origins.is_empty() {
            return Err(ConfigError::Invalid {
                name: "scope",
                reason: "no origin given; name the API's origin, or use Scope::any_origin()",
            });
        }
        Ok(Self(Kind::Origins(origins.into())))
    }

    /// Tokens go to **every** origin, relative URIs included.
    ///
    /// Only for a client that never talks to anyone but the API, behind a redirect follower
    /// that never leaves it: a redirect to another host then carries the token there. The
    /// plain-text rule still holds (no token over `http`/`ws` off loopback unless allowed).
    #[must_use]
    pub fn any_origin() -> Self {
        Self(Kind::Any)
    }

    /// Adds an origin.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Origin`] if it is not a usable origin, [`ConfigError::Invalid`] on
    /// [`Scope::any_origin`].
    pub fn with_origin(self, origin: &str) -> Result<Self, ConfigError> {
        let origin = Origin::parse(origin)?;
        Ok(match self.0 {
            Kind::Any => {
                return Err(ConfigError::Invalid {
                    name: "scope",
                    reason: "it already covers any origin, so adding one would change nothing; \
                             list the origins instead of using Scope::any_origin()",
                });
            }
            Kind::Origins(list) => {
                let mut list = list.to_vec();
                if !list.contains(&origin) {
                    list.push(origin);
                }
                Self(Kind::Origins(list.into()))
            }
        })
    }

    /// Whether this is [`any_origin`](Self::any_origin).
    #[must_use]
    pub fn is_any(&self) -> bool {
        matches!(self.0, Kind::Any)
    }

    /// The origins listed (empty for [`any_origin`](Self::any_origin)).
    #[must_use]
    pub fn listed(&self) -> &[Origin] {
        match &self.0 {
            Kind::Origins(list) => list,
            Kind::Any => &[],
        }
    }

    /// The listed origin a request to this scheme, host and port is for: `Ok(None)` for none,
    /// `Err(())` for [`any_origin`](Self::any_origin) (no list to look in).
    pub(crate) fn find(
        &self,
        scheme: Option<&str>,
        host: Option<&str>,
        port: Option<u16>,
    ) -> Result<Option<&Origin>, ()> {
        match (&self.0, scheme, host) {
            (Kind::Any, ..) => Err(()),
            (Kind::Origins(list), Some(scheme), Some(host)) => {
                Ok(list.iter().find(|o| o.matches(scheme, host, port)))
            }
            (Kind::Origins(_), ..) => Ok(None),
        }
    }

    /// Whether a request to this scheme, host and port (`None`: the scheme's default) gets a
    /// token. A relative URI (no scheme or host) does only with
    /// [`any_origin`](Self::any_origin).
    #[must_use]
    pub fn covers(&self, scheme: Option<&str>, host: Option<&str>, port: Option<u16>) -> bool {
        // Any origin (`Err`), or a listed one found.
        !matches!(self.find(scheme, host, port), Ok(None))
    }

    /// [`admit`](Self::admit) for a request's URI. The common spelling of a listed origin
    /// (`scheme://host:port`, or without the default port) is recognised from the URI's text
    /// without parsing its authority; anything else is parsed and decided by `admit`.
    ///
    /// # Errors
    ///
    /// As [`admit`](Self::admit).
    #[inline]
    pub fn admit_uri(
        &self,
        uri: &Uri,
        allow_insecure_http: bool,
    ) -> Result<bool, InsecureTransport> {
        if let (Some(scheme), Some(authority)) = (uri.scheme_str(), uri.authority())
            && let Some(decided) =
                self.admit_spelled(scheme, authority.as_str(), allow_insecure_http)
        {
            return decided;
        }
        self.admit(
            uri.scheme_str(),
            uri.host(),
            uri.port_u16(),
            allow_insecure_http,
        )
    }

    /// [`admit`](Self::admit) decided from a request's scheme and authority *text*, when that
    /// text is a listed origin's usual spelling (`host:port`, or `host` for the scheme's
    /// default port, in any case): `None` when it is not (it may still be in scope, written
    /// otherwise — decide with `admit`). Costs a comparison of strings, no parsing.
    ///
    /// # Errors
    ///
    /// As [`admit`](Self::admit).
    #[inline]
    pub fn admit_spelled(
        &self,
        scheme: &str,
        authority: &str,
        allow_insecure_http: bool,
    ) -> Option<Result<bool, InsecureTransport>> {
        let Kind::Origins(list) = &self.0 else {
            return None;
        };
        let origin = list.iter().find(|o| o.spelled_as(scheme, authority))?;
        Some(if origin.transport_ok(allow_insecure_http) {
            Ok(true)
        } else {
            // Spelled `host` or `host:port`.
            let host = if authority.len() == origin.host.len() {
                authority
            } else {
                authority
                    .rsplit_once(':')
                    .map_or(authority, |(host, _)| host)
            };
            Err(InsecureTransport {
                scheme: origin.scheme().to_owned(),
                host: host.to_owned(),
            })
        })
    }

    /// What to do with a request to this scheme, host and port (`None`: the scheme's
    /// default): `Ok(true)` put the token on, `Ok(false)` send it untouched (it is outside the
    /// scope), or an [`InsecureTransport`] error: it is in scope but the plain-text rule
    /// forbids the token there (`allow_insecure_http` lifts it for `http` off loopback).
    ///
    /// # Errors
    ///
    /// [`InsecureTransport`] for plain `http` to a host that is not loopback (unless allowed),
    /// or a scheme that is neither secure nor plain HTTP.
    pub fn admit(
        &self,
        scheme: Option<&str>,
        host: Option<&str>,
        port: Option<u16>,
        allow_insecure_http: bool,
    ) -> Result<bool, InsecureTransport> {
        match self.find(scheme, host, port) {
            // Listed: whether it is secure or loopback was decided when the origin was parsed.
            Ok(Some(origin)) if origin.transport_ok(allow_insecure_http) => Ok(true),
            Ok(Some(origin)) => Err(InsecureTransport {
                scheme: origin.scheme().to_ascii_lowercase(),
                host: host.unwrap_or("").to_owned(),
            }),
            Ok(None) => Ok(false),
            // Any origin: judge the request's own scheme and host.
            Err(()) => match scheme {
                Some(scheme) => {
                    transport_allowed(scheme, host.unwrap_or(""), allow_insecure_http)?;
                    Ok(true)
                }
                // A relative URI; or an authority with no scheme (a CONNECT target), which an
                // HTTP client sends in plain text: the plain-text rule applies.
                None => {
                    if let Some(host) = host {
                        transport_allowed("http", host, allow_insecure_http)?;
                    }
                    Ok(true)
                }
            },
        }
    }
}

impl From<Origin> for Scope {
    fn from(origin: Origin) -> Self {
        Self(Kind::Origins(Arc::from([origin])))
    }
}

impl fmt::Debug for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Kind::Any => f.write_str("Scope(any origin)"),
            Kind::Origins(list) => f.debug_tuple("Scope").field(list).finish(),
        }
    }
}

/// A token was about to be sent where the plain-text rule forbids it: over `http` to a host
/// that is not loopback (unless allowed), or over a scheme that is neither `http` nor `https`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "refusing to send a token over `{scheme}` to `{host}`: tokens go over https, and over plain \
     http only to loopback unless allowed explicitly (with_insecure_http) on a trusted network"
)]
pub struct InsecureTransport {
    /// The scheme of the request.
    pub scheme: String,
    /// The host the request was for.
    pub host: String,
}

/// The plain-text rule: `https` anywhere; `http` to loopback hosts, or anywhere if
/// `allow_insecure`; no other scheme.
///
/// # Errors
///
/// [`InsecureTransport`] when the rule forbids it.
pub fn transport_allowed(
    scheme: &str,
    host: &str,
    allow_insecure: bool,
) -> Result<(), InsecureTransport> {
    match Scheme::parse(scheme) {
        Some(s) if s.is_secure() => Ok(()),
        Some(_) if allow_insecure || is_loopback(host) => Ok(()),
        _ => Err(InsecureTransport {
            scheme: scheme.to_ascii_lowercase(),
            host: host.to_owned(),
        }),
    }
}

/// [`transport_allowed`] for an absolute URI. A relative URI has no transport to judge and
/// passes.
///
/// # Errors
///
/// [`InsecureTransport`] when the rule forbids it.
pub fn check_transport(uri: &Uri, allow_insecure: bool) -> Result<(), InsecureTransport> {
    match (uri.scheme_str(), uri.host()) {
        (Some(scheme), Some(host)) => transport_allowed(scheme, host, allow_insecure),
        (Some(scheme), None) => Err(InsecureTransport {
            scheme: scheme.to_owned(),
            host: String::new(),
        }),
        // An authority with no scheme (a CONNECT target) goes in plain text.
        (None, Some(host)) => transport_allowed("http", host, allow_insecure),
        (None, None) => Ok(()),
    }
}

/// A URL as it may be printed: credentials (`user:pass@`) and every query value replaced by
/// `[redacted]`, the fragment dropped. Text that does not look like a URL is redacted whole.
///
/// ```
/// use tokenwarden_origin::redact_url;
///
/// assert_eq!(
///     redact_url("https://user:pw@auth.example.com/token?api_key=k3y&grant=x#frag"),
///     "https://[redacted]@auth.example.com/token?api_key=[redacted]&grant=[redacted]",
/// );
/// assert_eq!(redact_url("https://api.example.com/v1"), "https://api.example.com/v1");
/// ```
#[must_use]
pub fn redact_url(text: &str) -> String {
    const R: &str = "[redacted]";
    let Some((scheme, rest)) = text.split_once("://") else {
        return if text.is_empty() {
            String::new()
        } else {
            R.to_owned()
        };
    };
    if !scheme
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
    {
        return R.to_owned();
    }
    let mut out = format!("{scheme}://");
    // Credentials end at the last `@`, wherever it is: a password may hold `/`, `?` or `#`,
    // which ends the authority for a parser. Hiding a host now and then is the lesser harm.
    let rest = match rest.rsplit_once('@') {
        Some((_, after)) => {
            out.push_str(R);
            out.push('@');
            after
        }
        None => rest,
    };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, rest) = rest.split_at(authority_end);
    out.push_str(authority);
    let rest = rest.split('#').next().unwrap_or("");
    let (path, query) = match rest.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (rest, None),
    };
    out.push_str(path);
    if let Some(query) = query {
        out.push('?');
        let pairs: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((key, _)) => format!("{key}={R}"),
                None if pair.is_empty() => String::new(),
                None => R.to_owned(),
            })
            .collect();
        out.push_str(&pairs.join("&"));
    }
    out
}

/// A URI that prints redacted (see [`redact_url`]).
#[derive(Clone, PartialEq, Eq)]
pub struct RedactedUri(pub Uri);

impl fmt::Display for RedactedUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&redact_url(&self.0.to_string()))
    }
}

impl fmt::Debug for RedactedUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_authority_with_no_scheme_is_held_to_the_plain_text_rule() {
        // A CONNECT target: an HTTP client sends it in plain text.
        let any = Scope::any_origin();
        let connect: Uri = "api.example.com:443".parse().unwrap();
        assert!(any.admit_uri(&connect, false).is_err());
        assert_eq!(any.admit_uri(&connect, true), Ok(true));
        assert!(check_transport(&connect, false).is_err());
        let local: Uri = "localhost:8080".parse().unwrap();
        assert_eq!(any.admit_uri(&local, false), Ok(true));
        let relative: Uri = "/v1/orders".parse().unwrap();
        assert_eq!(any.admit_uri(&relative, false), Ok(true));
        assert!(check_transport(&relative, false).is_ok());
    }

    #[test]
    fn reading_the_uri_text_decides_as_parsing_it_does() {
        let scopes = [
            Scope::origins(["https://api.example.com", "http://127.0.0.1:8080"]).unwrap(),
            Scope::origins(["http://api.example.com", "https://[::1]:8443"]).unwrap(),
            Scope::origin("http://localhost").unwrap(),
            Scope::any_origin(),
        ];
        let uris = [
            "https://api.example.com/v1",
            "https://API.Example.com:443/v1",
            "https://api.example.com:8443/v1",
            "https://api.example.com./v1",
            "https://user@api.example.com/v1",
            "http://api.example.com/v1",
            "http://API.EXAMPLE.COM/v1",
            "http://api.example.com:80/v1",
            "http://127.0.0.1:8080/x",
            "http://127.0.0.1:08080/x",
            "http://127.0.0.1/x",
            "https://[::1]:8443/",
            "https://[0:0:0:0:0:0:0:1]:8443/",
            "http://localhost/",
            "http://localhost:80/",
            "http://LOCALHOST/",
            "ws://api.example.com/",
            "/relative",
        ];
        for scope in &scopes {
            for uri in uris {
                let parsed: Uri = uri.parse().unwrap();
                for allow in [false, true] {
                    assert_eq!(
                        scope.admit_uri(&parsed, allow),
                        scope.admit(parsed.scheme_str(), parsed.host(), parsed.port_u16(), allow),
                        "{scope:?} {uri} allow_insecure={allow}"
                    );
                }
            }
        }
    }

    #[test]
    fn an_ipv6_host_written_another_way_is_the_same_origin() {
        let cases = [
            ("http://[::ffff:7f00:1]:8080", "[::ffff:127.0.0.1]"),
            ("http://[0:0:0:0:0:0:0:1]:8080", "[::1]"),
            ("https://[2001:db8:0::1]", "[2001:db8::1]"),
            ("https://[2001:DB8::1]", "[2001:0db8:0000::0001]"),
        ];
        for (url, other) in cases {
            let scope = Scope::origin_of(url).unwrap();
            let written = |host: &str| {
                let uri: Uri = url
                    .replacen(
                        &url[url.find('[').unwrap()..=url.find(']').unwrap()],
                        host,
                        1,
                    )
                    .parse()
                    .unwrap();
                scope.admit_uri(&uri, false)
            };
            // The very URL the scope was made from, and the address written another way.
            let own = &url[url.find('[').unwrap()..=url.find(']').unwrap()];
            assert_eq!(written(own), Ok(true), "{url} as {own}");
            assert_eq!(written(other), Ok(true), "{url} as {other}");
            let uri: Uri = format!("{url}/v1").parse().unwrap();
            assert!(
                scope.covers(uri.scheme_str(), uri.host(), uri.port_u16()),
                "{url}"
            );
            // Another address is still refused, however written.
            assert_eq!(written("[2001:db8::2]"), Ok(false), "{url}");
            assert_eq!(written("[::2]"), Ok(false), "{url}");
            assert_eq!(written("[not-an-address]"), Ok(false), "{url}");
            assert_eq!(written("127.0.0.1"), Ok(false), "{url}");
        }
    }

    #[test]
    fn normalises() {
        let o = Origin::parse("HTTPS://Api.Example.COM.:443").unwrap();
        assert_eq!(o.to_string(), "https://api.example.com");
        assert_eq!(o.port(), 443);
        let v6 = Origin::parse("http://[0:0:0:0:0:0:0:1]:8080").unwrap();
        assert_eq!(v6.to_string(), "http://[::1]:8080");
        assert!(v6.is_loopback());
        assert!(v6.matches("http", "[::1]", Some(8080)));
        assert!(!v6.matches("http", "[::1]", None));
    }

    #[test]
    fn redacts() {
        assert_eq!(redact_url("not a url"), "[redacted]");
        assert_eq!(redact_url("http://h/p?secret"), "http://h/p?[redacted]");
        assert_eq!(redact_url("http://a@b@h/"), "http://[redacted]@h/");
        assert_eq!(
            redact_url("https://client:abc/def+ghi=@auth.example.com/t"),
            "https://[redacted]@auth.example.com/t"
        );
        assert_eq!(redact_url("https://c:ab?x@h/t"), "https://[redacted]@h/t");
        assert_eq!(redact_url("https://c:ab#x@h/t"), "https://[redacted]@h/t");
        assert_eq!(redact_url("https://h/t#frag"), "https://h/t");
    }

    #[test]
    fn ports() {
        for ok in [
            "h", "h:1", "h:65535", "h:", "u:p@h:80", "[::1]", "[::1]:80", "[::1]:",
        ] {
            assert!(port_text_valid(ok), "{ok}");
        }
        for bad in ["h:99999", "h:8443x", "h:abc", "[::1]x", "[::1]:x", "h:1:2"] {
            assert!(!port_text_valid(bad), "{bad}");
        }
    }
}
