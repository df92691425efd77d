//! [`DpopKey`]: the key DPoP-bound tokens are bound to (RFC 9449), signing a proof for every
//! token request and every API request, and remembering each server's newest nonce.
//!
//! ```
//! use std::sync::Arc;
//! use tokenwarden_core::{DpopProver, Presentation};
//! use tokenwarden_gateways::dpop::DpopKey;
//! use tokenwarden_gateways::jose::{Algorithm, SigningKey};
//!
//! let pem = "-----BEGIN PRIVATE KEY-----
//! MC4CAQAwBQYDK2VwBCIEIBkKy7dkj1QXmJqsD8BPN2sHD3NXH9JXAbs6W6I0eRx3
//! -----END PRIVATE KEY-----";
//! let key = DpopKey::new(SigningKey::from_pkcs8_pem(Algorithm::EdDsa, pem)?);
//! // What the server binds tokens to (`cnf.jkt`): the public key's thumbprint.
//! let jkt = key.thumbprint();
//! let proof = key.proof("GET", "https://api.example.com/v1/payments?page=2", None)?;
//! assert_eq!(proof.to_str()?.split('.').count(), 3);
//! # let _ = (jkt, Presentation::dpop(Arc::new(key)));
//! # Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
//! ```

use std::collections::HashMap;
use std::fmt;
use std::io::Write as _;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::HeaderValue;
use serde_json::json;
use tokenwarden_core::{BoxError, DpopProver};

use crate::jose::{SigningKey, unique_id_bytes};

/// A key that proves possession of itself: a DPoP proof (RFC 9449 §4) for each request,
/// with the newest `DPoP-Nonce` each origin gave. Give it to
/// [`ClientCredentials::with_dpop`](crate::oauth2::ClientCredentials::with_dpop): the token
/// requests carry proofs, the tokens are bound to the key, and the cache's presentation
/// proves every API request with it.
///
/// Each proof's header (`typ: dpop+jwt`, `alg`, the public `jwk`) is encoded once; a proof is
/// then its claims — `jti` (128 random bits), `htm`, `htu` (the URL without query and
/// fragment), `iat`, `ath` for an API request, `nonce` if the origin gave one — and one
/// signature.
///
/// **Rotating the key**: tokens are bound to the key that asked for them, so a new key needs
/// new tokens. Build a new source and cache with the new key and move traffic to it; the old
/// cache's tokens keep working (with the old key) until they expire. Replicas sharing tokens
/// through a store share them only with replicas holding the same key (its thumbprint is
/// part of the store identity).
///
/// Cheap to clone (one reference count); clones share the nonces. `Debug` shows the
/// algorithm and thumbprint, never the key.
#[derive(Clone)]
pub struct DpopKey(Arc<Inner>);

struct Inner {
    key: SigningKey,
    /// The JWS header of every proof, encoded: `{"alg":…,"typ":"dpop+jwt","jwk":…}`.
    header: String,
    /// The newest nonce of each origin (`scheme://host:port`, lowercase).
    nonces: RwLock<HashMap<String, Arc<str>>>,
}

impl fmt::Debug for DpopKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DpopKey")
            .field("algorithm", &self.0.key.algorithm())
            .field("thumbprint", &self.thumbprint())
            .finish_non_exhaustive()
    }
}

impl DpopKey {
    /// Proves with `key` (any algorithm a [`SigningKey`] has: ES256 and EdDSA are the
    /// cheapest, see [docs/benchmarks.md](https://github.com/tokenwarden/tokenwarden/blob/main/docs/benchmarks.md)).
    #[must_use]
    pub fn new(key: SigningKey) -> Self {
        let mut jwk = key.public_jwk();
        // The proof carries the bare public key: its identity is its thumbprint.
        if let Some(members) = jwk.as_object_mut() {
            members.remove("kid");
            members.remove("use");
            members.remove("alg");
        }
        let header = json!({"typ": "dpop+jwt", "alg": key.algorithm().name(), "jwk": jwk});
        Self(Arc::new(Inner {
            header: URL_SAFE_NO_PAD.encode(header.to_string()),
            key,
            nonces: RwLock::default(),
        }))
    }

    /// The key's JWK SHA-256 thumbprint (RFC 7638): the `cnf.jkt` of the tokens bound to it,
    /// and what a server pins with `dpop_jkt`.
    #[must_use]
    pub fn thumbprint(&self) -> String {
        self.0.key.thumbprint()
    }

    /// The signing key.
    #[must_use]
    pub fn signing_key(&self) -> &SigningKey {
        &self.0.key
    }

    /// The newest nonce the origin of `url` gave, if any.
    #[must_use]
    pub fn nonce(&self, url: &str) -> Option<Arc<str>> {
        let origin = origin_of(url)?;
        let nonces = self.0.nonces.read().unwrap_or_else(PoisonError::into_inner);
        if origin.bytes().any(|b| b.is_ascii_uppercase()) {
            nonces.get(&origin.to_ascii_lowercase()).cloned()
        } else {
            nonces.get(origin).cloned()
        }
    }

    /// A proof for a request of `method` to `url` (its query and fragment left out), with
    /// `ath` if given and the origin's newest nonce. The same as
    /// [`DpopProver::proof`], under a name that needs no trait import.
    ///
    /// # Errors
    ///
    /// When the key cannot sign, or the system's random generator fails (no `jti` that merely
    /// looks random is made instead).
    pub fn proof(
        &self,
        method: &str,
        url: &str,
        ath: Option<&str>,
    ) -> Result<HeaderValue, BoxError> {
        <Self as DpopProver>::proof(self, method, url, ath, None)
    }
}

impl DpopProver for DpopKey {
    fn token_hash(&self, token: &str) -> String {
        let digest = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
        URL_SAFE_NO_PAD.encode(digest.as_ref())
    }

    fn proof(
        &self,
        method: &str,
        url: &str,
        ath: Option<&str>,
        nonce: Option<&str>,
    ) -> Result<HeaderValue, BoxError> {
        // No query, no fragment, no `user:password@` (RFC 9449 §4.2): the URL a server
        // knows itself by.
        let url = without_userinfo(url);
        let url = url.as_ref();
        let htu = url.split(['?', '#']).next().unwrap_or(url);
        let iat = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let jti = unique_id_bytes()?;
        let nonce = match nonce {
            Some(nonce) => Some(Arc::from(nonce)),
            None => self.nonce(url),
        };
        // The claims written straight into one buffer: the strings escaped as JSON.
        let mut claims = Vec::with_capacity(
            96 + htu.len()
                + method.len()
                + ath.map_or(0, str::len)
                + nonce.as_deref().map_or(0, str::len),
        );
        claims.extend_from_slice(b"{\"jti\":\"");
        claims.extend_from_slice(&jti);
        claims.extend_from_slice(b"\",\"htm\":");
        serde_json::to_writer(&mut claims, method)?;
        claims.extend_from_slice(b",\"htu\":");
        serde_json::to_writer(&mut claims, htu)?;
        claims.extend_from_slice(b",\"iat\":");
        write!(claims, "{iat}")?;
        if let Some(ath) = ath {
            claims.extend_from_slice(b",\"ath\":");
            serde_json::to_writer(&mut claims, ath)?;
        }
        if let Some(nonce) = nonce {
            claims.extend_from_slice(b",\"nonce\":");
            serde_json::to_writer(&mut claims, &*nonce)?;
        }
        claims.push(b'}');
        let jws = self.0.key.sign_encoded(&self.0.header, &claims)?;
        let mut value = HeaderValue::try_from(jws)?;
        // Kept out of HTTP/2 header tables and of `Debug` of requests.
        value.set_sensitive(true);
        Ok(value)
    }

    fn thumbprint(&self) -> String {
        DpopKey::thumbprint(self)
    }

    fn remember_nonce(&self, url: &str, nonce: &str) {
        // RFC 9449 §8: a nonce is 1*NQCHAR (visible ASCII but `"` and `\`); a longer one
        // than any server needs would be signed into every proof: refused.
        let nqchar = |b: u8| matches!(b, 0x21 | 0x23..=0x5B | 0x5D..=0x7E);
        if nonce.is_empty() || nonce.len() > MAX_NONCE || !nonce.bytes().all(nqchar) {
            tracing::debug!(
                len = nonce.len(),
                "DPoP nonce not remembered: not a valid nonce"
            );
            return;
        }
        let url = without_userinfo(url);
        if self.nonce(&url).as_deref() == Some(nonce) {
            return;
        }
        let Some(origin) = origin_of(&url) else {
            return;
        };
        let origin = origin.to_ascii_lowercase();
        tracing::debug!(origin = %origin, "DPoP nonce remembered");
        let mut nonces = self
            .0
            .nonces
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        // Bounded: a layer over any origin meets origins without end. Forgetting them costs
        // at most a challenge each.
        if nonces.len() >= MAX_ORIGINS && !nonces.contains_key(&origin) {
            nonces.clear();
        }
        nonces.insert(origin, Arc::from(nonce));
    }
}

/// The longest nonce remembered.
const MAX_NONCE: usize = 512;

/// The most origins whose nonces are remembered at once.
const MAX_ORIGINS: usize = 1024;

/// `url` without `user:password@` in its authority.
fn without_userinfo(url: &str) -> std::borrow::Cow<'_, str> {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.into();
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..end].rfind('@') {
        Some(at) => format!("{scheme}://{}", &rest[at + 1..]).into(),
        None => url.into(),
    }
}

/// `scheme://authority` of an absolute URL (as written: compare it lowercase); `None` for
/// anything else, or a URL with `user:password@` (no origin is remembered for it).
fn origin_of(url: &str) -> Option<&str> {
    let (scheme, rest) = url.split_once("://")?;
    let authority = rest.split(['/', '?', '#']).next()?;
    (!scheme.is_empty() && !authority.is_empty() && !authority.contains('@'))
        .then(|| &url[..scheme.len() + 3 + authority.len()])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jose::Algorithm;
    use serde_json::Value;

    fn key() -> DpopKey {
        let pem = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/data/keys/p256.pem"
        ))
        .unwrap();
        DpopKey::new(SigningKey::from_pkcs8_pem(Algorithm::Es256, &pem).unwrap())
    }

    fn part(jws: &HeaderValue, i: usize) -> Value {
        let text = jws.to_str().unwrap().split('.').nth(i).unwrap().to_owned();
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(text).unwrap()).unwrap()
    }

    #[test]
    fn a_proof_names_the_request_without_its_query_and_carries_the_origins_nonce() {
        let key = key();
        let first = key
            .proof("POST", "https://API.example.com:8443/pay?x=1#f", Some("h"))
            .unwrap();
        let header = part(&first, 0);
        assert_eq!(header["typ"], "dpop+jwt");
        assert_eq!(header["alg"], "ES256");
        assert_eq!(header["jwk"]["kty"], "EC");
        assert!(header["jwk"].get("d").is_none());
        let claims = part(&first, 1);
        assert_eq!(claims["htm"], "POST");
        assert_eq!(claims["htu"], "https://API.example.com:8443/pay");
        assert_eq!(claims["ath"], "h");
        assert!(claims.get("nonce").is_none());

        key.remember_nonce("https://api.example.com:8443/other", "n-1");
        let second = key
            .proof("GET", "https://api.example.com:8443/pay", None)
            .unwrap();
        let claims2 = part(&second, 1);
        assert_eq!(claims2["nonce"], "n-1");
        assert!(claims2.get("ath").is_none());
        assert_ne!(claims["jti"], claims2["jti"]);
        // Another origin has no nonce yet.
        let third = key
            .proof("GET", "https://api.example.com/pay", None)
            .unwrap();
        assert!(part(&third, 1).get("nonce").is_none());
    }

    #[test]
    fn a_proof_leaves_out_the_urls_userinfo_and_is_sensitive() {
        let key = key();
        key.remember_nonce("https://u:p@api.example.com/a", "n-2");
        let proof = key
            .proof("GET", "https://u:p@api.example.com/pay?x", None)
            .unwrap();
        assert!(proof.is_sensitive());
        let claims = part(&proof, 1);
        assert_eq!(claims["htu"], "https://api.example.com/pay");
        assert_eq!(claims["nonce"], "n-2");
    }

    #[test]
    fn a_nonce_that_is_not_one_is_not_remembered() {
        let key = key();
        let url = "https://api.example.com/";
        for bad in ["", "a\"b", "a b", &"n".repeat(MAX_NONCE + 1)] {
            key.remember_nonce(url, bad);
            assert_eq!(key.nonce(url), None, "{bad:?}");
        }
        key.remember_nonce(url, &"n".repeat(MAX_NONCE));
        assert!(key.nonce(url).is_some());
    }

    #[test]
    fn the_token_hash_is_rfc_9449s() {
        // RFC 9449 §7.1's example token and its `ath`.
        assert_eq!(
            key().token_hash("Kz~8mXK1EalYznwH-LC-1fBAo.4Ljp~zsPE_NeO.gxU"),
            "fUHyO2r2Z3DZ53EsNrWBb0xWXoaNy59IiKCAqksmQEo"
        );
    }

    #[test]
    fn origins_are_read_from_absolute_urls_only() {
        assert_eq!(
            origin_of("HTTPS://Example.com:1/a?b"),
            Some("HTTPS://Example.com:1")
        );
        assert_eq!(origin_of("https://u:p@example.com/a"), None);
        assert_eq!(origin_of("/relative"), None);
        assert_eq!(origin_of("https:///x"), None);
    }
}
