//! `/healthz`, `/readyz` and `/metrics` on their own port.
//!
//! Readiness is false until the spool is recovered and the listeners are bound, and
//! again from the moment the node starts stopping, so a Service stops routing new
//! connections to a node that is about to go away. It is also false while the spool is
//! out of space, and from the moment an essential task fails; the body says why.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("cannot listen on http.address {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("HTTP server failed: {0}")]
    Serve(std::io::Error),
}

/// Why the node is not ready, if it is not: a set of reasons that the parts of the node
/// hold and release independently (start-up, stop, spool full, a failed task). Cheap to
/// clone.
#[derive(Clone, Debug, Default)]
pub struct Readiness {
    reasons: Arc<Mutex<Vec<String>>>,
}

impl Readiness {
    /// Not ready for `reason` until [`Readiness::release`]d.
    pub fn hold(&self, reason: impl Into<String>) {
        let reason = reason.into();
        let mut reasons = self.lock();
        if !reasons.contains(&reason) {
            reasons.push(reason);
        }
    }

    pub fn release(&self, reason: &str) {
        self.lock().retain(|r| r != reason);
    }

    /// `None` when ready, otherwise every reason, one per line.
    pub fn not_ready(&self) -> Option<String> {
        let reasons = self.lock();
        (!reasons.is_empty()).then(|| reasons.join("\n"))
    }

    fn lock(&self) -> MutexGuard<'_, Vec<String>> {
        // Every mutation is a single call: a poisoned list is still consistent.
        self.reasons.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Called before each scrape to refresh gauges read from their source (queue depth).
pub type Refresh = Arc<dyn Fn() + Send + Sync>;

#[derive(Clone)]
pub struct HttpState {
    registry: Arc<Registry>,
    ready: Readiness,
    refresh: Refresh,
    admin: Option<Arc<crate::admin::Admin>>,
}

impl HttpState {
    pub fn new(registry: Arc<Registry>, ready: Readiness, refresh: Refresh) -> Self {
        Self {
            registry,
            ready,
            refresh,
            admin: None,
        }
    }

    /// Serves the admin API too (`admin.rs`).
    pub fn with_admin(mut self, admin: Arc<crate::admin::Admin>) -> Self {
        self.admin = Some(admin);
        self
    }
}

pub fn router(state: HttpState) -> Router {
    let admin = crate::admin::routes(state.admin.clone());
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { (StatusCode::OK, "ok\n") }))
        .route("/readyz", get(readyz))
        .with_state(state)
        .merge(admin)
}

pub async fn bind(addr: SocketAddr) -> Result<TcpListener, HttpError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| HttpError::Bind { addr, source })
}

pub async fn serve(
    listener: TcpListener,
    state: HttpState,
    shutdown: CancellationToken,
) -> Result<(), HttpError> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
        .map_err(HttpError::Serve)
}

async fn readyz(State(state): State<HttpState>) -> Response {
    match state.ready.not_ready() {
        None => (StatusCode::OK, "ok\n").into_response(),
        Some(reasons) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {reasons}\n"),
        )
            .into_response(),
    }
}

async fn metrics(State(state): State<HttpState>) -> Response {
    (state.refresh)();
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, &state.registry) {
        Ok(()) => ([(header::CONTENT_TYPE, CONTENT_TYPE)], body).into_response(),
        Err(error) => {
            tracing::error!(%error, "cannot encode metrics");
            (StatusCode::INTERNAL_SERVER_ERROR, "cannot encode metrics\n").into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_only_when_every_reason_is_released() {
        let ready = Readiness::default();
        assert_eq!(ready.not_ready(), None);
        ready.hold("starting");
        ready.hold("spool full");
        ready.hold("spool full");
        assert_eq!(ready.not_ready().as_deref(), Some("starting\nspool full"));
        ready.release("starting");
        assert_eq!(ready.not_ready().as_deref(), Some("spool full"));
        ready.release("spool full");
        assert_eq!(ready.not_ready(), None);
    }
}
