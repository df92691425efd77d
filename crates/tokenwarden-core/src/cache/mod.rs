//! The token cache.

mod builder;
mod clock;
pub(crate) mod fetch;
pub mod future;
mod inner;
mod keyed;
mod label;
mod padded;
mod rejection;
mod status;
mod wheel;

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use crate::budget::RefreshBudget;
pub use builder::TokenCacheBuilder;
pub use clock::{Clock, ManualClock};
pub(crate) use inner::Inner;
pub use keyed::{KeyHandle, KeyedCache, KeyedCacheBuilder, KeyedSummary};
pub use rejection::{HeldOff, Invalidation, Route};
pub use status::{CacheState, CacheStatus};

#[cfg(doc)]
use crate::Error;
use crate::store::Link;
use crate::{
    CacheConfig, CacheStats, ConfigError, Presentation, RefreshWindow, SharedTokens, Snapshot,
    TokenId, TokenSource,
};

/// One token cache, shared by every task and every clone.
///
/// What it guarantees is written out in [docs/guarantees.md]; in short:
///
/// - **Hot path.** While a valid token is cached, [`get`](Self::get) takes no lock, allocates
///   nothing and writes nothing shared, and never serves a token past its mandatory point
///   (see [`Clock`]).
/// - **Single flight.** One fetch for every caller that finds the cache empty or expired.
/// - **Refresh ahead.** A use inside an advisory window before expiry starts one background
///   fetch; callers wait only past the mandatory point. See [`TokenCacheBuilder`] for the
///   arithmetic and the window's size.
/// - **Invalidate if current.** [`invalidate`](Self::invalidate) drops a token only if it is
///   still the current one; [`reject`](Self::reject) bounds what rejections cost the issuer.
/// - **Failures** are timed out and backed off, and a valid token keeps being served while a
///   refresh fails. Errors are typed ([`Error`]) and never contain the secret.
/// - **Single-use mode** ([`TokenCacheBuilder::single_use`]) hands every caller its own token,
///   optionally from a pre-fetched pool.
/// - **Inspectable.** [`status`](Self::status) says what it is doing (for a health endpoint);
///   [`warm`](Self::warm) fetches before the first request and reports the outcome.
///
/// # Runtime model
///
/// - A fetch runs as a task on the runtime of the caller that started it; how long callers on
///   other runtimes wait for it, and what happens when its runtime stops:
///   [docs/guarantees.md] ("Runtimes").
/// - A small driver task (on the runtime of the last fetch) only nudges: it makes threads look
///   again when the advisory window opens and retires the token at its mandatory point, which
///   is what `tokio::time::pause`d tests see. The caches of a [`KeyedCache`]'s keys share one
///   driver task (on the runtime where it was first needed, and again wherever a key is used
///   after that runtime ended), which stops with the keyed cache.
/// - Single-use pool refills run on the runtime of the caller that triggered them.
/// - Outside any runtime, `get` fails with [`Error::NoRuntime`] (it cannot fetch or wait).
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use tokenwarden_core::{FetchError, Presentation, Token, TokenCache};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), tokenwarden_core::Error> {
/// let cache = TokenCache::builder(|| async {
///     // ask the issuer here
///     Ok::<_, FetchError>(Token::new("abc").with_expires_in(Duration::from_secs(900)))
/// })
/// .with_presentation(Presentation::bearer())
/// .build()
/// .expect("valid settings");
///
/// let snapshot = cache.get().await?;
/// let mut request = http::Request::new(());
/// snapshot.apply_to(request.headers_mut());
/// assert_eq!(request.headers()["authorization"], "Bearer abc");
///
/// // a 401 came back for this token: drop it (if nobody did yet) and get a fresh one
/// cache.invalidate(snapshot.id());
/// assert_ne!(cache.get().await?.id(), snapshot.id());
/// assert_eq!(cache.stats().fetches, 2);
/// # Ok(())
/// # }
/// ```
///
/// # Performance
///
/// [`get`](Self::get) reads one shared atomic word, the thread's own copy of the token's
/// prebuilt headers and the coarse clock. The slow path (a new token, once per thread; a
/// fetch; an invalidation) takes a mutex. Measured against `RwLock`, `Mutex`, tokio `RwLock`,
/// `ArcSwap` and an owned-`Arc` floor with `cargo bench --bench contention`:
/// [docs/benchmarks.md].
///
/// # Limitations
///
/// - It needs a Tokio runtime with time enabled.
/// - The hot path's clock is coarse, and its deadline is brought forward by a tick: a token
///   may stop being served a few milliseconds before its mandatory point, never after it.
///   Under `tokio::time::pause` that clock does not move (see [`Clock`] for tests).
/// - A token said to live longer than a year is renewed after a year.
/// - Each thread that calls `get` keeps a private copy of the current token's headers,
///   rebuilt once per token (its size is measured in [docs/benchmarks.md]).
///
/// [docs/guarantees.md]: https://github.com/tokenwarden/tokenwarden/blob/main/docs/guarantees.md
/// [docs/benchmarks.md]: https://github.com/tokenwarden/tokenwarden/blob/main/docs/benchmarks.md
#[derive(Clone)]
pub struct TokenCache {
    inner: Arc<Inner>,
}

impl TokenCache {
    /// A shared cache with the default settings, presenting the token as
    /// `Authorization: Bearer <token>`.
    pub fn new(source: impl TokenSource) -> Self {
        // The default settings are valid: nothing to check.
        Self::builder(source).assemble(Arc::new(CacheConfig::default()))
    }

    /// Starts building a cache around `source`.
    pub fn builder(source: impl TokenSource) -> TokenCacheBuilder {
        Self::builder_of(Arc::new(source), None)
    }

    /// What the cache is doing now: fresh, refreshing, backing off until when, credentials
    /// rejected, in grace; the token's expiry, the next refresh and the last error (typed and
    /// secret-free). No side effect: it does not count as a use.
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use tokenwarden_core::{CacheState, FetchError, Token, TokenCache};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let cache = TokenCache::new(|| async {
    ///     Ok::<_, FetchError>(Token::new("t").with_expires_in(Duration::from_secs(900)))
    /// });
    /// assert_eq!(cache.status().state, CacheState::Empty);
    /// cache.warm().await.expect("the issuer answers");
    /// let status = cache.status();
    /// assert_eq!(status.state, CacheState::Fresh);
    /// assert!(status.expires_in.unwrap() > Duration::from_secs(890));
    /// # }
    /// ```
    #[must_use]
    pub fn status(&self) -> CacheStatus {
        self.inner.status()
    }

    /// Fetches a token now, before the first request needs one, and reports the outcome (the
    /// token's id, or why there is none). In single-use mode the token fetched is kept for the
    /// next caller.
    ///
    /// # Errors
    ///
    /// The fetch's [`Error`].
    pub async fn warm(&self) -> Result<TokenId, crate::Error> {
        match self.inner.single_use_pool() {
            Some(pool) => self.inner.warm_single(pool).await,
            None => self.get().await.map(|s| s.id()),
        }
    }

    /// A token to send: the cached one if it is valid, else the result of a fetch shared with
    /// every concurrent caller.
    ///
    /// # Errors
    ///
    /// The fetch's [`Error`], shared by every caller that waited for it;
    /// [`Error::BackingOff`] while the cache waits out a failing issuer.
    #[inline]
    pub fn get(&self) -> future::Get<'_> {
        future::Get::new(&self.inner)
    }

    /// The cached token if it can be served now, without waiting. Like [`get`](Self::get), a
    /// use inside the refresh-ahead window starts the background refresh (once); the caller is
    /// served the current token at once either way.
    #[must_use]
    pub fn cached(&self) -> Option<Snapshot> {
        self.inner.current()
    }

    /// Discards the token `id` if it is still the current one, so the next [`get`](Self::get)
    /// fetches a fresh one; returns whether it was discarded. Call it with the id a rejected
    /// request carried: a late rejection of a token that was already replaced changes nothing.
    /// The same as [`reject`](Self::reject) without a route.
    ///
    /// In single-use mode, where no token is used twice, it discards the pooled tokens instead,
    /// and any being fetched for the pool (sent before the rejection was seen, they are presumed
    /// as stale), and returns whether there were any.
    pub fn invalidate(&self, id: TokenId) -> bool {
        self.inner.reject(id, None).is_discarded()
    }

    /// A request carrying token `id` was rejected (on `route`, if known): discards the token if
    /// it is still the current one and the rejection is probably about it, and says what it
    /// did. The HTTP layers call it with the request's [`Route`]; the answer decides whether
    /// they replay the request:
    ///
    /// - **A token that worked** ([`Snapshot::mark_accepted`]) and is now rejected has expired
    ///   or was revoked: it is discarded ([`Invalidation::Discarded`]), within the bound of
    ///   [`with_rejection_interval`](TokenCacheBuilder::with_rejection_interval). A route whose replay with a fresh token was
    ///   rejected too ([`reject_replay`](Self::reject_replay)) keeps the token
    ///   ([`HeldOff::Route`]); a rejection over the rate bound keeps it too
    ///   ([`HeldOff::Bound`]); a replacement whose replay was accepted
    ///   ([`replay_accepted`](Self::replay_accepted)) is given back.
    /// - **Fresh tokens** rejected before any success (within
    ///   [`with_fresh_rejection_window`](TokenCacheBuilder::with_fresh_rejection_window) of their fetch): the second such rejection and
    ///   those after it are held off with exponential backoff ([`HeldOff::FreshTokensRejected`]).
    ///
    /// The rules and their timings are written out in [docs/guarantees.md] ("Rejections are
    /// bounded"). A held-off rejection is counted ([`CacheStats::suppressed_invalidations`],
    /// the `tokenwarden_token_invalidations_total` metric,
    /// [`CacheStatus::held_off_rejections`]) and is not sent to other replicas through a shared
    /// store. With `rejection_interval` zero, every rejection of the current token discards it.
    ///
    /// [docs/guarantees.md]: https://github.com/tokenwarden/tokenwarden/blob/main/docs/guarantees.md
    ///
    /// ```
    /// use std::time::Duration;
    /// use tokenwarden_core::{FetchError, HeldOff, Invalidation, Route, Token, TokenCache};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let cache = TokenCache::builder(|| async { Ok::<_, FetchError>(Token::new("t")) }).build()?;
    /// let (good, bad) = (Route::of("GET", "/orders"), Route::of("GET", "/admin"));
    /// let token = cache.get().await?;
    /// token.mark_accepted(); // `/orders` took it
    /// // `/admin` answers 401: the token is replaced and the request replayed...
    /// assert_eq!(cache.reject(token.id(), bad), Invalidation::Discarded);
    /// let fresh = cache.get().await?;
    /// // ...with a fresh token, which `/admin` rejects too: the route is remembered.
    /// cache.reject_replay(fresh.id(), bad);
    /// fresh.mark_accepted(); // `/orders` takes the fresh token
    /// assert_eq!(cache.reject(fresh.id(), bad), Invalidation::HeldOff(HeldOff::Route));
    /// // A revocation is still absorbed: `/orders` rejects the token that worked.
    /// assert_eq!(cache.reject(fresh.id(), good), Invalidation::Discarded);
    /// # Ok(())
    /// # }
    /// ```
    pub fn reject(&self, id: TokenId, route: Route) -> Invalidation {
        self.inner.reject(id, Some(route))
    }

    /// The replay of a request rejected on `route`, sent with the fresh token `fresh`, was
    /// accepted: the rejection was about the token (an expiry, a revocation), so its
    /// replacement does not count against the bound of [`with_rejection_interval`](TokenCacheBuilder::with_rejection_interval),
    /// and `route`, if remembered, is forgotten. The HTTP layers call it.
    pub fn replay_accepted(&self, fresh: TokenId, route: Route) {
        self.inner.replay_accepted(fresh, route);
    }

    /// The replay of a request rejected on `route`, sent with the fresh token `fresh`, was
    /// rejected too: the route is remembered as one whose rejections are not about the token
    /// (see [`reject`](Self::reject)), the replacement counts as one that did not help, and
    /// `fresh` is kept, as a fresh token rejected once. With
    /// [`with_rejection_interval`](TokenCacheBuilder::with_rejection_interval) zero, it is [`reject`](Self::reject)ed instead.
    pub fn reject_replay(&self, fresh: TokenId, route: Route) {
        self.inner.reject_replay(fresh, route);
    }

    /// The same as [`get`](Self::get), as a future that owns a handle to the cache: it can be
    /// stored in a struct, returned from a function or moved to a task.
    ///
    /// # Errors
    ///
    /// As [`get`](Self::get).
    pub fn get_owned(&self) -> future::GetOwned {
        future::GetOwned::new(self.clone())
    }

    /// New credentials, for this cache and every handle to it (clones, layers built from it):
    /// fetches from now on go to `source`. Requests keep working throughout:
    ///
    /// - the current token **stays** and is served until it is due for refresh, since the
    ///   issuer still honours it (call [`revoke`](Self::revoke) after `rotate` to drop it at
    ///   once instead — for credentials that leaked, say; requests then wait for a token
    ///   fetched with the new ones);
    /// - a fetch already under way with the old credentials may still install its token;
    /// - a backoff, or a rejection of the old credentials, is forgotten: the new ones are
    ///   tried at once.
    ///
    /// Settings and presentation stay as they are.
    pub fn rotate(&self, source: impl TokenSource) {
        self.inner.rotate(Arc::new(source));
    }

    pub(crate) fn rotate_to(&self, source: Arc<dyn TokenSource>) {
        self.inner.rotate(source);
    }

    pub(crate) fn inner(&self) -> &Arc<Inner> {
        &self.inner
    }

    /// Drops the current token (and any pooled ones), and makes sure no fetch that was already
    /// under way when this was called installs its token: callers waiting for it start over.
    ///
    /// Built [`with_shared`](TokenCacheBuilder::with_shared), it also marks the key's shared
    /// token rejected in the store, so every replica drops it and none takes it again (sent in
    /// the background, and again once the store answers if it is in trouble).
    pub fn revoke(&self) {
        self.inner.revoke();
        self.inner.share_revocation();
    }

    /// What the cache has done so far.
    #[must_use]
    pub fn stats(&self) -> CacheStats {
        self.inner.stats()
    }

    /// Its settings.
    pub(crate) fn config(&self) -> &CacheConfig {
        self.inner.config()
    }

    /// Its name, as set with [`with_name`](TokenCacheBuilder::with_name): the `cache` label of
    /// its logs, spans and metrics.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.config().name
    }

    /// How its tokens are presented.
    #[must_use]
    pub fn presentation(&self) -> &Presentation {
        self.inner.presentation()
    }

    /// Whether every caller gets a token of its own.
    #[must_use]
    pub fn is_single_use(&self) -> bool {
        self.inner.is_single_use()
    }
}

impl fmt::Debug for TokenCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Reads only: looking at a cache is not a use of its token.
        f.debug_struct("TokenCache")
            .field("name", &self.config().name)
            .field("single_use", &self.is_single_use())
            .field("current", &self.inner.peek())
            .field("stats", &self.stats())
            .finish()
    }
}
