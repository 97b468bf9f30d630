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
