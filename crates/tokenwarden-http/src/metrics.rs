//! What the layers record through the [`metrics`](https://docs.rs/metrics) facade, with
//! feature `metrics` (nothing without it): [`REPLAYS`], by the [`outcome`] of each rejection.
//! Its labels, and the cache's own metrics (`tokenwarden_core::metrics`):
//! [docs/metrics.md](https://github.com/tokenwarden/tokenwarden/blob/main/docs/metrics.md).

#![cfg_attr(not(feature = "metrics"), allow(unused_variables))]

use tokenwarden_core::TokenCache;

use crate::{NotReplayed, Replay};

/// Requests whose token was rejected, by what the layer did.
pub const REPLAYS: &str = "tokenwarden_replays_total";

/// The `outcome` label of a replay marker.
#[must_use]
pub fn outcome(replay: &Replay) -> &'static str {
    match replay {
        Replay::Replayed { .. } => "replayed",
        Replay::WithNonce { .. } => "dpop_nonce",
        Replay::NotReplayed(NotReplayed::BodyTooLarge) => "body_too_large",
        Replay::NotReplayed(NotReplayed::BodyNotReplayable) => "body_not_replayable",
        Replay::NotReplayed(NotReplayed::NoFreshToken(_)) => "no_fresh_token",
        Replay::NotReplayed(NotReplayed::StillRejected) => "still_rejected",
        Replay::NotReplayed(NotReplayed::RouteRejects) => "route_rejects",
        Replay::NotReplayed(NotReplayed::HeldOff) => "held_off",
    }
}

pub(crate) fn replay(cache: &TokenCache, replay: &Replay) {
    #[cfg(feature = "metrics")]
    {
        let name = metrics::SharedString::from(cache.name().to_owned());
        metrics::counter!(REPLAYS, "cache" => name, "outcome" => outcome(replay)).increment(1);
    }
}
