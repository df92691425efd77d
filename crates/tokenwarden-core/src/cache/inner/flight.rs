//! The flight: one fetch at a time for every caller, with its deadline; a flight that
//! misses it (a runtime not driven, or gone) is superseded, and the next caller starts one on
//! its own runtime.

#[allow(clippy::wildcard_imports)]
use super::*;

impl Inner {
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

    pub(super) fn gate(&self, st: &State, now: Instant) -> Result<(), Error> {
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

    /// Gives the fetched token an id and builds its headers.
    pub(super) fn prepare(&self, fetched: Fetched) -> Result<(Snapshot, Schedule), Error> {
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
        let bound = self.presentation.bound(token.secret());
        token.set_id(TokenId::next());
        let schedule = Schedule::new(&self.config, sent_at, lifetime, stated);
        tracing::info!(
            cache = %self.config.name,
            token = %token.id(),
            lifetime_ms = lifetime.as_millis() as u64,
            "token fetched"
        );
        Ok((
            Snapshot::new(token, headers, self.presentation.token_headers(), bound),
            schedule,
        ))
    }

    // ---- shared mode -------------------------------------------------------------------

    /// After a failed fetch: the token in its grace period if there is one, else the error.
    pub(super) fn or_grace(&self, error: Error) -> Result<Snapshot, Error> {
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
    pub(super) fn supersede(&self, id: u64) {
        let mut st = self.lock();
        self.supersede_locked(&mut st, id);
    }

    /// Gives up on the flight if it is past its deadline (its runtime is idle or gone).
    pub(super) fn drop_stalled_flight(&self, st: &mut State, now: Instant) {
        if let Some(id) = st
            .flight
            .as_ref()
            .filter(|f| now >= f.deadline)
            .map(|f| f.id)
        {
            self.supersede_locked(st, id);
        }
    }

    pub(super) fn supersede_locked(&self, st: &mut State, id: u64) {
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

    pub(super) fn step(self: &Arc<Self>, st: &mut State, now: Instant) -> Result<Step, Error> {
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
    pub(super) fn reason(st: &State) -> FetchReason {
        if st.current.is_some() {
            FetchReason::Expired
        } else {
            st.empty_reason.unwrap_or(FetchReason::Empty)
        }
    }

    pub(super) fn start_flight(
        self: &Arc<Self>,
        st: &mut State,
        reason: FetchReason,
    ) -> Result<Step, Error> {
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

    pub(super) fn complete_flight(
        self: &Arc<Self>,
        id: u64,
        mark: u64,
        result: Result<Fetched, Error>,
    ) {
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
    pub(super) fn spawn_task<F>(
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
}
