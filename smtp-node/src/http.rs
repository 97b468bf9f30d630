//! `/healthz`, `/readyz` and `/metrics` on their own port.
//!
//! Readiness is false until the spool is recovered and the listeners are bound, and
//! again from the moment the node starts stopping, so a Service stops routing new
//! connections to a node that is about to go away.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

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

/// Called before each scrape to refresh gauges read from their source (queue depth).
pub type Refresh = Arc<dyn Fn() + Send + Sync>;

#[derive(Clone)]
pub struct HttpState {
    registry: Arc<Registry>,
    ready: Arc<AtomicBool>,
    refresh: Refresh,
}

impl HttpState {
    pub fn new(registry: Arc<Registry>, ready: Arc<AtomicBool>, refresh: Refresh) -> Self {
        Self {
            registry,
            ready,
            refresh,
        }
    }
}

pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { (StatusCode::OK, "ok\n") }))
        .route("/readyz", get(readyz))
        .with_state(state)
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
    if state.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ok\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: starting or stopping\n",
        )
            .into_response()
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
