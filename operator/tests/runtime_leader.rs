//! Leader election against a scripted API server (tower-test): each test asserts the
//! exact requests the elector makes and answers them as the API server would.

use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::client::Body;
use kube::{Api, Client};
use serde_json::{Value, json};
use smtpfleet_operator::runtime::cli::ElectionTiming;
use smtpfleet_operator::runtime::leader::{
    ElectionStatus, LeaderConfig, LeaderElector, RoundOutcome, now,
};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tower_test::mock::{Handle, pair};

const TIMEOUT: Duration = Duration::from_secs(10);
const COLLECTION: &str = "/apis/coordination.k8s.io/v1/namespaces/ops/leases";
const OBJECT: &str = "/apis/coordination.k8s.io/v1/namespaces/ops/leases/smtpfleet-operator";

type ApiHandle = Handle<Request<Body>, Response<Body>>;

fn timing() -> ElectionTiming {
    ElectionTiming {
        lease_duration: Duration::from_secs(15),
        renew_deadline: Duration::from_secs(10),
        retry_period: Duration::from_secs(2),
    }
}

fn elector_with(timing: ElectionTiming) -> (LeaderElector, ApiHandle) {
    let (service, handle) = pair::<Request<Body>, Response<Body>>();
    let api = Api::<Lease>::namespaced(Client::new(service, "default"), "ops");
    let config = LeaderConfig {
        lease_name: "smtpfleet-operator".into(),
        identity: "me".into(),
        timing,
    };
    (LeaderElector::new(api, config), handle)
}

fn elector() -> (LeaderElector, ApiHandle) {
    elector_with(timing())
}

/// Waits for the next request, checks method and path, and returns its JSON body
/// (Null when empty) with the means to answer.
async fn expect(
    handle: &mut ApiHandle,
    method: Method,
    path: &str,
) -> (Value, tower_test::mock::SendResponse<Response<Body>>) {
    let (request, reply) = tokio::time::timeout(TIMEOUT, handle.next_request())
        .await
        .expect("timed out waiting for a request")
        .expect("client dropped before the expected request");
    assert_eq!(
        request.method(),
        method,
        "method of request to {}",
        request.uri()
    );
    assert_eq!(request.uri().path(), path);
    let body = request.into_body().collect_bytes().await.unwrap();
    let json = if body.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&body).unwrap()
    };
    (json, reply)
}

fn respond(reply: tower_test::mock::SendResponse<Response<Body>>, code: u16, body: Value) {
    let mut response = Response::new(Body::from(body.to_string().into_bytes()));
    *response.status_mut() = StatusCode::from_u16(code).unwrap();
    reply.send_response(response);
}

fn failure(code: u16, reason: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": code,
           "reason": reason, "message": reason})
}

fn at(offset_seconds: i64) -> String {
    (now() + SignedDuration::from_secs(offset_seconds)).to_string()
}

fn lease(holder: &str, renewed: &str, transitions: i32, version: &str) -> Value {
    json!({
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": "smtpfleet-operator", "namespace": "ops", "resourceVersion": version},
        "spec": {
            "holderIdentity": holder,
            "leaseDurationSeconds": 15,
            "acquireTime": at(-3600),
            "renewTime": renewed,
            "leaseTransitions": transitions,
        }
    })
}

/// Echoes a written Lease back with a new resourceVersion, as the API server does.
fn stored(mut written: Value, version: &str) -> Value {
    written["metadata"]["resourceVersion"] = json!(version);
    written
}

fn time(value: &Value) -> Timestamp {
    value
        .as_str()
        .unwrap_or_else(|| panic!("not a time: {value}"))
        .parse()
        .unwrap()
}

fn assert_recent(value: &Value) {
    let age = now().duration_since(time(value));
    assert!(
        age.abs() < SignedDuration::from_secs(5),
        "{value} is not now"
    );
}

/// No request follows: once the elector is dropped, the mock's queue must be empty.
async fn assert_no_more_requests(mut handle: ApiHandle, elector: LeaderElector) {
    drop(elector);
    let next = tokio::time::timeout(TIMEOUT, handle.next_request()).await;
    assert!(matches!(next, Ok(None)), "unexpected request");
}

async fn round(elector: &mut LeaderElector) -> RoundOutcome {
    tokio::time::timeout(TIMEOUT, elector.try_acquire_or_renew())
        .await
        .expect("round timed out")
        .unwrap_or(RoundOutcome::Failed)
}

fn spawn_round(mut elector: LeaderElector) -> JoinHandle<(LeaderElector, RoundOutcome)> {
    tokio::spawn(async move {
        let outcome = round(&mut elector).await;
        (elector, outcome)
    })
}

#[tokio::test]
async fn creates_the_lease_when_absent() {
    let (elector, mut api) = elector();
    let task = spawn_round(elector);

    let (_, reply) = expect(&mut api, Method::GET, OBJECT).await;
    respond(reply, 404, failure(404, "NotFound"));
    let (body, reply) = expect(&mut api, Method::POST, COLLECTION).await;
    assert_eq!(body["metadata"]["name"], "smtpfleet-operator");
    assert_eq!(body["spec"]["holderIdentity"], "me");
    assert_eq!(body["spec"]["leaseDurationSeconds"], 15);
    assert_eq!(body["spec"]["leaseTransitions"], 0);
    assert_recent(&body["spec"]["renewTime"]);
    assert_eq!(body["spec"]["acquireTime"], body["spec"]["renewTime"]);
    respond(reply, 201, stored(body, "1"));

    let (elector, outcome) = task.await.unwrap();
    assert_eq!(outcome, RoundOutcome::Holding);
    assert!(elector.is_leading());
    assert_no_more_requests(api, elector).await;
}

#[tokio::test]
async fn takes_over_an_expired_lease() {
    let (elector, mut api) = elector();
    let task = spawn_round(elector);

    let (_, reply) = expect(&mut api, Method::GET, OBJECT).await;
    respond(reply, 200, lease("other", &at(-60), 2, "41"));
    let (body, reply) = expect(&mut api, Method::PUT, OBJECT).await;
    assert_eq!(body["metadata"]["resourceVersion"], "41");
    assert_eq!(body["spec"]["holderIdentity"], "me");
    assert_eq!(body["spec"]["leaseTransitions"], 3);
    assert_recent(&body["spec"]["renewTime"]);
    assert_recent(&body["spec"]["acquireTime"]);
    respond(reply, 200, stored(body, "42"));

    let (elector, outcome) = task.await.unwrap();
    assert_eq!(outcome, RoundOutcome::Holding);
    assert!(elector.is_leading());
    assert_no_more_requests(api, elector).await;
}

#[tokio::test]
async fn takes_over_a_lease_object_without_spec_by_updating_it() {
    let (elector, mut api) = elector();
    let task = spawn_round(elector);

    let (_, reply) = expect(&mut api, Method::GET, OBJECT).await;
    respond(
        reply,
        200,
        json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
               "metadata": {"name": "smtpfleet-operator", "namespace": "ops", "resourceVersion": "3"}}),
    );
    let (body, reply) = expect(&mut api, Method::PUT, OBJECT).await;
    assert_eq!(body["metadata"]["resourceVersion"], "3");
    assert_eq!(body["spec"]["holderIdentity"], "me");
    assert_eq!(body["spec"]["leaseTransitions"], 1);
    respond(reply, 200, stored(body, "4"));

    let (elector, outcome) = task.await.unwrap();
    assert_eq!(outcome, RoundOutcome::Holding);
    assert_no_more_requests(api, elector).await;
}

#[tokio::test]
async fn waits_while_another_replica_holds_the_lease() {
    let (elector, mut api) = elector();
    let task = spawn_round(elector);

    let (_, reply) = expect(&mut api, Method::GET, OBJECT).await;
    respond(reply, 200, lease("other", &at(-5), 2, "41"));

    let (elector, outcome) = task.await.unwrap();
    assert_eq!(outcome, RoundOutcome::Waiting);
    assert!(!elector.is_leading());
    assert_no_more_requests(api, elector).await;
}

#[tokio::test]
async fn renews_its_own_lease() {
    let (elector, mut api) = elector();
    let task = spawn_round(elector);

    let held = lease("me", &at(-5), 4, "7");
    let (_, reply) = expect(&mut api, Method::GET, OBJECT).await;
    respond(reply, 200, held.clone());
    let (body, reply) = expect(&mut api, Method::PUT, OBJECT).await;
    assert_eq!(body["metadata"]["resourceVersion"], "7");
    assert_eq!(body["spec"]["holderIdentity"], "me");
    assert_eq!(body["spec"]["leaseTransitions"], 4);
    assert_eq!(
        time(&body["spec"]["acquireTime"]),
        time(&held["spec"]["acquireTime"])
    );
    assert!(time(&body["spec"]["renewTime"]) > time(&held["spec"]["renewTime"]));
    assert_recent(&body["spec"]["renewTime"]);
    respond(reply, 200, stored(body, "8"));

    let (elector, outcome) = task.await.unwrap();
    assert_eq!(outcome, RoundOutcome::Holding);
    assert!(elector.is_leading());
    assert_no_more_requests(api, elector).await;
}

#[tokio::test]
async fn losing_a_takeover_race_rereads_and_waits() {
    let (elector, mut api) = elector();
    let task = spawn_round(elector);

    let (_, reply) = expect(&mut api, Method::GET, OBJECT).await;
    respond(reply, 200, lease("old", &at(-60), 1, "10"));
    let (body, reply) = expect(&mut api, Method::PUT, OBJECT).await;
    assert_eq!(body["metadata"]["resourceVersion"], "10");
    respond(reply, 409, failure(409, "Conflict"));
    let (_, reply) = expect(&mut api, Method::GET, OBJECT).await;
    respond(reply, 200, lease("faster", &at(0), 2, "11"));

    let (elector, outcome) = task.await.unwrap();
    assert_eq!(outcome, RoundOutcome::Waiting);
    assert!(!elector.is_leading());
    assert_no_more_requests(api, elector).await;
}

#[tokio::test]
async fn losing_a_creation_race_rereads_and_waits() {
    let (elector, mut api) = elector();
    let task = spawn_round(elector);

    let (_, reply) = expect(&mut api, Method::GET, OBJECT).await;
    respond(reply, 404, failure(404, "NotFound"));
    let (_, reply) = expect(&mut api, Method::POST, COLLECTION).await;
    respond(reply, 409, failure(409, "AlreadyExists"));
    let (_, reply) = expect(&mut api, Method::GET, OBJECT).await;
    respond(reply, 200, lease("faster", &at(0), 0, "3"));

    let (elector, outcome) = task.await.unwrap();
    assert_eq!(outcome, RoundOutcome::Waiting);
    assert_no_more_requests(api, elector).await;
}

#[tokio::test]
async fn renewal_conflict_on_a_lease_still_mine_is_retried_with_the_new_version() {
    let (elector, mut api) = elector();
    let task = spawn_round(elector);

    let (_, reply) = expect(&mut api, Method::GET, OBJECT).await;
    respond(reply, 200, lease("me", &at(-2), 0, "20"));
    let (_, reply) = expect(&mut api, Method::PUT, OBJECT).await;
    respond(reply, 409, failure(409, "Conflict"));
    // Someone touched the object (say, a label) without taking the Lease.
    let (_, reply) = expect(&mut api, Method::GET, OBJECT).await;
    respond(reply, 200, lease("me", &at(-2), 0, "21"));
    let (body, reply) = expect(&mut api, Method::PUT, OBJECT).await;
    assert_eq!(body["metadata"]["resourceVersion"], "21");
    respond(reply, 200, stored(body, "22"));

    let (elector, outcome) = task.await.unwrap();
    assert_eq!(outcome, RoundOutcome::Holding);
    assert_no_more_requests(api, elector).await;
}

#[tokio::test]
async fn api_errors_fail_the_round_without_leading() {
    let (elector, mut api) = elector();
    let task = tokio::spawn(async move {
        let mut elector = elector;
        let result = tokio::time::timeout(TIMEOUT, elector.try_acquire_or_renew())
            .await
            .expect("round timed out");
        (elector, result.is_err())
    });
    let (_, reply) = expect(&mut api, Method::GET, OBJECT).await;
    respond(reply, 403, failure(403, "Forbidden"));

    let (elector, failed) = task.await.unwrap();
    assert!(failed);
    assert!(!elector.is_leading());
    assert_no_more_requests(api, elector).await;
}

#[tokio::test]
async fn release_clears_the_holder_and_shortens_the_lease() {
    let (mut elector, mut api) = elector();
    let script = tokio::spawn(async move {
        let (_, reply) = expect(&mut api, Method::GET, OBJECT).await;
        respond(reply, 404, failure(404, "NotFound"));
        let (body, reply) = expect(&mut api, Method::POST, COLLECTION).await;
        respond(reply, 201, stored(body, "5"));
        let (body, reply) = expect(&mut api, Method::PUT, OBJECT).await;
        assert_eq!(body["metadata"]["resourceVersion"], "5");
        assert!(
            body["spec"]
                .get("holderIdentity")
                .is_none_or(Value::is_null)
        );
        assert_eq!(body["spec"]["leaseDurationSeconds"], 1);
        assert_eq!(body["spec"]["leaseTransitions"], 0);
        assert_recent(&body["spec"]["renewTime"]);
        respond(reply, 200, stored(body, "6"));
        api
    });
    assert_eq!(round(&mut elector).await, RoundOutcome::Holding);
    tokio::time::timeout(TIMEOUT, elector.release())
        .await
        .unwrap()
        .unwrap();
    assert!(!elector.is_leading());
    let api = script.await.unwrap();
    assert_no_more_requests(api, elector).await;
}

#[tokio::test]
async fn standby_release_writes_nothing() {
    let (mut elector, mut api) = elector();
    let script = tokio::spawn(async move {
        let (_, reply) = expect(&mut api, Method::GET, OBJECT).await;
        respond(reply, 200, lease("other", &at(0), 0, "9"));
        api
    });
    assert_eq!(round(&mut elector).await, RoundOutcome::Waiting);
    tokio::time::timeout(TIMEOUT, elector.release())
        .await
        .unwrap()
        .unwrap();
    let api = script.await.unwrap();
    assert_no_more_requests(api, elector).await;
}

#[tokio::test]
async fn run_loop_publishes_leadership_and_releases_on_shutdown() {
    let (elector, mut api) = elector_with(ElectionTiming {
        lease_duration: Duration::from_secs(30),
        renew_deadline: Duration::from_secs(20),
        // Long enough that no renewal falls between acquiring and the shutdown.
        retry_period: Duration::from_secs(10),
    });
    let (status_tx, mut status) = watch::channel(ElectionStatus::default());
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(elector.run(status_tx, shutdown.clone()));

    let (_, reply) = expect(&mut api, Method::GET, OBJECT).await;
    respond(reply, 404, failure(404, "NotFound"));
    let (body, reply) = expect(&mut api, Method::POST, COLLECTION).await;
    respond(reply, 201, stored(body, "1"));
    tokio::time::timeout(TIMEOUT, status.wait_for(|s| s.leading && s.healthy))
        .await
        .expect("never published leadership")
        .unwrap();

    shutdown.cancel();
    let (body, reply) = expect(&mut api, Method::PUT, OBJECT).await;
    assert!(
        body["spec"]
            .get("holderIdentity")
            .is_none_or(Value::is_null)
    );
    respond(reply, 200, stored(body, "2"));
    tokio::time::timeout(TIMEOUT, running)
        .await
        .expect("run did not stop")
        .unwrap();
    assert!(!status.borrow().leading);
    let next = tokio::time::timeout(TIMEOUT, api.next_request()).await;
    assert!(matches!(next, Ok(None)), "unexpected request after stop");
}

#[tokio::test]
async fn run_loop_reports_an_unreachable_api_as_unhealthy() {
    let (elector, mut api) = elector_with(ElectionTiming {
        lease_duration: Duration::from_secs(3),
        renew_deadline: Duration::from_secs(2),
        retry_period: Duration::from_millis(100),
    });
    let (status_tx, mut status) = watch::channel(ElectionStatus {
        leading: false,
        healthy: true,
    });
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(elector.run(status_tx, shutdown.clone()));

    let (_, reply) = expect(&mut api, Method::GET, OBJECT).await;
    respond(reply, 500, failure(500, "InternalError"));
    tokio::time::timeout(TIMEOUT, status.wait_for(|s| !s.healthy))
        .await
        .expect("never reported the failure")
        .unwrap();
    // The loop keeps trying.
    let (_, reply) = expect(&mut api, Method::GET, OBJECT).await;
    respond(reply, 200, lease("other", &at(0), 0, "1"));
    tokio::time::timeout(TIMEOUT, status.wait_for(|s| s.healthy && !s.leading))
        .await
        .expect("never recovered")
        .unwrap();

    shutdown.cancel();
    // A request may be in flight when the shutdown lands; answer whatever comes.
    let drain = tokio::spawn(async move {
        while let Some((_, reply)) = api.next_request().await {
            respond(reply, 200, lease("other", &at(0), 0, "2"));
        }
    });
    tokio::time::timeout(TIMEOUT, running)
        .await
        .expect("run did not stop")
        .unwrap();
    tokio::time::timeout(TIMEOUT, drain).await.unwrap().unwrap();
}

#[tokio::test]
async fn a_dead_election_loop_reports_leadership_lost() {
    let (elector, mut api) = elector();
    let (status_tx, mut status) = watch::channel(ElectionStatus::default());
    let running = tokio::spawn(elector.run(status_tx, CancellationToken::new()));

    let (_, reply) = expect(&mut api, Method::GET, OBJECT).await;
    respond(reply, 404, failure(404, "NotFound"));
    let (body, reply) = expect(&mut api, Method::POST, COLLECTION).await;
    respond(reply, 201, stored(body, "1"));
    tokio::time::timeout(TIMEOUT, status.wait_for(|s| s.leading))
        .await
        .expect("never published leadership")
        .unwrap();

    // Nobody renews once the loop is gone (here: aborted; a panic unwinds the same way).
    running.abort();
    tokio::time::timeout(TIMEOUT, status.wait_for(|s| !s.leading))
        .await
        .expect("a dead loop still reports leadership")
        .unwrap();
}
