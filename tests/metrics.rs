//! Metrics of keyed caches and of the layers, recorded through the `metrics` facade into a
//! test recorder: keys by state, fetches under the keyed cache's name (never a key), replays by
//! outcome.
#![cfg(feature = "metrics")]

use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use tokenwarden::core::metrics::{FETCHES, KEYS};
use tokenwarden::http::metrics::REPLAYS;
use tokenwarden::{FetchError, KeyedCache, Scope, Token, TokenCache};
use tokenwarden_test_support::{Answer, LoopbackApi, recorded};
use tower::{Layer as _, ServiceExt};

fn value(all: &[(String, DebugValue)], name: &str) -> Option<f64> {
    match all.iter().find(|(n, _)| n == name)?.1 {
        DebugValue::Counter(n) => Some(n as f64),
        DebugValue::Gauge(g) => Some(g.into_inner()),
        DebugValue::Histogram(_) => None,
    }
}

fn paused_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap()
}

#[test]
fn a_keyed_cache_records_keys_by_state_and_fetches_under_its_name_never_a_key() {
    let recorder = DebuggingRecorder::new();
    metrics::with_local_recorder(&recorder, || {
        paused_runtime().block_on(async {
            let keyed = KeyedCache::<String>::builder()
                .with_name("acquirer")
                .with_factory(|merchant: &String| {
                    let merchant = merchant.clone();
                    Ok(TokenCache::builder(move || {
                        let merchant = merchant.clone();
                        async move {
                            match merchant.as_str() {
                                "merchant-secret-0" => Err(FetchError::rejected("bad password")),
                                "merchant-secret-1" => Err(FetchError::transient("issuer down")),
                                _ => Ok(Token::new(format!("tok-{merchant}"))
                                    .with_expires_in(Duration::from_secs(600))),
                            }
                        }
                    }))
                })
                .build();
            for n in 0..5 {
                let _ = keyed.get(&format!("merchant-secret-{n}")).await;
            }
            let summary = keyed.summary(3);
            assert_eq!(summary.keys, 5);
        });
    });
    let all = recorded(&recorder);
    let text = format!("{all:?}");
    let keys = |state: &str| value(&all, &format!("{KEYS}{{cache=acquirer,state={state}}}"));
    assert_eq!(keys("fresh"), Some(3.0), "{text}");
    assert_eq!(keys("rejected"), Some(1.0), "{text}");
    assert_eq!(keys("backing_off"), Some(1.0), "{text}");
    assert_eq!(keys("refreshing"), Some(0.0), "{text}");
    assert_eq!(
        value(
            &all,
            &format!("{FETCHES}{{cache=acquirer,outcome=success}}")
        ),
        Some(3.0),
        "{text}"
    );
    assert_eq!(
        value(
            &all,
            &format!("{FETCHES}{{cache=acquirer,outcome=rejected}}")
        ),
        Some(1.0),
        "{text}"
    );
    // Neither a key nor a token in any name or label.
    assert!(!text.contains("merchant-secret"), "{text}");
    assert!(!text.contains("tok-"), "{text}");
}

#[test]
fn the_layer_counts_replays_by_outcome() {
    let recorder = DebuggingRecorder::new();
    metrics::with_local_recorder(&recorder, || {
        paused_runtime().block_on(async {
            // The first token is rejected once; a request to /never is rejected whatever it
            // carries.
            let api = LoopbackApi::start(|received| {
                let token = received.header("authorization").unwrap_or("");
                if received.path == "/never" || token == "Bearer tok-1" {
                    Answer::new(401, "rejected")
                } else {
                    Answer::new(200, "ok")
                }
            })
            .await;
            let calls = Arc::new(AtomicUsize::new(0));
            let counted = Arc::clone(&calls);
            let cache = TokenCache::builder(move || {
                let n = counted.fetch_add(1, SeqCst) + 1;
                async move {
                    Ok::<_, FetchError>(
                        Token::new(format!("tok-{n}")).with_expires_in(Duration::from_secs(600)),
                    )
                }
            })
            .with_name("torus")
            .build()
            .unwrap();
            let client =
                tokenwarden::tower::TokenLayer::new(cache, Scope::origin(&api.origin()).unwrap())
                    .cloning_bodies()
                    .layer(Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>());
            // /pay: tok-1 rejected, replayed with tok-2 (replayed); tok-2 accepted. /never:
            // tok-2 rejected, replayed with tok-3, rejected too (replayed; tok-3 is a fresh
            // token rejected once); then tok-4, fresh and rejected again: held off
            // (still_rejected).
            for path in ["/pay", "/pay", "/never", "/never"] {
                let request = Request::get(api.url(path)).body(Empty::new()).unwrap();
                let response = client.clone().oneshot(request).await.unwrap();
                let _ = response.into_body().collect().await;
            }
        });
    });
    let all = recorded(&recorder);
    let text = format!("{all:?}");
    let replays =
        |outcome: &str| value(&all, &format!("{REPLAYS}{{cache=torus,outcome={outcome}}}"));
    assert_eq!(replays("replayed"), Some(2.0), "{text}");
    assert_eq!(replays("still_rejected"), Some(1.0), "{text}");
    assert_eq!(
        value(
            &all,
            "tokenwarden_token_invalidations_total{cache=torus,result=held_off}"
        ),
        Some(1.0),
        "{text}"
    );
    assert!(!text.contains("tok-"), "{text}");
}

#[test]
fn a_dpop_nonce_replay_is_counted_apart_from_token_replays() {
    let pem = std::fs::read_to_string(format!(
        "{}/crates/tokenwarden-gateways/tests/data/keys/p256.pem",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    let key = tokenwarden::gateways::dpop::DpopKey::new(
        tokenwarden::gateways::jose::SigningKey::from_pkcs8_pem(
            tokenwarden::gateways::jose::Algorithm::Es256,
            &pem,
        )
        .unwrap(),
    );
    let recorder = DebuggingRecorder::new();
    metrics::with_local_recorder(&recorder, || {
        paused_runtime().block_on(async {
            let api = tokenwarden_test_support::DpopApi::start(key.thumbprint()).await;
            let cache = TokenCache::builder(|| async {
                Ok::<_, FetchError>(Token::new("dpop-1").with_expires_in(Duration::from_secs(600)))
            })
            .with_name("bank")
            .with_presentation(tokenwarden::Presentation::dpop(Arc::new(key.clone())))
            .build()
            .unwrap();
            let client =
                tokenwarden::tower::TokenLayer::new(cache, Scope::origin(&api.origin()).unwrap())
                    .cloning_bodies()
                    .layer(Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>());
            // The first request is asked for the nonce; after a rotation, one more.
            for rotate in [false, false, true] {
                if rotate {
                    api.rotate_nonce();
                }
                let request = Request::get(api.url("/pay")).body(Empty::new()).unwrap();
                let response = client.clone().oneshot(request).await.unwrap();
                assert_eq!(response.status(), 200, "{:?}", api.refusals());
                let _ = response.into_body().collect().await;
            }
        });
    });
    let all = recorded(&recorder);
    let text = format!("{all:?}");
    let replays =
        |outcome: &str| value(&all, &format!("{REPLAYS}{{cache=bank,outcome={outcome}}}"));
    assert_eq!(replays("dpop_nonce"), Some(2.0), "{text}");
    assert_eq!(replays("replayed"), None, "{text}");
    assert_eq!(
        value(
            &all,
            "tokenwarden_token_fetches_total{cache=bank,outcome=success}"
        ),
        Some(1.0),
        "{text}"
    );
}
