//! A TCP proxy on loopback that can hold, for a while, the bytes a client sends that contain
//! a marker: a request that reaches its server late, after its sender gave up on it.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// A TCP proxy on a loopback port in front of `target`. Bytes from the server pass at once;
/// bytes from a client pass in order, and a chunk containing the marker set by
/// [`hold`](Self::hold) waits that long first (and so does everything the client sends after
/// it, as on one TCP connection).
#[derive(Debug)]
pub struct HoldingProxy {
    addr: SocketAddr,
    rule: Arc<Rule>,
    task: JoinHandle<()>,
}

#[derive(Debug, Default)]
struct Rule {
    marker: Mutex<Vec<u8>>,
    hold_ms: AtomicU64,
    held: AtomicU64,
}

impl HoldingProxy {
    /// A proxy to `target` (`host:port`), holding nothing yet.
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let rule = Arc::new(Rule::default());
        let task = tokio::spawn({
            let rule = Arc::clone(&rule);
            async move {
                while let Ok((client, _)) = listener.accept().await {
                    let rule = Arc::clone(&rule);
                    tokio::spawn(async move {
                        let Ok(server) = TcpStream::connect(target).await else {
                            return;
                        };
                        let (mut from_client, mut to_client) = client.into_split();
                        let (mut from_server, mut to_server) = server.into_split();
                        let up = async {
                            let mut buf = vec![0u8; 64 * 1024];
                            loop {
                                let n = match from_client.read(&mut buf).await {
                                    Ok(0) | Err(_) => return,
                                    Ok(n) => n,
                                };
                                let chunk = &buf[..n];
                                if let Some(hold) = rule.hold_for(chunk) {
                                    rule.held.fetch_add(1, SeqCst);
                                    tokio::time::sleep(hold).await;
                                }
                                if to_server.write_all(chunk).await.is_err() {
                                    return;
                                }
                            }
                        };
                        let down = tokio::io::copy(&mut from_server, &mut to_client);
                        let _ = futures_util::future::join(up, down).await;
                    });
                }
            }
        });
        Self { addr, rule, task }
    }

    /// The proxy's address.
    #[must_use]
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// From now on, a client chunk containing `marker` waits `hold` before it goes on.
    pub fn hold(&self, marker: &[u8], hold: Duration) {
        *self.rule.marker.lock().unwrap() = marker.to_vec();
        self.rule
            .hold_ms
            .store(u64::try_from(hold.as_millis()).unwrap_or(u64::MAX), SeqCst);
    }

    /// Chunks held so far.
    #[must_use]
    pub fn held(&self) -> u64 {
        self.rule.held.load(SeqCst)
    }
}

impl Rule {
    fn hold_for(&self, chunk: &[u8]) -> Option<Duration> {
        let ms = self.hold_ms.load(SeqCst);
        let marker = self.marker.lock().unwrap();
        (ms > 0 && !marker.is_empty() && chunk.windows(marker.len()).any(|w| w == &marker[..]))
            .then(|| Duration::from_millis(ms))
    }
}

impl Drop for HoldingProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}
