//! The OAuth 2.0 mode: `private_key_jwt` clients get DPoP-bound tokens, which its API takes
//! only with a proof of their key on every request, and both ask for the server's nonce.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{Ed25519KeyPair, KeyPair};
use serde_json::{Value, json};
use tokenwarden_core::{DpopProver, Presentation, TokenCache};
use tokenwarden_gateways::dpop::DpopKey;
use tokenwarden_gateways::jose::{Algorithm, SigningKey};
use tokenwarden_gateways::oauth2::{self, ClientCredentials};
use tokenwarden_gateways::{GatewayError, IssuerClient};
use tokenwarden_sandbox::Sandbox;
use tokenwarden_test_support::{gateway_error, middleware_client};

const CLIENT: &str = "payments-client";

fn b64(bytes: impl AsRef<[u8]>) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn unique() -> String {
    let mut bytes = [0; 16];
    SystemRandom::new().fill(&mut bytes).unwrap();
    b64(bytes)
}

/// A fresh Ed25519 key, signing by hand (any header, any claims) or as the client does.
struct Key {
    pair: Ed25519KeyPair,
    signing: SigningKey,
}

impl Key {
    fn new() -> Self {
        let der = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
        let pem = format!(
            "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
            STANDARD.encode(der.as_ref())
        );
        Self {
            pair: Ed25519KeyPair::from_pkcs8(der.as_ref()).unwrap(),
            signing: SigningKey::from_pkcs8_pem(Algorithm::EdDsa, &pem).unwrap(),
        }
    }

    fn jwk(&self) -> Value {
        json!({"kty": "OKP", "crv": "Ed25519", "x": b64(self.pair.public_key())})
    }

    fn sign(&self, header: &Value, claims: &Value) -> String {
        let input = format!("{}.{}", b64(header.to_string()), b64(claims.to_string()));
        format!("{input}.{}", b64(self.pair.sign(input.as_bytes())))
    }

    fn assertion(&self, claims: &Value) -> String {
        self.sign(&json!({"alg": "EdDSA", "typ": "JWT"}), claims)
    }

    /// A DPoP proof of this key.
    fn proof(&self, claims: &Value) -> String {
        let header = json!({"typ": "dpop+jwt", "alg": "EdDSA", "jwk": self.jwk()});
        self.sign(&header, claims)
    }
}

fn assertion_claims(sandbox: &Sandbox) -> Value {
    json!({"iss": CLIENT, "sub": CLIENT, "aud": sandbox.oauth2_token_url(),
           "jti": unique(), "iat": now(), "exp": now() + 60})
}

fn proof_claims(htm: &str, htu: &str, nonce: &str) -> Value {
    json!({"jti": unique(), "htm": htm, "htu": htu, "iat": now(), "nonce": nonce})
}

/// A token request's form fields, in order.
type Form = Vec<(String, String)>;

fn form(assertion: &str) -> Form {
    [
        ("grant_type", "client_credentials"),
        ("client_id", CLIENT),
        (
            "client_assertion_type",
            "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        ),
        ("client_assertion", assertion),
    ]
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .to_vec()
}

/// A raw answer: status, `WWW-Authenticate`, `DPoP-Nonce`, `Cache-Control`, JSON body.
struct Raw {
    status: u16,
    challenge: String,
    nonce: String,
    cache_control: String,
    body: Value,
    text: String,
}

async fn read(response: reqwest::Response) -> Raw {
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let (status, challenge, nonce, cache_control) = (
        response.status().as_u16(),
        header("www-authenticate"),
        header("dpop-nonce"),
        header("cache-control"),
    );
    let text = response.text().await.unwrap();
    Raw {
        status,
        challenge,
        nonce,
        cache_control,
        body: serde_json::from_str(&text).unwrap_or(Value::Null),
        text,
    }
}

async fn token_request(sandbox: &Sandbox, body: String, proofs: &[&str]) -> Raw {
    let mut request = reqwest::Client::new()
        .post(sandbox.oauth2_token_url())
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body);
    for proof in proofs {
        request = request.header("dpop", *proof);
    }
    read(request.send().await.unwrap()).await
}

fn encode(form: &Form) -> String {
    form_urlencoded::Serializer::new(String::new())
        .extend_pairs(form)
        .finish()
}

/// The current nonce, from the answer to a proof without one.
async fn nonce(sandbox: &Sandbox, key: &Key) -> String {
    let mut claims = proof_claims("POST", &sandbox.oauth2_token_url(), "");
    claims.as_object_mut().unwrap().remove("nonce");
    let raw = token_request(
        sandbox,
        encode(&form(&key.assertion(&assertion_claims(sandbox)))),
        &[&key.proof(&claims)],
    )
    .await;
    assert_eq!(
        (raw.status, raw.body["error"].as_str()),
        (400, Some("use_dpop_nonce"))
    );
    raw.nonce
}

/// A token bound to `dpop`, asked for by hand.
async fn raw_token(sandbox: &Sandbox, client: &Key, dpop: &Key) -> String {
    let nonce = nonce(sandbox, client).await;
    let raw = token_request(
        sandbox,
        encode(&form(&client.assertion(&assertion_claims(sandbox)))),
        &[&dpop.proof(&proof_claims("POST", &sandbox.oauth2_token_url(), &nonce))],
    )
    .await;
    assert_eq!(raw.status, 200, "{}", raw.text);
    raw.body["access_token"].as_str().unwrap().to_owned()
}

/// Client credentials of `CLIENT` asserting with `assertion`, tokens bound to `dpop`.
fn credentials(sandbox: &Sandbox, assertion: SigningKey, dpop: &DpopKey) -> ClientCredentials {
    ClientCredentials::private_key_jwt(
        IssuerClient::new().unwrap(),
        &sandbox.oauth2_token_url(),
        CLIENT,
        assertion,
    )
    .unwrap()
    .with_dpop(dpop.clone())
}

#[tokio::test]
async fn a_dpop_token_is_issued_after_one_nonce_challenge() {
    let sandbox = Sandbox::start().await.unwrap();
    let key = Key::new();
    sandbox.register_client(CLIENT, key.signing.public_jwk());
    let dpop = DpopKey::new(Key::new().signing);
    let cache = oauth2::cache(credentials(&sandbox, key.signing.clone(), &dpop))
        .build()
        .unwrap();
    let token = cache.get().await.unwrap();
    assert!(token.is_dpop());
    let stats = sandbox.oauth2_stats();
    assert_eq!(stats.token_requests, 2, "asked for the nonce, then issued");
    assert_eq!(stats.tokens_issued, 1);
    assert_eq!(stats.nonce_challenges, 1);
    assert_eq!(stats.refused, 0);
}

#[tokio::test]
async fn api_requests_carry_proofs_and_a_rotated_nonce_is_replayed_unseen() {
    let sandbox = Sandbox::start().await.unwrap();
    let key = Key::new();
    sandbox.register_client(CLIENT, key.signing.public_jwk());
    let dpop = DpopKey::new(Key::new().signing);
    let cache = oauth2::cache(credentials(&sandbox, key.signing.clone(), &dpop))
        .build()
        .unwrap();
    cache.get().await.unwrap();
    // The nonce the token endpoint gave is stale by the first API request.
    sandbox.rotate_dpop_nonce();
    let client = middleware_client(cache.clone(), &sandbox.url());
    let url = sandbox.oauth2_api_url("payments?page=2");
    let response = client.get(&url).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap(), r#"{"ok":true}"#);
    let stats = sandbox.oauth2_stats();
    assert_eq!(
        (
            stats.api_requests,
            stats.api_accepted,
            stats.nonce_challenges
        ),
        (2, 1, 2),
        "challenged, then replayed with the nonce"
    );
    // The nonce is current now: no challenge.
    let response = client.get(&url).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(sandbox.oauth2_stats().api_requests, 3);
    sandbox.rotate_dpop_nonce();
    let response = client.post(&url).body("{}").send().await.unwrap();
    assert_eq!(response.status(), 200, "the caller sees no 401");
    let stats = sandbox.oauth2_stats();
    assert_eq!(
        (
            stats.api_requests,
            stats.api_accepted,
            stats.nonce_challenges
        ),
        (5, 3, 3)
    );
    assert_eq!((stats.tokens_issued, stats.refused), (1, 0));
}

#[tokio::test]
async fn every_algorithm_signs_what_the_sandbox_verifies() {
    let sandbox = Sandbox::start().await.unwrap();
    let pem = |file: &str| {
        std::fs::read_to_string(format!(
            "{}/../tokenwarden-gateways/tests/data/keys/{file}",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap()
    };
    for (algorithm, file) in [
        (Algorithm::Es256, "p256.pem"),
        (Algorithm::EdDsa, "ed25519.pem"),
        (Algorithm::Rs256, "rsa2048.pem"),
        (Algorithm::Ps256, "rsa2048.pem"),
    ] {
        let key = SigningKey::from_pkcs8_pem(algorithm, &pem(file))
            .unwrap()
            .with_key_id("k1");
        // The same key asserts and proves.
        sandbox.register_client(CLIENT, key.public_jwk());
        let dpop = DpopKey::new(key.clone());
        let cache = oauth2::cache(credentials(&sandbox, key, &dpop))
            .build()
            .unwrap();
        let client = middleware_client(cache, &sandbox.url());
        let response = client
            .get(sandbox.oauth2_api_url("payments"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{algorithm:?}");
    }
    let stats = sandbox.oauth2_stats();
    assert_eq!((stats.tokens_issued, stats.api_accepted), (4, 4));
    assert_eq!(stats.refused, 0);
}

#[tokio::test]
async fn an_unregistered_client_is_refused_as_invalid_client() {
    let sandbox = Sandbox::start().await.unwrap();
    let dpop = DpopKey::new(Key::new().signing);
    let error = oauth2::cache(credentials(&sandbox, Key::new().signing, &dpop))
        .build()
        .unwrap()
        .get()
        .await
        .unwrap_err();
    assert!(
        matches!(gateway_error(&error), GatewayError::OAuth { error, .. } if error == "invalid_client"),
        "{error:?}"
    );
    assert_eq!(sandbox.oauth2_stats().tokens_issued, 0);
}

#[tokio::test]
async fn an_assertion_signed_by_another_key_is_refused_as_invalid_client() {
    let sandbox = Sandbox::start().await.unwrap();
    sandbox.register_client(CLIENT, Key::new().signing.public_jwk());
    let dpop = DpopKey::new(Key::new().signing);
    let error = oauth2::cache(credentials(&sandbox, Key::new().signing, &dpop))
        .build()
        .unwrap()
        .get()
        .await
        .unwrap_err();
    match gateway_error(&error) {
        GatewayError::OAuth {
            error, description, ..
        } => {
            assert_eq!(error, "invalid_client");
            assert!(
                description
                    .as_deref()
                    .unwrap_or_default()
                    .contains("verify"),
                "{description:?}"
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(sandbox.oauth2_stats().tokens_issued, 0);
}

#[tokio::test]
async fn a_proof_by_another_key_reaches_the_caller_as_invalid_dpop_proof() {
    let sandbox = Sandbox::start().await.unwrap();
    let key = Key::new();
    sandbox.register_client(CLIENT, key.signing.public_jwk());
    let dpop = DpopKey::new(Key::new().signing);
    // Tokens bound to `dpop`, API requests proven with another key.
    let other = DpopKey::new(Key::new().signing);
    let cache = TokenCache::builder(credentials(&sandbox, key.signing.clone(), &dpop))
        .with_presentation(Presentation::dpop(Arc::new(other)))
        .build()
        .unwrap();
    let client = middleware_client(cache, &sandbox.url());
    let response = client
        .get(sandbox.oauth2_api_url("payments"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    let challenge = response.headers()["www-authenticate"].to_str().unwrap();
    assert!(
        challenge.contains(r#"error="invalid_dpop_proof""#),
        "{challenge}"
    );
    let stats = sandbox.oauth2_stats();
    assert_eq!(
        (stats.api_requests, stats.refused, stats.tokens_issued),
        (1, 1, 1),
        "neither replayed nor a new token asked for"
    );
}

/// Checks that `raw` is an `error` answer with `status` and a description, echoing nothing
/// of `sent`.
fn assert_refused(raw: &Raw, name: &str, status: u16, error: &str, sent: &[&str]) {
    assert_eq!(
        (raw.status, raw.body["error"].as_str()),
        (status, Some(error)),
        "{name}: {}",
        raw.text
    );
    assert!(raw.body["error_description"].is_string(), "{name}");
    for sent in sent.iter().filter(|s| s.len() > 8) {
        let echoed = raw.text.contains(sent) || raw.challenge.contains(sent);
        assert!(!echoed, "{name}: echoed what was sent");
    }
}

/// The client assertion of a form body.
fn assertion_of(body: &str) -> String {
    form_urlencoded::parse(body.as_bytes())
        .find(|(k, _)| k == "client_assertion")
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

#[tokio::test]
async fn each_fault_of_a_token_request_is_refused_by_name() {
    let sandbox = Sandbox::start().await.unwrap();
    let client = Key::new();
    let dpop = Key::new();
    sandbox.register_client(CLIENT, client.signing.public_jwk());
    let nonce = nonce(&sandbox, &client).await;
    let token_url = sandbox.oauth2_token_url();
    let t = now();
    // A good request's body and proof, each with one change.
    let request = |claims: &dyn Fn(&mut Value), fields: &dyn Fn(&mut Form)| {
        let mut c = assertion_claims(&sandbox);
        claims(&mut c);
        let mut f = form(&client.assertion(&c));
        fields(&mut f);
        encode(&f)
    };
    let body = |claims: &dyn Fn(&mut Value)| request(claims, &|_| {});
    let good = || body(&|_| {});
    let proof = |change: &dyn Fn(&mut Value)| {
        let mut claims = proof_claims("POST", &token_url, &nonce);
        change(&mut claims);
        dpop.proof(&claims)
    };
    let good_proof = || proof(&|_| {});
    let header = |typ: &str, jwk: Value| json!({"typ": typ, "alg": "EdDSA", "jwk": jwk});
    let claims = proof_claims("POST", &token_url, &nonce);
    let mut private = dpop.jwk();
    private["d"] = json!(b64([1; 32]));

    let client_faults = [
        (
            "unregistered client",
            request(
                &|c| (c["iss"], c["sub"]) = (json!("someone"), json!("someone")),
                &|f| f.retain(|(k, _)| k != "client_id"),
            ),
        ),
        (
            "client_id not iss",
            request(&|_| {}, &|f| f[1].1 = "someone".into()),
        ),
        ("no assertion", request(&|_| {}, &|f| f.truncate(3))),
        (
            "assertion type",
            request(&|_| {}, &|f| f[2].1 = "urn:x".into()),
        ),
        ("not a JWS", encode(&form("a.b"))),
        (
            "alg none",
            encode(&form(&format!(
                "{}.{}.",
                b64(r#"{"alg":"none"}"#),
                b64(assertion_claims(&sandbox).to_string())
            ))),
        ),
        (
            "signed by another key",
            encode(&form(&dpop.assertion(&assertion_claims(&sandbox)))),
        ),
        (
            "aud elsewhere",
            body(&|c| c["aud"] = json!("https://as.example")),
        ),
        (
            "expired",
            body(&|c| (c["iat"], c["exp"]) = (json!(t - 120), json!(t - 1))),
        ),
        ("no exp", body(&|c| c["exp"] = Value::Null)),
        (
            "iat ahead",
            body(&|c| (c["iat"], c["exp"]) = (json!(t + 120), json!(t + 180))),
        ),
        ("sub not iss", body(&|c| c["sub"] = json!("someone"))),
        ("no jti", body(&|c| c["jti"] = Value::Null)),
    ];
    let form_faults = [
        (
            "grant_type password",
            request(&|_| {}, &|f| f[0].1 = "password".into()),
            "unsupported_grant_type",
        ),
        (
            "no grant_type",
            request(&|_| {}, &|f| {
                f.remove(0);
            }),
            "invalid_request",
        ),
        (
            "repeated parameter",
            request(&|_| {}, &|f| {
                f.push(("grant_type".into(), "client_credentials".into()))
            }),
            "invalid_request",
        ),
    ];
    let proof_faults = [
        ("no proof", vec![]),
        ("two proofs", vec![good_proof(), good_proof()]),
        ("garbage proof", vec!["a.b.c".to_owned()]),
        (
            "typ JWT",
            vec![dpop.sign(&header("JWT", dpop.jwk()), &claims)],
        ),
        (
            "private jwk",
            vec![dpop.sign(&header("dpop+jwt", private), &claims)],
        ),
        (
            "signed by another key",
            vec![client.sign(&header("dpop+jwt", dpop.jwk()), &claims)],
        ),
        ("htm GET", vec![proof(&|c| c["htm"] = json!("GET"))]),
        (
            "htu elsewhere",
            vec![proof(&|c| {
                c["htu"] = json!(sandbox.oauth2_api_url("token"))
            })],
        ),
        ("old iat", vec![proof(&|c| c["iat"] = json!(t - 120))]),
        ("no jti", vec![proof(&|c| c["jti"] = Value::Null)]),
    ];
    let nonce_faults = [
        ("stale nonce", proof(&|c| c["nonce"] = json!("old"))),
        ("no nonce", proof(&|c| c["nonce"] = Value::Null)),
    ];
    let refusals = (client_faults.len() + form_faults.len() + proof_faults.len()) as u64;

    let cases = client_faults
        .into_iter()
        .map(|(name, body)| (name, body, vec![good_proof()], 401, "invalid_client"))
        .chain(
            form_faults
                .into_iter()
                .map(|(name, body, error)| (name, body, vec![good_proof()], 400, error)),
        )
        .chain(
            proof_faults
                .into_iter()
                .map(|(name, proofs)| (name, good(), proofs, 400, "invalid_dpop_proof")),
        )
        .chain(
            nonce_faults
                .into_iter()
                .map(|(name, proof)| (name, good(), vec![proof], 400, "use_dpop_nonce")),
        );
    for (name, body, proofs, status, error) in cases {
        let sent: Vec<&str> = proofs.iter().map(String::as_str).collect();
        let raw = token_request(&sandbox, body.clone(), &sent).await;
        let assertion = assertion_of(&body);
        assert_refused(
            &raw,
            name,
            status,
            error,
            &[&sent[..], &[&assertion]].concat(),
        );
        assert_eq!(raw.nonce, nonce, "{name}: every answer carries the nonce");
        assert_eq!(raw.cache_control, "no-store", "{name}");
    }
    let stats = sandbox.oauth2_stats();
    assert_eq!((stats.tokens_issued, stats.refused), (0, refusals));

    // A good request, then each half of it again.
    let (body, proof) = (good(), good_proof());
    let raw = token_request(&sandbox, body.clone(), &[&proof]).await;
    assert_eq!(raw.status, 200, "{}", raw.text);
    assert_eq!(raw.body["token_type"], "DPoP");
    assert_eq!(raw.body["expires_in"], 60);
    assert_eq!(raw.cache_control, "no-store");
    assert!(raw.body["access_token"].as_str().unwrap().len() >= 32);
    let raw = token_request(&sandbox, body, &[&good_proof()]).await;
    assert_refused(&raw, "assertion replayed", 401, "invalid_client", &[]);
    let raw = token_request(&sandbox, good(), &[&proof]).await;
    assert_refused(&raw, "proof replayed", 400, "invalid_dpop_proof", &[]);
    // The lifetime is the sandbox's.
    sandbox.set_token_lifetime(Duration::from_secs(120));
    let raw = token_request(&sandbox, good(), &[&good_proof()]).await;
    assert_eq!(raw.body["expires_in"], 120);
    assert_eq!(sandbox.oauth2_stats().tokens_issued, 2);
}

async fn api_request(url: &str, authorization: &[String], proofs: &[String]) -> Raw {
    let mut request = reqwest::Client::new().get(url);
    for value in authorization {
        request = request.header("authorization", value);
    }
    for proof in proofs {
        request = request.header("dpop", proof);
    }
    read(request.send().await.unwrap()).await
}

#[tokio::test]
async fn each_fault_of_an_api_request_is_refused_by_name() {
    let sandbox = Sandbox::start().await.unwrap();
    let client = Key::new();
    let dpop = Key::new();
    sandbox.register_client(CLIENT, client.signing.public_jwk());
    let token = raw_token(&sandbox, &client, &dpop).await;
    let nonce = nonce(&sandbox, &client).await;
    let url = sandbox.oauth2_api_url("payments");
    let ath = |token: &str| DpopKey::new(dpop.signing.clone()).token_hash(token);
    let claims = || {
        let mut claims = proof_claims("GET", &url, &nonce);
        claims["ath"] = json!(ath(&token));
        claims
    };
    let proof = |change: &dyn Fn(&mut Value)| {
        let mut c = claims();
        change(&mut c);
        vec![dpop.proof(&c)]
    };
    let good = || proof(&|_| {});
    let authorization = vec![format!("DPoP {token}")];

    let first = good();
    let raw = api_request(&url, &authorization, &first).await;
    assert_eq!((raw.status, raw.body.clone()), (200, json!({"ok": true})));
    assert_eq!(raw.nonce, nonce);
    // The URL's query is not part of `htu`.
    let raw = api_request(&format!("{url}?page=2"), &authorization, &good()).await;
    assert_eq!(raw.status, 200, "{}", raw.text);

    let t = now();
    let token_faults = [
        ("Bearer", vec![format!("Bearer {token}")], "invalid_token"),
        (
            "unknown token",
            vec!["DPoP abc".to_owned()],
            "invalid_token",
        ),
        ("no token", vec!["DPoP".to_owned()], "invalid_token"),
        (
            "two tokens",
            [authorization.clone(), authorization.clone()].concat(),
            "invalid_request",
        ),
    ];
    let proof_faults = [
        ("replayed proof", first),
        ("no proof", vec![]),
        ("two proofs", [good(), good()].concat()),
        ("garbage proof", vec!["e30.e30.e30".to_owned()]),
        ("another key", vec![client.proof(&claims())]),
        ("htm POST", proof(&|c| c["htm"] = json!("POST"))),
        (
            "htu elsewhere",
            proof(&|c| c["htu"] = json!(sandbox.oauth2_api_url("other"))),
        ),
        (
            "ath of another token",
            proof(&|c| c["ath"] = json!(b64([0; 32]))),
        ),
        ("no ath", proof(&|c| c["ath"] = Value::Null)),
        ("old iat", proof(&|c| c["iat"] = json!(t - 120))),
        ("iat ahead", proof(&|c| c["iat"] = json!(t + 120))),
    ];
    let nonce_faults = [
        ("no nonce", proof(&|c| c["nonce"] = Value::Null)),
        ("stale nonce", proof(&|c| c["nonce"] = json!("old"))),
    ];
    let refusals = (token_faults.len() + proof_faults.len()) as u64;
    let cases = token_faults
        .into_iter()
        .map(|(name, authorization, error)| (name, authorization, good(), error))
        .chain(
            proof_faults
                .into_iter()
                .map(|(name, proofs)| (name, authorization.clone(), proofs, "invalid_dpop_proof")),
        )
        .chain(
            nonce_faults
                .into_iter()
                .map(|(name, proofs)| (name, authorization.clone(), proofs, "use_dpop_nonce")),
        );
    for (name, authorization, proofs, error) in cases {
        let raw = api_request(&url, &authorization, &proofs).await;
        let status = if error == "invalid_request" { 400 } else { 401 };
        let sent: Vec<&str> = proofs
            .iter()
            .map(String::as_str)
            .chain([token.as_str()])
            .collect();
        assert_refused(&raw, name, status, error, &sent);
        let challenge = format!(r#"DPoP error="{error}""#);
        assert!(
            raw.challenge.starts_with(&challenge),
            "{name}: {}",
            raw.challenge
        );
        assert_eq!(raw.nonce, nonce, "{name}");
    }
    // No credentials at all: a challenge without an error (RFC 6750 §3.1).
    let raw = api_request(&url, &[], &[]).await;
    assert_eq!(raw.status, 401);
    let bare = raw.challenge.starts_with("DPoP") && !raw.challenge.contains("error=");
    assert!(bare, "{}", raw.challenge);
    let stats = sandbox.oauth2_stats();
    assert_eq!((stats.api_accepted, stats.refused), (2, refusals + 1));

    // An expired token.
    sandbox.set_token_lifetime(Duration::ZERO);
    let expired = raw_token(&sandbox, &client, &dpop).await;
    let mut claims = claims();
    claims["ath"] = json!(ath(&expired));
    let raw = api_request(&url, &[format!("DPoP {expired}")], &[dpop.proof(&claims)]).await;
    assert_refused(&raw, "expired", 401, "invalid_token", &[&expired]);
}

#[tokio::test]
async fn other_paths_and_methods_are_clean_errors() {
    let sandbox = Sandbox::start().await.unwrap();
    let http = reqwest::Client::new();
    let raw = read(http.get(sandbox.oauth2_token_url()).send().await.unwrap()).await;
    assert_eq!(
        (raw.status, raw.body["error"].as_str()),
        (405, Some("invalid_request"))
    );
    let raw = read(
        http.get(format!("{}/oauth2/other", sandbox.url()))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(raw.status, 404);
    let raw = read(
        http.post(sandbox.oauth2_token_url())
            .body(vec![0xff, 0xfe, b'=', b'&', b'%'])
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(raw.status, 400);
    assert_eq!(sandbox.oauth2_stats().token_requests, 2);
}
