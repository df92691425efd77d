//! Recovery after failures: the backoff, the recovery probe while nothing usable is held,
//! and grace (the expired token served while the issuer is down, if allowed).

#[allow(clippy::wildcard_imports)]
use super::*;

impl Inner {
    pub(super) fn record_success(&self, st: &mut State) {
        metrics::fetch_ended(&self.config.name, Ok(()));
        st.failures = 0;
        st.failure_mark += 1;
        st.retry_at = None;
        st.last_error = None;
        st.grace_warned = 0;
    }

    /// Counts a failed attempt — once per outage, not per waiter or per overlapping attempt:
    /// `mark` is the failure mark when the attempt started.
    pub(super) fn record_failure(&self, st: &mut State, error: &Error, now: Instant, mark: u64) {
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
    pub(super) fn grace_end(&self, current: &Current) -> Instant {
        let end = current.schedule.mandatory_at + self.config.grace;
        if self.config.grace_past_expiry {
            end
        } else {
            end.min(current.schedule.expires_at)
        }
    }

    /// Whether the current token, past its mandatory point, is served in its grace period:
    /// the issuer is failing and the period has not ended.
    pub(super) fn in_grace(&self, st: &State, now: Instant) -> bool {
        !self.config.grace.is_zero()
            && st.failures > 0
            && st
                .current
                .as_ref()
                .is_some_and(|c| now >= c.schedule.mandatory_at && now < self.grace_end(c))
    }

    /// Serves the current token in its grace period, counted and announced.
    pub(super) fn serve_in_grace(&self, st: &mut State) -> Option<Snapshot> {
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

    /// No usable token is held, callers are calling and the cache is backing off after a
    /// transient failure that came with a [`Probe`](crate::Probe): run it (at most once per jittered
    /// `recovery_probe`, never before an issuer's `Retry-After`), and end the backoff if the
    /// issuer answers again.
    pub(super) fn probe_recovery(self: &Arc<Self>, st: &mut State, now: Instant) {
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
    pub(super) async fn probe_done(self: &Arc<Self>, id: u64, mark: u64, up: bool) {
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
}
