//! How a token is put on a request: which headers, in which format.

use http::header::AUTHORIZATION;
use http::{HeaderMap, HeaderName, HeaderValue};

use std::fmt;
use std::sync::{Arc, LazyLock};

use crate::dpop::{Bound, DpopProver};
use crate::{ConfigError, Error, Secret, TokenProblem};

const PLACEHOLDER: &str = "{token}";

/// The headers a token is presented in, plus fixed headers sent alongside it
/// (such as `Merchant-Account`).
///
/// Header values are built once per token by the cache, marked sensitive (so HTTP/2 HPACK
/// does not index them), and shared by every request that uses that token. Fixed header values
/// are marked sensitive too: they are often credentials (an API key). `Debug` shows header
/// names only.
///
/// # Which tokens are accepted
///
/// Every token a source returns is trimmed and checked before it is used; a token that fails
/// the check is refused with [`Error::MalformedToken`]. The rule is written out in
/// [docs/security.md](https://github.com/tokenwarden/tokenwarden/blob/main/docs/security.md) ("Token values");
/// [`with_token_charset`](Self::with_token_charset) relaxes the alphabet of a `Bearer` token.
///
/// ```
/// use http::{HeaderName, HeaderValue};
/// use tokenwarden_core::Presentation;
///
/// // Authorization: Bearer <token>, Merchant-Account: 12345
/// let p = Presentation::bearer()
///     .with_fixed_header(HeaderName::from_static("merchant-account"), HeaderValue::from_static("12345"));
///
/// // Token: <token>
/// let torus = Presentation::header(HeaderName::from_static("token"));
///
/// // X-Auth: Session <token>
/// let custom = Presentation::empty()
///     .with_template(HeaderName::from_static("x-auth"), "Session {token}")?;
/// # Ok::<_, tokenwarden_core::ConfigError>(())
/// ```
///
/// Cloning is a reference count: the caches of many keys share one presentation (and the
/// default, `Authorization: Bearer`, is one for the whole process).
#[derive(Clone)]
pub struct Presentation(Arc<Parts>);

#[derive(Clone)]
struct Parts {
    templates: Vec<Template>,
    fixed: Vec<(HeaderName, HeaderValue)>,
    charset: Option<TokenCharset>,
    /// The key DPoP-bound tokens are bound to.
    prover: Option<Arc<dyn DpopProver>>,
}

impl fmt::Debug for Presentation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Presentation")
            .field(
                "token_headers",
                &self.0.templates.iter().map(|t| &t.name).collect::<Vec<_>>(),
            )
            .field(
                "fixed_headers",
                &self.0.fixed.iter().map(|(n, _)| n).collect::<Vec<_>>(),
            )
            .field("token_charset", &self.token_charset())
            .field("dpop", &self.0.prover)
            .finish()
    }
}

/// Which characters a token may have (after surrounding whitespace is trimmed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum TokenCharset {
    /// RFC 6750's `b64token`: letters, digits, `-._~+/`, then any `=` padding. The default
    /// when the presentation has a `Bearer` or `DPoP` header (RFC 9449 §7.1).
    B64Token,
    /// Any visible ASCII character (`!` to `~`). The default otherwise.
    Visible,
}

#[derive(Clone, Debug)]
struct Template {
    name: HeaderName,
    prefix: String,
    suffix: String,
}

impl Presentation {
    /// No headers at all; add some with the `with_*` methods.
    #[must_use]
    pub fn empty() -> Self {
        Self(Arc::new(Parts {
            templates: Vec::new(),
            fixed: Vec::new(),
            charset: None,
            prover: None,
        }))
    }

    /// `Authorization: Bearer <token>`.
    #[must_use]
    pub fn bearer() -> Self {
        static BEARER: LazyLock<Presentation> =
            LazyLock::new(|| Presentation::empty().with_bearer());
        BEARER.clone()
    }

    /// `Authorization: DPoP <token>` and a fresh `DPoP` proof of `key` on every request
    /// (RFC 9449): the tokens are bound to `key`, which the token source holds too
    /// (`tokenwarden_gateways::oauth2::ClientCredentials::with_dpop` builds both). The HTTP
    /// layers sign the proofs, remember each server's `DPoP-Nonce` and answer its
    /// `use_dpop_nonce` challenge by sending the request again with the same token; see
    /// [docs/oauth2.md](https://github.com/tokenwarden/tokenwarden/blob/main/docs/oauth2.md)
    /// ("DPoP").
    #[must_use]
    pub fn dpop(key: Arc<dyn DpopProver>) -> Self {
        let mut p = Self::empty();
        let parts = Arc::make_mut(&mut p.0);
        parts.templates.push(Template {
            name: AUTHORIZATION,
            prefix: "DPoP ".to_owned(),
            suffix: String::new(),
        });
        parts.prover = Some(key);
        p
    }

    /// The key tokens are bound to, for a [`dpop`](Self::dpop) presentation.
    #[must_use]
    pub fn dpop_key(&self) -> Option<&Arc<dyn DpopProver>> {
        self.0.prover.as_ref()
    }

    /// What a snapshot of `secret` carries for its proofs: the key and the token's hash.
    pub(crate) fn bound(&self, secret: &Secret) -> Option<Bound> {
        self.0.prover.as_ref().map(|prover| Bound {
            ath: prover.token_hash(secret.expose()).into_boxed_str(),
            prover: Arc::clone(prover),
        })
    }

    /// `<name>: <token>`, e.g. `Token: <token>`.
    #[must_use]
    pub fn header(name: HeaderName) -> Self {
        Self::empty().with_header(name)
    }

    /// Adds `Authorization: Bearer <token>`.
    #[must_use]
    pub(crate) fn with_bearer(mut self) -> Self {
        Arc::make_mut(&mut self.0).templates.push(Template {
            name: AUTHORIZATION,
            prefix: "Bearer ".to_owned(),
            suffix: String::new(),
        });
        self
    }

    /// Adds `<name>: <token>`.
    #[must_use]
    pub fn with_header(mut self, name: HeaderName) -> Self {
        Arc::make_mut(&mut self.0).templates.push(Template {
            name,
            prefix: String::new(),
            suffix: String::new(),
        });
        self
    }

    /// Adds a header whose value is `template` with `{token}` replaced by the token.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Template`] if `{token}` does not appear exactly once, and
    /// [`ConfigError::TemplateValue`] if the fixed text is not a valid header value.
    pub fn with_template(mut self, name: HeaderName, template: &str) -> Result<Self, ConfigError> {
        let mut parts = template.split(PLACEHOLDER);
        let (Some(prefix), Some(suffix), None) = (parts.next(), parts.next(), parts.next()) else {
            return Err(ConfigError::Template { header: name });
        };
        if HeaderValue::from_str(&format!("{prefix}{suffix}")).is_err() {
            return Err(ConfigError::TemplateValue { header: name });
        }
        Arc::make_mut(&mut self.0).templates.push(Template {
            name,
            prefix: prefix.to_owned(),
            suffix: suffix.to_owned(),
        });
        Ok(self)
    }

    /// Adds a header sent with every token, unchanged (e.g. `Merchant-Account: <id>`). Its
    /// value is marked sensitive.
    #[must_use]
    pub fn with_fixed_header(mut self, name: HeaderName, mut value: HeaderValue) -> Self {
        value.set_sensitive(true);
        Arc::make_mut(&mut self.0).fixed.push((name, value));
        self
    }

    /// Which characters a token may have. Default: [`TokenCharset::B64Token`] if a header is
    /// `Authorization: Bearer` or `Authorization: DPoP`, else [`TokenCharset::Visible`].
    #[must_use]
    pub fn with_token_charset(mut self, charset: TokenCharset) -> Self {
        Arc::make_mut(&mut self.0).charset = Some(charset);
        self
    }

    /// The characters a token may have.
    #[must_use]
    pub fn token_charset(&self) -> TokenCharset {
        self.0.charset.unwrap_or_else(|| {
            let bearer = self.0.templates.iter().any(|t| {
                (t.prefix.eq_ignore_ascii_case("bearer ") || t.prefix.eq_ignore_ascii_case("dpop "))
                    && t.suffix.is_empty()
            });
            if bearer {
                TokenCharset::B64Token
            } else {
                TokenCharset::Visible
            }
        })
    }

    /// Applies the token rule: trims surrounding whitespace (returning the trimmed secret if
    /// anything was trimmed) and checks the characters left.
    pub(crate) fn check_token(&self, secret: &Secret) -> Result<Option<Secret>, TokenProblem> {
        let raw = secret.expose();
        let trimmed = raw.trim_matches([' ', '\t', '\r', '\n']);
        check_chars(trimmed, self.token_charset())?;
        Ok((trimmed.len() != raw.len()).then(|| Secret::new(trimmed)))
    }

    /// How many of the rendered headers carry the token (they come first).
    pub(crate) fn token_headers(&self) -> usize {
        self.0.templates.len()
    }

    /// Whether `headers` already carry every header that would carry the token: the caller
    /// supplied its own credentials, [`Snapshot::apply_to`](crate::Snapshot::apply_to) would put
    /// no token on, and a rejection would not be about a cached token. Known before any token is
    /// fetched.
    ///
    /// ```
    /// use http::{HeaderMap, HeaderValue, header::AUTHORIZATION};
    /// use tokenwarden_core::Presentation;
    ///
    /// let mut headers = HeaderMap::new();
    /// assert!(!Presentation::bearer().supplied_by(&headers));
    /// headers.insert(AUTHORIZATION, HeaderValue::from_static("Basic dXNlcjpwYXNz"));
    /// assert!(Presentation::bearer().supplied_by(&headers));
    /// ```
    #[must_use]
    pub fn supplied_by(&self, headers: &HeaderMap) -> bool {
        self.0
            .templates
            .iter()
            .all(|t| headers.contains_key(&t.name))
    }

    /// Builds the header values for one token: the token's headers first, then the fixed ones.
    pub(crate) fn render(
        &self,
        secret: &Secret,
    ) -> Result<Box<[(HeaderName, HeaderValue)]>, Error> {
        let mut out = Vec::with_capacity(self.0.templates.len() + self.0.fixed.len());
        for t in &self.0.templates {
            let mut text =
                String::with_capacity(t.prefix.len() + secret.expose().len() + t.suffix.len());
            text.push_str(&t.prefix);
            text.push_str(secret.expose());
            text.push_str(&t.suffix);
            let mut value = HeaderValue::try_from(text).map_err(|_| Error::InvalidHeaderValue {
                header: t.name.clone(),
            })?;
            value.set_sensitive(true);
            out.push((t.name.clone(), value));
        }
        out.extend(self.0.fixed.iter().cloned());
        Ok(out.into_boxed_slice())
    }
}

fn check_chars(token: &str, charset: TokenCharset) -> Result<(), TokenProblem> {
    if token.is_empty() {
        return Err(TokenProblem::Empty);
    }
    let mut padding = false;
    for (at, c) in token.char_indices() {
        match c {
            ' ' => return Err(TokenProblem::Space { at }),
            c if c.is_ascii_control() => return Err(TokenProblem::Control { at }),
            c if !c.is_ascii() => return Err(TokenProblem::NonAscii { at }),
            _ if charset == TokenCharset::Visible => {}
            '=' if at > 0 => padding = true,
            c if !padding && (c.is_ascii_alphanumeric() || "-._~+/".contains(c)) => {}
            _ => return Err(TokenProblem::NotB64Token { at }),
        }
    }
    Ok(())
}

impl Default for Presentation {
    /// `Authorization: Bearer <token>`.
    fn default() -> Self {
        Self::bearer()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_kind_of_header() {
        let p = Presentation::bearer()
            .with_header(HeaderName::from_static("token"))
            .with_template(HeaderName::from_static("x-auth"), "S {token};")
            .unwrap()
            .with_fixed_header(
                HeaderName::from_static("merchant-account"),
                HeaderValue::from_static("42"),
            );
        let h = p.render(&Secret::new("abc")).unwrap();
        let got: Vec<_> = h
            .iter()
            .map(|(n, v)| (n.as_str(), v.to_str().unwrap(), v.is_sensitive()))
            .collect();
        assert_eq!(
            got,
            [
                ("authorization", "Bearer abc", true),
                ("token", "abc", true),
                ("x-auth", "S abc;", true),
                ("merchant-account", "42", true),
            ]
        );
    }

    #[test]
    fn token_rule() {
        let bearer = Presentation::bearer();
        let custom = Presentation::header(HeaderName::from_static("token"));
        let check = |p: &Presentation, t: &str| {
            p.check_token(&Secret::new(t))
                .map(|trimmed| trimmed.map(|s| s.expose().to_owned()))
        };
        assert_eq!(check(&bearer, "abc-._~+/09=="), Ok(None));
        assert_eq!(check(&bearer, " \tabc\r\n"), Ok(Some("abc".to_owned())));
        assert_eq!(check(&bearer, "  "), Err(TokenProblem::Empty));
        assert_eq!(check(&bearer, "a\tb"), Err(TokenProblem::Control { at: 1 }));
        assert_eq!(check(&bearer, "a b"), Err(TokenProblem::Space { at: 1 }));
        assert_eq!(
            check(&bearer, "ab\u{a0}"),
            Err(TokenProblem::NonAscii { at: 2 })
        );
        assert_eq!(
            check(&bearer, "\u{200b}ab"),
            Err(TokenProblem::NonAscii { at: 0 })
        );
        assert_eq!(
            check(&bearer, "a=b"),
            Err(TokenProblem::NotB64Token { at: 2 })
        );
        assert_eq!(
            check(&bearer, "=ab"),
            Err(TokenProblem::NotB64Token { at: 0 })
        );
        assert_eq!(
            check(&bearer, "a,b"),
            Err(TokenProblem::NotB64Token { at: 1 })
        );
        assert_eq!(check(&custom, "a,b{}"), Ok(None));
        assert_eq!(
            check(&custom, "a\x7fb"),
            Err(TokenProblem::Control { at: 1 })
        );
        let relaxed = bearer.with_token_charset(TokenCharset::Visible);
        assert_eq!(check(&relaxed, "a,b"), Ok(None));
        let p = Presentation::bearer().with_fixed_header(
            HeaderName::from_static("x-api-key"),
            HeaderValue::from_static("k3y-value"),
        );
        let debug = format!("{p:?}");
        assert!(
            debug.contains("x-api-key") && !debug.contains("k3y"),
            "{debug}"
        );
    }

    #[test]
    fn rejects_bad_templates_and_tokens() {
        let name = HeaderName::from_static("x");
        assert!(matches!(
            Presentation::empty().with_template(name.clone(), "no placeholder"),
            Err(ConfigError::Template { .. })
        ));
        assert!(matches!(
            Presentation::empty().with_template(name.clone(), "{token}{token}"),
            Err(ConfigError::Template { .. })
        ));
        assert!(matches!(
            Presentation::empty().with_template(name, "a\n{token}"),
            Err(ConfigError::TemplateValue { .. })
        ));
        let err = Presentation::bearer()
            .render(&Secret::new("evil\r\nX-Injected: 1"))
            .unwrap_err();
        assert!(matches!(err, Error::InvalidHeaderValue { .. }));
        assert!(!err.to_string().contains("evil"));
    }
}
