//! Helpers shared by the runtime integration tests: an in-memory Lease store that
//! answers like the API server (404, 409 on a stale resourceVersion, AlreadyExists),
//! and a small HTTP GET over a real hyper client.
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::rt::TokioExecutor;
use k8s_openapi::api::coordination::v1::Lease;
use kube::client::Body;
use serde_json::json;

/// Every wait in these tests is bounded by this.
pub const TIMEOUT: Duration = Duration::from_secs(20);

/// Polls `check` every 20 ms until it holds; panics after [`TIMEOUT`].
pub async fn eventually<F: FnMut() -> bool>(what: &str, mut check: F) {
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One request as the store saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: Method,
    pub path: String,
    /// Which client sent it.
    pub client: String,
    pub status: StatusCode,
}

#[derive(Default)]
struct State {
    leases: HashMap<String, serde_json::Value>,
    version: u64,
    log: Vec<Seen>,
}

/// Leases kept in memory, served to any number of kube clients.
#[derive(Clone, Default)]
pub struct FakeLeases {
    state: Arc<Mutex<State>>,
}

const PREFIX: &str = "/apis/coordination.k8s.io/v1/namespaces/";

impl FakeLeases {
    pub fn new() -> Self {
        Self::default()
    }

    /// A kube client whose requests this store answers; `name` tags them in the log.
    pub fn client(&self, name: &str) -> kube::Client {
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let state = self.state.clone();
        let name = name.to_owned();
        tokio::spawn(async move {
            while let Some((request, reply)) = handle.next_request().await {
                let (parts, body) = request.into_parts();
                let body = body.collect_bytes().await.unwrap_or_default();
                let (status, answer) = serve(&state, &parts.method, parts.uri.path(), &body);
                state.lock().unwrap().log.push(Seen {
                    method: parts.method.clone(),
                    path: parts.uri.path().to_owned(),
                    client: name.clone(),
                    status,
                });
                let mut response = Response::new(Body::from(answer.to_string().into_bytes()));
                *response.status_mut() = status;
                reply.send_response(response);
            }
        });
        kube::Client::new(service, "default")
    }

    /// Serves the store over real HTTP on `listener` (for a client built from a
    /// kubeconfig), until the test ends.
    pub fn serve_http(&self, listener: tokio::net::TcpListener) {
        let state = self.state.clone();
        let app = axum::Router::new().fallback(
            move |method: Method, uri: http::Uri, body: axum::body::Bytes| {
                let state = state.clone();
                async move {
                    let (status, answer) = serve(&state, &method, uri.path(), &body);
                    state.lock().unwrap().log.push(Seen {
                        method,
                        path: uri.path().to_owned(),
                        client: "http".into(),
                        status,
                    });
                    (
                        status,
                        [(http::header::CONTENT_TYPE, "application/json")],
                        answer.to_string(),
                    )
                }
            },
        );
        tokio::spawn(async move { axum::serve(listener, app).await });
    }

    /// The stored Lease `namespace/name`.
    pub fn get(&self, namespace: &str, name: &str) -> Option<Lease> {
        let key = format!("{PREFIX}{namespace}/leases/{name}");
        let state = self.state.lock().unwrap();
        state
            .leases
            .get(&key)
            .map(|v| serde_json::from_value(v.clone()).unwrap())
    }

    /// The holder of the stored Lease `namespace/name`, if any.
    pub fn holder(&self, namespace: &str, name: &str) -> Option<String> {
        self.get(namespace, name)
            .and_then(|l| l.spec)
            .and_then(|s| s.holder_identity)
    }

    /// Overwrites a Lease behind the clients' backs, as another replica would.
    pub fn put(&self, namespace: &str, name: &str, mut lease: serde_json::Value) {
        let key = format!("{PREFIX}{namespace}/leases/{name}");
        let mut state = self.state.lock().unwrap();
        state.version += 1;
        lease["metadata"]["name"] = json!(name);
        lease["metadata"]["namespace"] = json!(namespace);
        lease["metadata"]["resourceVersion"] = json!(state.version.to_string());
        state.leases.insert(key, lease);
    }

    /// Requests seen so far.
    pub fn log(&self) -> Vec<Seen> {
        self.state.lock().unwrap().log.clone()
    }
}

fn status(code: u16, reason: &str, message: &str) -> (StatusCode, serde_json::Value) {
    (
        StatusCode::from_u16(code).unwrap(),
        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
               "code": code, "reason": reason, "message": message}),
    )
}

fn serve(
    state: &Mutex<State>,
    method: &Method,
    path: &str,
    body: &[u8],
) -> (StatusCode, serde_json::Value) {
    let Some(rest) = path.strip_prefix(PREFIX) else {
        return status(404, "NotFound", "only leases are served");
    };
    let parts: Vec<&str> = rest.split('/').collect();
    let mut state = state.lock().unwrap();
    match (method, parts.as_slice()) {
        (&Method::GET, [_, "leases", _]) => match state.leases.get(path) {
            Some(lease) => (StatusCode::OK, lease.clone()),
            None => status(404, "NotFound", "leases not found"),
        },
        (&Method::POST, [namespace, "leases"]) => {
            let mut lease: serde_json::Value = serde_json::from_slice(body).unwrap();
            let name = lease["metadata"]["name"].as_str().unwrap().to_owned();
            let key = format!("{path}/{name}");
            if state.leases.contains_key(&key) {
                return status(409, "AlreadyExists", "leases already exists");
            }
            state.version += 1;
            lease["metadata"]["namespace"] = json!(namespace);
            lease["metadata"]["resourceVersion"] = json!(state.version.to_string());
            state.leases.insert(key, lease.clone());
            (StatusCode::CREATED, lease)
        }
        (&Method::PUT, [_, "leases", _]) => {
            let mut lease: serde_json::Value = serde_json::from_slice(body).unwrap();
            let Some(stored) = state.leases.get(path) else {
                return status(404, "NotFound", "leases not found");
            };
            if stored["metadata"]["resourceVersion"] != lease["metadata"]["resourceVersion"] {
                return status(409, "Conflict", "the object has been modified");
            }
            state.version += 1;
            lease["metadata"]["resourceVersion"] = json!(state.version.to_string());
            state.leases.insert(path.to_owned(), lease.clone());
            (StatusCode::OK, lease)
        }
        _ => status(405, "MethodNotAllowed", "not supported"),
    }
}

/// GETs `path` from `addr` with a real HTTP client: status, content type, body.
pub async fn http_get(addr: SocketAddr, path: &str) -> (StatusCode, String, String) {
    let client = HttpClient::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let uri = format!("http://{addr}{path}").parse().unwrap();
    let response = tokio::time::timeout(TIMEOUT, client.get(uri))
        .await
        .expect("HTTP request timed out")
        .expect("HTTP request failed");
    let status = response.status();
    let content_type = response
        .headers()
        .get(http::header::CONTENT_TYPE)
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let body = tokio::time::timeout(TIMEOUT, response.into_body().collect())
        .await
        .expect("HTTP body timed out")
        .expect("HTTP body failed")
        .to_bytes();
    (
        status,
        content_type,
        String::from_utf8(body.to_vec()).unwrap(),
    )
}
