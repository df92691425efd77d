//! What the layers record through the [`metrics`](https://docs.rs/metrics) facade, with
//! feature `metrics` (nothing without it). See also `tokenwarden_core::metrics`.
//!
//! | name | kind | labels | what |
//! |---|---|---|---|
//! | [`REPLAYS`] | counter | `cache`, `outcome` | requests whose token was rejected, by what the layer did: `replayed`, `body_too_large`, `body_not_replayable`, `no_fresh_token`, `still_rejected`, `route_rejects`, `held_off` |
//!
//! `cache` is the name of the cache the layer takes tokens from; no label holds a token,
//! a credential or a key.

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
        let name = metrics::SharedString::from(cache.config().name.clone());
        metrics::counter!(REPLAYS, "cache" => name, "outcome" => outcome(replay)).increment(1);
    }
}
