//! The project's own install scripts, run from tests that need a server.

use std::path::Path;
use std::process::Command;

/// Runs `scripts/<script>` of the repository with bash, and panics with its output and
/// `how_to` if it cannot be run or fails (`what`: what it installs, for the message).
pub(crate) fn run_install_script(script: &str, what: &str, how_to: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../scripts")
        .join(script);
    let output = Command::new("bash")
        .arg(&path)
        .output()
        .unwrap_or_else(|e| panic!("could not run {}: {e}; {how_to}", path.display()));
    assert!(
        output.status.success(),
        "installing {what} failed ({}):\n{}{}\n{how_to}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
}
