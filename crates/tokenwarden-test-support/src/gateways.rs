//! The gateways' errors (the `gateways` feature).

use tokenwarden_core::Error;
use tokenwarden_gateways::GatewayError;

/// The [`GatewayError`] that made a cache's fetch fail.
///
/// # Panics
///
/// If `error` is not a failed fetch, or its cause is not a gateway's.
#[must_use]
pub fn gateway_error(error: &Error) -> &GatewayError {
    error
        .fetch_error()
        .and_then(|f| f.get_ref().downcast_ref::<GatewayError>())
        .unwrap_or_else(|| panic!("not a gateway error: {error:?}"))
}
