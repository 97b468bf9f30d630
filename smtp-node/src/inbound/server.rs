//! Listeners: accept connections, enforce connection limits, run sessions, and stop
//! cleanly.
//!
//! Limits are checked at accept time, before any SMTP is spoken: a client over a limit
//! gets one `421 4.7.0` line and the connection is closed, so it learns to retry later
//! rather than hang. On shutdown the listeners close first (no new sessions), idle
//! sessions are told 421, and sessions in a transaction get `shutdownTimeout` to finish.
//! An accept loop that dies (it only can by panicking) ends `serve` with an error at
//! once, closing the other listeners, so that the node fails loudly instead of
//! half-listening; the node then tells the sessions 421.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_util::task::TaskTracker;

use super::io::Stream;
use super::session::{Listener, Session, Shared};
use crate::config::ListenerTls;
use crate::metrics::{ListenerLabel, ReasonLabel, ResultLabel};
use crate::spool::Spool;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot listen on {address} ({name}): {source}")]
    Bind {
        name: String,
        address: SocketAddr,
        source: std::io::Error,
    },
    #[error("the accept loop of listener {name} ended: {reason}")]
    AcceptLoop { name: String, reason: String },
}

/// A bound listener, ready to serve.
pub struct Bound {
    pub listener: Listener,
    pub socket: TcpListener,
}

/// Binds every listener before anything is served, so a port problem stops the node at
/// start with the listener's name.
pub async fn bind(listeners: &[crate::config::ListenerConfig]) -> Result<Vec<Bound>, ServerError> {
    let mut bound = Vec::new();
    for l in listeners {
        let socket = TcpListener::bind(l.address)
            .await
            .map_err(|source| ServerError::Bind {
                name: l.name.clone(),
                address: l.address,
                source,
            })?;
        bound.push(Bound {
            listener: Listener {
                name: l.name.clone(),
                tls: l.tls,
                require_auth: l.require_auth,
            },
            socket,
        });
    }
    Ok(bound)
}

/// Connection counts, in total and per client address.
#[derive(Default)]
struct Counts {
    total: usize,
    per_client: HashMap<IpAddr, usize>,
}

#[derive(Clone)]
struct Limiter {
    counts: Arc<Mutex<Counts>>,
    max_total: usize,
    max_per_client: usize,
}

/// Held for the life of a session; gives its slot back when dropped.
struct Slot {
    limiter: Limiter,
    ip: IpAddr,
}

impl Limiter {
    fn lock(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn acquire(&self, ip: IpAddr) -> Result<Slot, &'static str> {
        let mut counts = self.lock();
        if counts.total >= self.max_total {
            return Err("max_connections");
        }
        let mine = counts.per_client.entry(ip).or_default();
        if *mine >= self.max_per_client {
            return Err("max_connections_per_client");
        }
        *mine += 1;
        counts.total += 1;
        Ok(Slot {
            limiter: self.clone(),
            ip,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut counts = self.limiter.lock();
        counts.total = counts.total.saturating_sub(1);
        if let Some(n) = counts.per_client.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                counts.per_client.remove(&self.ip);
            }
        }
    }
}

/// Serves all listeners until `shared.shutdown` is cancelled, then waits for sessions
/// (at most `limits.shutdownTimeout`) and returns.
pub async fn serve<S: Spool>(
    shared: Arc<Shared<S>>,
    listeners: Vec<Bound>,
) -> Result<(), ServerError> {
    let limiter = Limiter {
        counts: Arc::default(),
        max_total: shared.limits.max_connections as usize,
        max_per_client: shared.limits.max_connections_per_client as usize,
    };
    let sessions = TaskTracker::new();
    let mut accept_loops = JoinSet::new();
    let mut names = HashMap::new();
    for bound in listeners {
        let shared = shared.clone();
        let limiter = limiter.clone();
        let sessions = sessions.clone();
        let name = bound.listener.name.clone();
        let handle = accept_loops.spawn(accept_loop(shared, bound, limiter, sessions));
        names.insert(handle.id(), name);
    }
    tokio::select! {
        biased;
        () = shared.shutdown.cancelled() => {}
        // A loop that saw the shutdown first returns too: that is no failure.
        Some(ended) = accept_loops.join_next_with_id(), if !shared.shutdown.is_cancelled() => {
            let (id, reason) = match ended {
                Ok((id, ())) => (id, "returned".to_owned()),
                Err(join) => (join.id(), join.to_string()),
            };
            let name = names.remove(&id).unwrap_or_default();
            return Err(ServerError::AcceptLoop { name, reason });
        }
    }
    // Each loop drops its listening socket as soon as it sees the shutdown; waiting for
    // them all means no connection is greeted after this point.
    while accept_loops.join_next().await.is_some() {}
    sessions.close();
    let open = sessions.len();
    if open > 0 {
        tracing::info!(sessions = open, "waiting for SMTP sessions to finish");
    }
    if tokio::time::timeout(shared.limits.shutdown_timeout, sessions.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            sessions = sessions.len(),
            "sessions still open after limits.shutdownTimeout; closing them (their \
             messages were not acknowledged and the clients will retry)"
        );
    }
    Ok(())
}

async fn accept_loop<S: Spool>(
    shared: Arc<Shared<S>>,
    bound: Bound,
    limiter: Limiter,
    sessions: TaskTracker,
) {
    let Bound { listener, socket } = bound;
    let label = ListenerLabel {
        listener: listener.name.clone(),
    };
    loop {
        let accepted = tokio::select! {
            biased;
            () = shared.shutdown.cancelled() => return,
            accepted = socket.accept() => accepted,
        };
        let (tcp, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                // EMFILE and friends: back off briefly instead of spinning.
                tracing::warn!(listener = %listener.name, %error, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        shared.metrics.connections.get_or_create(&label).inc();
        let slot = match limiter.acquire(peer.ip().to_canonical()) {
            Ok(slot) => slot,
            Err(reason) => {
                shared
                    .metrics
                    .refused_connections
                    .get_or_create(&ReasonLabel { reason })
                    .inc();
                tokio::spawn(turn_away(tcp, reason));
                continue;
            }
        };
        let shared = shared.clone();
        let listener = listener.clone();
        sessions.spawn(async move {
            let _slot = slot;
            shared.metrics.active_sessions.inc();
            run_session(shared.clone(), listener, tcp, peer).await;
            shared.metrics.active_sessions.dec();
        });
    }
}

async fn run_session<S: Spool>(
    shared: Arc<Shared<S>>,
    listener: Listener,
    tcp: TcpStream,
    peer: SocketAddr,
) {
    let stream = match listener.tls {
        ListenerTls::Starttls => Stream::Plain(tcp),
        ListenerTls::Implicit => {
            let Some(certs) = shared.certs.clone() else {
                return;
            };
            let handshake =
                tokio::time::timeout(shared.limits.command_timeout, certs.acceptor().accept(tcp))
                    .await;
            let result = match handshake {
                Ok(Ok(tls)) => Ok(tls),
                _ => Err(()),
            };
            shared
                .metrics
                .tls_handshakes
                .get_or_create(&ResultLabel {
                    result: if result.is_ok() { "ok" } else { "failed" },
                })
                .inc();
            match result {
                Ok(tls) => Stream::Tls(Box::new(tls)),
                Err(()) => return,
            }
        }
    };
    Session::new(shared, listener, stream, peer).run().await;
}

async fn turn_away(mut tcp: TcpStream, reason: &'static str) {
    let text = match reason {
        "max_connections_per_client" => {
            "421 4.7.0 Too many connections from your address, try again later\r\n"
        }
        _ => "421 4.7.0 Too many connections, try again later\r\n",
    };
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        let _ = tcp.write_all(text.as_bytes()).await;
        let _ = tcp.shutdown().await;
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limiter_counts_total_and_per_client_and_releases() {
        let limiter = Limiter {
            counts: Arc::default(),
            max_total: 3,
            max_per_client: 2,
        };
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let a1 = limiter.acquire(a).unwrap();
        let _a2 = limiter.acquire(a).unwrap();
        assert_eq!(limiter.acquire(a).err(), Some("max_connections_per_client"));
        let _b1 = limiter.acquire(b).unwrap();
        assert_eq!(limiter.acquire(b).err(), Some("max_connections"));
        drop(a1);
        assert!(limiter.acquire(b).is_ok());
    }
}
