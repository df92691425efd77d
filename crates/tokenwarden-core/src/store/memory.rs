//! A store in this process's memory.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use tokio::time::Instant;

use super::{Install, Notice, NoticeKind, Notices, SharedToken, StoreError, StoreKey, TokenStore};

/// A [`TokenStore`] in this process's memory: the caches of one process share their tokens
/// through it, as replicas do through Redis. Cheap to clone (clones share the store).
///
/// It also serves tests: several [`SharedTokens`](super::SharedTokens) on one `MemoryStore`
/// behave as replicas on one Redis, with the same leases, fences and notices. Lease TTLs
/// follow Tokio's clock, so `tokio::time::pause` applies to them.
#[derive(Clone, Default)]
pub struct MemoryStore {
    inner: Arc<Shared>,
}

#[derive(Default)]
struct Shared {
    keys: Mutex<HashMap<StoreKey, Entry>>,
    listeners: Mutex<Vec<Notices>>,
}

#[derive(Default)]
struct Entry {
    token: Option<SharedToken>,
    /// The holder, until when it holds, and since when.
    lease: Option<(Box<str>, Instant, Instant)>,
    /// The highest fencing number given out or installed.
    fence: u64,
}

impl MemoryStore {
    /// An empty store.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    fn with_entry<T>(&self, key: &StoreKey, f: impl FnOnce(&mut Entry) -> T) -> T {
        let mut keys = self
            .inner
            .keys
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        f(keys.entry(key.clone()).or_default())
    }

    fn tell(&self, key: &StoreKey, fence: u64, kind: NoticeKind) {
        let notice = Notice {
            key: key.clone(),
            fence,
            kind,
        };
        let listeners: Vec<Notices> = {
            let mut listeners = self
                .inner
                .listeners
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            listeners.retain(|l| !l.is_closed());
            listeners.clone()
        };
        for listener in listeners {
            listener.deliver(&notice);
        }
    }
}

impl fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let keys = self
            .inner
            .keys
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len();
        f.debug_struct("MemoryStore").field("keys", &keys).finish()
    }
}

impl MemoryStore {
    /// The lease for `owner` if it is free, or (with `held_for`) held at least that long.
    #[allow(clippy::unnecessary_wraps)] // the store's signature
    fn take(
        &self,
        key: &StoreKey,
        owner: &str,
        ttl: Duration,
        held_for: Option<Duration>,
    ) -> Result<Option<u64>, StoreError> {
        let now = Instant::now();
        Ok(self.with_entry(key, |e| {
            if let Some((_, until, since)) = &e.lease
                && now < *until
                && held_for.is_none_or(|held| now.saturating_duration_since(*since) < held)
            {
                return None;
            }
            e.fence += 1;
            e.lease = Some((owner.into(), now + ttl, now));
            Some(e.fence)
        }))
    }
}

fn release_if(entry: &mut Entry, owner: &str) -> bool {
    if entry.lease.as_ref().is_some_and(|(o, _, _)| &**o == owner) {
        entry.lease = None;
        true
    } else {
        false
    }
}

#[async_trait]
impl TokenStore for MemoryStore {
    fn key_for(&self, identity: &str) -> StoreKey {
        StoreKey::new(identity)
    }

    async fn load(&self, key: &StoreKey) -> Result<Option<SharedToken>, StoreError> {
        let keys = self
            .inner
            .keys
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        Ok(keys
            .get(key)
            .and_then(|e| e.token.clone())
            .filter(|t| t.expires_at > SystemTime::now()))
    }

    async fn acquire(
        &self,
        key: &StoreKey,
        owner: &str,
        ttl: Duration,
    ) -> Result<Option<u64>, StoreError> {
        self.take(key, owner, ttl, None)
    }

    async fn take_over(
        &self,
        key: &StoreKey,
        owner: &str,
        ttl: Duration,
        held_for: Duration,
    ) -> Result<Option<u64>, StoreError> {
        self.take(key, owner, ttl, Some(held_for))
    }

    async fn install(
        &self,
        key: &StoreKey,
        owner: &str,
        token: &SharedToken,
    ) -> Result<Install, StoreError> {
        let outcome = self.with_entry(key, |e| {
            let current = e.token.as_ref().map_or(0, |t| t.fence);
            release_if(e, owner);
            if token.fence <= current {
                return Install::Superseded { current };
            }
            // Kept for its time to live, as a store that keeps its own expiry keeps it.
            e.token = Some(
                token
                    .clone()
                    .with_rejected(false)
                    .expiring_in(token.time_to_live()),
            );
            e.fence = e.fence.max(token.fence);
            Install::Installed
        });
        if outcome == Install::Installed {
            self.tell(key, token.fence, NoticeKind::Installed);
        }
        Ok(outcome)
    }

    async fn renew(&self, key: &StoreKey, owner: &str, ttl: Duration) -> Result<bool, StoreError> {
        let now = Instant::now();
        Ok(self.with_entry(key, |e| match &mut e.lease {
            Some((holder, until, _)) if &**holder == owner && now < *until => {
                *until = now + ttl;
                true
            }
            _ => false,
        }))
    }

    async fn release(&self, key: &StoreKey, owner: &str) -> Result<(), StoreError> {
        if self.with_entry(key, |e| release_if(e, owner)) {
            self.tell(key, 0, NoticeKind::Released);
        }
        Ok(())
    }

    async fn reject(&self, key: &StoreKey, fence: u64) -> Result<bool, StoreError> {
        let marked = self.with_entry(key, |e| match &mut e.token {
            Some(t) if t.fence == fence && !t.rejected => {
                t.rejected = true;
                true
            }
            _ => false,
        });
        if marked {
            self.tell(key, fence, NoticeKind::Rejected);
        }
        Ok(marked)
    }

    fn listen(&self, notices: Notices) {
        self.inner
            .listeners
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(notices);
    }
}
