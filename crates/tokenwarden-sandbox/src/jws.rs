//! Compact JWS (RFC 7515) signed by a public JWK, checked with ring: ES256, EdDSA, RS256
//! and PS256, nothing else; and JWK thumbprints (RFC 7638).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::signature::{self, UnparsedPublicKey};
use serde_json::Value;

/// base64url of the SHA-256 of `bytes`.
pub(crate) fn sha256_b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(ring::digest::digest(&ring::digest::SHA256, bytes))
}

/// A compact JWS, decoded.
pub(crate) struct Jws<'a> {
    pub(crate) header: Value,
    pub(crate) claims: Value,
    /// `header.payload`, as signed.
    signed: &'a str,
    signature: Vec<u8>,
}

impl<'a> Jws<'a> {
    pub(crate) fn parse(text: &'a str) -> Result<Self, &'static str> {
        let mut parts = text.split('.');
        let (Some(header), Some(claims), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err("not a compact JWS");
        };
        let object = |part: &str| {
            URL_SAFE_NO_PAD
                .decode(part)
                .ok()
                .and_then(|bytes| serde_json::from_slice::<Value>(&bytes).ok())
                .filter(Value::is_object)
        };
        Ok(Self {
            header: object(header).ok_or("the JOSE header is not base64url JSON")?,
            claims: object(claims).ok_or("the claims are not base64url JSON")?,
            signed: &text[..header.len() + 1 + claims.len()],
            signature: URL_SAFE_NO_PAD
                .decode(signature)
                .map_err(|_| "the signature is not base64url")?,
        })
    }

    /// Checks the signature with the public key `jwk`, by the header's `alg`, which must be
    /// one the key signs with.
    pub(crate) fn verify(&self, jwk: &Value) -> Result<(), &'static str> {
        let alg = self.header["alg"].as_str().unwrap_or_default();
        if jwk["alg"].as_str().is_some_and(|a| a != alg) {
            return Err("the alg is not the key's");
        }
        let member = |name: &str| {
            jwk[name]
                .as_str()
                .and_then(|v| URL_SAFE_NO_PAD.decode(v).ok())
                .ok_or("the jwk lacks a member of its key type")
        };
        let message = self.signed.as_bytes();
        let refused = |_| "the signature does not verify";
        match (alg, jwk["kty"].as_str(), jwk["crv"].as_str()) {
            ("ES256", Some("EC"), Some("P-256")) => {
                let (x, y) = (member("x")?, member("y")?);
                if x.len() != 32 || y.len() != 32 {
                    return Err("the jwk is not a P-256 point");
                }
                let point = [&[4][..], &x, &y].concat();
                UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, point)
                    .verify(message, &self.signature)
                    .map_err(refused)
            }
            ("EdDSA", Some("OKP"), Some("Ed25519")) => {
                UnparsedPublicKey::new(&signature::ED25519, member("x")?)
                    .verify(message, &self.signature)
                    .map_err(refused)
            }
            ("RS256" | "PS256", Some("RSA"), _) => {
                let params = if alg == "RS256" {
                    &signature::RSA_PKCS1_2048_8192_SHA256
                } else {
                    &signature::RSA_PSS_2048_8192_SHA256
                };
                signature::RsaPublicKeyComponents {
                    n: member("n")?,
                    e: member("e")?,
                }
                .verify(params, message, &self.signature)
                .map_err(refused)
            }
            ("ES256" | "EdDSA" | "RS256" | "PS256", _, _) => Err("the alg is not the key's"),
            _ => Err("the alg is not ES256 or EdDSA or PS256 or RS256"),
        }
    }
}

/// The RFC 7638 thumbprint of a public JWK (EC, OKP or RSA).
pub(crate) fn jwk_thumbprint(jwk: &Value) -> Result<String, &'static str> {
    let members: &[&str] = match jwk["kty"].as_str() {
        Some("EC") => &["crv", "kty", "x", "y"],
        Some("OKP") => &["crv", "kty", "x"],
        Some("RSA") => &["e", "kty", "n"],
        _ => return Err("the jwk's kty is not EC or OKP or RSA"),
    };
    let mut canonical = Vec::with_capacity(members.len());
    for name in members {
        let value = jwk[*name]
            .as_str()
            .ok_or("the jwk lacks a member of its key type")?;
        canonical.push(format!("\"{name}\":{}", Value::from(value)));
    }
    Ok(sha256_b64(
        format!("{{{}}}", canonical.join(",")).as_bytes(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

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
            jwk_thumbprint(&jwk).unwrap(),
            "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
        );
    }

    #[test]
    fn malformed_jws_are_refused_without_panicking() {
        for text in [
            "",
            ".",
            "..",
            "a.b.c",
            "a.b.c.d",
            "e30.e30.!!",
            "W10.e30.",
            "e30.W10.",
        ] {
            assert!(Jws::parse(text).is_err(), "{text:?}");
        }
        let jws = Jws::parse("e30.e30.").unwrap();
        for jwk in [
            json!({}),
            json!({"kty": "EC", "crv": "P-256", "x": "AA", "y": "AA"}),
            json!({"kty": "RSA", "n": "!", "e": "AQAB"}),
        ] {
            assert!(jws.verify(&jwk).is_err());
        }
    }

    /// Each algorithm's signature verifies with its key, and fails for other claims, another
    /// key, or another algorithm of the same key.
    #[test]
    fn each_algorithm_verifies_only_what_its_key_signed() {
        use tokenwarden_gateways::dpop::DpopKey;
        use tokenwarden_gateways::jose::{Algorithm, SigningKey};
        let key = |algorithm, file: &str| {
            let path = format!(
                "{}/../tokenwarden-gateways/tests/data/keys/{file}",
                env!("CARGO_MANIFEST_DIR")
            );
            let pem = std::fs::read_to_string(path).unwrap();
            DpopKey::new(SigningKey::from_pkcs8_pem(algorithm, &pem).unwrap())
        };
        let keys = [
            key(Algorithm::Es256, "p256.pem"),
            key(Algorithm::EdDsa, "ed25519.pem"),
            key(Algorithm::Rs256, "rsa2048.pem"),
            key(Algorithm::Ps256, "rsa2048.pem"),
        ];
        let other = key(Algorithm::Es256, "p256-other.pem");
        let other_claims = URL_SAFE_NO_PAD.encode(r#"{"htm":"POST"}"#);
        for (i, key) in keys.iter().enumerate() {
            let proof = key.proof("GET", "http://127.0.0.1/", None).unwrap();
            let proof = proof.to_str().unwrap();
            let jws = Jws::parse(proof).unwrap();
            let jwk = jws.header["jwk"].clone();
            assert_eq!(jws.verify(&jwk), Ok(()), "{i}");
            // A key registered for one algorithm verifies no other.
            let mut pinned = jwk.clone();
            pinned["alg"] = json!(if i == 3 { "RS256" } else { "PS256" });
            assert!(jws.verify(&pinned).is_err(), "{i}");
            assert_eq!(jwk_thumbprint(&jwk).unwrap(), key.thumbprint(), "{i}");
            let parts: Vec<&str> = proof.split('.').collect();
            let tampered = format!("{}.{other_claims}.{}", parts[0], parts[2]);
            assert!(Jws::parse(&tampered).unwrap().verify(&jwk).is_err(), "{i}");
            let foreign = other.proof("GET", "http://127.0.0.1/", None).unwrap();
            let foreign = Jws::parse(foreign.to_str().unwrap()).unwrap();
            assert!(jws.verify(&foreign.header["jwk"]).is_err(), "{i}");
            // RS256 and PS256 of one RSA key: each signature is of one padding only.
            if i >= 2 {
                let twin = keys[5 - i].proof("GET", "http://x/", None).unwrap();
                let twin = Jws::parse(twin.to_str().unwrap()).unwrap();
                let mut header = twin.header.clone();
                header["alg"] = jws.header["alg"].clone();
                let swapped = Jws { header, ..twin };
                assert!(swapped.verify(&jwk).is_err(), "{i}");
            }
        }
    }
}
