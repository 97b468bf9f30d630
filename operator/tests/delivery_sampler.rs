//! The delivery sampler against a mock Kubernetes API server (tower-test) and nodes that
//! answer `GET /admin/delivery` on real sockets: counters sampled over rounds, a node
//! restart, `status.delivery` and `DeliveryHealthy` written under the sampler's own field
//! manager, and the Events of the condition's transitions.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::{Arc, Mutex};

use http::{Method, Request, Response, StatusCode};
use kube::client::Body;
use serde_json::{Value, json};
use smtp_node::outbound::deliverability::{DeliveryReport, DomainCounts, RefusalCount};
use smtpfleet_operator::delivery::{FIELD_MANAGER, Sampler, observe};
use smtpfleet_operator::queue::PoolNode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const NS: &str = "mail";
const POOL: &str = "outbound";
const TOKEN: &str = "sampler-token";

/// One request the sampler made.
#[derive(Debug, Clone)]
struct Recorded {
    method: Method,
    path: String,
    query: String,
    body: Value,
}

#[derive(Default)]
struct ApiState {
    maildomain: Value,
    requests: Vec<Recorded>,
}

type Shared = Arc<Mutex<ApiState>>;

fn respond(code: StatusCode, v: &Value) -> Response<Body> {
    let mut r = Response::new(Body::from(serde_json::to_vec(v).expect("json")));
    *r.status_mut() = code;
    r
}

async fn answer(state: &Shared, req: Request<Body>) -> Response<Body> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or_default().to_string();
    let bytes = req.into_body().collect_bytes().await.expect("body");
    let body: Value = serde_json::from_slice(&bytes).unwrap_or_default();
    let mut s = state.lock().expect("state");
    s.requests.push(Recorded {
        method: method.clone(),
        path: path.clone(),
        query,
        body: body.clone(),
    });
    let md_path = format!("/apis/smtpfleet.io/v1alpha1/namespaces/{NS}/maildomains");
    match method {
        Method::GET if path == md_path => respond(
            StatusCode::OK,
            &json!({"apiVersion": "v1", "kind": "MailDomainList",
                    "metadata": {"resourceVersion": "1"}, "items": [s.maildomain.clone()]}),
        ),
        Method::PATCH if path == format!("{md_path}/shop/status") => {
            // Server-side apply of this manager's fields: the delivery part and the one
            // condition it owns.
            let status = &body["status"];
            s.maildomain["status"]["delivery"] = status["delivery"].clone();
            let mut conditions: Vec<Value> = s.maildomain["status"]["conditions"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            for c in status["conditions"].as_array().cloned().unwrap_or_default() {
                conditions.retain(|old| old["type"] != c["type"]);
                conditions.push(c);
            }
            s.maildomain["status"]["conditions"] = json!(conditions);
            let v = s.maildomain.clone();
            respond(StatusCode::OK, &v)
        }
        Method::POST if path == format!("/apis/events.k8s.io/v1/namespaces/{NS}/events") => {
            respond(StatusCode::CREATED, &body)
        }
        _ => respond(
            StatusCode::NOT_FOUND,
            &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                    "message": "not found", "reason": "NotFound", "code": 404}),
        ),
    }
}

fn mock_client(state: Shared) -> kube::Client {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    tokio::spawn(async move {
        let mut handle = pin!(handle);
        while let Some((req, send)) = handle.next_request().await {
            send.send_response(answer(&state, req).await);
        }
    });
    kube::Client::new(service, "default")
}

/// A node's admin API answering `GET /admin/delivery` with whatever `report` holds, to
/// callers with the token.
async fn fake_node(report: Arc<Mutex<DeliveryReport>>) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let report = report.clone();
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
                let answer = if !text.starts_with("GET /admin/delivery ")
                    || !text.contains(&format!("Authorization: Bearer {TOKEN}"))
                {
                    "HTTP/1.0 401 Unauthorized\r\n\r\n".to_owned()
                } else {
                    let body =
                        serde_json::to_string(&*report.lock().expect("report")).expect("json");
                    format!("HTTP/1.0 200 OK\r\ncontent-type: application/json\r\n\r\n{body}")
                };
                let _ = conn.write_all(answer.as_bytes()).await;
            });
        }
    });
    addr
}

fn report(since: &str, delivered: u64, bounced: u64) -> DeliveryReport {
    let mut domains = BTreeMap::new();
    domains.insert(
        "shop.test".to_owned(),
        DomainCounts {
            delivered,
            deferred: 0,
            bounced,
        },
    );
    DeliveryReport {
        node: "outbound-east-0".into(),
        since: since.into(),
        domains,
        refusals: if bounced > 0 {
            vec![RefusalCount {
                domain: "shop.test".into(),
                result: "bounced".into(),
                code: "5.1.1".into(),
                count: bounced,
                destinations: vec!["example.net".into()],
            }]
        } else {
            vec![]
        },
    }
}

fn condition(state: &Shared) -> (String, String, String) {
    let s = state.lock().expect("state");
    let c = s.maildomain["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == "DeliveryHealthy"))
        .cloned()
        .unwrap_or_default();
    let text = |k: &str| c[k].as_str().unwrap_or_default().to_owned();
    (text("status"), text("reason"), text("message"))
}

/// Requests of one round, and forgets them.
fn take(state: &Shared) -> Vec<Recorded> {
    std::mem::take(&mut state.lock().expect("state").requests)
}

fn events(requests: &[Recorded]) -> Vec<(String, String, String)> {
    requests
        .iter()
        .filter(|r| r.method == Method::POST)
        .map(|r| {
            let text = |k: &str| r.body[k].as_str().unwrap_or_default().to_owned();
            (text("type"), text("reason"), text("note"))
        })
        .collect()
}

#[tokio::test]
async fn bounces_sampled_from_the_nodes_turn_the_domain_unhealthy_and_back() {
    let state: Shared = Arc::new(Mutex::new(ApiState {
        maildomain: json!({
            "apiVersion": "smtpfleet.io/v1alpha1", "kind": "MailDomain",
            "metadata": {"name": "shop", "namespace": NS, "uid": "u-1", "generation": 3,
                         "resourceVersion": "7"},
            "spec": {"domain": "Shop.test", "relayPoolRef": {"name": POOL},
                     "delivery": {"bounceRateThreshold": 25, "minRecipients": 10}},
            "status": {"conditions": [{"type": "Ready", "status": "True", "reason": "DomainReady",
                        "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z"}]},
        }),
        ..ApiState::default()
    }));
    let client = mock_client(state.clone());
    let counters = Arc::new(Mutex::new(report("2026-01-01T00:00:00.000Z", 100, 0)));
    let nodes = vec![
        PoolNode {
            pod: "outbound-east-0".into(),
            data_centre: "east".into(),
            ready: true,
            admin: Some(fake_node(counters.clone()).await),
            revision: None,
        },
        // Not scheduled yet: no address, counted as missing.
        PoolNode {
            pod: "outbound-east-1".into(),
            data_centre: "east".into(),
            ready: false,
            admin: None,
            revision: None,
        },
    ];
    let sampler = Arc::new(Sampler::default());
    let round = || observe(&client, &sampler, NS, POOL, Some(TOKEN), &nodes);

    // First round: the counters are of unknown age, a baseline only.
    round().await.expect("round 1");
    let requests = take(&state);
    assert!(
        requests[0]
            .query
            .contains("fieldSelector=spec.relayPoolRef.name%3Doutbound"),
        "{:?}",
        requests[0]
    );
    let patch = requests
        .iter()
        .find(|r| r.method == Method::PATCH)
        .expect("a status apply");
    assert!(
        patch
            .query
            .contains(&format!("fieldManager={FIELD_MANAGER}"))
            && patch.query.contains("force=true"),
        "{}",
        patch.query
    );
    assert!(
        patch.path.ends_with("/maildomains/shop/status"),
        "{}",
        patch.path
    );
    let conditions = patch.body["status"]["conditions"]
        .as_array()
        .expect("conditions");
    assert_eq!(conditions.len(), 1, "only the condition this manager owns");
    assert_eq!(condition(&state).1, "AwaitingSamples");
    assert_eq!(patch.body["status"]["delivery"]["lastHour"]["delivered"], 0);
    assert_eq!(patch.body["status"]["delivery"]["nodesReporting"], 1);
    assert_eq!(patch.body["status"]["delivery"]["nodesMissing"], 1);
    assert!(events(&requests).is_empty());

    // 10 delivered and 10 bounced since: 50 % is over the domain's 25 %.
    *counters.lock().expect("counters") = report("2026-01-01T00:00:00.000Z", 110, 10);
    round().await.expect("round 2");
    let requests = take(&state);
    let (status, reason, message) = condition(&state);
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "BounceRateHigh")
    );
    assert!(
        message.contains("50% of recipients bounced")
            && message.contains("5.1.1 bad destination mailbox address")
            && message.contains("example.net"),
        "{message}"
    );
    let delivery = state.lock().expect("state").maildomain["status"]["delivery"].clone();
    assert_eq!(delivery["lastHour"]["delivered"], 10);
    assert_eq!(delivery["lastHour"]["bounced"], 10);
    assert_eq!(delivery["lastHour"]["bounceRatePercent"], 50.0);
    assert_eq!(delivery["topRefusals"][0]["code"], "5.1.1");
    assert_eq!(delivery["topRefusals"][0]["destinations"][0], "example.net");
    let published = events(&requests);
    assert_eq!(published.len(), 1, "{published:?}");
    assert_eq!(
        (published[0].0.as_str(), published[0].1.as_str()),
        ("Warning", "DeliveryUnhealthy")
    );
    // The other conditions are left alone.
    assert!(
        state.lock().expect("state").maildomain["status"]["conditions"]
            .as_array()
            .is_some_and(|cs| cs.iter().any(|c| c["type"] == "Ready"))
    );

    // Nothing new: nothing written, no second Warning.
    round().await.expect("round 3");
    let requests = take(&state);
    assert!(
        requests.iter().all(|r| r.method == Method::GET),
        "{requests:?}"
    );

    // The node restarted and delivered 30 since: counted whole, 10 of 50 is 20 %.
    *counters.lock().expect("counters") = report("2026-01-01T05:00:00.000Z", 30, 0);
    round().await.expect("round 4");
    let requests = take(&state);
    let (status, reason, _) = condition(&state);
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("True", "BounceRateNormal")
    );
    let delivery = state.lock().expect("state").maildomain["status"]["delivery"].clone();
    assert_eq!(delivery["lastHour"]["delivered"], 40);
    assert_eq!(delivery["last24Hours"]["bounced"], 10);
    let published = events(&requests);
    assert_eq!(published.len(), 1, "{published:?}");
    assert_eq!(
        (published[0].0.as_str(), published[0].1.as_str()),
        ("Normal", "DeliveryRecovered")
    );
}
