//! The names of the metrics a cache records through the [`metrics`](https://docs.rs/metrics)
//! facade, with feature `metrics` (without it, nothing is recorded and nothing is compiled
//! in). Install any exporter (Prometheus, OpenTelemetry, StatsD) as the `metrics` recorder to
//! see them. Their labels, and what each value counts, are in [docs/metrics.md]. The HTTP
//! layers add `tokenwarden_replays_total` (see `tokenwarden-http`).
//!
//! [docs/metrics.md]: https://github.com/tokenwarden/tokenwarden/blob/main/docs/metrics.md

#![cfg_attr(not(feature = "metrics"), allow(unused_variables))]
// The cache's name is passed as the `Cow` it is, so a `'static` name reaches the recorder
// without a copy.
#![allow(clippy::ptr_arg)]

use std::borrow::Cow;
use std::time::Duration;

use crate::Error;

/// Token fetches that ended, by `outcome`.
pub const FETCHES: &str = "tokenwarden_token_fetches_total";
/// How long the token source took, in seconds.
pub const FETCH_DURATION: &str = "tokenwarden_token_fetch_duration_seconds";
/// Invalidations after a rejection, by `result`.
pub const INVALIDATIONS: &str = "tokenwarden_token_invalidations_total";
/// Tokens served in their grace period.
pub const GRACE_SERVES: &str = "tokenwarden_token_grace_serves_total";
/// Revocations.
pub const REVOCATIONS: &str = "tokenwarden_token_revocations_total";
/// Single-use mode: tokens waiting in the pool.
pub const POOL_SIZE: &str = "tokenwarden_token_pool_size";
/// A keyed cache's keys, by `state`.
pub const KEYS: &str = "tokenwarden_keys";

/// The `outcome` label of a fetch that failed with `error`.
#[cfg(feature = "metrics")]
fn outcome(error: &Error) -> &'static str {
    match error {
        Error::Rejected(_) => "rejected",
        Error::Configuration(_) => "configuration",
        Error::Fetch(_) => "transient",
        Error::Timeout(_) => "timeout",
        Error::AlreadyExpired { .. }
        | Error::InvalidHeaderValue { .. }
        | Error::MalformedToken(_) => "unusable",
        Error::SourcePanicked => "panicked",
        _ => "other",
    }
}

#[cfg(feature = "metrics")]
fn label(cache: &Cow<'static, str>) -> metrics::SharedString {
    metrics::SharedString::from(cache.clone())
}

/// A fetch ended: `Ok` once installed (or pooled), `Err` with what failed.
pub(crate) fn fetch_ended(cache: &Cow<'static, str>, result: Result<(), &Error>) {
    #[cfg(feature = "metrics")]
    {
        let outcome = result.map_or_else(outcome, |()| "success");
        metrics::counter!(FETCHES, "cache" => label(cache), "outcome" => outcome).increment(1);
    }
}

/// The token source answered (or failed, or timed out) after `elapsed`.
pub(crate) fn fetch_took(cache: &Cow<'static, str>, elapsed: Duration) {
    #[cfg(feature = "metrics")]
    metrics::histogram!(FETCH_DURATION, "cache" => label(cache)).record(elapsed.as_secs_f64());
}

/// An invalidation: `discarded`, `stale`, `held_off`, `held_off_route` or `held_off_bound`.
pub(crate) fn invalidation(cache: &Cow<'static, str>, result: &'static str) {
    #[cfg(feature = "metrics")]
    metrics::counter!(INVALIDATIONS, "cache" => label(cache), "result" => result).increment(1);
}

/// A token served in its grace period.
pub(crate) fn grace_serve(cache: &Cow<'static, str>) {
    #[cfg(feature = "metrics")]
    metrics::counter!(GRACE_SERVES, "cache" => label(cache)).increment(1);
}

/// A revocation.
pub(crate) fn revocation(cache: &Cow<'static, str>) {
    #[cfg(feature = "metrics")]
    metrics::counter!(REVOCATIONS, "cache" => label(cache)).increment(1);
}

/// Single-use mode: the pool now holds `size` tokens.
pub(crate) fn pool_size(cache: &Cow<'static, str>, size: usize) {
    #[cfg(feature = "metrics")]
    metrics::gauge!(POOL_SIZE, "cache" => label(cache)).set(size as f64);
}

/// A keyed cache's keys by state (`fresh`, `refreshing`, …), as a summary counted them.
pub(crate) fn keys(cache: &Cow<'static, str>, states: [(&'static str, usize); 7]) {
    #[cfg(feature = "metrics")]
    for (state, n) in states {
        metrics::gauge!(KEYS, "cache" => label(cache), "state" => state).set(n as f64);
    }
}
