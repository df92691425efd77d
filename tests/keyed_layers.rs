//! Both layers over a keyed cache: each request's key chooses its token; a request without a
//! key is refused before anything is sent; a 401 for one key replays with that key's fresh
//! token and leaves the other keys alone.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokenwarden::{FetchError, KeyedCache, Replay, Scope, Token, TokenCache};
use tokenwarden_http::{KeyError, TokenKey};
use tokenwarden_test_support::{Answer, LoopbackApi};
use tower::{BoxError, Layer as _, ServiceExt};

/// Merchants `m-0`, `m-1`, … each minting `<merchant>-<n>`; fetches counted per merchant.
fn merchants(calls: &Arc<Mutex<HashMap<String, usize>>>) -> KeyedCache<String> {
    let calls = Arc::clone(calls);
    KeyedCache::builder()
        .with_name("acquirer")
        .with_factory(move |merchant: &String| {
            let (merchant, calls) = (merchant.clone(), Arc::clone(&calls));
            Ok(TokenCache::builder(move || {
                let n = {
                    let mut calls = calls.lock().unwrap();
                    let n = calls.entry(merchant.clone()).or_insert(0);
                    *n += 1;
                    *n
                };
                let token = format!("{merchant}-{n}");
                async move {
                    Ok::<_, FetchError>(Token::new(token).with_expires_in(Duration::from_secs(600)))
                }
            }))
        })
        .build()
}

/// An API that rejects the tokens listed in `revoked`, and otherwise answers with the token.
async fn api(revoked: &Arc<Mutex<Vec<String>>>) -> LoopbackApi {
    let revoked = Arc::clone(revoked);
    LoopbackApi::start(move |received| {
        let token = received
            .header("authorization")
            .and_then(|h| h.strip_prefix("Bearer "))
            .unwrap_or("");
        if token.is_empty() || revoked.lock().unwrap().iter().any(|r| r == token) {
            Answer::new(401, "rejected")
        } else {
            Answer::new(200, "ok")
        }
    })
    .await
}

fn bearer_seen(api: &LoopbackApi) -> Vec<String> {
    api.received()
        .iter()
        .map(|r| r.header("authorization").unwrap_or("-").to_owned())
        .collect()
}

#[tokio::test]
async fn the_tower_layer_takes_each_requests_token_from_its_keys_cache() {
    let calls = Arc::default();
    let revoked = Arc::default();
    let api = api(&revoked).await;
    let keyed = merchants(&calls);
    let client =
        tokenwarden::tower::TokenLayer::keyed(keyed.clone(), Scope::origin(&api.origin()).unwrap())
            .cloning_bodies()
            .layer(HyperClient::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>());
    let send = |merchant: Option<&str>| {
        let client = client.clone();
        let mut request = Request::get(api.url("/pay")).body(Empty::new()).unwrap();
        if let Some(merchant) = merchant {
            request
                .extensions_mut()
                .insert(TokenKey(merchant.to_owned()));
        }
        async move {
            let response = client.oneshot(request).await?;
            let status = response.status();
            let replay = response.extensions().get::<Replay>().cloned();
            let _ = response.into_body().collect().await;
            Ok::<_, BoxError>((status, replay))
        }
    };
    for merchant in ["m-0", "m-1", "m-0", "m-2"] {
        assert_eq!(send(Some(merchant)).await.unwrap().0, StatusCode::OK);
    }
    assert_eq!(
        bearer_seen(&api),
        [
            "Bearer m-0-1",
            "Bearer m-1-1",
            "Bearer m-0-1",
            "Bearer m-2-1"
        ]
    );

    // No key: a typed error, and nothing reached the API.
    let error = send(None).await.unwrap_err();
    assert!(
        matches!(error.downcast_ref::<KeyError>(), Some(KeyError::Missing)),
        "{error}"
    );
    assert_eq!(api.received().len(), 4);

    // m-1's token is rejected: replayed with m-1's fresh token; m-0 untouched.
    revoked.lock().unwrap().push("m-1-1".to_owned());
    let (status, replay) = send(Some("m-1")).await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert!(matches!(replay, Some(Replay::Replayed { .. })));
    assert_eq!(send(Some("m-0")).await.unwrap().0, StatusCode::OK);
    assert_eq!(
        &bearer_seen(&api)[4..],
        ["Bearer m-1-1", "Bearer m-1-2", "Bearer m-0-1"]
    );
    let calls = calls.lock().unwrap();
    assert_eq!((calls["m-0"], calls["m-1"], calls["m-2"]), (1, 2, 1));
}

#[tokio::test]
async fn the_reqwest_middleware_takes_each_requests_token_from_its_keys_cache() {
    let calls = Arc::default();
    let revoked = Arc::default();
    let api = api(&revoked).await;
    let keyed = merchants(&calls);
    let http = tokenwarden::reqwest::client_builder()
        .no_proxy()
        .build()
        .unwrap();
    let client = reqwest_middleware::ClientBuilder::new(http)
        .with(tokenwarden::reqwest::TokenMiddleware::keyed(
            keyed.clone(),
            Scope::origin(&api.origin()).unwrap(),
        ))
        .build();
    let url = api.url("/pay");
    for merchant in ["m-0", "m-1", "m-0"] {
        let response = client
            .get(&url)
            .with_extension(TokenKey(merchant.to_owned()))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }
    assert_eq!(
        bearer_seen(&api),
        ["Bearer m-0-1", "Bearer m-1-1", "Bearer m-0-1"]
    );

    let error = client.get(&url).send().await.unwrap_err();
    let reqwest_middleware::Error::Middleware(error) = error else {
        panic!("{error}")
    };
    assert!(
        matches!(error.downcast_ref::<KeyError>(), Some(KeyError::Missing)),
        "{error}"
    );
    assert_eq!(api.received().len(), 3, "nothing sent without a key");

    revoked.lock().unwrap().push("m-0-1".to_owned());
    let response = client
        .get(&url)
        .with_extension(TokenKey("m-0".to_owned()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(matches!(
        response.extensions().get::<Replay>(),
        Some(Replay::Replayed { .. })
    ));
    assert_eq!(&bearer_seen(&api)[3..], ["Bearer m-0-1", "Bearer m-0-2"]);
}

#[tokio::test]
async fn a_key_can_come_from_a_header_and_an_unknown_key_is_refused_unsent() {
    let revoked = Arc::default();
    let api = api(&revoked).await;
    // Registered merchants only, no factory.
    let keyed = KeyedCache::<String>::builder().build();
    keyed
        .register(
            "m-9".to_owned(),
            TokenCache::builder(|| async { Ok::<_, FetchError>(Token::new("nine")) }),
        )
        .unwrap();
    let layer = tokenwarden::tower::TokenLayer::keyed_by(
        keyed,
        Scope::origin(&api.origin()).unwrap(),
        |request| {
            request
                .headers
                .get("x-merchant")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        },
    );
    let client = layer
        .cloning_bodies()
        .layer(HyperClient::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>());
    let send = |merchant: &str| {
        let request = Request::get(api.url("/pay"))
            .header("x-merchant", merchant)
            .body(Empty::new())
            .unwrap();
        client.clone().oneshot(request)
    };
    assert_eq!(send("m-9").await.unwrap().status(), StatusCode::OK);
    let error = send("m-404").await.unwrap_err();
    assert!(
        matches!(
            error.downcast_ref::<KeyError>(),
            Some(KeyError::Cache(tokenwarden::Error::UnknownKey { .. }))
        ),
        "{error}"
    );
    assert_eq!(bearer_seen(&api), ["Bearer nine"]);
}

/// The tower layer over hyper, as the keyed tests build it.
type Tower = tokenwarden::tower::TokenService<
    HyperClient<HttpConnector, Empty<Bytes>>,
    tokenwarden::tower::CloneBody,
>;

/// `keyed` behind each layer, for `api`: the tower layer over hyper, and the reqwest
/// middleware.
fn both_layers(
    keyed: &KeyedCache<String>,
    api: &LoopbackApi,
) -> (Tower, reqwest_middleware::ClientWithMiddleware) {
    let scope = Scope::origin(&api.origin()).unwrap();
    let tower = tokenwarden::tower::TokenLayer::keyed(keyed.clone(), scope.clone())
        .cloning_bodies()
        .layer(HyperClient::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>());
    let http = tokenwarden::reqwest::client_builder()
        .no_proxy()
        .build()
        .unwrap();
    let reqwest = reqwest_middleware::ClientBuilder::new(http)
        .with(tokenwarden::reqwest::TokenMiddleware::keyed(
            keyed.clone(),
            scope,
        ))
        .build();
    (tower, reqwest)
}

/// A `GET /pay` for `merchant` through the tower layer; its status.
async fn via_tower(tower: &Tower, api: &LoopbackApi, merchant: &str) -> StatusCode {
    let mut request = Request::get(api.url("/pay")).body(Empty::new()).unwrap();
    request
        .extensions_mut()
        .insert(TokenKey(merchant.to_owned()));
    tower.clone().oneshot(request).await.unwrap().status()
}

/// A `GET /pay` for `merchant` through the reqwest middleware; its status.
async fn via_reqwest(
    reqwest: &reqwest_middleware::ClientWithMiddleware,
    api: &LoopbackApi,
    merchant: &str,
) -> StatusCode {
    reqwest
        .get(api.url("/pay"))
        .with_extension(TokenKey(merchant.to_owned()))
        .send()
        .await
        .unwrap()
        .status()
}

#[tokio::test]
async fn both_layers_serve_a_keys_token_from_the_threads_copy_not_the_keys_lock() {
    let calls = Arc::default();
    let revoked = Arc::default();
    let api = api(&revoked).await;
    let keyed = merchants(&calls);
    let (tower, reqwest) = both_layers(&keyed, &api);
    for merchant in ["m-0", "m-1"] {
        for _ in 0..20 {
            assert_eq!(via_tower(&tower, &api, merchant).await, StatusCode::OK);
            assert_eq!(via_reqwest(&reqwest, &api, merchant).await, StatusCode::OK);
        }
        // 40 requests on this thread: the first fetched, the second read the key's cache
        // (under its lock) and left this thread a copy, the other 38 were served from it.
        let stats = keyed.handle(&merchant.to_owned()).unwrap().cache().stats();
        assert_eq!(stats.fetches, 1, "{merchant}: {stats:?}");
        assert!(stats.hits <= 1, "{merchant}: {stats:?}");
    }
    assert_eq!(api.received().len(), 80);
}

#[tokio::test(start_paused = true)]
async fn a_request_in_the_refresh_ahead_window_starts_the_refresh_through_either_layer() {
    // 600 s tokens: the refresh-ahead window opens between 70 % and 80 % of their life.
    let calls: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
    let revoked = Arc::default();
    let api = api(&revoked).await;
    let keyed = merchants(&calls);
    let (tower, reqwest) = both_layers(&keyed, &api);
    assert_eq!(via_tower(&tower, &api, "m-0").await, StatusCode::OK);
    assert_eq!(via_reqwest(&reqwest, &api, "m-1").await, StatusCode::OK);
    tokio::time::sleep(Duration::from_secs(490)).await;
    // In the window: each request is served the current token at once, and the first starts
    // its key's background refresh.
    for _ in 0..5 {
        assert_eq!(via_tower(&tower, &api, "m-0").await, StatusCode::OK);
        assert_eq!(via_reqwest(&reqwest, &api, "m-1").await, StatusCode::OK);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    {
        let calls = calls.lock().unwrap();
        assert_eq!(
            (calls["m-0"], calls["m-1"]),
            (2, 2),
            "one refresh ahead per key"
        );
    }
    for merchant in ["m-0", "m-1"] {
        let stats = keyed.handle(&merchant.to_owned()).unwrap().cache().stats();
        assert_eq!(stats.refreshes_ahead, 1, "{merchant}: {stats:?}");
    }
    // The request that started a refresh went at once with the current token; once the
    // refresh landed, the next ones carried the new token.
    let seen = bearer_seen(&api);
    assert_eq!(&seen[2..4], ["Bearer m-0-1", "Bearer m-1-1"], "{seen:?}");
    assert_eq!(&seen[10..], ["Bearer m-0-2", "Bearer m-1-2"], "{seen:?}");
}

#[tokio::test]
async fn a_token_key_of_the_wrong_type_is_named_so_through_either_layer() {
    let calls = Arc::default();
    let revoked = Arc::default();
    let api = api(&revoked).await;
    let keyed = merchants(&calls);
    let scope = Scope::origin(&api.origin()).unwrap();
    // The layer's keys are `String`; the request carries a `TokenKey(&str)`.
    let tower = tokenwarden::tower::TokenLayer::keyed(keyed.clone(), scope.clone())
        .cloning_bodies()
        .layer(HyperClient::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>());
    let mut request = Request::get(api.url("/orders")).body(Empty::new()).unwrap();
    request.extensions_mut().insert(TokenKey("m-0"));
    let tower_error = tower.oneshot(request).await.unwrap_err();
    let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
        .with(tokenwarden::reqwest::TokenMiddleware::keyed(keyed, scope))
        .build();
    let reqwest_error = client
        .get(api.url("/orders"))
        .with_extension(TokenKey("m-0"))
        .send()
        .await
        .unwrap_err();
    for error in [tower_error.to_string(), format!("{reqwest_error:#}")] {
        assert!(
            error.contains("TokenKey is of the wrong type: it holds a &str, the layer's keys are alloc::string::String"),
            "{error}"
        );
    }
    assert!(matches!(
        tower_error.downcast_ref::<KeyError>(),
        Some(KeyError::WrongType { found: "&str", .. })
    ));
    assert!(api.received().is_empty(), "nothing was sent");
}
