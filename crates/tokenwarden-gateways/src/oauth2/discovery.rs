//! Finding the token endpoint in an authorization server's metadata (RFC 8414, OpenID Connect
//! Discovery).

use std::sync::Arc;

use http::StatusCode;
use tokenwarden_core::ConfigError;

use super::GATEWAY;
use crate::wire::{Answer, Issuer};
use crate::{GatewayError, HttpSend};

/// The token endpoint the metadata of the authorization server `issuer` names (RFC 8414's
/// `/.well-known/oauth-authorization-server`, else OpenID Connect's
/// `/.well-known/openid-configuration`), read under the same rules as token requests, with
/// the issuer as the metadata writes it.
pub(super) async fn token_endpoint<S: HttpSend + Clone>(
    sender: S,
    issuer: &str,
) -> Result<(String, String), GatewayError> {
    let mut last = None;
    for path in [
        "/.well-known/oauth-authorization-server",
        "/.well-known/openid-configuration",
    ] {
        let metadata = Issuer::new(Arc::new(sender.clone()), GATEWAY, issuer, path, "issuer")
            .map_err(metadata_unusable)?;
        let (status, body) = match metadata.get().await {
            Ok(answer) => answer,
            Err(e) => {
                last = Some(e);
                continue;
            }
        };
        if !status.is_success() {
            last = Some(GatewayError::Status {
                gateway: GATEWAY,
                status,
                retry_after: None,
            });
            continue;
        }
        let answer = Answer::parse(GATEWAY, status, &body)?;
        // RFC 8414 §3.3 (and OpenID Connect Discovery §4.3): the metadata must be for the
        // issuer it was fetched from, or its token endpoint could be anyone's.
        let named = answer.string("/issuer")?;
        if named.trim_end_matches('/') != issuer.trim_end_matches('/') {
            return Err(GatewayError::IssuerMismatch {
                gateway: GATEWAY,
                named: tokenwarden_origin::redact_url(named),
            });
        }
        return Ok((
            named.to_owned(),
            answer.string("/token_endpoint")?.to_owned(),
        ));
    }
    Err(last.unwrap_or(GatewayError::Status {
        gateway: GATEWAY,
        status: StatusCode::NOT_FOUND,
        retry_after: None,
    }))
}

pub(super) fn metadata_unusable(e: ConfigError) -> GatewayError {
    GatewayError::Malformed {
        gateway: GATEWAY,
        status: StatusCode::OK,
        problem: format!("the issuer's metadata cannot be used: {e}"),
    }
}
