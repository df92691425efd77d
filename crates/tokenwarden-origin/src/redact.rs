//! URLs printed without their secrets.

use std::fmt;

use http::Uri;

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
