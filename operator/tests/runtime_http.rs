//! The HTTP endpoint, served on a real socket and queried with a real HTTP client.

mod runtime_support;

use http::StatusCode;
use runtime_support::{TIMEOUT, http_get};
use smtpfleet_operator::runtime::http::{bind, serve};
use smtpfleet_operator::runtime::{Health, Metrics};
use tokio_util::sync::CancellationToken;

#[tokio::test]
async fn probes_and_metrics() {
    let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let metrics = Metrics::new();
    let health = Health::new(false);
    let stop = CancellationToken::new();
    let server = tokio::spawn(serve(
        listener,
        metrics.clone(),
        health.clone(),
        stop.clone(),
    ));

    let (status, _, body) = http_get(addr, "/healthz").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, "ok\n");

    let (status, _, body) = http_get(addr, "/readyz").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(body.contains("caches"), "{body}");
    health.set_ready(true);
    let (status, _, _) = http_get(addr, "/readyz").await;
    assert_eq!(status, StatusCode::OK);

    let reconcile = metrics.reconcile();
    reconcile.start("relaypool").success();
    reconcile.error("relaypool", "kube_api");
    metrics.set_leader(true);
    let (status, content_type, body) = http_get(addr, "/metrics").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        content_type,
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    for expected in [
        r#"smtpfleet_operator_reconcile_total{controller="relaypool",result="success"} 1"#,
        r#"smtpfleet_operator_reconcile_duration_seconds_count{controller="relaypool"} 1"#,
        r#"smtpfleet_operator_reconcile_errors_total{controller="relaypool",category="kube_api"} 1"#,
        "smtpfleet_operator_leader 1",
        "# EOF",
    ] {
        assert!(
            body.lines().any(|line| line == expected),
            "missing {expected:?} in\n{body}"
        );
    }

    health.set_failed("controllers stopped");
    let (status, _, body) = http_get(addr, "/healthz").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body, "controllers stopped\n");
    let (status, _, _) = http_get(addr, "/readyz").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);

    let (status, _, _) = http_get(addr, "/nope").await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    stop.cancel();
    tokio::time::timeout(TIMEOUT, server)
        .await
        .expect("server did not stop")
        .unwrap()
        .unwrap();
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "still listening after shutdown"
    );
}

#[tokio::test]
async fn standby_is_ready_without_synced_caches() {
    let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let health = Health::new(true);
    let stop = CancellationToken::new();
    let server = tokio::spawn(serve(
        listener,
        Metrics::new(),
        health.clone(),
        stop.clone(),
    ));

    let (status, _, _) = http_get(addr, "/readyz").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    health.set_election_healthy(true);
    let (status, _, _) = http_get(addr, "/readyz").await;
    assert_eq!(status, StatusCode::OK);
    health.set_leading(true);
    let (status, body_status, body) = http_get(addr, "/readyz").await;
    assert_eq!(
        status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{body_status} {body}"
    );
    health.set_ready(true);
    let (status, _, _) = http_get(addr, "/readyz").await;
    assert_eq!(status, StatusCode::OK);

    stop.cancel();
    tokio::time::timeout(TIMEOUT, server)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn bind_reports_a_busy_port() {
    let taken = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let addr = taken.local_addr().unwrap();
    let err = bind(addr).await.unwrap_err();
    assert!(err.to_string().contains(&addr.to_string()), "{err}");
}
