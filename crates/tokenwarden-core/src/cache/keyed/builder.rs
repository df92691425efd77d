//! [`KeyedCacheBuilder`]: a keyed cache's capacity, idle timeout, copies, factory and labels.

use super::*;

/// Builds a [`KeyedCache`].
pub struct KeyedCacheBuilder<K> {
    name: Cow<'static, str>,
    capacity: usize,
    idle: Duration,
    thread_copies: usize,
    own_copies: bool,
    factory: Option<Factory<K>>,
    label: Option<LabelFn<K>>,
    budget: Option<RefreshBudget>,
}

impl<K> fmt::Debug for KeyedCacheBuilder<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedCacheBuilder")
            .field("name", &self.name)
            .field("capacity", &self.capacity)
            .field("idle", &self.idle)
            .field("thread_copies", &self.thread_copies)
            .field("factory", &self.factory.is_some())
            .finish_non_exhaustive()
    }
}

impl<K> KeyedCacheBuilder<K> {
    /// The defaults: see each setting.
    pub(super) fn new() -> Self {
        Self {
            name: Cow::Borrowed("keyed"),
            capacity: 10_000,
            idle: Duration::from_secs(30 * 60),
            thread_copies: 1024,
            own_copies: false,
            factory: None,
            label: None,
            budget: None,
        }
    }
}

impl<K> KeyedCacheBuilder<K>
where
    K: Clone + Hash + Eq + Send + Sync + 'static,
{
    /// A name for logs and metrics (the `cache` label of every key's metrics). Default
    /// `"keyed"`.
    #[must_use]
    pub fn with_name(mut self, name: impl Into<Cow<'static, str>>) -> Self {
        self.name = name.into();
        self
    }

    /// This many keys are kept without evicting one; a large map (2,048 keys or more, split
    /// in shards) may hold up to 16% more before it evicts (pinned keys aside). Default
    /// 10,000.
    #[must_use]
    pub fn with_capacity(mut self, keys: usize) -> Self {
        self.capacity = keys.max(1);
        self
    }

    /// A key not looked up for this long is evicted (unless pinned) and its token dropped.
    /// Default 30 min.
    #[must_use]
    pub fn with_idle_timeout(mut self, idle: Duration) -> Self {
        self.idle = idle;
        self
    }

    /// At most this many keys' tokens are copied per thread (the copies make a cached get
    /// touch no memory another thread writes). Default 1,024.
    #[must_use]
    pub fn with_thread_copies(mut self, keys: usize) -> Self {
        self.thread_copies = keys;
        self
    }

    /// Gives each key's own cache per-thread copies too, so that a [`TokenCache`] taken from a
    /// handle ([`KeyHandle::cache`]) and used on its own — in a layer built with
    /// `TokenLayer::new`, say — is served without a lock, like any single cache. For a few
    /// keys with long-lived handles (a registry of credentials): it costs about half a
    /// kilobyte more per key, and a copy per key and thread that uses it, unbounded by
    /// [`with_thread_copies`](Self::with_thread_copies). The keyed cache's own gets and the
    /// keyed layers do not need it. Default off.
    #[must_use]
    pub fn with_copies_per_key(mut self) -> Self {
        self.own_copies = true;
        self
    }

    /// Makes the cache of a key met for the first time (called once per key, while other
    /// callers of that key wait; it must not block). Its builder's name is replaced by the
    /// keyed cache's, so that metrics carry no key.
    #[must_use]
    pub fn with_factory(
        mut self,
        factory: impl Fn(&K) -> Result<TokenCacheBuilder, ConfigError> + Send + Sync + 'static,
    ) -> Self {
        self.factory = Some(Arc::new(factory));
        self
    }

    /// How keys are named in logs, spans and [`KeyedSummary`] — it must not reveal a secret.
    /// Default: a fingerprint, `key-` and 8 hex digits of a hash keyed at random per process.
    #[must_use]
    pub fn with_key_label(mut self, label: impl Fn(&K) -> String + Send + Sync + 'static) -> Self {
        self.label = Some(Arc::new(label));
        self
    }

    /// Every key's fetches share `budget`: at most so many issuer calls per second across all
    /// keys, the most urgent first, and an issuer's `Retry-After` holds them all (see
    /// [`RefreshBudget`]).
    #[must_use]
    pub fn with_refresh_budget(mut self, budget: RefreshBudget) -> Self {
        self.budget = Some(budget);
        self
    }

    /// Builds the keyed cache (empty).
    #[must_use]
    pub fn build(self) -> KeyedCache<K> {
        let label = self.label.map_or_else(
            || Labeler::Fingerprint(std::hash::RandomState::new()),
            Labeler::Custom,
        );
        let (shards, room) = map_layout(self.capacity);
        let options = OptionsBuilder::new()
            .shards(shards)
            .estimated_items_capacity(self.capacity)
            .weight_capacity(room)
            .build()
            .unwrap_or_else(|_| unreachable!("capacity and weight are set"));
        KeyedCache {
            inner: Arc::new(Keyed {
                name: self.name,
                map: Cache::with_options(
                    options,
                    UnitWeighter,
                    DefaultHashBuilder::default(),
                    Pins,
                ),
                factory: self.factory,
                budget: self.budget,
                last_config: Mutex::new(None),
                label,
                locals: ThreadLocal::new(),
                thread_copies: self.thread_copies,
                own_copies: self.own_copies,
                wheel: Arc::default(),
                idle: self.idle,
                swept_at: AtomicU64::new(0),
                epoch: std::time::Instant::now(),
            }),
        }
    }
}
