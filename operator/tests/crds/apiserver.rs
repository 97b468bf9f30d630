//! The API server's own verdict: `tests/apiserver` is a small Go program built on
//! `k8s.io/apiextensions-apiserver` (the oldest supported minor version) that validates
//! the checked-in CRDs as CRD creation does, and every fixture as object creation and
//! update do. It confirms that the Rust stand-ins (jsonschema, kube-cel) and the real
//! validation agree, and catches what only the API server checks: the CEL cost budget,
//! defaults validated against rules, list-map key uniqueness, `fieldPath` rules.
//!
//! It needs Go and the Go module proxy, so it does not run by default:
//! `cargo test -p smtpfleet-operator --test crds -- --ignored api_server`

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Downloading modules and building the checker on a busy 2-core machine takes minutes.
const TIMEOUT: Duration = Duration::from_secs(20 * 60);

fn go_binary() -> PathBuf {
    if let Some(go) = std::env::var_os("GO") {
        return go.into();
    }
    let installed = Path::new("/usr/local/go/bin/go");
    if installed.exists() {
        installed.to_owned()
    } else {
        "go".into()
    }
}

#[test]
#[ignore = "needs Go and the Go module proxy; run with --ignored"]
fn api_server_accepts_the_crds_and_agrees_on_every_fixture() {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let output = tempfile::NamedTempFile::new().expect("temp file");
    let mut child = Command::new(go_binary())
        .args(["run", "."])
        .arg(manifest.join("../crds"))
        .arg(manifest.join("tests/fixtures"))
        .current_dir(manifest.join("tests/apiserver"))
        .stdin(Stdio::null())
        .stdout(output.reopen().expect("reopen"))
        .stderr(output.reopen().expect("reopen"))
        .spawn()
        .expect("go runs");
    let deadline = Instant::now() + TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the API server check did not finish within {TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let text = std::fs::read_to_string(output.path()).expect("output readable");
    println!("{text}");
    assert!(status.success(), "the API server disagrees:\n{text}");
    assert!(text.contains(" passed, 0 failed"), "{text}");
}
