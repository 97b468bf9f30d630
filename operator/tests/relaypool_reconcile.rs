//! The RelayPool reconciler against a scripted API server: each scenario plays the
//! API server, asserting every request the reconciler makes (method, path, field
//! manager, patch body) in order, answering it, and checking what the reconciler
//! returns.

mod relaypool_support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use http::Method;
use kube::runtime::controller::Action;
use prometheus_client::registry::Registry;
use relaypool_support::reconcile::{
    condition, grouped, pool_path, serve_apply, serve_children, serve_domain_set, serve_events,
    serve_mail_domains, serve_secret, serve_statefulsets, serve_status_patch, settled_status,
    tls_secret,
};
use relaypool_support::{ApiServer, STEP_TIMEOUT, fixture, list, mock_client};
use serde_json::{Value, json};
use smtpfleet_operator::api::RelayPool;
use smtpfleet_operator::relaypool::build::build;
use smtpfleet_operator::relaypool::build::meta::TEMPLATE_HASH_ANNOTATION;
use smtpfleet_operator::relaypool::dereference::Dereferenced;
use smtpfleet_operator::relaypool::metrics::PoolMetrics;
use smtpfleet_operator::relaypool::validate::validate;
use smtpfleet_operator::relaypool::{
    Context, Error, NoMetrics, ReconcileObserver, ReconcileSpan, Settings, error_policy, reconcile,
};
use tokio::task::JoinHandle;

const NS: &str = "mail";
const REQUEUE: Duration = Duration::from_secs(300);

fn settings() -> Settings {
    Settings {
        namespaces: Vec::new(),
        requeue_after: REQUEUE,
        default_image: "ghcr.io/smtpfleet/smtp-node:test".into(),
    }
}

fn start(pool: &RelayPool) -> (ApiServer, Arc<Context>, JoinHandle<Result<Action, Error>>) {
    let (client, server) = mock_client();
    let ctx = Arc::new(Context::new(client, Arc::new(NoMetrics), settings()));
    let task = tokio::spawn(reconcile(Arc::new(pool.clone()), ctx.clone()));
    (server, ctx, task)
}

async fn finish(task: JoinHandle<Result<Action, Error>>) -> Result<Action, Error> {
    tokio::time::timeout(STEP_TIMEOUT, task)
        .await
        .expect("the reconciler finished in time")
        .expect("the reconciler did not panic")
}

fn json_of(pool: &RelayPool) -> Value {
    serde_json::to_value(pool).unwrap()
}

/// The pod-template digest the operator puts on the StatefulSet of `dc`, when the pool
/// still has that data centre: a StatefulSet carrying it runs the current template.
fn template_hash(pool: &RelayPool, dc: &str) -> Option<String> {
    let validated = validate(pool, &Dereferenced::default(), &settings().default_image).ok()?;
    let children = build(&validated.pool).ok()?;
    let name = format!("{}-{dc}", pool.metadata.name.clone()?);
    children
        .statefulsets
        .into_iter()
        .find(|s| s.metadata.name.as_deref() == Some(name.as_str()))?
        .metadata
        .annotations?
        .get(TEMPLATE_HASH_ANNOTATION)
        .cloned()
}

/// A StatefulSet of `pool` as the API server would list it, applied by the operator
/// from the pool's current spec (nothing to roll).
fn existing_sts(pool: &RelayPool, dc: &str, replicas: i32, status: Value) -> Value {
    let mut sts = any_sts(pool, dc, replicas, status);
    if let Some(hash) = template_hash(pool, dc) {
        sts["metadata"]["annotations"] = json!({ TEMPLATE_HASH_ANNOTATION: hash });
    }
    sts
}

/// A StatefulSet of `pool` as the API server would list it, without the operator's
/// template digest.
fn any_sts(pool: &RelayPool, dc: &str, replicas: i32, status: Value) -> Value {
    let name = pool.metadata.name.clone().unwrap();
    json!({
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {
            "name": format!("{name}-{dc}"),
            "namespace": NS,
            "uid": format!("uid-{name}-{dc}"),
            "generation": 1,
            "labels": {
                "app.kubernetes.io/name": "smtp-node",
                "app.kubernetes.io/instance": name,
                "app.kubernetes.io/managed-by": "smtpfleet-operator",
                "smtpfleet.io/pool": name,
                "smtpfleet.io/data-centre": dc,
            },
            "ownerReferences": [{
                "apiVersion": "smtpfleet.io/v1alpha1",
                "kind": "RelayPool",
                "name": name,
                "uid": pool.metadata.uid.clone().unwrap(),
                "controller": true,
                "blockOwnerDeletion": true,
            }],
        },
        "spec": {
            "replicas": replicas,
            "serviceName": format!("{name}-peers"),
            "selector": {"matchLabels": {"smtpfleet.io/pool": name}},
            "template": {},
        },
        "status": status,
    })
}

fn reasons(events: &[(String, String, String)]) -> Vec<(&str, &str)> {
    events
        .iter()
        .map(|(t, r, _)| (t.as_str(), r.as_str()))
        .collect()
}

#[tokio::test]
async fn new_pool_gets_the_finalizer_first_and_nothing_else() {
    let pool = fixture("minimal.yaml");
    let (mut server, _ctx, task) = start(&pool);
    let exchange = server.expect(Method::PATCH, &pool_path(NS, "relay")).await;
    assert_eq!(
        exchange.content_type.as_deref(),
        Some("application/json-patch+json")
    );
    assert_eq!(
        exchange.body,
        json!([
            {"op": "test", "path": "/metadata/finalizers", "value": null},
            {"op": "add", "path": "/metadata/finalizers", "value": ["smtpfleet.io/cleanup"]},
        ])
    );
    let mut answer = json_of(&pool);
    answer["metadata"]["finalizers"] = json!(["smtpfleet.io/cleanup"]);
    exchange.ok(&answer);
    // The patch triggers a new reconciliation through the watch; this one is done.
    assert_eq!(finish(task).await.unwrap(), Action::await_change());
    server.expect_silence(Duration::from_millis(100)).await;
}

#[tokio::test]
async fn first_reconcile_creates_every_child_and_reports_progress() {
    let pool = fixture("single.yaml");
    let (mut server, _ctx, task) = start(&pool);
    serve_secret(
        &mut server,
        NS,
        "smtp-tls",
        Some(tls_secret(NS, "smtp-tls")),
    )
    .await;
    serve_mail_domains(&mut server, NS, "relay", vec![]).await;
    serve_statefulsets(&mut server, NS, "relay", vec![]).await;
    let applied = serve_children(
        &mut server,
        NS,
        "relay",
        &["default"],
        true,
        &json!({"replicas": 0}),
    )
    .await;

    let kinds: Vec<&str> = applied
        .before
        .iter()
        .map(|b| b["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        [
            "ServiceAccount",
            "Role",
            "RoleBinding",
            "ConfigMap",
            "Service",
            "Service"
        ]
    );
    assert_eq!(applied.before[1]["rules"][0]["resources"][0], "leases");
    assert_eq!(applied.before[2]["subjects"][0]["name"], "relay");
    let (name, sts) = &applied.statefulsets[0];
    assert_eq!(name, "relay-default");
    assert_eq!(sts["apiVersion"], "apps/v1");
    assert_eq!(sts["spec"]["replicas"], 3);
    assert_eq!(sts["spec"]["serviceName"], "relay-peers");
    assert_eq!(sts["metadata"]["ownerReferences"][0]["controller"], true);
    assert!(sts.get("status").is_none(), "apply never writes status");
    assert_eq!(applied.pdb["spec"]["maxUnavailable"], 1);

    let patch = serve_status_patch(&mut server, NS, &json_of(&pool)).await;
    assert_eq!(patch["status"]["observedGeneration"], 1);
    assert_eq!(patch["status"]["replicas"], 3);
    assert_eq!(patch["status"]["readyReplicas"], 0);
    assert_eq!(
        patch["status"]["dataCentres"],
        json!([{"name": "default", "replicas": 3, "ready": 0}])
    );
    assert_eq!(condition(&patch, "Ready")["status"], "False");
    assert_eq!(condition(&patch, "Ready")["reason"], "RollingOut");
    assert_eq!(condition(&patch, "Progressing")["status"], "True");
    assert_eq!(condition(&patch, "Available")["status"], "False");
    assert_eq!(condition(&patch, "Degraded")["status"], "False");
    assert_eq!(condition(&patch, "Degraded")["observedGeneration"], 1);
    assert!(condition(&patch, "Ready")["lastTransitionTime"].is_string());

    let events = serve_events(&mut server, NS, 8).await;
    assert_eq!(
        reasons(&events),
        [
            ("Normal", "Created"),
            ("Normal", "Created"),
            ("Normal", "Created"),
            ("Normal", "Created"),
            ("Normal", "Created"),
            ("Normal", "Created"),
            ("Normal", "DataCentreAdded"),
            ("Normal", "Created"),
        ]
    );
    assert!(events[1].2.contains("Role relay-node"), "{}", events[1].2);
    assert!(
        events[2].2.contains("RoleBinding relay-node"),
        "{}",
        events[2].2
    );
    assert!(
        events[3].2.contains("ConfigMap relay-config"),
        "{}",
        events[3].2
    );
    assert!(
        events[6].2.contains("\"default\" with 3 replica(s)"),
        "{}",
        events[6].2
    );
    assert_eq!(finish(task).await.unwrap(), Action::requeue(REQUEUE));
    server.expect_silence(Duration::from_millis(100)).await;
}

#[tokio::test]
async fn replica_change_is_applied_to_the_statefulset_and_announced() {
    let mut pool = fixture("single.yaml");
    pool.spec.replicas = 5;
    pool.metadata.generation = Some(2);
    let (mut server, _ctx, task) = start(&pool);
    serve_secret(
        &mut server,
        NS,
        "smtp-tls",
        Some(tls_secret(NS, "smtp-tls")),
    )
    .await;
    serve_mail_domains(&mut server, NS, "relay", vec![]).await;
    serve_statefulsets(
        &mut server,
        NS,
        "relay",
        vec![existing_sts(&pool, "default", 3, settled_status(3, 3))],
    )
    .await;
    // The StatefulSet controller has not caught up with the new replica count yet.
    let applied = serve_children(
        &mut server,
        NS,
        "relay",
        &["default"],
        false,
        &settled_status(3, 3),
    )
    .await;
    assert_eq!(applied.statefulsets[0].1["spec"]["replicas"], 5);

    let patch = serve_status_patch(&mut server, NS, &json_of(&pool)).await;
    assert_eq!(patch["status"]["observedGeneration"], 2);
    assert_eq!(patch["status"]["replicas"], 5);
    assert_eq!(patch["status"]["readyReplicas"], 3);
    assert_eq!(condition(&patch, "Progressing")["status"], "True");
    assert_eq!(condition(&patch, "Progressing")["observedGeneration"], 2);

    let events = serve_events(&mut server, NS, 1).await;
    assert_eq!(reasons(&events), [("Normal", "Scaled")]);
    assert_eq!(
        events[0].2,
        "Scaled data centre \"default\" from 3 to 5 replica(s)."
    );
    assert_eq!(finish(task).await.unwrap(), Action::requeue(REQUEUE));
}

#[tokio::test]
async fn drift_is_overwritten_with_the_same_desired_content_every_time() {
    let pool = fixture("single.yaml");
    // Someone scaled the StatefulSet down by hand to 1; the pool says 3. (Scaled up by
    // hand, its extra nodes would be drained first: they may hold mail.)
    let drifted = existing_sts(&pool, "default", 1, settled_status(1, 1));

    let (mut server, _ctx, task) = start(&pool);
    serve_secret(
        &mut server,
        NS,
        "smtp-tls",
        Some(tls_secret(NS, "smtp-tls")),
    )
    .await;
    serve_mail_domains(&mut server, NS, "relay", vec![]).await;
    serve_statefulsets(&mut server, NS, "relay", vec![drifted.clone()]).await;
    let first = serve_children(
        &mut server,
        NS,
        "relay",
        &["default"],
        false,
        &settled_status(3, 3),
    )
    .await;
    assert_eq!(first.statefulsets[0].1["spec"]["replicas"], 3);
    let patch = serve_status_patch(&mut server, NS, &json_of(&pool)).await;
    assert_eq!(condition(&patch, "Ready")["status"], "True");
    let events = serve_events(&mut server, NS, 2).await;
    assert_eq!(
        reasons(&events),
        [("Normal", "Scaled"), ("Normal", "AllReplicasReady")]
    );
    assert_eq!(
        events[0].2,
        "Scaled data centre \"default\" from 1 to 3 replica(s)."
    );
    finish(task).await.unwrap();

    // Next reconciliation: the pool now carries the status just written and the
    // StatefulSet matches. Every child is applied again with identical content; the
    // status is unchanged, so it is not written, and there is nothing to announce.
    let mut settled_pool = pool.clone();
    settled_pool.status = Some(serde_json::from_value(patch["status"].clone()).unwrap());
    let (mut server, _ctx, task) = start(&settled_pool);
    serve_secret(
        &mut server,
        NS,
        "smtp-tls",
        Some(tls_secret(NS, "smtp-tls")),
    )
    .await;
    serve_mail_domains(&mut server, NS, "relay", vec![]).await;
    serve_statefulsets(
        &mut server,
        NS,
        "relay",
        vec![existing_sts(&pool, "default", 3, settled_status(3, 3))],
    )
    .await;
    let second = serve_children(
        &mut server,
        NS,
        "relay",
        &["default"],
        false,
        &settled_status(3, 3),
    )
    .await;
    assert_eq!(
        first, second,
        "the desired state does not depend on what was observed"
    );
    assert_eq!(finish(task).await.unwrap(), Action::requeue(REQUEUE));
    server.expect_silence(Duration::from_millis(100)).await;
}

#[tokio::test]
async fn deletion_runs_the_cleanup_and_removes_the_finalizer() {
    let mut pool = fixture("single.yaml");
    pool.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        k8s_openapi::jiff::Timestamp::from_second(1_800_000_000).unwrap(),
    ));
    let (mut server, _ctx, task) = start(&pool);
    // The nodes are asked first (drain, then their queues); this pool has none left.
    serve_secret(&mut server, NS, "relay-admin", None).await;
    server
        .expect(Method::GET, &format!("/api/v1/namespaces/{NS}/pods"))
        .await
        .ok(&list("v1", "PodList", vec![]));
    let events = serve_events(&mut server, NS, 1).await;
    assert_eq!(reasons(&events), [("Normal", "Deleting")]);
    let exchange = server.expect(Method::PATCH, &pool_path(NS, "relay")).await;
    assert_eq!(
        exchange.content_type.as_deref(),
        Some("application/json-patch+json")
    );
    assert_eq!(
        exchange.body,
        json!([
            {"op": "test", "path": "/metadata/finalizers/0", "value": "smtpfleet.io/cleanup"},
            {"op": "remove", "path": "/metadata/finalizers/0"},
        ])
    );
    let mut answer = json_of(&pool);
    answer["metadata"]["finalizers"] = json!([]);
    exchange.ok(&answer);
    assert_eq!(finish(task).await.unwrap(), Action::await_change());
    // Children are left to garbage collection: no deletes.
    server.expect_silence(Duration::from_millis(100)).await;
}

#[tokio::test]
async fn missing_tls_secret_makes_the_pool_degraded_naming_the_secret() {
    let pool = fixture("single.yaml");
    let (mut server, _ctx, task) = start(&pool);
    serve_secret(&mut server, NS, "smtp-tls", None).await;
    serve_mail_domains(&mut server, NS, "relay", vec![]).await;
    serve_statefulsets(
        &mut server,
        NS,
        "relay",
        vec![existing_sts(&pool, "default", 3, settled_status(3, 0))],
    )
    .await;
    // The pool is still reconciled: every child is applied.
    let applied = serve_children(
        &mut server,
        NS,
        "relay",
        &["default"],
        false,
        &settled_status(3, 0),
    )
    .await;
    assert_eq!(applied.statefulsets.len(), 1);
    let patch = serve_status_patch(&mut server, NS, &json_of(&pool)).await;
    let degraded = condition(&patch, "Degraded");
    assert_eq!(degraded["status"], "True");
    assert_eq!(degraded["reason"], "SecretNotFound");
    assert_eq!(
        degraded["message"],
        "Secret \"smtp-tls\" referenced by spec.tls.secretName not found in namespace \"mail\"."
    );
    assert_eq!(condition(&patch, "Ready")["reason"], "SecretNotFound");
    let events = serve_events(&mut server, NS, 1).await;
    assert_eq!(reasons(&events), [("Warning", "SecretNotFound")]);
    assert!(events[0].2.contains("smtp-tls"));
    assert_eq!(finish(task).await.unwrap(), Action::requeue(REQUEUE));
}

#[tokio::test]
async fn a_forced_scale_down_deletes_a_removed_data_centre_at_once() {
    let mut pool = fixture("multi.yaml");
    pool.metadata
        .annotations
        .get_or_insert_with(Default::default)
        .insert("smtpfleet.io/force-scale-down".into(), "true".into());
    let removed = pool.spec.data_centres.remove(1);
    assert_eq!(removed.name, "eu-west-1b");
    let (mut server, _ctx, task) = start(&pool);
    let users = json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "submission-users", "namespace": NS},
        "data": {"users": "YWxpY2U6eA=="},
    });
    serve_secret(&mut server, NS, "submission-users", Some(users)).await;
    serve_mail_domains(&mut server, NS, "outbound", vec![]).await;
    serve_statefulsets(
        &mut server,
        NS,
        "outbound",
        vec![
            existing_sts(&pool, "eu-west-1a", 2, settled_status(2, 2)),
            existing_sts(&pool, "eu-west-1b", 2, settled_status(2, 2)),
            existing_sts(&pool, "on-prem", 1, settled_status(1, 1)),
        ],
    )
    .await;
    let mut applied_sts = Vec::new();
    for path in [
        "/api/v1/namespaces/mail/serviceaccounts/outbound",
        "/apis/rbac.authorization.k8s.io/v1/namespaces/mail/roles/outbound-node",
        "/apis/rbac.authorization.k8s.io/v1/namespaces/mail/rolebindings/outbound-node",
        "/api/v1/namespaces/mail/configmaps/outbound-config",
        "/api/v1/namespaces/mail/services/outbound-peers",
        "/api/v1/namespaces/mail/services/outbound",
    ] {
        serve_apply(&mut server, path, false, None).await;
    }
    for (dc, replicas) in [("eu-west-1a", 2), ("on-prem", 1)] {
        let path = grouped("apps/v1", NS, "statefulsets", &format!("outbound-{dc}"));
        applied_sts.push(
            serve_apply(
                &mut server,
                &path,
                false,
                Some(settled_status(replicas, replicas)),
            )
            .await,
        );
    }
    serve_apply(
        &mut server,
        &grouped("policy/v1", NS, "poddisruptionbudgets", "outbound"),
        false,
        None,
    )
    .await;

    let delete = server
        .expect(
            Method::DELETE,
            &grouped("apps/v1", NS, "statefulsets", "outbound-eu-west-1b"),
        )
        .await;
    assert_eq!(
        delete.body["preconditions"]["uid"],
        "uid-outbound-eu-west-1b"
    );
    let gone = existing_sts(&pool, "eu-west-1b", 2, settled_status(2, 2));
    delete.ok(&gone);

    let patch = serve_status_patch(&mut server, NS, &json_of(&pool)).await;
    let names: Vec<&str> = patch["status"]["dataCentres"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["eu-west-1a", "on-prem"]);
    assert_eq!(condition(&patch, "ScalingDown")["status"], "False");
    let events = serve_events(&mut server, NS, 3).await;
    assert_eq!(
        reasons(&events),
        [
            ("Normal", "DataCentreRemoved"),
            ("Normal", "AllReplicasReady"),
            ("Warning", "ScaleDownForced"),
        ]
    );
    assert!(events[0].2.contains("outbound-eu-west-1b"));
    assert_eq!(finish(task).await.unwrap(), Action::requeue(REQUEUE));
}

#[tokio::test]
/// Removing a data centre drains its nodes first: the highest ordinal is asked to drain
/// and labelled leaving, its StatefulSet is kept at its replicas, and nothing is deleted.
/// (The pods here have no address, so the node is not reached; the next rounds would
/// report it unreachable.)
async fn removed_data_centre_is_drained_before_its_statefulset_goes() {
    let mut pool = fixture("multi.yaml");
    pool.spec.data_centres.remove(1);
    let (client, mut server) = mock_client();
    let mut registry = Registry::with_prefix("smtpfleet_operator");
    let mut ctx = Context::new(client, Arc::new(NoMetrics), settings());
    ctx.pool_metrics = PoolMetrics::register(&mut registry);
    let task = tokio::spawn(reconcile(Arc::new(pool.clone()), Arc::new(ctx)));
    let users = json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "submission-users", "namespace": NS},
        "data": {"users": "YWxpY2U6eA=="},
    });
    serve_secret(&mut server, NS, "submission-users", Some(users)).await;
    serve_mail_domains(&mut server, NS, "outbound", vec![]).await;
    serve_statefulsets(
        &mut server,
        NS,
        "outbound",
        vec![
            existing_sts(&pool, "eu-west-1a", 2, settled_status(2, 2)),
            existing_sts(&pool, "eu-west-1b", 2, settled_status(2, 2)),
            existing_sts(&pool, "on-prem", 1, settled_status(1, 1)),
        ],
    )
    .await;
    serve_secret(&mut server, NS, "outbound-admin", None).await;
    let pods: Vec<Value> = [
        "eu-west-1a-0",
        "eu-west-1a-1",
        "eu-west-1b-0",
        "eu-west-1b-1",
        "on-prem-0",
    ]
    .iter()
    .map(|p| {
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": format!("outbound-{p}"), "namespace": NS},
            "status": {"conditions": [{"type": "Ready", "status": "True"}]},
        })
    })
    .collect();
    server
        .expect(Method::GET, &format!("/api/v1/namespaces/{NS}/pods"))
        .await
        .ok(&list("v1", "PodList", pods));
    let label = server
        .expect(
            Method::PATCH,
            &format!("/api/v1/namespaces/{NS}/pods/outbound-eu-west-1b-1"),
        )
        .await;
    assert_eq!(
        label.body["metadata"]["labels"]["smtpfleet.io/leaving"],
        "true"
    );
    label.ok(
        &json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "outbound-eu-west-1b-1"}}),
    );

    for path in [
        "/api/v1/namespaces/mail/serviceaccounts/outbound",
        "/apis/rbac.authorization.k8s.io/v1/namespaces/mail/roles/outbound-node",
        "/apis/rbac.authorization.k8s.io/v1/namespaces/mail/rolebindings/outbound-node",
        "/api/v1/namespaces/mail/configmaps/outbound-config",
        "/api/v1/namespaces/mail/services/outbound-peers",
        "/api/v1/namespaces/mail/services/outbound",
    ] {
        serve_apply(&mut server, path, false, None).await;
    }
    for (dc, replicas) in [("eu-west-1a", 2), ("on-prem", 1)] {
        let path = grouped("apps/v1", NS, "statefulsets", &format!("outbound-{dc}"));
        serve_apply(
            &mut server,
            &path,
            false,
            Some(settled_status(replicas, replicas)),
        )
        .await;
    }
    serve_apply(
        &mut server,
        &grouped("policy/v1", NS, "poddisruptionbudgets", "outbound"),
        false,
        None,
    )
    .await;
    // The removed data centre keeps its two nodes while the highest drains.
    let kept = server
        .expect(
            Method::PATCH,
            &grouped("apps/v1", NS, "statefulsets", "outbound-eu-west-1b"),
        )
        .await;
    assert_eq!(kept.body["spec"]["replicas"], 2);
    kept.ok(&existing_sts(&pool, "eu-west-1b", 2, settled_status(2, 2)));

    // No DELETE of the StatefulSet: the next request is the status patch.
    let patch = serve_status_patch(&mut server, NS, &json_of(&pool)).await;
    assert_eq!(patch["status"]["scaleDown"]["pod"], "outbound-eu-west-1b-1");
    assert_eq!(patch["status"]["scaleDown"]["phase"], "Draining");
    assert_eq!(patch["status"]["scaleDown"]["ordinal"], 1);
    assert_eq!(condition(&patch, "ScalingDown")["status"], "True");
    assert_eq!(condition(&patch, "ScalingDown")["reason"], "DrainingNode");
    assert_eq!(condition(&patch, "ScaleDownBlocked")["status"], "False");
    let events = serve_events(&mut server, NS, 2).await;
    assert_eq!(
        reasons(&events),
        [("Normal", "AllReplicasReady"), ("Normal", "ScalingDown")]
    );
    assert!(
        events[1].2.contains("outbound-eu-west-1b-1"),
        "{}",
        events[1].2
    );
    assert_eq!(
        finish(task).await.unwrap(),
        Action::requeue(Duration::from_secs(5))
    );
    // The status written is what the per-pool gauges say: the drain and its start.
    let mut page = String::new();
    prometheus_client::encoding::text::encode(&mut page, &registry).unwrap();
    let started = patch["status"]["scaleDown"]["startedAt"]
        .as_str()
        .unwrap()
        .parse::<k8s_openapi::jiff::Timestamp>()
        .unwrap()
        .as_second();
    for line in [
        format!(
            "smtpfleet_operator_scale_down_started_timestamp_seconds{{namespace=\"mail\",pool=\"outbound\",\
             data_centre=\"eu-west-1b\",pod=\"outbound-eu-west-1b-1\",phase=\"draining\"}} {started}"
        ),
        "smtpfleet_operator_pool_condition{namespace=\"mail\",pool=\"outbound\",condition=\"ScalingDown\"} 1"
            .to_owned(),
        "smtpfleet_operator_pool_condition{namespace=\"mail\",pool=\"outbound\",condition=\"ScaleDownBlocked\"} 0"
            .to_owned(),
    ] {
        assert!(page.contains(&format!("{line}\n")), "{line}\n{page}");
    }
}

#[tokio::test]
async fn bound_mail_domains_reach_the_domain_set_not_the_pod_template() {
    let pool = fixture("single.yaml");
    let (mut server, _ctx, task) = start(&pool);
    serve_secret(
        &mut server,
        NS,
        "smtp-tls",
        Some(tls_secret(NS, "smtp-tls")),
    )
    .await;
    let domain = json!({
        "apiVersion": "smtpfleet.io/v1alpha1",
        "kind": "MailDomain",
        "metadata": {"name": "example", "namespace": NS},
        "spec": {"domain": "Example.COM", "relayPoolRef": {"name": "relay"}},
        "status": {
            "dkim": {"selector": "s2026", "publicKey": "MIIB"},
            "conditions": [bound("True")],
        },
    });
    // Claimed by another MailDomain first: the MailDomain controller says it is not bound.
    let contested = json!({
        "apiVersion": "smtpfleet.io/v1alpha1",
        "kind": "MailDomain",
        "metadata": {"name": "contested", "namespace": NS},
        "spec": {"domain": "contested.example", "relayPoolRef": {"name": "relay"}},
        "status": {
            "dkim": {"selector": "s1", "publicKey": "MIIB"},
            "conditions": [bound("False")],
        },
    });
    let foreign = json!({
        "apiVersion": "smtpfleet.io/v1alpha1",
        "kind": "MailDomain",
        "metadata": {"name": "other", "namespace": NS},
        "spec": {"domain": "other.org", "relayPoolRef": {"name": "another-pool"}},
    });
    let exchange = server
        .expect(
            Method::GET,
            &format!("/apis/smtpfleet.io/v1alpha1/namespaces/{NS}/maildomains"),
        )
        .await;
    exchange.ok(&list(
        "smtpfleet.io/v1alpha1",
        "MailDomain",
        vec![domain, contested, foreign],
    ));
    let key = json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "example-dkim-s2026", "namespace": NS,
                     "labels": {"smtpfleet.io/relay-pool": "relay"}},
        "data": {"private.key": "UEVN", "public.key": "UFVC"},
    });
    let set = serve_domain_set(&mut server, NS, "relay", Some(vec![key])).await;
    assert_eq!(set.shards.len(), 1, "one bound domain, one shard");
    let shard = &set.shards[0];
    let name = shard["metadata"]["name"].as_str().unwrap().to_owned();
    assert!(name.starts_with("relay-domains-"), "{name}");
    assert_eq!(shard["metadata"]["ownerReferences"][0]["kind"], "RelayPool");
    assert_eq!(
        shard["data"]["example.com_s2026.key"], "UEVN",
        "the active key is copied"
    );
    let index = String::from_utf8(
        base64::engine::general_purpose::STANDARD
            .decode(shard["data"]["domains.yaml"].as_str().unwrap())
            .unwrap(),
    )
    .unwrap();
    assert!(index.contains("domain: example.com"), "{index}");
    assert!(!index.contains("contested"), "{index}");
    assert!(
        set.index["data"][&name].is_string(),
        "the index lists the shard's digest"
    );
    serve_statefulsets(&mut server, NS, "relay", vec![]).await;
    let applied = serve_children(
        &mut server,
        NS,
        "relay",
        &["default"],
        false,
        &settled_status(3, 3),
    )
    .await;
    let volumes = applied.statefulsets[0].1["spec"]["template"]["spec"]["volumes"].clone();
    assert!(
        volumes
            .as_array()
            .unwrap()
            .iter()
            .all(|v| v.get("projected").is_none()),
        "no per-domain volume: {volumes}"
    );
    serve_status_patch(&mut server, NS, &json_of(&pool)).await;
    serve_events(&mut server, NS, 1).await;
    finish(task).await.unwrap();
}

fn bound(status: &str) -> Value {
    json!({
        "type": "PoolBound",
        "status": status,
        "reason": "Checked",
        "message": "checked",
        "lastTransitionTime": "2026-01-01T00:00:00Z",
    })
}

#[derive(Default)]
struct Recorded {
    started: usize,
    finished: Vec<bool>,
    errors: Vec<&'static str>,
}

#[derive(Default, Clone)]
struct RecordingObserver(Arc<Mutex<Recorded>>);

struct RecordingSpan(Arc<Mutex<Recorded>>);

impl ReconcileSpan for RecordingSpan {
    fn finish(self: Box<Self>, success: bool) {
        self.0.lock().unwrap().finished.push(success);
    }
}

impl ReconcileObserver for RecordingObserver {
    fn start(&self) -> Box<dyn ReconcileSpan> {
        self.0.lock().unwrap().started += 1;
        Box::new(RecordingSpan(self.0.clone()))
    }
    fn error(&self, category: &'static str) {
        self.0.lock().unwrap().errors.push(category);
    }
}

#[tokio::test]
async fn failures_back_off_per_pool_and_are_counted_by_stage() {
    let pool = fixture("single.yaml");
    let (client, mut server) = mock_client();
    let observer = RecordingObserver::default();
    let ctx = Arc::new(Context::new(client, Arc::new(observer.clone()), settings()));
    let pool = Arc::new(pool);

    for (attempt, expected_delay) in [(1, 5), (2, 10)] {
        let task = tokio::spawn(reconcile(pool.clone(), ctx.clone()));
        serve_secret(
            &mut server,
            NS,
            "smtp-tls",
            Some(tls_secret(NS, "smtp-tls")),
        )
        .await;
        serve_mail_domains(&mut server, NS, "relay", vec![]).await;
        serve_statefulsets(&mut server, NS, "relay", vec![]).await;
        for path in [
            "/api/v1/namespaces/mail/serviceaccounts/relay",
            "/apis/rbac.authorization.k8s.io/v1/namespaces/mail/roles/relay-node",
            "/apis/rbac.authorization.k8s.io/v1/namespaces/mail/rolebindings/relay-node",
        ] {
            serve_apply(&mut server, path, false, None).await;
        }
        server
            .expect(
                Method::PATCH,
                "/api/v1/namespaces/mail/configmaps/relay-config",
            )
            .await
            .fail(500, "InternalError");
        let err = finish(task).await.expect_err("the apply failed");
        assert_eq!(err.category(), "apply");
        assert!(
            err.to_string().contains("ConfigMap \"relay-config\""),
            "{err}"
        );
        let action = error_policy(pool.clone(), &err, ctx.clone());
        assert_eq!(
            action,
            Action::requeue(Duration::from_secs(expected_delay)),
            "attempt {attempt}"
        );
    }
    // The secret lookup failing is a dereference error.
    let task = tokio::spawn(reconcile(pool.clone(), ctx.clone()));
    server
        .expect(Method::GET, "/api/v1/namespaces/mail/secrets/smtp-tls")
        .await
        .fail(403, "Forbidden");
    let err = finish(task).await.expect_err("forbidden");
    assert_eq!(err.category(), "dereference");
    assert_eq!(
        error_policy(pool.clone(), &err, ctx.clone()),
        Action::requeue(Duration::from_secs(20))
    );

    {
        let recorded = observer.0.lock().unwrap();
        assert_eq!(recorded.started, 3);
        assert_eq!(recorded.finished, [false, false, false]);
        assert_eq!(recorded.errors, ["apply", "apply", "dereference"]);
    }

    // A success resets the backoff.
    let task = tokio::spawn(reconcile(pool.clone(), ctx.clone()));
    serve_secret(
        &mut server,
        NS,
        "smtp-tls",
        Some(tls_secret(NS, "smtp-tls")),
    )
    .await;
    serve_mail_domains(&mut server, NS, "relay", vec![]).await;
    serve_statefulsets(&mut server, NS, "relay", vec![]).await;
    serve_children(
        &mut server,
        NS,
        "relay",
        &["default"],
        false,
        &settled_status(3, 3),
    )
    .await;
    serve_status_patch(&mut server, NS, &json_of(&pool)).await;
    serve_events(&mut server, NS, 1).await;
    finish(task).await.unwrap();
    assert_eq!(ctx.failures.failures("mail/relay"), 0);
    assert_eq!(observer.0.lock().unwrap().finished.last(), Some(&true));
}

#[tokio::test]
async fn a_terminating_namespace_is_not_a_failure() {
    let pool = fixture("single.yaml");
    let (mut server, ctx, task) = start(&pool);
    serve_secret(
        &mut server,
        NS,
        "smtp-tls",
        Some(tls_secret(NS, "smtp-tls")),
    )
    .await;
    serve_mail_domains(&mut server, NS, "relay", vec![]).await;
    serve_statefulsets(&mut server, NS, "relay", vec![]).await;
    server
        .expect(Method::PATCH, "/api/v1/namespaces/mail/serviceaccounts/relay")
        .await
        .respond(
            http::StatusCode::FORBIDDEN,
            &json!({
                "kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 403,
                "reason": "Forbidden",
                "message": "serviceaccounts \"relay\" is forbidden: unable to create new content in namespace mail because it is being terminated",
                "details": {"name": "relay", "kind": "serviceaccounts", "causes": [
                    {"reason": "NamespaceTerminating", "message": "namespace mail is being terminated", "field": "metadata.namespace"}
                ]},
            }),
        );
    assert_eq!(finish(task).await.unwrap(), Action::await_change());
    assert_eq!(ctx.failures.failures("mail/relay"), 0);
    server.expect_silence(Duration::from_millis(100)).await;
}

#[tokio::test]
async fn a_stale_cache_on_adding_the_finalizer_is_retried_at_once() {
    let pool = fixture("minimal.yaml");
    let (client, mut server) = mock_client();
    let observer = RecordingObserver::default();
    let ctx = Arc::new(Context::new(client, Arc::new(observer.clone()), settings()));
    let pool = Arc::new(pool);
    let task = tokio::spawn(reconcile(pool.clone(), ctx.clone()));
    server
        .expect(Method::PATCH, &pool_path(NS, "relay"))
        .await
        .fail(422, "Invalid");
    let err = finish(task).await.expect_err("the test operation failed");
    assert!(err.is_stale_write(), "{err}");
    assert_eq!(
        error_policy(pool.clone(), &err, ctx.clone()),
        Action::requeue(Duration::from_secs(1))
    );
    assert_eq!(ctx.failures.failures("mail/relay"), 0);
    assert!(observer.0.lock().unwrap().errors.is_empty());
}

/// A StatefulSet status mid-roll: the controller caught up with the held template
/// (revision `relay-default-new`), `updated` pods on it.
fn rolling_status(replicas: i32, updated: i32) -> Value {
    json!({
        "observedGeneration": 1,
        "replicas": replicas,
        "readyReplicas": replicas,
        "updatedReplicas": updated,
        "currentRevision": "relay-default-old",
        "updateRevision": "relay-default-new",
    })
}

/// The StatefulSet of single.yaml's data centre with the current template, held at
/// `partition`.
fn held_sts(pool: &RelayPool, partition: i32, updated: i32) -> Value {
    let mut sts = existing_sts(pool, "default", 3, rolling_status(3, updated));
    sts["spec"]["updateStrategy"] =
        json!({"type": "RollingUpdate", "rollingUpdate": {"partition": partition}});
    sts
}

const TOKEN: &str = "admin-token";

/// A node's admin API on `ip`:8080 answering `GET /admin/queue` (and `POST /admin/drain`,
/// with the same report) with ten owned messages and `under` held copies lacking a copy
/// (whatever the shared value is when asked).
async fn fake_node(ip: &str, under: Arc<Mutex<usize>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind((ip, 8080))
        .await
        .expect("bind a loopback address");
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let under = *under.lock().unwrap();
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buf = [0u8; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let text = String::from_utf8_lossy(&request);
                let asked =
                    text.starts_with("GET /admin/queue ") || text.starts_with("POST /admin/drain ");
                let answer = if asked && text.contains(&format!("Authorization: Bearer {TOKEN}")) {
                    let body =
                        json!({"node": "n", "depth": 10, "copies": 20, "underReplicated": under});
                    format!("HTTP/1.0 200 OK\r\ncontent-type: application/json\r\n\r\n{body}")
                } else {
                    "HTTP/1.0 401 Unauthorized\r\n\r\n".to_owned()
                };
                let _ = conn.write_all(answer.as_bytes()).await;
            });
        }
    });
}

/// single.yaml's three pods, ready; those at or above `from` on the new revision; pod
/// `i` at `ips[i]` when given.
fn pool_pods(from: i32, ips: &[Option<&str>]) -> Vec<Value> {
    (0..3)
        .map(|i| {
            let revision = if i >= from {
                "relay-default-new"
            } else {
                "relay-default-old"
            };
            let mut pod = json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": format!("relay-default-{i}"), "namespace": NS,
                             "labels": {"smtpfleet.io/pool": "relay",
                                        "smtpfleet.io/data-centre": "default",
                                        "controller-revision-hash": revision}},
                "status": {"conditions": [{"type": "Ready", "status": "True"}]},
            });
            if let Some(Some(ip)) = ips.get(i as usize) {
                pod["status"]["podIP"] = json!(ip);
            }
            pod
        })
        .collect()
}

/// Serves what the rollout gate reads: the pool's admin token, then its pods.
async fn serve_nodes(server: &mut ApiServer, pods: Vec<Value>) {
    let token = base64::engine::general_purpose::STANDARD.encode(TOKEN);
    let admin = json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "relay-admin", "namespace": NS},
        "data": {"token": token},
    });
    serve_secret(server, NS, "relay-admin", Some(admin)).await;
    server
        .expect(Method::GET, &format!("/api/v1/namespaces/{NS}/pods"))
        .await
        .ok(&list("v1", "PodList", pods));
}

/// The status write of the pass that started a roll is refused as stale (another writer
/// got there first): the pass fails and is retried, but the StatefulSet is changed
/// already, so the roll's start is told all the same. The condition changes wait for
/// the pass whose status lands.
#[tokio::test]
async fn a_pass_whose_status_is_refused_still_tells_what_it_did() {
    let pool = fixture("single.yaml");
    let (mut server, _ctx, task) = start(&pool);
    template_changed(&mut server, &pool).await;
    server
        .expect(Method::PATCH, &format!("{}/status", pool_path(NS, "relay")))
        .await
        .respond(
            http::StatusCode::CONFLICT,
            &json!({
                "kind": "Status", "apiVersion": "v1", "status": "Failure",
                "reason": "Conflict", "code": 409,
                "message": "the object has been modified; please apply your changes to the latest version",
            }),
        );
    let events = serve_events(&mut server, NS, 1).await;
    assert_eq!(reasons(&events), [("Normal", "RollingUpdateStarted")]);
    assert!(finish(task).await.is_err(), "the pass is retried");
}

fn partition_of(applied: &relaypool_support::reconcile::Applied) -> &Value {
    &applied.statefulsets[0].1["spec"]["updateStrategy"]["rollingUpdate"]["partition"]
}

/// A pass over a StatefulSet applied from an older spec (another digest, no partition):
/// the new template is applied with every node held. No pod is read: nothing is
/// released in the pass that changes the template.
async fn template_changed(
    server: &mut ApiServer,
    pool: &RelayPool,
) -> relaypool_support::reconcile::Applied {
    let mut sts = any_sts(pool, "default", 3, settled_status(3, 3));
    sts["metadata"]["annotations"] = json!({ TEMPLATE_HASH_ANNOTATION: "an-older-template" });
    serve_until_statefulsets(server, sts).await;
    let applied = serve_children(
        server,
        NS,
        "relay",
        &["default"],
        false,
        &settled_status(3, 3),
    )
    .await;
    assert_eq!(*partition_of(&applied), 3);
    applied
}

/// The first passes of a reconciliation of single.yaml, up to the StatefulSets list.
async fn serve_until_statefulsets(server: &mut ApiServer, sts: Value) {
    serve_secret(server, NS, "smtp-tls", Some(tls_secret(NS, "smtp-tls"))).await;
    serve_mail_domains(server, NS, "relay", vec![]).await;
    serve_statefulsets(server, NS, "relay", vec![sts]).await;
}

#[tokio::test]
async fn a_template_change_is_applied_with_every_node_held() {
    let pool = fixture("single.yaml");
    let (mut server, _ctx, task) = start(&pool);
    let applied = template_changed(&mut server, &pool).await;
    assert_eq!(
        applied.statefulsets[0].1["metadata"]["annotations"][TEMPLATE_HASH_ANNOTATION],
        template_hash(&pool, "default").unwrap()
    );
    let patch = serve_status_patch(&mut server, NS, &json_of(&pool)).await;
    assert_eq!(condition(&patch, "RollingUpdate")["status"], "True");
    assert_eq!(
        condition(&patch, "RollingUpdate")["reason"],
        "TemplateChanged"
    );
    let events = serve_events(&mut server, NS, 2).await;
    assert_eq!(
        reasons(&events),
        [
            ("Normal", "AllReplicasReady"),
            ("Normal", "RollingUpdateStarted")
        ]
    );
    assert_eq!(
        finish(task).await.unwrap(),
        Action::requeue(Duration::from_secs(5))
    );
}

#[tokio::test]
async fn a_held_roll_releases_one_node_per_pass_and_none_while_under_replicated() {
    let pool = fixture("single.yaml");
    let under = Arc::new(Mutex::new(0));
    let ips = ["127.77.1.1", "127.77.1.2", "127.77.1.3"];
    for ip in ips {
        fake_node(ip, under.clone()).await;
    }
    let ips: Vec<Option<&str>> = ips.iter().copied().map(Some).collect();

    // Every node ready and on the old revision, the queue replicated: the highest
    // ordinal is released.
    let (mut server, _ctx, task) = start(&pool);
    serve_until_statefulsets(&mut server, held_sts(&pool, 3, 0)).await;
    serve_nodes(&mut server, pool_pods(3, &ips)).await;
    let applied = serve_children(
        &mut server,
        NS,
        "relay",
        &["default"],
        false,
        &rolling_status(3, 0),
    )
    .await;
    assert_eq!(*partition_of(&applied), 2);
    let patch = serve_status_patch(&mut server, NS, &json_of(&pool)).await;
    let rolling = condition(&patch, "RollingUpdate");
    assert_eq!(rolling["status"], "True");
    assert_eq!(rolling["reason"], "UpdatingNode");
    assert!(
        rolling["message"]
            .as_str()
            .unwrap()
            .contains("relay-default-2"),
        "{rolling}"
    );
    // Mid-roll the pool is not Ready (its StatefulSet is not rolled out): one Event.
    let events = serve_events(&mut server, NS, 1).await;
    assert_eq!(reasons(&events), [("Normal", "NodeReleased")]);
    assert_eq!(
        finish(task).await.unwrap(),
        Action::requeue(Duration::from_secs(5))
    );

    // Node 2 restarted on the new revision and is ready, but each node holds 4 copies
    // lacking a copy (12 summed over the pool, as status.queue counts them): the
    // partition stays.
    *under.lock().unwrap() = 4;
    let (mut server, _ctx, task) = start(&pool);
    serve_until_statefulsets(&mut server, held_sts(&pool, 2, 1)).await;
    serve_nodes(&mut server, pool_pods(2, &ips)).await;
    let applied = serve_children(
        &mut server,
        NS,
        "relay",
        &["default"],
        false,
        &rolling_status(3, 1),
    )
    .await;
    assert_eq!(*partition_of(&applied), 2);
    let patch = serve_status_patch(&mut server, NS, &json_of(&pool)).await;
    let rolling = condition(&patch, "RollingUpdate");
    assert_eq!(rolling["reason"], "WaitingForReplication");
    assert!(
        rolling["message"].as_str().unwrap().contains("12 held"),
        "{rolling}"
    );
    // Waiting is said by the condition, without an Event each pass.
    finish(task).await.unwrap();
    server.expect_silence(Duration::from_millis(100)).await;

    // Replicated again: the next node.
    *under.lock().unwrap() = 0;
    let (mut server, _ctx, task) = start(&pool);
    serve_until_statefulsets(&mut server, held_sts(&pool, 2, 1)).await;
    serve_nodes(&mut server, pool_pods(2, &ips)).await;
    let applied = serve_children(
        &mut server,
        NS,
        "relay",
        &["default"],
        false,
        &rolling_status(3, 1),
    )
    .await;
    assert_eq!(*partition_of(&applied), 1);
    serve_status_patch(&mut server, NS, &json_of(&pool)).await;
    let events = serve_events(&mut server, NS, 1).await;
    assert!(events[0].2.contains("relay-default-1"), "{}", events[0].2);
    finish(task).await.unwrap();
}

#[tokio::test]
async fn a_node_that_does_not_answer_holds_the_roll() {
    let pool = fixture("single.yaml");
    let (mut server, _ctx, task) = start(&pool);
    serve_until_statefulsets(&mut server, held_sts(&pool, 2, 1)).await;
    // No pod has an address yet: no node answers.
    serve_nodes(&mut server, pool_pods(2, &[])).await;
    let applied = serve_children(
        &mut server,
        NS,
        "relay",
        &["default"],
        false,
        &rolling_status(3, 1),
    )
    .await;
    assert_eq!(*partition_of(&applied), 2);
    let patch = serve_status_patch(&mut server, NS, &json_of(&pool)).await;
    let rolling = condition(&patch, "RollingUpdate");
    assert_eq!(rolling["reason"], "NodeNotAnswering");
    assert!(
        rolling["message"]
            .as_str()
            .unwrap()
            .contains("relay-default-0"),
        "{rolling}"
    );
    finish(task).await.unwrap();
    server.expect_silence(Duration::from_millis(100)).await;
}

#[tokio::test]
async fn the_roll_completes_with_every_partition_back_at_zero() {
    let pool = fixture("single.yaml");
    let (mut server, _ctx, task) = start(&pool);
    serve_until_statefulsets(&mut server, held_sts(&pool, 1, 3)).await;
    serve_nodes(&mut server, pool_pods(0, &[])).await;
    let applied = serve_children(
        &mut server,
        NS,
        "relay",
        &["default"],
        false,
        &rolling_status(3, 3),
    )
    .await;
    assert_eq!(*partition_of(&applied), 0);
    let patch = serve_status_patch(&mut server, NS, &json_of(&pool)).await;
    let rolling = condition(&patch, "RollingUpdate");
    assert_eq!(rolling["status"], "False");
    assert_eq!(rolling["reason"], "RolledOut");
    let events = serve_events(&mut server, NS, 1).await;
    assert_eq!(reasons(&events), [("Normal", "RolledOut")]);
    finish(task).await.unwrap();
}

#[tokio::test]
async fn force_rollout_lets_go_of_held_nodes_without_reading_them() {
    let mut pool = fixture("single.yaml");
    pool.metadata.annotations =
        Some([("smtpfleet.io/force-rollout".to_owned(), "true".to_owned())].into());
    let (mut server, _ctx, task) = start(&pool);
    serve_until_statefulsets(&mut server, held_sts(&pool, 2, 1)).await;
    let applied = serve_children(
        &mut server,
        NS,
        "relay",
        &["default"],
        false,
        &rolling_status(3, 1),
    )
    .await;
    assert_eq!(*partition_of(&applied), 0);
    let patch = serve_status_patch(&mut server, NS, &json_of(&pool)).await;
    let rolling = condition(&patch, "RollingUpdate");
    assert_eq!(rolling["status"], "False");
    assert_eq!(rolling["reason"], "Forced");
    let events = serve_events(&mut server, NS, 1).await;
    assert_eq!(reasons(&events), [("Warning", "RollingUpdateForced")]);
    finish(task).await.unwrap();
}

/// A deleted pool whose nodes hold mail keeps its finalizer: kube-runtime's finalizer
/// helper removes it after any successful clean-up, so the hold must come before it.
#[tokio::test]
async fn a_deleted_pool_with_queued_mail_keeps_its_finalizer() {
    let mut pool = fixture("single.yaml");
    pool.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        k8s_openapi::jiff::Timestamp::from_second(1_800_000_000).unwrap(),
    ));
    let ips = ["127.77.2.1", "127.77.2.2", "127.77.2.3"];
    for ip in ips {
        fake_node(ip, Arc::new(Mutex::new(0))).await;
    }
    let (mut server, _ctx, task) = start(&pool);
    serve_nodes(&mut server, pool_pods(0, &ips.map(Some))).await;
    let events = serve_events(&mut server, NS, 1).await;
    assert_eq!(reasons(&events), [("Warning", "DeletionBlocked")]);
    let patch = server
        .expect(Method::PATCH, &format!("{}/status", pool_path(NS, "relay")))
        .await;
    let blocked = condition(&patch.body, "DeletionBlocked");
    assert_eq!(blocked["status"], "True");
    assert!(
        blocked["message"]
            .as_str()
            .unwrap()
            .starts_with("30 messages are still queued (60 copies"),
        "{blocked}"
    );
    patch.ok(&json_of(&pool));
    assert_eq!(
        finish(task).await.unwrap(),
        Action::requeue(Duration::from_secs(30))
    );
    // No finalizer patch: the pool stays.
    server.expect_silence(Duration::from_millis(100)).await;
}
