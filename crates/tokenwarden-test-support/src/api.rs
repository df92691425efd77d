//! [`LoopbackApi`]: a hyper server on loopback that answers each request by a route function
//! and records what it received.

use std::convert::Infallible;
use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};

/// Headers that each HTTP client sets in its own way; [`Received`] leaves them out, so that
/// what two clients put on the wire can be compared.
pub const CLIENT_HEADERS: [&str; 5] = [
    "user-agent",
    "host",
    "accept",
    "accept-encoding",
    "connection",
];

/// Which of a [`LoopbackApi`]'s two ports a request reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Listener {
    /// The API's origin ([`LoopbackApi::origin`]).
    Api,
    /// Another origin: the same host, another port ([`LoopbackApi::other_url`]).
    Other,
}

/// What the API received of one request.
#[derive(Clone, Debug)]
pub struct Received {
    /// The port it reached.
    pub listener: Listener,
    /// Its method.
    pub method: Method,
    /// Its path.
    pub path: String,
    /// Every header but [`CLIENT_HEADERS`], sorted by name (values of one name in order).
    pub headers: Vec<(String, String)>,
    /// The whole body.
    pub body: Bytes,
}

impl Received {
    /// The first value of header `name` (lowercase).
    #[must_use]
    pub fn header(&self, name: &str) -> Option<&str> {
        let mut values = self.headers.iter().filter(|(n, _)| n == name);
        values.next().map(|(_, v)| v.as_str())
    }
}

/// `Api POST /path [content-length: 2; content-type: application/json] "{}"`.
impl fmt::Display for Received {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (listener, method, path) = (self.listener, &self.method, &self.path);
        write!(f, "{listener:?} {method} {path} [")?;
        for (i, (name, value)) in self.headers.iter().enumerate() {
            let separator = if i == 0 { "" } else { "; " };
            write!(f, "{separator}{name}: {value}")?;
        }
        write!(f, "] {:?}", String::from_utf8_lossy(&self.body))
    }
}

/// How a [`LoopbackApi`] answers a request: a status, headers, and a body that is either
/// whole (with a `content-length`) or chunks sent some time apart.
#[derive(Clone, Debug)]
pub struct Answer {
    status: u16,
    headers: Vec<(&'static str, String)>,
    chunks: Vec<Bytes>,
    gap: Duration,
}

impl Answer {
    /// `status` with `body`.
    #[must_use]
    pub fn new(status: u16, body: &'static str) -> Self {
        Self {
            status,
            headers: Vec::new(),
            chunks: vec![Bytes::from_static(body.as_bytes())],
            gap: Duration::ZERO,
        }
    }

    /// Adds a header.
    #[must_use]
    pub fn with_header(mut self, name: &'static str, value: &'static str) -> Self {
        self.headers.push((name, value.to_owned()));
        self
    }

    /// Adds a header whose value is made per request.
    #[must_use]
    pub fn with_header_owned(mut self, name: &'static str, value: String) -> Self {
        self.headers.push((name, value));
        self
    }

    /// The body given to [`new`](Self::new) goes out with the head; each of `chunks` follows
    /// `gap` after the one before (a stalled body: one chunk and a long gap). The connection
    /// stays open meanwhile.
    #[must_use]
    pub fn then(mut self, chunks: &[&'static str], gap: Duration) -> Self {
        let more = chunks.iter().map(|c| Bytes::from_static(c.as_bytes()));
        self.chunks.extend(more);
        self.gap = gap;
        self
    }

    fn into_response(self) -> Response<UnsyncBoxBody<Bytes, Infallible>> {
        let body = if let [whole] = &self.chunks[..] {
            Full::new(whole.clone()).boxed_unsync()
        } else {
            let gap = self.gap;
            let chunks = self.chunks.into_iter().enumerate();
            let frames = futures_util::stream::unfold(chunks, move |mut chunks| async move {
                let (i, chunk) = chunks.next()?;
                if i > 0 {
                    tokio::time::sleep(gap).await;
                }
                Some((Ok(Frame::data(chunk)), chunks))
            });
            StreamBody::new(frames).boxed_unsync()
        };
        let mut response = Response::builder().status(self.status);
        for (name, value) in self.headers {
            response = response.header(name, value);
        }
        response.body(body).expect("a valid answer")
    }
}

/// How a [`LoopbackApi`] answers each request, from what it received (the whole body is read
/// first). [`LoopbackApi::start`] also takes a closure, to keep state between requests.
pub type Route = fn(&Received) -> Answer;

/// How a [`LoopbackApi`] may answer a request before it reads the body.
type EarlyRoute = dyn Fn(&Received) -> Option<Answer> + Send + Sync;

/// The route and the early route of a [`LoopbackApi`].
struct Routes {
    route: Box<dyn Fn(&Received) -> Answer + Send + Sync>,
    before_body: Box<EarlyRoute>,
}

/// A hyper (HTTP/1) server on two loopback ports — the API's origin, and another origin to
/// send requests outside a token scope to — answering by its [`Route`] and recording every
/// request it received. Stops, open connections included, when dropped.
#[derive(Debug)]
pub struct LoopbackApi {
    addrs: [SocketAddr; 2],
    received: Arc<Mutex<Vec<Received>>>,
    tasks: Vec<JoinHandle<()>>,
}

impl LoopbackApi {
    /// Starts the server on two ports of `127.0.0.1`, answering each request by `route`.
    ///
    /// # Panics
    ///
    /// If no loopback port can be bound.
    pub async fn start(route: impl Fn(&Received) -> Answer + Send + Sync + 'static) -> Self {
        Self::start_answering_early(route, |_| None).await
    }

    /// Like [`start`](Self::start), but `before_body` sees each request first, with an empty
    /// body: an [`Answer`] it gives goes out at once and the body is never read (as a server
    /// refusing an upload does; the request is recorded with an empty body); `None` reads the
    /// body and asks `route`.
    ///
    /// # Panics
    ///
    /// If no loopback port can be bound.
    pub async fn start_answering_early(
        route: impl Fn(&Received) -> Answer + Send + Sync + 'static,
        before_body: impl Fn(&Received) -> Option<Answer> + Send + Sync + 'static,
    ) -> Self {
        let routes = Arc::new(Routes {
            route: Box::new(route),
            before_body: Box::new(before_body),
        });
        let received = Arc::new(Mutex::new(Vec::new()));
        let mut addrs = [SocketAddr::from((Ipv4Addr::LOCALHOST, 0)); 2];
        let mut tasks = Vec::new();
        for (addr, listener) in addrs.iter_mut().zip([Listener::Api, Listener::Other]) {
            let socket = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
                .await
                .expect("bind a loopback port");
            *addr = socket.local_addr().expect("local address");
            let log = Arc::clone(&received);
            let routes = Arc::clone(&routes);
            tasks.push(tokio::spawn(async move {
                // Aborting this task drops the set, which aborts every connection.
                let mut connections = JoinSet::new();
                while let Ok((stream, _)) = socket.accept().await {
                    let (log, routes) = (Arc::clone(&log), Arc::clone(&routes));
                    let service = hyper::service::service_fn(move |request| {
                        let (log, routes) = (Arc::clone(&log), Arc::clone(&routes));
                        async move {
                            Ok::<_, Infallible>(answer(listener, &routes, &log, request).await)
                        }
                    });
                    let connection = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service);
                    connections.spawn(connection);
                }
            }));
        }
        Self {
            addrs,
            received,
            tasks,
        }
    }

    /// `http://127.0.0.1:port`, the API's origin.
    #[must_use]
    pub fn origin(&self) -> String {
        format!("http://{}", self.addrs[0])
    }

    /// A URL at the API's origin.
    #[must_use]
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addrs[0])
    }

    /// A URL at the other origin (the same server on another port).
    #[must_use]
    pub fn other_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addrs[1])
    }

    /// Every request received so far, in order.
    #[must_use]
    pub fn received(&self) -> Vec<Received> {
        self.received
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl Drop for LoopbackApi {
    fn drop(&mut self) {
        self.tasks.iter().for_each(JoinHandle::abort);
    }
}

async fn answer(
    listener: Listener,
    routes: &Routes,
    log: &Mutex<Vec<Received>>,
    request: Request<Incoming>,
) -> Response<UnsyncBoxBody<Bytes, Infallible>> {
    let (parts, body) = request.into_parts();
    let mut headers: Vec<(String, String)> = (parts.headers.iter())
        .filter(|(name, _)| !CLIENT_HEADERS.contains(&name.as_str()))
        .map(|(name, value)| {
            let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
            (name.to_string(), value)
        })
        .collect();
    headers.sort_by(|a, b| a.0.cmp(&b.0));
    let mut received = Received {
        listener,
        method: parts.method,
        path: parts.uri.path().to_owned(),
        headers,
        body: Bytes::new(),
    };
    let answer = match (routes.before_body)(&received) {
        Some(early) => early,
        None => {
            received.body = body
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            (routes.route)(&received)
        }
    };
    log.lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(received);
    answer.into_response()
}
