//! Metrics of the accept path and the spool. The delivery side keeps its own
//! ([`crate::outbound::OutboundMetrics`]); all of them go into one registry served on
//! `/metrics` with the `smtpnode_` prefix.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerLabel {
    pub listener: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: &'static str,
}

/// The label set of a family with one unlabelled series, for a gauge that must have no
/// series at all until its value is known (a 0 would read as a real value).
pub type NoLabels = [(&'static str, &'static str); 0];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TaskLabel {
    pub task: &'static str,
}

/// Essential tasks that ended while the node needed them (see [`crate::supervisor`]).
pub fn register_task_failures(registry: &mut Registry) -> Family<TaskLabel, Counter> {
    let failures = Family::default();
    registry.register(
        "task_failures",
        "Essential tasks that failed, panicked or ended while the node ran, by task",
        failures.clone(),
    );
    failures
}

/// Cheap to clone: every field is a shared handle.
#[derive(Clone, Debug)]
pub struct InboundMetrics {
    pub accepted: Family<ListenerLabel, Counter>,
    pub accepted_bytes: Counter,
    /// Refused commands and messages, by reason.
    pub rejected: Family<ReasonLabel, Counter>,
    pub connections: Family<ListenerLabel, Counter>,
    /// Connections turned away at connect time, by limit.
    pub refused_connections: Family<ReasonLabel, Counter>,
    pub active_sessions: Gauge,
    pub tls_handshakes: Family<ResultLabel, Counter>,
    pub certificate_reloads: Family<ResultLabel, Counter>,
    /// The served certificate's notAfter (Unix seconds). A family so that a node without
    /// a certificate (TLS not configured, or its Secret not there yet) exports no series,
    /// rather than a 0 that an expiry alert would read as long expired.
    pub certificate_not_after: Family<NoLabels, Gauge>,
    /// From the end of the message data to the 250 reply: the cost of durability.
    pub accept_latency: Histogram,
}

impl InboundMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            accepted: Family::default(),
            accepted_bytes: Counter::default(),
            rejected: Family::default(),
            connections: Family::default(),
            refused_connections: Family::default(),
            active_sessions: Gauge::default(),
            tls_handshakes: Family::default(),
            certificate_reloads: Family::default(),
            certificate_not_after: Family::default(),
            // 50 µs to ~1.6 s.
            accept_latency: Histogram::new(exponential_buckets(0.00005, 2.0, 16)),
        };
        registry.register(
            "inbound_accepted_messages",
            "Messages accepted (answered 250 after they were durable), by listener",
            metrics.accepted.clone(),
        );
        registry.register(
            "inbound_accepted_bytes",
            "Octets of accepted messages",
            metrics.accepted_bytes.clone(),
        );
        registry.register(
            "inbound_rejected",
            "Refused commands and messages, by reason",
            metrics.rejected.clone(),
        );
        registry.register(
            "inbound_connections",
            "SMTP connections accepted, by listener",
            metrics.connections.clone(),
        );
        registry.register(
            "inbound_refused_connections",
            "Connections turned away at connect time, by limit",
            metrics.refused_connections.clone(),
        );
        registry.register(
            "inbound_active_sessions",
            "SMTP sessions in progress",
            metrics.active_sessions.clone(),
        );
        registry.register(
            "inbound_tls_handshakes",
            "TLS handshakes (STARTTLS and implicit), by result",
            metrics.tls_handshakes.clone(),
        );
        registry.register(
            "tls_certificate_reloads",
            "Listener certificate reloads, by result",
            metrics.certificate_reloads.clone(),
        );
        registry.register(
            "tls_certificate_not_after_seconds",
            "Expiry (notAfter, Unix time) of the listener certificate served now",
            metrics.certificate_not_after.clone(),
        );
        registry.register(
            "inbound_accept_latency_seconds",
            "Time from the end of message data to the 250 reply",
            metrics.accept_latency.clone(),
        );
        metrics
    }

    pub fn reject(&self, reason: &'static str) {
        self.rejected.get_or_create(&ReasonLabel { reason }).inc();
    }

    /// Records the served certificate's expiry, or that none is served.
    pub fn set_certificate_not_after(&self, not_after: Option<i64>) {
        match not_after {
            Some(seconds) => {
                self.certificate_not_after.get_or_create(&[]).set(seconds);
            }
            None => self.certificate_not_after.clear(),
        }
    }
}

/// The spool as a queue.
#[derive(Clone, Debug)]
pub struct SpoolMetrics {
    /// Operations made durable per sync: how well group commit shares fsyncs.
    pub fsync_batch: Histogram,
    pub messages: Gauge,
    pub oldest_message_age_seconds: Gauge,
    /// Messages compaction rewrote at the head of the log.
    pub relocated: Counter,
    /// Space left on the spool's filesystem, for an alert that predicts it running out.
    pub volume_free_bytes: Gauge,
    pub volume_size_bytes: Gauge,
}

impl SpoolMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            fsync_batch: Histogram::new(exponential_buckets(1.0, 2.0, 12)),
            messages: Gauge::default(),
            oldest_message_age_seconds: Gauge::default(),
            relocated: Counter::default(),
            volume_free_bytes: Gauge::default(),
            volume_size_bytes: Gauge::default(),
        };
        registry.register(
            "spool_fsync_batch_size",
            "Spool operations made durable by one fsync",
            metrics.fsync_batch.clone(),
        );
        registry.register(
            "spool_messages",
            "Messages in the spool (queue depth)",
            metrics.messages.clone(),
        );
        registry.register(
            "spool_oldest_message_age_seconds",
            "Age of the oldest message in the spool",
            metrics.oldest_message_age_seconds.clone(),
        );
        registry.register(
            "spool_relocated_messages",
            "Messages compaction rewrote at the head of the spool so that old segments could go",
            metrics.relocated.clone(),
        );
        registry.register(
            "spool_volume_free_bytes",
            "Bytes the spool can still use on its filesystem (statvfs f_bavail)",
            metrics.volume_free_bytes.clone(),
        );
        registry.register(
            "spool_volume_size_bytes",
            "Size of the spool's filesystem in bytes",
            metrics.volume_size_bytes.clone(),
        );
        metrics
    }

    /// Records the spool volume's space; gauges are i64, which holds any real size.
    pub fn set_volume(&self, space: crate::volume::VolumeSpace) {
        self.volume_free_bytes
            .set(i64::try_from(space.free).unwrap_or(i64::MAX));
        self.volume_size_bytes
            .set(i64::try_from(space.size).unwrap_or(i64::MAX));
    }
}

/// The replicated queue (see `docs/replication.md`). `Default` is unregistered: for
/// code driven directly in tests.
#[derive(Clone, Debug)]
pub struct ReplicationMetrics {
    /// Messages this node took over from a holder that left the view.
    pub takeovers: Counter,
    /// Messages given a new copy because a holder left.
    pub rereplicated: Counter,
    /// Pending copies this node wrote before a restart, dropped (no 250 was given).
    pub discarded: Counter,
    /// Copies this node may no longer act on: it left the view after they were written.
    pub stale: Gauge,
    /// Stale copies dropped because the message was done.
    pub stale_dropped: Counter,
    /// Stale copies that no live holder can vouch for: each may be a message's last copy.
    pub orphaned: Gauge,
    /// Held copies dropped because their owner no longer had the message.
    pub leftovers_dropped: Counter,
    /// Held copies with fewer eligible holders than the replication factor.
    pub under_replicated: Gauge,
    /// 1 while this node is fenced.
    pub fenced: Gauge,
    /// The epoch of the pool's view this node has counted its copies under: published
    /// with `under_replicated`, so the two always describe the same view.
    pub view_epoch: Gauge,
    /// How long the owner waited for every holder's acknowledgement, by phase.
    pub ack_seconds: Family<PhaseLabel, Histogram>,
    /// Copies on holders eligible under the owner's view behind each 250.
    pub copies_per_message: Histogram,
}

impl Default for ReplicationMetrics {
    fn default() -> Self {
        Self::register(&mut Registry::default())
    }
}

/// The phase of a replicated write an acknowledgement is for.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabel {
    pub phase: &'static str,
}

fn ack_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0001, 2.0, 16))
}

impl ReplicationMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let sub = registry.sub_registry_with_prefix("replication");
        let m = Self {
            takeovers: Counter::default(),
            rereplicated: Counter::default(),
            discarded: Counter::default(),
            stale: Gauge::default(),
            stale_dropped: Counter::default(),
            orphaned: Gauge::default(),
            leftovers_dropped: Counter::default(),
            under_replicated: Gauge::default(),
            fenced: Gauge::default(),
            view_epoch: Gauge::default(),
            ack_seconds: Family::new_with_constructor(ack_histogram),
            copies_per_message: Histogram::new([1.0, 2.0, 3.0, 4.0, 5.0]),
        };
        sub.register(
            "takeovers",
            "Messages taken over from a holder that left the pool's view",
            m.takeovers.clone(),
        );
        sub.register(
            "rereplicated",
            "Messages given a new copy after a holder left",
            m.rereplicated.clone(),
        );
        sub.register(
            "discarded",
            "Pending copies this node wrote before a restart, dropped (no 250 was given)",
            m.discarded.clone(),
        );
        sub.register(
            "stale_copies",
            "Copies kept on disk that this node may no longer act on (it left the view since)",
            m.stale.clone(),
        );
        sub.register(
            "stale_dropped",
            "Stale copies dropped because a holder that never left no longer has the message",
            m.stale_dropped.clone(),
        );
        sub.register(
            "orphaned_copies",
            "Stale copies no live holder can vouch for: each may be the last copy of a message",
            m.orphaned.clone(),
        );
        sub.register(
            "leftovers_dropped",
            "Held copies dropped because their owner no longer had the message (its removal had not reached this node)",
            m.leftovers_dropped.clone(),
        );
        sub.register(
            "under_replicated_messages",
            "Held messages with fewer eligible holders than the replication factor",
            m.under_replicated.clone(),
        );
        sub.register(
            "fenced",
            "1 while the node cannot renew its Lease: no deliveries, 451 to new mail",
            m.fenced.clone(),
        );
        sub.register(
            "view_epoch",
            "The epoch of the pool's view this node has counted its copies under",
            m.view_epoch.clone(),
        );
        sub.register(
            "ack_seconds",
            "Time the owner waited for every holder's acknowledgement of a message's prepare or commit",
            m.ack_seconds.clone(),
        );
        sub.register(
            "copies_per_message",
            "Copies on holders eligible under the owner's view behind each message answered 250",
            m.copies_per_message.clone(),
        );
        m
    }
}

/// The pool's domain set (see [`crate::domains`]). Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct DomainMetrics {
    /// Builds of the domain set, by result (`ok`, or `failed` when a shard could not be
    /// fetched or read and its previous version stayed in force).
    pub reloads: Family<ResultLabel, Counter>,
    /// Keys refused at load (unparsable, missing, wrong algorithm); the rest still load.
    pub keys_rejected: Counter,
    /// Domains served now.
    pub domains: Gauge,
    /// Domains with a usable signing key now.
    pub keys: Gauge,
}

impl DomainMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        registry.register(
            "domains_reloads",
            "Builds of the pool's domain set, by result",
            metrics.reloads.clone(),
        );
        registry.register(
            "dkim_keys_rejected",
            "DKIM keys refused when the domain set was loaded (the domain keeps its previous key)",
            metrics.keys_rejected.clone(),
        );
        registry.register(
            "domains_served",
            "Sender domains served from the pool's domain set",
            metrics.domains.clone(),
        );
        registry.register(
            "dkim_keys_loaded",
            "Domains of the pool's domain set with a usable DKIM key",
            metrics.keys.clone(),
        );
        metrics
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exposition(registry: &Registry) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, registry).unwrap();
        text
    }

    #[test]
    fn no_certificate_means_no_expiry_series() {
        let mut registry = Registry::with_prefix("smtpnode");
        let metrics = InboundMetrics::register(&mut registry);
        let sample = "\nsmtpnode_tls_certificate_not_after_seconds";
        assert!(!exposition(&registry).contains(sample));
        metrics.set_certificate_not_after(Some(1_900_000_000));
        // An empty label set is written `{}`, which Prometheus reads as no labels.
        assert!(
            exposition(&registry).contains(&format!("{sample}{{}} 1900000000\n")),
            "{}",
            exposition(&registry)
        );
        metrics.set_certificate_not_after(None);
        assert!(!exposition(&registry).contains(sample));
    }

    #[test]
    fn spool_volume_gauges() {
        let mut registry = Registry::with_prefix("smtpnode");
        let metrics = SpoolMetrics::register(&mut registry);
        metrics.set_volume(crate::volume::VolumeSpace {
            free: 1024,
            size: u64::MAX,
        });
        let text = exposition(&registry);
        assert!(
            text.contains("smtpnode_spool_volume_free_bytes 1024\n"),
            "{text}"
        );
        assert!(
            text.contains(&format!("smtpnode_spool_volume_size_bytes {}\n", i64::MAX)),
            "{text}"
        );
    }
}
