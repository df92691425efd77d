//! Keys a client signs with: its assertion for `private_key_jwt` client authentication
//! (RFC 7523), read from a PKCS#8 PEM (RSA also PKCS#1) or a JWK, never printed.
//!
//! The keys are ring's (well kept, already under rustls), read once: a DPoP proof signs on
//! every request, so the key is not parsed again per signature (as `jsonwebtoken`'s signing
//! does). The JWS compact serialization around ring's signature is a few lines here; ring also
//! gives the public half for [`SigningKey::public_jwk`] and [`SigningKey::thumbprint`].
//!
//! ```
//! use tokenwarden_gateways::jose::{Algorithm, SigningKey};
//!
//! // An Ed25519 key in PKCS#8 PEM (e.g. `openssl genpkey -algorithm ed25519`).
//! let pem = "-----BEGIN PRIVATE KEY-----
//! MC4CAQAwBQYDK2VwBCIEIBkKy7dkj1QXmJqsD8BPN2sHD3NXH9JXAbs6W6I0eRx3
//! -----END PRIVATE KEY-----";
//! let key = SigningKey::from_pkcs8_pem(Algorithm::EdDsa, pem)?.with_key_id("client-key-1");
//! // What to register with the authorization server: the public half, with its key id.
//! let jwk = key.public_jwk();
//! assert_eq!(jwk["kty"], "OKP");
//! assert_eq!(jwk["kid"], "client-key-1");
//! assert!(!format!("{key:?}").contains("MC4CAQ"));
//! # Ok::<_, tokenwarden_core::ConfigError>(())
//! ```

use std::fmt;
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{
    ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair, KeyPair, RSA_PKCS1_SHA256,
    RSA_PSS_SHA256, RsaKeyPair,
};
use serde_json::{Value, json};
use tokenwarden_core::ConfigError;

/// A JWS algorithm a [`SigningKey`] signs with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Algorithm {
    /// RSASSA-PKCS1-v1_5 with SHA-256 (an RSA key of at least 2,048 bits).
    Rs256,
    /// RSASSA-PSS with SHA-256 (an RSA key of at least 2,048 bits): FAPI 2.0 allows it.
    Ps256,
    /// ECDSA on P-256 with SHA-256: FAPI 2.0 allows it.
    Es256,
    /// EdDSA with Ed25519: FAPI 2.0 allows it.
    EdDsa,
}

impl Algorithm {
    /// The name a JWS header and a server's metadata use (`"ES256"`, …).
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Rs256 => "RS256",
            Self::Ps256 => "PS256",
            Self::Es256 => "ES256",
            Self::EdDsa => "EdDSA",
        }
    }
}

/// A private key that signs, with the algorithm it signs with and an optional key id (`kid`).
/// Cheap to clone. `Debug` shows the algorithm, the key id and the public key's thumbprint,
/// never the key.
#[derive(Clone)]
pub struct SigningKey(Arc<Inner>);

/// A private key as ring holds it, parsed once.
enum Pair {
    Rsa(RsaKeyPair),
    Ec(EcdsaKeyPair),
    Ed(Ed25519KeyPair),
}

struct Inner {
    algorithm: Algorithm,
    pair: Arc<Pair>,
    /// The public half as a JWK (RFC 7517), without `kid` or `alg`.
    public: Value,
    key_id: Option<String>,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("algorithm", &self.0.algorithm)
            .field("key_id", &self.0.key_id)
            .field("thumbprint", &self.thumbprint())
            .finish_non_exhaustive()
    }
}

fn invalid(reason: &'static str) -> ConfigError {
    ConfigError::Invalid {
        name: "signing_key",
        reason,
    }
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

impl SigningKey {
    /// The key in a PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`; for RSA also PKCS#1's
    /// `-----BEGIN RSA PRIVATE KEY-----`), signing with `algorithm`.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] naming `signing_key` when the text is not such a PEM, or the key is not
    /// one `algorithm` signs with (an RSA key under 2,048 bits included). The error never
    /// shows the key.
    pub fn from_pkcs8_pem(algorithm: Algorithm, pem: &str) -> Result<Self, ConfigError> {
        let block = pem::parse(pem.trim())
            .map_err(|_| invalid("is not a PEM block (`-----BEGIN PRIVATE KEY-----` …)"))?;
        let der = block.contents();
        let (key, public) = match algorithm {
            Algorithm::Rs256 | Algorithm::Ps256 => {
                let pair = if block.tag() == "RSA PRIVATE KEY" {
                    RsaKeyPair::from_der(der)
                } else {
                    RsaKeyPair::from_pkcs8(der)
                }
                .map_err(|_| invalid("is not an RSA private key of at least 2,048 bits"))?;
                let public = ring::rsa::PublicKeyComponents::<Vec<u8>>::from(pair.public());
                let public = json!({"kty": "RSA", "n": b64(&public.n), "e": b64(&public.e)});
                (Pair::Rsa(pair), public)
            }
            Algorithm::Es256 | Algorithm::EdDsa => from_pkcs8_der(algorithm, der)?,
        };
        Self::checked(algorithm, key, public)
    }

    /// The private key in a JWK (RFC 7517): an EC P-256 key (`kty` `EC`, `crv` `P-256`, `d`,
    /// `x`, `y`) signs with ES256, an Ed25519 key (`kty` `OKP`, `crv` `Ed25519`, `d`, `x`) with
    /// EdDSA; its `kid`, if any, is the key id. RSA keys are read from PEM
    /// ([`from_pkcs8_pem`](Self::from_pkcs8_pem)).
    ///
    /// # Errors
    ///
    /// [`ConfigError`] naming `signing_key` when the text is not such a JWK, its `alg` is
    /// another, or its public part (`x`, `y`) does not belong to its private part (`d`). The
    /// error never shows the key.
    pub fn from_jwk(jwk: &str) -> Result<Self, ConfigError> {
        let jwk: Value =
            serde_json::from_str(jwk).map_err(|_| invalid("is not a JWK (a JSON object)"))?;
        let part = |name: &str| -> Result<Vec<u8>, ConfigError> {
            let bytes = jwk[name]
                .as_str()
                .and_then(|text| URL_SAFE_NO_PAD.decode(text).ok())
                .filter(|bytes| bytes.len() == 32);
            bytes.ok_or(invalid(
                "is a JWK without the 32-byte base64url `d`, `x` (and for P-256 `y`) its key needs",
            ))
        };
        let (algorithm, der) = match (jwk["kty"].as_str(), jwk["crv"].as_str()) {
            (Some("EC"), Some("P-256")) => {
                // PKCS#8 (RFC 5208) around SEC 1's ECPrivateKey with its public key.
                let mut der = vec![
                    0x30, 0x81, 0x87, 0x02, 0x01, 0x00, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48,
                    0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01,
                    0x07, 0x04, 0x6d, 0x30, 0x6b, 0x02, 0x01, 0x01, 0x04, 0x20,
                ];
                der.extend(part("d")?);
                der.extend([0xa1, 0x44, 0x03, 0x42, 0x00, 0x04]);
                der.extend(part("x")?);
                der.extend(part("y")?);
                (Algorithm::Es256, der)
            }
            (Some("OKP"), Some("Ed25519")) => {
                // PKCS#8 for Ed25519 (RFC 8410): the 32-byte seed.
                let mut der = vec![
                    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04,
                    0x22, 0x04, 0x20,
                ];
                der.extend(part("d")?);
                (Algorithm::EdDsa, der)
            }
            _ => {
                return Err(invalid(
                    "is a JWK of a kind not read here: an EC P-256 or an OKP Ed25519 key (RSA keys \
                     are read from PEM)",
                ));
            }
        };
        if let Some(alg) = jwk["alg"].as_str()
            && alg != algorithm.name()
        {
            return Err(invalid("is a JWK whose `alg` is not its key's algorithm"));
        }
        let (key, public) = from_pkcs8_der(algorithm, &der)?;
        // ring checks a P-256 key's public point against its private key; an Ed25519 seed
        // carries none, so its `x` is checked here.
        if public["x"] != jwk["x"] {
            return Err(invalid(
                "is a JWK whose public part does not belong to its private part",
            ));
        }
        let signing = Self::checked(algorithm, key, public)?;
        Ok(match jwk["kid"].as_str() {
            Some(kid) => signing.with_key_id(kid),
            None => signing,
        })
    }

    /// The key, refused now if it cannot sign (not at the first token request).
    fn checked(algorithm: Algorithm, pair: Pair, public: Value) -> Result<Self, ConfigError> {
        let signing = Self(Arc::new(Inner {
            algorithm,
            pair: Arc::new(pair),
            public,
            key_id: None,
        }));
        signing
            .sign(None, &json!({}))
            .map_err(|_| invalid("cannot sign: the key and the algorithm do not match"))?;
        Ok(signing)
    }

    /// The key id (`kid`) put in every signature's header and in [`public_jwk`](Self::public_jwk):
    /// the one the key is registered under with the server.
    #[must_use]
    pub fn with_key_id(self, key_id: impl Into<String>) -> Self {
        let inner = &self.0;
        Self(Arc::new(Inner {
            algorithm: inner.algorithm,
            pair: Arc::clone(&inner.pair),
            public: inner.public.clone(),
            key_id: Some(key_id.into()),
        }))
    }

    /// The algorithm it signs with.
    #[must_use]
    pub fn algorithm(&self) -> Algorithm {
        self.0.algorithm
    }

    /// Its key id, if it was given one.
    #[must_use]
    pub fn key_id(&self) -> Option<&str> {
        self.0.key_id.as_deref()
    }

    /// The public half as a JWK (RFC 7517) with `alg`, `use: "sig"` and the key id: what the
    /// server is given (in the client's `jwks`) to check the client's signatures.
    #[must_use]
    pub fn public_jwk(&self) -> Value {
        let mut jwk = self.0.public.clone();
        jwk["alg"] = json!(self.0.algorithm.name());
        jwk["use"] = json!("sig");
        if let Some(kid) = &self.0.key_id {
            jwk["kid"] = json!(kid);
        }
        jwk
    }

    /// The JWK SHA-256 thumbprint of the public half (RFC 7638), base64url: the key's identity
    /// whatever its key id.
    #[must_use]
    pub fn thumbprint(&self) -> String {
        thumbprint_of(&self.0.public)
    }

    /// A compact JWS of `claims`, its header `alg`, the key id and `typ` (if any).
    pub(crate) fn sign(&self, typ: Option<&str>, claims: &Value) -> Result<String, ConfigError> {
        let mut header = json!({"alg": self.0.algorithm.name()});
        if let Some(kid) = &self.0.key_id {
            header["kid"] = json!(kid);
        }
        if let Some(typ) = typ {
            header["typ"] = json!(typ);
        }
        self.sign_encoded(
            &b64(header.to_string().as_bytes()),
            claims.to_string().as_bytes(),
        )
    }

    /// A compact JWS of the JSON text `claims` under the header already encoded (base64url)
    /// in `header`.
    pub(crate) fn sign_encoded(&self, header: &str, claims: &[u8]) -> Result<String, ConfigError> {
        let payload_len = claims.len().div_ceil(3) * 4;
        // An RSA signature of 4,096 bits is 683 characters; the others are shorter.
        let mut jws = String::with_capacity(header.len() + payload_len + 2 + 684);
        jws.push_str(header);
        jws.push('.');
        URL_SAFE_NO_PAD.encode_string(claims, &mut jws);
        let failed = |_| invalid("cannot sign: the key and the algorithm do not match");
        let rng = SystemRandom::new();
        let signature = match &*self.0.pair {
            Pair::Ec(pair) => pair.sign(&rng, jws.as_bytes()).map_err(failed)?,
            Pair::Ed(pair) => pair.sign(jws.as_bytes()),
            Pair::Rsa(pair) => {
                let padding: &'static dyn ring::signature::RsaEncoding =
                    if self.0.algorithm == Algorithm::Ps256 {
                        &RSA_PSS_SHA256
                    } else {
                        &RSA_PKCS1_SHA256
                    };
                let mut out = vec![0; pair.public().modulus_len()];
                pair.sign(padding, &rng, jws.as_bytes(), &mut out)
                    .map_err(failed)?;
                jws.push('.');
                URL_SAFE_NO_PAD.encode_string(&out, &mut jws);
                return Ok(jws);
            }
        };
        jws.push('.');
        URL_SAFE_NO_PAD.encode_string(signature.as_ref(), &mut jws);
        Ok(jws)
    }
}

/// RFC 7638: SHA-256 of the required members of the public JWK, in lexicographic order and
/// without whitespace, base64url.
fn thumbprint_of(p: &Value) -> String {
    let canonical = match p["kty"].as_str() {
        Some("EC") => format!(
            r#"{{"crv":"{}","kty":"EC","x":"{}","y":"{}"}}"#,
            str_of(&p["crv"]),
            str_of(&p["x"]),
            str_of(&p["y"])
        ),
        Some("OKP") => format!(
            r#"{{"crv":"{}","kty":"OKP","x":"{}"}}"#,
            str_of(&p["crv"]),
            str_of(&p["x"])
        ),
        _ => format!(
            r#"{{"e":"{}","kty":"RSA","n":"{}"}}"#,
            str_of(&p["e"]),
            str_of(&p["n"])
        ),
    };
    b64(ring::digest::digest(&ring::digest::SHA256, canonical.as_bytes()).as_ref())
}

/// An EC P-256 or Ed25519 key in PKCS#8 DER: the signing key and its public JWK.
fn from_pkcs8_der(algorithm: Algorithm, der: &[u8]) -> Result<(Pair, Value), ConfigError> {
    if algorithm == Algorithm::Es256 {
        let pair =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der, &SystemRandom::new())
                .map_err(|_| invalid("is not a P-256 private key in PKCS#8"))?;
        let point = pair.public_key().as_ref();
        let public =
            json!({"kty": "EC", "crv": "P-256", "x": b64(&point[1..33]), "y": b64(&point[33..65])});
        Ok((Pair::Ec(pair), public))
    } else {
        let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(der)
            .map_err(|_| invalid("is not an Ed25519 private key in PKCS#8"))?;
        let public = json!({"kty": "OKP", "crv": "Ed25519", "x": b64(pair.public_key().as_ref())});
        Ok((Pair::Ed(pair), public))
    }
}

fn str_of(value: &Value) -> &str {
    value.as_str().unwrap_or_default()
}

/// A fresh random identifier: 128 bits from the system's generator, base64url (a `jti`).
///
/// # Errors
///
/// When the system's generator fails (it does not, on the platforms ring supports): no
/// identifier that merely looks random is made instead.
pub(crate) fn unique_id() -> Result<String, ConfigError> {
    Ok(String::from_utf8_lossy(&unique_id_bytes()?).into_owned())
}

/// [`unique_id`], as its 22 ASCII bytes on the stack (no allocation: a DPoP proof makes one
/// per request).
///
/// # Errors
///
/// As [`unique_id`].
pub(crate) fn unique_id_bytes() -> Result<[u8; 22], ConfigError> {
    let mut bytes = [0_u8; 16];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| invalid("cannot be used: the system's random generator failed"))?;
    let mut id = [0_u8; 22];
    URL_SAFE_NO_PAD
        .encode_slice(bytes, &mut id)
        .map_err(|_| invalid("cannot be used: an identifier does not fit"))?;
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jws_alg(algorithm: Algorithm) -> jsonwebtoken::Algorithm {
        match algorithm {
            Algorithm::Rs256 => jsonwebtoken::Algorithm::RS256,
            Algorithm::Ps256 => jsonwebtoken::Algorithm::PS256,
            Algorithm::Es256 => jsonwebtoken::Algorithm::ES256,
            Algorithm::EdDsa => jsonwebtoken::Algorithm::EdDSA,
        }
    }

    fn pem(name: &str) -> String {
        std::fs::read_to_string(format!(
            "{}/tests/data/keys/{name}",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap()
    }

    #[test]
    fn each_algorithm_signs_what_its_public_jwk_verifies() {
        for (algorithm, file) in [
            (Algorithm::Rs256, "rsa2048.pem"),
            (Algorithm::Rs256, "rsa2048-pkcs1.pem"),
            (Algorithm::Ps256, "rsa2048.pem"),
            (Algorithm::Es256, "p256.pem"),
            (Algorithm::EdDsa, "ed25519.pem"),
        ] {
            let key = SigningKey::from_pkcs8_pem(algorithm, &pem(file))
                .unwrap()
                .with_key_id("k1");
            let claims =
                json!({"iss": "client", "aud": "https://as.example", "exp": 4_000_000_000_u64});
            let jws = key.sign(Some("JWT"), &claims).unwrap();
            let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(key.public_jwk()).unwrap();
            let mut validation = jsonwebtoken::Validation::new(jws_alg(algorithm));
            validation.set_audience(&["https://as.example"]);
            let decoded = jsonwebtoken::decode::<Value>(
                &jws,
                &jsonwebtoken::DecodingKey::from_jwk(&jwk).unwrap(),
                &validation,
            )
            .unwrap_or_else(|e| panic!("{algorithm:?} {file}: {e}"));
            assert_eq!(decoded.claims, claims);
            assert_eq!(decoded.header.kid.as_deref(), Some("k1"));
            assert_eq!(decoded.header.typ.as_deref(), Some("JWT"));
            assert_eq!(key.public_jwk()["alg"], algorithm.name());
            // Debug shows no part of the key.
            let text = pem(file);
            let body = text.lines().nth(1).unwrap();
            assert!(!format!("{key:?}").contains(&body[..16]), "{key:?}");
        }
    }

    #[test]
    fn a_key_that_cannot_sign_is_refused_by_name_without_showing_it() {
        for (algorithm, text) in [
            (Algorithm::Rs256, pem("rsa1024.pem")),
            (Algorithm::EdDsa, pem("p256.pem")),
            (Algorithm::Es256, pem("ed25519.pem")),
            (Algorithm::Ps256, pem("p256.pem")),
            (Algorithm::Es256, "not a key".to_owned()),
        ] {
            let error = SigningKey::from_pkcs8_pem(algorithm, &text).unwrap_err();
            let message = error.to_string();
            assert!(message.contains("signing_key"), "{message}");
            let body: String = text.lines().filter(|l| !l.starts_with("-----")).collect();
            assert!(
                body.len() < 20 || !message.contains(&body[..20]),
                "{message}"
            );
        }
    }

    /// RFC 7638 §3.1's example key and thumbprint.
    #[test]
    fn thumbprints_are_rfc_7638s() {
        let jwk = json!({
            "kty": "RSA",
            "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw",
            "e": "AQAB",
            "alg": "RS256",
            "kid": "2011-04-29"
        });
        assert_eq!(
            thumbprint_of(&jwk),
            "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
        );
    }

    #[test]
    fn ids_do_not_repeat() {
        let ids: std::collections::HashSet<String> =
            (0..10_000).map(|_| unique_id().unwrap()).collect();
        assert_eq!(ids.len(), 10_000);
    }

    /// RFC 8037 Appendix A: its Ed25519 key, public key and thumbprint.
    #[test]
    fn an_ed25519_jwk_is_read_as_rfc_8037_shows() {
        let jwk = r#"{"kty":"OKP","crv":"Ed25519",
            "d":"nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A",
            "x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo","kid":"rfc8037"}"#;
        let key = SigningKey::from_jwk(jwk).unwrap();
        assert_eq!(key.algorithm(), Algorithm::EdDsa);
        assert_eq!(key.key_id(), Some("rfc8037"));
        assert_eq!(
            key.public_jwk()["x"],
            "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"
        );
        assert_eq!(
            key.thumbprint(),
            "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"
        );
        assert!(!format!("{key:?}").contains("nWGxne"));
    }

    /// The JWK of each PEM test key reads as the same key, and signs what its public JWK
    /// verifies.
    #[test]
    fn a_jwk_and_its_pem_are_the_same_key() {
        let der = |file: &str| pem::parse(pem(file)).unwrap().contents().to_vec();
        let p256 = der("p256.pem");
        let ec = json!({"kty": "EC", "crv": "P-256", "d": b64(&p256[36..68]),
                        "x": b64(&p256[74..106]), "y": b64(&p256[106..138])});
        let ed = json!({"kty": "OKP", "crv": "Ed25519", "d": b64(&der("ed25519.pem")[16..48]),
                        "x": SigningKey::from_pkcs8_pem(Algorithm::EdDsa, &pem("ed25519.pem")).unwrap().public_jwk()["x"]});
        for (jwk, algorithm, file) in [
            (ec, Algorithm::Es256, "p256.pem"),
            (ed, Algorithm::EdDsa, "ed25519.pem"),
        ] {
            let from_jwk = SigningKey::from_jwk(&jwk.to_string()).unwrap();
            let from_pem = SigningKey::from_pkcs8_pem(algorithm, &pem(file)).unwrap();
            assert_eq!(from_jwk.public_jwk(), from_pem.public_jwk());
            assert_eq!(from_jwk.thumbprint(), from_pem.thumbprint());
            let jws = from_jwk.sign(None, &json!({"sub": "c"})).unwrap();
            let public: jsonwebtoken::jwk::Jwk =
                serde_json::from_value(from_pem.public_jwk()).unwrap();
            let mut validation = jsonwebtoken::Validation::new(jws_alg(algorithm));
            validation.required_spec_claims.clear();
            validation.validate_exp = false;
            jsonwebtoken::decode::<Value>(
                &jws,
                &jsonwebtoken::DecodingKey::from_jwk(&public).unwrap(),
                &validation,
            )
            .unwrap();
        }
    }

    #[test]
    fn a_jwk_that_does_not_hold_together_is_refused_without_showing_it() {
        let d = "nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A";
        for jwk in [
            // Another key's public part.
            format!(
                r#"{{"kty":"OKP","crv":"Ed25519","d":"{d}","x":"{}"}}"#,
                b64(&[7; 32])
            ),
            // An `alg` that is not its key's.
            format!(
                r#"{{"kty":"OKP","crv":"Ed25519","d":"{d}","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo","alg":"ES256"}}"#
            ),
            // RSA, a short `d`, not JSON.
            r#"{"kty":"RSA","n":"AQAB","e":"AQAB","d":"AQAB"}"#.to_owned(),
            format!(
                r#"{{"kty":"OKP","crv":"Ed25519","d":"{}","x":"x"}}"#,
                &d[..20]
            ),
            "not json".to_owned(),
        ] {
            let error = SigningKey::from_jwk(&jwk).unwrap_err().to_string();
            assert!(error.contains("signing_key"), "{error}");
            assert!(!error.contains(&d[..12]), "{error}");
        }
    }
}
