//! One replica process, as `examples/replicas.rs` and `tests/replicas.rs` run several: a
//! Torus token cache shared through Redis, behind the reqwest middleware, calling the
//! sandbox's API as commands on its stdin say. And the handle the parent drives it with.
//!
//! Commands, one per line, each answered with one line of `key=value` pairs:
//! - `get`: one API request (`status`, `replayed`, `token`);
//! - `run <ms>`: every task sends requests for that long (`requests`, `failed`, `replayed`,
//!   `tokens`: each token's fingerprint and when this replica first used it, in Unix ms);
//! - `stats`: the replica's `SharedStats`;
//! - `quit`.
//!
//! Tokens are shown as fingerprints (a hash), never as themselves.

#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::error::Error;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use reqwest_middleware::{ClientBuilder, ClientWithMiddleware};
use tokenwarden::{Replay, Scope, SharedTokens, TokenCache};
use tokenwarden_gateways::IssuerClient;
use tokenwarden_gateways::torus::{self, TorusConfig};
use tokenwarden_redis::{EncryptionKey, RedisStore};
use tokenwarden_reqwest::TokenMiddleware;
use tokenwarden_sandbox::credentials;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

/// Set (to the replica's name) in a replica process's environment.
pub const ROLE: &str = "TOKENWARDEN_REPLICA";

/// What every replica is given.
#[derive(Clone, Debug)]
pub struct Setup {
    /// `redis://127.0.0.1:<port>/`.
    pub redis: String,
    /// The sandbox's Torus base URL.
    pub torus: String,
    /// The sandbox's Torus API URL the requests go to.
    pub api: String,
    /// The encryption key, 64 hex digits (a demo key: real ones come from a secrets store).
    pub key: String,
    /// Lease TTL.
    pub lease: Duration,
    /// The tokens' lifetime (the sandbox's).
    pub lifetime: Duration,
    /// The store timeout (less than a third of the lease).
    pub store_timeout: Duration,
    /// Tasks sending requests in `run`.
    pub tasks: usize,
}

/// A short, one-way fingerprint of a token, for printing.
pub fn fingerprint(secret: &str) -> String {
    let mut hasher = DefaultHasher::new();
    secret.hash(&mut hasher);
    format!("{:08x}", hasher.finish() as u32)
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The replica process: serves the commands on stdin until `quit` or end of input.
pub async fn serve() -> Result<(), Box<dyn Error>> {
    let var = |name: &str| std::env::var(name).map_err(|_| format!("{name} is not set"));
    let lease = Duration::from_millis(var("TW_LEASE_MS")?.parse()?);
    let tasks: usize = var("TW_TASKS")?.parse()?;
    let api = var("TW_API")?;
    let store = RedisStore::open(&var("TW_REDIS")?, EncryptionKey::from_hex(&var("TW_KEY")?)?)?;
    let shared = SharedTokens::builder(store)
        .with_lease_ttl(lease)
        .with_poll_interval(Duration::from_millis(50))
        // Generous for a loaded machine: a request waits at most this plus a fetch.
        .with_store_timeout(Duration::from_millis(var("TW_STORE_TIMEOUT_MS")?.parse()?))
        .with_pause_after_trouble(Duration::from_millis(300))
        .build();
    let m = credentials::merchant(0);
    // Torus states no expiry: the account's token lifetime is configured.
    let config = TorusConfig::new(
        &var("TW_TORUS")?,
        m.torus_request_token,
        m.torus_api_key,
        m.torus_api_secret,
    )
    .with_token_lifetime(Duration::from_millis(var("TW_LIFETIME_MS")?.parse()?));
    let cache = torus::cache(IssuerClient::new()?, config)
        .with_shared(&shared, "torus:merchant-0")
        // Short demo tokens: a margin for clocks that disagree of half a second.
        .with_clock_skew(Duration::from_millis(500))
        .build()?;
    let client = ClientBuilder::new(tokenwarden_reqwest::client_builder().build()?)
        .with(TokenMiddleware::new(cache.clone(), Scope::origin_of(&api)?))
        .build();
    let mut out = tokio::io::stdout();
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    out.write_all(b"ready\n").await?;
    out.flush().await?;
    while let Some(line) = lines.next_line().await? {
        let mut words = line.split_whitespace();
        let reply = match words.next() {
            Some("get") => {
                let (status, replayed) = request(&client, &api).await;
                let token = cache
                    .cached()
                    .map(|s| fingerprint(s.token().secret().expose()))
                    .unwrap_or_default();
                format!("status={status} replayed={replayed} token={token}")
            }
            Some("run") => {
                let ms: u64 = words.next().unwrap_or("1000").parse()?;
                run(&client, &cache, &api, tasks, Duration::from_millis(ms)).await
            }
            Some("stats") => {
                let s = shared.stats();
                format!(
                    "adopted={} leases={} issuer={} direct={} installed={} superseded={} waits={} rejections={} notices={} errors={}",
                    s.adopted,
                    s.leases,
                    s.issuer_fetches,
                    s.direct_fetches,
                    s.installed,
                    s.superseded,
                    s.waits,
                    s.rejections_sent,
                    s.notices,
                    s.store_errors
                )
            }
            Some("quit") | None => break,
            Some(other) => format!("error=unknown-command:{other}"),
        };
        out.write_all(reply.as_bytes()).await?;
        out.write_all(b"\n").await?;
        out.flush().await?;
    }
    Ok(())
}

/// One request: its status (0 if it failed at the caller) and whether it was replayed.
async fn request(client: &ClientWithMiddleware, api: &str) -> (u16, bool) {
    match client.post(api).body(r#"{"order":1}"#).send().await {
        Ok(response) => {
            let replayed = matches!(
                response.extensions().get::<Replay>(),
                Some(Replay::Replayed { .. })
            );
            (response.status().as_u16(), replayed)
        }
        Err(error) => {
            eprintln!("request failed: {error}");
            (0, false)
        }
    }
}

async fn run(
    client: &ClientWithMiddleware,
    cache: &TokenCache,
    api: &str,
    tasks: usize,
    duration: Duration,
) -> String {
    let end = tokio::time::Instant::now() + duration;
    let first_seen: Arc<Mutex<HashMap<String, u64>>> = Arc::default();
    let mut handles = Vec::new();
    for _ in 0..tasks {
        let (client, cache, api, first_seen) = (
            client.clone(),
            cache.clone(),
            api.to_owned(),
            Arc::clone(&first_seen),
        );
        handles.push(tokio::spawn(async move {
            let (mut requests, mut failed, mut replayed) = (0u64, 0u64, 0u64);
            while tokio::time::Instant::now() < end {
                let (status, again) = request(&client, &api).await;
                requests += 1;
                failed += u64::from(status != 200);
                if status != 200 && status != 0 {
                    eprintln!("request answered {status}");
                }
                replayed += u64::from(again);
                if let Some(snapshot) = cache.cached() {
                    let fp = fingerprint(snapshot.token().secret().expose());
                    first_seen.lock().unwrap().entry(fp).or_insert_with(unix_ms);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            (requests, failed, replayed)
        }));
    }
    let (mut requests, mut failed, mut replayed) = (0, 0, 0);
    for handle in handles {
        let (r, f, p) = handle.await.unwrap_or((0, 1, 0));
        requests += r;
        failed += f;
        replayed += p;
    }
    let tokens: Vec<String> = first_seen
        .lock()
        .unwrap()
        .iter()
        .map(|(fp, at)| format!("{fp}@{at}"))
        .collect();
    format!(
        "requests={requests} failed={failed} replayed={replayed} tokens={}",
        tokens.join(",")
    )
}

/// A reply's `key=value` pairs.
pub fn parse(reply: &str) -> BTreeMap<String, String> {
    reply
        .split_whitespace()
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// A number in a reply (0 if it is not there).
pub fn count(reply: &BTreeMap<String, String>, key: &str) -> u64 {
    reply.get(key).and_then(|v| v.parse().ok()).unwrap_or(0)
}

/// The tokens of a `run` reply: fingerprint → first use (Unix ms).
pub fn tokens(reply: &BTreeMap<String, String>) -> BTreeMap<String, u64> {
    reply
        .get("tokens")
        .map(String::as_str)
        .unwrap_or_default()
        .split(',')
        .filter_map(|t| t.split_once('@'))
        .map(|(fp, at)| (fp.to_owned(), at.parse().unwrap_or(0)))
        .collect()
}

/// A replica process, driven by its parent.
pub struct Replica {
    /// Its name.
    pub name: String,
    child: Child,
    stdin: ChildStdin,
    stdout: Lines<BufReader<ChildStdout>>,
}

impl Replica {
    /// Starts `program` (which calls [`serve`] when [`ROLE`] is set) as replica `name`, and
    /// waits until it is ready.
    pub async fn start(
        program: &std::path::Path,
        name: &str,
        setup: &Setup,
    ) -> Result<Self, Box<dyn Error>> {
        let mut child = Command::new(program)
            .env(ROLE, name)
            .env("TW_REDIS", &setup.redis)
            .env("TW_TORUS", &setup.torus)
            .env("TW_API", &setup.api)
            .env("TW_KEY", &setup.key)
            .env("TW_LEASE_MS", setup.lease.as_millis().to_string())
            .env("TW_TASKS", setup.tasks.to_string())
            .env("TW_LIFETIME_MS", setup.lifetime.as_millis().to_string())
            .env(
                "TW_STORE_TIMEOUT_MS",
                setup.store_timeout.as_millis().to_string(),
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()?;
        let stdin = child.stdin.take().ok_or("no stdin")?;
        let stdout = BufReader::new(child.stdout.take().ok_or("no stdout")?).lines();
        let mut replica = Self {
            name: name.to_owned(),
            child,
            stdin,
            stdout,
        };
        let ready = replica.reply().await?;
        if ready != "ready" {
            return Err(format!("replica {name} said {ready:?} instead of ready").into());
        }
        Ok(replica)
    }

    /// Sends a command without waiting for its answer.
    pub async fn send(&mut self, command: &str) -> Result<(), Box<dyn Error>> {
        self.stdin.write_all(command.as_bytes()).await?;
        self.stdin.write_all(b"\n").await?;
        self.stdin.flush().await?;
        Ok(())
    }

    /// The next answer.
    pub async fn reply(&mut self) -> Result<String, Box<dyn Error>> {
        let line = tokio::time::timeout(Duration::from_secs(60), self.stdout.next_line())
            .await
            .map_err(|_| format!("replica {} did not answer within 60 s", self.name))??;
        line.ok_or_else(|| format!("replica {} ended", self.name).into())
    }

    /// Sends a command and returns its answer's pairs.
    pub async fn ask(&mut self, command: &str) -> Result<BTreeMap<String, String>, Box<dyn Error>> {
        self.send(command).await?;
        Ok(parse(&self.reply().await?))
    }

    /// Kills it with SIGKILL, as a crash or the OOM killer would, and waits for it.
    pub async fn kill(&mut self) -> Result<(), Box<dyn Error>> {
        self.child.kill().await?;
        Ok(())
    }

    /// Freezes it (SIGSTOP), as a long pause of a VM or the process would, or lets it go on
    /// (SIGCONT).
    pub fn freeze(&self, frozen: bool) -> Result<(), Box<dyn Error>> {
        let pid = self.child.id().ok_or("the replica has exited")?;
        let signal = if frozen { "-STOP" } else { "-CONT" };
        let status = std::process::Command::new("kill")
            .arg(signal)
            .arg(pid.to_string())
            .status()?;
        if !status.success() {
            return Err(format!("kill {signal} {pid}: {status}").into());
        }
        Ok(())
    }

    /// Asks it to end, and waits.
    pub async fn quit(mut self) -> Result<(), Box<dyn Error>> {
        self.send("quit").await?;
        tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await??;
        Ok(())
    }
}
