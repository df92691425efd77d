//! [`CountingIssuer`]: a token source that counts its calls.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::time::Duration;

use tokenwarden_core::{FetchError, Token, TokenSource};

/// A token issuer minting `tok-1`, `tok-2`, … (each valid for an hour unless set otherwise)
/// and counting its calls. One made [`down`](Self::down) fails every call, as an HTTP issuer
/// answering 500 would; [`with_failures`](Self::with_failures) says which calls fail, and
/// [`fail`](Self::fail) and [`reject`](Self::reject) make every call fail from then on.
/// Clones share the counts and the failure switches.
#[derive(Clone, Debug)]
pub struct CountingIssuer {
    state: Arc<State>,
    lifetime: Option<Duration>,
    delay: Duration,
    failures: fn(usize) -> Option<FetchError>,
}

#[derive(Debug, Default)]
struct State {
    calls: AtomicUsize,
    in_flight: AtomicUsize,
    most_in_flight: AtomicUsize,
    failing: AtomicBool,
    rejecting: AtomicBool,
}

impl Default for CountingIssuer {
    fn default() -> Self {
        Self {
            state: Arc::default(),
            lifetime: Some(Duration::from_secs(3600)),
            delay: Duration::ZERO,
            failures: |_| None,
        }
    }
}

impl CountingIssuer {
    /// An issuer that answers every call with a new token.
    #[must_use]
    pub fn up() -> Self {
        Self::default()
    }

    /// An issuer that fails every call with a transient error.
    #[must_use]
    pub fn down() -> Self {
        Self::up().with_failures(|_| Some(FetchError::transient("the issuer answered 500")))
    }

    /// Its tokens state that they expire `lifetime` after they are minted.
    #[must_use]
    pub fn with_lifetime(self, lifetime: Duration) -> Self {
        let lifetime = Some(lifetime);
        Self { lifetime, ..self }
    }

    /// Its tokens state no expiry (the cache gives them its default lifetime).
    #[must_use]
    pub fn without_expiry(self) -> Self {
        Self {
            lifetime: None,
            ..self
        }
    }

    /// Each call takes `delay` (on tokio's clock) before it answers.
    #[must_use]
    pub fn with_delay(self, delay: Duration) -> Self {
        Self { delay, ..self }
    }

    /// The schedule of failures: call `n` (counted from 1) fails with the error `failures(n)`
    /// returns, or mints `tok-n` if it returns `None`.
    #[must_use]
    pub fn with_failures(self, failures: fn(usize) -> Option<FetchError>) -> Self {
        Self { failures, ..self }
    }

    /// From now on every call fails with a transient error (`the issuer answered 503`), until
    /// `fail(false)`.
    pub fn fail(&self, failing: bool) {
        self.state.failing.store(failing, SeqCst);
    }

    /// From now on every call is refused as with rejected credentials, until `reject(false)`.
    pub fn reject(&self, rejecting: bool) {
        self.state.rejecting.store(rejecting, SeqCst);
    }

    /// How many times it was called.
    #[must_use]
    pub fn calls(&self) -> usize {
        self.state.calls.load(SeqCst)
    }

    /// The most calls that were under way at once.
    #[must_use]
    pub fn most_in_flight(&self) -> usize {
        self.state.most_in_flight.load(SeqCst)
    }

    /// A source that calls it (for `TokenCache::new`).
    pub fn source(&self) -> impl TokenSource + use<> {
        let issuer = self.clone();
        move || {
            let issuer = issuer.clone();
            async move { issuer.call().await }
        }
    }

    async fn call(&self) -> Result<Token, FetchError> {
        let state = &self.state;
        let n = state.calls.fetch_add(1, SeqCst) + 1;
        let now = state.in_flight.fetch_add(1, SeqCst) + 1;
        state.most_in_flight.fetch_max(now, SeqCst);
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        state.in_flight.fetch_sub(1, SeqCst);
        if state.rejecting.load(SeqCst) {
            return Err(FetchError::rejected("the issuer refused the credentials"));
        }
        if state.failing.load(SeqCst) {
            return Err(FetchError::transient("the issuer answered 503"));
        }
        if let Some(error) = (self.failures)(n) {
            return Err(error);
        }
        let token = Token::new(format!("tok-{n}"));
        Ok(match self.lifetime {
            Some(lifetime) => token.with_expires_in(lifetime),
            None => token,
        })
    }
}
