//! The project's interop servers on Node.js (the `oauth2-server` feature): each is a
//! `server.mjs` under `interop/<name>/` that prints one JSON line once listening and exits
//! when its standard input closes.

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use serde_json::Value;

/// Starts `node server.mjs <args>` in `interop/<harness>` and returns it with the JSON line it
/// printed once listening. Its npm packages are installed first, once per process, by the
/// project's `scripts/<install>` (which takes a file lock: several test processes may run it at
/// once). Its standard input stays open (closing it stops the server); its warnings and errors
/// go to the test's output.
///
/// # Panics
///
/// If the install script fails, `node` cannot be started, or the server prints no JSON line
/// within 30 s: the message says what it did say and `how_to` (how to install it), naming it
/// `what`.
pub(crate) fn start(
    harness: &str,
    install: &'static str,
    args: &[String],
    what: &str,
    how_to: &str,
) -> (Child, Value) {
    static INSTALLED: Mutex<Option<HashSet<&'static str>>> = Mutex::new(None);
    {
        // Marked only once it succeeded: after a failed install, every test says why again.
        let mut installed = INSTALLED.lock().unwrap_or_else(PoisonError::into_inner);
        let installed = installed.get_or_insert_with(HashSet::new);
        if !installed.contains(install) {
            crate::install::run_install_script(install, what, how_to);
            installed.insert(install);
        }
    }
    let directory = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../interop")
        .join(harness);
    let mut child = Command::new("node")
        .arg("server.mjs")
        .args(args)
        .current_dir(directory)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("could not start `node`: {e}; {how_to}"));
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx.recv_timeout(Duration::from_secs(30)).unwrap_or_default();
    match serde_json::from_str::<Value>(&line) {
        Ok(started) if started.is_object() => (child, started),
        _ => {
            let _ = child.kill();
            let status = child.wait().ok();
            panic!("{what} did not start (exit: {status:?}, said: {line:?}); {how_to}");
        }
    }
}
