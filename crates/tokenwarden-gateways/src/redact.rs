//! The secrets a source sends, taken out of every text built from its issuer's answer.
//!
//! An issuer may echo what it was sent — a client secret in an `error_description`, a password
//! in a BOIPA message, a credential in a field it was not expected in — and that text ends up
//! in an error, which is printed, logged and kept in the cache's status. Each source hands its
//! [`Issuer`](crate::wire::Issuer) every secret it sends; the issuer redacts a failed fetch's
//! [`GatewayError`](crate::GatewayError) with them before it leaves the source
//! ([`GatewayError::redacted`](crate::GatewayError)), whatever the gateway.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

/// What a secret is replaced with.
pub(crate) const REDACTED: &str = "[redacted]";

/// Secrets shorter than this (in characters) are not looked for: any text holds them (a
/// secret `s` would take every `s` out of a message), so finding one gives nothing away.
const SHORTEST: usize = 4;

/// A tail of a text this long or longer that begins a secret is
/// redacted too: text cut to a length (an `error_description`, a token type) may end half way
/// through one.
const CUT_TAIL: usize = 4;

/// The secrets one source sends, in every spelling it may come back in: as given (found
/// percent-encoded too, in any of its forms) and JSON-escaped (an issuer may echo the raw
/// request body). Longest first, so that a secret holding another is redacted whole. `Debug`
/// shows only how many there are.
#[derive(Clone, Default)]
pub(crate) struct Secrets(Arc<[Box<str>]>);

impl Secrets {
    /// These secrets, and those already held. Ones shorter than four characters are ignored.
    #[must_use]
    pub(crate) fn with<S: AsRef<str>>(self, secrets: impl IntoIterator<Item = S>) -> Self {
        let mut all: Vec<Box<str>> = self.0.iter().cloned().collect();
        for secret in secrets {
            let secret = secret.as_ref();
            if secret.chars().count() < SHORTEST {
                continue;
            }
            // The form-encoded spelling is for the tail of a text cut half way through it.
            let form: String = form_urlencoded::byte_serialize(secret.as_bytes()).collect();
            let json = serde_json::to_string(secret).unwrap_or_default();
            let json = json
                .strip_prefix('"')
                .and_then(|j| j.strip_suffix('"'))
                .unwrap_or(secret);
            for spelling in [secret, &form, json] {
                if !all.iter().any(|s| &**s == spelling) {
                    all.push(spelling.into());
                }
            }
        }
        all.sort_by_key(|s| std::cmp::Reverse(s.len()));
        Self(all.into())
    }

    /// `text` with every secret replaced by `[redacted]` (borrowed when it held none). A secret
    /// is found however its bytes were percent-encoded (`%20` or `+` for a space, hex in
    /// either case, any byte escaped or not), as issuers echo request bodies and URLs.
    pub(crate) fn redact<'a>(&self, text: &'a str) -> Cow<'a, str> {
        let cut_tail = |rest: &str| {
            self.0
                .iter()
                .any(|s| rest.len() >= CUT_TAIL && s.starts_with(rest))
        };
        let secret_at = |rest: &str| {
            self.0
                .iter()
                .find_map(|s| encoded_len(rest.as_bytes(), s.as_bytes()))
        };
        let found = (0..text.len())
            .filter(|&i| text.is_char_boundary(i))
            .any(|i| secret_at(&text[i..]).is_some() || cut_tail(&text[i..]));
        if !found {
            return Cow::Borrowed(text);
        }
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        while let Some(c) = rest.chars().next() {
            if cut_tail(rest) {
                out.push_str(REDACTED);
                break;
            }
            if let Some(len) = secret_at(rest) {
                out.push_str(REDACTED);
                rest = &rest[len..];
                continue;
            }
            out.push(c);
            rest = &rest[c.len_utf8()..];
        }
        Cow::Owned(out)
    }

    /// [`redact`](Self::redact), in place.
    pub(crate) fn redact_in(&self, text: &mut String) {
        if let Cow::Owned(redacted) = self.redact(text) {
            *text = redacted;
        }
    }
}

/// How many bytes at the start of `text` spell `secret`, each of its bytes as it is or
/// percent-encoded (`%2f` or `%2F`; `+` for a space), if they do.
fn encoded_len(text: &[u8], secret: &[u8]) -> Option<usize> {
    let hex = |b: u8| char::from(b).to_digit(16);
    let mut at = 0;
    for &want in secret {
        let got = *text.get(at)?;
        if got == want || (got == b'+' && want == b' ') {
            at += 1;
        } else if got == b'%'
            && let (Some(hi), Some(lo)) = (hex(*text.get(at + 1)?), hex(*text.get(at + 2)?))
            && hi * 16 + lo == u32::from(want)
        {
            at += 3;
        } else {
            return None;
        }
    }
    // A secret ends on a character boundary of `text` (its last byte was matched whole).
    Some(at)
}

impl fmt::Debug for Secrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secrets({})", self.0.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_percent_encoding_of_a_secret_is_taken_out() {
        let secrets = Secrets::default().with(["correct horse/battery!"]);
        for echoed in [
            "correct%20horse%2Fbattery%21",
            "correct%20horse%2fbattery!",
            "correct+horse%2fbattery%21",
            "correct%20horse/battery!",
        ] {
            let text = format!("unknown client secret {echoed} in request");
            assert_eq!(
                secrets.redact(&text),
                "unknown client secret [redacted] in request",
                "{echoed}"
            );
        }
    }

    #[test]
    fn every_spelling_of_every_secret_goes() {
        let secrets = Secrets::default().with(["s3cr3t", "", "s", "p@ss \"word\""]);
        assert_eq!(
            secrets.redact("bad secret s3cr3t, form p%40ss+%22word%22, json p@ss \\\"word\\\""),
            "bad secret [redacted], form [redacted], json [redacted]"
        );
        assert_eq!(
            secrets.redact("nothing here"),
            Cow::Borrowed("nothing here")
        );
        assert!(matches!(secrets.redact("nothing here"), Cow::Borrowed(_)));
    }

    #[test]
    fn a_secret_holding_another_goes_whole_and_a_cut_one_too() {
        let secrets = Secrets::default().with(["abcd", "abcdef-long"]);
        assert_eq!(
            secrets.redact("x abcdef-long y abcd"),
            "x [redacted] y [redacted]"
        );
        // Text cut half way through a secret.
        assert_eq!(secrets.redact("cut at abcdef-l"), "cut at [redacted]");
        assert_eq!(secrets.redact("ends in abcde"), "ends in [redacted]");
        // Too short a secret to look for: any text holds it.
        assert_eq!(
            Secrets::default().with(["s"]).redact("Invalid credentials"),
            "Invalid credentials"
        );
        // Too short a tail to tell.
        assert_eq!(
            Secrets::default().with(["s3cr3t-value"]).redact("a s3c"),
            "a s3c"
        );
        // Multi-byte text around it.
        assert_eq!(
            Secrets::default().with(["ключ-1"]).redact("é ключ-1 ü"),
            "é [redacted] ü"
        );
    }

    #[test]
    fn debug_shows_no_secret() {
        let secrets = Secrets::default().with(["s3cr3t"]);
        assert!(!format!("{secrets:?}").contains("s3cr3t"));
    }
}
