//! MailDomain reconciliation against a mock Kubernetes API server (tower-test) that keeps
//! Secrets, RelayPools and the MailDomain's status in memory and records every request,
//! with DNS answered by a real Knot server.

mod dnsserver;

use std::collections::BTreeMap;
use std::pin::pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, TimeZone as _, Utc};
use dnsserver::KnotServer;
use http::{Method, Request, Response, StatusCode};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::client::Body;
use serde_json::{Value, json};
use smtpfleet_operator::dkim_keys::KeyAlgorithm;
use smtpfleet_operator::dns::{
    CheckSchedule, DmarcPolicy, DmarcSpec, DnsResolver, QueryLimiter, ResolverSettings, SpfAll,
};
use smtpfleet_operator::maildomain::reconcile::{MailDomainView, reconcile_view};
use smtpfleet_operator::maildomain::settings::{DomainSettings, InvalidSpec, KeySettings};
use smtpfleet_operator::maildomain::{Context, MailDomainRef};

const NS: &str = "mail";
const MD: &str = "shop";
const DOMAIN: &str = "shop.test";
const POOL_HOST: &str = "relay.pool.example.net";

/// One request the operator made.
#[derive(Debug, Clone)]
struct Recorded {
    method: Method,
    path: String,
    query: String,
    body: Option<Value>,
}

#[derive(Default)]
struct ApiState {
    pools: BTreeMap<String, String>,
    secrets: BTreeMap<String, Value>,
    status: Option<Value>,
    requests: Vec<Recorded>,
}

type Shared = Arc<Mutex<ApiState>>;

fn not_found(what: &str) -> Response<Body> {
    let body = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": format!("{what} not found"), "reason": "NotFound", "code": 404
    });
    let mut r = Response::new(Body::from(serde_json::to_vec(&body).unwrap()));
    *r.status_mut() = StatusCode::NOT_FOUND;
    r
}

fn ok(v: &Value) -> Response<Body> {
    Response::new(Body::from(serde_json::to_vec(v).unwrap()))
}

fn labels_match(secret: &Value, selector: &str) -> bool {
    selector.split(',').filter(|s| !s.is_empty()).all(|term| {
        let (k, v) = term.split_once('=').unwrap();
        secret["metadata"]["labels"][k].as_str() == Some(v)
    })
}

fn query_param(query: &str, key: &str) -> Option<String> {
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == key).then(|| {
            v.replace("%2C", ",")
                .replace("%3D", "=")
                .replace("%2F", "/")
        })
    })
}

async fn handle(state: &Shared, req: Request<Body>) -> Response<Body> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or_default().to_string();
    let bytes = req.into_body().collect_bytes().await.unwrap();
    let body: Option<Value> = serde_json::from_slice(&bytes).ok();
    let mut s = state.lock().unwrap();
    s.requests.push(Recorded {
        method: method.clone(),
        path: path.clone(),
        query: query.clone(),
        body: body.clone(),
    });
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match (method, parts.as_slice()) {
        (
            Method::GET,
            [
                "apis",
                "smtpfleet.io",
                "v1alpha1",
                "namespaces",
                ns,
                "relaypools",
                name,
            ],
        ) => match s.pools.get(*name) {
            Some(host) => ok(&json!({
                "apiVersion": "smtpfleet.io/v1alpha1", "kind": "RelayPool",
                "metadata": {"name": name, "namespace": ns},
                "spec": {"hostname": host}
            })),
            None => not_found("relaypool"),
        },
        (Method::GET, ["api", "v1", "namespaces", _, "secrets"]) => {
            let selector = query_param(&query, "labelSelector").unwrap_or_default();
            let items: Vec<Value> = s
                .secrets
                .values()
                .filter(|v| labels_match(v, &selector))
                .cloned()
                .collect();
            ok(&json!({"apiVersion": "v1", "kind": "SecretList",
                       "metadata": {"resourceVersion": "1"}, "items": items}))
        }
        (Method::GET, ["api", "v1", "namespaces", _, "secrets", name]) => {
            match s.secrets.get(*name) {
                Some(v) => ok(v),
                None => not_found("secret"),
            }
        }
        (Method::PATCH, ["api", "v1", "namespaces", _, "secrets", name]) => {
            let mut v = body.unwrap_or_default();
            v["metadata"]["resourceVersion"] = json!("2");
            s.secrets.insert(name.to_string(), v.clone());
            ok(&v)
        }
        (Method::DELETE, ["api", "v1", "namespaces", _, "secrets", name]) => {
            match s.secrets.remove(*name) {
                Some(v) => ok(&v),
                None => not_found("secret"),
            }
        }
        (
            Method::PATCH,
            [
                "apis",
                "smtpfleet.io",
                "v1alpha1",
                "namespaces",
                ns,
                "maildomains",
                name,
                "status",
            ],
        ) => {
            let status = body
                .as_ref()
                .map(|b| b["status"].clone())
                .unwrap_or_default();
            s.status = Some(status.clone());
            ok(&json!({
                "apiVersion": "smtpfleet.io/v1alpha1", "kind": "MailDomain",
                "metadata": {"name": name, "namespace": ns, "uid": "uid-shop"},
                "spec": {}, "status": status
            }))
        }
        (Method::POST, ["apis", "events.k8s.io", "v1", "namespaces", _, "events"]) => {
            ok(&body.unwrap_or_default())
        }
        _ => not_found("route"),
    }
}

/// A mock API server answering through `state` until the client is dropped.
fn mock_client(state: Shared) -> kube::Client {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    tokio::spawn(async move {
        let mut handle = pin!(handle);
        while let Some((req, send)) = handle.next_request().await {
            send.send_response(handle_req(&state, req).await);
        }
    });
    kube::Client::new(service, "default")
}

async fn handle_req(state: &Shared, req: Request<Body>) -> Response<Body> {
    handle(state, req).await
}

fn settings(key: KeySettings) -> DomainSettings {
    DomainSettings {
        domain: DOMAIN.into(),
        relay_pool: "blue".into(),
        key,
        spf_mechanisms: vec![],
        spf_all: SpfAll::default(),
        dmarc: Some(DmarcSpec {
            policy: Some(DmarcPolicy::Reject),
            rua: vec![],
            pct: None,
        }),
        mta_sts: None,
        tls_rpt: None,
    }
}

fn generated(rotate_after: Option<chrono::Duration>) -> KeySettings {
    KeySettings::Generated {
        selector: "mail".into(),
        algorithm: KeyAlgorithm::Ed25519,
        rotate_after,
        overlap: chrono::Duration::hours(1),
    }
}

/// The view the reconciler gets, with the status the mock server holds now.
fn view(state: &Shared, settings: Result<DomainSettings, InvalidSpec>) -> MailDomainView {
    let status = state.lock().unwrap().status.clone().unwrap_or(Value::Null);
    let conditions: Vec<Condition> =
        serde_json::from_value(status["conditions"].clone()).unwrap_or_default();
    MailDomainView {
        object: MailDomainRef {
            name: MD.into(),
            namespace: NS.into(),
            uid: "uid-shop".into(),
        },
        generation: Some(1),
        settings,
        relay_pool: "blue".into(),
        conditions,
        status,
    }
}

struct Harness {
    state: Shared,
    ctx: Arc<Context>,
    now: Arc<Mutex<DateTime<Utc>>>,
}

fn harness(dns: std::net::SocketAddr) -> Harness {
    let state: Shared = Arc::default();
    let client = mock_client(state.clone());
    let resolver = DnsResolver::new(
        &[dns],
        &ResolverSettings {
            timeout: Duration::from_millis(500),
            attempts: 1,
            overall_timeout: Duration::from_secs(3),
        },
        Arc::new(QueryLimiter::new(500)),
    )
    .unwrap();
    let now = Arc::new(Mutex::new(
        Utc.with_ymd_and_hms(2026, 6, 1, 12, 0, 0).unwrap(),
    ));
    let clock_now = now.clone();
    let ctx = Context::new(client, resolver, vec![])
        .with_schedule(CheckSchedule {
            verified_interval: Duration::from_secs(3600),
            unverified_interval: Duration::ZERO,
            jitter: 0.0,
            unverified_max_ttl_wait: Duration::ZERO,
            min_interval: Duration::ZERO,
            max_interval: Duration::from_secs(6 * 3600),
        })
        .with_clock(Arc::new(move || *clock_now.lock().unwrap()));
    Harness {
        state,
        ctx: Arc::new(ctx),
        now,
    }
}

impl Harness {
    fn requests(&self) -> Vec<Recorded> {
        std::mem::take(&mut self.state.lock().unwrap().requests)
    }
    fn status(&self) -> Value {
        self.state
            .lock()
            .unwrap()
            .status
            .clone()
            .unwrap_or(Value::Null)
    }
    fn secret(&self, name: &str) -> Option<Value> {
        self.state.lock().unwrap().secrets.get(name).cloned()
    }
    fn advance(&self, by: chrono::Duration) {
        *self.now.lock().unwrap() += by;
    }
    async fn reconcile(
        &self,
        s: &Result<DomainSettings, InvalidSpec>,
    ) -> kube::runtime::controller::Action {
        let v = view(&self.state, s.clone());
        tokio::time::timeout(Duration::from_secs(30), reconcile_view(&v, &self.ctx))
            .await
            .expect("reconcile timed out")
            .expect("reconcile failed")
    }
}

fn condition<'a>(status: &'a Value, t: &str) -> &'a Value {
    status["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == t)
        .unwrap_or_else(|| panic!("no {t} condition in {status:#}"))
}

fn event_reasons(reqs: &[Recorded]) -> Vec<String> {
    reqs.iter()
        .filter(|r| r.path.ends_with("/events"))
        .map(|r| {
            r.body.as_ref().unwrap()["reason"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect()
}

/// Zone lines publishing every record the status lists.
fn zone_from_status(status: &Value) -> String {
    status["dns"]["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let value = r["expected"].as_str().unwrap();
            let rtype = r["type"].as_str().unwrap();
            let rdata = if rtype == "TXT" {
                smtpfleet_operator::dns::expected::txt_strings(value)
                    .iter()
                    .map(|s| format!("\"{s}\""))
                    .collect::<Vec<_>>()
                    .join(" ")
            } else {
                value.to_string()
            };
            format!("{} 0 IN {rtype} {rdata}", r["name"].as_str().unwrap())
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test]
async fn missing_pool_creates_the_key_and_reports_pool_not_bound() {
    let knot = KnotServer::start(&[(DOMAIN, "")]);
    let h = harness(knot.addr());
    let s = Ok(settings(generated(None)));
    h.reconcile(&s).await;
    let reqs = h.requests();

    // The DKIM key Secret: server-side apply with our field manager, owned by the domain.
    let apply = reqs
        .iter()
        .find(|r| r.method == Method::PATCH && r.path.ends_with("/secrets/shop-dkim-mail"))
        .expect("key Secret applied");
    assert!(
        apply.query.contains("fieldManager=smtpfleet-operator"),
        "{}",
        apply.query
    );
    assert!(apply.query.contains("force=true"), "{}", apply.query);
    let secret = h.secret("shop-dkim-mail").unwrap();
    assert_eq!(secret["type"], "Opaque");
    assert_eq!(secret["metadata"]["labels"]["smtpfleet.io/maildomain"], MD);
    assert_eq!(
        secret["metadata"]["annotations"]["smtpfleet.io/dkim-state"],
        "active"
    );
    assert_eq!(
        secret["metadata"]["annotations"]["smtpfleet.io/dkim-selector"],
        "mail"
    );
    let owner = &secret["metadata"]["ownerReferences"][0];
    assert_eq!(owner["kind"], "MailDomain");
    assert_eq!(owner["uid"], "uid-shop");
    assert_eq!(owner["controller"], true);
    let private = secret["data"]["private.key"].as_str().unwrap();
    use base64::Engine as _;
    let pem = base64::engine::general_purpose::STANDARD
        .decode(private)
        .unwrap();
    assert!(
        String::from_utf8(pem)
            .unwrap()
            .starts_with("-----BEGIN PRIVATE KEY-----")
    );

    // Status: PoolBound False naming the pool; the key is published in status.
    let status = h.status();
    let pb = condition(&status, "PoolBound");
    assert_eq!(pb["status"], "False");
    assert_eq!(pb["reason"], "RelayPoolNotFound");
    assert!(
        pb["message"].as_str().unwrap().contains("RelayPool blue"),
        "{pb}"
    );
    assert_eq!(condition(&status, "Ready")["status"], "False");
    assert_eq!(condition(&status, "DKIMKeyReady")["status"], "True");
    assert_eq!(status["dkim"]["selector"], "mail");
    assert_eq!(status["dkim"]["secretName"], "shop-dkim-mail");
    assert!(status["dns"].is_null());
    assert_eq!(status["observedGeneration"], 1);
    let reasons = event_reasons(&reqs);
    assert!(
        reasons.contains(&"DKIMKeyGenerated".to_string()),
        "{reasons:?}"
    );
    assert!(
        reasons.contains(&"RelayPoolNotFound".to_string()),
        "{reasons:?}"
    );
    // No DNS queries without a pool hostname to check against.
    assert_eq!(knot.queries_answered(), 0);
}

#[tokio::test]
async fn records_are_reported_then_verified_and_quiet_afterwards() {
    let mut knot = KnotServer::start(&[(DOMAIN, "")]);
    let h = harness(knot.addr());
    h.state
        .lock()
        .unwrap()
        .pools
        .insert("blue".into(), POOL_HOST.into());
    let s = Ok(settings(generated(None)));

    h.reconcile(&s).await;
    let reqs = h.requests();
    let status = h.status();
    let records = status["dns"]["records"].as_array().unwrap();
    let kinds: Vec<(&str, &str, &str)> = records
        .iter()
        .map(|r| {
            (
                r["type"].as_str().unwrap(),
                r["name"].as_str().unwrap(),
                r["result"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        kinds,
        vec![
            ("MX", "shop.test.", "Missing"),
            ("TXT", "shop.test.", "Missing"),
            ("TXT", "mail._domainkey.shop.test.", "Missing"),
            ("TXT", "_dmarc.shop.test.", "Missing"),
        ]
    );
    assert_eq!(records[0]["expected"], "10 relay.pool.example.net.");
    let pubkey = status["dkim"]["publicKey"].as_str().unwrap();
    assert_eq!(
        records[2]["expected"],
        format!("v=DKIM1; k=ed25519; p={pubkey}")
    );
    let dns = condition(&status, "DNSVerified");
    assert_eq!(dns["status"], "False");
    assert_eq!(dns["reason"], "RecordsMissing");
    assert!(
        dns["message"]
            .as_str()
            .unwrap()
            .contains("mail._domainkey.shop.test.")
    );
    assert_eq!(condition(&status, "PoolBound")["status"], "True");
    assert!(
        reqs.iter()
            .any(|r| r.path.ends_with("/maildomains/shop/status"))
    );

    // The user publishes exactly what status says.
    knot.set_zone(DOMAIN, &zone_from_status(&status));
    h.reconcile(&s).await;
    let reqs = h.requests();
    let status = h.status();
    assert!(
        status["dns"]["records"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["result"] == "Match"),
        "{status:#}"
    );
    for t in ["DNSVerified", "Ready", "PoolBound", "DKIMKeyReady"] {
        assert_eq!(condition(&status, t)["status"], "True", "{t}");
    }
    assert_eq!(event_reasons(&reqs), vec!["DNSVerifiedTrue", "ReadyTrue"]);
    // The key exists and is unchanged: not written again.
    assert!(
        !reqs
            .iter()
            .any(|r| r.path.contains("/secrets/") && r.method == Method::PATCH)
    );

    // Woken again before the next scheduled check: no DNS queries, no writes, no events.
    let queries = knot.queries_answered();
    let action = h.reconcile(&s).await;
    let reqs = h.requests();
    assert_eq!(knot.queries_answered(), queries);
    assert!(
        reqs.iter().all(|r| r.method == Method::GET),
        "{:?}",
        reqs.iter()
            .map(|r| (&r.method, &r.path))
            .collect::<Vec<_>>()
    );
    let text = format!("{action:?}");
    assert!(text.contains("requeue_after: Some("), "{text}");
}

#[tokio::test]
async fn rotation_through_the_controller() {
    let mut knot = KnotServer::start(&[(DOMAIN, "")]);
    let h = harness(knot.addr());
    h.state
        .lock()
        .unwrap()
        .pools
        .insert("blue".into(), POOL_HOST.into());
    let s = Ok(settings(generated(Some(chrono::Duration::days(30)))));
    h.reconcile(&s).await;
    knot.set_zone(DOMAIN, &zone_from_status(&h.status()));
    h.reconcile(&s).await;
    assert_eq!(condition(&h.status(), "Ready")["status"], "True");
    h.requests();

    // Rotation due: the next key appears, signing stays.
    h.advance(chrono::Duration::days(31));
    h.reconcile(&s).await;
    let reqs = h.requests();
    let next_name = "shop-dkim-mail-20260702";
    let next = h.secret(next_name).expect("next key Secret");
    assert_eq!(
        next["metadata"]["annotations"]["smtpfleet.io/dkim-state"],
        "next"
    );
    let status = h.status();
    assert_eq!(status["dkim"]["selector"], "mail");
    let key_cond = condition(&status, "DKIMKeyReady");
    assert_eq!(key_cond["reason"], "RotationPending");
    assert_eq!(
        condition(&status, "Ready")["status"],
        "True",
        "a pending rotation is not an outage"
    );
    let next_row = status["dns"]["records"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "mail-20260702._domainkey.shop.test.")
        .expect("next key listed");
    assert_eq!(next_row["result"], "Missing");
    assert!(next_row["message"].as_str().unwrap().contains("next key"));
    assert!(event_reasons(&reqs).contains(&"DKIMRotationStarted".to_string()));

    // Still not published: no switch.
    h.advance(chrono::Duration::hours(2));
    h.reconcile(&s).await;
    assert_eq!(h.status()["dkim"]["selector"], "mail");
    h.requests();

    // Published: signing switches; the old key is kept, marked retiring.
    knot.set_zone(DOMAIN, &zone_from_status(&h.status()));
    h.reconcile(&s).await;
    let reqs = h.requests();
    let status = h.status();
    assert_eq!(status["dkim"]["selector"], "mail-20260702");
    assert_eq!(status["dkim"]["secretName"], next_name);
    let old = h.secret("shop-dkim-mail").unwrap();
    assert_eq!(
        old["metadata"]["annotations"]["smtpfleet.io/dkim-state"],
        "retiring"
    );
    assert_eq!(
        h.secret(next_name).unwrap()["metadata"]["annotations"]["smtpfleet.io/dkim-state"],
        "active"
    );
    assert!(event_reasons(&reqs).contains(&"DKIMSigningSwitched".to_string()));
    assert_eq!(condition(&status, "DKIMKeyReady")["reason"], "KeyActive");

    // After the overlap the old key's Secret is deleted.
    h.advance(chrono::Duration::minutes(61));
    h.reconcile(&s).await;
    let reqs = h.requests();
    assert!(
        reqs.iter()
            .any(|r| r.method == Method::DELETE && r.path.ends_with("/secrets/shop-dkim-mail"))
    );
    assert!(h.secret("shop-dkim-mail").is_none());
    assert!(event_reasons(&reqs).contains(&"DKIMKeyRetired".to_string()));
    let status = h.status();
    assert!(
        status["dns"]["records"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["name"] != "mail._domainkey.shop.test."),
        "retired key no longer listed"
    );
    assert_eq!(condition(&status, "Ready")["status"], "True");
}

#[tokio::test]
async fn user_provided_key_is_copied_and_a_missing_one_is_reported() {
    let knot = KnotServer::start(&[(DOMAIN, "")]);
    let h = harness(knot.addr());
    let s = Ok(settings(KeySettings::UserProvided {
        selector: "byo".into(),
        secret_name: "my-dkim".into(),
        secret_key: "key.pem".into(),
    }));
    h.reconcile(&s).await;
    let status = h.status();
    let k = condition(&status, "DKIMKeyReady");
    assert_eq!(k["status"], "False");
    assert_eq!(k["reason"], "PrivateKeySecretNotFound");
    assert!(k["message"].as_str().unwrap().contains("my-dkim"));
    h.requests();

    // PKCS#1 RSA, as `openssl genrsa -traditional` writes it.
    use rsa::pkcs1::EncodeRsaPrivateKey as _;
    let key = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 1024).unwrap();
    let pem = key
        .to_pkcs1_pem(rsa::pkcs8::LineEnding::LF)
        .unwrap()
        .to_string();
    use base64::Engine as _;
    h.state.lock().unwrap().secrets.insert(
        "my-dkim".into(),
        json!({"apiVersion": "v1", "kind": "Secret",
               "metadata": {"name": "my-dkim", "namespace": NS},
               "data": {"key.pem": base64::engine::general_purpose::STANDARD.encode(pem.as_bytes())}}),
    );
    h.reconcile(&s).await;
    let status = h.status();
    assert_eq!(condition(&status, "DKIMKeyReady")["status"], "True");
    assert_eq!(status["dkim"]["selector"], "byo");
    assert_eq!(status["dkim"]["secretName"], "shop-dkim-byo");
    let copy = h.secret("shop-dkim-byo").unwrap();
    assert_eq!(
        copy["metadata"]["annotations"]["smtpfleet.io/dkim-source"],
        "user"
    );
    let expected = smtpfleet_operator::dkim_keys::DkimKey::from_private_key_pem(&pem).unwrap();
    assert_eq!(status["dkim"]["publicKey"], expected.dns_public_key);
    assert!(event_reasons(&h.requests()).contains(&"DKIMKeyImported".to_string()));
    // Unchanged user key: nothing written the second time.
    h.reconcile(&s).await;
    assert!(h.requests().iter().all(|r| r.method == Method::GET));
}

#[tokio::test]
async fn invalid_spec_is_reported_without_touching_keys() {
    let knot = KnotServer::start(&[(DOMAIN, "")]);
    let h = harness(knot.addr());
    let s = Err(InvalidSpec::new(
        "spec.spf.mechanisms[0]",
        "\"ip4:300.1.1.1\" is not an IP address",
    ));
    h.reconcile(&s).await;
    let reqs = h.requests();
    assert!(
        reqs.iter().all(|r| !r.path.contains("/secrets")),
        "{reqs:?}"
    );
    let status = h.status();
    let ready = condition(&status, "Ready");
    assert_eq!(ready["reason"], "InvalidSpec");
    assert!(
        ready["message"]
            .as_str()
            .unwrap()
            .starts_with("spec.spf.mechanisms[0]:")
    );
}
