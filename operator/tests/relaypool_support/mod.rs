//! A scripted Kubernetes API server for reconciler tests.
//!
//! The reconciler runs against a real `kube::Client` whose transport is a tower-test
//! mock; the test plays the API server: it takes each request in the order the
//! reconciler makes it, asserts what it must contain, and answers it. A reconciler that
//! makes an unexpected request, or stops making the expected ones, fails the test
//! within [`STEP_TIMEOUT`] instead of hanging.

#![allow(dead_code)]

use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use kube::Client;
use kube::client::Body;
use serde_json::Value;

/// How long one expected request may take to arrive.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(10);

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

/// The test's side of the mock API server.
pub struct ApiServer {
    handle: Handle,
}

/// A client talking to a fresh mock API server.
pub fn mock_client() -> (Client, ApiServer) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    (Client::new(service, "default"), ApiServer { handle })
}

/// One request the reconciler made, waiting for its answer.
pub struct Exchange {
    /// HTTP method.
    pub method: Method,
    /// Path without the query.
    pub path: String,
    /// Query string (empty when none).
    pub query: String,
    /// Content-Type header, if any.
    pub content_type: Option<String>,
    /// The request body parsed as JSON (`Value::Null` when empty).
    pub body: Value,
    respond: tower_test::mock::SendResponse<Response<Body>>,
}

impl ApiServer {
    /// The next request; panics when none arrives within [`STEP_TIMEOUT`].
    pub async fn next(&mut self) -> Exchange {
        let (request, respond) = tokio::time::timeout(STEP_TIMEOUT, self.handle.next_request())
            .await
            .expect("the reconciler made no further request in time")
            .expect("the client was dropped");
        let (parts, body) = request.into_parts();
        let bytes = body.collect_bytes().await.expect("request body");
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).expect("request body is JSON")
        };
        Exchange {
            method: parts.method,
            path: parts.uri.path().to_owned(),
            query: parts.uri.query().unwrap_or_default().to_owned(),
            content_type: parts
                .headers
                .get(http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
            body,
            respond,
        }
    }

    /// The next request, asserted to be `method path`.
    pub async fn expect(&mut self, method: Method, path: &str) -> Exchange {
        let exchange = self.next().await;
        assert_eq!(
            (&exchange.method, exchange.path.as_str()),
            (&method, path),
            "unexpected request (query {:?}, body {})",
            exchange.query,
            exchange.body
        );
        exchange
    }

    /// Asserts that the reconciler makes no further request within `wait`.
    pub async fn expect_silence(&mut self, wait: Duration) {
        if let Ok(Some((request, _))) = tokio::time::timeout(wait, self.handle.next_request()).await
        {
            panic!("unexpected request {} {}", request.method(), request.uri());
        }
    }
}

impl Exchange {
    /// The value of query parameter `key`, percent-decoded.
    pub fn query_param(&self, key: &str) -> Option<String> {
        self.query.split('&').find_map(|pair| {
            let (k, v) = pair.split_once('=')?;
            (k == key).then(|| percent_decode(v))
        })
    }

    /// Asserts a server-side apply by `manager` with force.
    pub fn assert_server_side_apply(&self, manager: &str) {
        assert_eq!(self.method, Method::PATCH, "{}", self.path);
        assert_eq!(
            self.content_type.as_deref(),
            Some("application/apply-patch+yaml"),
            "{}",
            self.path
        );
        assert_eq!(
            self.query_param("fieldManager").as_deref(),
            Some(manager),
            "{}",
            self.path
        );
        assert_eq!(
            self.query_param("force").as_deref(),
            Some("true"),
            "{}",
            self.path
        );
    }

    /// Answers with `status` and a JSON body.
    pub fn respond(self, status: StatusCode, body: &Value) {
        let response = Response::builder()
            .status(status)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Body::from(serde_json::to_vec(body).expect("serializable")))
            .expect("valid response");
        self.respond.send_response(response);
    }

    /// Answers 200 with `body`.
    pub fn ok(self, body: &Value) {
        self.respond(StatusCode::OK, body);
    }

    /// Answers with a Kubernetes `Status` error.
    pub fn fail(self, code: u16, reason: &str) {
        let status = StatusCode::from_u16(code).expect("valid code");
        let body = serde_json::json!({
            "kind": "Status",
            "apiVersion": "v1",
            "status": "Failure",
            "message": format!("{reason} (from the test API server)"),
            "reason": reason,
            "code": code,
        });
        self.respond(status, &body);
    }

    /// Answers 404 Not Found.
    pub fn not_found(self) {
        self.fail(404, "NotFound");
    }

    /// Answers a server-side apply like the API server does: the applied object with
    /// server-set metadata, 201 when `created`, 200 otherwise, keeping `status` from
    /// `current_status` (apply never writes status).
    pub fn answer_apply(self, created: bool, current_status: Option<Value>) {
        let mut object = self.body.clone();
        let meta = object["metadata"].as_object_mut().expect("metadata");
        let name = meta["name"].as_str().expect("name").to_owned();
        meta.insert("uid".into(), Value::String(format!("uid-{name}")));
        meta.insert("resourceVersion".into(), Value::String("1".into()));
        meta.insert("generation".into(), Value::from(1));
        if let Some(status) = current_status {
            object["status"] = status;
        }
        let code = if created {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        };
        self.respond(code, &object);
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).expect("ascii");
                out.push(u8::from_str_radix(hex, 16).expect("hex escape"));
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).expect("utf-8")
}

/// A `List` response body of `kind` with `items`.
pub fn list(api_version: &str, kind: &str, items: Vec<Value>) -> Value {
    serde_json::json!({
        "apiVersion": api_version,
        "kind": format!("{kind}List"),
        "metadata": { "resourceVersion": "1" },
        "items": items,
    })
}

/// Loads `operator/tests/fixtures/relaypool/reconcile/<name>`.
pub fn fixture(name: &str) -> smtpfleet_operator::api::RelayPool {
    let path = format!(
        "{}/tests/fixtures/relaypool/reconcile/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Helpers that play the API server's side of one RelayPool reconciliation.
pub mod reconcile {
    use super::{ApiServer, Exchange, list};
    use http::Method;
    use serde_json::{Value, json};
    use smtpfleet_operator::relaypool::apply::FIELD_MANAGER;

    /// Path of a core (`/api/v1`) namespaced object.
    pub fn core(namespace: &str, plural: &str, name: &str) -> String {
        format!("/api/v1/namespaces/{namespace}/{plural}/{name}")
    }

    /// Path of a namespaced object of an API group.
    pub fn grouped(group_version: &str, namespace: &str, plural: &str, name: &str) -> String {
        format!("/apis/{group_version}/namespaces/{namespace}/{plural}/{name}")
    }

    /// Path of a RelayPool.
    pub fn pool_path(namespace: &str, name: &str) -> String {
        grouped("smtpfleet.io/v1alpha1", namespace, "relaypools", name)
    }

    /// A `kubernetes.io/tls` Secret with both keys.
    pub fn tls_secret(namespace: &str, name: &str) -> Value {
        json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": name, "namespace": namespace, "uid": format!("uid-{name}")},
            "type": "kubernetes.io/tls",
            "data": {"tls.crt": "Y2VydA==", "tls.key": "a2V5"},
        })
    }

    /// Answers a GET of Secret `name` with `secret` (or 404 when `None`).
    pub async fn serve_secret(
        server: &mut ApiServer,
        namespace: &str,
        name: &str,
        secret: Option<Value>,
    ) {
        let exchange = server
            .expect(Method::GET, &core(namespace, "secrets", name))
            .await;
        match secret {
            Some(secret) => exchange.ok(&secret),
            None => exchange.not_found(),
        }
    }

    /// Answers the list of MailDomains bound to `pool`, asserting the field selector.
    pub async fn serve_mail_domains(
        server: &mut ApiServer,
        namespace: &str,
        pool: &str,
        items: Vec<Value>,
    ) {
        let exchange = server
            .expect(
                Method::GET,
                &format!("/apis/smtpfleet.io/v1alpha1/namespaces/{namespace}/maildomains"),
            )
            .await;
        assert_eq!(
            exchange.query_param("fieldSelector").as_deref(),
            Some(format!("spec.relayPoolRef.name={pool}").as_str())
        );
        exchange.ok(&list("smtpfleet.io/v1alpha1", "MailDomain", items));
        serve_domain_set(server, namespace, pool, None).await;
    }

    /// What the reconciler wrote of the pool's domain set.
    pub struct DomainSet {
        /// Shard Secrets applied, in order.
        pub shards: Vec<Value>,
        /// The index ConfigMap applied.
        pub index: Value,
    }

    /// Answers the domain-set stage: the list of the pool's DKIM key Secrets (only
    /// asked for when a bound domain has a key: `keys` then holds the list's items),
    /// the metadata-only list of existing shards (none), and the applies of the shards
    /// and of the index ConfigMap.
    pub async fn serve_domain_set(
        server: &mut ApiServer,
        namespace: &str,
        pool: &str,
        keys: Option<Vec<Value>>,
    ) -> DomainSet {
        let secrets = format!("/api/v1/namespaces/{namespace}/secrets");
        if let Some(keys) = keys {
            let exchange = server.expect(Method::GET, &secrets).await;
            assert_eq!(
                exchange.query_param("labelSelector").as_deref(),
                Some(
                    format!("smtpfleet.io/component=dkim-key,smtpfleet.io/relay-pool={pool}")
                        .as_str()
                )
            );
            exchange.ok(&list("v1", "Secret", keys));
        }
        let exchange = server.expect(Method::GET, &secrets).await;
        assert_eq!(
            exchange.query_param("labelSelector").as_deref(),
            Some(format!("smtpfleet.io/pool={pool},smtpfleet.io/component=domain-shard").as_str())
        );
        exchange.ok(&json!({
            "apiVersion": "meta.k8s.io/v1",
            "kind": "PartialObjectMetadataList",
            "metadata": {"resourceVersion": "1"},
            "items": [],
        }));
        let mut shards = Vec::new();
        loop {
            let exchange = server.next().await;
            exchange.assert_server_side_apply(FIELD_MANAGER);
            let body = exchange.body.clone();
            let index = exchange.path
                == format!("/api/v1/namespaces/{namespace}/configmaps/{pool}-domains");
            assert!(
                index
                    || exchange
                        .path
                        .starts_with(&format!("{secrets}/{pool}-domains-")),
                "unexpected request {}",
                exchange.path
            );
            exchange.answer_apply(true, None);
            if index {
                return DomainSet {
                    shards,
                    index: body,
                };
            }
            shards.push(body);
        }
    }

    /// Answers the list of the pool's StatefulSets, asserting the label selector.
    pub async fn serve_statefulsets(
        server: &mut ApiServer,
        namespace: &str,
        pool: &str,
        items: Vec<Value>,
    ) {
        let exchange = server
            .expect(
                Method::GET,
                &format!("/apis/apps/v1/namespaces/{namespace}/statefulsets"),
            )
            .await;
        assert_eq!(
            exchange.query_param("labelSelector").as_deref(),
            Some(
                format!("smtpfleet.io/pool={pool},app.kubernetes.io/managed-by=smtpfleet-operator")
                    .as_str()
            )
        );
        exchange.ok(&list("apps/v1", "StatefulSet", items));
    }

    /// Takes the next request, asserts it is a forced server-side apply by the
    /// operator's field manager at `path`, answers it and returns the applied body.
    pub async fn serve_apply(
        server: &mut ApiServer,
        path: &str,
        created: bool,
        status: Option<Value>,
    ) -> Value {
        let exchange = server.expect(Method::PATCH, path).await;
        exchange.assert_server_side_apply(FIELD_MANAGER);
        let body = exchange.body.clone();
        exchange.answer_apply(created, status);
        body
    }

    /// The applied bodies of one reconciliation's children, in apply order.
    #[derive(Debug, Clone, PartialEq)]
    pub struct Applied {
        /// ServiceAccount, Role, RoleBinding, ConfigMap, peer Service, client Service.
        pub before: Vec<Value>,
        /// StatefulSets by name.
        pub statefulsets: Vec<(String, Value)>,
        /// PodDisruptionBudget.
        pub pdb: Value,
    }

    /// Serves the server-side applies of every child of pool `pool` with StatefulSets
    /// for `data_centres`, each StatefulSet answered with `status`.
    pub async fn serve_children(
        server: &mut ApiServer,
        namespace: &str,
        pool: &str,
        data_centres: &[&str],
        created: bool,
        status: &Value,
    ) -> Applied {
        let mut before = Vec::new();
        before.push(
            serve_apply(
                server,
                &core(namespace, "serviceaccounts", pool),
                created,
                None,
            )
            .await,
        );
        for plural in ["roles", "rolebindings"] {
            let path = grouped(
                "rbac.authorization.k8s.io/v1",
                namespace,
                plural,
                &format!("{pool}-node"),
            );
            before.push(serve_apply(server, &path, created, None).await);
        }
        before.push(
            serve_apply(
                server,
                &core(namespace, "configmaps", &format!("{pool}-config")),
                created,
                None,
            )
            .await,
        );
        before.push(
            serve_apply(
                server,
                &core(namespace, "services", &format!("{pool}-peers")),
                created,
                None,
            )
            .await,
        );
        before.push(serve_apply(server, &core(namespace, "services", pool), created, None).await);
        let mut statefulsets = Vec::new();
        for dc in data_centres {
            let name = format!("{pool}-{dc}");
            let path = grouped("apps/v1", namespace, "statefulsets", &name);
            let body = serve_apply(server, &path, created, Some(status.clone())).await;
            statefulsets.push((name, body));
        }
        let pdb = serve_apply(
            server,
            &grouped("policy/v1", namespace, "poddisruptionbudgets", pool),
            created,
            None,
        )
        .await;
        Applied {
            before,
            statefulsets,
            pdb,
        }
    }

    /// A StatefulSet status with `ready` of `replicas` ready and nothing rolling.
    pub fn settled_status(replicas: i32, ready: i32) -> Value {
        json!({
            "observedGeneration": 1,
            "replicas": replicas,
            "readyReplicas": ready,
            "updatedReplicas": replicas,
            "currentRevision": "rev-1",
            "updateRevision": "rev-1",
        })
    }

    /// Takes the status patch of the pool, asserts its form and returns its body.
    pub async fn serve_status_patch(
        server: &mut ApiServer,
        namespace: &str,
        pool: &Value,
    ) -> Value {
        let name = pool["metadata"]["name"].as_str().expect("name");
        let exchange = server
            .expect(
                Method::PATCH,
                &format!("{}/status", pool_path(namespace, name)),
            )
            .await;
        assert_eq!(
            exchange.content_type.as_deref(),
            Some("application/merge-patch+json")
        );
        assert_eq!(
            exchange.query_param("fieldManager").as_deref(),
            Some(FIELD_MANAGER)
        );
        let body = exchange.body.clone();
        let mut answer = pool.clone();
        answer["status"] = body["status"].clone();
        exchange.ok(&answer);
        body
    }

    /// Takes `count` Event creations about the pool and returns `(type, reason, note)`.
    pub async fn serve_events(
        server: &mut ApiServer,
        namespace: &str,
        count: usize,
    ) -> Vec<(String, String, String)> {
        let mut events = Vec::new();
        for _ in 0..count {
            let exchange = server
                .expect(
                    Method::POST,
                    &format!("/apis/events.k8s.io/v1/namespaces/{namespace}/events"),
                )
                .await;
            let body = exchange.body.clone();
            assert_eq!(body["reportingController"], "smtpfleet-operator");
            assert_eq!(body["regarding"]["kind"], "RelayPool");
            events.push((
                body["type"].as_str().unwrap_or_default().to_owned(),
                body["reason"].as_str().unwrap_or_default().to_owned(),
                body["note"].as_str().unwrap_or_default().to_owned(),
            ));
            let answer = body.clone();
            exchange.respond(http::StatusCode::CREATED, &answer);
        }
        events
    }

    /// The condition of `type_` in a status patch body.
    pub fn condition<'a>(patch: &'a Value, type_: &str) -> &'a Value {
        patch["status"]["conditions"]
            .as_array()
            .expect("conditions")
            .iter()
            .find(|c| c["type"] == type_)
            .unwrap_or_else(|| panic!("no {type_} condition in {patch}"))
    }

    /// Unused-variable guard for exchanges a scenario only needs to answer.
    pub fn answer_ok(exchange: Exchange, body: &Value) {
        exchange.ok(body);
    }
}
