//! Settings of a token cache.

use std::borrow::Cow;
use std::time::Duration;

use crate::ConfigError;

/// The timing rules of a [`TokenCache`](crate::TokenCache). Set them on
/// [`TokenCacheBuilder`](crate::TokenCacheBuilder); read them with
/// [`TokenCache::config`](crate::TokenCache::config).
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
/// The advisory point lies `L × (refresh_ahead + refresh_jitter × random)` before `L`; the
/// mandatory point lies `min(mandatory_margin, L / 10)` before it. The background refresh runs
/// only if the token was used since it was fetched: an idle cache does not call the issuer.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct CacheConfig {
    /// A name for logs and `Debug` (for example the gateway). Default `"token"`.
    pub name: Cow<'static, str>,
    /// How long one fetch may take. Default 10 s.
    pub fetch_timeout: Duration,
    /// The lifetime of a token whose issuer states none. Default 5 min.
    pub default_lifetime: Duration,
    /// A token is treated as expired this long before its stated expiry. Default 5 s.
    pub clock_skew: Duration,
    /// Past this margin before expiry (capped at a quarter of the lifetime), callers wait for a
    /// fresh token instead of getting the current one. Capped at a tenth of the lifetime. Default 5 s.
    pub mandatory_margin: Duration,
    /// The fraction of the lifetime, before expiry, at which a background refresh starts.
    /// Default 0.2.
    pub refresh_ahead: f64,
    /// A random extra fraction of the lifetime added to `refresh_ahead`, so that many processes
    /// do not refresh at once. Default 0.1.
    pub refresh_jitter: f64,
    /// The first delay after a failed fetch; it doubles with every failure in a row, with
    /// jitter. Default 250 ms.
    pub backoff_base: Duration,
    /// The longest delay between failed fetches. Default 30 s.
    pub backoff_max: Duration,
    /// How long a rejection of the credentials is remembered before the issuer is asked again.
    /// Default 5 s.
    pub rejection_hold: Duration,
    /// A token rejected (invalidated) within this time of being fetched counts as a *fresh*
    /// rejection. After one, further invalidations of fresh tokens are held off with backoff
    /// (the token is kept) so an API that rejects every token — or one route that answers 401
    /// for another reason — cannot make the cache hammer the issuer. Default 10 s.
    pub fresh_rejection_window: Duration,
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
        }
    }
}

impl CacheConfig {
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |name, reason| Err(ConfigError::Invalid { name, reason });
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
        const YEAR: Duration = Duration::from_secs(365 * 24 * 3600);
        if self.backoff_max > YEAR
            || self.rejection_hold > YEAR
            || self.fresh_rejection_window > YEAR
        {
            return invalid("backoff_max", "waits longer than a year are not supported");
        }
        Ok(())
    }

    /// The delay before the next attempt after `failures` failures in a row: exponential,
    /// capped, with "equal jitter" (between half and all of the exponential delay).
    pub(crate) fn backoff(&self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(20);
        let delay = self
            .backoff_base
            .saturating_mul(1 << doublings)
            .min(self.backoff_max);
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
