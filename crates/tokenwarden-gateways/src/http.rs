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
/// A small trait on `http` types, so that a gateway's source works with whichever client the
/// application already has: implemented for `reqwest::Client` (feature `reqwest`) and, through
/// [`ServiceSender`], for any tower service such as hyper-util's client (feature `tower`). A
/// hyper-only application does not pull in reqwest, and tests can answer with anything.
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

/// A response body longer than the cap.
#[derive(Debug, thiserror::Error)]
#[error("the response body is longer than {limit} bytes")]
pub struct TooLarge {
    /// The cap.
    pub limit: usize,
}

#[cfg(feature = "reqwest")]
#[async_trait]
impl HttpSend for reqwest::Client {
    async fn send(
        &self,
        request: Request<Bytes>,
        max_body: usize,
    ) -> Result<Response<Bytes>, BoxError> {
        let request = reqwest::Request::try_from(request.map(reqwest::Body::from))?;
        let mut response = self.execute(request).await?;
        if response
            .content_length()
            .is_some_and(|n| n > max_body as u64)
        {
            return Err(Box::new(TooLarge { limit: max_body }));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await? {
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
}

/// [`HttpSend`] for a tower service taking `http::Request<Full<Bytes>>`, such as
/// `hyper_util::client::legacy::Client<_, Full<Bytes>>`.
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

        let response = self
            .0
            .clone()
            .oneshot(request.map(Full::new))
            .await
            .map_err(Into::into)?;
        let (head, body) = response.into_parts();
        let body = Limited::new(body, max_body).collect().await.map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                Box::new(TooLarge { limit: max_body }) as BoxError
            } else {
                e
            }
        })?;
        Ok(Response::from_parts(head, body.to_bytes()))
    }
}
