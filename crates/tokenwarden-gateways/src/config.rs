//! What every gateway's configuration has — the issuer's base URL, the largest answer read
//! and the lifetime of a token whose answer states none — written once, around each
//! gateway's own credentials.

use std::sync::Arc;
use std::time::Duration;

use tokenwarden_core::ConfigError;

use crate::wire::{Issuer, UrlText};
use crate::{DEFAULT_MAX_RESPONSE, HttpSend};

/// A gateway's configuration: its credentials `C` (such as [`torus::Credentials`]) and the
/// settings every gateway has. Each gateway names its own, with a `new` taking its
/// credentials: [`BoipaConfig`], [`TorusConfig`], [`SipayConfig`].
///
/// ```
/// use std::time::Duration;
/// use tokenwarden_gateways::torus::{self, TorusConfig};
///
/// let config = TorusConfig::new(torus::BASE_URL, "request-token", "api-key", "api-secret")
///     .with_token_lifetime(Duration::from_secs(3600))
///     .with_max_response(16 * 1024);
/// // Debug shows the URL and settings, never a credential.
/// assert!(!format!("{config:?}").contains("api-secret"));
/// ```
///
/// [`torus::Credentials`]: crate::torus::Credentials
/// [`BoipaConfig`]: crate::boipa::BoipaConfig
/// [`TorusConfig`]: crate::torus::TorusConfig
/// [`SipayConfig`]: crate::sipay::SipayConfig
#[derive(Clone, Debug)]
pub struct GatewayConfig<C> {
    base_url: UrlText,
    max_response: usize,
    token_lifetime: Duration,
    pub(crate) credentials: C,
}

impl<C> GatewayConfig<C> {
    /// `credentials` for the issuer at `base_url`, with a gateway's default lifetime.
    pub(crate) fn of(
        base_url: impl Into<String>,
        token_lifetime: Duration,
        credentials: C,
    ) -> Self {
        Self {
            base_url: UrlText(base_url.into()),
            max_response: DEFAULT_MAX_RESPONSE,
            token_lifetime,
            credentials,
        }
    }

    /// How long a token is used when the issuer's answer states no expiry (a 401 from the API
    /// renews it earlier). Each gateway's default is on its config's `new`.
    #[must_use]
    pub fn with_token_lifetime(mut self, lifetime: Duration) -> Self {
        self.token_lifetime = lifetime;
        self
    }

    /// The largest token response read. Default [`DEFAULT_MAX_RESPONSE`] (64 KiB).
    #[must_use]
    pub fn with_max_response(mut self, bytes: usize) -> Self {
        self.max_response = bytes;
        self
    }

    pub(crate) fn token_lifetime(&self) -> Duration {
        self.token_lifetime
    }

    /// The token endpoint `path` under the base URL, reached through `sender`.
    pub(crate) fn issuer(
        &self,
        sender: impl HttpSend,
        gateway: &'static str,
        path: &str,
    ) -> Result<Issuer, ConfigError> {
        Ok(Issuer::new(
            Arc::new(sender),
            gateway,
            &self.base_url.0,
            path,
            "base_url",
        )?
        .with_max_response(self.max_response))
    }
}
