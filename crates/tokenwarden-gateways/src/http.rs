//! How a source sends its one request to the issuer, without tying it to one HTTP client.

use async_trait::async_trait;
use bytes::Bytes;
use http::{Request, Response};
use tokenwarden_core::BoxError;

/// The default cap on a token response body: 64 KiB. Token responses are a few hundred bytes;
/// anything far larger is an error page or an attack, and is refused without being held.
pub const DEFAULT_MAX_RESPONSE: usize = 64 * 1024;

/// Sends one request to a token issuer and reads its answer, at most `max_body` bytes of it.
///
/// A small trait on `http` types, so that a gateway's source works with the HTTP stack the
/// application already has: [`IssuerClient`] (reqwest, feature `reqwest`), [`ServiceSender`]
/// for any tower service such as hyper-util's client (feature `tower`), and closures, so that
/// tests can answer with anything.
///
/// # What a sender is asked to send
///
/// The token request (usually a `POST`), and — while the issuer cannot be reached and callers
/// wait for a token — a recovery probe: a bare `GET` of the endpoint's path, with no query, no
/// credentials and no body, whose status alone is read (see `tokenwarden_core::Probe`).
///
/// # What a sender must not do
///
/// **Follow redirects.** A token request carries credentials; a sender that followed a
/// redirect would send them again to wherever the issuer (or an attacker in its place)
/// pointed. Sources treat every `3xx` answer as an error ([`GatewayError::Redirected`](crate::GatewayError::Redirected)), so a
/// sender only has to hand it back. [`IssuerClient`] never follows one; a tower service is
/// fine as long as no redirect follower (tower-http's `FollowRedirect`) wraps it; a plain
/// `reqwest::Client` is not accepted, because its default policy follows them.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot send a gateway's token requests",
    label = "not an HttpSend",
    note = "use `tokenwarden_gateways::IssuerClient::new()?` (reqwest, redirects off), or wrap a tower \
            service in `ServiceSender(service)`; a plain `reqwest::Client` is refused because it \
            follows redirects with the credentials"
)]
#[async_trait]
pub trait HttpSend: Send + Sync + 'static {
    /// Sends `request`; returns the response with its body read, or an error when the issuer
    /// cannot be reached or its body is longer than `max_body` (then
    /// [`TooLarge`] is the error, to tell it from a transport failure).
    ///
    /// # Errors
    ///
    /// A transport error, or [`TooLarge`].
    async fn send(
        &self,
        request: Request<Bytes>,
        max_body: usize,
    ) -> Result<Response<Bytes>, BoxError>;

    /// Whether credentials may go over plain `http` to a host that is not loopback. `false`
    /// unless the sender is wrapped in [`InsecureHttp`]: sources refuse such an issuer URL
    /// when they are built.
    fn allows_insecure_http(&self) -> bool {
        false
    }

    /// Whether the sender can speak `https` at all. `true` unless it knows it cannot — an
    /// [`IssuerClient`] built with a reqwest that has no TLS backend — in which case sources
    /// refuse an `https` issuer URL when they are built, instead of failing every fetch.
    fn speaks_https(&self) -> bool {
        true
    }
}

/// Lets a sender take issuer URLs on plain `http` to hosts that are not loopback — for a
/// network you trust end to end only: anyone on the path reads the credentials and tokens.
///
/// ```
/// # #[cfg(feature = "reqwest")] {
/// use tokenwarden_gateways::generic::JsonSource;
/// use tokenwarden_gateways::{InsecureHttp, IssuerClient};
///
/// let body = serde_json::json!({"client_id": "app", "client_secret": "s3cr3t"});
/// // refused: credentials in clear text to another host
/// assert!(JsonSource::json(IssuerClient::new()?, "http://auth.internal/token", body.clone()).is_err());
/// // allowed, explicitly
/// let source = JsonSource::json(InsecureHttp(IssuerClient::new()?), "http://auth.internal/token", body)?;
/// # let _ = source;
/// # }
/// # Ok::<_, Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug)]
pub struct InsecureHttp<S>(pub S);

#[async_trait]
impl<S: HttpSend> HttpSend for InsecureHttp<S> {
    async fn send(
        &self,
        request: Request<Bytes>,
        max_body: usize,
    ) -> Result<Response<Bytes>, BoxError> {
        self.0.send(request, max_body).await
    }

    fn allows_insecure_http(&self) -> bool {
        true
    }

    fn speaks_https(&self) -> bool {
        self.0.speaks_https()
    }
}

/// Closures are senders too, which suits tests and custom transports:
///
/// ```
/// use bytes::Bytes;
/// use http::{Request, Response};
/// use tokenwarden_gateways::HttpSend;
///
/// let canned = |_: Request<Bytes>, _: usize| async {
///     Ok::<_, tokenwarden_core::BoxError>(Response::new(Bytes::from_static(br#"{"token":"t"}"#)))
/// };
/// fn takes(_: impl HttpSend) {}
/// takes(canned);
/// ```
#[async_trait]
impl<F, Fut> HttpSend for F
where
    F: Fn(Request<Bytes>, usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<Response<Bytes>, BoxError>> + Send + 'static,
{
    async fn send(
        &self,
        request: Request<Bytes>,
        max_body: usize,
    ) -> Result<Response<Bytes>, BoxError> {
        (self)(request, max_body).await
    }
}

/// The sender followed a redirect (which it must not): the request, credentials and all, went
/// to `to` as well. Sources turn it into
/// [`GatewayError::Redirected`](crate::GatewayError::Redirected).
#[derive(Debug, thiserror::Error)]
#[error(
    "the sender followed a redirect to {to} (final status {status}), re-sending the request there"
)]
pub struct RedirectFollowed {
    /// The final response's status.
    pub status: http::StatusCode,
    /// The origin the redirect led to (`scheme://host:port`, nothing more).
    pub to: String,
}

impl RedirectFollowed {
    /// From the final response's status and URL (only its origin is kept).
    #[must_use]
    pub fn new(status: http::StatusCode, last: &http::Uri) -> Self {
        Self {
            status,
            to: tokenwarden_origin::Origin::describe(last),
        }
    }
}

/// The answer's body broke off while it was read (a connection reset, a read timeout): what a
/// sender returns then, so the source can tell it from an issuer that could not be reached
/// ([`GatewayError::Interrupted`](crate::GatewayError::Interrupted)).
#[derive(Debug, thiserror::Error)]
#[error("the response body (HTTP {status}) broke off while it was read")]
pub struct ReadFailed {
    /// The status of the answer.
    pub status: http::StatusCode,
    /// What failed.
    #[source]
    pub error: BoxError,
}

/// A response body longer than the cap.
#[derive(Debug, thiserror::Error)]
#[error("the response body is longer than {limit} bytes")]
pub struct TooLarge {
    /// The cap.
    pub limit: usize,
}

/// The reqwest client token requests go through: it **never follows a redirect** (a `3xx`
/// comes back as it is, and the source fails with
/// [`GatewayError::Redirected`](crate::GatewayError::Redirected)), and it gives up on a
/// connection after 10 s and on a silent read after 30 s. Plain `http` to a host that is not
/// loopback is refused when the source is built (see [`InsecureHttp`]).
///
/// Feature `reqwest`. It speaks `https` with feature `rustls` (on by default), or with any
/// TLS backend of reqwest another crate turned on (`reqwest/native-tls`, …); without one, see
/// [docs/features.md](https://github.com/tokenwarden/tokenwarden/blob/main/docs/features.md).
///
/// ```
/// use tokenwarden_gateways::IssuerClient;
/// use tokenwarden_gateways::sipay::{self, SipayConfig};
///
/// let config = SipayConfig::new(sipay::TEST_BASE_URL, "app-id", "app-secret");
/// let cache = sipay::cache(IssuerClient::new()?, config).build()?;
/// # let _ = cache;
/// # Ok::<_, Box<dyn std::error::Error>>(())
/// ```
#[cfg(feature = "reqwest")]
#[derive(Clone, Debug)]
pub struct IssuerClient {
    client: reqwest::Client,
    /// For plain `http` to loopback: never through a proxy from the environment, which would
    /// carry the credentials off this machine in clear text.
    direct: reqwest::Client,
}

#[cfg(feature = "reqwest")]
impl IssuerClient {
    /// Connect timeout of [`IssuerClient::new`].
    pub const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
    /// Read timeout of [`IssuerClient::new`].
    pub const READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

    /// A client with no redirects and the timeouts above.
    ///
    /// # Errors
    ///
    /// When reqwest cannot build a client (its TLS backend fails to initialise).
    pub fn new() -> Result<Self, reqwest::Error> {
        Self::from_builder(Self::defaults())
    }

    /// A client from your own builder (proxies, TLS roots, timeouts), with redirects turned
    /// off whatever the builder said. Plain-`http` requests to loopback go through a second,
    /// proxy-less client with the default timeouts.
    ///
    /// # Errors
    ///
    /// When reqwest cannot build the client.
    pub fn from_builder(builder: reqwest::ClientBuilder) -> Result<Self, reqwest::Error> {
        let none = reqwest::redirect::Policy::none;
        Ok(Self {
            client: builder.redirect(none()).build()?,
            direct: Self::defaults().no_proxy().redirect(none()).build()?,
        })
    }

    fn defaults() -> reqwest::ClientBuilder {
        reqwest::Client::builder()
            .connect_timeout(Self::CONNECT_TIMEOUT)
            .read_timeout(Self::READ_TIMEOUT)
    }
}

#[cfg(feature = "reqwest")]
#[async_trait]
impl HttpSend for IssuerClient {
    async fn send(
        &self,
        request: Request<Bytes>,
        max_body: usize,
    ) -> Result<Response<Bytes>, BoxError> {
        // Errors without their URL: it may carry credentials in its query.
        let request = reqwest::Request::try_from(request.map(reqwest::Body::from))
            .map_err(reqwest::Error::without_url)?;
        let url = request.url().clone();
        let local_plain_text =
            url.scheme() == "http" && url.host_str().is_some_and(tokenwarden_origin::is_loopback);
        let client = if local_plain_text {
            &self.direct
        } else {
            &self.client
        };
        let mut response = client
            .execute(request)
            .await
            .map_err(reqwest::Error::without_url)?;
        if response.url() != &url {
            let last = response.url().as_str().parse().unwrap_or_default();
            return Err(Box::new(RedirectFollowed::new(response.status(), &last)));
        }
        if response
            .content_length()
            .is_some_and(|n| n > max_body as u64)
        {
            return Err(Box::new(TooLarge { limit: max_body }));
        }
        let mut body = Vec::new();
        let status = response.status();
        while let Some(chunk) = response.chunk().await.map_err(|e| ReadFailed {
            status,
            error: Box::new(e.without_url()),
        })? {
            if body.len() + chunk.len() > max_body {
                return Err(Box::new(TooLarge { limit: max_body }));
            }
            body.extend_from_slice(&chunk);
        }
        let mut head = Response::new(Bytes::from(body));
        *head.status_mut() = response.status();
        *head.headers_mut() = response.headers().clone();
        Ok(head)
    }

    fn speaks_https(&self) -> bool {
        tokenwarden_origin::reqwest_has_tls()
    }
}

/// [`HttpSend`] for a tower service taking `http::Request<Full<Bytes>>`, such as
/// `hyper_util::client::legacy::Client<_, Full<Bytes>>`, which follows no redirect: for an
/// application that has hyper and no reqwest. Do not wrap the service in a redirect follower
/// (tower-http's `FollowRedirect`): it would re-send the credentials to the redirect's target
/// before the source could refuse the `3xx`.
///
/// One hyper client can send both the token requests and the API calls. The layer keeps the
/// client's body type only with `TokenLayer::cloning_bodies()` (a `Full` is cheap to clone);
/// without it the layer sends `RequestBody<Full<Bytes>>`, which this client does not take (the
/// compiler then says the `Service` bound is not met), and the API needs a client of its own,
/// built for `RequestBody<Full<Bytes>>`.
///
/// ```
/// use bytes::Bytes;
/// use http_body_util::Full;
/// use hyper_util::client::legacy::Client;
/// use hyper_util::rt::TokioExecutor;
/// use tokenwarden_gateways::ServiceSender;
/// use tokenwarden_gateways::sipay::{self, SipayConfig};
/// use tokenwarden_origin::Scope;
/// use tokenwarden_tower::TokenLayer;
/// use tower::Layer;
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// // Plain http to loopback here; give the client an https connector (hyper-rustls) for a
/// // real gateway.
/// let http: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
/// let config = SipayConfig::new("http://127.0.0.1:8080", "app-id", "app-secret");
/// let cache = sipay::cache(ServiceSender(http.clone()), config).build()?;
/// let api = TokenLayer::new(cache, Scope::origin("http://127.0.0.1:8080")?)
///     .cloning_bodies()
///     .layer(http);
/// # let _ = api;
/// # Ok(())
/// # }
/// ```
#[cfg(feature = "tower")]
#[derive(Clone, Debug)]
pub struct ServiceSender<S>(pub S);

#[cfg(feature = "tower")]
#[async_trait]
impl<S, B> HttpSend for ServiceSender<S>
where
    S: tower::Service<Request<http_body_util::Full<Bytes>>, Response = Response<B>>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    async fn send(
        &self,
        request: Request<Bytes>,
        max_body: usize,
    ) -> Result<Response<Bytes>, BoxError> {
        use http_body_util::{BodyExt, Full, Limited};
        use tower::ServiceExt;

        let sent_to = request.uri().clone();
        let response = self
            .0
            .clone()
            .oneshot(request.map(Full::new))
            .await
            .map_err(Into::into)?;
        // A redirect follower (tower-http's) wrapping the service: it re-sent the request.
        if let Some(tower_http::follow_redirect::RequestUri(last)) = response.extensions().get()
            && *last != sent_to
        {
            return Err(Box::new(RedirectFollowed::new(response.status(), last)));
        }
        let (head, body) = response.into_parts();
        let body = Limited::new(body, max_body).collect().await.map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                Box::new(TooLarge { limit: max_body }) as BoxError
            } else {
                Box::new(ReadFailed {
                    status: head.status,
                    error: e,
                })
            }
        })?;
        Ok(Response::from_parts(head, body.to_bytes()))
    }
}
