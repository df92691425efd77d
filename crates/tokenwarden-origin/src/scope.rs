//! The origins a layer puts tokens on.

use std::fmt;
use std::sync::Arc;

use http::Uri;

use tokenwarden_core::ConfigError;

use crate::origin::*;
use crate::transport::*;

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
pub(crate) enum Kind {
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
