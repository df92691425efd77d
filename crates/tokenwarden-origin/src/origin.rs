//! An origin (scheme, host, port) parsed and normalised once, and which hosts are loopback.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

use http::Uri;

use tokenwarden_core::ConfigError;

use crate::redact::redact_url;

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
    pub(crate) scheme: Scheme,
    /// Lower-case; IPv6 addresses in brackets.
    pub(crate) host: Box<str>,
    pub(crate) port: u16,
    /// Whether `host` is loopback, decided once.
    loopback: bool,
    /// `host:port`, as a request's authority most often reads: compared as text first.
    authority: Box<str>,
}

/// The schemes an origin can have: the two HTTP clients speak. (`ws`/`wss` are not among
/// them: an HTTP client given a `wss://` URL, say by a redirect, would send it in clear text
/// to port 80.)
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Scheme {
    Http,
    Https,
}

impl Scheme {
    pub(crate) fn parse(text: &str) -> Option<Self> {
        [("https", Scheme::Https), ("http", Scheme::Http)]
            .into_iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(text))
            .map(|(_, scheme)| scheme)
    }

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }

    pub(crate) fn default_port(self) -> u16 {
        match self {
            Scheme::Http => 80,
            Scheme::Https => 443,
        }
    }

    pub(crate) fn is_secure(self) -> bool {
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

    pub(crate) fn new(scheme: Scheme, host: String, port: u16) -> Self {
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
    pub(crate) fn spelled_as(&self, scheme: &str, authority: &str) -> bool {
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
    pub(crate) fn from_uri(uri: &Uri) -> Option<Self> {
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
pub(crate) fn port_text_valid(authority: &str) -> bool {
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
pub(crate) fn host_eq(normalised: &str, host: &str) -> bool {
    if normalised.eq_ignore_ascii_case(host) {
        return true;
    }
    host.starts_with('[')
        && normalised.starts_with('[')
        && ipv6(host).is_some_and(|address| ipv6(normalised) == Some(address))
}

/// The address of a bracketed IPv6 host (`[::1]`), if it is one.
pub(crate) fn ipv6(host: &str) -> Option<Ipv6Addr> {
    host.strip_prefix('[')?.strip_suffix(']')?.parse().ok()
}

pub(crate) fn normalise_host(host: &str) -> Option<String> {
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
