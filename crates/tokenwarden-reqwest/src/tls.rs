//! Whether the client under the middleware can speak `https`, and the refusal when it cannot.

/// An `https` request in the token's scope, through a reqwest built without any TLS backend:
/// it could never be sent, and would fail as a connection error (which retry middleware
/// retries). Refused before a token is fetched or anything is sent; turn on feature `rustls`
/// of tokenwarden-reqwest (on by default; `tokenwarden` forwards it) or a TLS feature of
/// reqwest.
#[derive(Clone, Debug, thiserror::Error)]
#[error(
    "refusing an https request to {origin}: the HTTP client was built without TLS; turn on \
     feature `rustls` of tokenwarden-reqwest (on by default; `tokenwarden` forwards it) or a TLS \
     feature of reqwest"
)]
#[non_exhaustive]
pub struct TlsMissing {
    /// The request's origin (`scheme://host[:port]`, nothing more).
    pub origin: String,
}

/// `Err` for an `https` request when `tls` (whether reqwest has a TLS backend) is false.
pub(crate) fn check(url: &reqwest::Url, tls: bool) -> Result<(), TlsMissing> {
    if tls || url.scheme() != "https" {
        return Ok(());
    }
    Err(TlsMissing {
        origin: url.as_str().parse::<http::Uri>().map_or_else(
            |_| "an unreadable URL".to_owned(),
            |uri| tokenwarden_origin::Origin::describe(&uri),
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_https_request_needs_a_client_with_tls() {
        let https: reqwest::Url = "https://user:pw@api.example.com/v1?key=k3y"
            .parse()
            .unwrap();
        let refused = check(&https, false).unwrap_err();
        let text = refused.to_string();
        assert!(text.contains("`rustls`"), "{text}");
        assert!(text.contains("https://api.example.com"), "{text}");
        assert!(!text.contains("pw") && !text.contains("k3y"), "{text}");
        assert!(check(&https, true).is_ok());
        let plain: reqwest::Url = "http://127.0.0.1:8080/v1".parse().unwrap();
        assert!(check(&plain, false).is_ok());
    }

    #[test]
    fn with_feature_rustls_reqwest_has_tls() {
        if cfg!(feature = "rustls") {
            assert!(tokenwarden_origin::reqwest_has_tls());
        }
    }
}
