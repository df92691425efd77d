//! Many token caches under one roof: one per key (a merchant, a tenant, a set of credentials).
//!
//! Some 640 lines, a fifth of them the public API's docs and 50 its unit tests: the key map,
//! the per-thread copies and the builder are in files of their own.

use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasher, Hash};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use quick_cache::sync::Cache;
use quick_cache::{DefaultHashBuilder, Lifecycle, OptionsBuilder, UnitWeighter};
use thread_local::ThreadLocal;

use super::label::KeyLabel;
use super::padded::Padded;
use super::status::{CacheState, CacheStatus};
use super::wheel::Wheel;
use super::{Clock, TokenCache, TokenCacheBuilder};
use crate::RefreshBudget;
use crate::{CacheConfig, ConfigError, Error, Snapshot, TokenId, TokenSource};

/// How long a thread serves a key's token from its own copy before it looks the key up again
/// (which is how the keyed cache learns the key is in use).
mod builder;
mod copies;
mod map;

pub use builder::KeyedCacheBuilder;
use copies::*;
pub(crate) use map::Slot;
use map::*;

const REVALIDATE: Duration = Duration::from_secs(1);

/// Makes the cache for a key met for the first time.
type Factory<K> = Arc<dyn Fn(&K) -> Result<TokenCacheBuilder, ConfigError> + Send + Sync>;

/// A user's function making a key's display-safe label.
type LabelFn<K> = Arc<dyn Fn(&K) -> String + Send + Sync>;

/// Makes a key's display-safe label.
enum Labeler<K> {
    /// `key-` and 8 hex digits of a hash keyed at random per process, kept as the number.
    Fingerprint(std::hash::RandomState),
    Custom(LabelFn<K>),
}

impl<K: Hash> Labeler<K> {
    fn label(&self, key: &K) -> KeyLabel {
        match self {
            Self::Fingerprint(hasher) => KeyLabel::Fingerprint(hasher.hash_one(key) as u32),
            Self::Custom(label) => KeyLabel::Named(Arc::new(label(key))),
        }
    }
}

/// One token cache per key — a merchant, a tenant, a set of credentials — each with its own
/// source, settings and presentation, made on first use by a factory or registered ahead.
///
/// What it guarantees is written out in [docs/keyed.md]; in short:
///
/// - **Bounded** by [`with_capacity`](KeyedCacheBuilder::with_capacity) and
///   [`with_idle_timeout`](KeyedCacheBuilder::with_idle_timeout); a key in use (a
///   [`KeyHandle`] held) is never evicted.
/// - **One fetch per key**, exactly as with a single [`TokenCache`]; keys do not wait for
///   each other.
/// - **Rotation**: [`register`](Self::register) on a key that exists, or
///   [`rotate`](Self::rotate), changes its credentials in place (see [`TokenCache::rotate`]).
/// - **Fast**: a thread keeps its own copies of the tokens of the keys it used recently, at
///   most [`with_thread_copies`](KeyedCacheBuilder::with_thread_copies) per thread; how a
///   cached get works, and what it costs: [docs/benchmarks.md].
/// - **Never another key's token**: a key that is unknown (not registered, and no factory) is
///   an error, [`Error::UnknownKey`], never a default.
/// - Logs and spans name keys by a display-safe label (a fingerprint, or
///   [`with_key_label`](KeyedCacheBuilder::with_key_label)); metrics never carry a key.
///
/// [docs/keyed.md]: https://github.com/tokenwarden/tokenwarden/blob/main/docs/keyed.md
/// [docs/benchmarks.md]: https://github.com/tokenwarden/tokenwarden/blob/main/docs/benchmarks.md
///
/// ```
/// use std::time::Duration;
/// use tokenwarden_core::{FetchError, KeyedCache, Token, TokenCache};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let merchants = KeyedCache::builder()
///     .with_name("acquirer")
///     .with_factory(|merchant: &String| {
///         let merchant = merchant.clone();
///         Ok(TokenCache::builder(move || {
///             let merchant = merchant.clone();
///             async move {
///                 // call the issuer with this merchant's credentials
///                 Ok::<_, FetchError>(Token::new(format!("token-of-{merchant}"))
///                     .with_expires_in(Duration::from_secs(900)))
///             }
///         }))
///     })
///     .build();
/// let token = merchants.get(&"m-1001".to_owned()).await?;
/// assert_eq!(token.token().secret().expose(), "token-of-m-1001");
/// # Ok(()) }
/// ```
pub struct KeyedCache<K: Send> {
    inner: Arc<Keyed<K>>,
}

impl<K: Send> Clone for KeyedCache<K> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

struct Keyed<K: Send> {
    name: Cow<'static, str>,
    map: Cache<K, Arc<Slot>, UnitWeighter, DefaultHashBuilder, Pins>,
    factory: Option<Factory<K>>,
    budget: Option<RefreshBudget>,
    /// The settings of the key made last, shared with the next key whose settings are the
    /// same.
    last_config: Mutex<Option<Arc<CacheConfig>>>,
    label: Labeler<K>,
    /// Each thread's table on cache lines of its own (their borrow flags are written on every
    /// read, and `ThreadLocal` keeps consecutive threads' slots side by side).
    locals: ThreadLocal<Padded<RefCell<Table<K>>>>,
    thread_copies: usize,
    /// Whether each key's cache keeps per-thread copies of its own.
    own_copies: bool,
    /// Ticks every key's cache on time (one task for all keys, not one each).
    wheel: Arc<Wheel>,
    idle: Duration,
    /// Coarse seconds of the last idle sweep.
    swept_at: AtomicU64,
    epoch: std::time::Instant,
}

impl<K: Send> Drop for Keyed<K> {
    fn drop(&mut self) {
        // The keys' driver stops with the keyed cache (handles still held keep working; their
        // caches get a driver again on their next use).
        self.wheel.stop();
    }
}

/// A key's cache in use: while a handle is held, the key is not evicted. Layers hold one for
/// each request. Cloning is a reference count.
#[derive(Clone)]
pub struct KeyHandle(Arc<Slot>);

impl KeyHandle {
    /// The key's cache.
    #[must_use]
    pub fn cache(&self) -> &TokenCache {
        &self.0.cache
    }
}

impl fmt::Debug for KeyHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyHandle")
            .field("key", self.0.label())
            .field("cache", &self.0.cache)
            .finish()
    }
}

/// Keys by state, and the worst of them: [`KeyedCache::summary`], for a health endpoint.
/// Secret-free: keys appear by their labels.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct KeyedSummary {
    /// Keys held.
    pub keys: usize,
    /// Keys with a token that can be served and nothing to do.
    pub fresh: usize,
    /// Keys with a fetch under way.
    pub refreshing: usize,
    /// Keys whose fetches failed and that wait before the next attempt.
    pub backing_off: usize,
    /// Keys whose credentials the issuer rejected.
    pub rejected: usize,
    /// Keys whose token requests the issuer refused as misconfigured (scope, resource).
    pub misconfigured: usize,
    /// Keys served past their refresh deadline while their issuer fails.
    pub grace: usize,
    /// Keys with no token and no fetch (not used since they were made, or revoked).
    pub empty: usize,
    /// The worst keys first (rejected credentials, then failing without a token to serve,
    /// then the most failures), with their status.
    pub worst: Vec<(String, CacheStatus)>,
}

impl<K> KeyedCache<K>
where
    K: Clone + Hash + Eq + Send + Sync + 'static,
{
    /// Starts building a keyed cache.
    #[must_use]
    pub fn builder() -> KeyedCacheBuilder<K> {
        KeyedCacheBuilder::new()
    }

    /// A valid token for `key`, fetching one if needed (see [`TokenCache::get`]).
    ///
    /// # Errors
    ///
    /// [`Error::UnknownKey`] if `key` is not registered and there is no factory;
    /// [`Error::KeyConfig`] if the factory refused it; otherwise as [`TokenCache::get`].
    pub async fn get(&self, key: &K) -> Result<Snapshot, Error> {
        if let Some(snapshot) = self.cached(key) {
            return Ok(snapshot);
        }
        let slot = self.slot(key)?;
        let snapshot = slot.0.cache.get().await?;
        self.remember(key, &slot.0, &snapshot);
        Ok(snapshot)
    }

    /// `key`'s token if this thread holds a copy that can be served now: no lookup, no lock,
    /// nothing written that another thread reads.
    #[inline]
    #[must_use]
    pub fn cached(&self, key: &K) -> Option<Snapshot> {
        let mut table = self.inner.locals.get()?.0.try_borrow_mut().ok()?;
        let changes = self.inner.wheel.changes();
        table.entries.get_mut(key)?.serve(changes)
    }

    /// Keeps a copy of `snapshot` for this thread, if it may be served from one.
    fn remember(&self, key: &K, slot: &Slot, snapshot: &Snapshot) {
        if self.inner.thread_copies == 0 {
            return;
        }
        // Read before the key's state word (see `Copy::seen`).
        let seen = self.inner.wheel.changes();
        // Only a copy of the key's current cache: a fetch that ended in a cache removed
        // meanwhile must not be served (nor could `invalidate` reach it). A removal after this
        // look revokes that cache, which changes its state word after the copy reads it below,
        // so the copy is not served either.
        let current = self
            .inner
            .map
            .peek(key)
            .is_some_and(|now| std::ptr::eq(&*now, slot));
        if !current {
            return;
        }
        let Some((state, check_at)) = slot.cache.inner().table_view(snapshot, REVALIDATE) else {
            return;
        };
        let cell = self.inner.locals.get_or(|| {
            Padded(RefCell::new(Table {
                entries: HashMap::with_hasher(DefaultHashBuilder::default()),
            }))
        });
        let Ok(mut table) = cell.0.try_borrow_mut() else {
            return;
        };
        let reuse = table
            .entries
            .get(key)
            .filter(|c| c.snapshot.id() == snapshot.id())
            .map(|c| c.snapshot.clone());
        if reuse.is_none() && table.entries.len() >= self.inner.thread_copies {
            // Full: make room (any key; the bound is what matters).
            if let Some(old) = table.entries.keys().next().cloned() {
                table.entries.remove(&old);
            }
        }
        let snapshot = reuse.unwrap_or_else(|| snapshot.deep_copy());
        table.entries.insert(
            key.clone(),
            Copy {
                cache: slot.cache.clone(),
                snapshot,
                state,
                check_at,
                seen,
                clock: slot.cache.inner().clock().clone(),
            },
        );
    }

    fn now_secs(&self) -> u64 {
        self.inner.epoch.elapsed().as_secs()
    }

    /// The key's slot, made by the factory if it is new.
    fn slot(&self, key: &K) -> Result<KeyHandle, Error> {
        self.sweep_if_due();
        let now = self.now_secs();
        if let Some(slot) = self.inner.map.get(key) {
            // Written once a second at most: requests of one key on many threads do not
            // write the same line on every call.
            if slot.used_at.load(Ordering::Relaxed) != now {
                slot.used_at.store(now, Ordering::Relaxed);
            }
            return Ok(KeyHandle(slot));
        }
        let Some(factory) = &self.inner.factory else {
            return Err(Error::UnknownKey {
                key: self.inner.label.label(key).to_string(),
            });
        };
        let slot = self.inner.map.get_or_insert_with(key, || {
            let label = self.inner.label.label(key);
            let builder = factory(key).map_err(|source| Error::KeyConfig {
                key: label.to_string(),
                source,
            })?;
            self.make_slot(builder, label, false)
        })?;
        Ok(KeyHandle(slot))
    }

    fn make_slot(
        &self,
        builder: TokenCacheBuilder,
        label: KeyLabel,
        kept: bool,
    ) -> Result<Arc<Slot>, Error> {
        let builder = match &self.inner.budget {
            Some(budget) => builder.with_refresh_budget(budget.clone()),
            None => builder,
        };
        let cache = builder
            .with_name(self.inner.name.clone())
            .for_key(label.clone(), self.inner.own_copies, &self.inner.wheel)
            .build_sharing(&self.inner.last_config)
            .map_err(|source| Error::KeyConfig {
                key: label.to_string(),
                source,
            })?;
        Ok(Arc::new(Slot {
            cache,
            kept,
            used_at: AtomicU64::new(self.now_secs()),
        }))
    }

    /// A handle on `key`'s cache (made by the factory if `key` is new), for code that calls
    /// the cache itself; the key is not evicted while the handle is held.
    ///
    /// # Errors
    ///
    /// [`Error::UnknownKey`] or [`Error::KeyConfig`], as [`get`](Self::get).
    pub fn handle(&self, key: &K) -> Result<KeyHandle, Error> {
        self.slot(key)
    }

    /// What a layer needs for a request of `key`: a handle on its cache (the key is not
    /// evicted while it is held) and, if one can be served now, its token — from this thread's
    /// copy when it has one (no lock), else from the key's cache, which leaves a copy for this
    /// thread's next request. `None` for the token: the caller fetches through
    /// `handle.cache()`.
    ///
    /// # Errors
    ///
    /// [`Error::UnknownKey`] or [`Error::KeyConfig`], as [`get`](Self::get).
    pub fn handle_with_token(&self, key: &K) -> Result<(KeyHandle, Option<Snapshot>), Error> {
        let handle = self.slot(key)?;
        if let Some(copy) = self.copy_from(key, &handle.0.cache) {
            return Ok((handle, Some(copy)));
        }
        let token = handle.0.cache.cached();
        if let Some(snapshot) = &token {
            self.remember(key, &handle.0, snapshot);
        }
        Ok((handle, token))
    }

    /// This thread's copy of `key`'s token, if it was taken from `cache` (not from a cache the
    /// key had before it was removed and made again) and can be served now.
    fn copy_from(&self, key: &K, cache: &TokenCache) -> Option<Snapshot> {
        let mut table = self.inner.locals.get()?.0.try_borrow_mut().ok()?;
        let changes = self.inner.wheel.changes();
        table
            .entries
            .get_mut(key)
            .filter(|copy| Arc::ptr_eq(copy.cache.inner(), cache.inner()))?
            .serve(changes)
    }

    /// Registers `key` with its own cache settings, source and presentation. If `key` is
    /// already there, its credentials are rotated to `builder`'s source instead (its settings
    /// stay): see [`rotate`](Self::rotate). Without a factory, a registered key is never
    /// evicted.
    ///
    /// # Errors
    ///
    /// [`Error::KeyConfig`] if `builder`'s settings cannot work.
    pub fn register(&self, key: K, builder: TokenCacheBuilder) -> Result<KeyHandle, Error> {
        let source = builder.source();
        let mut made = false;
        let slot = self.inner.map.get_or_insert_with(&key, || {
            made = true;
            let label = self.inner.label.label(&key);
            self.make_slot(builder, label, self.inner.factory.is_none())
        })?;
        if !made {
            slot.cache.rotate_to(source);
        }
        Ok(KeyHandle(slot))
    }

    /// New credentials for `key` (see [`TokenCache::rotate`]): every handle and layer using the
    /// key keeps working, and its next fetch uses `source`. Returns whether `key` was there.
    pub fn rotate(&self, key: &K, source: impl TokenSource) -> bool {
        match self.inner.map.peek(key) {
            Some(slot) => {
                slot.cache.rotate(source);
                true
            }
            None => false,
        }
    }

    /// Drops `key`'s token (see [`TokenCache::revoke`]); its next use fetches a new one.
    /// Returns whether `key` was there.
    pub fn revoke(&self, key: &K) -> bool {
        self.inner.map.peek(key).map(|s| s.cache.revoke()).is_some()
    }

    /// Forgets `key`: its token is dropped, and a later use makes it again with the factory
    /// (without one, [`Error::UnknownKey`]). Handles already held keep a cache of their own,
    /// which fetches anew. Returns whether `key` was there.
    pub fn remove(&self, key: &K) -> bool {
        match self.inner.map.remove(key) {
            Some((_, slot)) => {
                // Forgotten here only: other replicas keep the key's shared token.
                slot.cache.inner().revoke();
                true
            }
            None => false,
        }
    }

    /// Marks the token `id` of `key` as rejected (see [`TokenCache::invalidate`]).
    pub fn invalidate(&self, key: &K, id: TokenId) -> bool {
        self.inner
            .map
            .peek(key)
            .is_some_and(|slot| slot.cache.invalidate(id))
    }

    /// What `key`'s cache is doing, if `key` is held. No side effect.
    #[must_use]
    pub fn status(&self, key: &K) -> Option<CacheStatus> {
        self.inner.map.peek(key).map(|slot| slot.cache.status())
    }

    /// Keys held now.
    #[must_use]
    pub fn len(&self) -> usize {
        self.inner.map.len()
    }

    /// Whether no key is held.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.inner.map.is_empty()
    }

    /// The keyed cache's name.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// Every key's state counted, and the `worst` worst keys with their status — for a health
    /// endpoint (it looks at every key: call it on demand, not per request). With feature
    /// `metrics`, it also sets the `tokenwarden_keys` gauge (keys by state).
    #[must_use]
    pub fn summary(&self, worst: usize) -> KeyedSummary {
        let mut summary = KeyedSummary::default();
        let mut all = Vec::new();
        for (_, slot) in self.inner.map.iter() {
            let status = slot.cache.status();
            summary.keys += 1;
            match status.state {
                CacheState::Fresh => summary.fresh += 1,
                CacheState::Refreshing => summary.refreshing += 1,
                CacheState::BackingOff { .. } => summary.backing_off += 1,
                CacheState::CredentialsRejected { .. } => summary.rejected += 1,
                CacheState::Misconfigured { .. } => summary.misconfigured += 1,
                CacheState::Grace => summary.grace += 1,
                CacheState::Empty => summary.empty += 1,
            }
            if worst > 0 && !matches!(status.state, CacheState::Fresh | CacheState::Empty) {
                all.push((slot.label().to_string(), status));
            }
        }
        all.sort_by_key(|(_, s)| std::cmp::Reverse(severity(s)));
        all.truncate(worst);
        summary.worst = all;
        crate::metrics::keys(
            &self.inner.name,
            [
                ("fresh", summary.fresh),
                ("refreshing", summary.refreshing),
                ("backing_off", summary.backing_off),
                ("rejected", summary.rejected),
                ("misconfigured", summary.misconfigured),
                ("grace", summary.grace),
                ("empty", summary.empty),
            ],
        );
        summary
    }

    /// Evicts the keys not looked up for the idle timeout (pinned keys aside) and drops their
    /// tokens; returns how many went. Runs by itself now and then as keys are looked up.
    pub(crate) fn evict_idle(&self) -> usize {
        let now = self.now_secs();
        let idle = self.inner.idle.as_secs();
        let stale: Vec<K> = self
            .inner
            .map
            .iter()
            .filter(|(_, slot)| now.saturating_sub(slot.used_at.load(Ordering::Relaxed)) >= idle)
            .map(|(key, _)| key)
            .collect();
        let mut evicted = 0;
        for key in stale {
            let removed = self.inner.map.remove_if(&key, |slot| {
                !slot.pinned() && now.saturating_sub(slot.used_at.load(Ordering::Relaxed)) >= idle
            });
            if let Some((_, slot)) = removed {
                slot.cache.inner().revoke();
                evicted += 1;
            }
        }
        if evicted > 0 {
            tracing::debug!(cache = %self.inner.name, evicted, "idle keys evicted");
        }
        evicted
    }

    /// Sweeps idle keys at most once per quarter of the idle timeout.
    fn sweep_if_due(&self) {
        let now = self.now_secs();
        let every = (self.inner.idle.as_secs() / 4).max(1);
        let last = self.inner.swept_at.load(Ordering::Relaxed);
        if now >= last + every
            && self
                .inner
                .swept_at
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.evict_idle();
        }
    }
}

/// How bad a key's state is, for [`KeyedSummary::worst`].
fn severity(status: &CacheStatus) -> (u8, u32) {
    let rank = match status.state {
        CacheState::CredentialsRejected { .. } | CacheState::Misconfigured { .. } => 5,
        CacheState::BackingOff { .. } if status.token.is_none() => 4,
        CacheState::Grace => 3,
        CacheState::BackingOff { .. } => 2,
        CacheState::Refreshing => 1,
        CacheState::Fresh | CacheState::Empty => 0,
    };
    (rank, status.failures)
}

impl<K: Clone + Hash + Eq + Send> fmt::Debug for KeyedCache<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedCache")
            .field("name", &self.inner.name)
            .field("keys", &self.inner.map.len())
            .field("factory", &self.inner.factory.is_some())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{FetchError, Token};

    fn keyed(own_copies: bool) -> KeyedCache<u32> {
        let builder = KeyedCache::builder().with_factory(|_: &u32| {
            Ok(TokenCache::builder(|| async {
                Ok::<_, FetchError>(Token::new("t"))
            }))
        });
        if own_copies {
            builder.with_copies_per_key()
        } else {
            builder
        }
        .build()
    }

    #[test]
    fn the_wheels_queue_keeps_about_one_request_per_key() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let keyed = keyed(false);
            for _ in 0..20 {
                for key in 0..100 {
                    keyed.revoke(&key);
                    keyed.get(&key).await.unwrap();
                }
            }
            // 100 keys, 20 tokens each, several requests per token: tidied as it doubles.
            let queued = keyed.inner.wheel.len();
            assert!(
                queued <= 2 * 200 + 64,
                "{queued} requests queued for 100 keys"
            );
        });
    }

    #[test]
    fn a_keys_own_cache_keeps_thread_copies_only_when_asked() {
        let plain = keyed(false).handle(&1).unwrap();
        assert!(!plain.cache().inner().has_thread_copies());
        let own = keyed(true).handle(&1).unwrap();
        assert!(own.cache().inner().has_thread_copies());
    }

    #[tokio::test]
    async fn keys_with_the_same_settings_share_them_and_a_key_with_its_own_keeps_them() {
        let keyed = KeyedCache::builder()
            .with_factory(|key: &u32| {
                let key = *key;
                let builder = TokenCache::builder(move || async move {
                    Ok::<_, FetchError>(
                        Token::new(format!("{key}-1")).with_expires_in(Duration::from_secs(600)),
                    )
                });
                Ok(if key == 7 {
                    builder.with_fetch_timeout(Duration::from_secs(3))
                } else {
                    builder
                })
            })
            .build();
        let config =
            |key: u32| -> *const CacheConfig { keyed.handle(&key).unwrap().cache().config() };
        let (a, b, own, c) = (config(1), config(2), config(7), config(3));
        assert!(
            std::ptr::eq(a, b),
            "one copy of the settings for keys 1 and 2"
        );
        let _ = c; // after key 7, key 3 makes a copy of its own: only the last settings are kept
        assert!(!std::ptr::eq(a, own), "key 7 has settings of its own");
        let timeout = |key: u32| keyed.handle(&key).unwrap().cache().config().fetch_timeout;
        assert_eq!(timeout(7), Duration::from_secs(3));
        assert_eq!(timeout(3), timeout(1));
        for key in [1, 2, 3, 7] {
            let snapshot = keyed.get(&key).await.unwrap();
            assert_eq!(
                snapshot.token().secret().expose(),
                format!("{key}-1"),
                "each key still fetches with its own source"
            );
        }
    }
}
