//! Expiry from a JWT: its `exp` (and `iat`) read without checking the signature, and the
//! earlier of it and the answer's own expiry.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use serde_json::Value;
use tokenwarden_core::{Expiry, Token};

/// The `exp` claim of a JWT, if the token is one and the claim is readable. The signature is
/// not checked: the issuer is trusted, the claim only tells when to stop using the token.
#[must_use]
pub fn jwt_expiry(token: &str) -> Option<SystemTime> {
    jwt_time(token, "exp")
}

/// A time claim (`exp`, `iat`: seconds since the epoch) of a JWT, read without checking it.
fn jwt_time(token: &str, claim: &str) -> Option<SystemTime> {
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let claims: Value = serde_json::from_slice(&bytes).ok()?;
    let value = claims.get(claim)?;
    let secs = value
        .as_u64()
        .or_else(|| value.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64))?;
    UNIX_EPOCH.checked_add(Duration::from_secs(secs))
}

/// How far this host's clock may be from the issuer's, as a JWT's `iat` shows it, before
/// the JWT's `exp` is no longer compared with this host's clock (network time, and `iat`
/// rounded down to the second, stay well within it).
const CLOCK_TOLERANCE: Duration = Duration::from_secs(5);

/// `token` with the earlier of `stated` (the answer's own expiry field, if it had one) and the
/// JWT's `exp` (if `secret` is a JWT that has one): a token is not used past either. With
/// neither, as it is (the cache then gives it its default lifetime).
///
/// `exp` is compared with this host's clock (which catches an issuer that rounds `iat` down
/// and so issues tokens ending up to a second before `expires_in` implies), unless the JWT's
/// `iat` shows that clock more than [`CLOCK_TOLERANCE`] from the issuer's: the JWT's own life,
/// `exp - iat`, then caps `expires_in`, and a WARN names the difference. Without `iat`, an
/// `exp` already past by this host's clock while `expires_in` gives time left is taken as this
/// clock being wrong: `expires_in` is used, with a WARN.
pub(crate) fn with_expiry(token: Token, secret: &str, stated: Option<Expiry>) -> Token {
    let jwt = jwt_expiry(secret);
    let expiry = match (stated, jwt) {
        (None | Some(Expiry::Unknown), None) => return token,
        (Some(stated), None) => stated,
        (None | Some(Expiry::Unknown), Some(exp)) => Expiry::At(exp),
        (Some(Expiry::At(at)), Some(exp)) => Expiry::At(at.min(exp)),
        (Some(Expiry::In(lifetime)), Some(exp)) => {
            let now = SystemTime::now();
            let issued = jwt_time(secret, "iat");
            let apart = issued.map(|iat| {
                now.duration_since(iat)
                    .unwrap_or_else(|early| early.duration())
            });
            match (issued, apart) {
                (Some(iat), Some(apart)) if apart > CLOCK_TOLERANCE => {
                    tracing::warn!(
                        apart_s = apart.as_secs(),
                        "this host's clock and the token issuer's disagree (by the token's iat); \
                         its expiry is counted from its own stated life, not this clock: check NTP"
                    );
                    let life = exp.duration_since(iat).unwrap_or_default();
                    Expiry::In(lifetime.min(life))
                }
                _ => match exp.duration_since(now) {
                    Ok(left) if left < lifetime => Expiry::At(exp),
                    Ok(_) => Expiry::In(lifetime),
                    Err(_) if issued.is_none() && !lifetime.is_zero() => {
                        tracing::warn!(
                            "the token's exp is already past by this host's clock while its \
                             expires_in is not: using expires_in; check this host's clock"
                        );
                        Expiry::In(lifetime)
                    }
                    Err(_) => Expiry::At(exp),
                },
            }
        }
        // A kind of expiry this crate does not know of: as stated.
        (Some(stated), Some(_)) => stated,
    };
    token.with_expiry(expiry)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_jwt_expiry() {
        // {"exp":1611927961}
        let token = "eyJhbGciOiJIUzI1NiJ9.eyJleHAiOjE2MTE5Mjc5NjF9.sig";
        let exp = jwt_expiry(token).unwrap();
        assert_eq!(
            exp.duration_since(UNIX_EPOCH).unwrap().as_secs(),
            1_611_927_961
        );
        assert!(jwt_expiry("not-a-jwt").is_none());
        assert!(jwt_expiry("a.%%%.c").is_none());
        assert!(jwt_expiry("eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.sig").is_none()); // no exp
    }
}
