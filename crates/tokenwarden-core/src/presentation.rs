//! How a token is put on a request: which headers, in which format.

use http::header::AUTHORIZATION;
use http::{HeaderName, HeaderValue};

use crate::{ConfigError, Error, Secret};

const PLACEHOLDER: &str = "{token}";

/// The headers a token is presented in, plus fixed headers sent alongside it
/// (such as `Merchant-Account`).
///
/// Header values are built once per token by the cache, marked sensitive (so HTTP/2 HPACK
/// does not index them), and shared by every request that uses that token.
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
#[derive(Clone, Debug)]
pub struct Presentation {
    templates: Vec<Template>,
    fixed: Vec<(HeaderName, HeaderValue)>,
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
        Self {
            templates: Vec::new(),
            fixed: Vec::new(),
        }
    }

    /// `Authorization: Bearer <token>`.
    #[must_use]
    pub fn bearer() -> Self {
        Self::empty().with_bearer()
    }

    /// `<name>: <token>`, e.g. `Token: <token>`.
    #[must_use]
    pub fn header(name: HeaderName) -> Self {
        Self::empty().with_header(name)
    }

    /// Adds `Authorization: Bearer <token>`.
    #[must_use]
    pub fn with_bearer(mut self) -> Self {
        self.templates.push(Template {
            name: AUTHORIZATION,
            prefix: "Bearer ".to_owned(),
            suffix: String::new(),
        });
        self
    }

    /// Adds `<name>: <token>`.
    #[must_use]
    pub fn with_header(mut self, name: HeaderName) -> Self {
        self.templates.push(Template {
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
        self.templates.push(Template {
            name,
            prefix: prefix.to_owned(),
            suffix: suffix.to_owned(),
        });
        Ok(self)
    }

    /// Adds a header sent with every token, unchanged (e.g. `Merchant-Account: <id>`).
    #[must_use]
    pub fn with_fixed_header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.fixed.push((name, value));
        self
    }

    /// How many of the rendered headers carry the token (they come first).
    pub(crate) fn token_headers(&self) -> usize {
        self.templates.len()
    }

    /// The names of every header this presentation sets.
    pub fn header_names(&self) -> impl Iterator<Item = &HeaderName> {
        self.templates
            .iter()
            .map(|t| &t.name)
            .chain(self.fixed.iter().map(|(n, _)| n))
    }

    /// Builds the header values for one token: the token's headers first, then the fixed ones.
    pub(crate) fn render(
        &self,
        secret: &Secret,
    ) -> Result<Box<[(HeaderName, HeaderValue)]>, Error> {
        let mut out = Vec::with_capacity(self.templates.len() + self.fixed.len());
        for t in &self.templates {
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
        out.extend(self.fixed.iter().cloned());
        Ok(out.into_boxed_slice())
    }
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
                ("merchant-account", "42", false),
            ]
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
