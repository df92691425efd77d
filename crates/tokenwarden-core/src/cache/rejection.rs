//! What rejections cost the issuer: the route memory ([`Routes`]) and the rate bound
//! ([`Bound`]) of [`with_rejection_interval`](crate::TokenCacheBuilder::with_rejection_interval),
//! kept per cache (so per key of a keyed cache) under the cache's state lock. The rules are
//! written out in docs/guarantees.md ("Rejections are bounded"); how they are kept:
//!
//! - A remembered route's rejections of a token that never worked fall through to the rules
//!   for fresh tokens: the replay's rejection may have been the token's after all.
//! - A replacement whose replay was rejected doubles the bound's interval only from the second
//!   one on, and not when its route was known already (that route's own time doubles
//!   instead), so one bad route tried again now and then does not make the bound hold off
//!   revocations elsewhere.

use std::hash::{Hash, Hasher};
use std::time::Duration;

use tokio::time::Instant;

/// Where a rejection came from: an opaque number, the same for every request of one route.
/// The HTTP layers make it from the request's method and path ([`Route::of`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Route(u64);

impl Route {
    /// A route from a number the caller chose (equal numbers, same route).
    #[must_use]
    pub const fn new(id: u64) -> Self {
        Self(id)
    }

    /// The route of a request with this method and path (without the query: `/orders/7` and
    /// `/orders/7?page=2` are one route).
    #[must_use]
    pub fn of(method: &str, path: &str) -> Self {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        method.hash(&mut hasher);
        path.split('?').next().unwrap_or_default().hash(&mut hasher);
        Self(hasher.finish())
    }
}

/// What the cache made of a rejection ([`TokenCache::reject`](crate::TokenCache::reject)).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Invalidation {
    /// The token was dropped: the next `get` fetches a fresh one.
    Discarded,
    /// The token had already been replaced (a late rejection): nothing changed.
    Stale,
    /// The token was kept: the rejection is probably not about it.
    HeldOff(HeldOff),
}

impl Invalidation {
    /// Whether the token was dropped.
    #[must_use]
    pub fn is_discarded(self) -> bool {
        self == Invalidation::Discarded
    }
}

/// Why a rejection was held off, the token kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum HeldOff {
    /// Freshly fetched tokens keep being rejected before any success
    /// ([`with_fresh_rejection_window`](crate::TokenCacheBuilder::with_fresh_rejection_window)):
    /// the fault is probably the credentials' scope or permissions, or the requests.
    FreshTokensRejected,
    /// This route rejected a freshly fetched token too: its `401`s of a token that has worked
    /// are not about the token.
    Route,
    /// Tokens were replaced after rejections as often as
    /// [`with_rejection_interval`](crate::TokenCacheBuilder::with_rejection_interval) allows.
    Bound,
}

/// A cache's memory of rejections: made at its first rejection.
#[derive(Default)]
pub(crate) struct Rejections {
    pub(crate) routes: Routes,
    pub(crate) bound: Bound,
}

/// Routes remembered at most per cache: the oldest is forgotten first.
const MAX_ROUTES: usize = 16;

/// A remembered route's time doubles at most this many times.
const MAX_DOUBLINGS: u32 = 6;

struct Mark {
    route: Route,
    until: Instant,
    doublings: u32,
}

/// Routes whose rejections are not about the token.
#[derive(Default)]
pub(crate) struct Routes(Vec<Mark>);

impl Routes {
    /// Whether `route` is remembered at `now`.
    pub(crate) fn holds_off(&self, route: Route, now: Instant) -> bool {
        self.0.iter().any(|m| m.route == route && now < m.until)
    }

    /// Whether `route` was remembered and its time is up at `now` (it is being tried again).
    pub(crate) fn expired(&self, route: Route, now: Instant) -> bool {
        self.0.iter().any(|m| m.route == route && now >= m.until)
    }

    /// Forgets `route` (a replay on it was accepted).
    pub(crate) fn forget(&mut self, route: Route) {
        self.0.retain(|m| m.route != route);
    }

    /// Remembers `route` (again: for twice as long as last time); returns whether it was
    /// remembered already.
    pub(crate) fn remember(&mut self, route: Route, now: Instant, interval: Duration) -> bool {
        if let Some(mark) = self.0.iter_mut().find(|m| m.route == route) {
            if now >= mark.until {
                mark.doublings = (mark.doublings + 1).min(MAX_DOUBLINGS);
            }
            mark.until = now + interval.saturating_mul(1 << mark.doublings);
            return true;
        }
        if self.0.len() >= MAX_ROUTES
            && let Some(oldest) = (0..self.0.len()).min_by_key(|&i| self.0[i].until)
        {
            self.0.swap_remove(oldest);
        }
        self.0.push(Mark {
            route,
            until: now + interval,
            doublings: 0,
        });
        false
    }

    /// Routes remembered at `now`.
    pub(crate) fn active(&self, now: Instant) -> usize {
        self.0.iter().filter(|m| now < m.until).count()
    }
}

/// The rate bound on replacements after rejections: a burst of [`BURST`], then one per
/// interval, the interval doubling with each replacement that did not help.
#[derive(Default)]
pub(crate) struct Bound {
    /// When the bound is back to a full burst (the cell rate's "theoretical arrival time").
    full_at: Option<Instant>,
    /// Replacements counted and not given back.
    charged: u32,
    /// Replacements in a row whose replay was rejected too: the interval doubles with each.
    misses: u32,
}

/// Replacements allowed in a row.
const BURST: u32 = 2;

impl Bound {
    /// The interval now: `base`, doubled for each replacement in a row that did not help after
    /// the first (one new bad route is the route memory's to handle; a second in a row is a
    /// pattern).
    fn interval(&self, base: Duration) -> Duration {
        let doublings = self.misses.saturating_sub(1).min(MAX_DOUBLINGS);
        base.saturating_mul(1 << doublings)
    }

    /// Whether one more replacement is allowed at `now`; counts it if so.
    pub(crate) fn allow(&mut self, now: Instant, base: Duration) -> bool {
        if base.is_zero() {
            return true;
        }
        // The burst is measured in base intervals; each replacement counts the current one.
        let full_at = self.full_at.map_or(now, |at| at.max(now));
        if full_at > now + base.saturating_mul(BURST - 1) {
            return false;
        }
        self.full_at = Some(full_at + self.interval(base));
        self.charged += 1;
        true
    }

    /// A replacement's replay was accepted: it is given back, and the interval is the base
    /// one again.
    pub(crate) fn helped(&mut self, base: Duration) {
        self.misses = 0;
        if self.charged == 0 {
            return;
        }
        self.charged -= 1;
        self.full_at = self.full_at.and_then(|at| at.checked_sub(base));
    }

    /// A replacement's replay was rejected too: the interval doubles.
    pub(crate) fn missed(&mut self) {
        self.misses = self.misses.saturating_add(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bound_allows_two_in_a_row_then_one_per_interval() {
        let start = Instant::now();
        let every = Duration::from_secs(5);
        let mut bound = Bound::default();
        let at = |ms| start + Duration::from_millis(ms);
        assert!(bound.allow(at(0), every));
        assert!(bound.allow(at(100), every));
        assert!(!bound.allow(at(200), every));
        assert!(!bound.allow(at(4_999), every));
        assert!(bound.allow(at(5_000), every));
        assert!(!bound.allow(at(6_000), every));
        // A replacement that helped is given back.
        bound.helped(every);
        assert!(bound.allow(at(6_000), every));
        assert!(!bound.allow(at(6_001), every));
        // Idle long enough: a full burst again.
        assert!(bound.allow(at(60_000), every));
        assert!(bound.allow(at(60_001), every));
        assert!(!bound.allow(at(60_002), every));
    }

    #[test]
    fn replacements_that_do_not_help_double_the_interval_until_one_does() {
        let start = Instant::now();
        let every = Duration::from_secs(5);
        let mut bound = Bound::default();
        let at = |s| start + Duration::from_secs(s);
        assert!(bound.allow(at(0), every) && bound.allow(at(0), every));
        bound.missed();
        bound.missed();
        bound.missed();
        // Full again at 10 s; one more once within a base interval of it, then every 20 s.
        assert!(!bound.allow(at(4), every));
        assert!(bound.allow(at(5), every));
        assert!(!bound.allow(at(24), every));
        assert!(bound.allow(at(25), every));
        bound.helped(every);
        assert_eq!(bound.interval(every), every);
    }

    #[test]
    fn a_route_is_remembered_for_doubling_times() {
        let start = Instant::now();
        let every = Duration::from_secs(5);
        let at = |s| start + Duration::from_secs(s);
        let (bad, other) = (Route::of("GET", "/bad"), Route::of("GET", "/good"));
        let mut routes = Routes::default();
        assert!(!routes.holds_off(bad, at(0)));
        routes.remember(bad, at(0), every);
        assert!(routes.holds_off(bad, at(4)));
        assert!(!routes.holds_off(other, at(4)));
        assert!(!routes.holds_off(bad, at(5)));
        // Rejected again once its time was up: twice as long.
        routes.remember(bad, at(5), every);
        assert!(routes.holds_off(bad, at(14)));
        assert!(!routes.holds_off(bad, at(15)));
        assert_eq!(routes.active(at(14)), 1);
        for i in 0..40 {
            routes.remember(Route::new(i), at(20), every);
        }
        assert_eq!(routes.0.len(), MAX_ROUTES, "bounded");
    }

    #[test]
    fn routes_ignore_the_query() {
        assert_eq!(Route::of("GET", "/a?x=1"), Route::of("GET", "/a"));
        assert_ne!(Route::of("GET", "/a"), Route::of("POST", "/a"));
    }
}
