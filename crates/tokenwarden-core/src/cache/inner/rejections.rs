//! What a rejection does: the invalidation rules and their bound (see `rejection.rs`), the
//! shared store's notices, revocation.

#[allow(clippy::wildcard_imports)]
use super::*;

impl Inner {
    /// A request carrying token `id` was rejected, on `route` if the caller knows it. See
    /// `cache/rejection.rs` for the rules about tokens that work.
    pub(crate) fn reject(&self, id: TokenId, route: Option<Route>) -> Invalidation {
        let mut st = self.lock();
        if self.single_use.is_some() {
            // The rejected token was never handed to anyone else; but tokens pooled before the
            // rejection was seen — pooled or still being fetched — are presumed as stale as it was.
            let pool = st.pool();
            let discarded = !pool.tokens.is_empty() || pool.refill.is_some();
            pool.tokens.clear();
            pool.generation += 1;
            metrics::pool_size(&self.config.name, 0);
            if discarded {
                Counters::bump(&self.counters.invalidations);
                metrics::invalidation(&self.config.name, "discarded");
                tracing::debug!(cache = %self.config.name, token = %id, "pooled tokens discarded after a rejection");
                return Invalidation::Discarded;
            }
            return Invalidation::Stale;
        }
        let Some(current) = st.current.as_ref().filter(|c| c.snapshot.id() == id) else {
            Counters::bump(&self.counters.coalesced_invalidations);
            metrics::invalidation(&self.config.name, "stale");
            return Invalidation::Stale;
        };
        let now = self.clock.now();
        let interval = self.config.rejection_interval;
        let snapshot = current.snapshot.clone();
        let (installed_at, mandatory_at, kept_before) = (
            current.installed_at,
            current.schedule.mandatory_at,
            current.held_off,
        );
        // A route that rejected a fresh token too, rejecting a token that has worked: the
        // rejection is the route's, not the token's. (One that never worked goes on to the
        // rules for fresh tokens: the replay's rejection may have been the token's after all.)
        if let Some(route) = route
            && snapshot.is_accepted()
            && st
                .rejections
                .as_ref()
                .is_some_and(|r| r.routes.holds_off(route, now))
        {
            return self.held_off(HeldOff::Route, id);
        }
        if snapshot.is_accepted() {
            // A token that worked is rejected: it has expired or was revoked, unless tokens
            // have been replaced after rejections too often. A remembered route tried again
            // after its time is bounded by that time (doubling), not by the rate bound, which
            // is kept for revocations.
            let rejections = st.rejections.get_or_insert_with(Box::default);
            let retried = route.is_some_and(|r| rejections.routes.expired(r, now));
            if !retried && !rejections.bound.allow(now, interval) {
                return self.held_off(HeldOff::Bound, id);
            }
            st.fresh_rejections = 0;
            return self.drop_rejected(st, "discarded");
        }
        // A token kept through a held-off invalidation continues the streak however old it
        // is. The window shrinks to half the token's usable life, so that a short token
        // rejected near its end (an API whose clock runs ahead) counts as expired, not as fresh.
        let window = self
            .config
            .fresh_rejection_window
            .min(mandatory_at.saturating_duration_since(installed_at) / 2);
        let fresh = kept_before || now.saturating_duration_since(installed_at) < window;
        let count = if fresh {
            st.fresh_rejections.saturating_add(1)
        } else {
            0
        };
        if count >= 2 && st.quiet_until.is_some_and(|until| now < until) {
            // Fresh tokens keep being rejected: the fault is not the token's age, and
            // fetching more would only hammer the issuer. Keep this one (other requests may
            // well accept it) until the backoff has passed.
            if let Some(current) = st.current.as_mut() {
                current.held_off = true;
            }
            return self.held_off(HeldOff::FreshTokensRejected, id);
        }
        // A fresh token's replacement counts against the rate bound (an old one that never
        // worked has simply reached its end: an API whose clock runs ahead).
        if count >= 1 {
            let bound = &mut st.rejections.get_or_insert_with(Box::default).bound;
            if !bound.allow(now, interval) {
                return self.held_off(HeldOff::Bound, id);
            }
        }
        st.fresh_rejections = count;
        if count >= 1 {
            let wait = self.config.backoff(count);
            st.quiet_until = Some(now + wait);
            if count >= 2 {
                tracing::warn!(
                    cache = %self.config.name,
                    count,
                    quiet_ms = wait.as_millis() as u64,
                    "freshly fetched tokens keep being rejected; holding off further invalidations"
                );
            }
        }
        self.drop_rejected(st, "discarded")
    }

    /// Drops the current token after a rejection, and tells the other replicas.
    pub(super) fn drop_rejected(
        &self,
        mut st: MutexGuard<'_, State>,
        result: &'static str,
    ) -> Invalidation {
        let fence = self
            .store
            .as_ref()
            .and_then(|_| st.current.as_ref().and_then(|c| fence_of(&c.snapshot)));
        Counters::bump(&self.counters.invalidations);
        metrics::invalidation(&self.config.name, result);
        self.discard(&mut st, FetchReason::Invalidated);
        drop(st);
        if let (Some(link), Some(fence)) = (&self.store, fence) {
            link.rejected(fence);
        }
        Invalidation::Discarded
    }

    /// Counts a rejection held off, the token kept (no notice to other replicas).
    pub(super) fn held_off(&self, why: HeldOff, id: TokenId) -> Invalidation {
        Counters::bump(&self.counters.suppressed_invalidations);
        let label = match why {
            HeldOff::FreshTokensRejected => "held_off",
            HeldOff::Route => "held_off_route",
            HeldOff::Bound => "held_off_bound",
        };
        metrics::invalidation(&self.config.name, label);
        tracing::debug!(cache = %self.config.name, token = %id, reason = ?why, "rejection held off; token kept");
        Invalidation::HeldOff(why)
    }

    /// Remembers `route` as one that rejected a fresh token; returns whether it was known.
    pub(super) fn remember_route(&self, st: &mut State, route: Route, now: Instant) -> bool {
        let interval = self.config.rejection_interval;
        let routes = &mut st.rejections.get_or_insert_with(Box::default).routes;
        let active = routes.active(now);
        let known = routes.remember(route, now, interval);
        if routes.active(now) > active {
            Counters::bump(&self.counters.routes_held_off);
            tracing::info!(
                cache = %self.config.name,
                route = ?route,
                "a route rejected a freshly fetched token too; its 401s are passed on for a while"
            );
        }
        known
    }

    /// The replay of a request rejected on `route`, sent with the current token `fresh`, was
    /// accepted: the rejection was about the token, its replacement is given back to the
    /// bound, and the route is forgotten if it was remembered.
    pub(crate) fn replay_accepted(&self, fresh: TokenId, route: Route) {
        let mut st = self.lock();
        let current = st
            .current
            .as_ref()
            .is_some_and(|c| c.snapshot.id() == fresh);
        if current && let Some(rejections) = st.rejections.as_mut() {
            rejections.bound.helped(self.config.rejection_interval);
            rejections.routes.forget(route);
        }
    }

    /// The replay of a request rejected on `route`, sent with the fresh token `fresh`, was
    /// rejected too: the route is remembered, the replacement counted as one that did not help
    /// (the rate bound's interval doubles), and `fresh` is kept — as a fresh token rejected
    /// once, so that more rejections of it before it works are held off with backoff.
    pub(crate) fn reject_replay(&self, fresh: TokenId, route: Route) {
        let interval = self.config.rejection_interval;
        let mut st = self.lock();
        let current = st
            .current
            .as_ref()
            .is_some_and(|c| c.snapshot.id() == fresh);
        if self.single_use.is_some() || !current || interval.is_zero() {
            drop(st);
            self.reject(fresh, Some(route));
            return;
        }
        let now = self.clock.now();
        // A route tried again after its time: its own time doubles, not the bound's.
        if !self.remember_route(&mut st, route, now) {
            st.rejections
                .get_or_insert_with(Box::default)
                .bound
                .missed();
        }
        st.fresh_rejections = st.fresh_rejections.saturating_add(1);
        st.quiet_until = Some(now + self.config.backoff(st.fresh_rejections));
        drop(st);
        self.held_off(HeldOff::Route, fresh);
    }

    /// After [`revoke`](Self::revoke) by the application: every replica drops the key's
    /// shared token.
    pub(crate) fn share_revocation(&self) {
        if let Some(link) = &self.store {
            link.revoked();
        }
    }

    pub(crate) fn revoke(&self) {
        let mut st = self.lock();
        st.epoch += 1;
        Counters::bump(&self.counters.revocations);
        metrics::revocation(&self.config.name);
        if let Some(flight) = st.flight.take() {
            flight.abort.abort();
            flight.tx.send_replace(Outcome::Superseded);
        }
        if let Some((_, refill)) = st.take_refill() {
            refill.abort();
        }
        if let Some(probe) = st.probe.take() {
            probe.task.abort();
        }
        if let Some(pool) = st.pool.as_mut() {
            pool.tokens.clear();
        }
        if self.single_use.is_some() {
            metrics::pool_size(&self.config.name, 0);
        }
        self.discard(&mut st, FetchReason::Revoked);
        tracing::info!(cache = %self.config.name, "tokens revoked");
    }
}

/// What the store tells this cache about other replicas' tokens.
impl Listener for Inner {
    /// Another replica saw the token with fencing number `fence` rejected: drop it if it is
    /// this cache's (no notice of its own: the rejection was not seen here), unless this cache
    /// kept it on purpose, holding off invalidations while fresh tokens keep being rejected.
    fn shared_rejected(&self, fence: u64) {
        let mut st = self.lock();
        if st
            .current
            .as_ref()
            .is_some_and(|c| !c.held_off && fence_of(&c.snapshot) == Some(fence))
        {
            Counters::bump(&self.counters.invalidations);
            metrics::invalidation(&self.config.name, "shared");
            tracing::debug!(cache = %self.config.name, fence, "token rejected at another replica; dropped");
            self.discard(&mut st, FetchReason::Invalidated);
        }
    }

    /// A replica installed the token with fencing number `fence` in the store: unless this
    /// cache holds it already, its advisory point is now, so that its next use (not an idle
    /// cache) starts a refresh, which takes that token from the store.
    fn shared_installed(&self, fence: u64) {
        let mut st = self.lock();
        let now = self.clock.now();
        let Some(current) = st.current.as_mut() else {
            return;
        };
        // Not for a token this cache holds, or one older than it (a notice that came late).
        if fence_of(&current.snapshot) >= Some(fence) || current.schedule.advisory_at <= now {
            return;
        }
        current.schedule.advisory_at = now;
        current.advisory_published = true;
        tracing::debug!(cache = %self.config.name, fence, "a newer token was shared; switching at the next use");
        self.publish(&mut st);
        self.wake(&mut st);
    }
}
