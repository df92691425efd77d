//! What a cache is doing, for health checks.

use std::time::Duration;

use crate::{Error, TokenId};

/// A cache's state at one moment: [`TokenCache::status`](crate::TokenCache::status). Secret-free,
/// so a service can expose it on a health endpoint.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct CacheStatus {
    /// What it is doing.
    pub state: CacheState,
    /// The token it would serve now (shared mode), if any.
    pub token: Option<TokenId>,
    /// Time left before the current token's stated expiry.
    pub expires_in: Option<Duration>,
    /// Time left before its background refresh may start (zero: it may now).
    pub refresh_in: Option<Duration>,
    /// Failed attempts in a row.
    pub failures: u32,
    /// The last failure, if the last attempt failed.
    pub last_error: Option<Error>,
    /// Rejections held off so far, the token kept (see
    /// [`TokenCache::reject`](crate::TokenCache::reject)).
    pub held_off_rejections: u64,
    /// Routes remembered now as answering `401` for reasons other than the token.
    pub routes_held_off: usize,
}

/// What a cache is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum CacheState {
    /// No token, and no fetch under way.
    Empty,
    /// A token that can be served, and nothing to do.
    Fresh,
    /// A fetch is under way (the first one, or a refresh).
    Refreshing,
    /// Fetches failed; the next attempt is allowed in `retry_in`. A token may still be served
    /// (see [`CacheStatus::token`]).
    BackingOff {
        /// Until the next attempt.
        retry_in: Duration,
    },
    /// The issuer rejected the credentials; asked again in `retry_in`. Fix the configuration.
    CredentialsRejected {
        /// Until the next attempt.
        retry_in: Duration,
    },
    /// The issuer refused the token request as misconfigured (scope, resource, grant type);
    /// asked again in `retry_in`. Fix the configuration.
    Misconfigured {
        /// Until the next attempt.
        retry_in: Duration,
    },
    /// The issuer is failing and the last token is served past its refresh deadline, in its
    /// grace period.
    Grace,
}
