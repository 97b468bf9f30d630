//! The peer listener: where owners put copies of their messages on this node.
//!
//! Requests on one connection are handled concurrently, so a burst of prepares from an
//! owner lands in one group commit of the local spool. A holder refuses what would take
//! it backwards: a copy for another incarnation of this node (this disk is not the one
//! the owner thinks), or an ownership record older than the one it has. It also refuses
//! to hold a copy that would not count (`View::may_hold`): while it is fenced, or when it
//! left the view after the copy's epoch. The owner's view may lag behind the arbiter's,
//! so the owner alone cannot tell; the holder can, because it is fenced until it has read
//! the view that let it in again.
//!
//! A node its view has leaving takes no new copies: its drain is done once nothing on
//! it is needed, and a copy taken after that would be needed again. [`Intake`] tells the
//! drain when no copy accepted before is still on its way to disk.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::Standing;
use super::protocol::{self, Frame, Request, Response};
use super::store::ownership;
use super::view::{Copy, Holder, View};
use crate::peer_tls::PeerTls;
use crate::spool::{Spool, SpoolError};

#[derive(Debug, thiserror::Error)]
pub enum PeerServerError {
    #[error("cannot listen for peers on {address}: {source}")]
    Bind {
        address: String,
        source: std::io::Error,
    },
    #[error("peer listener failed: {0}")]
    Accept(std::io::Error),
}

pub async fn bind(address: &str) -> Result<TcpListener, PeerServerError> {
    TcpListener::bind(address)
        .await
        .map_err(|source| PeerServerError::Bind {
            address: address.to_owned(),
            source,
        })
}

/// New copies (prepares) being taken in right now.
#[derive(Debug, Default)]
pub struct Intake {
    taking: AtomicUsize,
}

impl Intake {
    /// How many prepares are between their check and their write. Read after a view
    /// that has this node leaving: a zero then means every copy let in before it is on
    /// disk, and every later one is refused.
    pub fn arriving(&self) -> usize {
        self.taking.load(Ordering::SeqCst)
    }

    fn enter(&self) -> Taking<'_> {
        self.taking.fetch_add(1, Ordering::SeqCst);
        Taking(self)
    }
}

/// One prepare in [`Intake`], until dropped.
struct Taking<'a>(&'a Intake);

impl Drop for Taking<'_> {
    fn drop(&mut self) {
        self.0.taking.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Serves peers until `shutdown`. Only an error of the listener itself ends it early.
pub async fn serve<S: Spool>(
    listener: TcpListener,
    spool: Arc<S>,
    me: Holder,
    standing: watch::Receiver<Standing>,
    intake: Arc<Intake>,
    tls: Option<Arc<PeerTls>>,
    shutdown: CancellationToken,
) -> Result<(), PeerServerError> {
    let me = Arc::new(Holding {
        me,
        standing,
        intake,
    });
    loop {
        let (tcp, remote) = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                // A peer that resets during accept is its problem; the listener goes on.
                Err(e) if is_per_connection(&e) => continue,
                Err(e) => return Err(PeerServerError::Accept(e)),
            },
        };
        let _ = tcp.set_nodelay(true);
        let spool = spool.clone();
        let me = me.clone();
        let tls = tls.clone();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            let result = match tls {
                Some(tls) => {
                    match tokio_rustls::TlsAcceptor::from(tls.server_config())
                        .accept(tcp)
                        .await
                    {
                        Ok(stream) => serve_connection(stream, spool, me, stop).await,
                        Err(e) => Err(e.to_string()),
                    }
                }
                None => serve_connection(tcp, spool, me, stop).await,
            };
            if let Err(reason) = result {
                tracing::debug!(%remote, %reason, "peer connection ended");
            }
        });
    }
}

fn is_per_connection(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(e.kind(), ConnectionAborted | ConnectionReset | Interrupted)
}

/// Who this node is and what it knows of its standing: what a request is checked against.
struct Holding {
    me: Holder,
    standing: watch::Receiver<Standing>,
    intake: Arc<Intake>,
}

impl Holding {
    fn check(&self, copy: &Copy) -> Result<(), String> {
        check_may_hold(&self.standing.borrow(), Instant::now(), &self.me, copy)
    }

    /// `check`, for a copy new here: also refused while this node is leaving.
    fn check_new(&self, copy: &Copy) -> Result<(), String> {
        let standing = self.standing.borrow();
        check_may_hold(&standing, Instant::now(), &self.me, copy)?;
        check_takes_new(standing.view.as_ref(), &self.me)
    }
}

async fn serve_connection<T, S>(
    stream: T,
    spool: Arc<S>,
    me: Arc<Holding>,
    shutdown: CancellationToken,
) -> Result<(), String>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    S: Spool,
{
    let (reader, writer) = tokio::io::split(stream);
    // Buffered both ways: under load many frames share one read and one write syscall.
    let mut reader = tokio::io::BufReader::with_capacity(protocol::IO_BUFFER, reader);
    let mut writer = tokio::io::BufWriter::with_capacity(protocol::IO_BUFFER, writer);
    let peer = match protocol::read_frame(&mut reader).await {
        Ok(Some(Frame::Request(_, Request::Hello { from }))) => from,
        Ok(_) => return Err("the first frame was not a hello".into()),
        Err(e) => return Err(e.to_string()),
    };
    let (answers_tx, mut answers) = mpsc::unbounded_channel::<bytes::Bytes>();
    let write_task = tokio::spawn(async move {
        while let Some(frame) = answers.recv().await {
            let mut next = Some(frame);
            while let Some(frame) = next.take() {
                if protocol::write_frame(&mut writer, &frame).await.is_err() {
                    return;
                }
                next = answers.try_recv().ok();
            }
            if tokio::io::AsyncWriteExt::flush(&mut writer).await.is_err() {
                return;
            }
        }
    });
    let result = loop {
        let frame = tokio::select! {
            _ = shutdown.cancelled() => break Ok(()),
            frame = protocol::read_frame(&mut reader) => frame,
        };
        match frame {
            Ok(Some(Frame::Request(id, request))) => {
                let spool = spool.clone();
                let me = me.clone();
                let answers = answers_tx.clone();
                let from = peer.node.clone();
                tokio::spawn(async move {
                    let response = match handle(&*spool, &me, request).await {
                        Ok(()) => Response::Ok,
                        Err(reason) => {
                            tracing::debug!(peer = %from, %reason, "refused a peer request");
                            Response::Refused(reason)
                        }
                    };
                    let _ = answers.send(protocol::encode_response(id, &response));
                });
            }
            Ok(Some(Frame::Response(..))) => break Err("peer sent a response unasked".into()),
            Ok(None) => break Ok(()),
            Err(e) => break Err(e.to_string()),
        }
    };
    drop(answers_tx);
    let _ = write_task.await;
    result
}

/// Why this node refuses to hold `copy` (or to take it as a new record), if it does.
pub fn check_may_hold(
    standing: &Standing,
    now: Instant,
    me: &Holder,
    copy: &Copy,
) -> Result<(), String> {
    let Some(view) = standing.usable_view_at(now) else {
        return Err(
            "this node is fenced (its Lease is not renewed), so a copy here would not count".into(),
        );
    };
    if view.may_hold(me, copy) {
        Ok(())
    } else {
        Err(format!(
            "this node ({} incarnation {}) is not an eligible holder of a copy written at \
             epoch {} under view epoch {}: it is not named, or it left the view since",
            me.node, me.incarnation, copy.epoch, view.epoch
        ))
    }
}

/// Why this node refuses a new copy, if it does: its view has it leaving.
pub fn check_takes_new(view: Option<&View>, me: &Holder) -> Result<(), String> {
    if view.is_some_and(|v| v.is_leaving(&me.node)) {
        Err(format!(
            "this node ({}) is draining: it takes no new copies",
            me.node
        ))
    } else {
        Ok(())
    }
}

/// Why a holder refuses an ownership record, if it does.
pub fn check_newer(mine: Option<&Copy>, theirs: &Copy) -> Result<(), String> {
    match mine {
        Some(mine) if mine.epoch > theirs.epoch => Err(format!(
            "stale ownership record: epoch {} is older than this holder's {}",
            theirs.epoch, mine.epoch
        )),
        _ => Ok(()),
    }
}

async fn handle<S: Spool>(spool: &S, me: &Holding, request: Request) -> Result<(), String> {
    let text = |e: SpoolError| e.to_string();
    match request {
        Request::Hello { .. } => Err("hello sent twice".into()),
        Request::Prepare { meta, body } => {
            let Some(copy) = meta.ownership.copy.as_ref() else {
                return Err("a copy without an ownership record".into());
            };
            let _taking = me.intake.enter();
            me.check_new(copy)?;
            if let Some(existing) = spool.load_meta(meta.id).await.map_err(text)? {
                check_newer(existing.ownership.copy.as_ref(), copy)?;
            }
            spool
                .store(*meta, body)
                .await
                .map_err(|e| format!("{}{e}", protocol::WRITE_FAILED))
        }
        Request::Commit { copies } => {
            // Written without a sync of their own (see `Spool::commit_copy`). Each is
            // checked on its own; the owner only logs what was refused.
            let commits = copies.into_iter().map(|(id, copy)| async move {
                me.check(&copy)?;
                let existing =
                    spool.load_meta(id).await.map_err(text)?.ok_or_else(|| {
                        format!("message {id} is not here (done, or never prepared)")
                    })?;
                check_newer(existing.ownership.copy.as_ref(), &copy)?;
                spool.commit_copy(id, ownership(copy)).await.map_err(text)
            });
            let refused: Vec<String> = futures::future::join_all(commits)
                .await
                .into_iter()
                .filter_map(Result::err)
                .collect();
            if refused.is_empty() {
                Ok(())
            } else {
                Err(refused.join("; "))
            }
        }
        Request::Abort { id } => match spool.load_meta(id).await.map_err(text)? {
            Some(existing)
                if existing
                    .ownership
                    .copy
                    .as_ref()
                    .is_some_and(|c| !c.committed) =>
            {
                spool.remove(id).await.map_err(text)
            }
            Some(_) => Err(format!("message {id} is committed here; not dropping it")),
            None => Ok(()),
        },
        Request::Update { id, updates, copy } => {
            let existing = spool
                .load_meta(id)
                .await
                .map_err(text)?
                .ok_or_else(|| format!("message {id} is not held here"))?;
            if let Some(copy) = &copy {
                me.check(copy)?;
                check_newer(existing.ownership.copy.as_ref(), copy)?;
            }
            if updates
                .iter()
                .any(|u| u.index >= existing.envelope.recipients.len())
            {
                return Err("a recipient update names no recipient of the message".into());
            }
            if !updates.is_empty() {
                spool.update(id, updates).await.map_err(text)?;
            }
            if let Some(copy) = copy {
                spool
                    .set_ownership(id, ownership(copy))
                    .await
                    .map_err(text)?;
            }
            Ok(())
        }
        Request::Holds { of, .. } if of != me.me => Err(format!(
            "asked as {} incarnation {}, but this is incarnation {}: it cannot say what \
             that one held",
            of.node, of.incarnation, me.me.incarnation
        )),
        Request::Holds { id, .. } => match spool.load_meta(id).await.map_err(text)? {
            Some(_) => Ok(()),
            None => Err(protocol::NOT_HELD.into()),
        },
        Request::Remove { ids } => {
            // Side by side, so the whole batch shares the spool's next sync.
            let removed = futures::future::join_all(ids.into_iter().map(|id| spool.remove(id)));
            match removed
                .await
                .into_iter()
                .find(|r| !matches!(r, Ok(()) | Err(SpoolError::NotFound(_))))
            {
                Some(Err(e)) => Err(e.to_string()),
                _ => Ok(()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replication::view::Incarnation;
    use crate::spool::NodeId;

    fn copy(epoch: u64) -> Copy {
        Copy {
            holders: vec![Holder {
                node: NodeId("a".into()),
                incarnation: Incarnation::new(),
            }],
            epoch,
            committed: true,
        }
    }

    #[test]
    fn a_leaving_node_takes_no_new_copies() {
        let a = copy(1).holders[0].clone();
        let view = View::default()
            .join(&a, "west", "127.0.0.1:1")
            .expect("joins");
        assert!(check_takes_new(Some(&view), &a).is_ok());
        assert!(
            check_takes_new(None, &a).is_ok(),
            "fencing is checked apart"
        );
        let leaving = view.mark_leaving(&a, true).expect("a member");
        let refused = check_takes_new(Some(&leaving), &a).expect_err("leaving");
        assert!(refused.contains("draining"), "{refused}");
    }

    #[test]
    fn an_older_record_is_refused_and_an_equal_or_newer_one_taken() {
        assert!(check_newer(Some(&copy(5)), &copy(4)).is_err());
        assert!(check_newer(Some(&copy(5)), &copy(5)).is_ok());
        assert!(check_newer(Some(&copy(5)), &copy(6)).is_ok());
        assert!(check_newer(None, &copy(1)).is_ok());
    }
}
