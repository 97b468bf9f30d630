//! One delivery worker: one destination, one connection at a time, as many queued
//! messages as the manager hands it.
//!
//! A worker starts with one job, resolves the destination, connects to the first target
//! that answers, and then keeps asking the manager for the destination's next job,
//! reusing the connection. A worker with nothing left to do keeps its connection open for
//! [`IDLE_CONNECTION`] in case more mail for the destination arrives. When the
//! destination cannot be resolved or reached, the same failure applies to every job
//! queued for it, so the worker records it for all of them without touching the network
//! again.
//!
//! Spool consistency: a recipient's state changes only through `Spool::update` after the
//! server's final reply; a bounce is stored before the recipients it reports are marked
//! failed (a crash in between duplicates a bounce but never loses one).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;

use tokio::sync::{Semaphore, mpsc, oneshot, watch};

use super::client::{
    ClientError, ClientSettings, SmtpSession, Transaction, TransactionRecipient,
    canonical_line_endings,
};
use super::metrics::{
    ConnectionResult, ConnectionUse, DkimResult, DsnResult, OutboundMetrics, RecipientResult,
    Route as RouteLabel,
};
use super::mx::{MxResolver, Target};
use super::outcome::{Outcome, reply_line};
use super::queue::{
    Destination, RetryPolicy, recipient_update, unroutable_outcome, wants_failure_report,
};
use super::throttle::RateLimiter;
use crate::dkim::{DkimKeyring, Signing};
use crate::dsn::{self, DsnRecipient};
use crate::replication::Authority;
use crate::spool::{
    BodyType, MessageId, MessageMeta, RecipientState, RecipientUpdate, Spool, now_millis,
};

/// Recipients per transaction: RFC 5321 section 4.5.3.1.8 obliges servers to take 100.
pub const MAX_RECIPIENTS_PER_TRANSACTION: usize = 100;

/// How long a worker with an open connection waits for its destination's next job before
/// it closes the connection, as Postfix's connection cache does
/// (`smtp_connection_cache_time_limit`, 2 s). Under a steady stream of mail most messages
/// then go over a warm connection instead of paying for a connect, greeting and EHLO each.
pub const IDLE_CONNECTION: Duration = Duration::from_secs(2);

/// Where connections go.
#[derive(Clone, Debug)]
pub enum Route {
    Mx { port: u16 },
    Smarthost { host: String, port: u16 },
}

/// Everything workers share; built once by the manager.
pub struct Shared<S> {
    pub spool: Arc<S>,
    /// Decides which messages this node may deliver.
    pub authority: Authority,
    pub route: Route,
    pub resolver: MxResolver,
    pub client: ClientSettings,
    pub retry: RetryPolicy,
    pub dkim: Arc<DkimKeyring>,
    pub metrics: OutboundMetrics,
    pub connections: Arc<Semaphore>,
    pub messages_per_connection: usize,
    /// `Reporting-MTA` of bounces (the EHLO name).
    pub reporting_mta: String,
    pub bounce_from: String,
}

impl<S> Shared<S> {
    fn route_label(&self) -> RouteLabel {
        match self.route {
            Route::Mx { .. } => RouteLabel::Mx,
            Route::Smarthost { .. } => RouteLabel::Smarthost,
        }
    }

    fn port(&self) -> u16 {
        match &self.route {
            Route::Mx { port } | Route::Smarthost { port, .. } => *port,
        }
    }
}

/// Some recipients of one message, all for one destination.
#[derive(Clone, Debug)]
pub struct Job {
    pub id: MessageId,
    pub recipients: Vec<usize>,
}

/// Worker → manager.
#[derive(Debug)]
pub enum Event {
    /// The job's outcomes are in the spool (or it could not be attempted).
    JobDone {
        task: tokio::task::Id,
        id: MessageId,
    },
    /// The worker wants another job for its destination; `None` tells it to stop. With
    /// `wait`, an empty queue parks the request until a job arrives (the worker gives up
    /// after [`IDLE_CONNECTION`]).
    NextJob {
        task: tokio::task::Id,
        destination: Destination,
        reply: oneshot::Sender<Option<Job>>,
        wait: bool,
    },
    /// A new message (a bounce) was stored and needs scheduling.
    Stored { id: MessageId },
}

/// A worker's line to the manager.
pub struct WorkerLink {
    pub destination: Destination,
    pub events: mpsc::UnboundedSender<Event>,
    pub stop: watch::Receiver<bool>,
    pub limiter: Option<Arc<Mutex<RateLimiter>>>,
}

impl WorkerLink {
    fn job_done(&self, id: MessageId) {
        let _ = self.events.send(Event::JobDone {
            task: tokio::task::id(),
            id,
        });
    }

    /// The next job; with `wait`, up to [`IDLE_CONNECTION`] for one to arrive.
    async fn next_job(&self, wait: bool) -> Option<Job> {
        let (reply, mut answer) = oneshot::channel();
        self.events
            .send(Event::NextJob {
                task: tokio::task::id(),
                destination: self.destination.clone(),
                reply,
                wait,
            })
            .ok()?;
        tokio::select! {
            job = &mut answer => job.ok().flatten(),
            () = tokio::time::sleep(IDLE_CONNECTION), if wait => {
                // Closed before looking, so a job the manager hands over from now on
                // comes back to it, and one handed over just before is still taken.
                answer.close();
                answer.try_recv().ok().flatten()
            }
        }
    }

    /// Resolves when the node is stopping.
    async fn stopped(&self) {
        let mut stop = self.stop.clone();
        let _ = stop.wait_for(|stopping| *stopping).await;
    }

    /// Waits for the destination's rate limit; false when the node stops first.
    async fn pace(&self) -> bool {
        let Some(limiter) = &self.limiter else {
            return true;
        };
        loop {
            let wait = match limiter.lock() {
                Ok(mut limiter) => limiter.try_acquire(Instant::now()),
                Err(_) => Ok(()),
            };
            match wait {
                Ok(()) => return true,
                Err(wait) => {
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = self.stopped() => return false,
                    }
                }
            }
        }
    }
}

/// Runs one worker until the manager has no more jobs for its destination.
/// How long after a failed connection the jobs queued for the same destination are
/// failed with its outcome instead of being attempted.
const FAIL_WINDOW: std::time::Duration = std::time::Duration::from_secs(1);

pub async fn run_worker<S: Spool>(shared: Arc<Shared<S>>, link: WorkerLink, first: Job) {
    let resolved = tokio::select! {
        resolved = resolve(&shared, &link.destination) => resolved,
        _ = link.stopped() => { link.job_done(first.id); return; }
    };
    let targets = match resolved {
        Ok(targets) => targets,
        Err(outcome) => {
            if let Some(outcome) = &outcome {
                tracing::info!(destination = %link.destination, reason = %reply_line(outcome.reply()),
                    "destination cannot be resolved");
            }
            fail_all(&shared, &link, first, outcome, None).await;
            return;
        }
    };
    // Only connections count against the total limit; DNS work does not.
    let permit = tokio::select! {
        permit = shared.connections.clone().acquire_owned() => permit.ok(),
        _ = link.stopped() => None,
    };
    let Some(_permit) = permit else {
        link.job_done(first.id);
        return;
    };

    let mut job = Some(first);
    let mut session: Option<(SmtpSession, usize)> = None;
    while let Some(current) = job.take() {
        // Pace before touching the connection, so a long wait ends with the liveness
        // check below rather than with a transaction on a connection the server dropped.
        if !link.pace().await {
            link.job_done(current.id);
            break;
        }
        if let Some((open, _)) = session.as_mut()
            && let Err(err) = open.ready_for_next().await
        {
            tracing::debug!(error = %err, "kept connection no longer usable; reconnecting");
            drop_session(&shared, session.take());
        }
        if session.is_none() {
            match connect_any(&shared, &targets).await {
                Ok(open) => {
                    shared.metrics.active_connections.inc();
                    session = Some((open, 0));
                }
                Err((outcome, host)) => {
                    fail_all(&shared, &link, current, Some(outcome), host).await;
                    return;
                }
            }
        }
        if let Some((open, sent)) = session.as_mut() {
            let use_label = if *sent == 0 {
                ConnectionUse::New
            } else {
                ConnectionUse::Reused
            };
            let healthy = deliver_job(&shared, open, &current, use_label, &link).await;
            *sent += 1;
            if !healthy {
                drop_session(&shared, session.take());
            } else if *sent >= shared.messages_per_connection {
                close_session(&shared, session.take()).await;
            }
        }
        link.job_done(current.id);
        // An idle connection is kept only while the node has connections to spare: a
        // parked worker must not hold the slot another destination waits for.
        let keep = session.is_some() && shared.connections.available_permits() > 0;
        job = link.next_job(keep).await;
    }
    close_session(&shared, session.take()).await;
}

/// The destination's targets. `Err(None)` for unroutable recipients, which fail on their
/// own address rather than on a shared outcome.
async fn resolve<S>(
    shared: &Shared<S>,
    destination: &Destination,
) -> Result<Vec<Target>, Option<Outcome>> {
    match (destination, &shared.route) {
        (Destination::Unroutable, _) => Err(None),
        (Destination::Domain(domain), _) => {
            shared.resolver.resolve_domain(domain).await.map_err(Some)
        }
        (Destination::Smarthost, Route::Smarthost { host, .. }) => {
            shared.resolver.resolve_host(host).await.map_err(Some)
        }
        (Destination::Smarthost, Route::Mx { .. }) => Err(Some(Outcome::Temporary(
            super::outcome::local_reply(451, "4.3.5", "no smarthost is configured"),
        ))),
    }
}

fn drop_session<S>(shared: &Shared<S>, session: Option<(SmtpSession, usize)>) {
    if session.is_some() {
        shared.metrics.active_connections.dec();
    }
}

async fn close_session<S>(shared: &Shared<S>, session: Option<(SmtpSession, usize)>) {
    if let Some((open, _)) = session {
        open.quit().await;
        shared.metrics.active_connections.dec();
    }
}

/// Tries the targets in order. When none works, the failure is temporary unless every
/// target refused the session itself with a 5yz reply.
async fn connect_any<S>(
    shared: &Shared<S>,
    targets: &[Target],
) -> Result<SmtpSession, (Outcome, Option<String>)> {
    let mut last: Option<(ClientError, &Target)> = None;
    let mut all_refused = true;
    for target in targets {
        match SmtpSession::connect(target, shared.port(), &shared.client).await {
            Ok(session) => {
                shared.metrics.connection(if session.is_encrypted() {
                    ConnectionResult::Tls
                } else {
                    ConnectionResult::Plaintext
                });
                tracing::debug!(host = %target.host, addr = %target.addr, tls = session.is_encrypted(), "connected");
                return Ok(session);
            }
            Err(err) => {
                shared.metrics.connection(ConnectionResult::Failed);
                tracing::info!(host = %target.host, addr = %target.addr, error = %err, "connection failed");
                all_refused &= err.is_permanent_refusal();
                last = Some((err, target));
            }
        }
    }
    match last {
        Some((err, target)) => {
            let host = attempt_host(target);
            let outcome = match (all_refused, &err) {
                (true, ClientError::Rejected { reply, .. }) => Outcome::Permanent(reply.clone()),
                _ => err.outcome(&host),
            };
            Err((outcome, Some(host)))
        }
        None => Err((
            Outcome::Temporary(super::outcome::local_reply(
                451,
                "4.4.4",
                "no target to connect to",
            )),
            None,
        )),
    }
}

fn attempt_host(target: &Target) -> String {
    format!("{}[{}]", target.host, target.addr)
}

/// Records one failure for `first` and every job still queued for the destination.
async fn fail_all<S: Spool>(
    shared: &Shared<S>,
    link: &WorkerLink,
    first: Job,
    outcome: Option<Outcome>,
    host: Option<String>,
) {
    // The jobs queued behind the failed one share its fate without another attempt, but
    // only for a moment: under steady traffic the queue never empties, and a worker that
    // kept failing new jobs with an old outcome would never try the destination again.
    let until = tokio::time::Instant::now() + FAIL_WINDOW;
    let mut job = Some(first);
    while let Some(current) = job.take() {
        if let Some(meta) = load_owned(shared, current.id).await {
            let results = undone(&meta, &current.recipients)
                .into_iter()
                .map(|i| {
                    let outcome = outcome.clone().unwrap_or_else(|| {
                        unroutable_outcome(&meta.envelope.recipients[i].address)
                    });
                    (i, outcome)
                })
                .collect();
            record(shared, link, &meta, results, host.clone(), None).await;
        }
        link.job_done(current.id);
        if tokio::time::Instant::now() >= until {
            break;
        }
        job = link.next_job(false).await;
    }
}

/// The job's recipients that are still waiting (another job or an earlier attempt may
/// have finished some since the job was made).
fn undone(meta: &MessageMeta, indices: &[usize]) -> Vec<usize> {
    indices
        .iter()
        .copied()
        .filter(|i| {
            meta.envelope
                .recipients
                .get(*i)
                .is_some_and(|r| !r.state.is_done())
        })
        .collect()
}

/// The message's metadata when it is still queued and this node owns it.
async fn load_owned<S: Spool>(shared: &Shared<S>, id: MessageId) -> Option<MessageMeta> {
    match shared.spool.load_meta(id).await {
        Ok(Some(meta)) if shared.authority.may_deliver(&meta) => Some(meta),
        Ok(Some(_)) => {
            tracing::info!(%id, "message is now owned by another node; not delivering");
            None
        }
        Ok(None) => None,
        Err(err) => {
            tracing::warn!(%id, error = %err, "cannot load queued message");
            None
        }
    }
}

/// Delivers one job over an open session. Returns false when the session broke.
async fn deliver_job<S: Spool>(
    shared: &Shared<S>,
    session: &mut SmtpSession,
    job: &Job,
    first_use: ConnectionUse,
    link: &WorkerLink,
) -> bool {
    let Some(meta) = load_owned(shared, job.id).await else {
        return true;
    };
    let mut pending = undone(&meta, &job.recipients);
    if pending.is_empty() {
        return true;
    }
    let body = match shared.spool.load_body(job.id).await {
        Ok(body) => body,
        Err(err) => {
            tracing::warn!(id = %job.id, error = %err, "cannot load message body");
            return true;
        }
    };
    let message = prepare_message(shared, &meta, &body);
    let host = attempt_host(session.target());

    let mut results = Vec::with_capacity(pending.len());
    let mut healthy = true;
    let mut use_label = first_use;
    while !pending.is_empty() {
        let batch: Vec<usize> = pending
            .drain(..pending.len().min(MAX_RECIPIENTS_PER_TRANSACTION))
            .collect();
        shared.metrics.transaction(use_label.clone());
        let tx = Transaction {
            mail_from: &meta.envelope.mail_from,
            recipients: batch
                .iter()
                .map(|i| {
                    let r = &meta.envelope.recipients[*i];
                    TransactionRecipient {
                        address: &r.address,
                        notify: r.notify,
                        orcpt: r.orcpt.as_deref(),
                    }
                })
                .collect(),
            body_type: meta.envelope.body_type,
            smtputf8: meta.envelope.smtputf8,
            ret: meta.envelope.ret,
            env_id: meta.envelope.env_id.as_deref(),
            message: &message,
        };
        match session.send(&tx).await {
            Ok(outcomes) => {
                // 452 "too many recipients" after progress: send the rest in another
                // transaction right away (RFC 5321 section 4.5.3.1.10).
                let progress = outcomes.iter().any(|o| matches!(o, Outcome::Delivered(_)));
                for (index, outcome) in batch.into_iter().zip(outcomes) {
                    match &outcome {
                        Outcome::Temporary(reply) if progress && reply.code == 452 => {
                            pending.push(index)
                        }
                        _ => results.push((index, outcome)),
                    }
                }
            }
            Err(err) => {
                tracing::info!(id = %job.id, %host, error = %err, "transaction failed");
                let outcome = err.outcome(&host);
                results.extend(
                    batch
                        .iter()
                        .chain(pending.iter())
                        .map(|i| (*i, outcome.clone())),
                );
                healthy = false;
                break;
            }
        }
        // Later transactions of this job run on a connection already used.
        use_label = ConnectionUse::Reused;
        if !pending.is_empty()
            && let Err(err) = session.reset().await
        {
            let outcome = err.outcome(&host);
            results.extend(pending.drain(..).map(|i| (i, outcome.clone())));
            healthy = false;
            break;
        }
    }
    record(shared, link, &meta, results, Some(host), Some(&body)).await;
    healthy
}

/// The bytes to send: canonical line ends, DKIM signatures prepended. Binary MIME is
/// sent byte for byte and never signed (line-based canonicalization does not apply).
fn prepare_message<S>(shared: &Shared<S>, meta: &MessageMeta, body: &[u8]) -> Vec<u8> {
    if meta.envelope.body_type == BodyType::BinaryMime {
        return body.to_vec();
    }
    let canonical = canonical_line_endings(body);
    match shared
        .dkim
        .sign_message(&canonical, &meta.envelope.mail_from)
    {
        Signing::Signed(headers) => {
            shared.metrics.dkim(DkimResult::Signed);
            let mut out = Vec::with_capacity(
                canonical.len() + headers.iter().map(String::len).sum::<usize>(),
            );
            for header in headers {
                out.extend_from_slice(header.as_bytes());
            }
            out.extend_from_slice(&canonical);
            out
        }
        Signing::NoKey => {
            if !shared.dkim.is_empty() {
                shared.metrics.dkim(DkimResult::NoKey);
            }
            canonical.into_owned()
        }
        Signing::Failed(err) => {
            shared.metrics.dkim(DkimResult::Failed);
            tracing::error!(id = %meta.id, error = %err, "DKIM signing failed; sending unsigned");
            canonical.into_owned()
        }
    }
}

/// Writes the outcomes of one attempt: bounce first (for recipients that now fail and
/// want to hear about it), then the recipient states, then removal when all are done.
async fn record<S: Spool>(
    shared: &Shared<S>,
    link: &WorkerLink,
    meta: &MessageMeta,
    results: Vec<(usize, Outcome)>,
    host: Option<String>,
    body: Option<&Bytes>,
) {
    if results.is_empty() {
        return;
    }
    let now = now_millis();
    let mut updates: Vec<RecipientUpdate> = results
        .iter()
        .map(|(index, outcome)| {
            recipient_update(
                *index,
                &meta.envelope.recipients[*index],
                outcome,
                host.clone(),
                now,
                meta.received_at,
                &shared.retry,
            )
        })
        .collect();

    let mut report = Vec::new();
    let mut unreportable = 0;
    for update in &updates {
        if !matches!(update.state, RecipientState::Failed { .. }) {
            continue;
        }
        if meta.envelope.mail_from.is_empty() {
            unreportable += 1;
            continue;
        }
        let mut recipient = meta.envelope.recipients[update.index].clone();
        recipient.state = update.state.clone();
        recipient.attempts.extend(update.attempt.clone());
        if !wants_failure_report(&recipient) {
            shared.metrics.dsn(DsnResult::SuppressedNotify);
            continue;
        }
        report.extend(DsnRecipient::failed(&recipient));
    }
    if unreportable > 0 {
        // RFC 5321 section 4.5.5: a message from the null sender (a bounce) is never
        // bounced, or two failing systems would bounce mail at each other forever.
        tracing::warn!(id = %meta.id, recipients = unreportable,
            "not bouncing a message from the null sender (it was itself a bounce)");
        shared.metrics.dsn(DsnResult::SuppressedNullSender);
    }
    if !report.is_empty() && !queue_bounce(shared, link, meta, &report, body, now).await {
        // Without a stored bounce, the failure must not be final: retry later and try
        // the bounce again then.
        for update in &mut updates {
            if matches!(update.state, RecipientState::Failed { .. }) {
                let failures = meta.envelope.recipients[update.index].attempts.len() + 1;
                update.state = RecipientState::Deferred {
                    until: now + shared.retry.delay_after(failures).as_millis() as u64,
                };
            }
        }
    }

    for update in &updates {
        let recipient = &meta.envelope.recipients[update.index];
        let reply = update
            .attempt
            .as_ref()
            .map(|a| reply_line(&a.reply))
            .unwrap_or_default();
        let relay = host.as_deref().unwrap_or("none");
        let (status, label) = match &update.state {
            RecipientState::Delivered { .. } => ("sent", RecipientResult::Delivered),
            RecipientState::Failed { .. } => ("bounced", RecipientResult::Bounced),
            _ => ("deferred", RecipientResult::Deferred),
        };
        tracing::info!(id = %meta.id, to = %recipient.address, relay, status, "{reply}");
        shared.metrics.delivery.record(
            &meta.envelope.mail_from,
            &recipient.address,
            label.clone(),
            update.attempt.as_ref().map(|a| &a.reply),
        );
        shared.metrics.recipient(label, shared.route_label());
    }

    // When this attempt makes every recipient final, the removal is the message's last
    // record: writing the outcomes first would cost every holder one more synced write
    // for a record deleted right after. A crash before the removal is durable repeats
    // the delivery either way (it is in flight at the failure).
    if finishes(meta, &updates) {
        if let Err(err) = shared.spool.finish(meta.id, updates).await {
            tracing::error!(id = %meta.id, error = %err,
                "cannot remove a finished message; its recipients will be attempted again");
        }
        return;
    }
    match shared.spool.update(meta.id, updates).await {
        Ok(updated) if updated.is_done() => {
            if let Err(err) = shared.spool.remove(meta.id).await {
                tracing::warn!(id = %meta.id, error = %err, "cannot remove finished message");
            }
        }
        Ok(_) => {}
        Err(err) => {
            tracing::error!(id = %meta.id, error = %err,
                "cannot record delivery outcomes; the recipients will be attempted again");
        }
    }
}

/// Whether `updates` leave every recipient of `meta` with a final outcome.
fn finishes(meta: &MessageMeta, updates: &[RecipientUpdate]) -> bool {
    meta.envelope
        .recipients
        .iter()
        .enumerate()
        .all(
            |(index, recipient)| match updates.iter().rev().find(|update| update.index == index) {
                Some(update) => update.state.is_done(),
                None => recipient.state.is_done(),
            },
        )
}

/// Stores a bounce for `recipients` of `meta` (never called for the null sender). True
/// when the bounce is stored.
async fn queue_bounce<S: Spool>(
    shared: &Shared<S>,
    link: &WorkerLink,
    meta: &MessageMeta,
    recipients: &[DsnRecipient],
    body: Option<&Bytes>,
    now: u64,
) -> bool {
    let loaded;
    let original = match body {
        Some(body) => body,
        None => match shared.spool.load_body(meta.id).await {
            Ok(body) => {
                loaded = body;
                &loaded
            }
            Err(err) => {
                tracing::error!(id = %meta.id, error = %err, "cannot load the message to bounce");
                shared.metrics.dsn(DsnResult::Failed);
                return false;
            }
        },
    };
    let id = MessageId::new();
    let token = id.to_string();
    let body = dsn::render(&dsn::Report {
        reporting_mta: &shared.reporting_mta,
        from: &shared.bounce_from,
        to: &meta.envelope.mail_from,
        env_id: meta.envelope.env_id.as_deref(),
        arrival: meta.received_at,
        ret: meta.envelope.ret,
        recipients,
        original,
        now,
        token: &token,
    });
    let Some((bounce, bytes)) = dsn::bounce_message(meta, id, body, now) else {
        return true;
    };
    match shared.spool.store(bounce, bytes).await {
        Ok(()) => {
            tracing::info!(id = %meta.id, bounce = %id, to = %meta.envelope.mail_from, "bounce queued");
            shared.metrics.dsn(DsnResult::Queued);
            let _ = link.events.send(Event::Stored { id });
            true
        }
        Err(err) => {
            tracing::error!(id = %meta.id, error = %err, "cannot store bounce");
            shared.metrics.dsn(DsnResult::Failed);
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbound::test_support::test_meta;
    use crate::spool::Recipient;

    fn update(index: usize, state: RecipientState) -> RecipientUpdate {
        RecipientUpdate {
            index,
            state,
            attempt: None,
        }
    }

    #[test]
    fn a_message_is_finished_only_when_every_recipient_is_final() {
        let mut meta = test_meta(
            "from@example.com",
            vec![
                Recipient::new("a@example.net"),
                Recipient::new("b@example.net"),
            ],
        );
        let delivered = RecipientState::Delivered {
            at: 1,
            reply: crate::spool::Reply {
                code: 250,
                enhanced: Some("2.0.0".into()),
                text: "ok".into(),
            },
        };
        let deferred = RecipientState::Deferred { until: 9 };
        assert!(!finishes(&meta, &[update(0, delivered.clone())]));
        assert!(finishes(
            &meta,
            &[update(0, delivered.clone()), update(1, delivered.clone())]
        ));
        assert!(!finishes(
            &meta,
            &[update(0, delivered.clone()), update(1, deferred)]
        ));
        meta.envelope.recipients[1].state = delivered.clone();
        assert!(
            finishes(&meta, &[update(0, delivered)]),
            "b was final before"
        );
    }
}
