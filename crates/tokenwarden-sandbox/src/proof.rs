//! The checks of a DPoP proof (RFC 9449 §4.3) the sandbox's payment-grade mode makes, for a
//! token request and for an API request alike.

use http::{HeaderMap, HeaderValue};
use serde_json::Value;

use crate::fapi::IAT_WINDOW;
use crate::jws::{Jws, jwk_thumbprint, sha256_b64};

/// JWK members only a private or symmetric key has.
const PRIVATE_MEMBERS: [&str; 8] = ["d", "p", "q", "dp", "dq", "qi", "oth", "k"];

/// Why a proof was refused.
pub(crate) enum Refusal {
    /// Good but for its nonce: `use_dpop_nonce`.
    Nonce(&'static str),
    /// `invalid_dpop_proof`.
    Proof(&'static str),
}

/// What a request's proof must match.
pub(crate) struct Expected<'a> {
    pub(crate) htm: &'a str,
    pub(crate) htu: &'a str,
    /// For an API request: the token and the thumbprint of the key it is bound to.
    pub(crate) token: Option<(&'a str, &'a str)>,
    pub(crate) nonce: &'a str,
    pub(crate) now: f64,
}

/// A proof that passed every check: its key's thumbprint, and its `jti` and `iat` for the
/// replay check.
pub(crate) struct Proven {
    pub(crate) jkt: String,
    pub(crate) jti: String,
    pub(crate) iat: f64,
}

/// The token of `DPoP <token>` (the scheme in any case), if it is a token68.
pub(crate) fn dpop_token(value: &HeaderValue) -> Result<&str, &'static str> {
    let value = value
        .to_str()
        .map_err(|_| "the Authorization header is not visible ASCII")?;
    let (scheme, token) = value.split_once(' ').unwrap_or((value, ""));
    if !scheme.eq_ignore_ascii_case("DPoP") {
        return Err("the Authorization scheme is not DPoP");
    }
    let token = token.trim_start_matches(' ');
    let token68 = |c: char| c.is_ascii_alphanumeric() || "-._~+/=".contains(c);
    if token.is_empty() || !token.chars().all(token68) {
        return Err("the DPoP token is missing or not a token68");
    }
    Ok(token)
}

/// Checks the request's one `DPoP` proof (RFC 9449 §4.3) against `expected`, its nonce last.
pub(crate) fn check_proof(headers: &HeaderMap, expected: &Expected<'_>) -> Result<Proven, Refusal> {
    let mut proofs = headers.get_all("dpop").iter();
    let proof = match (proofs.next(), proofs.next()) {
        (None, _) => return Err(Refusal::Proof("no DPoP proof")),
        (Some(_), Some(_)) => return Err(Refusal::Proof("more than one DPoP header")),
        (Some(proof), None) => proof
            .to_str()
            .map_err(|_| Refusal::Proof("the DPoP header is not visible ASCII"))?,
    };
    let jws = Jws::parse(proof).map_err(Refusal::Proof)?;
    if jws.header["typ"] != "dpop+jwt" {
        return Err(Refusal::Proof("the proof's typ is not dpop+jwt"));
    }
    if jws.header.get("crit").is_some() {
        return Err(Refusal::Proof(
            "the proof names crit parameters: none is understood here",
        ));
    }
    let jwk = &jws.header["jwk"];
    if !jwk.is_object() {
        return Err(Refusal::Proof("the proof's header has no jwk"));
    }
    if PRIVATE_MEMBERS.iter().any(|m| jwk.get(m).is_some()) {
        return Err(Refusal::Proof("the proof's jwk is not a public key"));
    }
    jws.verify(jwk).map_err(Refusal::Proof)?;
    let jkt = jwk_thumbprint(jwk).map_err(Refusal::Proof)?;
    let claims = &jws.claims;
    if let Some((token, bound)) = expected.token {
        if jkt != bound {
            return Err(Refusal::Proof(
                "the proof's key is not the one the token is bound to",
            ));
        }
        if claims["ath"].as_str() != Some(sha256_b64(token.as_bytes()).as_str()) {
            return Err(Refusal::Proof("the proof's ath is not the token's hash"));
        }
    }
    if claims["htm"].as_str() != Some(expected.htm) {
        return Err(Refusal::Proof(
            "the proof's htm is not the request's method",
        ));
    }
    if claims["htu"].as_str().and_then(normalized_url) != normalized_url(expected.htu) {
        return Err(Refusal::Proof("the proof's htu is not the request's URL"));
    }
    let iat = claims["iat"]
        .as_f64()
        .ok_or(Refusal::Proof("the proof has no numeric iat"))?;
    if (iat - expected.now).abs() > IAT_WINDOW {
        return Err(Refusal::Proof("the proof's iat is more than 60 s from now"));
    }
    let jti = match claims["jti"].as_str() {
        Some(jti) if !jti.is_empty() => jti.to_owned(),
        _ => return Err(Refusal::Proof("the proof has no jti")),
    };
    match &claims["nonce"] {
        Value::String(nonce) if nonce == expected.nonce => Ok(Proven { jkt, jti, iat }),
        Value::String(_) => Err(Refusal::Nonce("the proof's nonce is not the current one")),
        Value::Null => Err(Refusal::Nonce("the proof has no nonce")),
        _ => Err(Refusal::Proof("the proof's nonce is not a string")),
    }
}

/// A URL without query and fragment, its scheme and authority lowercase, an empty path `/`.
pub(crate) fn normalized_url(url: &str) -> Option<String> {
    let url = url.split(['?', '#']).next()?;
    let (scheme, rest) = url.split_once("://")?;
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    if scheme.is_empty() || authority.is_empty() {
        return None;
    }
    let path = if path.is_empty() { "/" } else { path };
    Some(format!(
        "{}://{}{path}",
        scheme.to_ascii_lowercase(),
        authority.to_ascii_lowercase()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_compare_without_query_and_in_any_case_of_scheme_and_host() {
        assert_eq!(
            normalized_url("HTTP://127.0.0.1:8/a/B?x#y").as_deref(),
            Some("http://127.0.0.1:8/a/B")
        );
        assert_eq!(normalized_url("http://h").as_deref(), Some("http://h/"));
        assert_eq!(normalized_url("/relative"), None);
        assert_eq!(normalized_url("http:///x"), None);
    }
}
