//! Starting and stopping the controller: what it watches, per namespace, and how it
//! reports a missing CRD, cache sync and shutdown.

mod relaypool_support;

use std::collections::BTreeSet;
use std::sync::Arc;

use relaypool_support::{STEP_TIMEOUT, list, mock_client};
use smtpfleet_operator::relaypool::{Context, NoMetrics, RunError, Settings, run};
use tokio::sync::Notify;

fn context(client: kube::Client, namespaces: &[&str]) -> Context {
    Context::new(
        client,
        Arc::new(NoMetrics),
        Settings {
            namespaces: namespaces.iter().map(|s| (*s).to_owned()).collect(),
            ..Settings::default()
        },
    )
}

#[tokio::test]
async fn missing_crd_is_reported_before_anything_starts() {
    let (client, mut server) = mock_client();
    let ctx = Arc::new(context(client, &[]));
    let task = tokio::spawn(run(ctx));
    let exchange = server.next().await;
    assert_eq!(exchange.path, "/apis/smtpfleet.io/v1alpha1/relaypools");
    assert_eq!(exchange.query_param("limit").as_deref(), Some("1"));
    exchange.fail(404, "NotFound");
    let result = tokio::time::timeout(STEP_TIMEOUT, task)
        .await
        .unwrap()
        .unwrap();
    match result {
        Err(RunError::CannotList { scope, .. }) => assert_eq!(scope, ""),
        other => panic!("expected CannotList, got {other:?}"),
    }
}

/// Plays an API server with no objects: answers every list with an empty list and
/// keeps every watch open, recording the `(path, labelSelector|limit)` of every list.
#[tokio::test]
async fn watches_every_owned_and_referenced_kind_in_each_namespace_then_stops() {
    let (client, mut server) = mock_client();
    let synced = Arc::new(Notify::new());
    let mut ctx = context(client, &["mail", "ops"]);
    let notify = synced.clone();
    ctx.on_synced = Some(Arc::new(move || notify.notify_one()));
    let shutdown = ctx.shutdown.clone();
    let task = tokio::spawn(run(Arc::new(ctx)));

    let mut lists: BTreeSet<(String, String)> = BTreeSet::new();
    let mut open_watches = Vec::new();
    let expected_lists = 2 + 2 * 8; // the two CRD checks, then 8 kinds per namespace
    let serve = async {
        while lists.len() < expected_lists || open_watches.len() < 2 * 8 {
            let exchange = server.next().await;
            if exchange.query_param("watch").as_deref() == Some("true") {
                open_watches.push(exchange);
                continue;
            }
            let selector = exchange.query_param("labelSelector").unwrap_or_default();
            let limit = exchange.query_param("limit").unwrap_or_default();
            lists.insert((exchange.path.clone(), format!("{selector}|{limit}")));
            exchange.ok(&list("v1", "Object", vec![]));
        }
    };
    tokio::time::timeout(STEP_TIMEOUT, serve)
        .await
        .expect("all watches started");
    tokio::time::timeout(STEP_TIMEOUT, synced.notified())
        .await
        .expect("caches reported synced");

    let children = "app.kubernetes.io/managed-by=smtpfleet-operator";
    for ns in ["mail", "ops"] {
        for (path, selector) in [
            (
                format!("/apis/smtpfleet.io/v1alpha1/namespaces/{ns}/relaypools"),
                "",
            ),
            (
                format!("/apis/apps/v1/namespaces/{ns}/statefulsets"),
                children,
            ),
            (format!("/api/v1/namespaces/{ns}/services"), children),
            (format!("/api/v1/namespaces/{ns}/configmaps"), children),
            (
                format!("/apis/policy/v1/namespaces/{ns}/poddisruptionbudgets"),
                children,
            ),
            (format!("/api/v1/namespaces/{ns}/serviceaccounts"), children),
            (format!("/api/v1/namespaces/{ns}/secrets"), ""),
            (
                format!("/apis/smtpfleet.io/v1alpha1/namespaces/{ns}/maildomains"),
                "",
            ),
        ] {
            assert!(
                lists
                    .iter()
                    .any(|(p, s)| *p == path && s.starts_with(&format!("{selector}|"))),
                "no list of {path} with selector {selector:?} in {lists:#?}"
            );
        }
    }
    assert!(
        lists
            .iter()
            .all(|(p, _)| p.contains("/namespaces/mail/") || p.contains("/namespaces/ops/")),
        "nothing is watched cluster-wide: {lists:#?}"
    );

    shutdown.cancel();
    let result = tokio::time::timeout(STEP_TIMEOUT, task)
        .await
        .expect("run returns after shutdown")
        .unwrap();
    assert!(result.is_ok(), "{result:?}");
    drop(open_watches);
}
