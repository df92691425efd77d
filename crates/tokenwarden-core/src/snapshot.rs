//! One token with its prebuilt header values, as handed to a request.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use http::{HeaderMap, HeaderName, HeaderValue};

use crate::dpop::{Bound, DPOP, DPOP_NONCE};
use crate::{Error, Token, TokenId};

/// A token and the header values built from it, handed out by
/// [`TokenCache::get`](crate::TokenCache::get).
///
/// All headers of one request come from one snapshot, so they always belong to the same token.
/// Cloning is a reference-count increment. `Debug` shows the token id and header names, never
/// the values.
#[derive(Clone)]
pub struct Snapshot(Arc<Inner>);

struct Inner {
    token: Token,
    headers: Box<[(HeaderName, HeaderValue)]>,
    /// The first this many headers carry the token; the rest are fixed.
    token_headers: usize,
    /// Whether an API accepted the token at least once. Shared by every per-thread copy of the
    /// snapshot, and written once: reading it costs no shared write.
    accepted: Arc<AtomicBool>,
    /// For a DPoP-bound token: the key that proves each request, and the token's hash.
    bound: Option<Bound>,
}

impl Snapshot {
    pub(crate) fn new(
        token: Token,
        headers: Box<[(HeaderName, HeaderValue)]>,
        token_headers: usize,
        bound: Option<Bound>,
    ) -> Self {
        Self(Arc::new(Inner {
            token,
            headers,
            token_headers,
            accepted: Arc::default(),
            bound,
        }))
    }

    /// A copy whose header values live in allocations of their own, so that cloning them on
    /// one thread does not write to memory another thread's copy uses.
    pub(crate) fn deep_copy(&self) -> Self {
        let headers = self
            .0
            .headers
            .iter()
            .map(|(name, value)| {
                let name = HeaderName::from_bytes(name.as_str().as_bytes())
                    .unwrap_or_else(|_| name.clone());
                let mut copy =
                    HeaderValue::from_bytes(value.as_bytes()).unwrap_or_else(|_| value.clone());
                copy.set_sensitive(value.is_sensitive());
                (name, copy)
            })
            .collect();
        Self(Arc::new(Inner {
            token: self.0.token.clone(),
            headers,
            token_headers: self.0.token_headers,
            accepted: Arc::clone(&self.0.accepted),
            bound: self.0.bound.clone(),
        }))
    }

    /// Records that an API accepted this token (a response that was not a rejection). The
    /// HTTP layers call it; a direct user of the cache should too. It decides what a later
    /// [`TokenCache::invalidate`](crate::TokenCache::invalidate) of the token does: see
    /// [docs/guarantees.md](https://github.com/tokenwarden/tokenwarden/blob/main/docs/guarantees.md) ("Invalidate if current").
    ///
    /// Cheap: after the first call it is one read of memory nobody writes.
    #[inline]
    pub fn mark_accepted(&self) {
        if !self.0.accepted.load(Ordering::Relaxed) {
            self.0.accepted.store(true, Ordering::Relaxed);
        }
    }

    /// Whether [`mark_accepted`](Self::mark_accepted) was called for this token.
    #[must_use]
    pub(crate) fn is_accepted(&self) -> bool {
        self.0.accepted.load(Ordering::Relaxed)
    }

    /// The id of the token, to pass to [`TokenCache::invalidate`](crate::TokenCache::invalidate)
    /// when a request carrying it is rejected.
    #[must_use]
    pub fn id(&self) -> TokenId {
        self.0.token.id()
    }

    /// The token.
    #[must_use]
    pub fn token(&self) -> &Token {
        &self.0.token
    }

    /// The headers to send, values prebuilt and marked sensitive.
    pub fn headers(&self) -> impl ExactSizeIterator<Item = (&HeaderName, &HeaderValue)> {
        self.0.headers.iter().map(|(n, v)| (n, v))
    }

    /// Inserts every header the map does not have yet, keeping any the caller set. Returns
    /// whether the token went on the request (at least one of its headers was inserted): if
    /// not, the caller supplied its own credentials and a rejection is not about this token.
    pub fn apply_to(&self, headers: &mut HeaderMap) -> bool {
        let mut token_applied = false;
        for (i, (name, value)) in self.0.headers.iter().enumerate() {
            if let http::header::Entry::Vacant(slot) = headers.entry(name) {
                slot.insert(value.clone());
                token_applied |= i < self.0.token_headers;
            }
        }
        token_applied
    }
}

impl Snapshot {
    /// Whether the token is DPoP-bound: each request needs a proof
    /// ([`prove`](Self::prove)).
    #[inline]
    #[must_use]
    pub fn is_dpop(&self) -> bool {
        self.0.bound.is_some()
    }

    /// For a DPoP-bound token, puts a fresh `DPoP` proof for a request of `method` to `url`
    /// (absolute; asked for only then) in `headers`, replacing any there; for any other
    /// token, does nothing. The HTTP layers call it on every request they put the token on.
    /// `nonce` is the one a `use_dpop_nonce` challenge named, for its replay (`None`: the
    /// newest the key remembers for the URL's origin — which an answer that arrived late can
    /// have set back to an older one).
    ///
    /// # Errors
    ///
    /// [`Error::DpopProof`] when `url` gives no absolute URL or the proof cannot be signed:
    /// the request must not be sent.
    #[inline]
    pub fn prove<'u>(
        &self,
        method: &str,
        url: impl FnOnce() -> Option<std::borrow::Cow<'u, str>>,
        nonce: Option<&HeaderValue>,
        headers: &mut HeaderMap,
    ) -> Result<(), Error> {
        let Some(bound) = &self.0.bound else {
            return Ok(());
        };
        let url = url().ok_or_else(|| Error::DpopProof {
            reason: "the request's URL is not absolute (a proof names its scheme and host)"
                .to_owned(),
        })?;
        let proof = bound
            .prover
            .proof(
                method,
                &url,
                Some(&bound.ath),
                nonce.and_then(|n| n.to_str().ok()),
            )
            .map_err(|e| Error::DpopProof {
                reason: e.to_string(),
            })?;
        headers.insert(DPOP, proof);
        Ok(())
    }

    /// For a DPoP-bound token, remembers the `DPoP-Nonce` of a response from `url`'s origin
    /// (asked for only if there is one), so the next proof to that origin carries it.
    #[inline]
    pub fn observe<'u>(
        &self,
        response: &HeaderMap,
        url: impl FnOnce() -> Option<std::borrow::Cow<'u, str>>,
    ) {
        if let Some(bound) = &self.0.bound
            && let Some(nonce) = response.get(DPOP_NONCE).and_then(|n| n.to_str().ok())
            && let Some(url) = url()
        {
            bound.prover.remember_nonce(&url, nonce);
        }
    }
}

impl fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Snapshot")
            .field("id", &self.id())
            .field(
                "headers",
                &self.0.headers.iter().map(|(n, _)| n).collect::<Vec<_>>(),
            )
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Presentation, Secret};

    fn snapshot() -> Snapshot {
        let p = Presentation::bearer().with_header(HeaderName::from_static("token"));
        let p = p.with_fixed_header(
            HeaderName::from_static("merchant-account"),
            HeaderValue::from_static("1"),
        );
        Snapshot::new(
            Token::new("s3cr3t"),
            p.render(&Secret::new("s3cr3t")).unwrap(),
            2,
            None,
        )
    }

    #[test]
    fn apply_keeps_caller_headers() {
        let mut map = HeaderMap::new();
        map.insert("token", HeaderValue::from_static("mine"));
        assert!(snapshot().apply_to(&mut map), "the bearer header went on");
        assert_eq!(map["merchant-account"], "1");
        let mut own = HeaderMap::new();
        own.insert("token", HeaderValue::from_static("mine"));
        own.insert("authorization", HeaderValue::from_static("Bearer mine"));
        assert!(
            !snapshot().apply_to(&mut own),
            "only the fixed header went on"
        );
        assert_eq!(own["merchant-account"], "1");
        assert_eq!(map["token"], "mine");
        assert_eq!(map["authorization"], "Bearer s3cr3t");
    }

    #[test]
    fn deep_copy_keeps_values_and_sensitivity() {
        let s = snapshot();
        let c = s.deep_copy();
        let a: Vec<_> = s
            .headers()
            .map(|(n, v)| (n.clone(), v.clone(), v.is_sensitive()))
            .collect();
        let b: Vec<_> = c
            .headers()
            .map(|(n, v)| (n.clone(), v.clone(), v.is_sensitive()))
            .collect();
        assert_eq!(a, b);
        assert!(!format!("{s:?}").contains("s3cr3t"));
    }
}
