//! Per-thread copies of the current token: the hot path.

#[allow(clippy::wildcard_imports)]
use super::*;

impl Inner {
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

    /// Gives this thread its own copy of `snapshot`, to serve from the hot path under `state`
    /// until `check_at`.
    pub(super) fn fill_local(&self, state: u64, snapshot: &Snapshot, check_at: Instant) {
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
}
