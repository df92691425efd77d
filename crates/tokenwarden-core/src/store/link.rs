//! One cache's link to the store: the source wrapper that asks the store before the issuer,
//! and the notices that reach the cache.

use std::fmt;
use std::pin::pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, SystemTime};

use futures_util::future::{Either, select};

use async_trait::async_trait;
use tokio::runtime::Handle;
use tokio::sync::Notify;
use tokio::time::Instant;
use tracing::Instrument;

use super::{
    Hub, Install, Notice, NoticeKind, SharedToken, SharedTokens, StoreError, StoreKey, bump,
};
use crate::{CacheConfig, FetchError, Token, TokenSource};

/// What a cache hears from the store through its link (the cache implements it, so that the
/// store needs nothing of the cache).
pub(crate) trait Listener: Send + Sync {
    /// Another replica installed the token numbered `fence`.
    fn shared_installed(&self, fence: u64);
    /// Another replica rejected the token numbered `fence`.
    fn shared_rejected(&self, fence: u64);
}

/// The fencing number a token was shared under, kept in its metadata.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Fence(pub(crate) u64);

/// A cache's place in the store: its key and the token it last took.
pub(crate) struct Link {
    hub: Arc<Hub>,
    key: StoreKey,
    /// The highest fencing number handed to the cache (0: none yet). A fetch asks for a
    /// token newer than it.
    last: AtomicU64,
    /// Wakes this cache's fetch waiting for another replica's.
    notify: Notify,
    cache: OnceLock<Weak<dyn Listener>>,
    /// The cache's settings: its default lifetime, skew margin and fetch timeout (a waiter
    /// waits at most half of it).
    config: Arc<CacheConfig>,
}

impl Link {
    pub(crate) fn new(
        shared: &SharedTokens,
        identity: &str,
        config: Arc<CacheConfig>,
    ) -> Arc<Self> {
        let hub = Arc::clone(shared.hub());
        let key = hub.store.key_for(identity);
        let link = Arc::new(Self {
            key: key.clone(),
            last: AtomicU64::new(0),
            notify: Notify::new(),
            cache: OnceLock::new(),
            config,
            hub,
        });
        link.hub.register(&key, &link);
        link
    }

    /// The cache it serves (set once, as the cache is made).
    pub(crate) fn attach(&self, cache: Weak<dyn Listener>) {
        let _ = self.cache.set(cache);
    }

    /// `source`, asking the store first.
    pub(crate) fn wrap(self: &Arc<Self>, source: Arc<dyn TokenSource>) -> Arc<dyn TokenSource> {
        Arc::new(SharedSource {
            link: Arc::clone(self),
            source,
        })
    }

    /// The cache dropped a token after a rejection: tell every replica (in the background,
    /// and again once the store answers if it is in trouble now).
    pub(crate) fn rejected(self: &Arc<Self>, fence: u64) {
        self.send_rejection(Rejection::Fence(fence));
    }

    /// The application revoked the cache's tokens: the key's shared token, whichever replica
    /// fetched it, is marked rejected for every replica.
    pub(crate) fn revoked(self: &Arc<Self>) {
        self.send_rejection(Rejection::IssuedBefore(SystemTime::now()));
    }

    /// Marks a token rejected in the store, in the background; while the store is in trouble,
    /// tried again on a doubling beat from the pause after trouble, for up to about ten
    /// minutes (a token rejected while Redis was down would otherwise stay in the store for
    /// the other replicas to serve).
    fn send_rejection(self: &Arc<Self>, which: Rejection) {
        let Ok(runtime) = Handle::try_current() else {
            return;
        };
        let link = Arc::clone(self);
        runtime.spawn(async move {
            let hub = &*link.hub;
            let mut wait = hub.settings.pause_after_trouble.max(Duration::from_millis(100));
            let give_up_at = Instant::now() + Duration::from_secs(600);
            loop {
                let sent = async {
                    let fence = match which {
                        Rejection::Fence(fence) => fence,
                        // A revocation sent late must not reject a token fetched after it
                        // (its issue time is counted from the store's TTL, not a clock).
                        Rejection::IssuedBefore(revoked_at) => {
                            match hub.call(hub.store.load(&link.key)).await? {
                                Some(found) if !found.rejected && found.issued_at < revoked_at => {
                                    found.fence
                                }
                                _ => return Ok((false, 0)),
                            }
                        }
                    };
                    let marked = hub.call(hub.store.reject(&link.key, fence)).await?;
                    Ok::<_, StoreError>((marked, fence))
                }
                .await;
                match sent {
                    Ok((true, fence)) => {
                        bump(&hub.counters.rejections_sent);
                        tracing::debug!(key = %link.key, fence, "rejection shared with every replica");
                        return;
                    }
                    Ok(_) => return,
                    Err(_) if Instant::now() + wait > give_up_at => return,
                    Err(_) => {
                        tokio::time::sleep(wait).await;
                        wait = (wait * 2).min(Duration::from_secs(30));
                    }
                }
            }
        });
    }

    pub(crate) fn notice(&self, notice: &Notice) {
        self.wake();
        let Some(cache) = self.cache.get().and_then(Weak::upgrade) else {
            return;
        };
        match notice.kind {
            // While the store is paused the cache would refresh from the issuer, not the
            // store: it keeps its own token until its own refresh instead.
            NoticeKind::Installed if !self.hub.is_down() => cache.shared_installed(notice.fence),
            NoticeKind::Installed => {}
            NoticeKind::Rejected => cache.shared_rejected(notice.fence),
            NoticeKind::Released => {}
        }
    }

    pub(crate) fn wake(&self) {
        self.notify.notify_waiters();
    }

    /// Whether a stored token may be handed to the cache instead of fetching.
    fn usable(&self, found: &SharedToken, last: u64) -> bool {
        // Taken only with a fifth of its life left, and twice the skew margin the cache would
        // take off it.
        let remaining = found.remaining();
        let lifetime = found.lifetime();
        !found.rejected
            && found.fence > last
            && remaining > (lifetime / 5).max(self.config.skew_margin(lifetime) * 2)
    }

    /// A stored token, for the cache.
    fn adopt(&self, found: SharedToken) -> Token {
        bump(&self.hub.counters.adopted);
        self.last.store(found.fence, Ordering::Relaxed);
        Token::new(found.secret)
            .with_expires_at(found.expires_at)
            .with_metadata(Fence(found.fence))
    }

    /// A token this replica fetched under lease `fence`.
    fn own(&self, token: Token, fence: u64) -> Token {
        self.last.store(fence, Ordering::Relaxed);
        token.with_metadata(Fence(fence))
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.hub.unregister(&self.key);
    }
}

impl fmt::Debug for Link {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Link")
            .field("key", &self.key)
            .field("last", &self.last.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// What [`Link::send_rejection`] marks rejected.
#[derive(Clone, Copy)]
enum Rejection {
    /// The token with this fencing number (seen rejected here).
    Fence(u64),
    /// The key's shared token if it was fetched before this moment (a revocation).
    IssuedBefore(SystemTime),
}

/// The source a shared cache fetches from: the store first, the issuer under a lease.
struct SharedSource {
    link: Arc<Link>,
    source: Arc<dyn TokenSource>,
}

#[async_trait]
impl TokenSource for SharedSource {
    async fn fetch(&self) -> Result<Token, FetchError> {
        let span = tracing::debug_span!("tokenwarden.shared", key = %self.link.key);
        self.fetch_shared().instrument(span).await
    }
}

impl SharedSource {
    async fn fetch_shared(&self) -> Result<Token, FetchError> {
        let link = &*self.link;
        let hub = &*link.hub;
        if hub.is_down() {
            return self.direct().await;
        }
        let last = link.last.load(Ordering::Relaxed);
        let settings = &hub.settings;
        // A live holder renews its lease while it fetches, and a dead one's runs out within
        // the TTL, when a waiter takes it over. Half the fetch timeout is the most a waiter
        // waits (the builder checks that this covers a takeover): the other half is for its
        // own fetch, should the store keep the lease from everyone.
        let patience = link.config.fetch_timeout / 2;
        let mut give_up_at = Instant::now() + patience;
        let mut took_over = false;
        loop {
            let notified = link.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            match hub.call(hub.store.load(&link.key)).await {
                Err(_) => return self.direct().await,
                Ok(Some(found)) if link.usable(&found, last) => {
                    tracing::debug!(fence = found.fence, "token taken from the store");
                    return Ok(link.adopt(found));
                }
                Ok(_) => {}
            }
            // Owned by this request for it alone: nothing but this flight can renew or let
            // go of what it takes.
            let lease = Lease::new(&self.link);
            let acquired = hub
                .call(
                    hub.store
                        .acquire(&link.key, &lease.owner, settings.lease_ttl),
                )
                .await;
            match acquired {
                Err(_) => {
                    // It may have been taken all the same, or be taken when the request
                    // reaches the store late: `lease`, dropped armed, lets it go, sent even
                    // though the store is now paused, and after the request on its connection.
                    drop(lease);
                    return self.direct().await;
                }
                Ok(Some(fence)) => {
                    let mut lease = lease;
                    // A holder may have installed its token (and let go of the lease) between
                    // the load above and this lease: look once more before fetching.
                    let again = hub.call(hub.store.load(&link.key)).await;
                    if let Ok(Some(found)) = again
                        && link.usable(&found, last)
                    {
                        lease.release().await;
                        tracing::debug!(fence = found.fence, "token taken from the store");
                        return Ok(link.adopt(found));
                    }
                    return self.fetch_holding(lease, fence, last, false).await;
                }
                Ok(None) => lease.disarm(),
            }
            let now = Instant::now();
            if now >= give_up_at && !took_over {
                // The holder has held the lease at least as long as this replica waited: stuck
                // (its issuer call hangs while it renews). The first waiter to get here takes
                // the lease over and fetches for every replica; the others, finding the lease
                // just taken, wait on for its token, a while longer.
                took_over = true;
                let lease = Lease::new(&self.link);
                match hub
                    .call(hub.store.take_over(
                        &link.key,
                        &lease.owner,
                        settings.lease_ttl,
                        patience,
                    ))
                    .await
                {
                    Ok(Some(fence)) => {
                        tracing::warn!(
                            waited_ms = patience.as_millis() as u64,
                            fence,
                            "another replica held the lease without installing a token; taking it over"
                        );
                        bump(&hub.counters.take_overs);
                        return self.fetch_holding(lease, fence, last, true).await;
                    }
                    Ok(None) => {
                        lease.disarm();
                        give_up_at = now + patience / 2;
                        continue;
                    }
                    Err(_) => {
                        drop(lease);
                        return self.direct().await;
                    }
                }
            }
            if now >= give_up_at {
                tracing::warn!(
                    waited_ms = patience.as_millis() as u64,
                    "another replica kept the lease without installing a token; fetching without it"
                );
                return self.direct_or_installed(last).await;
            }
            bump(&hub.counters.waits);
            let wait = settings.poll_interval.min(give_up_at - now);
            let _ = tokio::time::timeout(wait, notified).await;
        }
    }

    /// An issuer call without the store. `last` stays: a stored token older than it (one
    /// this replica may have seen rejected while the store was paused) is never taken.
    async fn direct(&self) -> Result<Token, FetchError> {
        bump(&self.link.hub.counters.direct_fetches);
        self.source.fetch().await
    }

    /// An issuer call without the store, after waiting long for a holder: a token the holder
    /// installs meanwhile is taken if it comes first.
    async fn direct_or_installed(&self, last: u64) -> Result<Token, FetchError> {
        // (No `tokio::select!`: this crate does not take Tokio's macros.)
        match select(pin!(self.direct()), pin!(self.installed(last))).await {
            Either::Left((fetched, _)) => fetched,
            Either::Right((found, _)) => Ok(self.link.adopt(found)),
        }
    }

    /// A usable token newer than fence `above`, once another replica installs one: looked
    /// for on each notice of the key, and on the poll beat.
    async fn installed(&self, above: u64) -> SharedToken {
        let link = &*self.link;
        let hub = &*link.hub;
        loop {
            let notified = link.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let _ = tokio::time::timeout(hub.settings.poll_interval, notified).await;
            if let Ok(Some(found)) = hub.timed(hub.store.load(&link.key)).await
                && link.usable(&found, above)
            {
                return found;
            }
        }
    }

    /// Fetches for every replica under lease `fence` (renewed while the issuer is asked),
    /// and installs the token.
    async fn fetch_holding(
        &self,
        mut lease: Lease,
        fence: u64,
        last: u64,
        took_over: bool,
    ) -> Result<Token, FetchError> {
        let link = &*self.link;
        let hub = &*link.hub;
        bump(&hub.counters.leases);
        let sent = SystemTime::now();
        bump(&hub.counters.issuer_fetches);
        let fetched = {
            let _renewing = lease.renew_while_fetching();
            // Another replica may install a usable token first: one that took this lease over
            // (this issuer call seemed stuck), or, after this replica took a lease over, the
            // slow holder it took it from. That token serves this replica's callers too. A
            // holder looks once a take-over could have happened (a waiter waits half the fetch
            // timeout first), so a fetch that ends sooner costs the store nothing more; a
            // replica that took over looks at once.
            let look_from = if took_over {
                Duration::ZERO
            } else {
                link.config.fetch_timeout / 2
            };
            let other = async {
                tokio::time::sleep(look_from).await;
                self.installed(last).await
            };
            match select(pin!(self.source.fetch()), pin!(other)).await {
                Either::Left((fetched, _)) => fetched,
                Either::Right((found, _)) => {
                    // The lease stays armed: let go (a no-op if it was taken over).
                    tracing::info!(
                        fence,
                        shared = found.fence,
                        "another replica shared a token while this one was fetched; taking that one"
                    );
                    return Ok(link.adopt(found));
                }
            }
        };
        let token = match fetched {
            Ok(token) => token,
            Err(error) => {
                lease.release().await;
                return Err(error);
            }
        };
        let expires_at = sent + link.config.stated_lifetime(token.expiry(), sent);
        if expires_at <= SystemTime::now() {
            // Expired on arrival: not shared (it would replace a valid token in the store);
            // the cache refuses it as a failed fetch.
            lease.release().await;
            return Ok(link.own(token, fence));
        }
        let shared = SharedToken::new(fence, token.secret().clone(), sent, expires_at);
        if hub.is_down() {
            // The store was paused meanwhile (perhaps by another key's trouble): the issuer
            // call already paid for still goes to every replica, in the background, and this
            // request does not wait for the store again.
            if let Ok(runtime) = Handle::try_current() {
                let (task_link, owner) = (Arc::clone(&self.link), Arc::clone(&lease.owner));
                lease.armed = false;
                runtime.spawn(async move {
                    let hub = &*task_link.hub;
                    if let Ok(Install::Installed) = hub
                        .call_anyway(hub.store.install(&task_link.key, &owner, &shared))
                        .await
                    {
                        bump(&hub.counters.installed);
                    }
                });
            }
            return Ok(link.own(token, fence));
        }
        match hub
            .call(hub.store.install(&link.key, &lease.owner, &shared))
            .await
        {
            Ok(Install::Installed) => {
                lease.armed = false;
                bump(&hub.counters.installed);
                tracing::debug!(fence, "token fetched and shared");
                Ok(link.own(token, fence))
            }
            Ok(Install::Superseded { current }) => {
                lease.armed = false;
                bump(&hub.counters.superseded);
                tracing::info!(
                    fence,
                    current,
                    "a newer token was shared while this one was fetched; taking that one"
                );
                match hub.call(hub.store.load(&link.key)).await {
                    Ok(Some(found)) if link.usable(&found, last) => Ok(link.adopt(found)),
                    _ => Ok(link.own(token, fence)),
                }
            }
            // The lease is let go in the background, or runs out.
            Err(_) => Ok(link.own(token, fence)),
        }
    }
}

/// A lease this replica asked for, under an owner id of its own (one per acquire: a flight
/// superseded and dropped late cannot let go of, or renew, the next flight's lease): let go
/// of in the background if the fetch under it is cancelled (a fetch timeout, a revocation, a
/// runtime shutting down) or its request went unanswered, before it is installed or released.
/// Releases and renewals are sent even while the store is paused after trouble (the trouble
/// may be this very request, reaching the store late).
struct Lease {
    link: Arc<Link>,
    owner: Arc<str>,
    armed: bool,
}

impl Lease {
    fn new(link: &Arc<Link>) -> Self {
        Self {
            link: Arc::clone(link),
            owner: format!("{:032x}", fastrand::u128(..)).into(),
            armed: true,
        }
    }

    /// Not taken: nothing to let go of.
    fn disarm(mut self) {
        self.armed = false;
    }

    /// Lets go of it now (it stays armed if the store does not answer).
    async fn release(&mut self) {
        let link = &self.link;
        if link
            .hub
            .call_anyway(link.hub.store.release(&link.key, &self.owner))
            .await
            .is_ok()
        {
            self.armed = false;
        }
    }

    /// Renews the lease every third of its TTL until the returned guard is dropped, so that
    /// a slow issuer call is not taken for a dead holder. A renewal that fails is tried again
    /// on the next beat, until the lease is certainly lost: the store says it is another's,
    /// or a whole TTL has passed since the last renewal it confirmed.
    fn renew_while_fetching(&self) -> Option<AbortOnDrop> {
        let runtime = Handle::try_current().ok()?;
        let link = Arc::clone(&self.link);
        let owner = Arc::clone(&self.owner);
        let ttl = link.hub.settings.lease_ttl;
        let task = runtime.spawn(async move {
            // On a fixed beat (a slow answer does not push the next renewal back); the builder
            // checks that three store timeouts fit in a lease.
            let mut beat = tokio::time::interval(ttl / 3);
            beat.tick().await;
            let mut held_until = Instant::now() + ttl;
            loop {
                beat.tick().await;
                let asked = Instant::now();
                match link
                    .hub
                    .call_anyway(link.hub.store.renew(&link.key, &owner, ttl))
                    .await
                {
                    Ok(true) => held_until = asked + ttl,
                    // Taken over, or run out: the fence decides at install.
                    Ok(false) => return,
                    Err(_) if Instant::now() >= held_until => return,
                    Err(_) => {}
                }
            }
        });
        Some(AbortOnDrop(task.abort_handle()))
    }
}

struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        if let Ok(runtime) = Handle::try_current() {
            let link = Arc::clone(&self.link);
            let owner = Arc::clone(&self.owner);
            runtime.spawn(async move {
                let _ = link
                    .hub
                    .call_anyway(link.hub.store.release(&link.key, &owner))
                    .await;
            });
        }
    }
}
