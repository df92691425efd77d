//! One attempt at a token: timeout, panic capture, expiry arithmetic.

use std::fmt;
use std::panic::AssertUnwindSafe;
use std::time::{Duration, SystemTime};

use futures_util::FutureExt;
use tokio::time::Instant;

use super::clock::Clock;
use crate::config::RefreshWindow;
use crate::{CacheConfig, Error, Token, TokenSource};

/// Why a fetch started; shown in logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FetchReason {
    /// No token yet.
    Empty,
    /// The token passed its mandatory margin.
    Expired,
    /// Background refresh in the advisory window.
    AheadOfExpiry,
    /// A request carrying the token was rejected.
    Invalidated,
    /// The token was revoked.
    Revoked,
    /// Single-use mode: every caller gets its own token.
    SingleUse,
}

impl fmt::Display for FetchReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FetchReason::Empty => "empty",
            FetchReason::Expired => "expired",
            FetchReason::AheadOfExpiry => "ahead-of-expiry",
            FetchReason::Invalidated => "invalidated",
            FetchReason::Revoked => "revoked",
            FetchReason::SingleUse => "single-use",
        })
    }
}

/// A token that arrived alive, with its lifetime after the skew margin.
pub(crate) struct Fetched {
    pub(crate) token: Token,
    pub(crate) sent_at: Instant,
    pub(crate) lifetime: Duration,
    /// The lifetime the issuer stated (before the skew margin).
    pub(crate) stated: Duration,
}

/// The points in a token's life, on the cache's clock.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Schedule {
    pub(crate) advisory_at: Instant,
    pub(crate) mandatory_at: Instant,
    /// The stated expiry.
    pub(crate) expires_at: Instant,
}

impl Schedule {
    pub(crate) fn new(
        cfg: &CacheConfig,
        sent_at: Instant,
        lifetime: Duration,
        stated: Duration,
    ) -> Self {
        let deadline = sent_at + lifetime;
        let mandatory_at = deadline - cfg.mandatory_margin.min(lifetime / 10);
        let ahead = match cfg.refresh_window {
            RefreshWindow::Fraction => {
                lifetime.mul_f64(cfg.refresh_ahead + cfg.refresh_jitter * fastrand::f64())
            }
            RefreshWindow::Before(window) => {
                let window = window.min(lifetime / 2);
                window + window.mul_f64(fastrand::f64() / 10.0)
            }
            RefreshWindow::Scaled => {
                let window = (lifetime / 2).min(Duration::from_secs(300) + lifetime / 10);
                window + window.mul_f64(fastrand::f64() / 10.0)
            }
        };
        let advisory_at = deadline
            .checked_sub(ahead)
            .unwrap_or(sent_at)
            .max(sent_at)
            .min(mandatory_at);
        Self {
            advisory_at,
            mandatory_at,
            expires_at: sent_at + stated.max(lifetime),
        }
    }
}

/// Calls the source once. Expiry is counted from when the request was sent.
pub(crate) async fn fetch_once(
    source: &dyn TokenSource,
    cfg: &CacheConfig,
    clock: &Clock,
    urgency: tokio::time::Instant,
) -> Result<Fetched, Error> {
    if let Some(budget) = &cfg.budget {
        // Its turn first: the most urgent fetch of the budget goes first.
        if tokio::time::timeout(budget.max_wait(), budget.acquire(urgency))
            .await
            .is_err()
        {
            tracing::warn!(cache = %cfg.name, wait_ms = budget.max_wait().as_millis() as u64, "no turn in the refresh budget in time");
            return Err(Error::Timeout(budget.max_wait()));
        }
    }
    let sent_at = clock.now();
    let wall = SystemTime::now();
    tracing::debug!("fetching token");
    let attempt = AssertUnwindSafe(source.fetch()).catch_unwind();
    let answered = tokio::time::timeout(cfg.fetch_timeout, attempt).await;
    crate::metrics::fetch_took(&cfg.name, clock.now().saturating_duration_since(sent_at));
    let token = match answered {
        Err(_) => Err(Error::Timeout(cfg.fetch_timeout)),
        Ok(Err(_panic)) => Err(Error::SourcePanicked),
        Ok(Ok(result)) => result.map_err(Error::from),
    }?;
    let stated = cfg.stated_lifetime(token.expiry(), wall);
    let skew = cfg.skew_margin(stated);
    let lifetime = stated.saturating_sub(skew);
    if lifetime.is_zero() || sent_at + lifetime <= clock.now() {
        return Err(Error::AlreadyExpired {
            lifetime: stated,
            skew,
        });
    }
    Ok(Fetched {
        token,
        sent_at,
        lifetime,
        stated,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn refresh_windows() {
        let now = Instant::now();
        let hour = Duration::from_secs(3600);
        let before = CacheConfig {
            refresh_window: RefreshWindow::Before(Duration::from_secs(600)),
            ..CacheConfig::default()
        };
        let scaled = CacheConfig {
            refresh_window: RefreshWindow::Scaled,
            ..CacheConfig::default()
        };
        for _ in 0..50 {
            let s = Schedule::new(&before, now, hour, hour);
            let window = (now + hour) - s.advisory_at;
            assert!(window >= Duration::from_secs(600) && window <= Duration::from_secs(660));
            // capped at half a short lifetime
            let short = Duration::from_secs(60);
            let s = Schedule::new(&before, now, short, short);
            assert!((now + short) - s.advisory_at <= Duration::from_secs(33));
            let s = Schedule::new(&scaled, now, hour, hour);
            let window = (now + hour) - s.advisory_at;
            assert!(window >= Duration::from_secs(660) && window <= Duration::from_secs(726));
            let two_min = Duration::from_secs(120);
            let s = Schedule::new(&scaled, now, two_min, two_min);
            let window = (now + two_min) - s.advisory_at;
            assert!(window >= Duration::from_secs(60) && window <= Duration::from_secs(66));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn schedule_orders_its_points() {
        let cfg = CacheConfig::default();
        let now = Instant::now();
        for lifetime in [1, 4, 60, 900, 28_800].map(Duration::from_secs) {
            for _ in 0..50 {
                let s = Schedule::new(&cfg, now, lifetime, lifetime);
                assert!(now <= s.advisory_at && s.advisory_at <= s.mandatory_at);
                assert!(s.mandatory_at < now + lifetime);
                if lifetime >= Duration::from_secs(60) {
                    // the advisory window is 20-30 % of the lifetime
                    let window = (now + lifetime) - s.advisory_at;
                    assert!(window >= lifetime.mul_f64(0.2) && window <= lifetime.mul_f64(0.3));
                    assert_eq!((now + lifetime) - s.mandatory_at, Duration::from_secs(5));
                }
            }
        }
    }
}
