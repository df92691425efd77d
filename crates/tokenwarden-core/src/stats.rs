//! Counters a user can read.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// What a cache has done since it was built. Read with
/// [`TokenCache::stats`](crate::TokenCache::stats).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CacheStats {
    /// Fetches started (one per call to the source).
    pub fetches: u64,
    /// Fetches that failed (error, timeout, panic, expired or unusable token).
    pub fetch_failures: u64,
    /// Calls served a token without waiting.
    pub hits: u64,
    /// Calls that waited for a fetch.
    pub waits: u64,
    /// Invalidations that discarded the current token.
    pub invalidations: u64,
    /// Invalidations ignored because the token was no longer current.
    pub coalesced_invalidations: u64,
    /// Rejections held off, the token kept: freshly fetched tokens kept being rejected, the
    /// route rejects fresh tokens too, or a working token was replaced too often
    /// ([`with_rejection_interval`](crate::TokenCacheBuilder::with_rejection_interval)).
    pub suppressed_invalidations: u64,
    /// Routes remembered as rejecting fresh tokens too (see
    /// [`with_rejection_interval`](crate::TokenCacheBuilder::with_rejection_interval)).
    pub routes_held_off: u64,
    /// Background refreshes started ahead of expiry.
    pub refreshes_ahead: u64,
    /// Calls to [`TokenCache::revoke`](crate::TokenCache::revoke).
    pub revocations: u64,
    /// Calls served a token past its mandatory point, in the grace period
    /// ([`with_grace`](crate::TokenCacheBuilder::with_grace)), because the issuer was failing.
    pub grace_serves: u64,
    /// Fetches given up on because they did not finish within the fetch timeout (their
    /// runtime is not being driven, or has gone); the next caller starts a new one.
    pub superseded_fetches: u64,
    /// Backoffs ended early because a recovery probe found the issuer answering again
    /// ([`with_recovery_probe`](crate::TokenCacheBuilder::with_recovery_probe)).
    pub recoveries: u64,
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) fetches: AtomicU64,
    pub(crate) fetch_failures: AtomicU64,
    pub(crate) slow_hits: AtomicU64,
    pub(crate) waits: AtomicU64,
    pub(crate) invalidations: AtomicU64,
    pub(crate) coalesced_invalidations: AtomicU64,
    pub(crate) suppressed_invalidations: AtomicU64,
    pub(crate) routes_held_off: AtomicU64,
    pub(crate) refreshes_ahead: AtomicU64,
    pub(crate) revocations: AtomicU64,
    pub(crate) grace_serves: AtomicU64,
    pub(crate) superseded_fetches: AtomicU64,
    pub(crate) recoveries: AtomicU64,
}

impl Counters {
    pub(crate) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Relaxed);
    }

    pub(crate) fn read(&self, fast_hits: u64) -> CacheStats {
        CacheStats {
            fetches: self.fetches.load(Relaxed),
            fetch_failures: self.fetch_failures.load(Relaxed),
            hits: self.slow_hits.load(Relaxed) + fast_hits,
            waits: self.waits.load(Relaxed),
            invalidations: self.invalidations.load(Relaxed),
            coalesced_invalidations: self.coalesced_invalidations.load(Relaxed),
            suppressed_invalidations: self.suppressed_invalidations.load(Relaxed),
            routes_held_off: self.routes_held_off.load(Relaxed),
            refreshes_ahead: self.refreshes_ahead.load(Relaxed),
            revocations: self.revocations.load(Relaxed),
            grace_serves: self.grace_serves.load(Relaxed),
            superseded_fetches: self.superseded_fetches.load(Relaxed),
            recoveries: self.recoveries.load(Relaxed),
        }
    }
}
