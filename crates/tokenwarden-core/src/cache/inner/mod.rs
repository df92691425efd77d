//! The cache's state machine. The hot path is [`Inner::cached`]; everything else runs under
//! one mutex, rarely (once per token per thread, or per fetch).
//!
//! Some 620 lines: the state word's rules written out, below, and the transitions between
//! states, which read best side by side; each mechanism they drive has a file of its own
//! (`local`, `flight`, `recovery`, `driver`, `rejections`, `pool`).
//!
//! # The state word and the hot path
//!
//! [`Inner::state`] is `generation << 1 | USABLE`, and it is the only shared word the hot path
//! reads. Its rules, which every mechanism below keeps:
//!
//! - It changes (under the state lock, by `publish`) whenever what may be served changes: a
//!   new token, a discard, a revocation, a driver gained or lost. A thread's copy is served
//!   only while the word is the one it was made under, and before its own check time.
//! - `USABLE` is set only while a token is current and a driver (the cache's task, or a keyed
//!   cache's wheel) will renew it on time; without one no copy is made, and every get looks at
//!   the clock under the lock.
//! - A copy's check time is the cache's next check point (`check_point`): the advisory point
//!   while the token is before it, then the next retry or the token's end. A copy never
//!   outlives the moment the cache would start (or retry) a refresh, so the hot path never
//!   skips one.
//! - Everything else — flights, backoff, the pool, rejections — is under the `State` mutex,
//!   and publishes through the word when it changes what may be served.
//!
//! # The mechanisms, a file each
//!
//! - `local`: per-thread copies of the current token (the hot path) and the hit counters.
//! - `flight`: one fetch for every caller, its deadline, supersession.
//! - `recovery`: backoff, the recovery probe, grace.
//! - `driver`: renewal ahead of expiry, on a task of its own or a keyed cache's wheel.
//! - `rejections`: invalidation, the rejection bound, the store's notices, revocation.
//! - `pool`: single-use mode.

mod driver;
mod flight;
mod local;
mod pool;
mod recovery;
mod rejections;

use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};

use std::time::Duration;

use thread_local::ThreadLocal;
use tokio::runtime::Handle;
use tokio::sync::{Notify, Semaphore, watch};
use tokio::task::AbortHandle;
use tokio::time::Instant;
use tracing::Instrument;

use super::clock::Clock;
use super::fetch::{FetchReason, Fetched, Schedule, fetch_once};
use super::label::KeyLabel;
use super::padded::Padded;
use super::rejection::{Bound, HeldOff, Invalidation, Rejections, Route};
use super::status::{CacheState, CacheStatus};
use super::wheel::{Driven, Wheel};
use crate::metrics;
use crate::stats::Counters;
use crate::store::{Fence, Link, Listener};
use crate::{
    CacheConfig, CacheStats, Error, FetchError, Presentation, Snapshot, TokenId, TokenSource,
};

/// How much longer than the fetch timeout a caller waits for a fetch running on another
/// runtime before giving up on it.
const WAIT_SLACK: Duration = Duration::from_millis(100);

/// However short `recovery_probe` is, a probe is given this long to be answered.
const PROBE_PATIENCE: Duration = Duration::from_secs(1);

/// Low bit of [`Inner::state`]: the current token may be served without looking at the clock.
const USABLE: u64 = 1;

pub(crate) struct Inner {
    /// `generation << 1 | USABLE`. Changes whenever the current token or its usability does;
    /// the hot path reads only this shared word.
    state: AtomicU64,
    /// Per-thread copies of the current snapshot, tagged with the state they were made under.
    /// Per-thread copies of the current token (none for a keyed cache's entries, whose
    /// per-thread copies live in the keyed cache, bounded).
    /// Boxed: a `ThreadLocal` is half a kilobyte inline, and a keyed cache's entries have none.
    locals: Option<Box<Locals>>,
    /// A display-safe label of the key, for a keyed cache's entries (tracing spans only).
    pub(crate) key_label: KeyLabel,
    shared: Mutex<State>,
    /// Swapped by [`rotate`](Self::rotate); taken (cloned) under the state lock.
    source: Mutex<Arc<dyn TokenSource>>,
    presentation: Presentation,
    config: Arc<CacheConfig>,
    /// Single-use mode: the pool's size, and the bound on issuer requests in flight.
    single_use: Option<(usize, Arc<Semaphore>)>,
    counters: Counters,
    /// Wakes the driver task when the schedule changes (a cache of its own; a keyed cache's
    /// entries have the wheel instead).
    notify: Option<Arc<Notify>>,
    /// A keyed cache's entries are driven by the keyed cache's wheel, not a task each.
    wheel: Option<Arc<Wheel>>,
    /// This cache, for the wheel's queue.
    me: Weak<Inner>,
    /// With a wheel: the number of this cache's latest request to be ticked (older ones are
    /// ignored when they come due, and dropped when the wheel tidies its queue). Written under
    /// the state lock.
    wake_seq: AtomicU64,
    clock: Clock,
    /// Shares tokens with other replicas through a store, if built so.
    store: Option<Arc<Link>>,
}

/// Per-thread copies of the current token, and every thread's hit counter (each written only
/// by its own thread), for [`Inner::stats`].
#[derive(Default)]
struct Locals {
    table: ThreadLocal<Padded<RefCell<Local>>>,
    hits: Mutex<Vec<Arc<Padded<AtomicU64>>>>,
}

struct Local {
    state: u64,
    snapshot: Option<Snapshot>,
    /// On the clock's hot-path ticks: from then on this thread asks the slow path again (the
    /// advisory point, a retry, the mandatory point).
    check_at: u64,
    hits: Arc<Padded<AtomicU64>>,
}

#[derive(Default)]
struct State {
    generation: u64,
    next_task: u64,
    current: Option<Current>,
    /// Why there is no current token (for logs).
    empty_reason: Option<FetchReason>,
    /// Boxed: a key is idle most of the time.
    flight: Option<Box<Flight>>,
    /// Bumped by revocation: a fetch sent under an older epoch is never installed.
    epoch: u64,
    /// Failures in a row (fetches, or fresh tokens rejected).
    failures: u32,
    /// Bumped by every success and every counted failure: an attempt that fails after another
    /// one already counted a failure since it started is part of the same outage.
    failure_mark: u64,
    /// The failure count at which grace was last announced (WARN once per failed attempt).
    grace_warned: u32,
    retry_at: Option<Instant>,
    /// Boxed: most keys have none, and an error is large.
    last_error: Option<Box<Error>>,
    fresh_rejections: u32,
    /// While fresh tokens keep being rejected, invalidations before this are held off.
    quiet_until: Option<Instant>,
    driver: Option<(u64, AbortHandle)>,
    /// The recovery probe running, if one is: its task id, when it is given up on (a task
    /// dropped unpolled by a runtime shutting down, or on an idle runtime, clears nothing),
    /// and its handle.
    probe: Option<Box<ProbeTask>>,
    /// No new probe before this (a jittered `recovery_probe` after the last one started).
    next_probe: Option<Instant>,
    /// A probe may still end this backoff: set when a regular fetch starts, cleared when a
    /// probe starts one (so a probe that is wrong costs one fetch per backoff period).
    probe_armed: bool,
    /// Single-use mode's pool (boxed: none in shared mode).
    pool: Option<Box<PoolState>>,
    /// Routes whose rejections are not about the token, and the rate bound on replacing a
    /// working token (boxed, made at the first rejection: most keys never see one).
    rejections: Option<Box<Rejections>>,
}

/// Single-use mode: tokens fetched ahead, each to be handed out once.
#[derive(Default)]
struct PoolState {
    tokens: VecDeque<Pooled>,
    refill: Option<(u64, AbortHandle)>,
    /// Bumped when a single-use token is rejected: a pool refill sent before is discarded.
    generation: u64,
}

impl State {
    fn pool(&mut self) -> &mut PoolState {
        self.pool.get_or_insert_with(Box::default)
    }

    fn pool_len(&self) -> usize {
        self.pool.as_ref().map_or(0, |p| p.tokens.len())
    }

    fn pool_generation(&self) -> u64 {
        self.pool.as_ref().map_or(0, |p| p.generation)
    }

    /// Whether a refill task is running. A task that ended without clearing its place (dropped
    /// before its first poll, by a runtime shutting down) does not count.
    fn refilling(&self) -> bool {
        self.pool
            .as_ref()
            .and_then(|p| p.refill.as_ref())
            .is_some_and(|(_, task)| !task.is_finished())
    }

    fn take_refill(&mut self) -> Option<(u64, AbortHandle)> {
        self.pool.as_mut().and_then(|p| p.refill.take())
    }
}

/// A recovery probe running: its task id, when it is given up on, and its handle.
struct ProbeTask {
    id: u64,
    until: Instant,
    task: AbortHandle,
}

struct Current {
    snapshot: Snapshot,
    installed_at: Instant,
    /// An invalidation of it was held off (fresh tokens kept being rejected).
    held_off: bool,
    /// The driver has told every thread that the advisory point passed.
    advisory_published: bool,
    /// The retry time the driver last told every thread about.
    retry_published: Option<Instant>,
    schedule: Schedule,
}

struct Pooled {
    snapshot: Snapshot,
    usable_until: Instant,
}

struct Flight {
    id: u64,
    reason: FetchReason,
    tx: watch::Sender<Outcome>,
    abort: AbortHandle,
    /// Waiters give up on it then (fetch timeout plus a small slack).
    deadline: Instant,
}

#[derive(Clone)]
enum Outcome {
    Pending,
    Ready(Result<Snapshot, Error>),
    /// The fetch was revoked; waiters start over.
    Superseded,
}

enum Step {
    /// The snapshot, the state word it was read under and when this thread must look again.
    Ready(Snapshot, u64, Instant),
    /// The flight's outcome, its deadline and its id.
    Wait(watch::Receiver<Outcome>, Instant, u64),
}

/// What a background task clears from [`State`] when it ends, however it ends.
#[derive(Clone, Copy)]
enum TaskKind {
    Flight,
    Driver,
    Refill,
    Probe,
}

struct TaskGuard {
    inner: Weak<Inner>,
    kind: TaskKind,
    id: u64,
    /// Set on the task's first poll. A task dropped unpolled (spawned on a runtime that was
    /// shutting down: tokio drops it at once, while the spawner still holds the lock) clears
    /// nothing; the flight it left behind is superseded at its deadline.
    armed: bool,
}

impl Drop for TaskGuard {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let Some(inner) = self.inner.upgrade() else {
            return;
        };
        let mut st = inner.lock();
        match self.kind {
            // Only reached when the flight task was dropped before it completed (its runtime
            // shut down): waiters start over, on their own runtimes.
            TaskKind::Flight => {
                if let Some(flight) = st.flight.take_if(|f| f.id == self.id) {
                    flight.tx.send_replace(Outcome::Superseded);
                }
            }
            // Without a driver nobody enforces expiry: stop serving from the hot path.
            TaskKind::Driver => {
                if st.driver.as_ref().is_some_and(|(id, _)| *id == self.id) {
                    st.driver = None;
                    inner.publish(&mut st);
                }
            }
            TaskKind::Refill => {
                if let Some(pool) = st.pool.as_mut()
                    && pool.refill.as_ref().is_some_and(|(id, _)| *id == self.id)
                {
                    pool.refill = None;
                }
            }
            TaskKind::Probe => {
                st.probe.take_if(|p| p.id == self.id);
            }
        }
    }
}

/// What a cache is made of, from its builder.
pub(crate) struct Parts {
    pub(crate) source: Arc<dyn TokenSource>,
    pub(crate) presentation: Presentation,
    pub(crate) config: Arc<CacheConfig>,
    pub(crate) single_use: Option<usize>,
    pub(crate) clock: Clock,
    pub(crate) thread_copies: bool,
    pub(crate) key_label: KeyLabel,
    pub(crate) wheel: Option<Arc<Wheel>>,
    pub(crate) store: Option<Arc<Link>>,
}

/// `source`, asking the store first if the cache shares through one.
fn through(store: &Option<Arc<Link>>, source: Arc<dyn TokenSource>) -> Arc<dyn TokenSource> {
    match store {
        Some(link) => link.wrap(source),
        None => source,
    }
}

/// The fencing number a token was shared under, if it was.
fn fence_of(snapshot: &Snapshot) -> Option<u64> {
    snapshot.token().metadata::<Fence>().map(|f| f.0)
}

impl Inner {
    pub(crate) fn new(parts: Parts, me: Weak<Inner>) -> Self {
        let Parts {
            source,
            presentation,
            config,
            single_use,
            clock,
            thread_copies,
            key_label,
            wheel,
            store,
        } = parts;
        if let Some(link) = &store {
            link.attach(me.clone());
        }
        let source = through(&store, source);
        let notify = wheel.is_none().then(|| Arc::new(Notify::new()));
        // Single-use mode bounds the issuer requests in flight, pool refills included (shared
        // mode has one fetch at a time).
        let single_use = single_use.map(|pool| {
            (
                pool,
                Arc::new(Semaphore::new(config.max_concurrent_fetches)),
            )
        });
        Self {
            wheel,
            me,
            wake_seq: AtomicU64::new(0),
            clock,
            state: AtomicU64::new(0),
            locals: thread_copies.then(Box::default),
            key_label,
            shared: Mutex::new(State::default()),
            source: Mutex::new(source),
            presentation,
            config,
            single_use,
            counters: Counters::default(),
            notify,
            store,
        }
    }

    pub(crate) fn config(&self) -> &CacheConfig {
        &self.config
    }

    /// The bound on issuer requests in flight, in single-use mode (where it always exists).
    fn permits(&self) -> Arc<Semaphore> {
        self.single_use.as_ref().map_or_else(
            || Arc::new(Semaphore::new(self.config.max_concurrent_fetches)),
            |(_, permits)| Arc::clone(permits),
        )
    }

    pub(crate) fn presentation(&self) -> &Presentation {
        &self.presentation
    }

    pub(crate) fn is_single_use(&self) -> bool {
        self.single_use.is_some()
    }

    pub(crate) fn single_use_pool(&self) -> Option<usize> {
        self.single_use.as_ref().map(|(pool, _)| *pool)
    }

    /// For a keyed cache's per-thread table: the state word and the hot-path tick until which
    /// `snapshot` may be served without asking again (at most `revalidate` from now), if it is
    /// the current token and may be served from a copy.
    pub(crate) fn table_view(
        &self,
        snapshot: &Snapshot,
        revalidate: Duration,
    ) -> Option<(u64, u64)> {
        let st = self.lock();
        let ticks = self.clock.ticks();
        let now = self.clock.now();
        let current = st
            .current
            .as_ref()
            .filter(|c| c.snapshot.id() == snapshot.id() && now < c.schedule.mandatory_at)?;
        if now >= current.schedule.advisory_at && st.flight.is_none() {
            // A use inside the advisory window: the slow path starts the refresh.
            return None;
        }
        let state = self.state.load(Ordering::Acquire);
        if state & USABLE == 0 {
            return None;
        }
        let check_at = self.check_point(&st, now).min(now + revalidate);
        Some((state, self.clock.ticks_at(check_at, now, ticks)))
    }

    /// Whether the state word is still `state` (the hot path's check of a keyed copy; the
    /// keyed cache reads the clock itself).
    #[inline]
    pub(crate) fn state_is(&self, state: u64) -> bool {
        self.state.load(Ordering::Acquire) == state
    }

    /// Whether threads keep copies of its token (none for a keyed cache's entries, unless
    /// asked for).
    #[cfg(test)]
    pub(crate) fn has_thread_copies(&self) -> bool {
        self.locals.is_some()
    }

    /// The cache's clock.
    pub(crate) fn clock(&self) -> &Clock {
        &self.clock
    }

    /// Whether a fetch (or a pool refill) is under way: a keyed cache never evicts it then.
    pub(crate) fn is_busy(&self) -> bool {
        let st = self.lock();
        st.flight.is_some() || st.refilling()
    }

    /// The source fetches go to now.
    fn source(&self) -> Arc<dyn TokenSource> {
        Arc::clone(&self.source.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// New credentials: fetches from now on go to `source`. The current token stays (it is
    /// still valid at its issuer); a backoff or rejection remembered from the old credentials
    /// is forgotten, so the new ones are tried at once.
    pub(crate) fn rotate(&self, source: Arc<dyn TokenSource>) {
        let source = through(&self.store, source);
        let mut st = self.lock();
        *self.source.lock().unwrap_or_else(PoisonError::into_inner) = source;
        st.retry_at = None;
        st.failures = 0;
        st.failure_mark += 1;
        st.last_error = None;
        st.fresh_rejections = 0;
        st.quiet_until = None;
        if let Some(rejections) = st.rejections.as_mut() {
            rejections.bound = Bound::default();
        }
        if st.current.is_some() {
            self.publish(&mut st);
        }
        tracing::info!(cache = %self.config.name, "credentials rotated");
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // No user code runs under this lock; a poisoned lock still holds consistent state.
        self.shared.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Publishes a new state word. Called under the lock after every change.
    fn publish(&self, st: &mut State) {
        st.generation += 1;
        let usable = st.current.is_some() && st.driver.is_some();
        self.state
            .store(st.generation << 1 | u64::from(usable), Ordering::Release);
        if let Some(wheel) = &self.wheel {
            wheel.changed();
        }
    }

    fn discard(&self, st: &mut State, reason: FetchReason) {
        if let Some(current) = st.current.take() {
            tracing::debug!(cache = %self.config.name, token = %current.snapshot.id(), %reason, "token discarded");
        }
        st.empty_reason = Some(reason);
        self.publish(st);
        self.wake(st);
    }

    /// The current token if it is within its usable life, without fetching.
    pub(crate) fn current(self: &Arc<Self>) -> Option<Snapshot> {
        if let Some(snapshot) = self.cached() {
            return Some(snapshot);
        }
        let mut st = self.lock();
        let now = self.clock.now();
        let current = st
            .current
            .as_ref()
            .filter(|c| now < c.schedule.mandatory_at)?;
        let snapshot = current.snapshot.clone();
        if now >= current.schedule.advisory_at && st.flight.is_none() {
            // A use inside the advisory window starts the background refresh (once: the flight
            // is there for the next use), and is served the current token at once.
            self.refresh_ahead(&mut st, now);
            return Some(snapshot);
        }
        let state = self.state.load(Ordering::Relaxed);
        let check_at = self.check_point(&st, now);
        drop(st);
        self.fill_local(state, &snapshot, check_at);
        Some(snapshot)
    }

    /// The current token's id, if it is within its usable life; no side effect.
    pub(crate) fn peek(&self) -> Option<TokenId> {
        let st = self.lock();
        let now = self.clock.now();
        st.current
            .as_ref()
            .filter(|c| now < c.schedule.mandatory_at)
            .map(|c| c.snapshot.id())
    }

    /// What the cache is doing, for health checks.
    pub(crate) fn status(&self) -> CacheStatus {
        let st = self.lock();
        let now = self.clock.now();
        let current = st.current.as_ref();
        let valid = current.filter(|c| now < c.schedule.mandatory_at);
        let state = match st.retry_at.filter(|at| now < *at) {
            _ if self.in_grace(&st, now) => CacheState::Grace,
            Some(at) if st.last_error.as_deref().is_some_and(Error::is_rejected) => {
                CacheState::CredentialsRejected { retry_in: at - now }
            }
            Some(at)
                if st
                    .last_error
                    .as_deref()
                    .is_some_and(Error::is_configuration) =>
            {
                CacheState::Misconfigured { retry_in: at - now }
            }
            Some(at) => CacheState::BackingOff { retry_in: at - now },
            None if st.flight.is_some() => CacheState::Refreshing,
            None if valid.is_some() => CacheState::Fresh,
            None => CacheState::Empty,
        };
        CacheStatus {
            state,
            token: valid.map(|c| c.snapshot.id()),
            expires_in: current.map(|c| c.schedule.expires_at.saturating_duration_since(now)),
            refresh_in: valid.map(|c| c.schedule.advisory_at.saturating_duration_since(now)),
            failures: st.failures,
            last_error: st.last_error.as_deref().cloned(),
            held_off_rejections: self
                .counters
                .suppressed_invalidations
                .load(std::sync::atomic::Ordering::Relaxed),
            routes_held_off: st.rejections.as_ref().map_or(0, |r| r.routes.active(now)),
        }
    }

    // ---- single-use mode ----------------------------------------------------------------
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Background work never outlives the cache.
        let st = self
            .shared
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(flight) = st.flight.take() {
            flight.abort.abort();
            flight
                .tx
                .send_replace(Outcome::Ready(Err(Error::Cancelled)));
        }
        // A wheel's task is the keyed cache's, not this cache's to stop.
        let driver = st.driver.take().filter(|_| self.wheel.is_none());
        for (_, task) in [driver, st.take_refill()].into_iter().flatten() {
            task.abort();
        }
        if let Some(probe) = st.probe.take() {
            probe.task.abort();
        }
    }
}

impl Driven for Inner {
    fn wants_tick(&self, seq: u64) -> bool {
        Inner::wants_tick(self, seq)
    }

    fn tick_due(self: Arc<Self>, wheel: &Arc<Wheel>, seq: u64) {
        self.tick_from_wheel(wheel, seq);
    }

    fn driver_gone(&self) {
        Inner::driver_gone(self);
    }
}
