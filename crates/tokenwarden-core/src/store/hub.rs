//! One replica's side of a store: the caches sharing through it, their notices, store
//! calls under the timeout, and the pause after trouble.

use super::*;

#[derive(Default)]
pub(super) struct Counters {
    pub(super) adopted: AtomicU64,
    pub(super) leases: AtomicU64,
    pub(super) issuer_fetches: AtomicU64,
    pub(super) direct_fetches: AtomicU64,
    pub(super) installed: AtomicU64,
    pub(super) superseded: AtomicU64,
    pub(super) waits: AtomicU64,
    pub(super) take_overs: AtomicU64,
    pub(super) rejections_sent: AtomicU64,
    pub(super) notices: AtomicU64,
    pub(super) store_errors: AtomicU64,
}

pub(super) fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// One replica's side of a store: the settings, the caches sharing through it (to deliver
/// notices to), and whether the store is in trouble.
pub(crate) struct Hub {
    pub(super) store: Arc<dyn TokenStore>,
    pub(super) settings: SharedSettings,
    pub(super) links: Mutex<HashMap<StoreKey, Vec<Weak<Link>>>>,
    /// The store is skipped until then, after trouble.
    pub(super) down_until: Mutex<Option<Instant>>,
    /// In an episode of trouble (announced once, at WARN, until a call succeeds).
    pub(super) troubled: AtomicBool,
    pub(super) counters: Counters,
}

impl Hub {
    pub(super) fn deliver(&self, notice: &Notice) {
        bump(&self.counters.notices);
        // Upgraded outside the lock: a link dropped here unregisters itself, under it.
        let links: Vec<Arc<Link>> = self
            .lock_links()
            .get(&notice.key)
            .map(|links| links.iter().filter_map(Weak::upgrade).collect())
            .unwrap_or_default();
        for link in links {
            link.notice(notice);
        }
    }

    pub(super) fn wake_all(&self) {
        let links: Vec<Arc<Link>> = self
            .lock_links()
            .values()
            .flatten()
            .filter_map(Weak::upgrade)
            .collect();
        for link in links {
            link.wake();
        }
    }

    pub(super) fn lock_links(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<StoreKey, Vec<Weak<Link>>>> {
        self.links.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn register(&self, key: &StoreKey, link: &Arc<Link>) {
        self.lock_links()
            .entry(key.clone())
            .or_default()
            .push(Arc::downgrade(link));
    }

    pub(super) fn unregister(&self, key: &StoreKey) {
        let mut links = self.lock_links();
        if let Some(list) = links.get_mut(key) {
            list.retain(|link| link.strong_count() > 0);
            if list.is_empty() {
                links.remove(key);
            }
        }
    }

    /// Whether the store is being left alone after trouble.
    pub(super) fn is_down(&self) -> bool {
        let mut down = self
            .down_until
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match *down {
            Some(until) if Instant::now() < until => true,
            Some(_) => {
                *down = None;
                tracing::info!("trying the shared token store again");
                false
            }
            None => false,
        }
    }

    /// One store call under the store timeout, even while the store is paused: for what must
    /// reach it whatever happened (letting go of a lease, renewing one). Its trouble is
    /// counted, and does not pause the store further.
    pub(super) async fn call_anyway<T>(
        &self,
        call: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let result = self.timed(call).await;
        if let Err(error) = &result {
            bump(&self.counters.store_errors);
            tracing::debug!(%error, "a store call sent whatever the store's state failed");
        }
        result
    }

    /// `call` under the store timeout (a timeout is [`StoreError::Timeout`]).
    pub(super) async fn timed<T>(
        &self,
        call: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let timeout = self.settings.store_timeout;
        match tokio::time::timeout(timeout, call).await {
            Ok(result) => result,
            Err(_) => Err(StoreError::Timeout(timeout)),
        }
    }

    /// One store call, under the store timeout, unless the store is paused after trouble;
    /// trouble is logged, counted and remembered.
    pub(super) async fn call<T>(
        &self,
        call: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        // Once one call of a fetch has hit trouble, the others do not wait for the store
        // again: a request waits for one store timeout, not one per call.
        if self.is_down() {
            return Err(StoreError::Unavailable(
                "left alone for a while after trouble".into(),
            ));
        }
        let result = self.timed(call).await;
        match &result {
            Ok(_) => {
                if self.troubled.load(Ordering::Relaxed)
                    && self.troubled.swap(false, Ordering::Relaxed)
                {
                    tracing::info!("the shared token store answers again");
                }
            }
            Err(error) => {
                bump(&self.counters.store_errors);
                let mut down = self
                    .down_until
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                let pause_ms = self.settings.pause_after_trouble.as_millis() as u64;
                // A timeout says only "slow": the store may know why (refused, a wrong password).
                let cause = self.store.trouble().unwrap_or_default();
                if self.troubled.swap(true, Ordering::Relaxed) {
                    tracing::debug!(%error, cause, pause_ms, "the shared token store is still in trouble");
                } else {
                    tracing::warn!(
                        %error,
                        cause,
                        pause_ms,
                        "the shared token store is in trouble; fetching without it until it answers again"
                    );
                }
                *down = Some(Instant::now() + self.settings.pause_after_trouble);
            }
        }
        result
    }
}
