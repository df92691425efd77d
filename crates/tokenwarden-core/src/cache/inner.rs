//! The cache's state machine. The hot path is [`Inner::cached`]; everything else runs under
//! one mutex, rarely (once per token per thread, or per fetch).

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
use crate::store::{Fence, Link};
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

    /// The hot path: one shared atomic read, then thread-private memory only.
    #[inline]
    pub(crate) fn cached(&self) -> Option<Snapshot> {
        let state = self.state.load(Ordering::Acquire);
        if state & USABLE == 0 {
            return None;
        }
        let local = self.locals.as_ref()?.table.get()?.0.try_borrow().ok()?;
        if local.state != state || self.clock.ticks() >= local.check_at {
            return None;
        }
        // Only this thread writes its counter: a plain store, no read-modify-write.
        let hits = &local.hits.0;
        hits.store(hits.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
        local.snapshot.clone()
    }

    pub(crate) fn stats(&self) -> CacheStats {
        let fast = self.locals.as_ref().map_or(0, |locals| {
            (locals
                .hits
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .iter())
            .map(|h| h.0.load(Ordering::Relaxed))
            .sum()
        });
        self.counters.read(fast)
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

    /// Gives this thread its own copy of `snapshot`, to serve from the hot path under `state`
    /// until `check_at`.
    fn fill_local(&self, state: u64, snapshot: &Snapshot, check_at: Instant) {
        if state & USABLE == 0 {
            return;
        }
        // Ticks first: a clock moving between the two reads can only make `check_at` early.
        let ticks = self.clock.ticks();
        let now = self.clock.now();
        let check_at = self.clock.ticks_at(check_at, now, ticks);
        let Some(locals) = &self.locals else {
            return;
        };
        let cell = locals.table.get_or(|| {
            let hits = Arc::new(Padded(AtomicU64::new(0)));
            (locals.hits.lock().unwrap_or_else(PoisonError::into_inner)).push(Arc::clone(&hits));
            Padded(RefCell::new(Local {
                state: 0,
                snapshot: None,
                check_at: 0,
                hits,
            }))
        });
        if let Ok(mut local) = cell.0.try_borrow_mut() {
            if local
                .snapshot
                .as_ref()
                .is_none_or(|s| s.id() != snapshot.id())
            {
                local.snapshot = Some(snapshot.deep_copy());
            }
            local.state = state;
            local.check_at = check_at;
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

    /// Tells the driver the schedule changed. Called under the state lock, so that a cache's
    /// requests to the wheel are numbered in the order they are made.
    fn wake(&self, _locked: &mut State) {
        match &self.wheel {
            None => {
                if let Some(notify) = &self.notify {
                    notify.notify_one();
                }
            }
            Some(wheel) => {
                let _ = self.tick_at(wheel, Instant::now());
            }
        }
    }

    /// Asks `wheel` to tick this cache at `at`, as its latest request (under the state lock).
    /// Returns the wheel task's handle, `None` if no task serves it (no runtime here).
    fn tick_at(&self, wheel: &Arc<Wheel>, at: Instant) -> Option<AbortHandle> {
        let seq = wheel.next_seq();
        self.wake_seq.store(seq, Ordering::Relaxed);
        wheel.schedule(self.me.clone(), at, seq)
    }

    /// The wheel's tick for request `seq`: ignored unless it is this cache's latest; asks for
    /// the next one.
    pub(crate) fn tick_from_wheel(self: &Arc<Self>, wheel: &Arc<Wheel>, seq: u64) {
        let mut st = self.lock();
        if !self.wants_tick(seq) {
            return;
        }
        let now = self.clock.now();
        if let Some(at) = self.tick_locked(&mut st, now) {
            // In this cache's clock; the wheel waits on the runtime's.
            let wait = at.saturating_duration_since(self.clock.now());
            let _ = self.tick_at(wheel, Instant::now() + wait);
        }
    }

    /// Whether `seq` is this cache's latest request to be ticked.
    pub(crate) fn wants_tick(&self, seq: u64) -> bool {
        self.wake_seq.load(Ordering::Relaxed) == seq
    }

    /// The wheel's task ended with its runtime: nobody ticks this cache until it is used
    /// again, so its hot path stops serving.
    pub(crate) fn driver_gone(&self) {
        let mut st = self.lock();
        if st.driver.take().is_some() {
            self.publish(&mut st);
        }
    }

    fn gate(&self, st: &State, now: Instant) -> Result<(), Error> {
        match st.retry_at {
            Some(at) if now < at => Err(Error::BackingOff {
                retry_in: at - now,
                failures: st.failures,
                last: st
                    .last_error
                    .clone()
                    .unwrap_or_else(|| Box::new(Error::Cancelled)),
            }),
            _ => Ok(()),
        }
    }

    fn record_success(&self, st: &mut State) {
        metrics::fetch_ended(&self.config.name, Ok(()));
        st.failures = 0;
        st.failure_mark += 1;
        st.retry_at = None;
        st.last_error = None;
        st.grace_warned = 0;
    }

    /// Counts a failed attempt — once per outage, not per waiter or per overlapping attempt:
    /// `mark` is the failure mark when the attempt started.
    fn record_failure(&self, st: &mut State, error: &Error, now: Instant, mark: u64) {
        Counters::bump(&self.counters.fetch_failures);
        metrics::fetch_ended(&self.config.name, Err(error));
        st.last_error = Some(Box::new(error.clone()));
        if mark != st.failure_mark {
            tracing::debug!(cache = %self.config.name, error = %error, "an overlapping token fetch failed too");
            return;
        }
        st.failure_mark += 1;
        st.failures = st.failures.saturating_add(1);
        // While a token that works is held, refreshes can back off at leisure; with none,
        // callers are waiting, so the first retries come sooner.
        let holding = st
            .current
            .as_ref()
            .is_some_and(|c| now < c.schedule.mandatory_at);
        let wait = if error.is_rejected() || error.is_configuration() {
            self.config.rejection_hold
        } else if holding {
            self.config.backoff(st.failures)
        } else {
            let backoff = self
                .config
                .backoff_from(self.config.first_fetch_backoff, st.failures);
            // An issuer that answered with a failure of its own is asked again on the short,
            // jittered recovery beat while callers wait (one fetch per beat: single flight).
            let beat = self.config.recovery_probe;
            let fast = error
                .fetch_error()
                .is_some_and(|e| e.is_fast_retry() && e.retry_after().is_none());
            if fast && !beat.is_zero() {
                backoff.min(beat.mul_f64(0.5 + fastrand::f64() / 2.0))
            } else {
                backoff
            }
        };
        // The issuer said when to ask again: not sooner, and not later than the backoff cap.
        let hinted = error.fetch_error().and_then(FetchError::retry_after);
        if let (Some(after), Some(budget)) = (hinted, &self.config.budget) {
            // For every cache of the issuer's budget.
            budget.hold(after.min(self.config.backoff_max));
        }
        let wait = hinted.map_or(wait, |after| wait.max(after.min(self.config.backoff_max)));
        st.retry_at = Some(now + wait);
        tracing::warn!(
            cache = %self.config.name,
            error = %error,
            retryable = error.is_retryable(),
            retry_in_ms = wait.as_millis() as u64,
            "token fetch failed"
        );
    }

    /// When the current token's grace period ends (only meaningful with a grace set).
    fn grace_end(&self, current: &Current) -> Instant {
        let end = current.schedule.mandatory_at + self.config.grace;
        if self.config.grace_past_expiry {
            end
        } else {
            end.min(current.schedule.expires_at)
        }
    }

    /// Whether the current token, past its mandatory point, is served in its grace period:
    /// the issuer is failing and the period has not ended.
    fn in_grace(&self, st: &State, now: Instant) -> bool {
        !self.config.grace.is_zero()
            && st.failures > 0
            && st
                .current
                .as_ref()
                .is_some_and(|c| now >= c.schedule.mandatory_at && now < self.grace_end(c))
    }

    /// Serves the current token in its grace period, counted and announced.
    fn serve_in_grace(&self, st: &mut State) -> Option<Snapshot> {
        let snapshot = st.current.as_ref()?.snapshot.clone();
        Counters::bump(&self.counters.grace_serves);
        metrics::grace_serve(&self.config.name);
        if st.grace_warned != st.failures {
            st.grace_warned = st.failures;
            tracing::warn!(
                cache = %self.config.name,
                token = %snapshot.id(),
                failures = st.failures,
                "the token issuer is failing; serving the last token past its refresh deadline (grace)"
            );
        }
        Some(snapshot)
    }

    /// Gives the fetched token an id and builds its headers.
    fn prepare(&self, fetched: Fetched) -> Result<(Snapshot, Schedule), Error> {
        let Fetched {
            mut token,
            sent_at,
            lifetime,
            stated,
        } = fetched;
        if let Some(trimmed) = self
            .presentation
            .check_token(token.secret())
            .map_err(Error::MalformedToken)?
        {
            token.set_secret(trimmed);
        }
        let headers = self.presentation.render(token.secret())?;
        token.set_id(TokenId::next());
        let schedule = Schedule::new(&self.config, sent_at, lifetime, stated);
        tracing::info!(
            cache = %self.config.name,
            token = %token.id(),
            lifetime_ms = lifetime.as_millis() as u64,
            "token fetched"
        );
        Ok((
            Snapshot::new(token, headers, self.presentation.token_headers()),
            schedule,
        ))
    }

    // ---- shared mode -------------------------------------------------------------------

    pub(crate) async fn get_slow(self: &Arc<Self>) -> Result<Snapshot, Error> {
        if let Some(pool) = self.single_use_pool() {
            return self.get_single(pool).await.map(|pooled| pooled.snapshot);
        }
        // However many times a caller starts over (a fetch's runtime died, a revocation), it
        // waits no longer than the deadline of the first fetch it waited for.
        let mut overall: Option<Instant> = None;
        loop {
            let step = {
                let mut st = self.lock();
                let now = self.clock.now();
                self.step(&mut st, now)?
            };
            let (mut rx, deadline, flight) = match step {
                Step::Ready(snapshot, state, check_at) => {
                    Counters::bump(&self.counters.slow_hits);
                    self.fill_local(state, &snapshot, check_at);
                    return Ok(snapshot);
                }
                // Waiting needs a runtime's timer (a fetch could start only on a runtime).
                Step::Wait(..) if Handle::try_current().is_err() => return Err(Error::NoRuntime),
                Step::Wait(rx, deadline, flight) => (rx, deadline, flight),
            };
            Counters::bump(&self.counters.waits);
            // Never wait past the fetch's own deadline: a fetch on a runtime that is not being
            // driven (or has gone) would otherwise hold this caller for ever.
            let limit = *overall.get_or_insert(deadline);
            let own_deadline = deadline <= limit;
            let patience = deadline
                .min(limit)
                .saturating_duration_since(self.clock.now());
            let waited =
                tokio::time::timeout(patience, rx.wait_for(|o| !matches!(o, Outcome::Pending)))
                    .await;
            let outcome = match waited {
                Ok(Ok(outcome)) => outcome.clone(),
                // The flight is gone without a word: start over.
                Ok(Err(_)) => continue,
                Err(_) => {
                    if own_deadline {
                        self.supersede(flight);
                    }
                    return self.or_grace(Error::Timeout(self.config.fetch_timeout));
                }
            };
            match outcome {
                Outcome::Ready(Ok(snapshot)) => return Ok(snapshot),
                Outcome::Ready(Err(error)) => return self.or_grace(error),
                Outcome::Pending | Outcome::Superseded => continue,
            }
        }
    }

    /// After a failed fetch: the token in its grace period if there is one, else the error.
    fn or_grace(&self, error: Error) -> Result<Snapshot, Error> {
        let mut st = self.lock();
        if self.in_grace(&st, self.clock.now())
            && let Some(snapshot) = self.serve_in_grace(&mut st)
        {
            return Ok(snapshot);
        }
        Err(error)
    }

    /// Gives up on flight `id` (it missed its deadline): waiters start over, and the next
    /// caller starts a new fetch on its own runtime.
    fn supersede(&self, id: u64) {
        let mut st = self.lock();
        self.supersede_locked(&mut st, id);
    }

    /// Gives up on the flight if it is past its deadline (its runtime is idle or gone).
    fn drop_stalled_flight(&self, st: &mut State, now: Instant) {
        if let Some(id) = st
            .flight
            .as_ref()
            .filter(|f| now >= f.deadline)
            .map(|f| f.id)
        {
            self.supersede_locked(st, id);
        }
    }

    fn supersede_locked(&self, st: &mut State, id: u64) {
        if let Some(flight) = st.flight.take_if(|f| f.id == id) {
            flight.abort.abort();
            flight.tx.send_replace(Outcome::Superseded);
            Counters::bump(&self.counters.superseded_fetches);
            tracing::warn!(
                cache = %self.config.name,
                timeout_ms = self.config.fetch_timeout.as_millis() as u64,
                "a token fetch did not finish within the fetch timeout (its runtime is not being driven, or has gone); giving up on it"
            );
            // Threads serving the current token look again: the refresh may be restarted.
            if st.current.is_some() {
                self.publish(st);
            }
        }
    }

    fn step(self: &Arc<Self>, st: &mut State, now: Instant) -> Result<Step, Error> {
        self.drop_stalled_flight(st, now);
        if let Some(current) = &st.current {
            let schedule = current.schedule;
            if now < schedule.mandatory_at {
                let snapshot = current.snapshot.clone();
                if now >= schedule.advisory_at {
                    self.refresh_ahead(st, now);
                }
                self.ensure_driver(st);
                let check_at = self.check_point(st, now);
                return Ok(Step::Ready(
                    snapshot,
                    self.state.load(Ordering::Relaxed),
                    check_at,
                ));
            }
            if self.in_grace(st, now) {
                self.refresh_ahead(st, now);
                let snapshot = self.serve_in_grace(st).ok_or(Error::Cancelled)?;
                // Every call in grace comes back here, to be counted.
                return Ok(Step::Ready(snapshot, 0, now));
            }
            let keep_for_grace =
                !self.config.grace.is_zero() && st.failures == 0 && now < self.grace_end(current);
            if !keep_for_grace {
                self.discard(st, FetchReason::Expired);
            }
        }
        if let Some(flight) = &st.flight {
            return Ok(Step::Wait(
                flight.tx.subscribe(),
                flight.deadline,
                flight.id,
            ));
        }
        if let Err(error) = self.gate(st, now) {
            self.probe_recovery(st, now);
            return Err(error);
        }
        let reason = Self::reason(st);
        self.start_flight(st, reason)
    }

    /// Why a fetch that no usable token asks for is made.
    fn reason(st: &State) -> FetchReason {
        if st.current.is_some() {
            FetchReason::Expired
        } else {
            st.empty_reason.unwrap_or(FetchReason::Empty)
        }
    }

    /// No usable token is held, callers are calling and the cache is backing off after a
    /// transient failure that came with a [`Probe`]: run it (at most once per jittered
    /// `recovery_probe`, never before an issuer's `Retry-After`), and end the backoff if the
    /// issuer answers again.
    fn probe_recovery(self: &Arc<Self>, st: &mut State, now: Instant) {
        let every = self.config.recovery_probe;
        // A probe past its time (its task never ran, or its runtime is idle) is given up on.
        if st.probe.as_ref().is_some_and(|p| now >= p.until)
            && let Some(probe) = st.probe.take()
        {
            probe.task.abort();
        }
        if every.is_zero()
            || st.probe.is_some()
            || !st.probe_armed
            || st.next_probe.is_some_and(|at| now < at)
        {
            return;
        }
        let Some(probe) = st
            .last_error
            .as_deref()
            .and_then(Error::fetch_error)
            .filter(|e| e.is_retryable() && e.retry_after().is_none())
            .and_then(FetchError::probe)
            .cloned()
        else {
            return;
        };
        let mark = st.failure_mark;
        // However short the interval, a probe gets a second to be answered.
        let patience = every.max(PROBE_PATIENCE);
        let spawned = self.spawn_task(st, TaskKind::Probe, move |weak, id| async move {
            let up = tokio::time::timeout(patience, probe.run())
                .await
                .unwrap_or(false);
            if let Some(inner) = weak.upgrade() {
                inner.probe_done(id, mark, up).await;
            }
        });
        if let Some((id, task)) = spawned {
            st.probe = Some(Box::new(ProbeTask {
                id,
                until: now + patience + every + WAIT_SLACK,
                task,
            }));
            // Jittered, so that many processes probing one issuer do not do so in step.
            st.next_probe = Some(now + every.mul_f64(0.5 + fastrand::f64() / 2.0));
        }
    }

    /// A recovery probe ended: if the issuer answers and nothing has changed since, the
    /// backoff ends and a fetch starts — after a random delay of up to a `recovery_probe`, so
    /// that many processes seeing the issuer come back do not all ask it at once.
    async fn probe_done(self: &Arc<Self>, id: u64, mark: u64, up: bool) {
        let still_due = |st: &State| {
            up && st.failure_mark == mark
                && st.flight.is_none()
                && st.retry_at.is_some_and(|at| self.clock.now() < at)
        };
        if !still_due(&self.lock()) {
            self.lock().probe.take_if(|p| p.id == id);
            return;
        }
        let spread = self.config.recovery_probe.mul_f64(fastrand::f64());
        tokio::time::sleep(spread).await;
        let mut st = self.lock();
        st.probe.take_if(|p| p.id == id);
        if !still_due(&st) {
            return;
        }
        st.retry_at = None;
        let reason = Self::reason(&st);
        // A failure of this fetch leaves the backoff to run its course before the next probe.
        if self.start_flight(&mut st, reason).is_ok() {
            st.probe_armed = false;
            Counters::bump(&self.counters.recoveries);
            tracing::info!(cache = %self.config.name, "the token issuer answers again; ending the backoff");
        }
    }

    /// The token was used inside its advisory window: one background refresh, unless one is
    /// running or the cache is backing off.
    fn refresh_ahead(self: &Arc<Self>, st: &mut State, now: Instant) {
        if st.flight.is_none()
            && self.gate(st, now).is_ok()
            && self.start_flight(st, FetchReason::AheadOfExpiry).is_ok()
        {
            Counters::bump(&self.counters.refreshes_ahead);
        }
    }

    /// When a thread serving the current token must ask the slow path again: the advisory
    /// point, else a retry of a failed refresh, else the mandatory point.
    fn check_point(&self, st: &State, now: Instant) -> Instant {
        let Some(current) = &st.current else {
            return now;
        };
        let schedule = current.schedule;
        if now < schedule.advisory_at {
            return schedule.advisory_at;
        }
        match st.retry_at {
            Some(retry) if st.flight.is_none() && now < retry => retry.min(schedule.mandatory_at),
            _ => schedule.mandatory_at,
        }
    }

    /// Restarts the driver if its runtime went away.
    fn ensure_driver(self: &Arc<Self>, st: &mut State) {
        if st.driver.is_none() && st.current.is_some() {
            self.spawn_driver(st);
            if st.driver.is_some() {
                self.publish(st);
            }
        }
    }

    fn start_flight(self: &Arc<Self>, st: &mut State, reason: FetchReason) -> Result<Step, Error> {
        let (tx, rx) = watch::channel(Outcome::Pending);
        let source = self.source();
        let config = Arc::clone(&self.config);
        let clock = self.clock.clone();
        let mark = st.failure_mark;
        let key = self.key_label.clone();
        // For a shared refresh budget: when this fetch's token must be replaced (callers
        // waiting: now).
        let now = self.clock.now();
        let urgency = st
            .current
            .as_ref()
            .map_or(now, |c| c.schedule.mandatory_at.max(now));
        let (id, abort) = self
            .spawn_task(st, TaskKind::Flight, move |weak, id| {
                let span = tracing::info_span!("tokenwarden.fetch", cache = %config.name, %key, %reason, flight = id);
                async move {
                    let result = fetch_once(&*source, &config, &clock, urgency).await;
                    if let Some(inner) = weak.upgrade() {
                        inner.complete_flight(id, mark, result);
                    }
                }
                .instrument(span)
            })
            .ok_or(Error::NoRuntime)?;
        Counters::bump(&self.counters.fetches);
        st.probe_armed = true;
        let deadline = self.clock.now()
            + self.config.fetch_timeout
            + self
                .config
                .budget
                .as_ref()
                .map_or(Duration::ZERO, |b| b.max_wait())
            + WAIT_SLACK;
        st.flight = Some(Box::new(Flight {
            id,
            reason,
            tx,
            abort,
            deadline,
        }));
        Ok(Step::Wait(rx, deadline, id))
    }

    fn complete_flight(self: &Arc<Self>, id: u64, mark: u64, result: Result<Fetched, Error>) {
        let mut st = self.lock();
        let Some(flight) = st.flight.take_if(|f| f.id == id) else {
            tracing::debug!(cache = %self.config.name, "dropping a token fetched before a revocation, or given up on");
            return;
        };
        let now = self.clock.now();
        let outcome = match result.and_then(|fetched| self.prepare(fetched)) {
            Ok((snapshot, schedule)) => {
                self.record_success(&mut st);
                if matches!(
                    flight.reason,
                    FetchReason::AheadOfExpiry | FetchReason::Expired
                ) {
                    st.fresh_rejections = 0;
                }
                st.current = Some(Current {
                    snapshot: snapshot.clone(),
                    installed_at: now,
                    held_off: false,
                    advisory_published: false,
                    retry_published: None,
                    schedule,
                });
                st.empty_reason = None;
                if st.driver.is_none() {
                    self.spawn_driver(&mut st);
                }
                self.publish(&mut st);
                Ok(snapshot)
            }
            Err(error) => {
                self.record_failure(&mut st, &error, now, mark);
                if st.current.is_some() {
                    // Threads serving the current token look again when the retry is due.
                    self.publish(&mut st);
                }
                Err(error)
            }
        };
        flight.tx.send_replace(Outcome::Ready(outcome));
        self.wake(&mut st);
    }

    /// Spawns background work on the current runtime, with a guard that clears its slot in the
    /// state however the work ends (finished, aborted, or dropped with its runtime).
    fn spawn_task<F>(
        self: &Arc<Self>,
        st: &mut State,
        kind: TaskKind,
        work: impl FnOnce(Weak<Inner>, u64) -> F,
    ) -> Option<(u64, AbortHandle)>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let runtime = Handle::try_current().ok()?;
        st.next_task += 1;
        let id = st.next_task;
        let weak = Arc::downgrade(self);
        let mut guard = TaskGuard {
            inner: weak.clone(),
            kind,
            id,
            armed: false,
        };
        let work = work(weak, id);
        let task = runtime.spawn(async move {
            guard.armed = true;
            let _guard = guard;
            work.await;
        });
        Some((id, task.abort_handle()))
    }

    fn spawn_driver(self: &Arc<Self>, st: &mut State) {
        if let Some(wheel) = &self.wheel {
            st.driver = self
                .tick_at(wheel, Instant::now())
                .map(|handle| (0, handle));
            return;
        }
        let Some(notify) = self.notify.clone() else {
            return;
        };
        st.driver = self.spawn_task(st, TaskKind::Driver, |weak, _| async move {
            loop {
                let next = match weak.upgrade() {
                    Some(inner) => inner
                        .tick(inner.clock.now())
                        .map(|at| at.saturating_duration_since(inner.clock.now())),
                    None => return,
                };
                match next {
                    Some(wait) => {
                        let _ = tokio::time::timeout(wait, notify.notified()).await;
                    }
                    None => notify.notified().await,
                }
            }
        });
    }

    /// The driver's step, for runtimes that are driven (and for Tokio's paused clock, which the
    /// hot path's coarse clock does not see): tells every thread to look again at the
    /// advisory point, and retires the token at its mandatory point (or the end of its grace).
    /// Returns when to look again.
    fn tick(self: &Arc<Self>, now: Instant) -> Option<Instant> {
        let mut st = self.lock();
        self.tick_locked(&mut st, now)
    }

    fn tick_locked(self: &Arc<Self>, st: &mut State, now: Instant) -> Option<Instant> {
        let current = st.current.as_ref()?;
        let schedule = current.schedule;
        if now >= schedule.mandatory_at {
            let grace_end = self.grace_end(current);
            if !self.config.grace.is_zero() && now < grace_end {
                self.publish(st);
                return Some(grace_end);
            }
            self.discard(st, FetchReason::Expired);
            return None;
        }
        if now < schedule.advisory_at {
            return Some(schedule.advisory_at);
        }
        // In the window: look again when a failed refresh may be retried, and tell the
        // threads then too.
        let due = st.retry_at.filter(|at| st.flight.is_none() && now >= *at);
        if let Some(current) = st.current.as_mut()
            && (!current.advisory_published || (due.is_some() && current.retry_published != due))
        {
            current.advisory_published = true;
            current.retry_published = due;
            self.publish(st);
        }
        Some(self.check_point(st, now))
    }

    /// A request carrying token `id` was rejected, on `route` if the caller knows it. See
    /// [`rejection`](super::rejection) for the rules about tokens that work.
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
    fn drop_rejected(&self, mut st: MutexGuard<'_, State>, result: &'static str) -> Invalidation {
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
    fn held_off(&self, why: HeldOff, id: TokenId) -> Invalidation {
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
    fn remember_route(&self, st: &mut State, route: Route, now: Instant) -> bool {
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

    /// Another replica saw the token with fencing number `fence` rejected: drop it if it is
    /// this cache's (no notice of its own: the rejection was not seen here), unless this cache
    /// kept it on purpose, holding off invalidations while fresh tokens keep being rejected.
    pub(crate) fn shared_rejected(&self, fence: u64) {
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
    pub(crate) fn shared_installed(&self, fence: u64) {
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

    async fn get_single(self: &Arc<Self>, pool: usize) -> Result<Pooled, Error> {
        loop {
            if let Some(pooled) = self.take_pooled(pool)? {
                return Ok(pooled);
            }
            if Handle::try_current().is_err() {
                return Err(Error::NoRuntime);
            }
            // At most `max_concurrent_fetches` issuer requests at once; a queued caller waits
            // no longer than one fetch may take.
            let permit = match tokio::time::timeout(
                self.config.fetch_timeout,
                self.permits().acquire_owned(),
            )
            .await
            {
                Ok(Ok(permit)) => permit,
                Ok(Err(_)) => return Err(Error::Cancelled),
                Err(_) => return Err(Error::Timeout(self.config.fetch_timeout)),
            };
            let (epoch, mark) = {
                let mut st = self.lock();
                let now = self.clock.now();
                // A refill may have landed, or a failure been counted, while this one queued.
                if let Some(pooled) = self.pop_pool(&mut st, now) {
                    self.ensure_refill(&mut st, pool);
                    Counters::bump(&self.counters.slow_hits);
                    return Ok(pooled);
                }
                self.gate(&st, now)?;
                self.ensure_refill(&mut st, pool);
                Counters::bump(&self.counters.fetches);
                Counters::bump(&self.counters.waits);
                (st.epoch, st.failure_mark)
            };
            let reason = FetchReason::SingleUse;
            let span = tracing::info_span!("tokenwarden.fetch", cache = %self.config.name, key = %self.key_label, %reason);
            let source = self.source();
            let result = fetch_once(&*source, &self.config, &self.clock, self.clock.now())
                .instrument(span)
                .await;
            drop(permit);
            let mut st = self.lock();
            if st.epoch != epoch {
                // Revoked while fetching: this token was minted before the revocation.
                continue;
            }
            return match result.and_then(|fetched| self.prepare(fetched)) {
                Ok((snapshot, schedule)) => {
                    self.record_success(&mut st);
                    Ok(Pooled {
                        snapshot,
                        usable_until: schedule.mandatory_at,
                    })
                }
                Err(error) => {
                    let now = self.clock.now();
                    self.record_failure(&mut st, &error, now, mark);
                    Err(error)
                }
            };
        }
    }

    /// A pooled token, if one is usable; the backoff gate otherwise.
    fn take_pooled(self: &Arc<Self>, pool: usize) -> Result<Option<Pooled>, Error> {
        let mut st = self.lock();
        let now = self.clock.now();
        if let Some(pooled) = self.pop_pool(&mut st, now) {
            self.ensure_refill(&mut st, pool);
            Counters::bump(&self.counters.slow_hits);
            return Ok(Some(pooled));
        }
        self.gate(&st, now)?;
        Ok(None)
    }

    fn pop_pool(&self, st: &mut State, now: Instant) -> Option<Pooled> {
        let mut found = None;
        while let Some(pooled) = st.pool().tokens.pop_front() {
            if now < pooled.usable_until {
                found = Some(pooled);
                break;
            }
        }
        metrics::pool_size(&self.config.name, st.pool_len());
        found
    }

    /// Single-use mode: fetches one token into the front of the pool (for the next caller).
    pub(crate) async fn warm_single(self: &Arc<Self>, pool: usize) -> Result<TokenId, Error> {
        if Handle::try_current().is_err() {
            return Err(Error::NoRuntime);
        }
        let sent_under = {
            let st = self.lock();
            (st.epoch, st.pool_generation())
        };
        let pooled = self.get_single(pool).await?;
        let id = pooled.snapshot.id();
        let mut st = self.lock();
        // Not if a rejection or a revocation came while it was fetched: presumed stale.
        if (st.epoch, st.pool_generation()) == sent_under {
            st.pool().tokens.push_front(pooled);
            metrics::pool_size(&self.config.name, st.pool_len());
        }
        Ok(id)
    }

    /// Keeps the pool of single-use tokens full with one background fetch at a time (sharing
    /// the bound on issuer requests in flight).
    fn ensure_refill(self: &Arc<Self>, st: &mut State, pool: usize) {
        if pool == 0 || st.refilling() || st.pool_len() >= pool {
            return;
        }
        let source = self.source();
        let config = Arc::clone(&self.config);
        let clock = self.clock.clone();
        let permits = self.permits();
        let refill = self.spawn_task(st, TaskKind::Refill, move |weak, _| async move {
            loop {
                let Ok(permit) = Arc::clone(&permits).acquire_owned().await else {
                    return;
                };
                let (epoch, mark) = {
                    let Some(inner) = weak.upgrade() else { return };
                    let st = inner.lock();
                    if st.pool_len() >= pool || inner.gate(&st, inner.clock.now()).is_err() {
                        return;
                    }
                    Counters::bump(&inner.counters.fetches);
                    ((st.epoch, st.pool_generation()), st.failure_mark)
                };
                let span =
                    tracing::info_span!("tokenwarden.fetch", cache = %config.name, reason = "pool");
                let result = fetch_once(&*source, &config, &clock, clock.now())
                    .instrument(span)
                    .await;
                drop(permit);
                let Some(inner) = weak.upgrade() else { return };
                let mut st = inner.lock();
                if (st.epoch, st.pool_generation()) != epoch {
                    // Sent before a revocation or a rejection: presumed stale like the rest.
                    continue;
                }
                match result.and_then(|fetched| inner.prepare(fetched)) {
                    Ok((snapshot, schedule)) => {
                        inner.record_success(&mut st);
                        st.pool().tokens.push_back(Pooled {
                            snapshot,
                            usable_until: schedule.mandatory_at,
                        });
                        metrics::pool_size(&inner.config.name, st.pool_len());
                    }
                    Err(error) => {
                        let now = inner.clock.now();
                        inner.record_failure(&mut st, &error, now, mark);
                    }
                }
            }
        });
        st.pool().refill = refill;
    }
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
