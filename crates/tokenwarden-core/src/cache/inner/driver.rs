//! The driver: renewal ahead of expiry, on a task of the cache's own or on a keyed cache's
//! wheel.

#[allow(clippy::wildcard_imports)]
use super::*;

impl Inner {
    /// Tells the driver the schedule changed. Called under the state lock, so that a cache's
    /// requests to the wheel are numbered in the order they are made.
    pub(super) fn wake(&self, _locked: &mut State) {
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
    pub(super) fn tick_at(&self, wheel: &Arc<Wheel>, at: Instant) -> Option<AbortHandle> {
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

    /// The token was used inside its advisory window: one background refresh, unless one is
    /// running or the cache is backing off.
    pub(super) fn refresh_ahead(self: &Arc<Self>, st: &mut State, now: Instant) {
        if st.flight.is_none()
            && self.gate(st, now).is_ok()
            && self.start_flight(st, FetchReason::AheadOfExpiry).is_ok()
        {
            Counters::bump(&self.counters.refreshes_ahead);
        }
    }

    /// When a thread serving the current token must ask the slow path again: the advisory
    /// point, else a retry of a failed refresh, else the mandatory point.
    pub(super) fn check_point(&self, st: &State, now: Instant) -> Instant {
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
    pub(super) fn ensure_driver(self: &Arc<Self>, st: &mut State) {
        if st.driver.is_none() && st.current.is_some() {
            self.spawn_driver(st);
            if st.driver.is_some() {
                self.publish(st);
            }
        }
    }

    pub(super) fn spawn_driver(self: &Arc<Self>, st: &mut State) {
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
    pub(super) fn tick(self: &Arc<Self>, now: Instant) -> Option<Instant> {
        let mut st = self.lock();
        self.tick_locked(&mut st, now)
    }

    pub(super) fn tick_locked(self: &Arc<Self>, st: &mut State, now: Instant) -> Option<Instant> {
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
}
