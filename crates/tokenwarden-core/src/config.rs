//! Settings of a token cache.

use std::borrow::Cow;
use std::time::{Duration, SystemTime};

use crate::{ConfigError, Expiry};

/// The timing rules of a [`TokenCache`](crate::TokenCache), set on
/// [`TokenCacheBuilder`](crate::TokenCacheBuilder) (whose setters document them). What they
/// mean for callers is written out in [docs/guarantees.md].
///
/// How a token's life is divided, with `L` the lifetime after the clock-skew margin, counted
/// from when its fetch was sent:
///
/// ```text
/// sent ──────────── advisory ────────── mandatory ── L ── stated expiry
///      served        served, one         callers   skew
///                    background refresh  wait
/// ```
///
/// The advisory point lies before `L` by the [`RefreshWindow`]: by default
/// `L × (refresh_ahead + refresh_jitter × random)`. The mandatory point lies
/// `min(mandatory_margin, L / 10)` before `L`. The background refresh starts when the token is
/// *used* inside the advisory window (once). With a [`grace`](Self::grace) set, a token may be
/// served past its mandatory point while the issuer fails.
///
/// [docs/guarantees.md]: https://github.com/tokenwarden/tokenwarden/blob/main/docs/guarantees.md
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub(crate) struct CacheConfig {
    /// A name for logs and `Debug` (for example the gateway). Default `"token"`.
    pub(crate) name: Cow<'static, str>,
    /// How long one fetch may take. Default 10 s.
    pub(crate) fetch_timeout: Duration,
    /// The lifetime of a token whose issuer states none. Default 5 min.
    pub(crate) default_lifetime: Duration,
    /// A token is treated as expired this long before its stated expiry, for clocks that
    /// disagree. Capped at a quarter of the stated lifetime, so that a short token keeps most
    /// of its life. Default 5 s.
    pub(crate) clock_skew: Duration,
    /// Past this margin before expiry, callers wait for a fresh token instead of getting the
    /// current one. Capped at a tenth of the lifetime. Default 5 s.
    pub(crate) mandatory_margin: Duration,
    /// The fraction of the lifetime, before expiry, at which a background refresh starts.
    /// Default 0.2.
    pub(crate) refresh_ahead: f64,
    /// A random extra fraction of the lifetime added to `refresh_ahead`, so that many processes
    /// do not refresh at once. Default 0.1.
    pub(crate) refresh_jitter: f64,
    /// The first delay after a failed fetch; it doubles with every failure in a row, with
    /// jitter. Default 250 ms.
    pub(crate) backoff_base: Duration,
    /// The longest delay between failed fetches. Default 30 s.
    pub(crate) backoff_max: Duration,
    /// How long a rejection of the credentials is remembered before the issuer is asked again.
    /// Default 5 s.
    pub(crate) rejection_hold: Duration,
    /// A token rejected (invalidated) within this time of being fetched, and never accepted
    /// ([`Snapshot::mark_accepted`](crate::Snapshot::mark_accepted)), counts as a *fresh*
    /// rejection: after one, further invalidations of fresh tokens are held off with backoff
    /// (the token is kept). Capped at half the token's usable life. The rule is written out in
    /// [docs/guarantees.md] ("Invalidate if current"). The price of the cap: with very short
    /// tokens and a slow API that rejects every token, each rejection arriving past that half
    /// refetches without hold-off (at most one fetch per half-life). Default 10 s.
    ///
    /// [docs/guarantees.md]: https://github.com/tokenwarden/tokenwarden/blob/main/docs/guarantees.md
    pub(crate) fresh_rejection_window: Duration,
    /// The bound on what rejections of a token that works cost the issuer: how long a route
    /// whose replay with a fresh token was rejected too is remembered (the HTTP layers pass
    /// the request's method and path, or what `with_route` makes of them), and the interval
    /// of the rate bound on replacements, per cache (per key of a keyed cache). The two rules
    /// are written out in [docs/guarantees.md] ("Rejections are bounded"); see also
    /// [`TokenCache::reject`](crate::TokenCache::reject). `Duration::ZERO` turns both off.
    /// Default 5 s.
    ///
    /// [docs/guarantees.md]: https://github.com/tokenwarden/tokenwarden/blob/main/docs/guarantees.md
    pub(crate) rejection_interval: Duration,
    /// How the advisory window before expiry is sized. Default [`RefreshWindow::Fraction`]
    /// (`refresh_ahead` + `refresh_jitter`).
    pub(crate) refresh_window: RefreshWindow,
    /// "Static stability": while the issuer is failing, keep serving the last token for up to
    /// this long past its mandatory point, never past its stated expiry unless
    /// [`grace_past_expiry`](Self::grace_past_expiry) (each such call is counted in
    /// [`CacheStats::grace_serves`](crate::CacheStats) and logged at WARN once per failed
    /// attempt). Default zero: off.
    pub(crate) grace: Duration,
    /// Let [`grace`](Self::grace) run past the token's stated expiry (the API will probably
    /// reject it; some APIs honour tokens a little longer). Default `false`.
    pub(crate) grace_past_expiry: bool,
    /// The first delay after a failed fetch while **no** usable token is held (callers are
    /// waiting); it doubles like `backoff_base` and is capped by `backoff_max`. Shorter than
    /// `backoff_base` so that a cache with nothing to serve retries sooner than one refreshing a
    /// token that still works. Default 100 ms.
    pub(crate) first_fetch_backoff: Duration,
    /// The recovery beat: while no usable token is held, how often at most a call to the
    /// cache runs the [`Probe`](crate::Probe) a transient failure carries (jittered between
    /// half and all of it), and the longest random delay before the fetch that follows once
    /// the probe finds the issuer answering; also the beat on which an issuer that failed
    /// [`with_fast_retry`](crate::FetchError::with_fast_retry) is asked again. A probe gets
    /// `max(recovery_probe, 1 s)` to answer. The rule is written out in [docs/guarantees.md]
    /// ("Recovery after an outage"). `Duration::ZERO` turns probing off. Default 1 s.
    ///
    /// [docs/guarantees.md]: https://github.com/tokenwarden/tokenwarden/blob/main/docs/guarantees.md
    pub(crate) recovery_probe: Duration,
    /// A budget of issuer calls shared with other caches of the same issuer (see
    /// [`RefreshBudget`](crate::RefreshBudget)): every fetch waits its turn, most urgent first.
    /// Default none.
    pub(crate) budget: Option<crate::RefreshBudget>,
    /// Single-use mode: the most issuer requests in flight at once, pool refills included
    /// (callers beyond it queue, for at most `fetch_timeout`). Default 4.
    pub(crate) max_concurrent_fetches: usize,
}

/// How far before expiry the background refresh window opens.
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub(crate) enum RefreshWindow {
    /// A fraction of the lifetime: `refresh_ahead` plus up to `refresh_jitter` at random.
    Fraction,
    /// A fixed time before expiry (capped at half the lifetime), plus up to a tenth of it at
    /// random.
    Before(Duration),
    /// A window that grows with the lifetime: `min(lifetime / 2, 5 min + lifetime / 10)`,
    /// plus up to a tenth of it at random — half the life of a 2-minute token, 11 minutes of
    /// an hour-long one.
    Scaled,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            name: Cow::Borrowed("token"),
            fetch_timeout: Duration::from_secs(10),
            default_lifetime: Duration::from_secs(300),
            clock_skew: Duration::from_secs(5),
            mandatory_margin: Duration::from_secs(5),
            refresh_ahead: 0.2,
            refresh_jitter: 0.1,
            backoff_base: Duration::from_millis(250),
            backoff_max: Duration::from_secs(30),
            rejection_hold: Duration::from_secs(5),
            fresh_rejection_window: Duration::from_secs(10),
            rejection_interval: Duration::from_secs(5),
            refresh_window: RefreshWindow::Fraction,
            grace: Duration::ZERO,
            grace_past_expiry: false,
            first_fetch_backoff: Duration::from_millis(100),
            recovery_probe: Duration::from_secs(1),
            budget: None,
            max_concurrent_fetches: 4,
        }
    }
}

/// The longest wait any setting may ask for.
pub(crate) const YEAR: Duration = Duration::from_secs(365 * 24 * 3600);

impl CacheConfig {
    /// The lifetime a token's issuer stated, counted from `sent` (the wall-clock time its
    /// fetch was sent): the default lifetime if it stated none, at most a year (a token said to
    /// live longer is renewed after a year all the same, and the arithmetic on instants cannot
    /// overflow).
    pub(crate) fn stated_lifetime(&self, expiry: Expiry, sent: SystemTime) -> Duration {
        match expiry {
            Expiry::Unknown => self.default_lifetime,
            Expiry::In(lifetime) => lifetime,
            Expiry::At(at) => at.duration_since(sent).unwrap_or_default(),
        }
        .min(YEAR)
    }

    /// The margin for clocks that disagree, at most a quarter of the stated lifetime: a 5 s
    /// margin must not leave a 6 s token one second of use.
    pub(crate) fn skew_margin(&self, stated: Duration) -> Duration {
        self.clock_skew.min(stated / 4)
    }

    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |name, reason| Err(ConfigError::Invalid { name, reason });
        // Every wait is added to an instant somewhere: a year is far beyond any useful
        // setting, and far from the end of an `Instant`. A fetch needs a deadline (a hung
        // issuer must not hold callers for ever), so "no limit" is refused, by name.
        let long = [
            ("fetch_timeout", self.fetch_timeout),
            ("default_lifetime", self.default_lifetime),
            ("clock_skew", self.clock_skew),
            ("mandatory_margin", self.mandatory_margin),
            ("backoff_max", self.backoff_max),
            ("rejection_hold", self.rejection_hold),
            ("fresh_rejection_window", self.fresh_rejection_window),
            ("rejection_interval", self.rejection_interval),
            ("grace", self.grace),
            ("recovery_probe", self.recovery_probe),
            (
                "refresh_before",
                match self.refresh_window {
                    RefreshWindow::Before(w) => w,
                    _ => Duration::ZERO,
                },
            ),
            (
                "budget max_wait",
                self.budget
                    .as_ref()
                    .map_or(Duration::ZERO, |b| b.max_wait()),
            ),
        ];
        if let Some((name, _)) = long.iter().find(|(_, d)| *d > YEAR) {
            return invalid(name, "waits longer than a year are not supported");
        }
        if self.fetch_timeout.is_zero() {
            return invalid("fetch_timeout", "must be greater than zero");
        }
        if self.default_lifetime <= self.clock_skew {
            return invalid(
                "default_lifetime",
                "must be longer than the clock-skew margin",
            );
        }
        if !(0.0..1.0).contains(&self.refresh_ahead) || !(0.0..1.0).contains(&self.refresh_jitter) {
            return invalid("refresh_ahead", "fractions must lie in 0.0..1.0");
        }
        if self.refresh_ahead + self.refresh_jitter >= 1.0 {
            return invalid(
                "refresh_ahead",
                "refresh_ahead + refresh_jitter must be below 1.0",
            );
        }
        if self.backoff_base.is_zero() || self.backoff_max < self.backoff_base {
            return invalid(
                "backoff_base",
                "must be greater than zero and at most backoff_max",
            );
        }
        if self.first_fetch_backoff.is_zero() || self.first_fetch_backoff > self.backoff_max {
            return invalid(
                "first_fetch_backoff",
                "must be greater than zero and at most backoff_max",
            );
        }
        if self.max_concurrent_fetches == 0 {
            return invalid("max_concurrent_fetches", "must be at least 1");
        }
        Ok(())
    }

    /// The delay before the next attempt after `failures` failures in a row: exponential,
    /// capped, with "equal jitter" (between half and all of the exponential delay).
    pub(crate) fn backoff(&self, failures: u32) -> Duration {
        self.backoff_from(self.backoff_base, failures)
    }

    /// [`backoff`](Self::backoff) from another base.
    pub(crate) fn backoff_from(&self, base: Duration, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(20);
        let delay = base.saturating_mul(1 << doublings).min(self.backoff_max);
        delay / 2 + delay.mul_f64(fastrand::f64() / 2.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let cfg = CacheConfig::default();
        for _ in 0..100 {
            let first = cfg.backoff(1);
            assert!(first >= Duration::from_millis(125) && first <= Duration::from_millis(250));
            let fourth = cfg.backoff(4);
            assert!(fourth >= Duration::from_secs(1) && fourth <= Duration::from_secs(2));
            assert!(cfg.backoff(1000) <= cfg.backoff_max);
            assert!(cfg.backoff(1000) >= cfg.backoff_max / 2);
        }
    }

    #[test]
    fn rejects_impossible_settings() {
        assert!(CacheConfig::default().validate().is_ok());
        let bad = [
            CacheConfig {
                fetch_timeout: Duration::ZERO,
                ..CacheConfig::default()
            },
            CacheConfig {
                default_lifetime: Duration::from_secs(1),
                ..CacheConfig::default()
            },
            CacheConfig {
                refresh_ahead: 0.95,
                ..CacheConfig::default()
            },
            CacheConfig {
                refresh_jitter: -0.1,
                ..CacheConfig::default()
            },
            CacheConfig {
                backoff_max: Duration::from_millis(1),
                ..CacheConfig::default()
            },
            CacheConfig {
                rejection_hold: Duration::MAX,
                ..CacheConfig::default()
            },
        ];
        for cfg in bad {
            assert!(cfg.validate().is_err(), "{cfg:?}");
        }
    }
}
