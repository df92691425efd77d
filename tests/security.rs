//! Tokens and credentials go only where they belong.
//!
//! Attacks on loopback only: a second host name that resolves to `127.0.0.1` (`localhost`,
//! or any name through [`LoopbackResolver`] / reqwest's `resolve`) stands in for another host,
//! and a [`Recorder`] there keeps the raw bytes it receives, so that each test can assert that
//! **zero** token or credential bytes arrived.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, StatusCode};
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokenwarden::{
    ConfigError, Error, FetchError, InsecureTransport, LayerPolicy, Origin, Presentation, Scope,
    Token, TokenCache, TokenCharset, TokenProblem, TokenSource,
};
use tokenwarden_gateways::boipa::{self, Action, ActionRequest, BoipaConfig};
use tokenwarden_gateways::generic::JsonSource;
use tokenwarden_gateways::payments::SessionTokenSource;
use tokenwarden_gateways::sipay::{self, SipayConfig};
use tokenwarden_gateways::torus::{self, TorusConfig};
use tokenwarden_gateways::{GatewayError, HttpSend, InsecureHttp, IssuerClient, ServiceSender};
use tokenwarden_reqwest::LeftScope;
use tokenwarden_test_support::{
    Answer, LogCapture, LoopbackApi, LoopbackResolver, Recorder, Reply, chain, unused_addr,
    with_middleware,
};
use tokenwarden_tower::{RequestBody, TokenLayer};
use tower::{Layer as _, ServiceBuilder, ServiceExt};
use tower_http::follow_redirect::FollowRedirectLayer;

const TOKEN: &str = "tok-SECRET-41";
const MERCHANT: &str = "MERCH-SECRET-7";
const API_KEY: &str = "APIKEY-SECRET-3";

/// A cache presenting one token in every way a presentation can: `Authorization: Bearer`,
/// `Token`, and fixed `Merchant-Account` and `X-Api-Key` headers.
fn cache() -> TokenCache {
    TokenCache::builder(|| async {
        Ok::<_, FetchError>(Token::new(TOKEN).with_expires_in(Duration::from_secs(900)))
    })
    .with_presentation(
        Presentation::bearer()
            .with_header(HeaderName::from_static("token"))
            .with_fixed_header(
                HeaderName::from_static("merchant-account"),
                HeaderValue::from_static(MERCHANT),
            )
            .with_fixed_header(
                HeaderName::from_static("x-api-key"),
                HeaderValue::from_static(API_KEY),
            ),
    )
    .build()
    .unwrap()
}

/// Every token byte and header name that must not reach another host.
fn token_needles() -> Vec<(&'static str, &'static str)> {
    vec![
        ("token value", TOKEN),
        ("merchant account", MERCHANT),
        ("api key", API_KEY),
        ("authorization header", "\nauthorization:"),
        ("token header", "\ntoken:"),
        ("merchant-account header", "\nmerchant-account:"),
        ("x-api-key header", "\nx-api-key:"),
    ]
}

/// A token layer with [`cache`], scoped to `origin`.
fn token_layer(origin: &str) -> TokenLayer {
    TokenLayer::new(cache(), Scope::origin(origin).unwrap())
}

fn hyper_client() -> Client<HttpConnector<LoopbackResolver>, RequestBody<Full<Bytes>>> {
    Client::builder(TokioExecutor::new()).build(HttpConnector::new_with_resolver(LoopbackResolver))
}

fn hyper_sender() -> ServiceSender<Client<HttpConnector<LoopbackResolver>, Full<Bytes>>> {
    ServiceSender(
        Client::builder(TokioExecutor::new())
            .build(HttpConnector::new_with_resolver(LoopbackResolver)),
    )
}

fn get(url: &str) -> http::Request<Full<Bytes>> {
    http::Request::get(url)
        .body(Full::new(Bytes::new()))
        .unwrap()
}

// ---- API redirects ----------------------------------------------------------------------

/// An API on `127.0.0.1` that redirects (307, keeping method and body) to `target` on the
/// recorder `evil`.
async fn redirecting_api(evil: &Recorder, evil_host: &str) -> Recorder {
    let location = format!("{}/steal?x=1", evil.origin("http", evil_host));
    Recorder::start(Reply::redirect(307, &location)).await
}

#[tokio::test]
async fn tower_follow_redirect_outside_the_layer_carries_no_token_to_another_host() {
    for evil_host in ["localhost", "evil.example"] {
        let evil = Recorder::start(Reply::status(200)).await;
        let api = redirecting_api(&evil, evil_host).await;
        let api_origin = api.origin("http", "127.0.0.1");
        let client = ServiceBuilder::new()
            .layer(FollowRedirectLayer::new())
            .layer(token_layer(&api_origin))
            .service(hyper_client());
        let response = client
            .oneshot(get(&format!("{api_origin}/pay")))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{evil_host}");
        assert_eq!(evil.requests(), 1, "the follower did follow ({evil_host})");
        assert_eq!(
            evil.found(&token_needles()),
            Vec::<&str>::new(),
            "{evil_host}"
        );
        // The API itself did get every token header: the layer was on.
        assert_eq!(api.found(&token_needles()).len(), token_needles().len());
    }
}

#[tokio::test]
async fn tower_without_a_follower_hands_the_redirect_back() {
    let evil = Recorder::start(Reply::status(200)).await;
    let api = redirecting_api(&evil, "localhost").await;
    let api_origin = api.origin("http", "127.0.0.1");
    let client = token_layer(&api_origin).layer(hyper_client());
    let response = client
        .oneshot(get(&format!("{api_origin}/pay")))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::TEMPORARY_REDIRECT);
    assert_eq!(evil.requests(), 0);
}

#[tokio::test]
async fn reqwest_client_builder_never_follows_a_redirect_to_another_host() {
    for evil_host in ["localhost", "evil.example"] {
        let evil = Recorder::start(Reply::status(200)).await;
        let api = redirecting_api(&evil, evil_host).await;
        let api_origin = api.origin("http", "127.0.0.1");
        let http = tokenwarden_reqwest::client_builder()
            .resolve("evil.example", evil.addr())
            .build()
            .unwrap();
        let client = with_middleware(http, cache(), &api_origin);
        let response = client
            .post(format!("{api_origin}/pay"))
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::TEMPORARY_REDIRECT);
        assert_eq!(evil.requests(), 0, "{evil_host}");
        assert_eq!(api.found(&token_needles()).len(), token_needles().len());
    }
}

#[tokio::test]
async fn reqwest_client_builder_follows_redirects_within_the_origin_with_the_token() {
    let api = LoopbackApi::start(|seen| match seen.path.as_str() {
        "/old" => Answer::new(307, "").with_header("location", "/new"),
        _ => Answer::new(200, "ok"),
    })
    .await;
    let client = with_middleware(
        tokenwarden_reqwest::client_builder().build().unwrap(),
        cache(),
        &api.origin(),
    );
    let response = client.get(api.url("/old")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let seen = api.received();
    let paths: Vec<_> = seen.iter().map(|r| r.path.as_str()).collect();
    assert_eq!(paths, ["/old", "/new"]);
    assert!(seen.iter().all(|r| r.header("token") == Some(TOKEN)));
}

#[tokio::test]
async fn reqwest_with_a_following_client_fails_with_left_scope_not_a_silent_success() {
    let evil = Recorder::start(Reply::status(200)).await;
    let api = redirecting_api(&evil, "localhost").await;
    let api_origin = api.origin("http", "127.0.0.1");
    // A client with reqwest's default policy: it follows below the middleware.
    let client = with_middleware(reqwest::Client::new(), cache(), &api_origin);
    let error = client
        .get(format!("{api_origin}/pay"))
        .send()
        .await
        .unwrap_err();
    let reqwest_middleware::Error::Middleware(error) = error else {
        panic!("expected a middleware error, got {error}");
    };
    let left = error.downcast_ref::<LeftScope>().expect("LeftScope");
    assert_eq!(left.to, evil.origin("http", "localhost"));
    assert!(!left.insecure);
    assert!(!error.to_string().contains("steal"), "no path or query");
}

#[tokio::test]
async fn plain_http_off_loopback_is_refused_unsent_by_both_layers() {
    let api = Recorder::start(Reply::status(200)).await;
    let origin = api.origin("http", "api.example");

    let tower = token_layer(&origin).layer(hyper_client());
    let error = tower
        .oneshot(get(&format!("{origin}/pay")))
        .await
        .unwrap_err();
    let insecure = error.downcast_ref::<InsecureTransport>().unwrap();
    assert_eq!(
        (insecure.scheme.as_str(), insecure.host.as_str()),
        ("http", "api.example")
    );

    let http = reqwest::Client::builder()
        .resolve("api.example", api.addr())
        .build()
        .unwrap();
    let client = with_middleware(http, cache(), &origin);
    let error = client
        .get(format!("{origin}/pay"))
        .send()
        .await
        .unwrap_err();
    let reqwest_middleware::Error::Middleware(error) = error else {
        panic!("expected a middleware error, got {error}");
    };
    assert!(error.downcast_ref::<InsecureTransport>().is_some());
    assert_eq!(api.requests(), 0, "nothing was sent");
}

// ---- Issuer redirects -------------------------------------------------------------------

const APP_SECRET: &str = "APP-SECRET-99";

/// Each gateway's source, with credentials containing [`APP_SECRET`], pointed at `base`.
fn sources(sender: impl HttpSend + Clone, base: &str) -> Vec<(&'static str, Box<dyn TokenSource>)> {
    let secret = tokenwarden::Secret::new(APP_SECRET);
    vec![
        (
            "sipay",
            Box::new(
                sipay::SipaySource::new(
                    sender.clone(),
                    SipayConfig::new(base, "app-id", secret.clone()),
                )
                .unwrap(),
            ),
        ),
        (
            "torus",
            Box::new(
                torus::TorusSource::new(
                    sender.clone(),
                    TorusConfig::new(base, secret.clone(), secret.clone(), secret.clone()),
                )
                .unwrap(),
            ),
        ),
        (
            "boipa",
            Box::new(
                boipa::BoipaSource::new(
                    sender.clone(),
                    BoipaConfig::new(base, 1234567, secret.clone(), "https://shop.example"),
                    ActionRequest::new(Action::Verify),
                )
                .unwrap(),
            ),
        ),
        (
            "payments",
            Box::new(SessionTokenSource::new(sender.clone(), base, &secret, "FNS-1").unwrap()),
        ),
        (
            "generic",
            Box::new(
                JsonSource::json(
                    sender,
                    &format!("{base}/oauth/token"),
                    serde_json::json!({"client_secret": APP_SECRET}),
                )
                .unwrap(),
            ),
        ),
    ]
}

async fn assert_issuer_redirect_refused(
    sender_name: &str,
    sender: impl HttpSend + Clone,
    evil: &Recorder,
    issuer: &Recorder,
) {
    for (gateway, source) in sources(sender, &issuer.origin("http", "127.0.0.1")) {
        let error = source.fetch().await.unwrap_err();
        let gateway_error = error
            .get_ref()
            .downcast_ref::<GatewayError>()
            .unwrap_or_else(|| panic!("{gateway}/{sender_name}: not a gateway error: {error}"));
        let GatewayError::Redirected { status, target, .. } = gateway_error else {
            panic!("{gateway}/{sender_name}: expected Redirected, got {gateway_error}");
        };
        assert_eq!(*status, StatusCode::TEMPORARY_REDIRECT);
        assert_eq!(target, &evil.origin("http", "localhost"));
        let text = format!("{error} {gateway_error:?}");
        assert!(
            !text.contains("steal") && !text.contains("CODE-Q"),
            "{text}"
        );
        assert!(!gateway_error.is_retryable());
    }
    assert_eq!(evil.requests(), 0, "{sender_name}: credentials re-sent");
    assert_eq!(
        issuer.found(&[("secret", APP_SECRET)]),
        ["secret"],
        "{sender_name}: the issuer itself got the credentials"
    );
}

#[tokio::test]
async fn issuer_redirects_are_typed_errors_and_nothing_is_resent() {
    let evil = Recorder::start(Reply::json(r#"{"access_token":"x"}"#)).await;
    let location = format!("{}/steal?code=CODE-Q", evil.origin("http", "localhost"));
    let issuer = Recorder::start(Reply::redirect(307, &location)).await;
    assert_issuer_redirect_refused("IssuerClient", IssuerClient::new().unwrap(), &evil, &issuer)
        .await;
    assert_issuer_redirect_refused("ServiceSender", hyper_sender(), &evil, &issuer).await;
}

#[tokio::test]
async fn a_scheme_relative_redirect_is_named_by_its_own_host() {
    let evil = Recorder::start(Reply::json(r#"{"access_token":"x"}"#)).await;
    let location = format!("//localhost:{}/steal?code=CODE-Q", evil.port());
    let issuer = Recorder::start(Reply::redirect(302, &location)).await;
    let source = JsonSource::json(
        IssuerClient::new().unwrap(),
        &format!("{}/token", issuer.origin("http", "127.0.0.1")),
        serde_json::json!({"client_secret": APP_SECRET}),
    )
    .unwrap();
    let error = source.fetch().await.unwrap_err();
    let Some(GatewayError::Redirected { target, .. }) = error.get_ref().downcast_ref() else {
        panic!("expected Redirected, got {error}");
    };
    assert_eq!(target, &evil.origin("http", "localhost"));
    assert_eq!(evil.requests(), 0);
}

#[tokio::test]
async fn a_redirect_follower_around_the_issuer_transport_is_caught_not_trusted() {
    // Misuse that the docs warn against: the follower re-sends the request (so the recorder
    // does get it), but its answer is refused, not taken as a token.
    let evil = Recorder::start(Reply::json(r#"{"access_token":"planted"}"#)).await;
    let location = format!("{}/steal", evil.origin("http", "localhost"));
    // 303: the follower turns the POST into a GET it can always send.
    let issuer = Recorder::start(Reply::redirect(303, &location)).await;
    let followed = ServiceSender(
        ServiceBuilder::new()
            .layer(FollowRedirectLayer::new())
            .service(hyper_sender().0),
    );
    let source = JsonSource::json(
        followed,
        &format!("{}/token", issuer.origin("http", "127.0.0.1")),
        serde_json::json!({"client_secret": APP_SECRET}),
    )
    .unwrap();
    let error = source.fetch().await.unwrap_err();
    let Some(GatewayError::Redirected { target, status, .. }) = error.get_ref().downcast_ref()
    else {
        panic!("expected Redirected, got {error}");
    };
    assert_eq!(target, &evil.origin("http", "localhost"));
    assert_eq!(*status, StatusCode::OK);
    assert_eq!(evil.requests(), 1, "the follower did follow");
}

#[test]
fn issuer_urls_with_credentials_or_bad_ports_never_print_them() {
    // A base64 password with `/` ends the authority early for a URL parser: `client:abc` would
    // read as host `client` with port `abc`, silently the default port. Refused, and redacted.
    let url = "https://client:abc/def+ghi=@auth.example.com";
    let error =
        JsonSource::json(IssuerClient::new().unwrap(), url, serde_json::json!({})).unwrap_err();
    assert!(!format!("{error} {error:?}").contains("abc"), "{error}");
    let config = SipayConfig::new(url, "id", APP_SECRET);
    assert!(!format!("{config:?}").contains("abc"), "{config:?}");
    let boipa = BoipaConfig::new(
        "https://apiuat.example",
        1,
        APP_SECRET,
        "https://shop.example/?key=ORIGIN-KEY",
    );
    assert!(!format!("{boipa:?}").contains("ORIGIN-KEY"), "{boipa:?}");
    for bad_port in [
        "https://auth.example.com:99999/t",
        "https://auth.example.com:443x/t",
    ] {
        assert!(
            JsonSource::json(
                IssuerClient::new().unwrap(),
                bad_port,
                serde_json::json!({})
            )
            .is_err(),
            "{bad_port}"
        );
    }
}

#[test]
fn plain_http_issuers_off_loopback_are_refused_when_built() {
    let body = || serde_json::json!({"client_secret": APP_SECRET});
    for url in [
        "http://auth.example/token",
        "http://10.0.0.1/token",
        "ftp://127.0.0.1/x",
    ] {
        let error = JsonSource::json(IssuerClient::new().unwrap(), url, body()).unwrap_err();
        assert!(
            matches!(error, ConfigError::Invalid { .. }),
            "{url}: {error}"
        );
    }
    let sipay = SipayConfig::new("http://sipay.example", "id", APP_SECRET);
    assert!(
        sipay::cache(IssuerClient::new().unwrap(), sipay)
            .build()
            .is_err()
    );
    // Loopback, https and the explicit opt-in are fine.
    for url in [
        "http://127.0.0.1:9/token",
        "http://[::1]:9/t",
        "https://auth.example/token",
    ] {
        JsonSource::json(IssuerClient::new().unwrap(), url, body()).unwrap();
    }
    JsonSource::json(
        InsecureHttp(IssuerClient::new().unwrap()),
        "http://auth.example/token",
        body(),
    )
    .unwrap();
}

// ---- Origin rules -----------------------------------------------------------------------

#[test]
fn origins_parse_and_normalise_or_fail_at_build_time() {
    let ok = [
        ("https://api.example.com", "https://api.example.com"),
        ("https://API.Example.COM", "https://api.example.com"),
        ("https://api.example.com:443", "https://api.example.com"),
        ("https://api.example.com/", "https://api.example.com"),
        ("https://api.example.com.", "https://api.example.com"),
        ("http://api.example.com:80", "http://api.example.com"),
        (
            "https://api.example.com:8443",
            "https://api.example.com:8443",
        ),
        ("HTTP://127.0.0.1:8080", "http://127.0.0.1:8080"),
        ("http://[::1]:8080", "http://[::1]:8080"),
        ("http://[0:0:0:0:0:0:0:1]", "http://[::1]"),
    ];
    for (text, normalised) in ok {
        let origin = Origin::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
        assert_eq!(origin.to_string(), normalised, "{text}");
    }
    let refused = [
        "api.example.com",
        "//api.example.com",
        "/v1",
        "",
        "https://",
        "ftp://api.example.com",
        "file:///etc/passwd",
        "https://user:pw@api.example.com",
        "https://api.example.com@evil.example",
        "https://api.example.com/v1",
        "https://api.example.com?x=1",
        "https://api.example.com#frag",
        "https://api.example.com:0",
        "https://api.example.com:99999",
        "https://api.example.com:8443x",
        "https://api.example.com:+443",
        "https://[::1]x",
        "https://[::1",
        "https://client:abc/def+ghi=@auth.example.com",
        "wss://stream.example.com",
        "ws://localhost:9000",
    ];
    for text in refused {
        let error = Origin::parse(text).expect_err(text);
        assert!(
            matches!(error, ConfigError::Origin { .. }),
            "{text}: {error}"
        );
        let text = error.to_string();
        assert!(!text.contains("pw@") && !text.contains("abc/def"), "{text}");
    }
    assert!(Scope::origins([]).is_err(), "an empty list is not a scope");
    assert!(
        Scope::any_origin()
            .with_origin("https://api.example.com")
            .is_err(),
        "adding to any-origin would be a silent no-op"
    );
    assert_eq!(
        Scope::origin_of("https://api.example.com/v1/orders?page=2")
            .unwrap()
            .listed(),
        [Origin::parse("https://api.example.com").unwrap()]
    );
}

/// A layer's decision: `Ok(true)` token, `Ok(false)` untouched, `Err(())` refused; `None` if
/// the client cannot parse the URL.
type Decision = Option<Result<bool, ()>>;

/// What both layers decide for a URL: parsed as `http::Uri` (tower) and as `url::Url`
/// (reqwest), with the parts each layer passes.
fn decide(policy: &LayerPolicy, url: &str) -> (Decision, Decision) {
    let tower = url.parse::<http::Uri>().ok().map(|uri| {
        policy
            .admit(uri.scheme_str(), uri.host(), uri.port_u16())
            .map_err(drop)
    });
    let reqwest = reqwest::Url::parse(url).ok().map(|url| {
        policy
            .admit(Some(url.scheme()), url.host_str(), url.port())
            .map_err(drop)
    });
    (tower, reqwest)
}

#[test]
fn both_layers_scope_every_url_the_same_way() {
    let api = LayerPolicy::new(Scope::origin("https://api.example.com").unwrap());
    let local = LayerPolicy::new(Scope::origin("http://localhost:8080").unwrap());
    let any = LayerPolicy::new(Scope::any_origin());
    // (policy, URL, expected: Some(Ok(true)) token, Some(Ok(false)) untouched, Some(Err) refused)
    let table: &[(&LayerPolicy, &str, Result<bool, ()>)] = &[
        (&api, "https://api.example.com/v1", Ok(true)),
        (&api, "https://API.EXAMPLE.COM/v1", Ok(true)),
        (&api, "https://api.example.com:443/v1", Ok(true)),
        (&api, "https://api.example.com./v1", Ok(false)),
        (&api, "https://api.example.com:8443/v1", Ok(false)),
        (&api, "http://api.example.com/v1", Ok(false)),
        (&api, "wss://api.example.com/v1", Ok(false)),
        (&api, "https://api.example.com.evil.example/", Ok(false)),
        (&api, "https://evil.example/api.example.com", Ok(false)),
        (&api, "https://api.example.com@evil.example/", Ok(false)),
        (&api, "https://evil.example/?api.example.com", Ok(false)),
        (&api, "https://xapi.example.com/", Ok(false)),
        (&local, "http://localhost:8080/", Ok(true)),
        (&local, "http://LOCALHOST:8080/", Ok(true)),
        (&local, "http://localhost:80/", Ok(false)),
        (&local, "http://localhost.evil.example:8080/", Ok(false)),
        (&local, "http://127.0.0.1:8080/", Ok(false)),
        (&local, "http://localhost.:8080/", Ok(false)),
        (&any, "https://anywhere.example/", Ok(true)),
        (&any, "wss://anywhere.example/", Err(())),
        (&any, "http://localhost./", Err(())),
        (&any, "http://127.0.0.1/", Ok(true)),
        (&any, "http://127.9.9.9/", Ok(true)),
        (&any, "http://[::1]/", Ok(true)),
        (&any, "http://[0:0:0:0:0:0:0:1]/", Ok(true)),
        (&any, "http://[::ffff:127.0.0.1]/", Ok(true)),
        (&any, "http://localhost/", Ok(true)),
        (&any, "http://anywhere.example/", Err(())),
        (&any, "ws://anywhere.example/", Err(())),
        (&any, "http://localhost.evil.example/", Err(())),
        (&any, "http://evil.localhost/", Err(())),
        (&any, "http://127.0.0.1.evil.example/", Err(())),
        (&any, "http://[::2]/", Err(())),
        (&any, "http://10.0.0.1/", Err(())),
        (&any, "http://127.0.0.1@evil.example/", Err(())),
        (&any, "ftp://127.0.0.1/", Err(())),
    ];
    for (policy, url, expected) in table {
        let (tower, reqwest) = decide(policy, url);
        assert_eq!(tower, Some(*expected), "tower: {url}");
        assert_eq!(reqwest, Some(*expected), "reqwest: {url}");
    }
    // A relative URI has no origin: only `any_origin` puts a token on it.
    assert_eq!(api.admit(None, None, None), Ok(false));
    assert_eq!(any.admit(None, None, None), Ok(true));
}

// ---- Secrets in text --------------------------------------------------------------------

#[tokio::test]
async fn a_traced_flow_with_credentials_in_the_issuer_url_prints_no_secret() {
    const PASSWORD: &str = "URLPASS-5";
    const QUERY_KEY: &str = "QUERYKEY-5";
    const CLIENT_SECRET: &str = "CLIENTSECRET-5";
    const ISSUED: &str = "ISSUEDTOKEN-5";
    let logs = LogCapture::start();

    let mut server = mockito::Server::new_async().await;
    let failing = server
        .mock("POST", "/oauth/token")
        .match_query(mockito::Matcher::Any)
        .with_status(503)
        .expect(1)
        .create_async()
        .await;
    let issuer_url = format!(
        "http://app:{PASSWORD}@{}/oauth/token?api_key={QUERY_KEY}",
        server.host_with_port()
    );
    let source = JsonSource::json(
        IssuerClient::new().unwrap(),
        &issuer_url,
        serde_json::json!({"client_id": "app", "client_secret": CLIENT_SECRET}),
    )
    .unwrap();
    let cache = TokenCache::builder(source.clone())
        .with_backoff(Duration::from_millis(1), Duration::from_millis(2))
        .build()
        .unwrap();
    let mut texts = vec![format!("{source:?}"), format!("{cache:?}")];

    // 1. The issuer fails: the WARN line and the error.
    let error = cache.get().await.unwrap_err();
    texts.push(format!("{error:?}"));
    texts.push(chain(&error));
    failing.assert_async().await;

    // 2. It answers; the API rejects the first token; the replay succeeds.
    let minted = std::sync::atomic::AtomicUsize::new(0);
    server
        .mock("POST", "/oauth/token")
        .match_query(mockito::Matcher::Any)
        .with_body_from_request(move |_| {
            let n = minted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            format!(r#"{{"access_token":"{ISSUED}{n}","expires_in":600}}"#).into_bytes()
        })
        .create_async()
        .await;
    tokio::time::sleep(Duration::from_millis(5)).await;
    let rejected = server
        .mock("GET", "/v1/orders")
        .match_header("authorization", format!("Bearer {ISSUED}0").as_str())
        .with_status(401)
        .expect(1)
        .create_async()
        .await;
    let accepted = server
        .mock("GET", "/v1/orders")
        .match_header("authorization", format!("Bearer {ISSUED}1").as_str())
        .expect(1)
        .create_async()
        .await;
    let client = with_middleware(
        tokenwarden_reqwest::client_builder().build().unwrap(),
        cache.clone(),
        &server.url(),
    );
    let response = client
        .get(format!("{}/v1/orders", server.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    rejected.assert_async().await;
    accepted.assert_async().await;

    // 3. An unreachable issuer with the same kind of URL.
    let dead = unused_addr();
    let unreachable = JsonSource::json(
        IssuerClient::new().unwrap(),
        &format!("http://app:{PASSWORD}@{dead}/token?api_key={QUERY_KEY}"),
        serde_json::json!({"client_secret": CLIENT_SECRET}),
    )
    .unwrap();
    let error = unreachable.fetch().await.unwrap_err();
    texts.push(format!("{error} {error:?}"));

    texts.push(logs.text());
    let all = texts.join("\n");
    assert!(
        all.contains("token fetch failed"),
        "the WARN line was captured"
    );
    assert!(all.contains("[redacted]"), "URLs are shown, redacted");
    for secret in [PASSWORD, QUERY_KEY, CLIENT_SECRET, ISSUED] {
        assert!(!all.contains(secret), "{secret} appeared in:\n{all}");
    }
}

#[test]
fn presentations_hide_fixed_values_and_mark_them_sensitive() {
    let presentation = Presentation::bearer().with_fixed_header(
        HeaderName::from_static("x-api-key"),
        HeaderValue::from_static(API_KEY),
    );
    let debug = format!("{presentation:?}");
    assert!(
        debug.contains("x-api-key") && !debug.contains(API_KEY),
        "{debug}"
    );
}

#[tokio::test]
async fn every_header_value_is_sensitive() {
    let snapshot = cache().get().await.unwrap();
    assert_eq!(snapshot.headers().len(), 4);
    for (name, value) in snapshot.headers() {
        assert!(value.is_sensitive(), "{name}");
    }
}

// ---- Token values -----------------------------------------------------------------------

async fn fetched(token: &'static str, presentation: Presentation) -> Result<String, Error> {
    let cache = TokenCache::builder(move || async move { Ok::<_, FetchError>(Token::new(token)) })
        .with_presentation(presentation)
        .build()
        .unwrap();
    let snapshot = cache.get().await?;
    let (_, value) = snapshot.headers().next().unwrap();
    Ok(value.to_str().unwrap().to_owned())
}

#[tokio::test]
async fn token_values_are_trimmed_or_refused_with_the_problem_named() {
    let bearer = Presentation::bearer;
    let plain = || Presentation::header(HeaderName::from_static("token"));
    assert_eq!(
        fetched(" abc.DEF-_~+/== ", bearer()).await.unwrap(),
        "Bearer abc.DEF-_~+/=="
    );
    assert_eq!(fetched("\tabc\r\n", plain()).await.unwrap(), "abc");
    let refused: [(&'static str, Presentation, TokenProblem); 7] = [
        (
            "secretvalue\u{a0}",
            bearer(),
            TokenProblem::NonAscii { at: 11 },
        ),
        (
            "secret\u{200b}value",
            bearer(),
            TokenProblem::NonAscii { at: 6 },
        ),
        ("secret\tvalue", plain(), TokenProblem::Control { at: 6 }),
        ("secret value", plain(), TokenProblem::Space { at: 6 }),
        (
            "secret,value",
            bearer(),
            TokenProblem::NotB64Token { at: 6 },
        ),
        (
            "=secretvalue",
            bearer(),
            TokenProblem::NotB64Token { at: 0 },
        ),
        ("   ", bearer(), TokenProblem::Empty),
    ];
    for (token, presentation, problem) in refused {
        let error = fetched(token, presentation).await.unwrap_err();
        assert!(
            matches!(&error, Error::MalformedToken(p) if *p == problem),
            "{token:?}: {error:?}"
        );
        assert!(!error.is_retryable());
        let text = format!("{error} {error:?}");
        assert!(
            !text.contains("secret") && !text.contains("value"),
            "{text}"
        );
    }
    // The presentation can widen the alphabet.
    let relaxed = bearer().with_token_charset(TokenCharset::Visible);
    assert_eq!(fetched("a,b", relaxed).await.unwrap(), "Bearer a,b");
}

#[tokio::test]
async fn an_issuer_whose_body_stalls_is_a_timeout_not_a_hang() {
    // Answers the head and one byte of a 100-byte body, then holds the connection open.
    let stalling = Reply::status(200).with_body("{").cut_short(100).held_open();
    let issuer = Recorder::start(stalling).await;
    let source = JsonSource::json(
        IssuerClient::new().unwrap(),
        &format!("{}/token", issuer.origin("http", "127.0.0.1")),
        serde_json::json!({"client_secret": APP_SECRET}),
    )
    .unwrap();
    let cache = TokenCache::builder(source)
        .with_fetch_timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let started = std::time::Instant::now();
    let error = tokio::time::timeout(Duration::from_secs(5), cache.get())
        .await
        .expect("no hang")
        .unwrap_err();
    assert!(matches!(error, Error::Timeout(_)), "{error}");
    assert!(started.elapsed() < Duration::from_secs(2));
}
