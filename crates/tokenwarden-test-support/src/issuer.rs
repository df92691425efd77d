//! [`CountingIssuer`]: a token source that counts its calls.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::time::Duration;

use tokenwarden_core::{FetchError, Token, TokenSource};

/// A token issuer minting `tok-1`, `tok-2`, … (each valid for an hour) and counting its calls.
/// One made [`down`](Self::down) fails every call, as an HTTP issuer answering 500 would.
/// Clones share the count.
#[derive(Clone, Debug, Default)]
pub struct CountingIssuer {
    calls: Arc<AtomicUsize>,
    down: bool,
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
        Self {
            down: true,
            ..Self::default()
        }
    }

    /// How many times it was called.
    #[must_use]
    pub fn calls(&self) -> usize {
        self.calls.load(SeqCst)
    }

    /// A source that calls it (for `TokenCache::new`).
    pub fn source(&self) -> impl TokenSource + use<> {
        let issuer = self.clone();
        move || {
            let issuer = issuer.clone();
            async move {
                let n = issuer.calls.fetch_add(1, SeqCst) + 1;
                if issuer.down {
                    return Err(FetchError::transient("the issuer answered 500"));
                }
                let token = Token::new(format!("tok-{n}"));
                Ok(token.with_expires_in(Duration::from_secs(3600)))
            }
        }
    }
}
