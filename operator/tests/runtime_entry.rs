//! The `run` entry point as `main` calls it: client from `KUBECONFIG`, identity from
//! `POD_NAME`, Lease namespace from the kubeconfig context, and a real SIGTERM. Its own
//! test binary with a single test, because it changes the environment, installs the
//! global logger and signals the process.

mod runtime_support;

use clap::Parser;
use http::StatusCode;
use runtime_support::{FakeLeases, TIMEOUT, eventually, http_get};
use smtpfleet_operator::runtime::{Context, RunArgs, run};
use tokio::sync::mpsc::unbounded_channel;

#[derive(Debug, Parser)]
struct Cli {
    #[command(flatten)]
    run: RunArgs,
}

fn holder(leases: &FakeLeases) -> Option<String> {
    leases.holder("from-context", "smtpfleet-operator")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_from_kubeconfig_and_stops_on_sigterm() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let leases = FakeLeases::new();
    let api = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let api_addr = api.local_addr().unwrap();
    leases.serve_http(api);

    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1
kind: Config
clusters:
- name: fake
  cluster:
    server: http://{api_addr}
users:
- name: nobody
  user: {{}}
contexts:
- name: fake
  context:
    cluster: fake
    user: nobody
    namespace: from-context
current-context: fake
"
        ),
    )
    .unwrap();
    // SAFETY: the only test in this binary; set before any other thread reads them.
    unsafe {
        std::env::set_var("KUBECONFIG", &kubeconfig);
        std::env::set_var("POD_NAME", "operator-7d9f-abcde");
        std::env::remove_var("POD_NAMESPACE");
    }

    let http_addr = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap()
    };
    let args = Cli::try_parse_from([
        "operator",
        &format!("--http-addr={http_addr}"),
        "--namespace=mail",
        "--retry-period=100ms",
        "--log-level=info",
    ])
    .unwrap()
    .run;

    let (events, mut started) = unbounded_channel();
    let running = tokio::spawn(run(args, move |ctx: Context| async move {
        ctx.health.set_ready(true);
        events.send(ctx.namespaces.clone()).unwrap();
        ctx.shutdown.cancelled().await;
        Ok(())
    }));

    let namespaces = tokio::time::timeout(TIMEOUT, started.recv())
        .await
        .expect("controllers never started")
        .unwrap();
    assert_eq!(namespaces, ["mail"]);
    assert_eq!(holder(&leases).as_deref(), Some("operator-7d9f-abcde"));
    let (status, _, body) = http_get(http_addr, "/readyz").await;
    assert_eq!(status, StatusCode::OK, "{body}");

    let killed = std::process::Command::new("kill")
        .args(["-TERM", &std::process::id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    tokio::time::timeout(TIMEOUT, running)
        .await
        .expect("run did not stop on SIGTERM")
        .unwrap()
        .unwrap();
    eventually("lease released", || holder(&leases).is_none()).await;
    assert!(
        tokio::net::TcpStream::connect(http_addr).await.is_err(),
        "HTTP still served after shutdown"
    );
}
