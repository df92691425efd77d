//! Tokens shared by replicas through Redis (or Valkey): a [`TokenStore`] for
//! [`SharedTokens`](tokenwarden_core::SharedTokens).
//!
//! It speaks to one Redis server (a primary; failover to a replica is covered by the fencing
//! numbers below). Redis Cluster is not supported yet: the client follows no `MOVED`, so
//! against a cluster every call fails and each replica fetches on its own (safe, unshared).
//! Each cache key is a handful of Redis keys, all under one hash tag, ready for a cluster's
//! one-slot-per-script rule:
//!
//! | Redis key | holds |
//! |---|---|
//! | `<prefix>{<name>}:token` | a hash: `fence`, the encrypted token `blob`, `rejected`; expires with the token, and its TTL is the token's expiry for every reader |
//! | `<prefix>{<name>}:lease` | the lease holder's owner id (one per lease request), with the lease TTL |
//! | `<prefix>{<name>}:lease-since` | when the lease was taken, by the server's clock (ms): renewals do not move it |
//! | `<prefix>{<name>}:fence` | the highest fencing number given out; expires a day after the token |
//!
//! `<name>` is a keyed BLAKE3 hash of the credential identity (keyed by a subkey of the
//! encryption key): it carries no secret, and without the key nobody can tell which identity
//! it stands for. Every change is one Lua script: taking a lease (if it is free, or for a
//! take-over if it has been held long enough) with the next fencing number, installing a token
//! (only over a lower fencing number, letting go of the lease, publishing a notice), rejecting
//! the token with a given fencing number, letting go of a lease. Notices go out on one channel,
//! `<prefix>notices`, which each process reads on a connection of its own, reconnecting after
//! trouble. The scripts are in `src/lua/`, each with its keys, arguments and reasons.
//!
//! **Fencing numbers only grow**, whatever Redis forgets or restores: a lease's number is the
//! largest of the counter plus one, the server's clock in milliseconds, and the stored token's
//! number plus one. A key is given at most one number per lease, so its numbers stay within a
//! few of the clock of when they were given; a restart without persistence, a restart from an
//! older RDB or AOF snapshot, and a failover to a replica that missed the latest writes all
//! come back later than that, so the clock alone puts every new number above the lost ones (a
//! late `401` for an old token can then never mark a new one). Not covered: a server whose
//! clock runs behind the one that gave the lost numbers by more than the outage lasted.
//!
//! Tokens are stored encrypted with XChaCha20-Poly1305 under a subkey of the
//! [`EncryptionKey`] you supply (every replica needs the same one), with a random nonce per
//! write and the key's name and fencing number as associated data (a blob copied to another key
//! or fence does not decrypt). Commands go through redis-rs's
//! [`ConnectionManager`], which reconnects on its own; a call
//! that fails or is slow makes the replica fetch on its own for a while (see
//! [`tokenwarden_core::store`]).
//!
//! ```no_run
//! use tokenwarden_core::{SharedTokens, TokenCache, FetchError, Token};
//! use tokenwarden_redis::{EncryptionKey, RedisStore};
//!
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // 32 random bytes, the same for every replica (for example `openssl rand -hex 32`,
//! // kept with the service's other secrets).
//! let key = EncryptionKey::from_hex(&std::env::var("TOKEN_STORE_KEY")?)?;
//! let store = RedisStore::open("redis://127.0.0.1:6379/", key)?;
//! let shared = SharedTokens::new(store);
//! let cache = TokenCache::builder(|| async { Ok::<_, FetchError>(Token::new("...")) })
//!     .with_shared(&shared, "torus:merchant-42")
//!     .build()?;
//! # Ok(()) }
//! ```
#![deny(missing_docs)]
#![forbid(unsafe_code)]
#![warn(missing_debug_implementations, rust_2018_idioms, unreachable_pub)]

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use chacha20poly1305::aead::{Aead, AeadCore, OsRng, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use redis::aio::ConnectionManager;
use redis::{Client, Script, Value};
use tokenwarden_core::Secret;
use tokenwarden_core::store::{Install, Notices, SharedToken, StoreError, StoreKey, TokenStore};
use tokio::runtime::Handle;
use tokio::task::AbortHandle;

mod builder;
mod key;
mod notices;

pub use builder::RedisStoreBuilder;
pub use key::{BadKey, EncryptionKey};
use notices::listen;

/// A [`TokenStore`] on Redis or Valkey (6.2 or later). Cheap to clone; clones share the
/// connection and the notice listener.
#[derive(Clone)]
pub struct RedisStore {
    inner: Arc<Inner>,
}

struct Inner {
    client: Client,
    conn: ConnectionManager,
    cipher: XChaCha20Poly1305,
    names: [u8; 32],
    prefix: String,
    channel: String,
    listeners: Arc<Mutex<Vec<Notices>>>,
    listener: Mutex<Option<AbortHandle>>,
    /// What went wrong reaching Redis, since it was last reached (see `TokenStore::trouble`).
    trouble: Arc<Mutex<Option<String>>>,
    scripts: Scripts,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(task) = self.listener.get_mut().ok().and_then(Option::take) {
            task.abort();
        }
    }
}

struct Scripts {
    acquire: Script,
    install: Script,
    reject: Script,
    renew: Script,
    release: Script,
}

impl Scripts {
    fn new() -> Self {
        // Each script says what it does, its keys and arguments, in its own file.
        Self {
            acquire: Script::new(include_str!("lua/acquire.lua")),
            install: Script::new(include_str!("lua/install.lua")),
            reject: Script::new(include_str!("lua/reject.lua")),
            renew: Script::new(include_str!("lua/renew.lua")),
            release: Script::new(include_str!("lua/release.lua")),
        }
    }
}

/// A Redis error's text, at most 300 characters (redis-rs does not put the URL or its
/// password in it).
fn describe(error: &redis::RedisError) -> String {
    error.to_string().chars().take(300).collect()
}

/// Remembers (or, with `None`, forgets) what went wrong reaching Redis.
fn note_trouble(trouble: &Mutex<Option<String>>, what: Option<String>) {
    let mut slot = trouble.lock().unwrap_or_else(PoisonError::into_inner);
    if *slot != what {
        *slot = what;
    }
}

fn millis(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The longest a stored secret may be (a token of a few kilobytes at most is normal).
const MAX_SECRET: usize = 64 * 1024;

impl RedisStore {
    /// A store on the Redis at `url` (`redis://[user:password@]host:port/[db]`, or
    /// `rediss://` for TLS when redis-rs is built with it), with default settings. Call it
    /// inside a Tokio runtime; Redis need not be up yet.
    ///
    /// # Errors
    ///
    /// As [`RedisStoreBuilder::open`].
    pub fn open(url: &str, key: EncryptionKey) -> Result<Self, StoreError> {
        Self::builder(url, key).open()
    }

    /// A store with settings to choose.
    #[must_use]
    pub fn builder(url: &str, key: EncryptionKey) -> RedisStoreBuilder {
        RedisStoreBuilder {
            url: url.to_owned(),
            key,
            prefix: "tokenwarden:".into(),
            response_timeout: Duration::from_secs(1),
        }
    }

    /// Runs an idempotent call, once more if the connection was lost: the manager reconnects
    /// after a failed call, so the first call after Redis came back need not fail. (Taking a
    /// lease and installing are not repeated: their first attempt may have been carried out.)
    async fn again_once<T, F, Fut>(&self, call: F) -> Result<T, StoreError>
    where
        F: Fn(ConnectionManager) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        let result = match call(self.inner.conn.clone()).await {
            Err(e) if e.is_connection_dropped() || e.is_connection_refusal() || e.is_io_error() => {
                call(self.inner.conn.clone()).await
            }
            result => result,
        };
        self.answered(result)
    }

    /// A call's result, remembering what went wrong reaching Redis (or that it was reached).
    fn answered<T>(&self, result: redis::RedisResult<T>) -> Result<T, StoreError> {
        match result {
            Ok(value) => {
                note_trouble(&self.inner.trouble, None);
                Ok(value)
            }
            Err(error) => {
                let text = describe(&error);
                note_trouble(&self.inner.trouble, Some(text.clone()));
                Err(StoreError::Unavailable(text))
            }
        }
    }

    /// The notice listener, started again if the runtime it ran on has ended.
    fn keep_listening(&self) {
        let listening = !self
            .inner
            .listeners
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_empty();
        if listening {
            self.spawn_listener();
        }
    }

    /// The acquire script: the lease if it is free, or (with `held_for`) held that long.
    async fn take(
        &self,
        key: &StoreKey,
        owner: &str,
        ttl: Duration,
        held_for: Option<Duration>,
    ) -> Result<Option<u64>, StoreError> {
        self.keep_listening();
        let mut conn = self.inner.conn.clone();
        let held_for = held_for.map_or_else(String::new, |held| {
            held.as_millis().min(u128::from(u32::MAX)).to_string()
        });
        let fence: u64 = self.answered(
            self.inner
                .scripts
                .acquire
                .key(self.redis_key(key, "lease"))
                .key(self.redis_key(key, "fence"))
                .key(self.redis_key(key, "token"))
                .key(self.redis_key(key, "lease-since"))
                .arg(owner)
                .arg(ttl.as_millis().clamp(1, u128::from(u32::MAX)) as u64)
                .arg(held_for)
                .invoke_async(&mut conn)
                .await,
        )?;
        Ok((fence > 0).then_some(fence))
    }

    fn redis_key(&self, key: &StoreKey, part: &str) -> String {
        format!("{}{{{}}}:{part}", self.inner.prefix, key.as_str())
    }

    fn message(kind: char, key: &StoreKey, fence: u64) -> String {
        format!("{kind}:{}:{fence}", key.as_str())
    }

    fn seal(&self, key: &StoreKey, token: &SharedToken) -> Result<Vec<u8>, StoreError> {
        // What `open_blob` reads back.
        if token.secret.expose().len() > MAX_SECRET {
            return Err(StoreError::TooLarge(token.secret.expose().len()));
        }
        let mut plain = Vec::with_capacity(16 + token.secret.expose().len());
        plain.extend_from_slice(&millis(token.issued_at).to_be_bytes());
        plain.extend_from_slice(&millis(token.expires_at).to_be_bytes());
        plain.extend_from_slice(token.secret.expose().as_bytes());
        let aad = format!("{}:{}", key.as_str(), token.fence);
        let nonce = XChaCha20Poly1305::generate_nonce(&mut OsRng);
        let sealed = self
            .inner
            .cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: &plain,
                    aad: aad.as_bytes(),
                },
            )
            .map_err(|_| StoreError::Unreadable("the token could not be encrypted".into()))?;
        let mut blob = nonce.to_vec();
        blob.extend_from_slice(&sealed);
        Ok(blob)
    }

    fn open_blob(
        &self,
        key: &StoreKey,
        fence: u64,
        blob: &[u8],
    ) -> Result<SharedToken, StoreError> {
        const NONCE: usize = 24;
        if blob.len() < NONCE + 16 + 16 || blob.len() > MAX_SECRET + NONCE + 32 {
            return Err(StoreError::Unreadable(
                "the stored token has the wrong size".into(),
            ));
        }
        let (nonce, sealed) = blob.split_at(NONCE);
        let aad = format!("{}:{fence}", key.as_str());
        let plain = self
            .inner
            .cipher
            .decrypt(XNonce::from_slice(nonce), Payload { msg: sealed, aad: aad.as_bytes() })
            .map_err(|_| {
                StoreError::Unreadable(
                    "the stored token does not decrypt: is every replica given the same encryption key?"
                        .into(),
                )
            })?;
        let at = |b: &[u8]| {
            UNIX_EPOCH + Duration::from_millis(u64::from_be_bytes(b.try_into().unwrap_or_default()))
        };
        let secret = std::str::from_utf8(&plain[16..])
            .map_err(|_| StoreError::Unreadable("the stored token is not text".into()))?;
        Ok(SharedToken::new(
            fence,
            Secret::new(secret),
            at(&plain[..8]),
            at(&plain[8..16]),
        ))
    }

    fn spawn_listener(&self) {
        let mut slot = self
            .inner
            .listener
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if slot.as_ref().is_some_and(|task| !task.is_finished()) {
            return;
        }
        let Ok(runtime) = Handle::try_current() else {
            tracing::warn!(
                "no Tokio runtime: shared token notices are not received (replicas poll instead)"
            );
            return;
        };
        let client = self.inner.client.clone();
        let channel = self.inner.channel.clone();
        let listeners = Arc::clone(&self.inner.listeners);
        let trouble = Arc::clone(&self.inner.trouble);
        *slot = Some(
            runtime
                .spawn(listen(client, channel, listeners, trouble))
                .abort_handle(),
        );
    }
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.inner.prefix)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl TokenStore for RedisStore {
    fn key_for(&self, identity: &str) -> StoreKey {
        let hash = blake3::keyed_hash(&self.inner.names, identity.as_bytes());
        StoreKey::new(&hash.to_hex()[..32])
    }

    async fn load(&self, key: &StoreKey) -> Result<Option<SharedToken>, StoreError> {
        self.keep_listening();
        let name = self.redis_key(key, "token");
        type Fields = (Option<u64>, Option<Vec<u8>>, Option<String>);
        let ((fence, blob, rejected), ttl_ms): (Fields, i64) = self
            .again_once(|mut conn| {
                let name = name.clone();
                async move {
                    redis::pipe()
                        .atomic()
                        .cmd("HMGET")
                        .arg(&name)
                        .arg("fence")
                        .arg("blob")
                        .arg("rejected")
                        .cmd("PTTL")
                        .arg(&name)
                        .query_async(&mut conn)
                        .await
                }
            })
            .await?;
        let (Some(fence), Some(blob)) = (fence, blob) else {
            return Ok(None);
        };
        // Its expiry is Redis's: the key's remaining TTL, counted from this machine's now,
        // whatever the clock of the replica that wrote it (or this one's) says.
        let Ok(ttl_ms @ 1..) = u64::try_from(ttl_ms) else {
            return Ok(None);
        };
        let token = self
            .open_blob(key, fence, &blob)?
            .expiring_in(Duration::from_millis(ttl_ms));
        Ok(Some(token.with_rejected(rejected.as_deref() == Some("1"))))
    }

    async fn acquire(
        &self,
        key: &StoreKey,
        owner: &str,
        ttl: Duration,
    ) -> Result<Option<u64>, StoreError> {
        self.take(key, owner, ttl, None).await
    }

    async fn take_over(
        &self,
        key: &StoreKey,
        owner: &str,
        ttl: Duration,
        held_for: Duration,
    ) -> Result<Option<u64>, StoreError> {
        self.take(key, owner, ttl, Some(held_for)).await
    }

    async fn install(
        &self,
        key: &StoreKey,
        owner: &str,
        token: &SharedToken,
    ) -> Result<Install, StoreError> {
        let blob = self.seal(key, token)?;
        // Its time to live by the writer's clock: Redis's TTL is then every reader's expiry.
        let ttl = token
            .time_to_live()
            .as_millis()
            .clamp(1, 400 * 24 * 3600 * 1000) as u64;
        let mut conn = self.inner.conn.clone();
        let current: u64 = self.answered(
            self.inner
                .scripts
                .install
                .key(self.redis_key(key, "token"))
                .key(self.redis_key(key, "lease"))
                .key(self.redis_key(key, "fence"))
                .key(self.redis_key(key, "lease-since"))
                .arg(token.fence)
                .arg(blob)
                .arg(ttl)
                .arg(owner)
                .arg(&self.inner.channel)
                .arg(Self::message('i', key, token.fence))
                .invoke_async(&mut conn)
                .await,
        )?;
        Ok(if current == 0 {
            Install::Installed
        } else {
            Install::Superseded { current }
        })
    }

    async fn renew(&self, key: &StoreKey, owner: &str, ttl: Duration) -> Result<bool, StoreError> {
        let lease = self.redis_key(key, "lease");
        let ttl = ttl.as_millis().clamp(1, u128::from(u32::MAX)) as u64;
        let renewed: u64 = self
            .again_once(|mut conn| {
                let mut call = self.inner.scripts.renew.key(&lease);
                call.arg(owner).arg(ttl);
                async move { call.invoke_async(&mut conn).await }
            })
            .await?;
        Ok(renewed == 1)
    }

    async fn release(&self, key: &StoreKey, owner: &str) -> Result<(), StoreError> {
        let (lease, message) = (self.redis_key(key, "lease"), Self::message('l', key, 0));
        let since = self.redis_key(key, "lease-since");
        let _: Value = self
            .again_once(|mut conn| {
                let mut call = self.inner.scripts.release.key(&lease);
                call.key(&since);
                call.arg(owner).arg(&self.inner.channel).arg(&message);
                async move { call.invoke_async(&mut conn).await }
            })
            .await?;
        Ok(())
    }

    async fn reject(&self, key: &StoreKey, fence: u64) -> Result<bool, StoreError> {
        let (token, message) = (self.redis_key(key, "token"), Self::message('r', key, fence));
        let marked: u64 = self
            .again_once(|mut conn| {
                let mut call = self.inner.scripts.reject.key(&token);
                call.arg(fence).arg(&self.inner.channel).arg(&message);
                async move { call.invoke_async(&mut conn).await }
            })
            .await?;
        Ok(marked == 1)
    }

    fn listen(&self, notices: Notices) {
        self.inner
            .listeners
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(notices);
        self.spawn_listener();
    }

    fn trouble(&self) -> Option<String> {
        self.inner
            .trouble
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notices::parse;
    use tokenwarden_core::store::NoticeKind;

    #[test]
    fn notices_parse_and_foreign_messages_are_ignored() {
        let n = parse("i:abc:7").unwrap();
        assert_eq!(
            (n.key.as_str(), n.fence, n.kind),
            ("abc", 7, NoticeKind::Installed)
        );
        assert_eq!(parse("r:abc:2").unwrap().kind, NoticeKind::Rejected);
        assert_eq!(parse("l:abc:0").unwrap().kind, NoticeKind::Released);
        for junk in ["", "x:abc:1", "i:abc", "i:abc:notanumber", "i"] {
            assert!(parse(junk).is_none(), "{junk:?}");
        }
    }

    #[test]
    fn a_bad_key_is_refused_without_showing_it() {
        assert_eq!(EncryptionKey::from_hex("zz").unwrap_err(), BadKey);
        let not_hex = "g".repeat(64);
        assert_eq!(EncryptionKey::from_hex(&not_hex).unwrap_err(), BadKey);
        let key = EncryptionKey::from_hex(&"ab".repeat(32)).unwrap();
        assert_eq!(format!("{key:?}"), "EncryptionKey([redacted])");
        assert!(!BadKey.to_string().contains("gggg"));
    }
}
