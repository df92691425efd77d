//! A real Redis server on a loopback port (the `redis` feature): `redis-server` from PATH,
//! installed by the project's own script when it is missing.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::time::{Duration, Instant};

/// How to get the server, for every message that says it is missing.
pub const HOW_TO_INSTALL_REDIS: &str = "the shared-token tests run a real redis-server on \
     loopback: install it with `scripts/install-redis.sh` from the repository root (Debian or \
     Ubuntu: `sudo apt-get install redis-server`; macOS: `brew install redis`), or put a \
     `redis-server` (Redis 6.2+ or Valkey) on PATH";

/// Puts `redis-server` on PATH if it is not there: once per process, with the project's own
/// script (`scripts/install-redis.sh`, which takes a file lock, so several test processes may
/// run it at once). Panics, saying how to install it, if that fails.
fn ensure_installed() {
    static INSTALLED: OnceLock<()> = OnceLock::new();
    INSTALLED.get_or_init(|| {
        let there = Command::new("redis-server")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if there {
            return;
        }
        eprintln!("redis-server is not on PATH: installing it with scripts/install-redis.sh");
        crate::install::run_install_script(
            "install-redis.sh",
            "redis-server",
            HOW_TO_INSTALL_REDIS,
        );
    });
}

/// `redis-server` on a loopback port of its own, with no automatic persistence; killed when
/// dropped.
///
/// [`kill`](Self::kill) stops it at once (SIGKILL, as a crash would) and
/// [`restart`](Self::restart) starts it again, empty, on the same port.
/// [`save_snapshot`](Self::save_snapshot) writes an RDB snapshot (as Redis's default
/// persistence does now and then) and [`restart_from_snapshot`](Self::restart_from_snapshot)
/// starts it again from that snapshot, forgetting every write made after it.
#[derive(Debug)]
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    /// Its data directory (for snapshots), removed when dropped.
    dir: PathBuf,
}

/// An RDB snapshot taken by [`RedisServer::save_snapshot`].
#[derive(Debug)]
pub struct RedisSnapshot(PathBuf);

impl RedisServer {
    /// Starts a server on a free loopback port and waits until it answers `PING`, installing
    /// `redis-server` first (with `scripts/install-redis.sh`) if it is not on PATH.
    ///
    /// # Panics
    ///
    /// If `redis-server` is missing and cannot be installed (the message says how to install
    /// it), or it does not answer within 10 s.
    #[must_use]
    pub fn start() -> Self {
        ensure_installed();
        let mut last = String::new();
        for _ in 0..5 {
            let port = free_port();
            let dir = std::env::temp_dir()
                .join(format!("tokenwarden-redis-{}-{port}", std::process::id()));
            let _ = std::fs::create_dir_all(&dir);
            let mut server = Self {
                child: None,
                port,
                dir,
            };
            match server.spawn() {
                Ok(()) => return server,
                Err(why) => last = why,
            }
        }
        panic!("redis-server did not start: {last}");
    }

    /// `redis://127.0.0.1:<port>/`.
    #[must_use]
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Its port.
    #[must_use]
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Kills it with SIGKILL (everything it held is gone) and waits until it has exited.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Writes a snapshot of everything it holds now (`SAVE`), to restart from later.
    ///
    /// # Panics
    ///
    /// If the server does not save it.
    #[must_use]
    pub fn save_snapshot(&self) -> RedisSnapshot {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).expect("redis answers");
        let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
        let mut answer = [0u8; 5];
        stream.write_all(b"SAVE\r\n").expect("SAVE sent");
        stream.read_exact(&mut answer).expect("SAVE answered");
        assert_eq!(&answer, b"+OK\r\n", "redis saved its snapshot");
        let kept = self
            .dir
            .join(format!("snapshot-{}.rdb", SNAPSHOTS.fetch_add(1, SeqCst)));
        std::fs::copy(self.dir.join("dump.rdb"), &kept).expect("the snapshot copied");
        RedisSnapshot(kept)
    }

    /// Kills it (SIGKILL) and starts it again on the same port from `snapshot`: what was
    /// written after the snapshot is gone, as after a restart from Redis's own persistence or
    /// a failover to a replica that missed those writes.
    ///
    /// # Panics
    ///
    /// If it does not come up within 10 s.
    pub fn restart_from_snapshot(&mut self, snapshot: &RedisSnapshot) {
        self.kill();
        std::fs::copy(&snapshot.0, self.dir.join("dump.rdb")).expect("the snapshot restored");
        self.start_again();
    }

    /// Starts it again on the same port (empty), after [`kill`](Self::kill).
    ///
    /// # Panics
    ///
    /// If it does not come up within 10 s.
    pub fn restart(&mut self) {
        self.kill();
        let _ = std::fs::remove_file(self.dir.join("dump.rdb"));
        self.start_again();
    }

    fn start_again(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self.spawn() {
                Ok(()) => return,
                Err(why) if Instant::now() >= deadline => {
                    panic!("redis-server did not restart: {why}")
                }
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    fn spawn(&mut self) -> Result<(), String> {
        let mut child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port"])
            .arg(self.port.to_string())
            .arg("--dir")
            .arg(&self.dir)
            .args([
                "--dbfilename",
                "dump.rdb",
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "yes",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| {
                if e.kind() == std::io::ErrorKind::NotFound {
                    panic!("redis-server was not found on PATH; {HOW_TO_INSTALL_REDIS}")
                }
                format!("could not start redis-server: {e}")
            })?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!(
                    "redis-server exited at once ({status}); port {} taken?",
                    self.port
                ));
            }
            if ping(self.port) {
                self.child = Some(child);
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        Err("it did not answer PING within 10 s".into())
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Numbers the snapshots of every server of this process.
static SNAPSHOTS: AtomicUsize = AtomicUsize::new(0);

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

fn ping(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    let mut answer = [0u8; 7];
    stream.write_all(b"PING\r\n").is_ok()
        && stream.read_exact(&mut answer).is_ok()
        && &answer == b"+PONG\r\n"
}
