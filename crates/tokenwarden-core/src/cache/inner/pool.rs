//! Single-use mode: tokens fetched ahead into a pool, each handed out once.

#[allow(clippy::wildcard_imports)]
use super::*;

impl Inner {
    pub(super) async fn get_single(self: &Arc<Self>, pool: usize) -> Result<Pooled, Error> {
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

    /// A pooled token, if one is usable; the backoff gate otherwise.
    pub(super) fn take_pooled(self: &Arc<Self>, pool: usize) -> Result<Option<Pooled>, Error> {
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

    pub(super) fn pop_pool(&self, st: &mut State, now: Instant) -> Option<Pooled> {
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

    /// Keeps the pool of single-use tokens full with one background fetch at a time (sharing
    /// the bound on issuer requests in flight).
    pub(super) fn ensure_refill(self: &Arc<Self>, st: &mut State, pool: usize) {
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
