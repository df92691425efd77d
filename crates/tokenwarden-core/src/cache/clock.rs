//! The clock a cache reads.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// The coarse clock's resolution at worst (`CLOCK_MONOTONIC_COARSE` ticks every 1–4 ms).
const COARSE_TICK: Duration = Duration::from_millis(5);

/// The clock a [`TokenCache`](crate::TokenCache) reads to decide when a token must no longer
/// be served.
///
/// - [`Clock::runtime`] (the default): decisions on the slow path read Tokio's clock (so
///   `tokio::time::pause` and `advance` move it in tests), and every `get` compares the
///   token's deadline, brought forward by a tick (5 ms at most), with the coarse monotonic
///   clock (`CLOCK_MONOTONIC_COARSE`). What that guarantees is written out in
///   [docs/guarantees.md] ("Never past the deadline").
/// - [`Clock::manual`]: a clock that moves only when told to, for tests that must make time
///   pass without driving any runtime (a sync caller, an idle runtime).
///
/// [docs/guarantees.md]: https://github.com/tokenwarden/tokenwarden/blob/main/docs/guarantees.md
#[derive(Clone)]
pub struct Clock(Kind);

#[derive(Clone)]
enum Kind {
    Runtime,
    Manual(Arc<Manual>),
}

struct Manual {
    base: Instant,
    offset_nanos: AtomicU64,
}

/// Moves a [`Clock::manual`] clock.
#[derive(Clone)]
pub struct ManualClock(Arc<Manual>);

impl Clock {
    /// Tokio's clock, with the coarse monotonic clock on the hot path. The default.
    #[must_use]
    pub fn runtime() -> Self {
        Self(Kind::Runtime)
    }

    /// A clock standing still until [`ManualClock::advance`] moves it.
    #[must_use]
    pub fn manual() -> (Self, ManualClock) {
        let manual = Arc::new(Manual {
            base: Instant::now(),
            offset_nanos: AtomicU64::new(0),
        });
        (Self(Kind::Manual(Arc::clone(&manual))), ManualClock(manual))
    }

    /// Now, for the slow path's decisions.
    pub(crate) fn now(&self) -> Instant {
        match &self.0 {
            Kind::Runtime => Instant::now(),
            Kind::Manual(m) => {
                m.base + Duration::from_nanos(m.offset_nanos.load(Ordering::Acquire))
            }
        }
    }

    /// Now, in the hot path's ticks.
    #[inline]
    pub(crate) fn ticks(&self) -> u64 {
        match &self.0 {
            Kind::Runtime => coarsetime::Instant::now_without_cache_update().as_ticks(),
            Kind::Manual(m) => m.offset_nanos.load(Ordering::Acquire),
        }
    }

    /// The hot path's ticks at `at` (a slow-path instant), given both clocks read `now` (the
    /// ticks read first). The coarse clock lags the precise one by up to a tick, so its
    /// deadline is brought forward by that much: early, never late.
    pub(crate) fn ticks_at(&self, at: Instant, now: Instant, ticks_now: u64) -> u64 {
        let ahead = at.saturating_duration_since(now);
        let ahead = match &self.0 {
            Kind::Runtime => {
                coarsetime::Duration::from(ahead.saturating_sub(COARSE_TICK)).as_ticks()
            }
            Kind::Manual(_) => u64::try_from(ahead.as_nanos()).unwrap_or(u64::MAX),
        };
        ticks_now.saturating_add(ahead)
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::runtime()
    }
}

impl ManualClock {
    /// Moves the clock forward.
    pub fn advance(&self, by: Duration) {
        let nanos = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
        self.0.offset_nanos.fetch_add(nanos, Ordering::AcqRel);
    }

    /// How far it has been moved.
    #[must_use]
    pub fn elapsed(&self) -> Duration {
        Duration::from_nanos(self.0.offset_nanos.load(Ordering::Acquire))
    }
}

impl fmt::Debug for Clock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Kind::Runtime => f.write_str("Clock::runtime"),
            Kind::Manual(m) => write!(
                f,
                "Clock::manual(+{:?})",
                Duration::from_nanos(m.offset_nanos.load(Ordering::Relaxed))
            ),
        }
    }
}

impl fmt::Debug for ManualClock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ManualClock(+{:?})", self.elapsed())
    }
}
