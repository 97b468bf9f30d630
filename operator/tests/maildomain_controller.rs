//! MailDomain reconciliation against a mock Kubernetes API server (tower-test) that keeps
//! MailDomains, RelayPools and Secrets in memory and records every request, with DNS
//! answered by a real Knot server. The reconciler under test is the real one
//! ([`smtpfleet_operator::maildomain::reconcile`]), fed the objects as the API server
//! holds them.

mod dnsserver;

use std::collections::BTreeMap;
use std::pin::pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, TimeZone as _, Utc};
use dnsserver::KnotServer;
use http::{Method, Request, Response, StatusCode};
use kube::client::Body;
use serde_json::{Value, json};
use smtpfleet_operator::api::mail_domain::MailDomain;
use smtpfleet_operator::dns::{CheckSchedule, DnsResolver, QueryLimiter, ResolverSettings};
use smtpfleet_operator::maildomain::{Context, reconcile};

const NS: &str = "mail";
const DOMAIN: &str = "shop.test";
const POOL_HOST: &str = "relay.pool.example.net";

/// One request the operator made.
#[derive(Debug, Clone)]
struct Recorded {
    method: Method,
    path: String,
    query: String,
    content_type: String,
    body: Option<Value>,
}

#[derive(Default)]
struct ApiState {
    maildomains: BTreeMap<String, Value>,
    pools: BTreeMap<String, Value>,
    secrets: BTreeMap<String, Value>,
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

fn list(kind: &str, items: Vec<Value>) -> Response<Body> {
    ok(
        &json!({"apiVersion": "v1", "kind": kind, "metadata": {"resourceVersion": "1"}, "items": items}),
    )
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

async fn answer(state: &Shared, req: Request<Body>) -> Response<Body> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or_default().to_string();
    let content_type = req
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let bytes = req.into_body().collect_bytes().await.unwrap();
    let body: Option<Value> = serde_json::from_slice(&bytes).ok();
    let mut s = state.lock().unwrap();
    s.requests.push(Recorded {
        method: method.clone(),
        path: path.clone(),
        query: query.clone(),
        content_type,
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
                _,
                "relaypools",
                name,
            ],
        ) => match s.pools.get(*name) {
            Some(v) => ok(v),
            None => not_found("relaypool"),
        },
        (
            Method::GET,
            [
                "apis",
                "smtpfleet.io",
                "v1alpha1",
                "namespaces",
                _,
                "maildomains",
            ],
        ) => {
            let selector = query_param(&query, "fieldSelector").unwrap_or_default();
            let want = selector.strip_prefix("spec.domain=").map(str::to_string);
            let items = s
                .maildomains
                .values()
                .filter(|md| want.as_deref().is_none_or(|d| md["spec"]["domain"] == d))
                .cloned()
                .collect();
            list("MailDomainList", items)
        }
        (
            Method::PATCH,
            [
                "apis",
                "smtpfleet.io",
                "v1alpha1",
                "namespaces",
                _,
                "maildomains",
                name,
                "status",
            ],
        ) => {
            let status = body
                .as_ref()
                .map(|b| b["status"].clone())
                .unwrap_or_default();
            match s.maildomains.get_mut(*name) {
                Some(md) => {
                    md["status"] = status;
                    let v = md.clone();
                    ok(&v)
                }
                None => not_found("maildomain"),
            }
        }
        (Method::GET, ["api", "v1", "namespaces", _, "secrets"]) => {
            let selector = query_param(&query, "labelSelector").unwrap_or_default();
            let items = s
                .secrets
                .values()
                .filter(|v| labels_match(v, &selector))
                .cloned()
                .collect();
            list("SecretList", items)
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
            send.send_response(answer(&state, req).await);
        }
    });
    kube::Client::new(service, "default")
}

/// A MailDomain as the API server would hold it (defaults applied by serde).
fn maildomain(name: &str, created: &str, spec_yaml: &str) -> Value {
    let spec: Value = serde_yaml::from_str(spec_yaml).unwrap();
    let md = json!({
        "apiVersion": "smtpfleet.io/v1alpha1", "kind": "MailDomain",
        "metadata": {"name": name, "namespace": NS, "uid": format!("uid-{name}"),
                     "generation": 1, "creationTimestamp": created},
        "spec": spec,
    });
    // Round-trip through the typed API so the stored object is what a real server returns.
    let typed: MailDomain = serde_json::from_value(md).unwrap();
    serde_json::to_value(typed).unwrap()
}

fn relay_pool(name: &str, hostname: &str) -> Value {
    json!({
        "apiVersion": "smtpfleet.io/v1alpha1", "kind": "RelayPool",
        "metadata": {"name": name, "namespace": NS, "uid": format!("uid-{name}")},
        "spec": {"hostname": hostname},
    })
}

const GENERATED: &str = "
domain: shop.test
relayPoolRef: {name: blue}
dkim: {selector: mail, algorithm: ed25519}
dmarc: {policy: reject}
";

const ROTATING: &str = "
domain: shop.test
relayPoolRef: {name: blue}
dkim: {selector: mail, algorithm: ed25519, rotateAfter: 30d, rotationOverlap: 1h}
dmarc: {policy: reject}
";

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
            verified_max_ttl_wait: Duration::from_secs(6 * 3600),
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
    fn add_domain(&self, name: &str, created: &str, spec: &str) {
        self.state
            .lock()
            .unwrap()
            .maildomains
            .insert(name.into(), maildomain(name, created, spec));
    }
    fn add_pool(&self, name: &str) {
        self.state
            .lock()
            .unwrap()
            .pools
            .insert(name.into(), relay_pool(name, POOL_HOST));
    }
    fn requests(&self) -> Vec<Recorded> {
        std::mem::take(&mut self.state.lock().unwrap().requests)
    }
    fn status(&self, name: &str) -> Value {
        self.state.lock().unwrap().maildomains[name]["status"].clone()
    }
    fn secret(&self, name: &str) -> Option<Value> {
        self.state.lock().unwrap().secrets.get(name).cloned()
    }
    fn advance(&self, by: chrono::Duration) {
        *self.now.lock().unwrap() += by;
    }
    /// Reconciles `name` as the API server holds it now.
    async fn reconcile(&self, name: &str) -> kube::runtime::controller::Action {
        let md: MailDomain =
            serde_json::from_value(self.state.lock().unwrap().maildomains[name].clone()).unwrap();
        tokio::time::timeout(
            Duration::from_secs(30),
            reconcile(Arc::new(md), self.ctx.clone()),
        )
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

fn writes(reqs: &[Recorded]) -> Vec<(Method, String)> {
    reqs.iter()
        .filter(|r| r.method != Method::GET)
        .map(|r| (r.method.clone(), r.path.clone()))
        .collect()
}

/// Zone lines publishing every record the status lists, as a user would.
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
    h.add_domain("shop", "2026-05-01T00:00:00Z", GENERATED);
    h.reconcile("shop").await;
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
    assert_eq!(apply.content_type, "application/apply-patch+yaml");
    let secret = h.secret("shop-dkim-mail").unwrap();
    assert_eq!(secret["type"], "Opaque");
    assert_eq!(
        secret["metadata"]["labels"]["smtpfleet.io/maildomain"],
        "shop"
    );
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
    use base64::Engine as _;
    let pem = base64::engine::general_purpose::STANDARD
        .decode(secret["data"]["private.key"].as_str().unwrap())
        .unwrap();
    assert!(
        String::from_utf8(pem)
            .unwrap()
            .starts_with("-----BEGIN PRIVATE KEY-----")
    );

    // Status, applied server-side: PoolBound False naming the pool; the key is in status.
    let status_write = reqs
        .iter()
        .find(|r| r.path.ends_with("/maildomains/shop/status"))
        .expect("status written");
    assert_eq!(status_write.method, Method::PATCH);
    assert!(
        status_write
            .query
            .contains("fieldManager=smtpfleet-operator")
    );
    let status = h.status("shop");
    let pb = condition(&status, "PoolBound");
    assert_eq!(pb["status"], "False");
    assert_eq!(pb["reason"], "PoolNotFound");
    assert!(
        pb["message"].as_str().unwrap().contains("RelayPool blue"),
        "{pb}"
    );
    assert_eq!(condition(&status, "Ready")["status"], "False");
    assert_eq!(condition(&status, "DKIMKeyReady")["status"], "True");
    assert_eq!(condition(&status, "DNSVerified")["status"], "Unknown");
    assert_eq!(status["dkim"]["selector"], "mail");
    assert!(status["dns"].is_null());
    assert_eq!(status["observedGeneration"], 1);
    let reasons = event_reasons(&reqs);
    assert!(
        reasons.contains(&"DKIMKeyGenerated".to_string()),
        "{reasons:?}"
    );
    assert!(reasons.contains(&"PoolNotFound".to_string()), "{reasons:?}");
    // No DNS queries without a pool hostname to check against.
    assert_eq!(knot.queries_answered(), 0);

    // The RelayPool controller finds the key from status alone.
    let md: MailDomain =
        serde_json::from_value(h.state.lock().unwrap().maildomains["shop"].clone()).unwrap();
    assert_eq!(
        smtpfleet_operator::maildomain::active_key_secret_name(&md).as_deref(),
        Some("shop-dkim-mail")
    );
}

#[tokio::test]
async fn records_are_reported_then_verified_and_quiet_afterwards() {
    let mut knot = KnotServer::start(&[(DOMAIN, "")]);
    let h = harness(knot.addr());
    h.add_pool("blue");
    h.add_domain("shop", "2026-05-01T00:00:00Z", GENERATED);

    h.reconcile("shop").await;
    h.requests();
    let status = h.status("shop");
    let records = status["dns"]["records"].as_array().unwrap();
    let rows: Vec<(&str, &str, &str)> = records
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
        rows,
        vec![
            ("MX", "shop.test.", "Missing"),
            ("TXT", "shop.test.", "Missing"),
            ("TXT", "mail._domainkey.shop.test.", "Missing"),
            ("TXT", "_dmarc.shop.test.", "Missing"),
        ]
    );
    assert_eq!(records[0]["expected"], "10 relay.pool.example.net.");
    assert_eq!(
        records[1]["expected"],
        "v=spf1 a:relay.pool.example.net ~all"
    );
    assert_eq!(records[3]["expected"], "v=DMARC1; p=reject");
    let pubkey = status["dkim"]["publicKey"].as_str().unwrap();
    assert_eq!(
        records[2]["expected"],
        format!("v=DKIM1; k=ed25519; p={pubkey}")
    );
    assert!(status["dns"]["checkedAt"].is_string());
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

    // The user publishes exactly what status says.
    knot.set_zone(DOMAIN, &zone_from_status(&status));
    h.reconcile("shop").await;
    let reqs = h.requests();
    let status = h.status("shop");
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
    assert_eq!(event_reasons(&reqs), vec!["DomainReady", "RecordsMatch"]);
    // The key exists and is unchanged: not written again.
    assert!(!writes(&reqs).iter().any(|(_, p)| p.contains("/secrets/")));

    // Woken again before the next scheduled check: no DNS queries, no writes, no events.
    let queries = knot.queries_answered();
    let action = h.reconcile("shop").await;
    let reqs = h.requests();
    assert_eq!(knot.queries_answered(), queries);
    assert!(writes(&reqs).is_empty(), "{:?}", writes(&reqs));
    let text = format!("{action:?}");
    assert!(text.contains("requeue_after: Some("), "{text}");
}

#[tokio::test]
async fn rotation_through_the_controller() {
    let mut knot = KnotServer::start(&[(DOMAIN, "")]);
    let h = harness(knot.addr());
    h.add_pool("blue");
    h.add_domain("shop", "2026-05-01T00:00:00Z", ROTATING);
    h.reconcile("shop").await;
    knot.set_zone(DOMAIN, &zone_from_status(&h.status("shop")));
    h.reconcile("shop").await;
    assert_eq!(condition(&h.status("shop"), "Ready")["status"], "True");
    h.requests();

    // Rotation due: the next key appears, signing stays.
    h.advance(chrono::Duration::days(31));
    h.reconcile("shop").await;
    let reqs = h.requests();
    let next_name = "shop-dkim-mail-20260702";
    let next = h.secret(next_name).expect("next key Secret");
    assert_eq!(
        next["metadata"]["annotations"]["smtpfleet.io/dkim-state"],
        "next"
    );
    let status = h.status("shop");
    assert_eq!(status["dkim"]["selector"], "mail");
    assert_eq!(status["dkim"]["nextSelector"], "mail-20260702");
    assert_eq!(condition(&status, "DKIMKeyReady")["reason"], "KeyRotating");
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
        .expect("next key listed")
        .clone();
    assert_eq!(next_row["result"], "Missing");
    assert!(next_row["message"].as_str().unwrap().contains("next key"));
    assert!(event_reasons(&reqs).contains(&"DKIMRotationStarted".to_string()));

    // Not published yet: no switch.
    h.advance(chrono::Duration::hours(2));
    h.reconcile("shop").await;
    assert_eq!(h.status("shop")["dkim"]["selector"], "mail");
    h.requests();

    // Published: noted, but signing waits for the overlap (1h).
    knot.set_zone(DOMAIN, &zone_from_status(&h.status("shop")));
    h.reconcile("shop").await;
    let reqs = h.requests();
    assert!(event_reasons(&reqs).contains(&"DKIMNextKeyPublished".to_string()));
    assert_eq!(h.status("shop")["dkim"]["selector"], "mail");
    let next = h.secret(next_name).unwrap();
    assert!(next["metadata"]["annotations"]["smtpfleet.io/dkim-published-at"].is_string());
    let action = h.reconcile("shop").await;
    assert!(format!("{action:?}").contains("requeue_after: Some("));
    assert_eq!(h.status("shop")["dkim"]["selector"], "mail");
    h.requests();

    // After the overlap: signing switches; the old key is kept, marked retiring.
    h.advance(chrono::Duration::minutes(61));
    h.reconcile("shop").await;
    let reqs = h.requests();
    let status = h.status("shop");
    assert_eq!(status["dkim"]["selector"], "mail-20260702");
    assert!(status["dkim"]["nextSelector"].is_null());
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
    assert_eq!(condition(&status, "DKIMKeyReady")["reason"], "KeyGenerated");

    // After the overlap again the old key's Secret is deleted.
    h.advance(chrono::Duration::minutes(61));
    h.reconcile("shop").await;
    let reqs = h.requests();
    assert!(writes(&reqs).contains(&(
        Method::DELETE,
        "/api/v1/namespaces/mail/secrets/shop-dkim-mail".to_string()
    )));
    assert!(h.secret("shop-dkim-mail").is_none());
    assert!(event_reasons(&reqs).contains(&"DKIMKeyRetired".to_string()));
    let status = h.status("shop");
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
    h.add_domain(
        "shop",
        "2026-05-01T00:00:00Z",
        "domain: shop.test\nrelayPoolRef: {name: blue}\n\
         dkim: {selector: byo, privateKeySecretRef: {name: my-dkim, key: key.pem}}\n",
    );
    h.reconcile("shop").await;
    let status = h.status("shop");
    let k = condition(&status, "DKIMKeyReady");
    assert_eq!(k["status"], "False");
    assert_eq!(k["reason"], "KeySecretNotFound");
    assert!(k["message"].as_str().unwrap().contains("my-dkim"));
    assert!(
        !writes(&h.requests())
            .iter()
            .any(|(_, p)| p.contains("/secrets/"))
    );

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
    h.reconcile("shop").await;
    let status = h.status("shop");
    let k = condition(&status, "DKIMKeyReady");
    assert_eq!(
        (&k["status"], &k["reason"]),
        (&json!("True"), &json!("KeyProvided"))
    );
    assert_eq!(status["dkim"]["selector"], "byo");
    let copy = h.secret("shop-dkim-byo").unwrap();
    assert_eq!(
        copy["metadata"]["annotations"]["smtpfleet.io/dkim-source"],
        "user"
    );
    let expected = smtpfleet_operator::dkim_keys::DkimKey::from_private_key_pem(&pem).unwrap();
    assert_eq!(status["dkim"]["publicKey"], expected.dns_public_key);
    assert!(event_reasons(&h.requests()).contains(&"DKIMKeyImported".to_string()));
    // Unchanged user key: nothing written the second time.
    h.reconcile("shop").await;
    assert!(writes(&h.requests()).is_empty());
}

#[tokio::test]
async fn spec_the_schema_lets_through_but_that_cannot_work_is_invalid() {
    let knot = KnotServer::start(&[(DOMAIN, "")]);
    let h = harness(knot.addr());
    // Matches the CRD's ip4 pattern, but is not an address.
    h.add_domain(
        "shop",
        "2026-05-01T00:00:00Z",
        "domain: shop.test\nrelayPoolRef: {name: blue}\nspf: {mechanisms: [\"ip4:300.1.1.1\"]}\n",
    );
    let action = h.reconcile("shop").await;
    let reqs = h.requests();
    assert!(
        reqs.iter().all(|r| !r.path.contains("/secrets")),
        "{reqs:?}"
    );
    let ready = condition(&h.status("shop"), "Ready").clone();
    assert_eq!(ready["reason"], "InvalidSpec");
    assert!(
        ready["message"]
            .as_str()
            .unwrap()
            .starts_with("spec.spf.mechanisms[0]: \"ip4:300.1.1.1\""),
        "{ready}"
    );
    assert!(format!("{action:?}").contains("requeue_after: None"));
}

#[tokio::test]
async fn second_claim_on_a_domain_is_a_conflict() {
    let knot = KnotServer::start(&[(DOMAIN, "")]);
    let h = harness(knot.addr());
    h.add_pool("blue");
    h.add_domain("first", "2026-05-01T00:00:00Z", GENERATED);
    h.add_domain("second", "2026-05-02T00:00:00Z", GENERATED);
    h.reconcile("second").await;
    let reqs = h.requests();
    let status = h.status("second");
    let pb = condition(&status, "PoolBound");
    assert_eq!(
        (&pb["status"], &pb["reason"]),
        (&json!("False"), &json!("DomainConflict"))
    );
    assert!(pb["message"].as_str().unwrap().contains("MailDomain first"));
    assert_eq!(condition(&status, "Ready")["reason"], "DomainConflict");
    assert_eq!(
        condition(&status, "DKIMKeyReady")["reason"],
        "DomainConflict"
    );
    assert!(!writes(&reqs).iter().any(|(_, p)| p.contains("/secrets/")));
    assert!(status["dkim"].is_null());
    // The older claim is served as usual.
    h.reconcile("first").await;
    assert_eq!(condition(&h.status("first"), "PoolBound")["status"], "True");
    assert!(h.secret("first-dkim-mail").is_some());
}
