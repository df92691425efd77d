//! Fixtures for tokenwarden's tests (not published).
//!
//! - [`Recorder`]: a host on a loopback port that keeps the raw bytes of every request it
//!   receives and answers each with a fixed reply (such as a redirect, or an answer that breaks
//!   off or stalls), to assert that no token or credential byte ever reached it.
//! - [`LoopbackApi`]: a hyper server on loopback answering each request by a route function
//!   (an [`Answer`] whose body may trickle or stall) and recording what it [`Received`] — method,
//!   path, headers but those each client sets its own way, body — to compare what two HTTP
//!   clients put on the wire.
//! - [`CountingIssuer`]: a token source minting `tok-1`, `tok-2`, … that counts its calls, with
//!   a lifetime and a delay of your choice; it fails every call, on a schedule, or from the
//!   moment it is told to.
//! - [`LoopbackResolver`]: a hyper-util resolver that sends every host name to `127.0.0.1`,
//!   so that `evil.example` stands in for another host on this machine.
//! - [`HoldingProxy`]: a TCP proxy that holds a client's bytes containing a marker for a while,
//!   so that a request reaches its server after its sender gave up on it.
//! - [`store_contract`]: the contract every token store keeps, run against `MemoryStore` and
//!   the Redis store.
//! - [`LogCapture`]: every tracing event, at every level, written to a buffer.
//! - [`ClockHold`]: keeps a paused tokio clock still while a test waits on loopback I/O, so
//!   that time moves only where the test advances it.
//! - [`every_kind_of_header`]: a presentation that puts the token in every kind of header.
//! - Small helpers: [`spawn_get`] and [`spawn_gets`] (callers of a cache on tasks of their
//!   own), [`distinct_tokens`] (what many callers at once got), [`secret`] (a snapshot's token text), [`chain`] (an error and its causes in one line),
//!   [`unused_addr`] (a loopback address nothing listens on).
//! - With the `reqwest` feature, `middleware_client` and `with_middleware`: reqwest clients
//!   under the token middleware. With the `gateways` feature, `gateway_error`: the gateway
//!   error inside a cache's error. With the `oauth2-server` feature, `OAuth2Server`: a real
//!   OAuth 2.0 server (oauth2-mock-server on Node.js) on loopback, `JwtApi`: an API that
//!   verifies its tokens by signature and expiry, and `DpopApi`: an API that verifies the DPoP
//!   proof (RFC 9449) of every request and asks for nonces.
#![deny(missing_docs)]
#![forbid(unsafe_code)]
#![warn(missing_debug_implementations, rust_2018_idioms, unreachable_pub)]

mod api;
#[cfg(feature = "oauth2-server")]
mod dpop_api;
#[cfg(feature = "gateways")]
mod gateways;
mod holding_proxy;
#[cfg(any(feature = "redis", feature = "oauth2-server"))]
mod install;
mod issuer;
#[cfg(feature = "reqwest")]
mod middleware;
#[cfg(feature = "oauth2-server")]
mod node_server;
#[cfg(feature = "oauth2-server")]
mod oauth2_server;
#[cfg(feature = "oauth2-server")]
mod oidc_provider;
#[cfg(feature = "metrics")]
mod recorded;
#[cfg(feature = "redis")]
mod redis_server;
mod store_contract;

pub use api::{Answer, CLIENT_HEADERS, Listener, LoopbackApi, Received, Route};
#[cfg(feature = "oauth2-server")]
pub use dpop_api::{DpopApi, DpopExpected, DpopRefusal, DpopVerified, jwk_thumbprint, verify_dpop};
#[cfg(feature = "gateways")]
pub use gateways::gateway_error;
pub use holding_proxy::HoldingProxy;
pub use issuer::CountingIssuer;
#[cfg(feature = "reqwest")]
pub use middleware::{middleware_client, with_middleware};
#[cfg(feature = "oauth2-server")]
pub use oauth2_server::{JwtApi, OAuth2Server};
#[cfg(feature = "oauth2-server")]
pub use oidc_provider::OidcProvider;
#[cfg(feature = "metrics")]
pub use recorded::recorded;
#[cfg(feature = "redis")]
pub use redis_server::{HOW_TO_INSTALL_REDIS, RedisServer, RedisSnapshot};
pub use store_contract::store_contract;

use std::collections::HashSet;
use std::future::{Ready, ready};
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use http::{HeaderName, HeaderValue};
use hyper_util::client::legacy::connect::dns::Name;
use tokenwarden_core::{Error, Presentation, Snapshot, TokenCache};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

/// The answer a [`Recorder`] gives to every request.
#[derive(Clone, Debug)]
pub struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    declared_length: Option<usize>,
    held_open: bool,
}

impl Reply {
    /// `status` with an empty body.
    #[must_use]
    pub fn status(status: u16) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: Vec::new(),
            declared_length: None,
            held_open: false,
        }
    }

    /// A redirect (`307` keeps the method and body, as an attacker would want) to `location`.
    #[must_use]
    pub fn redirect(status: u16, location: &str) -> Self {
        Self::status(status).with_header("location", location)
    }

    /// `200` with a JSON body.
    #[must_use]
    pub fn json(body: &str) -> Self {
        Self::status(200)
            .with_header("content-type", "application/json")
            .with_body(body)
    }

    /// Adds a header.
    #[must_use]
    pub fn with_header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    /// Sets the body.
    #[must_use]
    pub fn with_body(mut self, body: &str) -> Self {
        self.body = body.as_bytes().to_vec();
        self
    }

    /// Declares a `content-length` of `declared` bytes, more than the body it sends: the
    /// answer breaks off where the body ends (the connection closes, unless [`held_open`]).
    ///
    /// [`held_open`]: Self::held_open
    #[must_use]
    pub fn cut_short(self, declared: usize) -> Self {
        let declared_length = Some(declared);
        Self {
            declared_length,
            ..self
        }
    }

    /// Keeps the connection open once the answer is sent, until the recorder is dropped: with
    /// [`cut_short`](Self::cut_short), a body that stalls.
    #[must_use]
    pub fn held_open(self) -> Self {
        let held_open = true;
        Self { held_open, ..self }
    }

    fn to_bytes(&self) -> Vec<u8> {
        let mut out = format!("HTTP/1.1 {} Recorded\r\n", self.status);
        for (name, value) in &self.headers {
            out.push_str(&format!("{name}: {value}\r\n"));
        }
        out.push_str(&format!(
            "content-length: {}\r\nconnection: close\r\n\r\n",
            self.declared_length.unwrap_or(self.body.len())
        ));
        let mut bytes = out.into_bytes();
        bytes.extend_from_slice(&self.body);
        bytes
    }
}

/// A host on a loopback port that records the raw bytes of every request and answers each
/// with the same [`Reply`]. Stops when dropped.
#[derive(Debug)]
pub struct Recorder {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Vec<u8>>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Recorder {
    /// Starts a recorder on `127.0.0.1` that answers every request with `reply`.
    ///
    /// # Panics
    ///
    /// If no loopback port can be bound.
    pub async fn start(reply: Reply) -> Self {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .expect("bind a loopback port");
        let addr = listener.local_addr().expect("local address");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&seen);
        let (answer, held_open) = (Arc::new(reply.to_bytes()), reply.held_open);
        let task = tokio::spawn(async move {
            // Aborting this task drops the set, which aborts every connection.
            let mut connections = JoinSet::new();
            while let Ok((stream, _)) = listener.accept().await {
                let (sink, answer) = (Arc::clone(&sink), Arc::clone(&answer));
                connections.spawn(async move {
                    let _ = serve(stream, &sink, &answer, held_open).await;
                });
            }
        });
        Self { addr, seen, task }
    }

    /// The port it listens on.
    #[must_use]
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Its socket address.
    #[must_use]
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `scheme://host:port` for a name of your choice (resolved to loopback by the client).
    #[must_use]
    pub fn origin(&self, scheme: &str, host: &str) -> String {
        format!("{scheme}://{host}:{}", self.port())
    }

    /// How many requests arrived.
    #[must_use]
    pub fn requests(&self) -> usize {
        self.seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Every byte received, all requests concatenated.
    #[must_use]
    pub fn raw(&self) -> Vec<u8> {
        self.seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .concat()
    }

    /// The labels of the `needles` found anywhere in the raw bytes (case-insensitively).
    #[must_use]
    pub fn found<'a>(&self, needles: &[(&'a str, &str)]) -> Vec<&'a str> {
        let raw = self.raw().to_ascii_lowercase();
        needles
            .iter()
            .filter(|(_, needle)| {
                let needle = needle.to_ascii_lowercase().into_bytes();
                raw.windows(needle.len()).any(|w| w == needle.as_slice())
            })
            .map(|(label, _)| *label)
            .collect()
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Reads one request (head, then a body of `content-length` bytes), keeps its bytes, answers;
/// then closes the connection, or holds it open for good.
async fn serve(
    mut stream: TcpStream,
    sink: &Mutex<Vec<Vec<u8>>>,
    answer: &[u8],
    held_open: bool,
) -> io::Result<()> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let read = async {
        loop {
            if let Some(end) = find(&buf, b"\r\n\r\n") {
                let length = content_length(&buf[..end]);
                if buf.len() >= end + 4 + length {
                    return Ok::<_, io::Error>(());
                }
            }
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    };
    let outcome = tokio::time::timeout(Duration::from_secs(10), read).await;
    if !buf.is_empty() {
        sink.lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(buf);
    }
    if matches!(outcome, Ok(Ok(()))) {
        stream.write_all(answer).await?;
        if held_open {
            std::future::pending::<()>().await;
        }
        stream.shutdown().await?;
    }
    Ok(())
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn content_length(head: &[u8]) -> usize {
    String::from_utf8_lossy(head)
        .lines()
        .filter_map(|line| line.split_once(':'))
        .find(|(name, _)| name.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, value)| value.trim().parse().ok())
        .unwrap_or(0)
}

/// A hyper-util resolver that answers `127.0.0.1` for every name: with it, any host name
/// (`api.example`, `evil.example`) reaches a server on this machine, at the URI's port.
#[derive(Clone, Copy, Debug, Default)]
pub struct LoopbackResolver;

impl tower::Service<Name> for LoopbackResolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = io::Error;
    type Future = Ready<Result<Self::Response, io::Error>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), io::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Name) -> Self::Future {
        ready(Ok(
            vec![SocketAddr::from((Ipv4Addr::LOCALHOST, 0))].into_iter()
        ))
    }
}

/// Every tracing event, at every level and from every target, formatted into a buffer while
/// the capture is the thread's default subscriber (use a current-thread runtime).
#[derive(Debug)]
pub struct LogCapture {
    buffer: Arc<Mutex<Vec<u8>>>,
    _guard: tracing::subscriber::DefaultGuard,
}

impl LogCapture {
    /// Starts capturing on this thread.
    #[must_use]
    pub fn start() -> Self {
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let writer = Arc::clone(&buffer);
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(move || Writer(Arc::clone(&writer)))
            .finish();
        Self {
            buffer,
            _guard: tracing::subscriber::set_default(subscriber),
        }
    }

    /// Everything captured so far.
    #[must_use]
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.buffer.lock().unwrap_or_else(PoisonError::into_inner))
            .into_owned()
    }
}

struct Writer(Arc<Mutex<Vec<u8>>>);

impl io::Write for Writer {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Keeps a paused tokio clock from advancing on its own while it lives, so that time moves
/// only through `tokio::time::advance`.
///
/// A current-thread runtime with a paused clock jumps time to its next timer whenever it has
/// nothing to run, and a runtime waiting for a loopback server's answer has nothing to run: time
/// would leap by a fetch timeout or a backoff window between two requests, more or less often
/// depending on how fast the server answers. Tokio does not auto-advance while a blocking task
/// runs (see `tokio::time::pause`); the hold is such a task, ended when the hold is dropped.
/// Tokio's `test-util` feature (which pausing needs anyway) must be on, or this does nothing.
#[derive(Debug)]
pub struct ClockHold {
    _release: std::sync::mpsc::Sender<()>,
}

impl ClockHold {
    /// Holds the clock of the current runtime.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime.
    #[must_use]
    pub fn start() -> Self {
        let (release, released) = std::sync::mpsc::channel::<()>();
        // Inhibition starts when the task is spawned, not when a thread picks it up.
        drop(tokio::task::spawn_blocking(move || {
            let _ = released.recv();
        }));
        Self { _release: release }
    }
}

/// A presentation with a header of every kind: the token as `Authorization: Bearer <token>` and
/// as `Token: <token>`, and the fixed `Merchant-Account: FNS-12345`.
#[must_use]
pub fn every_kind_of_header() -> Presentation {
    Presentation::bearer()
        .with_header(HeaderName::from_static("token"))
        .with_fixed_header(
            HeaderName::from_static("merchant-account"),
            HeaderValue::from_static("FNS-12345"),
        )
}

/// `n` callers of `cache` at once ([`spawn_gets`]): the texts of the tokens they got, each
/// once. There are `n` only if no token was handed out twice.
///
/// # Panics
///
/// Outside a tokio runtime, or if a caller got no token.
pub async fn distinct_tokens(cache: &TokenCache, n: usize) -> HashSet<String> {
    let mut tokens = HashSet::new();
    for caller in spawn_gets(cache, n) {
        tokens.insert(secret(&caller.await.expect("a caller").expect("a token")));
    }
    tokens
}

/// An error and each of its causes, in order, joined by `": "`.
#[must_use]
pub fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let causes = std::iter::successors(Some(error), |e| e.source());
    causes.map(|e| e.to_string()).collect::<Vec<_>>().join(": ")
}

/// A caller of `cache` on a task of its own: it asks for a token once.
///
/// # Panics
///
/// Outside a tokio runtime.
pub fn spawn_get(cache: &TokenCache) -> JoinHandle<Result<Snapshot, Error>> {
    let cache = cache.clone();
    tokio::spawn(async move { cache.get().await })
}

/// `n` callers of `cache` at once, each on a task of its own ([`spawn_get`]).
///
/// # Panics
///
/// Outside a tokio runtime.
pub fn spawn_gets(cache: &TokenCache, n: usize) -> Vec<JoinHandle<Result<Snapshot, Error>>> {
    (0..n).map(|_| spawn_get(cache)).collect()
}

/// The text of a snapshot's token.
#[must_use]
pub fn secret(snapshot: &Snapshot) -> String {
    snapshot.token().secret().expose().to_owned()
}

/// A loopback address that nothing listens on: a port bound and let go at once, so that a
/// connection to it is refused.
///
/// # Panics
///
/// If no loopback port can be bound.
#[must_use]
pub fn unused_addr() -> SocketAddr {
    let listener =
        std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind a loopback port");
    listener.local_addr().expect("local address")
}
