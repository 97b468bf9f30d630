//! The whole process runtime: two replicas competing for one Lease in an in-memory API
//! store, probed over real HTTP.

mod runtime_support;

use std::num::NonZeroU32;
use std::pin::Pin;
use std::time::Duration;

use http::StatusCode;
use runtime_support::{FakeLeases, TIMEOUT, eventually, http_get};
use serde_json::json;
use smtpfleet_operator::runtime::cli::ElectionTiming;
use smtpfleet_operator::runtime::leader::{LeaderConfig, now};
use smtpfleet_operator::runtime::{
    Context, ControllerError, DnsSettings, ElectionSettings, RunError, Runtime, RuntimeConfig,
};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};
use tokio_util::sync::CancellationToken;

const NAMESPACE: &str = "ops";
const LEASE: &str = "smtpfleet-operator";

#[derive(Debug, PartialEq)]
enum Event {
    Started(Vec<String>),
    Stopped,
    Dropped,
}

struct DropSignal(UnboundedSender<Event>);

impl Drop for DropSignal {
    fn drop(&mut self) {
        let _ = self.0.send(Event::Dropped);
    }
}

type Controllers = Box<
    dyn FnOnce(Context) -> Pin<Box<dyn Future<Output = Result<(), ControllerError>> + Send>> + Send,
>;

/// Controllers that report their life on `events`, mark the caches synced, record one
/// reconcile, and stop when asked. On stop they check that the Lease is still theirs:
/// the runtime must stop controllers before it releases the Lease.
fn controllers(
    identity: &'static str,
    leases: FakeLeases,
    events: UnboundedSender<Event>,
) -> Controllers {
    Box::new(move |ctx: Context| {
        Box::pin(async move {
            let _guard = DropSignal(events.clone());
            ctx.health.set_ready(true);
            ctx.metrics.reconcile().start("relaypool").success();
            events.send(Event::Started(ctx.namespaces.clone())).unwrap();
            ctx.shutdown.cancelled().await;
            assert_eq!(
                holder(&leases).as_deref(),
                Some(identity),
                "lease released too early"
            );
            events.send(Event::Stopped).unwrap();
            Ok(())
        })
    })
}

fn config(identity: &str, election: bool) -> RuntimeConfig {
    RuntimeConfig {
        http_addr: "127.0.0.1:0".parse().unwrap(),
        namespaces: vec!["mail".into()],
        election: election.then(|| ElectionSettings {
            lease_namespace: NAMESPACE.into(),
            leader: LeaderConfig {
                lease_name: LEASE.into(),
                identity: identity.into(),
                // A minute-long Lease: a standby that takes over within the test's
                // timeout can only have done so because the Lease was released.
                timing: ElectionTiming {
                    lease_duration: Duration::from_secs(60),
                    renew_deadline: Duration::from_secs(40),
                    retry_period: Duration::from_millis(100),
                },
            },
        }),
        dns: DnsSettings {
            nameservers: Vec::new(),
            query_rate: NonZeroU32::new(20).unwrap(),
            verified_interval: Duration::from_secs(600),
            unverified_interval: Duration::from_secs(60),
        },
        node_image: "smtp-node:test".into(),
    }
}

struct Replica {
    addr: std::net::SocketAddr,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), RunError>>,
    events: UnboundedReceiver<Event>,
}

async fn start(leases: &FakeLeases, identity: &'static str, election: bool) -> Replica {
    start_with(leases, identity, election, |events| {
        controllers(identity, leases.clone(), events)
    })
    .await
}

async fn start_with(
    leases: &FakeLeases,
    identity: &'static str,
    election: bool,
    make: impl FnOnce(UnboundedSender<Event>) -> Controllers,
) -> Replica {
    let runtime = Runtime::bind(config(identity, election), leases.client(identity))
        .await
        .unwrap();
    let addr = runtime.http_addr().unwrap();
    let stop = CancellationToken::new();
    let (tx, events) = unbounded_channel();
    let task = tokio::spawn(runtime.run(stop.clone(), make(tx)));
    Replica {
        addr,
        stop,
        task,
        events,
    }
}

async fn next_event(replica: &mut Replica) -> Event {
    tokio::time::timeout(TIMEOUT, replica.events.recv())
        .await
        .expect("timed out waiting for a controller event")
        .expect("controllers' event channel closed")
}

async fn finish(replica: Replica) -> (Result<(), RunError>, UnboundedReceiver<Event>) {
    let result = tokio::time::timeout(TIMEOUT, replica.task)
        .await
        .expect("runtime did not stop")
        .unwrap();
    (result, replica.events)
}

fn holder(leases: &FakeLeases) -> Option<String> {
    leases.holder(NAMESPACE, LEASE)
}

async fn metric_line(addr: std::net::SocketAddr, name: &str) -> String {
    let (status, _, body) = http_get(addr, "/metrics").await;
    assert_eq!(status, StatusCode::OK);
    body.lines()
        .find(|l| l.starts_with(name))
        .unwrap_or_else(|| panic!("no {name} in\n{body}"))
        .to_owned()
}

#[tokio::test]
async fn standby_takes_over_as_soon_as_the_leader_shuts_down() {
    let leases = FakeLeases::new();
    let mut a = start(&leases, "a", true).await;
    assert_eq!(
        next_event(&mut a).await,
        Event::Started(vec!["mail".into()])
    );
    assert_eq!(holder(&leases).as_deref(), Some("a"));
    let (status, _, _) = http_get(a.addr, "/readyz").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        metric_line(a.addr, "smtpfleet_operator_leader ").await,
        "smtpfleet_operator_leader 1"
    );
    assert_eq!(
        metric_line(a.addr, "smtpfleet_operator_reconcile_total").await,
        r#"smtpfleet_operator_reconcile_total{controller="relaypool",result="success"} 1"#
    );

    let mut b = start(&leases, "b", true).await;
    // B polls the Lease a few times and stays a Ready standby without controllers.
    eventually("b polling", || {
        leases.log().iter().filter(|s| s.client == "b").count() >= 3
    })
    .await;
    let (status, _, body) = http_get(b.addr, "/readyz").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        metric_line(b.addr, "smtpfleet_operator_leader ").await,
        "smtpfleet_operator_leader 0"
    );
    assert!(
        b.events.try_recv().is_err(),
        "standby started its controllers"
    );
    assert!(
        leases
            .log()
            .iter()
            .all(|s| s.client != "b" || s.method == http::Method::GET),
        "standby wrote to a valid Lease"
    );

    a.stop.cancel();
    let (result, mut a_events) = finish(a).await;
    result.unwrap();
    assert_eq!(a_events.recv().await, Some(Event::Stopped));
    assert_eq!(a_events.recv().await, Some(Event::Dropped));

    // B takes over long before the minute-long Lease would have expired.
    assert_eq!(
        next_event(&mut b).await,
        Event::Started(vec!["mail".into()])
    );
    let lease = leases.get(NAMESPACE, LEASE).unwrap().spec.unwrap();
    assert_eq!(lease.holder_identity.as_deref(), Some("b"));
    assert_eq!(lease.lease_transitions, Some(1));
    assert_eq!(lease.lease_duration_seconds, Some(60));

    b.stop.cancel();
    let (result, _) = finish(b).await;
    result.unwrap();
    let lease = leases.get(NAMESPACE, LEASE).unwrap().spec.unwrap();
    assert_eq!(lease.holder_identity, None);
    assert_eq!(lease.lease_duration_seconds, Some(1));
}

#[tokio::test]
async fn losing_the_lease_aborts_the_controllers_and_ends_the_run() {
    let leases = FakeLeases::new();
    let mut a = start(&leases, "a", true).await;
    assert_eq!(
        next_event(&mut a).await,
        Event::Started(vec!["mail".into()])
    );

    leases.put(
        NAMESPACE,
        LEASE,
        json!({
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {},
            "spec": {
                "holderIdentity": "intruder",
                "leaseDurationSeconds": 60,
                "renewTime": now().to_string(),
                "leaseTransitions": 1,
            }
        }),
    );

    let (result, mut events) = finish(a).await;
    assert!(
        matches!(result, Err(RunError::LeadershipLost)),
        "{result:?}"
    );
    // Aborted, not asked to stop: no Stopped event.
    assert_eq!(events.recv().await, Some(Event::Dropped));
    assert_eq!(holder(&leases).as_deref(), Some("intruder"));
}

#[tokio::test]
async fn shutdown_while_standing_by_never_starts_controllers() {
    let leases = FakeLeases::new();
    let mut a = start(&leases, "a", true).await;
    assert_eq!(
        next_event(&mut a).await,
        Event::Started(vec!["mail".into()])
    );
    let b = start(&leases, "b", true).await;
    eventually("b polling", || leases.log().iter().any(|s| s.client == "b")).await;

    b.stop.cancel();
    let (result, mut events) = finish(b).await;
    result.unwrap();
    assert_eq!(events.recv().await, None);
    assert_eq!(holder(&leases).as_deref(), Some("a"));

    a.stop.cancel();
    finish(a).await.0.unwrap();
}

#[tokio::test]
async fn without_election_controllers_start_at_once() {
    let leases = FakeLeases::new();
    let gate = CancellationToken::new();
    let ready = gate.clone();
    let mut replica = start_with(&leases, "solo", false, move |events| {
        Box::new(move |ctx: Context| {
            Box::pin(async move {
                events.send(Event::Started(ctx.namespaces.clone())).unwrap();
                ready.cancelled().await;
                ctx.health.set_ready(true);
                ctx.shutdown.cancelled().await;
                events.send(Event::Stopped).unwrap();
                Ok(())
            })
        })
    })
    .await;
    assert_eq!(
        next_event(&mut replica).await,
        Event::Started(vec!["mail".into()])
    );
    let (status, _, _) = http_get(replica.addr, "/readyz").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    gate.cancel();
    let mut ok = false;
    for _ in 0..100 {
        if http_get(replica.addr, "/readyz").await.0 == StatusCode::OK {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(ok, "never became ready");
    assert_eq!(
        metric_line(replica.addr, "smtpfleet_operator_leader ").await,
        "smtpfleet_operator_leader 1"
    );

    replica.stop.cancel();
    let (result, mut events) = finish(replica).await;
    result.unwrap();
    assert_eq!(events.recv().await, Some(Event::Stopped));
    assert!(leases.log().is_empty(), "no Lease traffic without election");
}

#[tokio::test]
async fn controllers_ending_on_their_own_end_the_run() {
    let leases = FakeLeases::new();
    let exited = start_with(&leases, "solo", false, |_| {
        Box::new(|_ctx: Context| Box::pin(async { Ok(()) }))
    })
    .await;
    let addr = exited.addr;
    let (result, _) = finish(exited).await;
    assert!(
        matches!(result, Err(RunError::ControllersExited)),
        "{result:?}"
    );
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "HTTP still served after the run ended"
    );

    let failed = start_with(&leases, "a", true, |_| {
        Box::new(|_ctx: Context| {
            Box::pin(async { Err::<(), ControllerError>("watch failed".into()) })
        })
    })
    .await;
    let (result, _) = finish(failed).await;
    match result {
        Err(RunError::Controllers(err)) => assert_eq!(err.to_string(), "watch failed"),
        other => panic!("unexpected {other:?}"),
    }
    // The failed leader still hands the Lease back.
    assert_eq!(holder(&leases), None);
}
