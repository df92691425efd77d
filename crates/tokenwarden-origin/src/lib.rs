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

mod origin;
mod redact;
mod scope;
#[cfg(feature = "reqwest")]
mod tls;
mod transport;

pub use origin::{Origin, is_loopback};
pub use redact::{RedactedUri, redact_url};
pub use scope::Scope;
#[cfg(feature = "reqwest")]
pub use tls::reqwest_has_tls;
pub use transport::{InsecureTransport, check_transport, transport_allowed};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::origin::*;
    use http::Uri;

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
