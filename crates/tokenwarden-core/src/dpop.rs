//! Proof of possession (DPoP, RFC 9449): what a presentation needs of the key its tokens are
//! bound to. The key itself (and its signatures) is `tokenwarden_gateways::dpop::DpopKey`;
//! this crate only knows the trait, so that the cache and the layers carry a proof without
//! knowing how it is signed.

use std::fmt;
use std::sync::Arc;

use http::{HeaderName, HeaderValue};

use crate::BoxError;

/// The `DPoP` request header (RFC 9449 §4.1).
pub const DPOP: HeaderName = HeaderName::from_static("dpop");

/// The `DPoP-Nonce` response header (RFC 9449 §8).
pub const DPOP_NONCE: HeaderName = HeaderName::from_static("dpop-nonce");

/// A key that proves possession of itself on each request (RFC 9449), and remembers the
/// newest nonce each server gave.
///
/// [`Presentation::dpop`](crate::Presentation::dpop) takes one: the cache then computes the
/// token's hash once per token ([`token_hash`](Self::token_hash)), and the HTTP layers ask
/// for a [`proof`](Self::proof) for every request and hand it every `DPoP-Nonce` they see
/// ([`remember_nonce`](Self::remember_nonce)). The token source that fetches the tokens
/// holds the same key, so a token and its proofs name one key.
pub trait DpopProver: Send + Sync + fmt::Debug + 'static {
    /// The `ath` claim for `token`: base64url of its SHA-256 (RFC 9449 §4.2).
    fn token_hash(&self, token: &str) -> String;

    /// A fresh proof for a request of `method` to `url` (an absolute URL; its query and
    /// fragment are left out of `htu`), carrying `ath` if given, and `nonce` if given — the
    /// one a challenge just named — else the newest nonce remembered for the URL's origin.
    ///
    /// # Errors
    ///
    /// When the proof cannot be signed.
    fn proof(
        &self,
        method: &str,
        url: &str,
        ath: Option<&str>,
        nonce: Option<&str>,
    ) -> Result<HeaderValue, BoxError>;

    /// Remembers `nonce` as the newest the origin of `url` gave (RFC 9449 §8).
    fn remember_nonce(&self, url: &str, nonce: &str);

    /// The key's identity: its JWK SHA-256 thumbprint (RFC 7638), the `cnf.jkt` of the tokens
    /// bound to it. A cache sharing tokens with other replicas
    /// ([`with_shared`](crate::TokenCacheBuilder::with_shared)) shares them only with caches
    /// proving with the same key: a token bound to another key would be refused.
    fn thumbprint(&self) -> String;
}

/// What a DPoP-bound token's snapshot carries: the key, and the token's hash, computed once.
#[derive(Clone)]
pub(crate) struct Bound {
    pub(crate) prover: Arc<dyn DpopProver>,
    pub(crate) ath: Box<str>,
}

impl fmt::Debug for Bound {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bound")
            .field("prover", &self.prover)
            .finish_non_exhaustive()
    }
}
