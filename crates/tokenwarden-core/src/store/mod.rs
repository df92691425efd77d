//! Tokens shared by several processes (replicas) through a store.
//!
//! A [`TokenCache`](crate::TokenCache) built [`with_shared`](crate::TokenCacheBuilder::with_shared)
//! keeps serving its own copy of the token on the hot path; only when it would fetch does it
//! ask the store first, and either takes a newer token another replica installed or takes the
//! key's lease and fetches for every replica. What sharing guarantees — leases and take-over,
//! fencing numbers, notices of new and rejected tokens, expiry, and store trouble
//! ([`with_store_timeout`](SharedTokensBuilder::with_store_timeout),
//! [`with_pause_after_trouble`](SharedTokensBuilder::with_pause_after_trouble)) — is written
//! out in [docs/replicas.md]; every store keeps the same contract, [`TokenStore`].
//!
//! [docs/replicas.md]: https://github.com/tokenwarden/tokenwarden/blob/main/docs/replicas.md
//!
//! [`MemoryStore`] shares tokens between the caches of one process (and lets tests run several
//! "replicas" in one); the `tokenwarden-redis` crate shares them through Redis or Valkey, with
//! tokens encrypted at rest.
//!
//! ```
//! use std::time::Duration;
//! use tokenwarden_core::{FetchError, MemoryStore, SharedTokens, Token, TokenCache};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let store = MemoryStore::new();
//! // Two "replicas", each with its own hub and cache, sharing one store.
//! let replica = |store: &MemoryStore| {
//!     let shared = SharedTokens::new(store.clone());
//!     TokenCache::builder(|| async {
//!         Ok::<_, FetchError>(Token::new("abc").with_expires_in(Duration::from_secs(900)))
//!     })
//!     .with_shared(&shared, "merchant-42")
//!     .build()
//!     .map(|cache| (shared, cache))
//! };
//! let (a_hub, a) = replica(&store)?;
//! let (b_hub, b) = replica(&store)?;
//! assert_eq!(a.get().await?.token().secret().expose(), "abc");
//! assert_eq!(b.get().await?.token().secret().expose(), "abc");
//! // One issuer call for both.
//! assert_eq!(a_hub.stats().issuer_fetches + b_hub.stats().issuer_fetches, 1);
//! # Ok(())
//! # }
//! ```

mod hub;
mod link;
mod memory;

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use tokio::time::Instant;

pub(crate) use hub::Hub;
use hub::{Counters, bump};
pub(crate) use link::{Fence, Link, Listener};
pub use memory::MemoryStore;

use crate::Secret;

/// The name a store keeps one cache's token under. A store derives it from the credential
/// identity it is given ([`TokenStore::key_for`]); it must not reveal a secret.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct StoreKey(Arc<str>);

impl StoreKey {
    /// A key with this name.
    pub fn new(name: impl Into<Arc<str>>) -> Self {
        Self(name.into())
    }

    /// The name.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for StoreKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for StoreKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A token as a store holds it: the secret, when it was fetched and when it expires, its
/// fencing number, and whether a replica saw it rejected.
///
/// Times are wall-clock times. The writer stamps them with its clock; a store that keeps its
/// own expiry (Redis's TTL) hands a token out with `expires_at` counted from the reader's
/// clock by what the store says is left, so replicas' clocks that disagree change nothing.
///
/// `Debug` does not show the secret.
#[derive(Clone)]
#[non_exhaustive]
pub struct SharedToken {
    /// The fencing number of the lease it was fetched under.
    pub fence: u64,
    /// The token's value.
    pub secret: Secret,
    /// When its fetch was sent.
    pub issued_at: SystemTime,
    /// When it stops being valid.
    pub expires_at: SystemTime,
    /// A replica saw it rejected: no replica takes it.
    pub rejected: bool,
}

impl SharedToken {
    /// A token fetched under lease `fence`.
    #[must_use]
    pub fn new(fence: u64, secret: Secret, issued_at: SystemTime, expires_at: SystemTime) -> Self {
        Self {
            fence,
            secret,
            issued_at,
            expires_at,
            rejected: false,
        }
    }

    /// Marks it rejected (or not).
    #[must_use]
    pub fn with_rejected(mut self, rejected: bool) -> Self {
        self.rejected = rejected;
        self
    }

    /// The lifetime it was issued with.
    #[must_use]
    pub fn lifetime(&self) -> Duration {
        self.expires_at
            .duration_since(self.issued_at)
            .unwrap_or_default()
    }

    /// How long it remains valid, by this machine's clock.
    #[must_use]
    pub fn remaining(&self) -> Duration {
        self.expires_at
            .duration_since(SystemTime::now())
            .unwrap_or_default()
    }

    /// How long a store keeps it: what remains of it by this machine's clock, never more than
    /// its lifetime (a token stamped by a clock ahead of this one has not been in use longer
    /// than since it was issued).
    #[must_use]
    pub fn time_to_live(&self) -> Duration {
        self.remaining().min(self.lifetime())
    }

    /// The same token stamped by this machine's clock: expiring `left` from now, issued its
    /// lifetime before that. How a store that keeps a token's expiry itself (Redis's TTL)
    /// hands it out (see [`SharedToken`]).
    #[must_use]
    pub fn expiring_in(mut self, left: Duration) -> Self {
        let now = SystemTime::now();
        let lifetime = self.lifetime();
        self.expires_at = now + left;
        self.issued_at = self.expires_at.checked_sub(lifetime).unwrap_or(now);
        self
    }
}

impl fmt::Debug for SharedToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedToken")
            .field("fence", &self.fence)
            .field("secret", &self.secret)
            .field("issued_at", &self.issued_at)
            .field("expires_at", &self.expires_at)
            .field("rejected", &self.rejected)
            .finish()
    }
}

/// What [`TokenStore::install`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Install {
    /// The token is now the key's token.
    Installed,
    /// The store already holds a token with this fencing number or a higher one, which stays.
    Superseded {
        /// The fencing number of the token the store holds.
        current: u64,
    },
}

/// What happened to a key, as a store tells every replica.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NoticeKind {
    /// A token with this fencing number was installed.
    Installed,
    /// The token with this fencing number was rejected.
    Rejected,
    /// A lease was let go without a token (its fetch failed).
    Released,
}

/// A change to a key, delivered to every replica through [`Notices`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notice {
    /// The key.
    pub key: StoreKey,
    /// The fencing number it concerns (0 for a release).
    pub fence: u64,
    /// What happened.
    pub kind: NoticeKind,
}

/// Why a store call failed. Never contains a secret.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The store could not be reached, or answered with an error.
    #[error("the token store is unavailable: {0}")]
    Unavailable(String),
    /// A stored token could not be read (another encryption key, a foreign value).
    #[error("a stored token could not be read: {0}")]
    Unreadable(String),
    /// The token is too large to share (its size in bytes is given, not its value).
    #[error("a token of {0} bytes is too large to share")]
    TooLarge(usize),
    /// The store took longer than the store timeout.
    #[error("the token store did not answer within {0:?}")]
    Timeout(Duration),
}

/// Where replicas share their tokens: a lease and a fencing number per key, the current token,
/// and notices of changes. Every method is one atomic step at the store.
///
/// Implemented by [`MemoryStore`] and by `tokenwarden-redis`'s `RedisStore`.
#[async_trait]
pub trait TokenStore: Send + Sync + 'static {
    /// The key for a credential identity (for example `"boipa:merchant-42"`). It must carry
    /// no secret, and identities that differ must give keys that differ.
    fn key_for(&self, identity: &str) -> StoreKey;

    /// The key's current token, if any (an expired one counts as none). A store that keeps
    /// the token's expiry itself returns `expires_at` as this machine's now plus what it says
    /// is left, and `issued_at` that much before it as the token's lifetime.
    async fn load(&self, key: &StoreKey) -> Result<Option<SharedToken>, StoreError>;

    /// Takes the key's lease for `owner` for `ttl` if nobody holds it, and returns its fencing
    /// number (higher than any given out for the key before, or held by its token); `None` if
    /// it is held (by another owner, or by an earlier fetch of this one not yet let go).
    async fn acquire(
        &self,
        key: &StoreKey,
        owner: &str,
        ttl: Duration,
    ) -> Result<Option<u64>, StoreError>;

    /// Takes the key's lease for `owner` as [`acquire`](Self::acquire) does if it is free, or
    /// from its holder if that holder took it at least `held_for` ago by the store's clock
    /// (renewals do not count: a holder whose issuer call hangs keeps renewing), and returns
    /// a new fencing number. A replica that waited its patience out for a holder calls it,
    /// so that one replica fetches for the others, not each for itself; the hung holder's
    /// token, should it come, is older and superseded at install.
    async fn take_over(
        &self,
        key: &StoreKey,
        owner: &str,
        ttl: Duration,
        held_for: Duration,
    ) -> Result<Option<u64>, StoreError>;

    /// Installs `token` if its fencing number is higher than that of the token held, lets go
    /// of `owner`'s lease either way, and on install sends a [`NoticeKind::Installed`] notice.
    async fn install(
        &self,
        key: &StoreKey,
        owner: &str,
        token: &SharedToken,
    ) -> Result<Install, StoreError>;

    /// Extends `owner`'s lease to `ttl` from now if it still holds it; returns whether it did.
    /// The holder calls it while its fetch runs, so that a slow issuer is not taken for a dead
    /// holder.
    async fn renew(&self, key: &StoreKey, owner: &str, ttl: Duration) -> Result<bool, StoreError>;

    /// Lets go of `owner`'s lease, if it still holds it, and sends a
    /// [`NoticeKind::Released`] notice.
    async fn release(&self, key: &StoreKey, owner: &str) -> Result<(), StoreError>;

    /// Marks the token with fencing number `fence` rejected, if it is the key's token and not
    /// yet marked, and sends a [`NoticeKind::Rejected`] notice; returns whether it did.
    async fn reject(&self, key: &StoreKey, fence: u64) -> Result<bool, StoreError>;

    /// From now on, delivers every notice of every key (its own and other replicas') to
    /// `notices`. Called once per [`SharedTokens`] made on the store.
    fn listen(&self, notices: Notices);

    /// What the store last saw go wrong reaching its server, if anything since it last
    /// reached it (`"connection refused"`, `"authentication failed"`): named in the WARN that
    /// a store call which timed out would otherwise only call slow. No secret in it.
    fn trouble(&self) -> Option<String> {
        None
    }
}

/// Where a store delivers notices: to the caches of one [`SharedTokens`].
#[derive(Clone)]
pub struct Notices(Weak<Hub>);

impl Notices {
    /// Delivers a notice: replicas waiting for the key look again, and its caches react
    /// (drop a rejected token, switch to a newer one at their next use).
    pub fn deliver(&self, notice: &Notice) {
        if let Some(hub) = self.0.upgrade() {
            hub.deliver(notice);
        }
    }

    /// The notices may have missed some (the store's connection was lost and made again):
    /// every waiting replica looks again.
    pub fn missed(&self) {
        if let Some(hub) = self.0.upgrade() {
            hub.wake_all();
        }
    }

    /// Whether the [`SharedTokens`] it delivers to is gone (a listener may then stop).
    #[must_use]
    pub fn is_closed(&self) -> bool {
        self.0.strong_count() == 0
    }
}

impl fmt::Debug for Notices {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Notices")
            .field("closed", &self.is_closed())
            .finish()
    }
}

/// How a replica shares tokens through a store: the store, and the waits around it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub(crate) struct SharedSettings {
    /// How long a lease holds unless renewed (its holder renews it every third of this while
    /// it fetches): another replica takes over after it if the holder died. Default 3 s.
    pub(crate) lease_ttl: Duration,
    /// How often a waiting replica looks at the store if no notice came. Default 250 ms.
    pub(crate) poll_interval: Duration,
    /// The longest a store call may take before the replica fetches on its own. Default 250 ms.
    pub(crate) store_timeout: Duration,
    /// After store trouble, how long the replica fetches on its own before trying the store
    /// again. Default 2 s.
    pub(crate) pause_after_trouble: Duration,
}

impl Default for SharedSettings {
    fn default() -> Self {
        Self {
            lease_ttl: Duration::from_secs(3),
            poll_interval: Duration::from_millis(250),
            store_timeout: Duration::from_millis(250),
            pause_after_trouble: Duration::from_secs(2),
        }
    }
}

/// What the caches of one [`SharedTokens`] did with the store.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SharedStats {
    /// Tokens taken from the store (fetched by another replica, or earlier).
    pub adopted: u64,
    /// Leases won: this replica fetched for every replica.
    pub leases: u64,
    /// Issuer calls made holding a lease.
    pub issuer_fetches: u64,
    /// Issuer calls made without the store (store trouble, or a lease held too long).
    pub direct_fetches: u64,
    /// Tokens installed in the store.
    pub installed: u64,
    /// Tokens not installed because a newer one was there (the fence held).
    pub superseded: u64,
    /// Waits for another replica's fetch (each ends with a notice or a poll).
    pub waits: u64,
    /// Leases taken over from a holder that kept one without installing a token for half a
    /// fetch timeout (its issuer call stuck): this replica fetched for every replica instead.
    pub take_overs: u64,
    /// Rejections sent to the other replicas.
    pub rejections_sent: u64,
    /// Notices received (this replica's own included).
    pub notices: u64,
    /// Store calls that failed or timed out.
    pub store_errors: u64,
}

/// One replica's access to a [`TokenStore`], shared by every cache of the replica built
/// [`with_shared`](crate::TokenCacheBuilder::with_shared) it. Cheap to clone.
///
/// See the [module docs](self) for what sharing does.
#[derive(Clone)]
pub struct SharedTokens {
    hub: Arc<Hub>,
}

impl SharedTokens {
    /// Shares through `store` with the default settings (see [`builder`](Self::builder)).
    pub fn new(store: impl TokenStore) -> Self {
        Self::builder(store).build()
    }

    /// Shares through `store`, with settings to choose.
    pub fn builder(store: impl TokenStore) -> SharedTokensBuilder {
        SharedTokensBuilder {
            store: Arc::new(store),
            settings: SharedSettings::default(),
        }
    }

    /// What this replica's caches did with the store so far.
    #[must_use]
    pub fn stats(&self) -> SharedStats {
        let c = &self.hub.counters;
        let read = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        SharedStats {
            adopted: read(&c.adopted),
            leases: read(&c.leases),
            issuer_fetches: read(&c.issuer_fetches),
            direct_fetches: read(&c.direct_fetches),
            installed: read(&c.installed),
            superseded: read(&c.superseded),
            waits: read(&c.waits),
            take_overs: read(&c.take_overs),
            rejections_sent: read(&c.rejections_sent),
            notices: read(&c.notices),
            store_errors: read(&c.store_errors),
        }
    }

    /// Its settings.
    #[must_use]
    pub(crate) fn settings(&self) -> &SharedSettings {
        &self.hub.settings
    }

    /// Whether the store is being left alone after trouble (caches fetch on their own).
    #[must_use]
    pub fn is_store_paused(&self) -> bool {
        self.hub.is_down()
    }

    pub(crate) fn hub(&self) -> &Arc<Hub> {
        &self.hub
    }
}

impl fmt::Debug for SharedTokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedTokens")
            .field("settings", &self.hub.settings)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

/// Builds [`SharedTokens`].
pub struct SharedTokensBuilder {
    store: Arc<dyn TokenStore>,
    settings: SharedSettings,
}

impl fmt::Debug for SharedTokensBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedTokensBuilder")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl SharedTokensBuilder {
    /// How long a lease holds unless renewed. Default 3 s. A cache sharing through it needs a
    /// [fetch timeout](crate::TokenCacheBuilder::with_fetch_timeout) of more than twice this
    /// plus the poll interval and two store timeouts (a replica may wait out a dead holder's
    /// lease, then fetch): 10 s, the default, covers the default settings.
    #[must_use]
    pub fn with_lease_ttl(mut self, ttl: Duration) -> Self {
        self.settings.lease_ttl = ttl;
        self
    }

    /// How often a waiting replica looks at the store when no notice comes. Default 250 ms.
    #[must_use]
    pub fn with_poll_interval(mut self, every: Duration) -> Self {
        self.settings.poll_interval = every;
        self
    }

    /// The longest a store call may take. Default 250 ms.
    #[must_use]
    pub fn with_store_timeout(mut self, timeout: Duration) -> Self {
        self.settings.store_timeout = timeout;
        self
    }

    /// After store trouble, how long caches fetch on their own before trying the store again.
    /// Default 2 s.
    #[must_use]
    pub fn with_pause_after_trouble(mut self, pause: Duration) -> Self {
        self.settings.pause_after_trouble = pause;
        self
    }

    /// The settings (zero durations are raised to 1 ms).
    #[must_use]
    pub fn build(self) -> SharedTokens {
        let floor = |d: Duration| d.max(Duration::from_millis(1));
        let mut settings = self.settings;
        settings.lease_ttl = floor(settings.lease_ttl);
        settings.poll_interval = floor(settings.poll_interval);
        settings.store_timeout = floor(settings.store_timeout);
        let hub = Arc::new(Hub {
            store: self.store,
            settings,
            links: Mutex::default(),
            down_until: Mutex::default(),
            troubled: AtomicBool::new(false),
            counters: Counters::default(),
        });
        hub.store.listen(Notices(Arc::downgrade(&hub)));
        SharedTokens { hub }
    }
}
