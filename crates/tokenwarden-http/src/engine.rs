//! [`Engine`]: the per-request algorithm, once, for every adapter.
//!
//! Some 680 lines, 150 of them unit tests and 100 docs: the request's path through a layer
//! reads best in one place.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderMap, Response, StatusCode};
use http_body::Body;
use tokenwarden_core::future::GetOwned;
use tokenwarden_core::{HeldOff, Invalidation, KeyHandle, Route, Snapshot, TokenCache, TokenId};
use tokenwarden_origin::InsecureTransport;
use tokio::time::Sleep;

use crate::body::{DRAIN_LIMIT, DRAIN_TIME, PrefixedBody, ResponseBody};
use crate::keys::{Choice, ChooseCache, KeyError, RequestView};
use crate::policy::{LayerPolicy, NotReplayed, Replay, Verdict, record_acceptance};

/// What an HTTP layer does per request, written once: the tower layer and the reqwest
/// middleware only adapt their request, response and body types to it.
///
/// For one request, in this order:
///
/// 1. [`admit`](Self::admit): opted out ([`SkipToken`](crate::SkipToken)), outside the scope
///    or carrying the caller's own credentials → sent untouched, **before any token is
///    fetched**; plain text off loopback → refused, unsent.
/// 2. The adapter takes a token ([`TokenCache::get`]), keeps what a replay needs (the request
///    head before the token went on, and its body if it can be kept within
///    [`LayerPolicy::max_replay_body`]), puts the token on and sends.
/// 3. [`screen`](Self::screen) the answer by status and headers. Accepted (the common case):
///    it goes to the caller, and the token is marked as having worked.
/// 4. Otherwise [`recover`](Self::recover): read the start of the body if the classifier asks
///    (bounded in bytes and in time), invalidate the token, and get a fresh one **while the
///    rejected body drains**; it resolves to the response to hand back (marked
///    [`Replay::NotReplayed`]) or to the request to send again.
/// 5. The adapter sends the replay once, and [`replayed`](Self::replayed) marks its answer.
///    The replay's answer is judged by status and headers only: a classifier's
///    [`Verdict::InspectBody`] for it hands it to the caller as it is, the fresh token neither
///    invalidated nor marked as having worked.
///
/// The rejection path uses Tokio's timers (the inspection and drain limits), as the cache
/// does: it runs on a Tokio runtime with time enabled.
///
/// Cloning is one reference count.
#[derive(Clone)]
pub struct Engine {
    settings: Arc<Settings>,
}

#[derive(Clone)]
struct Settings {
    tokens: Tokens,
    policy: LayerPolicy,
}

/// Where an engine's tokens come from.
#[derive(Clone)]
enum Tokens {
    /// One cache for every request.
    One(TokenCache),
    /// A keyed cache, the key chosen per request.
    Keyed(Arc<dyn ChooseCache>),
}

impl Engine {
    /// An engine putting `cache`'s tokens on requests as `policy` says (a [`Scope`](tokenwarden_origin::Scope) alone is
    /// a policy with the default rules).
    pub fn new(cache: TokenCache, policy: impl Into<LayerPolicy>) -> Self {
        Self {
            settings: Arc::new(Settings {
                tokens: Tokens::One(cache),
                policy: policy.into(),
            }),
        }
    }

    /// An engine taking each request's token from the cache of the request's key, chosen by
    /// `keys` (see [`by_extension`](crate::adapter::by_extension) and [`by_key`](crate::adapter::by_key)): a request without a key is
    /// refused before anything is sent ([`KeyError`]).
    #[must_use]
    pub fn keyed(keys: impl ChooseCache, policy: impl Into<LayerPolicy>) -> Self {
        Self {
            settings: Arc::new(Settings {
                tokens: Tokens::Keyed(Arc::new(keys)),
                policy: policy.into(),
            }),
        }
    }

    /// The cache tokens come from (`None` for a keyed engine: each request's key chooses).
    #[must_use]
    pub fn cache(&self) -> Option<&TokenCache> {
        match &self.settings.tokens {
            Tokens::One(cache) => Some(cache),
            Tokens::Keyed(_) => None,
        }
    }

    /// The cache of a request whose key chose `key` (or the engine's own cache).
    #[must_use]
    pub fn cache_for<'a>(&'a self, key: Option<&'a KeyHandle>) -> Option<&'a TokenCache> {
        key.map(KeyHandle::cache).or_else(|| self.cache())
    }

    /// Step 1b, after [`admit`](Self::admit) let a request in: which cache its token comes
    /// from. [`Choice::Engine`] for an engine with one cache; for a keyed engine, the
    /// request's key's cache, [`Choice::OwnCredentials`] if the request already carries that
    /// cache's headers, or an error if it has no key (nothing may be sent then: never another
    /// key's token).
    ///
    /// # Errors
    ///
    /// [`KeyError`]: no key, or no cache for it.
    #[inline]
    pub fn choose<'r>(
        &self,
        request: impl FnOnce() -> RequestView<'r>,
    ) -> Result<Choice, KeyError> {
        match &self.settings.tokens {
            Tokens::One(_) => Ok(Choice::Engine),
            Tokens::Keyed(keys) => {
                let view = request();
                let (handle, token) = keys.choose(&view)?;
                if handle.cache().presentation().supplied_by(view.headers) {
                    Ok(Choice::OwnCredentials)
                } else {
                    Ok(Choice::Key(handle, token))
                }
            }
        }
    }

    /// The policy.
    #[must_use]
    pub fn policy(&self) -> &LayerPolicy {
        &self.settings.policy
    }

    /// Changes the policy (of this engine only: clones made before keep theirs).
    pub fn edit_policy(&mut self, change: impl FnOnce(LayerPolicy) -> LayerPolicy) {
        let settings = Arc::make_mut(&mut self.settings);
        settings.policy = change(settings.policy.clone());
    }

    /// Step 1: whether a request gets a token (`Ok(true)`), goes untouched (`Ok(false)`:
    /// `skip` — the caller opted out —, outside the scope, or its `headers` already carry the
    /// caller's own credentials), or is refused unsent (plain text off loopback, in scope).
    /// `authority` is the request's authority as written, if the adapter has it at hand: the
    /// usual spelling of a listed origin is then recognised without comparing parsed parts.
    ///
    /// # Errors
    ///
    /// [`InsecureTransport`], when the request is in scope but its transport may not carry
    /// the token.
    #[inline]
    pub fn admit<'a>(
        &self,
        skip: bool,
        scheme: Option<&str>,
        authority: Option<&str>,
        host_port: impl FnOnce() -> (Option<&'a str>, Option<u16>),
        headers: &HeaderMap,
    ) -> Result<bool, InsecureTransport> {
        if skip {
            return Ok(false);
        }
        let policy = &self.settings.policy;
        let spelled = match (scheme, authority) {
            (Some(scheme), Some(authority)) => policy.admit_spelled(scheme, authority),
            _ => None,
        };
        let admitted = spelled.unwrap_or_else(|| {
            let (host, port) = host_port();
            policy.admit(scheme, host, port)
        });
        self.own_credentials(admitted, headers)
    }

    /// The caller's own credentials: not ours to replace, and no token is needed.
    #[inline]
    fn own_credentials(
        &self,
        admitted: Result<bool, InsecureTransport>,
        headers: &HeaderMap,
    ) -> Result<bool, InsecureTransport> {
        match (admitted, &self.settings.tokens) {
            (Ok(false), _) => Ok(false),
            (_, Tokens::One(cache)) if cache.presentation().supplied_by(headers) => Ok(false),
            // A keyed engine checks the chosen key's presentation in `choose`.
            (admitted, _) => admitted,
        }
    }

    /// [`admit`](Self::admit) for a request's URI (the common spelling of a listed origin is
    /// recognised without parsing it).
    ///
    /// # Errors
    ///
    /// As [`admit`](Self::admit).
    #[inline]
    pub fn admit_uri(
        &self,
        skip: bool,
        uri: &http::Uri,
        headers: &HeaderMap,
    ) -> Result<bool, InsecureTransport> {
        if skip {
            return Ok(false);
        }
        self.own_credentials(self.settings.policy.admit_uri(uri), headers)
    }

    /// Step 3: what a first answer says about the token it carried. On
    /// [`Verdict::Accepted`] the token is marked as having worked, and the response goes to
    /// the caller; anything else goes to [`recover`](Self::recover).
    ///
    /// For a DPoP-bound token, a `401` asking for a nonce is [`Verdict::UseNonce`], whatever
    /// the classifier would say.
    #[inline]
    pub fn screen(&self, token: &Snapshot, status: StatusCode, headers: &HeaderMap) -> Verdict {
        if status == StatusCode::UNAUTHORIZED
            && token.is_dpop()
            && headers.contains_key(tokenwarden_core::dpop::DPOP_NONCE)
            && crate::policy::asks_for_nonce(headers)
        {
            return Verdict::UseNonce;
        }
        let verdict = self.settings.policy.classifier().classify(status, headers);
        if verdict == Verdict::Accepted {
            record_acceptance(token, status);
        }
        verdict
    }

    /// Step 4: the rejection path for a response [`screen`](Self::screen) did not accept.
    /// `kept` is what a replay needs (`K`: the adapter's request copy), or why the request
    /// cannot be sent again; `key` is the key [`choose`](Self::choose) picked, if any;
    /// `route` is the request's ([`Route::of`] its method and path), which tells a route that
    /// answers `401` for other reasons from an expired token (see
    /// [`TokenCache::reject`]).
    pub fn recover<B, K>(
        &self,
        token: Snapshot,
        response: Response<B>,
        verdict: Verdict,
        kept: Result<K, NotReplayed>,
        key: Option<KeyHandle>,
        route: Route,
    ) -> Recover<B, K>
    where
        B: Body<Data = Bytes>,
    {
        let (head, body) = response.into_parts();
        let body = Some(Box::pin(PrefixedBody::new(body)));
        let phase = match verdict {
            Verdict::InspectBody => Phase::Inspect,
            Verdict::UseNonce if token.is_dpop() => Phase::Nonce,
            Verdict::Rejected => Phase::Decide { rejected: true },
            // Not a rejection after all: handed on as it is.
            _ => Phase::Decide { rejected: false },
        };
        Recover {
            engine: self.clone(),
            key,
            route,
            token,
            head: Some(head),
            kept: Some(kept),
            phase,
            timer: None,
            fetch: None,
            body,
        }
    }

    /// Step 5: the marker for a replay's answer (put it in the response's extensions). A
    /// fresh token rejected too on the same `route` is not sent again: the route is
    /// remembered as one that answers `401` for other reasons
    /// ([`TokenCache::reject_replay`]), and the fresh token is kept.
    ///
    /// A replay with a DPoP nonce (`fresh` is then the token `rejected` names) is
    /// [`Replay::WithNonce`]: if its answer rejects the token, the token is rejected as a
    /// first answer's would be ([`TokenCache::reject`]), so the next request gets a fresh one.
    pub fn replayed(
        &self,
        key: Option<&KeyHandle>,
        rejected: TokenId,
        fresh: &Snapshot,
        status: StatusCode,
        headers: &HeaderMap,
        route: Route,
    ) -> Replay {
        let cache = self.cache_for(key);
        if fresh.id() == rejected {
            match self.settings.policy.classifier().classify(status, headers) {
                Verdict::Rejected => {
                    if let Some(cache) = cache {
                        let _ = cache.reject(rejected, route);
                    }
                }
                Verdict::Accepted => record_acceptance(fresh, status),
                _ => {}
            }
            let replay = Replay::WithNonce { token: rejected };
            if let Some(cache) = cache {
                crate::metrics::replay(cache, &replay);
            }
            return replay;
        }
        match self.settings.policy.classifier().classify(status, headers) {
            Verdict::Rejected => {
                if let Some(cache) = cache {
                    cache.reject_replay(fresh.id(), route);
                }
            }
            Verdict::Accepted => {
                record_acceptance(fresh, status);
                if let Some(cache) = cache {
                    cache.replay_accepted(fresh.id(), route);
                }
            }
            _ => {}
        }
        let replay = Replay::Replayed { rejected };
        if let Some(cache) = cache {
            crate::metrics::replay(cache, &replay);
        }
        replay
    }
}

impl fmt::Debug for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut f = f.debug_struct("Engine");
        match &self.settings.tokens {
            Tokens::One(cache) => f.field("cache", cache),
            Tokens::Keyed(keys) => f.field("keys", keys),
        };
        f.field("policy", &self.settings.policy).finish()
    }
}

/// What [`Recover`] resolves to.
#[derive(Debug)]
pub enum Recovered<B: Body, K> {
    /// Hand this response to the caller. If its token was rejected, it carries a
    /// [`Replay::NotReplayed`] extension.
    Respond(Response<ResponseBody<B>>),
    /// Send the request again: `kept` with `fresh`'s headers (and, for a DPoP-bound token, a
    /// fresh proof: [`Snapshot::prove`]) put on, once; then mark the answer with
    /// [`Engine::replayed`]. For a DPoP nonce, `fresh` is the token `rejected` names.
    Replay {
        /// What the adapter kept of the request.
        kept: K,
        /// The token to send it with.
        fresh: Snapshot,
        /// The token that was rejected.
        rejected: TokenId,
        /// The key the request was sent for, if the engine is keyed: pass it to
        /// [`Engine::replayed`], and hold it until then.
        key: Option<KeyHandle>,
        /// For a DPoP nonce's replay: the nonce the challenge named, for the proof
        /// ([`Snapshot::prove`]).
        nonce: Option<http::HeaderValue>,
    },
}

#[derive(Clone, Copy, Debug)]
enum Phase {
    /// Reading the start of the body for the classifier.
    Inspect,
    /// The verdict is in.
    Decide {
        rejected: bool,
    },
    /// Waiting for the fresh token, draining the rejected body meanwhile.
    Replace,
    /// A DPoP server asked for its nonce: the same token goes again.
    Nonce,
    Done,
}

/// The rejection path of one request ([`Engine::recover`]).
///
/// Reading the body for a classifier is bounded by [`LayerPolicy::max_inspect_body`] and
/// [`LayerPolicy::inspect_timeout`]: when the time runs out the response goes to the caller as
/// it is, with the bytes read so far still in its body. The rejected body drains (up to
/// [`DRAIN_LIMIT`] and [`DRAIN_TIME`]) while the fresh token is fetched, and the replay never
/// waits for it; if no replay follows, the caller gets the rejection with what was read still
/// in its body.
#[must_use = "futures do nothing unless polled"]
pub struct Recover<B: Body, K> {
    engine: Engine,
    /// The request's key (held: the key is not evicted while the request is in flight).
    key: Option<KeyHandle>,
    route: Route,
    token: Snapshot,
    head: Option<http::response::Parts>,
    kept: Option<Result<K, NotReplayed>>,
    phase: Phase,
    timer: Option<Pin<Box<Sleep>>>,
    fetch: Option<GetOwned>,
    // Boxed so that a body that is not `Unpin` can be read here and handed on afterwards.
    body: Option<Pin<Box<PrefixedBody<B>>>>,
}

// Nothing in it is pinned in place: the body is pinned in its own box.
impl<B: Body, K> Unpin for Recover<B, K> {}

impl<B, K> Recover<B, K>
where
    B: Body<Data = Bytes>,
{
    /// Resets the timer to fire `after` from now. A time too long to add to now
    /// (`Duration::MAX` for "no limit") is taken as thirty years, as `tokio::time::sleep` does.
    fn arm(&mut self, after: std::time::Duration) {
        const FAR: std::time::Duration = std::time::Duration::from_secs(86_400 * 365 * 30);
        let now = tokio::time::Instant::now();
        let deadline = now.checked_add(after).unwrap_or(now + FAR);
        match &mut self.timer {
            Some(sleep) => sleep.as_mut().reset(deadline),
            None => self.timer = Some(Box::pin(tokio::time::sleep_until(deadline))),
        }
    }

    fn timed_out(&mut self, cx: &mut Context<'_>) -> bool {
        self.timer
            .as_mut()
            .is_some_and(|t| t.as_mut().poll(cx).is_ready())
    }

    fn body(&mut self) -> Pin<&mut PrefixedBody<B>> {
        self.body
            .as_mut()
            .expect("the body is kept until done")
            .as_mut()
    }

    fn respond(&mut self, marker: Option<NotReplayed>) -> Recovered<B, K> {
        self.phase = Phase::Done;
        let head = self.head.take().expect("the head is kept until done");
        let body = self.body.take().expect("the body is kept until done");
        let mut response = Response::from_parts(head, ResponseBody::read_ahead(body));
        if let Some(reason) = marker {
            tracing::debug!(token = %self.token.id(), %reason, "token rejected; request not replayed");
            let replay = Replay::NotReplayed(reason);
            if let Some(cache) = self.engine.cache_for(self.key.as_ref()) {
                crate::metrics::replay(cache, &replay);
            }
            response.extensions_mut().insert(replay);
        }
        Recovered::Respond(response)
    }
}

impl<B, K> Future for Recover<B, K>
where
    B: Body<Data = Bytes>,
{
    type Output = Recovered<B, K>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        loop {
            match this.phase {
                Phase::Inspect => {
                    let limit = this.engine.policy().max_inspect_body();
                    if this.timer.is_none() {
                        this.arm(this.engine.policy().inspect_timeout());
                    }
                    if this.body().poll_read_ahead(cx, limit).is_pending() {
                        if !this.timed_out(cx) {
                            return Poll::Pending;
                        }
                        // Out of time: the response goes to the caller as it is.
                        tracing::debug!(
                            read = this.body().peek(limit).len(),
                            "response body inspection timed out; passing the response on"
                        );
                        this.phase = Phase::Decide { rejected: false };
                        continue;
                    }
                    let start = this.body().peek(limit);
                    let head = this.head.as_ref().expect("the head is kept until done");
                    let rejected = this.engine.policy().classifier().classify_body(
                        head.status,
                        &head.headers,
                        &start,
                    );
                    if !rejected {
                        record_acceptance(&this.token, head.status);
                    }
                    this.phase = Phase::Decide { rejected };
                }
                Phase::Decide { rejected: false } => return Poll::Ready(this.respond(None)),
                Phase::Decide { rejected: true } => {
                    let Some(cache) = this.engine.cache_for(this.key.as_ref()) else {
                        return Poll::Ready(this.respond(None));
                    };
                    let held_off = match cache.reject(this.token.id(), this.route) {
                        Invalidation::HeldOff(HeldOff::Route) => Some(NotReplayed::RouteRejects),
                        Invalidation::HeldOff(HeldOff::Bound) => Some(NotReplayed::HeldOff),
                        Invalidation::HeldOff(_) => Some(NotReplayed::StillRejected),
                        _ => None,
                    };
                    if let Some(reason) = held_off {
                        return Poll::Ready(this.respond(Some(reason)));
                    }
                    match this.kept.take().expect("kept until decided") {
                        Ok(kept) => {
                            this.fetch = Some(cache.get_owned());
                            this.kept = Some(Ok(kept));
                            this.arm(DRAIN_TIME);
                            this.phase = Phase::Replace;
                        }
                        Err(reason) => return Poll::Ready(this.respond(Some(reason))),
                    }
                }
                Phase::Nonce => {
                    // What of the challenge's body has arrived is read, so an HTTP/1
                    // connection can be reused; the replay does not wait for more.
                    let _ = this.body().poll_read_ahead(cx, DRAIN_LIMIT);
                    return Poll::Ready(match this.kept.take().expect("kept until decided") {
                        Ok(kept) => {
                            this.phase = Phase::Done;
                            tracing::debug!(token = %this.token.id(), "DPoP nonce asked for; replaying with it");
                            Recovered::Replay {
                                kept,
                                fresh: this.token.clone(),
                                rejected: this.token.id(),
                                key: this.key.take(),
                                nonce: this.head.as_ref().and_then(|head| {
                                    head.headers
                                        .get(tokenwarden_core::dpop::DPOP_NONCE)
                                        .cloned()
                                }),
                            }
                        }
                        // The token is kept; the proof of the next request carries the nonce.
                        Err(reason) => this.respond(Some(reason)),
                    });
                }
                Phase::Replace => {
                    let fetch = this.fetch.as_mut().expect("set when replacing");
                    let Poll::Ready(fetched) = Pin::new(fetch).poll(cx) else {
                        // Meanwhile the rejected body drains, so the connection can be reused.
                        if !this.timed_out(cx) {
                            let _ = this.body().poll_read_ahead(cx, DRAIN_LIMIT);
                        }
                        return Poll::Pending;
                    };
                    this.fetch = None;
                    let rejected = this.token.id();
                    let reason = match fetched {
                        Ok(fresh) if fresh.id() == rejected => NotReplayed::StillRejected,
                        Err(error) => NotReplayed::NoFreshToken(error),
                        Ok(fresh) => {
                            this.phase = Phase::Done;
                            let Some(Ok(kept)) = this.kept.take() else {
                                unreachable!("kept when replacing")
                            };
                            tracing::debug!(%rejected, fresh = %fresh.id(), "token rejected; replaying");
                            return Poll::Ready(Recovered::Replay {
                                kept,
                                fresh,
                                rejected,
                                key: this.key.take(),
                                nonce: None,
                            });
                        }
                    };
                    return Poll::Ready(this.respond(Some(reason)));
                }
                Phase::Done => panic!("`Recover` polled after it completed"),
            }
        }
    }
}

impl<B: Body, K> fmt::Debug for Recover<B, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Recover")
            .field("token", &self.token.id())
            .field("phase", &self.phase)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::Bytes;
    use http::{HeaderMap, Response, StatusCode};
    use http_body_util::{BodyExt, Full};
    use tokenwarden_core::{FetchError, Token, TokenCache};
    use tokenwarden_origin::Scope;

    fn route() -> tokenwarden_core::Route {
        tokenwarden_core::Route::of("GET", "/")
    }

    use super::*;

    /// Reads the body of every response: "expired" in it is a rejection.
    struct SaysExpired;

    impl crate::Classifier for SaysExpired {
        fn classify(&self, _: StatusCode, _: &HeaderMap) -> Verdict {
            Verdict::InspectBody
        }

        fn classify_body(&self, _: StatusCode, _: &HeaderMap, body: &[u8]) -> bool {
            body.windows(7).any(|w| w == b"expired")
        }
    }

    fn engine(edit: impl FnOnce(LayerPolicy) -> LayerPolicy) -> Engine {
        let cache = TokenCache::new(|| async { Ok::<_, FetchError>(Token::new("t0k3n")) });
        let policy = LayerPolicy::new(Scope::any_origin()).with_classifier(SaysExpired);
        Engine::new(cache, edit(policy))
    }

    fn answer(status: u16, body: &'static str) -> Response<Full<Bytes>> {
        let body = Full::new(Bytes::from_static(body.as_bytes()));
        Response::builder().status(status).body(body).unwrap()
    }

    #[cfg(feature = "metrics")]
    #[test]
    fn replays_are_counted_by_outcome() {
        use metrics_util::debugging::{DebugValue, DebuggingRecorder};

        let recorder = DebuggingRecorder::new();
        metrics::with_local_recorder(&recorder, || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
                .unwrap();
            runtime.block_on(async {
                let engine = engine(|p| p);
                let token = engine.cache().unwrap().get().await.unwrap();
                let rejected = token.id();
                let too_large = Err::<(), _>(NotReplayed::BodyTooLarge);
                let recover = engine.recover(
                    token,
                    answer(401, ""),
                    Verdict::Rejected,
                    too_large,
                    None,
                    route(),
                );
                assert!(matches!(recover.await, Recovered::Respond(_)));
                let fresh = engine.cache().unwrap().get().await.unwrap();
                // A fresh token after the rejected one (the same token would be a DPoP nonce's
                // replay).
                assert_ne!(fresh.id(), rejected);
                engine.replayed(
                    None,
                    rejected,
                    &fresh,
                    StatusCode::OK,
                    &HeaderMap::new(),
                    route(),
                );
            });
        });
        let counts: Vec<_> = recorder
            .snapshotter()
            .snapshot()
            .into_vec()
            .into_iter()
            .filter_map(|(key, _, _, value)| {
                let key = key.key();
                let outcome = key
                    .labels()
                    .find(|l| l.key() == "outcome")?
                    .value()
                    .to_owned();
                let cache = key
                    .labels()
                    .find(|l| l.key() == "cache")?
                    .value()
                    .to_owned();
                let DebugValue::Counter(n) = value else {
                    return None;
                };
                (key.name() == crate::metrics::REPLAYS).then_some((cache, outcome, n))
            })
            .collect();
        let expect = |outcome: &str| (String::from("token"), outcome.to_owned(), 1);
        assert!(counts.contains(&expect("body_too_large")), "{counts:?}");
        assert!(counts.contains(&expect("replayed")), "{counts:?}");
        assert_eq!(counts.len(), 2, "{counts:?}");
    }

    /// A DPoP key that signs nothing: a proof is the nonce it would carry.
    #[derive(Debug)]
    struct NonceEcho;

    impl tokenwarden_core::DpopProver for NonceEcho {
        fn token_hash(&self, _: &str) -> String {
            "hash".to_owned()
        }

        fn proof(
            &self,
            _: &str,
            _: &str,
            _: Option<&str>,
            nonce: Option<&str>,
        ) -> Result<http::HeaderValue, tokenwarden_core::BoxError> {
            Ok(http::HeaderValue::from_str(nonce.unwrap_or("remembered"))?)
        }

        fn remember_nonce(&self, _: &str, _: &str) {}

        fn thumbprint(&self) -> String {
            "echo".to_owned()
        }
    }

    #[tokio::test]
    async fn a_nonce_challenge_is_replayed_with_its_own_nonce_and_the_same_token() {
        let cache = TokenCache::builder(|| async { Ok::<_, FetchError>(Token::new("t0k3n")) })
            .with_presentation(tokenwarden_core::Presentation::dpop(std::sync::Arc::new(
                NonceEcho,
            )))
            .build()
            .unwrap();
        let engine = Engine::new(cache, Scope::any_origin());
        let token = engine.cache().unwrap().get().await.unwrap();
        let challenge = Response::builder()
            .status(401)
            .header("www-authenticate", r#"DPoP error="use_dpop_nonce""#)
            .header("dpop-nonce", "n-2")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let verdict = engine.screen(&token, challenge.status(), challenge.headers());
        assert_eq!(verdict, Verdict::UseNonce);
        let recover = engine.recover(
            token.clone(),
            challenge,
            verdict,
            Ok("the request"),
            None,
            route(),
        );
        let Recovered::Replay {
            fresh,
            rejected,
            nonce,
            ..
        } = recover.await
        else {
            panic!("a nonce challenge is replayed");
        };
        assert_eq!((fresh.id(), rejected), (token.id(), token.id()));
        // The replay's proof carries the challenge's nonce, whatever the key remembers (an
        // answer that arrived late may have set it back).
        let mut headers = HeaderMap::new();
        fresh
            .prove(
                "GET",
                || Some("https://api.example.com/".into()),
                nonce.as_ref(),
                &mut headers,
            )
            .unwrap();
        assert_eq!(headers["dpop"], "n-2");
        assert_eq!(engine.cache().unwrap().stats().invalidations, 0);

        // Without a nonce to carry, the challenge is not replayed.
        let bare = Response::builder()
            .status(401)
            .header("www-authenticate", r#"DPoP error="use_dpop_nonce""#)
            .body(Full::new(Bytes::new()))
            .unwrap();
        assert_ne!(
            engine.screen(&token, bare.status(), bare.headers()),
            Verdict::UseNonce
        );
    }

    #[tokio::test]
    async fn an_accepted_verdict_handed_to_recover_is_not_a_rejection() {
        let engine = engine(|p| p);
        let token = engine.cache().unwrap().get().await.unwrap();
        let kept = Ok::<_, NotReplayed>("the request");
        let recover = engine.recover(
            token.clone(),
            answer(200, "ok"),
            Verdict::Accepted,
            kept,
            None,
            route(),
        );
        let Recovered::Respond(response) = recover.await else {
            panic!("an accepted answer is not replayed");
        };
        assert_eq!(response.status(), StatusCode::OK);
        assert!(response.extensions().get::<Replay>().is_none());
        assert_eq!(
            engine.cache().unwrap().stats().invalidations,
            0,
            "the token was kept"
        );
        assert_eq!(
            engine.cache().unwrap().cached().map(|t| t.id()),
            Some(token.id())
        );
    }

    #[tokio::test]
    async fn an_inspect_timeout_too_long_to_add_to_now_is_no_limit() {
        let engine = engine(|p| p.with_inspect_timeout(Duration::MAX));
        let token = engine.cache().unwrap().get().await.unwrap();
        let kept = Ok::<_, NotReplayed>("the request");
        let recover = engine.recover(
            token,
            answer(400, "bad amount"),
            Verdict::InspectBody,
            kept,
            None,
            route(),
        );
        let Recovered::Respond(response) = recover.await else {
            panic!("a 400 that does not say expired was replayed");
        };
        assert!(response.extensions().get::<crate::Replay>().is_none());
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, "bad amount");
    }
}
