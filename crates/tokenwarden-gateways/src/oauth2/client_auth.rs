//! How the client proves itself in a token request: a `private_key_jwt` assertion, or HTTP
//! Basic credentials.

use base64::Engine;
use http::StatusCode;
use tokenwarden_core::Secret;

use super::GATEWAY;
use crate::GatewayError;
use crate::jose::SigningKey;

/// A `private_key_jwt` assertion (RFC 7523 §3): the client asserting itself to `audience`,
/// for a minute, once (`jti`).
pub(super) fn client_assertion(
    key: &SigningKey,
    client_id: &str,
    audience: &str,
) -> Result<Secret, GatewayError> {
    // Issued five seconds back: a server whose clock is a little behind this one's (or that
    // refuses an `iat` in its future) still takes it; valid for a minute from then.
    let iat = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
        .saturating_sub(5);
    let jti = crate::jose::unique_id().map_err(|e| GatewayError::Malformed {
        gateway: GATEWAY,
        status: StatusCode::OK,
        problem: format!("the client assertion cannot be made: {e}"),
    })?;
    let claims = serde_json::json!({
        "iss": client_id,
        "sub": client_id,
        "aud": audience,
        "jti": jti,
        "iat": iat,
        "exp": iat + 60,
    });
    key.sign(Some("JWT"), &claims)
        .map(Secret::new)
        .map_err(|e| GatewayError::Malformed {
            gateway: GATEWAY,
            status: StatusCode::OK,
            problem: format!("the client assertion cannot be signed: {e}"),
        })
}

/// `client_secret_basic`'s credentials (RFC 6749 §2.3.1): id and secret each form-encoded,
/// joined by `:` and base64-encoded.
pub(super) fn basic_credentials(client_id: &str, client_secret: &Secret) -> String {
    let encode = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    let pair = format!("{}:{}", encode(client_id), encode(client_secret.expose()));
    base64::engine::general_purpose::STANDARD.encode(pair)
}
