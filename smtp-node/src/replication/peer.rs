//! Connections from an owner to the holders of its messages.
//!
//! One connection per peer carries every request at once (each frame has an id), so
//! concurrent messages share the replica's group commit instead of queueing behind each
//! other's fsync. A broken connection fails its requests in flight and the next request
//! connects again: the owner's retry policy, not this layer, decides what a failure means.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};

use super::protocol::{self, Frame, IO_BUFFER, ProtocolError, Request, Response};
use super::view::Holder;
use crate::peer_tls::PeerTls;
use crate::spool::NodeId;

/// How long a connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Debug, Clone, thiserror::Error)]
pub enum PeerError {
    #[error("cannot reach {node} at {address}: {reason}")]
    Unreachable {
        node: String,
        address: String,
        reason: String,
    },
    #[error("{node} did not answer within {timeout:?}")]
    Timeout { node: String, timeout: Duration },
    #[error("{node} refused: {reason}")]
    Refused { node: String, reason: String },
    #[error("connection to {node} broke: {reason}")]
    Broken { node: String, reason: String },
}

trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

type Pending = oneshot::Sender<Result<Response, PeerError>>;

struct Link {
    address: String,
    requests: mpsc::UnboundedSender<(Request, Pending)>,
}

/// The connections of one node to its peers.
pub struct Peers {
    me: Holder,
    tls: Option<Arc<PeerTls>>,
    links: Mutex<HashMap<NodeId, Link>>,
}

impl Peers {
    pub fn new(me: Holder, tls: Option<Arc<PeerTls>>) -> Arc<Self> {
        Arc::new(Self {
            me,
            tls,
            links: Mutex::new(HashMap::new()),
        })
    }

    /// Sends `request` to `node` at `address` and waits up to `timeout` for its answer.
    /// A refusal is an error carrying the holder's reason.
    pub async fn call(
        &self,
        node: &NodeId,
        address: &str,
        request: Request,
        timeout: Duration,
    ) -> Result<(), PeerError> {
        let (tx, rx) = oneshot::channel();
        self.link(node, address)
            .send((request, tx))
            .map_err(|_| PeerError::Broken {
                node: node.0.clone(),
                reason: "connection task ended".into(),
            })?;
        match tokio::time::timeout(timeout, rx).await {
            Err(_) => Err(PeerError::Timeout {
                node: node.0.clone(),
                timeout,
            }),
            Ok(Err(_)) => Err(PeerError::Broken {
                node: node.0.clone(),
                reason: "connection closed".into(),
            }),
            Ok(Ok(Err(e))) => Err(e),
            Ok(Ok(Ok(Response::Ok))) => Ok(()),
            Ok(Ok(Ok(Response::Refused(reason)))) => Err(PeerError::Refused {
                node: node.0.clone(),
                reason,
            }),
        }
    }

    /// Whether `holder` (that node as that incarnation) still holds message `id`.
    pub async fn holds(
        &self,
        holder: &Holder,
        address: &str,
        id: crate::spool::MessageId,
        timeout: Duration,
    ) -> Result<bool, PeerError> {
        let request = Request::Holds {
            id,
            of: holder.clone(),
        };
        match self.call(&holder.node, address, request, timeout).await {
            Ok(()) => Ok(true),
            Err(PeerError::Refused { reason, .. }) if reason == super::protocol::NOT_HELD => {
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    /// The live link to `node`, started afresh when there is none, its task ended, or the
    /// peer moved to another address.
    fn link(&self, node: &NodeId, address: &str) -> mpsc::UnboundedSender<(Request, Pending)> {
        let mut links = match self.links.lock() {
            Ok(links) => links,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some(link) = links.get(node)
            && link.address == address
            && !link.requests.is_closed()
        {
            return link.requests.clone();
        }
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run_link(
            self.me.clone(),
            node.clone(),
            address.to_owned(),
            self.tls.clone(),
            rx,
        ));
        links.insert(
            node.clone(),
            Link {
                address: address.to_owned(),
                requests: tx.clone(),
            },
        );
        tx
    }
}

async fn connect(
    node: &NodeId,
    address: &str,
    tls: Option<Arc<PeerTls>>,
) -> Result<Box<dyn Stream>, String> {
    let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(address))
        .await
        .map_err(|_| format!("no connection within {CONNECT_TIMEOUT:?}"))?
        .map_err(|e| e.to_string())?;
    let _ = tcp.set_nodelay(true);
    let Some(tls) = tls else {
        return Ok(Box::new(tcp));
    };
    // The peer's certificate names the node: a pod that took over another's address
    // cannot pass for it.
    let name = rustls_pki_types::ServerName::try_from(node.0.clone()).map_err(|e| e.to_string())?;
    let stream = tokio_rustls::TlsConnector::from(tls.client_config())
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    Ok(Box::new(stream))
}

/// Owns one connection: writes requests as they come, matches answers to them by id.
async fn run_link(
    me: Holder,
    node: NodeId,
    address: String,
    tls: Option<Arc<PeerTls>>,
    mut requests: mpsc::UnboundedReceiver<(Request, Pending)>,
) {
    let fail_all = |pending: &mut HashMap<u64, Pending>, error: PeerError| {
        for (_, tx) in pending.drain() {
            let _ = tx.send(Err(error.clone()));
        }
    };
    let stream = match connect(&node, &address, tls).await {
        Ok(stream) => stream,
        Err(reason) => {
            let error = PeerError::Unreachable {
                node: node.0.clone(),
                address: address.clone(),
                reason,
            };
            tracing::debug!(%error, "peer unreachable");
            requests.close();
            while let Some((_, tx)) = requests.recv().await {
                let _ = tx.send(Err(error.clone()));
            }
            return;
        }
    };
    let (reader, writer) = tokio::io::split(stream);
    // Buffered both ways: under load many frames share one read and one write syscall.
    let mut reader = BufReader::with_capacity(IO_BUFFER, reader);
    let mut writer = BufWriter::with_capacity(IO_BUFFER, writer);
    let mut pending: HashMap<u64, Pending> = HashMap::new();
    let mut next_id: u64 = 1;
    let broken = |reason: String| PeerError::Broken {
        node: node.0.clone(),
        reason,
    };
    let hello = match protocol::encode_request(0, &Request::Hello { from: me }) {
        Ok(frame) => frame,
        Err(e) => {
            fail_all(&mut pending, broken(e.to_string()));
            return;
        }
    };
    let said_hello = match protocol::write_frame(&mut writer, &hello).await {
        Ok(()) => writer.flush().await.map_err(ProtocolError::from),
        Err(e) => Err(e),
    };
    if let Err(e) = said_hello {
        tracing::debug!(peer = %node, error = %e, "peer hello failed");
        requests.close();
        return;
    }
    let (frames_tx, mut frames) = mpsc::channel::<Result<Option<Frame>, ProtocolError>>(64);
    let read_task = tokio::spawn(async move {
        loop {
            let frame = protocol::read_frame(&mut reader).await;
            let end = !matches!(frame, Ok(Some(_)));
            if frames_tx.send(frame).await.is_err() || end {
                return;
            }
        }
    });
    loop {
        tokio::select! {
            request = requests.recv() => {
                let Some(first) = request else { break };
                // Everything asked for meanwhile goes out with it, in one flush.
                let mut next = Some(first);
                let mut written = Ok(());
                while let Some((request, tx)) = next.take() {
                    let id = next_id;
                    next_id += 1;
                    match protocol::encode_request(id, &request) {
                        Ok(frame) => {
                            pending.insert(id, tx);
                            written = protocol::write_frame(&mut writer, &frame).await;
                            if written.is_err() {
                                break;
                            }
                        }
                        Err(e) => {
                            let _ = tx.send(Err(broken(e.to_string())));
                        }
                    }
                    next = requests.try_recv().ok();
                }
                if written.is_ok() {
                    written = writer.flush().await.map_err(ProtocolError::from);
                }
                if let Err(e) = written {
                    fail_all(&mut pending, broken(e.to_string()));
                    break;
                }
            }
            frame = frames.recv() => match frame {
                Some(Ok(Some(Frame::Response(id, response)))) => {
                    if let Some(tx) = pending.remove(&id) {
                        let _ = tx.send(Ok(response));
                    }
                }
                Some(Ok(Some(Frame::Request(..)))) => {
                    fail_all(&mut pending, broken("peer sent a request on our connection".into()));
                    break;
                }
                Some(Err(e)) => {
                    fail_all(&mut pending, broken(e.to_string()));
                    break;
                }
                Some(Ok(None)) | None => {
                    fail_all(&mut pending, broken("peer closed the connection".into()));
                    break;
                }
            }
        }
    }
    read_task.abort();
    requests.close();
    while let Ok((_, tx)) = requests.try_recv() {
        let _ = tx.send(Err(broken("connection closed".into())));
    }
}
