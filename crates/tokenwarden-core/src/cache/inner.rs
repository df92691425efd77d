//! The cache's state machine. The hot path is [`Inner::cached`]; everything else runs under
//! one mutex, rarely (once per token per thread, or per fetch).

use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};

use thread_local::ThreadLocal;
use tokio::runtime::Handle;
use tokio::sync::{Notify, watch};
use tokio::task::AbortHandle;
use tokio::time::Instant;
use tracing::Instrument;

use super::fetch::{FetchReason, Fetched, Schedule, fetch_once};
use crate::stats::Counters;
use crate::{CacheConfig, CacheStats, Error, Presentation, Snapshot, TokenId, TokenSource};

/// Low bit of [`Inner::state`]: the current token may be served without looking at the clock.
const USABLE: u64 = 1;

pub(crate) struct Inner {
    /// `generation << 1 | USABLE`. Changes whenever the current token or its usability does;
    /// the hot path reads only this shared word.
    state: AtomicU64,
    /// Per-thread copies of the current snapshot, tagged with the state they were made under.
    locals: ThreadLocal<Padded<RefCell<Local>>>,
    /// Every thread's hit counter (each written only by its own thread), for [`Inner::stats`].
    hit_counters: Mutex<Vec<Arc<Padded<AtomicU64>>>>,
    shared: Mutex<State>,
    source: Arc<dyn TokenSource>,
    presentation: Presentation,
    config: Arc<CacheConfig>,
    /// `Some(pool size)` in single-use mode.
    single_use: Option<usize>,
    counters: Counters,
    /// Wakes the driver task when the schedule changes.
    notify: Arc<Notify>,
}

/// Keeps each thread's slot on cache lines of its own: `ThreadLocal` stores the slots of
/// consecutive threads side by side, and a write to one would otherwise slow the others.
#[derive(Default)]
#[repr(align(128))]
struct Padded<T>(T);

struct Local {
    state: u64,
    snapshot: Option<Snapshot>,
    hits: Arc<Padded<AtomicU64>>,
}

#[derive(Default)]
struct State {
    generation: u64,
    next_id: u64,
    next_task: u64,
    current: Option<Current>,
    /// Why there is no current token (for logs).
    empty_reason: Option<FetchReason>,
    flight: Option<Flight>,
    /// Bumped by revocation: a fetch sent under an older epoch is never installed.
    epoch: u64,
    /// Bumped when a single-use token is rejected: a pool refill sent before is discarded.
    pool_generation: u64,
    /// Failures in a row (fetches, or fresh tokens rejected).
    failures: u32,
    retry_at: Option<Instant>,
    last_error: Option<Error>,
    fresh_rejections: u32,
    /// While fresh tokens keep being rejected, invalidations before this are held off.
    quiet_until: Option<Instant>,
    driver: Option<(u64, AbortHandle)>,
    pool: VecDeque<Pooled>,
    refill: Option<(u64, AbortHandle)>,
}

struct Current {
    snapshot: Snapshot,
    installed_at: Instant,
    /// Hits counted when it was installed: unchanged means nobody used it.
    hits_at_install: u64,
    /// An invalidation of it was held off (fresh tokens kept being rejected).
    held_off: bool,
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
}

#[derive(Clone)]
enum Outcome {
    Pending,
    Ready(Result<Snapshot, Error>),
    /// The fetch was revoked; waiters start over.
    Superseded,
}

enum Step {
    Ready(Snapshot, u64),
    Wait(watch::Receiver<Outcome>),
}

/// What a background task clears from [`State`] when it ends, however it ends.
#[derive(Clone, Copy)]
enum TaskKind {
    Flight,
    Driver,
    Refill,
}

struct TaskGuard {
    inner: Weak<Inner>,
    kind: TaskKind,
    id: u64,
}

impl Drop for TaskGuard {
    fn drop(&mut self) {
        let Some(inner) = self.inner.upgrade() else {
            return;
        };
        let mut st = inner.lock();
        match self.kind {
            // Only reached when the flight task was dropped before it completed (its runtime
            // shut down): waiters must not hang.
            TaskKind::Flight => {
                if let Some(flight) = st.flight.take_if(|f| f.id == self.id) {
                    flight
                        .tx
                        .send_replace(Outcome::Ready(Err(Error::Cancelled)));
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
                if st.refill.as_ref().is_some_and(|(id, _)| *id == self.id) {
                    st.refill = None;
                }
            }
        }
    }
}

impl Inner {
    pub(crate) fn new(
        source: Arc<dyn TokenSource>,
        presentation: Presentation,
        config: CacheConfig,
        single_use: Option<usize>,
    ) -> Self {
        Self {
            state: AtomicU64::new(0),
            locals: ThreadLocal::new(),
            hit_counters: Mutex::default(),
            shared: Mutex::new(State::default()),
            source,
            presentation,
            config: Arc::new(config),
            single_use,
            counters: Counters::default(),
            notify: Arc::new(Notify::new()),
        }
    }

    pub(crate) fn config(&self) -> &CacheConfig {
        &self.config
    }

    pub(crate) fn presentation(&self) -> &Presentation {
        &self.presentation
    }

    pub(crate) fn is_single_use(&self) -> bool {
        self.single_use.is_some()
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
        let local = self.locals.get()?.0.try_borrow().ok()?;
        if local.state != state {
            return None;
        }
        // Only this thread writes its counter: a plain store, no read-modify-write.
        let hits = &local.hits.0;
        hits.store(hits.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
        local.snapshot.clone()
    }

    pub(crate) fn stats(&self) -> CacheStats {
        let fast = (self
            .hit_counters
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter())
        .map(|h| h.0.load(Ordering::Relaxed))
        .sum();
        self.counters.read(fast)
    }

    /// Publishes a new state word. Called under the lock after every change.
    fn publish(&self, st: &mut State) {
        st.generation += 1;
        let usable = st.current.is_some() && st.driver.is_some();
        self.state
            .store(st.generation << 1 | u64::from(usable), Ordering::Release);
    }

    fn fill_local(&self, state: u64, snapshot: &Snapshot) {
        if state & USABLE == 0 {
            return;
        }
        let cell = self.locals.get_or(|| {
            let hits = Arc::new(Padded(AtomicU64::new(0)));
            (self
                .hit_counters
                .lock()
                .unwrap_or_else(PoisonError::into_inner))
            .push(Arc::clone(&hits));
            Padded(RefCell::new(Local {
                state: 0,
                snapshot: None,
                hits,
            }))
        });
        if let Ok(mut local) = cell.0.try_borrow_mut()
            && local.state != state
        {
            local.state = state;
            local.snapshot = Some(snapshot.deep_copy());
        }
    }

    fn discard(&self, st: &mut State, reason: FetchReason) {
        if let Some(current) = st.current.take() {
            tracing::debug!(cache = %self.config.name, token = %current.snapshot.id(), %reason, "token discarded");
        }
        st.empty_reason = Some(reason);
        self.publish(st);
        self.notify.notify_one();
    }

    fn gate(&self, st: &State, now: Instant) -> Result<(), Error> {
        match st.retry_at {
            Some(at) if now < at => Err(Error::BackingOff {
                retry_in: at - now,
                failures: st.failures,
                last: Box::new(st.last_error.clone().unwrap_or(Error::Cancelled)),
            }),
            _ => Ok(()),
        }
    }

    fn record_success(&self, st: &mut State) {
        st.failures = 0;
        st.retry_at = None;
        st.last_error = None;
    }

    fn record_failure(&self, st: &mut State, error: &Error, now: Instant) {
        Counters::bump(&self.counters.fetch_failures);
        st.failures = st.failures.saturating_add(1);
        let wait = if error.is_rejected() {
            self.config.rejection_hold
        } else {
            self.config.backoff(st.failures)
        };
        st.retry_at = Some(now + wait);
        st.last_error = Some(error.clone());
        tracing::warn!(
            cache = %self.config.name,
            error = %error,
            retryable = error.is_retryable(),
            retry_in_ms = wait.as_millis() as u64,
            "token fetch failed"
        );
    }

    /// Gives the fetched token an id and builds its headers.
    fn prepare(&self, st: &mut State, fetched: Fetched) -> Result<(Snapshot, Schedule), Error> {
        let Fetched {
            mut token,
            sent_at,
            lifetime,
        } = fetched;
        if let Some(trimmed) = self
            .presentation
            .check_token(token.secret())
            .map_err(Error::MalformedToken)?
        {
            token.set_secret(trimmed);
        }
        let headers = self.presentation.render(token.secret())?;
        st.next_id += 1;
        token.set_id(TokenId(st.next_id));
        let schedule = Schedule::new(&self.config, sent_at, lifetime);
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
        if let Some(pool) = self.single_use {
            return self.get_single(pool).await;
        }
        loop {
            let step = {
                let mut st = self.lock();
                self.step(&mut st, Instant::now())?
            };
            let mut rx = match step {
                Step::Ready(snapshot, state) => {
                    Counters::bump(&self.counters.slow_hits);
                    self.fill_local(state, &snapshot);
                    return Ok(snapshot);
                }
                Step::Wait(rx) => rx,
            };
            Counters::bump(&self.counters.waits);
            let outcome = match rx.wait_for(|o| !matches!(o, Outcome::Pending)).await {
                Ok(outcome) => outcome.clone(),
                Err(_) => return Err(Error::Cancelled),
            };
            match outcome {
                Outcome::Ready(result) => return result,
                Outcome::Pending | Outcome::Superseded => continue,
            }
        }
    }

    fn step(self: &Arc<Self>, st: &mut State, now: Instant) -> Result<Step, Error> {
        if let Some(current) = &st.current {
            if now < current.schedule.mandatory_at {
                let snapshot = current.snapshot.clone();
                if st.driver.is_none() {
                    // The driver's runtime went away: start one on this one.
                    self.spawn_driver(st);
                    if st.driver.is_some() {
                        self.publish(st);
                    }
                }
                return Ok(Step::Ready(snapshot, self.state.load(Ordering::Relaxed)));
            }
            self.discard(st, FetchReason::Expired);
        }
        if let Some(flight) = &st.flight {
            return Ok(Step::Wait(flight.tx.subscribe()));
        }
        self.gate(st, now)?;
        let reason = st.empty_reason.unwrap_or(FetchReason::Empty);
        self.start_flight(st, reason).map(Step::Wait)
    }

    fn start_flight(
        self: &Arc<Self>,
        st: &mut State,
        reason: FetchReason,
    ) -> Result<watch::Receiver<Outcome>, Error> {
        let (tx, rx) = watch::channel(Outcome::Pending);
        let source = Arc::clone(&self.source);
        let config = Arc::clone(&self.config);
        let (id, abort) = self
            .spawn_task(st, TaskKind::Flight, move |weak, id| {
                let span = tracing::info_span!("tokenwarden.fetch", cache = %config.name, %reason, flight = id);
                async move {
                    let result = fetch_once(&*source, &config).await;
                    if let Some(inner) = weak.upgrade() {
                        inner.complete_flight(id, result);
                    }
                }
                .instrument(span)
            })
            .ok_or(Error::NoRuntime)?;
        Counters::bump(&self.counters.fetches);
        st.flight = Some(Flight {
            id,
            reason,
            tx,
            abort,
        });
        Ok(rx)
    }

    fn complete_flight(self: &Arc<Self>, id: u64, result: Result<Fetched, Error>) {
        let mut st = self.lock();
        let Some(flight) = st.flight.take_if(|f| f.id == id) else {
            tracing::debug!(cache = %self.config.name, "dropping a token fetched before a revocation");
            return;
        };
        let now = Instant::now();
        let outcome = match result.and_then(|fetched| self.prepare(&mut st, fetched)) {
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
                    hits_at_install: self.stats().hits,
                    held_off: false,
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
                self.record_failure(&mut st, &error, now);
                Err(error)
            }
        };
        flight.tx.send_replace(Outcome::Ready(outcome));
        self.notify.notify_one();
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
        let guard = TaskGuard {
            inner: weak.clone(),
            kind,
            id,
        };
        let work = work(weak, id);
        let task = runtime.spawn(async move {
            let _guard = guard;
            work.await;
        });
        Some((id, task.abort_handle()))
    }

    fn spawn_driver(self: &Arc<Self>, st: &mut State) {
        let notify = Arc::clone(&self.notify);
        st.driver = self.spawn_task(st, TaskKind::Driver, |weak, _| async move {
            loop {
                let next = match weak.upgrade() {
                    Some(inner) => inner.tick(Instant::now()),
                    None => return,
                };
                match next {
                    Some(at) => {
                        let _ = tokio::time::timeout_at(at, notify.notified()).await;
                    }
                    None => notify.notified().await,
                }
            }
        });
    }

    /// The driver's step: starts the background refresh in the advisory window and retires the
    /// token at its mandatory margin. Returns when to look again.
    fn tick(self: &Arc<Self>, now: Instant) -> Option<Instant> {
        let mut st = self.lock();
        let current = st.current.as_ref()?;
        let (schedule, hits_at_install) = (current.schedule, current.hits_at_install);
        if now >= schedule.mandatory_at {
            self.discard(&mut st, FetchReason::Expired);
            return None;
        }
        if now < schedule.advisory_at {
            return Some(schedule.advisory_at);
        }
        if st.flight.is_none() {
            if self.stats().hits == hits_at_install {
                // Unused since it was fetched: let it lapse; the next caller fetches.
                return Some(schedule.mandatory_at);
            }
            if let Some(at) = st.retry_at.filter(|at| now < *at) {
                return Some(at.min(schedule.mandatory_at));
            }
            Counters::bump(&self.counters.refreshes_ahead);
            // We run on a runtime, so this cannot fail for want of one.
            let _ = self.start_flight(&mut st, FetchReason::AheadOfExpiry);
        }
        Some(schedule.mandatory_at)
    }

    pub(crate) fn invalidate(&self, id: TokenId) -> bool {
        let mut st = self.lock();
        if self.single_use.is_some() {
            // The rejected token was never handed to anyone else; but tokens pooled before the
            // rejection was seen — pooled or still being fetched — are presumed as stale as it was.
            let discarded = !st.pool.is_empty() || st.refill.is_some();
            st.pool.clear();
            st.pool_generation += 1;
            if discarded {
                Counters::bump(&self.counters.invalidations);
                tracing::debug!(cache = %self.config.name, token = %id, "pooled tokens discarded after a rejection");
            }
            return discarded;
        }
        let Some(current) = st.current.as_ref().filter(|c| c.snapshot.id() == id) else {
            Counters::bump(&self.counters.coalesced_invalidations);
            return false;
        };
        let now = Instant::now();
        // A token kept through a held-off invalidation continues the streak however old it is.
        let fresh =
            current.held_off || now - current.installed_at < self.config.fresh_rejection_window;
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
            Counters::bump(&self.counters.suppressed_invalidations);
            tracing::debug!(cache = %self.config.name, token = %id, "invalidation held off");
            return false;
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
        Counters::bump(&self.counters.invalidations);
        self.discard(&mut st, FetchReason::Invalidated);
        true
    }

    pub(crate) fn revoke(&self) {
        let mut st = self.lock();
        st.epoch += 1;
        Counters::bump(&self.counters.revocations);
        if let Some(flight) = st.flight.take() {
            flight.abort.abort();
            flight.tx.send_replace(Outcome::Superseded);
        }
        if let Some((_, refill)) = st.refill.take() {
            refill.abort();
        }
        st.pool.clear();
        self.discard(&mut st, FetchReason::Revoked);
        tracing::info!(cache = %self.config.name, "tokens revoked");
    }

    /// The current token if it is within its usable life, without fetching.
    pub(crate) fn current(&self) -> Option<Snapshot> {
        if let Some(snapshot) = self.cached() {
            return Some(snapshot);
        }
        let st = self.lock();
        let current = st
            .current
            .as_ref()
            .filter(|c| Instant::now() < c.schedule.mandatory_at)?;
        let snapshot = current.snapshot.clone();
        let state = self.state.load(Ordering::Relaxed);
        drop(st);
        self.fill_local(state, &snapshot);
        Some(snapshot)
    }

    // ---- single-use mode ----------------------------------------------------------------

    async fn get_single(self: &Arc<Self>, pool: usize) -> Result<Snapshot, Error> {
        Handle::try_current().map_err(|_| Error::NoRuntime)?;
        loop {
            let epoch = {
                let mut st = self.lock();
                let now = Instant::now();
                while let Some(pooled) = st.pool.pop_front() {
                    if now < pooled.usable_until {
                        self.ensure_refill(&mut st, pool);
                        Counters::bump(&self.counters.slow_hits);
                        return Ok(pooled.snapshot);
                    }
                }
                self.gate(&st, now)?;
                self.ensure_refill(&mut st, pool);
                Counters::bump(&self.counters.fetches);
                Counters::bump(&self.counters.waits);
                st.epoch
            };
            let reason = FetchReason::SingleUse;
            let span = tracing::info_span!("tokenwarden.fetch", cache = %self.config.name, %reason);
            let result = fetch_once(&*self.source, &self.config)
                .instrument(span)
                .await;
            let mut st = self.lock();
            if st.epoch != epoch {
                // Revoked while fetching: this token was minted before the revocation.
                continue;
            }
            return match result.and_then(|fetched| self.prepare(&mut st, fetched)) {
                Ok((snapshot, _)) => {
                    self.record_success(&mut st);
                    Ok(snapshot)
                }
                Err(error) => {
                    self.record_failure(&mut st, &error, Instant::now());
                    Err(error)
                }
            };
        }
    }

    /// Keeps the pool of single-use tokens full with one background fetch at a time.
    fn ensure_refill(self: &Arc<Self>, st: &mut State, pool: usize) {
        if pool == 0 || st.refill.is_some() || st.pool.len() >= pool {
            return;
        }
        let source = Arc::clone(&self.source);
        let config = Arc::clone(&self.config);
        st.refill = self.spawn_task(st, TaskKind::Refill, move |weak, _| async move {
            loop {
                let epoch = {
                    let Some(inner) = weak.upgrade() else { return };
                    let st = inner.lock();
                    if st.pool.len() >= pool || inner.gate(&st, Instant::now()).is_err() {
                        return;
                    }
                    Counters::bump(&inner.counters.fetches);
                    (st.epoch, st.pool_generation)
                };
                let span =
                    tracing::info_span!("tokenwarden.fetch", cache = %config.name, reason = "pool");
                let result = fetch_once(&*source, &config).instrument(span).await;
                let Some(inner) = weak.upgrade() else { return };
                let mut st = inner.lock();
                if (st.epoch, st.pool_generation) != epoch {
                    // Sent before a revocation or a rejection: presumed stale like the rest.
                    continue;
                }
                match result.and_then(|fetched| inner.prepare(&mut st, fetched)) {
                    Ok((snapshot, schedule)) => {
                        inner.record_success(&mut st);
                        st.pool.push_back(Pooled {
                            snapshot,
                            usable_until: schedule.mandatory_at,
                        });
                    }
                    Err(error) => inner.record_failure(&mut st, &error, Instant::now()),
                }
            }
        });
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
        for (_, task) in [st.driver.take(), st.refill.take()].into_iter().flatten() {
            task.abort();
        }
    }
}
