//! [`TokenCacheBuilder`]: every setting of a cache, checked once by `build()`.

use super::*;

impl TokenCache {
    /// Starts building a cache around a source that may not have been built: its
    /// [`ConfigError`] is the one [`build`](TokenCacheBuilder::build) returns. For functions
    /// that build a source and a cache's settings in one call, so that their caller writes
    /// one `?`, after `build()`:
    ///
    /// ```
    /// # use tokenwarden_core::{ConfigError, FetchError, Token, TokenCache};
    /// # fn source(url: &str) -> Result<impl Fn() -> std::future::Ready<Result<Token, FetchError>> + Send + Sync + 'static, ConfigError> {
    /// #     if url.starts_with("https://") { Ok(|| std::future::ready(Ok(Token::new("t")))) }
    /// #     else { Err(ConfigError::Invalid { name: "url", reason: "must be https" }) }
    /// # }
    /// let error = TokenCache::try_builder(source("ftp://issuer.example"))
    ///     .with_name("issuer")
    ///     .build()
    ///     .unwrap_err();
    /// assert!(error.to_string().contains("`url`"));
    /// ```
    pub fn try_builder(source: Result<impl TokenSource, ConfigError>) -> TokenCacheBuilder {
        match source {
            Ok(source) => Self::builder_of(Arc::new(source), None),
            Err(error) => Self::builder_of(Arc::new(NotBuilt), Some(error)),
        }
    }

    pub(super) fn builder_of(
        source: Arc<dyn TokenSource>,
        not_built: Option<ConfigError>,
    ) -> TokenCacheBuilder {
        TokenCacheBuilder {
            not_built,
            source,
            presentation: Presentation::bearer(),
            config: CacheConfig::default(),
            single_use: None,
            clock: Clock::runtime(),
            thread_copies: true,
            key_label: label::KeyLabel::Unkeyed,
            wheel: None,
            shared: None,
        }
    }
}

/// Builds a [`TokenCache`]; every setting has a default, given on its setter.
///
/// How a token's life is divided, with `L` the lifetime after the clock-skew margin, counted
/// from when its fetch was sent:
///
/// ```text
/// sent ──────────── advisory ────────── mandatory ── L ── stated expiry
///      served        served, one         callers   skew
///                    background refresh  wait
/// ```
///
/// The advisory point lies before `L` by the refresh window (by default
/// `L × (0.2 + 0.1 × random)`, see [`with_refresh_ahead`](Self::with_refresh_ahead)). The
/// mandatory point lies `min(mandatory_margin, L / 10)` before `L`. The background refresh
/// starts when the token is *used* inside the advisory window (once). With
/// [`with_grace`](Self::with_grace), a token may be served past its mandatory point while the
/// issuer fails. What these mean for callers: [docs/guarantees.md](https://github.com/tokenwarden/tokenwarden/blob/main/docs/guarantees.md).
///
/// ```
/// use std::time::Duration;
/// use tokenwarden_core::{FetchError, Presentation, Token, TokenCache};
///
/// let cache = TokenCache::builder(|| async {
///     Ok::<_, FetchError>(Token::new("t0ken").with_expires_in(Duration::from_secs(900)))
/// })
/// .with_name("issuer")
/// .with_presentation(Presentation::header(http::HeaderName::from_static("token")))
/// .with_fetch_timeout(Duration::from_secs(5))
/// .with_refresh_before(Duration::from_secs(120))
/// .build()?;
/// assert_eq!(cache.name(), "issuer");
/// # Ok::<_, tokenwarden_core::ConfigError>(())
/// ```
pub struct TokenCacheBuilder {
    /// Why the source could not be built ([`TokenCache::try_builder`]): `build()` says so.
    not_built: Option<ConfigError>,
    source: Arc<dyn TokenSource>,
    presentation: Presentation,
    config: CacheConfig,
    single_use: Option<usize>,
    clock: Clock,
    thread_copies: bool,
    key_label: label::KeyLabel,
    /// A keyed cache's driver for its keys.
    wheel: Option<Arc<wheel::Wheel>>,
    /// Tokens shared with other replicas, under this credential identity.
    shared: Option<(SharedTokens, Box<str>)>,
}

impl TokenCacheBuilder {
    /// For a keyed cache's entry: no per-thread copies of its own (the keyed cache keeps
    /// bounded ones), and a label for its spans.
    pub(crate) fn for_key(
        mut self,
        label: label::KeyLabel,
        own_copies: bool,
        wheel: &Arc<wheel::Wheel>,
    ) -> Self {
        self.wheel = Some(Arc::clone(wheel));
        self.thread_copies = own_copies;
        self.key_label = label;
        self
    }

    /// The source, for a keyed cache rotating an entry's credentials to this builder's.
    pub(crate) fn source(&self) -> Arc<dyn TokenSource> {
        Arc::clone(&self.source)
    }

    /// How tokens are put on requests. Default `Authorization: Bearer <token>`.
    #[must_use]
    pub fn with_presentation(mut self, presentation: Presentation) -> Self {
        self.presentation = presentation;
        self
    }

    /// A name for logs, spans, metrics and `Debug` (for example the gateway). Default `"token"`.
    #[must_use]
    pub fn with_name(mut self, name: impl Into<std::borrow::Cow<'static, str>>) -> Self {
        self.config.name = name.into();
        self
    }

    /// How long one fetch may take; callers never wait longer. Default 10 s.
    #[must_use]
    pub fn with_fetch_timeout(mut self, timeout: Duration) -> Self {
        self.config.fetch_timeout = timeout;
        self
    }

    /// The lifetime of a token whose issuer states none. Default 5 min.
    #[must_use]
    pub fn with_default_lifetime(mut self, lifetime: Duration) -> Self {
        self.config.default_lifetime = lifetime;
        self
    }

    /// A token is treated as expired this long before its stated expiry, for clocks that
    /// disagree. Capped at a quarter of the stated lifetime, so that a short token keeps most
    /// of its life. Default 5 s.
    #[must_use]
    pub fn with_clock_skew(mut self, skew: Duration) -> Self {
        self.config.clock_skew = skew;
        self
    }

    /// Past this margin before expiry, callers wait for a fresh token instead of getting the
    /// current one. Capped at a tenth of the lifetime. Default 5 s.
    #[must_use]
    pub fn with_mandatory_margin(mut self, margin: Duration) -> Self {
        self.config.mandatory_margin = margin;
        self
    }

    /// Start the background refresh `fraction` of the lifetime before expiry, plus up to
    /// `jitter` more at random, so that many processes do not refresh at once. Default 0.2 and
    /// 0.1.
    #[must_use]
    pub fn with_refresh_ahead(mut self, fraction: f64, jitter: f64) -> Self {
        self.config.refresh_ahead = fraction;
        self.config.refresh_jitter = jitter;
        self.config.refresh_window = RefreshWindow::Fraction;
        self
    }

    /// Start the background refresh this long before expiry (capped at half the lifetime),
    /// plus up to a tenth of it at random.
    #[must_use]
    pub fn with_refresh_before(mut self, window: Duration) -> Self {
        self.config.refresh_window = RefreshWindow::Before(window);
        self
    }

    /// A refresh window that grows with the lifetime: `min(lifetime / 2, 5 min + lifetime /
    /// 10)`, plus up to a tenth of it at random — half the life of a 2-minute token, 11 minutes
    /// of an hour-long one.
    #[must_use]
    pub fn with_scaled_refresh(mut self) -> Self {
        self.config.refresh_window = RefreshWindow::Scaled;
        self
    }

    /// "Static stability": while the issuer is failing, keep serving the last token for up to
    /// `grace` past its mandatory point, never past its stated expiry unless
    /// [`with_grace_past_expiry`](Self::with_grace_past_expiry) (each such call is counted in
    /// [`CacheStats::grace_serves`](crate::CacheStats) and logged at WARN once per failed
    /// attempt). Default zero: off.
    #[must_use]
    pub fn with_grace(mut self, grace: Duration) -> Self {
        self.config.grace = grace;
        self
    }

    /// Let the grace period run past the token's stated expiry (the API will probably reject
    /// it; some APIs honour tokens a little longer). Default `false`.
    #[must_use]
    pub fn with_grace_past_expiry(mut self, allow: bool) -> Self {
        self.config.grace_past_expiry = allow;
        self
    }

    /// The first delay after a failed fetch while **no** usable token is held (callers are
    /// waiting); it doubles like the backoff and is capped by its maximum. Shorter than the
    /// backoff's first delay so that a cache with nothing to serve retries sooner than one
    /// refreshing a token that still works. Default 100 ms.
    #[must_use]
    pub fn with_first_fetch_backoff(mut self, base: Duration) -> Self {
        self.config.first_fetch_backoff = base;
        self
    }

    /// The recovery beat: while no usable token is held, how often at most a call to the
    /// cache runs the [`Probe`](crate::Probe) a transient failure carries (jittered between
    /// half and all of it), and the longest random delay before the fetch that follows once the
    /// probe finds the issuer answering; also the beat on which an issuer that failed
    /// [`with_fast_retry`](crate::FetchError::with_fast_retry) is asked again. A probe gets
    /// `max(every, 1 s)` to answer. The rule: [docs/guarantees.md](https://github.com/tokenwarden/tokenwarden/blob/main/docs/guarantees.md) ("Recovery after an
    /// outage"). `Duration::ZERO` turns probing off. Default 1 s.
    #[must_use]
    pub fn with_recovery_probe(mut self, every: Duration) -> Self {
        self.config.recovery_probe = every;
        self
    }

    /// Shares `budget` — at most so many issuer calls per second, most urgent first — with
    /// every other cache given it (see [`RefreshBudget`]).
    #[must_use]
    pub fn with_refresh_budget(mut self, budget: RefreshBudget) -> Self {
        self.config.budget = Some(budget);
        self
    }

    /// Single-use mode: the most issuer requests in flight at once, pool refills included
    /// (callers beyond it queue, for at most the fetch timeout). Default 4.
    #[must_use]
    pub fn with_max_concurrent_fetches(mut self, n: usize) -> Self {
        self.config.max_concurrent_fetches = n;
        self
    }

    /// The clock to read (default [`Clock::runtime`]; [`Clock::manual`] for tests).
    #[must_use]
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// The first and the longest delay between failed fetches; the delay doubles with every
    /// failure in a row, with jitter (the first-fetch backoff is kept at most `base`). Default
    /// 250 ms and 30 s.
    #[must_use]
    pub fn with_backoff(mut self, base: Duration, max: Duration) -> Self {
        self.config.backoff_base = base;
        self.config.backoff_max = max;
        self.config.first_fetch_backoff = self.config.first_fetch_backoff.min(base);
        self
    }

    /// How long a rejection of the credentials is remembered before the issuer is asked again.
    /// Default 5 s.
    #[must_use]
    pub fn with_rejection_hold(mut self, hold: Duration) -> Self {
        self.config.rejection_hold = hold;
        self
    }

    /// The bound on what rejections of a token that works cost the issuer: how long a route
    /// whose replay with a fresh token was rejected too is remembered (the HTTP layers pass the
    /// request's method and path, or what `with_route` makes of them), and the interval of the
    /// rate bound on replacements, per cache (per key of a keyed cache). The two rules:
    /// [docs/guarantees.md](https://github.com/tokenwarden/tokenwarden/blob/main/docs/guarantees.md) ("Rejections are bounded"); see also
    /// [`TokenCache::reject`]. `Duration::ZERO` turns both off. Default 5 s.
    #[must_use]
    pub fn with_rejection_interval(mut self, interval: Duration) -> Self {
        self.config.rejection_interval = interval;
        self
    }

    /// A token rejected (invalidated) within this time of being fetched, and never accepted
    /// ([`Snapshot::mark_accepted`](crate::Snapshot::mark_accepted)), counts as a *fresh*
    /// rejection: after one, further invalidations of fresh tokens are held off with backoff
    /// (the token is kept). Capped at half the token's usable life. The rule:
    /// [docs/guarantees.md](https://github.com/tokenwarden/tokenwarden/blob/main/docs/guarantees.md) ("Invalidate if current"). The price of the cap: with very
    /// short tokens and a slow API that rejects every token, each rejection arriving past that
    /// half refetches without hold-off (at most one fetch per half-life). Default 10 s.
    #[must_use]
    pub fn with_fresh_rejection_window(mut self, window: Duration) -> Self {
        self.config.fresh_rejection_window = window;
        self
    }

    /// Every caller gets a token no other caller gets (e.g. BOIPA session tokens, which
    /// authorise one action).
    #[must_use]
    pub fn single_use(mut self) -> Self {
        self.single_use = Some(self.single_use.unwrap_or(0));
        self
    }

    /// Single-use mode with a pool of `size` tokens fetched ahead, one at a time, to hide the
    /// fetch latency. Pooled tokens past their mandatory margin are discarded.
    #[must_use]
    pub fn with_pool(mut self, size: usize) -> Self {
        self.single_use = Some(size);
        self
    }

    /// Shares this cache's tokens with other replicas through `shared`'s store, under the
    /// credential `identity` (for example `"boipa:merchant-42"`: the same for every replica
    /// using the same credentials, different for other credentials; it is not a secret, and
    /// stores derive key names from it).
    ///
    /// A fetch asks the store first, and takes a newer token from it or fetches for every
    /// replica under a lease (see [`crate::store`]). What that guarantees, and what stays with
    /// the replica that fetched a token (a source's metadata):
    /// [docs/replicas.md](https://github.com/tokenwarden/tokenwarden/blob/main/docs/replicas.md).
    ///
    /// With a [`Presentation::dpop`](crate::Presentation::dpop), the key's thumbprint is
    /// part of the identity: replicas share DPoP-bound tokens only with replicas holding the
    /// same key (each key's replicas fetch their own).
    ///
    /// Not for [`single_use`](Self::single_use) caches ([`build`](Self::build) refuses it).
    #[must_use]
    pub fn with_shared(mut self, shared: &SharedTokens, identity: impl Into<String>) -> Self {
        self.shared = Some((shared.clone(), identity.into().into_boxed_str()));
        self
    }

    /// Builds the cache.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] if a setting cannot work (a zero timeout, a default lifetime shorter than
    /// the skew margin, fractions outside `0.0..1.0`, a backoff whose base exceeds its cap).
    pub fn build(self) -> Result<TokenCache, ConfigError> {
        self.build_sharing(&Mutex::new(None))
    }

    /// Builds, reusing the settings in `last` when they are the same (a keyed cache's keys
    /// mostly are), else leaving this cache's there.
    pub(crate) fn build_sharing(
        mut self,
        last: &Mutex<Option<Arc<CacheConfig>>>,
    ) -> Result<TokenCache, ConfigError> {
        if let Some(error) = self.not_built.take() {
            return Err(error);
        }
        self.config.validate()?;
        if let Some((shared, _)) = &self.shared {
            if self.single_use.is_some() {
                return Err(ConfigError::Invalid {
                    name: "with_shared",
                    reason: "single-use tokens are never used twice, so there is nothing to share; build the cache without a store",
                });
            }
            let settings = shared.settings();
            let long = [
                ("lease_ttl", settings.lease_ttl),
                ("poll_interval", settings.poll_interval),
                ("store_timeout", settings.store_timeout),
                ("pause_after_trouble", settings.pause_after_trouble),
            ];
            if let Some((name, _)) = long.iter().find(|(_, d)| *d > crate::config::YEAR) {
                return Err(ConfigError::Invalid {
                    name,
                    reason: "waits longer than a year are not supported",
                });
            }
            // Each at most a year: none of these overflows.
            if settings.store_timeout * 3 >= settings.lease_ttl {
                return Err(ConfigError::Invalid {
                    name: "lease_ttl",
                    reason: "must be more than three store timeouts: a holder renews its lease every third of it, and each renewal may take a store timeout",
                });
            }
            let takeover = settings.lease_ttl + settings.poll_interval + settings.store_timeout * 4;
            if self.config.fetch_timeout / 2 <= takeover {
                return Err(ConfigError::Invalid {
                    name: "fetch_timeout",
                    reason: "must be more than twice the shared store's lease TTL, poll interval and four store timeouts: a replica may wait out a dead holder's lease, then fetch",
                });
            }
        }
        let config = {
            let mut last = last.lock().unwrap_or_else(PoisonError::into_inner);
            match &*last {
                Some(shared) if **shared == self.config => Arc::clone(shared),
                _ => {
                    let config = Arc::new(std::mem::take(&mut self.config));
                    *last = Some(Arc::clone(&config));
                    config
                }
            }
        };
        Ok(self.assemble(config))
    }

    /// The cache, with `config` (checked) for its settings.
    pub(super) fn assemble(self, config: Arc<CacheConfig>) -> TokenCache {
        let store = self.shared.as_ref().map(|(shared, identity)| {
            // DPoP-bound tokens are shared only by replicas holding the same key.
            let identity = match self.presentation.dpop_key() {
                Some(key) => format!("{identity}#dpop-jkt={}", key.thumbprint()).into(),
                None => std::borrow::Cow::Borrowed(&**identity),
            };
            Link::new(shared, &identity, Arc::clone(&config))
        });
        TokenCache {
            inner: Arc::new_cyclic(|me| {
                Inner::new(
                    inner::Parts {
                        source: self.source,
                        presentation: self.presentation,
                        config,
                        single_use: self.single_use,
                        clock: self.clock,
                        thread_copies: self.thread_copies,
                        key_label: self.key_label,
                        wheel: self.wheel,
                        store,
                    },
                    me.clone(),
                )
            }),
        }
    }
}

impl fmt::Debug for TokenCacheBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenCacheBuilder")
            .field("presentation", &self.presentation)
            .field("config", &self.config)
            .field("single_use", &self.single_use)
            .field("clock", &self.clock)
            .field("not_built", &self.not_built)
            .finish_non_exhaustive()
    }
}

/// The source of a [`TokenCache::try_builder`] whose source could not be built: never asked,
/// as `build()` returns the source's error first.
#[derive(Debug)]
struct NotBuilt;

#[async_trait::async_trait]
impl TokenSource for NotBuilt {
    async fn fetch(&self) -> Result<crate::Token, crate::FetchError> {
        Err(crate::FetchError::configuration(
            "the token source could not be built",
        ))
    }
}
