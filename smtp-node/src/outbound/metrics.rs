//! Delivery metrics, registered into the node's registry (the HTTP side owns it).
//!
//! Names are unprefixed (`outbound_…`); pass a prefixed sub-registry to namespace them.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::deliverability::DeliveryLedger;

#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub enum RecipientResult {
    Delivered,
    Deferred,
    Bounced,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub enum Route {
    Mx,
    Smarthost,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RecipientLabels {
    pub result: RecipientResult,
    pub route: Route,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub enum DsnResult {
    /// A bounce was stored for delivery to the sender.
    Queued,
    /// The failed message came from the null sender (it was itself a bounce).
    SuppressedNullSender,
    /// The recipients asked for no failure report (NOTIFY).
    SuppressedNotify,
    /// Storing the bounce failed.
    Failed,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DsnLabels {
    pub result: DsnResult,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub enum ConnectionResult {
    Tls,
    Plaintext,
    Failed,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConnectionLabels {
    pub result: ConnectionResult,
}

/// How an attempt at TLS towards a receiving server ended. Counted only where the TLS
/// policy asks for TLS (not with smarthost `tls: none`), once per attempt: an
/// opportunistic connection whose handshake failed counts `Failed` and then goes on in
/// plaintext without counting again.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum TlsResult {
    /// The handshake completed (STARTTLS or implicit TLS).
    Ok,
    /// The handshake failed (including a certificate that did not verify), or the
    /// server offered STARTTLS and then refused it.
    Failed,
    /// The server did not offer STARTTLS.
    NotOffered,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TlsLabels {
    pub result: TlsResult,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub enum ConnectionUse {
    /// First transaction on a connection.
    New,
    /// A later transaction on a kept-open connection.
    Reused,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TransactionLabels {
    pub connection: ConnectionUse,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub enum DkimResult {
    Signed,
    /// No key for the sender's domain.
    NoKey,
    Failed,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DkimLabels {
    pub result: DkimResult,
}

/// Label values in Prometheus' snake_case rather than Rust's variant names.
macro_rules! label_values {
    ($ty:ident { $($variant:ident => $text:literal),* $(,)? }) => {
        impl EncodeLabelValue for $ty {
            fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
                let text = match self {
                    $($ty::$variant => $text,)*
                };
                EncodeLabelValue::encode(&text, encoder)
            }
        }
    };
}

label_values!(RecipientResult { Delivered => "delivered", Deferred => "deferred", Bounced => "bounced" });
label_values!(Route { Mx => "mx", Smarthost => "smarthost" });
label_values!(DsnResult {
    Queued => "queued",
    SuppressedNullSender => "suppressed_null_sender",
    SuppressedNotify => "suppressed_notify",
    Failed => "failed",
});
label_values!(ConnectionResult { Tls => "tls", Plaintext => "plaintext", Failed => "failed" });
label_values!(TlsResult { Ok => "ok", Failed => "failed", NotOffered => "not_offered" });
label_values!(ConnectionUse { New => "new", Reused => "reused" });
label_values!(DkimResult { Signed => "signed", NoKey => "no_key", Failed => "failed" });

/// Cheap to clone: every field is a shared handle.
#[derive(Clone, Debug, Default)]
pub struct OutboundMetrics {
    pub recipients: Family<RecipientLabels, Counter>,
    pub dsn: Family<DsnLabels, Counter>,
    pub connections: Family<ConnectionLabels, Counter>,
    /// TLS attempts by result: handshake failures apart from connection failures, which
    /// `connections` cannot tell (an opportunistic connection falls back to plaintext).
    pub tls: Family<TlsLabels, Counter>,
    pub transactions: Family<TransactionLabels, Counter>,
    pub dkim: Family<DkimLabels, Counter>,
    pub active_connections: Gauge,
    /// Messages this node is responsible for delivering (scheduled or in flight).
    pub queued_messages: Gauge,
    /// The same recipient results per served sender domain, for `GET /admin/delivery`.
    pub delivery: DeliveryLedger,
}

impl OutboundMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            delivery: DeliveryLedger::register(registry),
            ..Self::default()
        };
        registry.register(
            "outbound_recipients",
            "Recipient delivery attempts by result",
            metrics.recipients.clone(),
        );
        registry.register(
            "outbound_dsn",
            "Delivery status notifications by result",
            metrics.dsn.clone(),
        );
        registry.register(
            "outbound_connections",
            "Outbound SMTP connections opened, by TLS state or failure",
            metrics.connections.clone(),
        );
        registry.register(
            "outbound_tls",
            "TLS attempts towards receiving servers, by result (ok, failed, not_offered)",
            metrics.tls.clone(),
        );
        registry.register(
            "outbound_transactions",
            "Mail transactions, on new or reused connections",
            metrics.transactions.clone(),
        );
        registry.register(
            "outbound_dkim_signatures",
            "DKIM signing at delivery time, by result",
            metrics.dkim.clone(),
        );
        registry.register(
            "outbound_active_connections",
            "Open outbound SMTP connections",
            metrics.active_connections.clone(),
        );
        registry.register(
            "outbound_queued_messages",
            "Messages queued for delivery by this node",
            metrics.queued_messages.clone(),
        );
        metrics
    }

    pub fn recipient(&self, result: RecipientResult, route: Route) {
        self.recipients
            .get_or_create(&RecipientLabels { result, route })
            .inc();
    }

    pub fn dsn(&self, result: DsnResult) {
        self.dsn.get_or_create(&DsnLabels { result }).inc();
    }

    pub fn connection(&self, result: ConnectionResult) {
        self.connections
            .get_or_create(&ConnectionLabels { result })
            .inc();
    }

    pub fn tls(&self, result: TlsResult) {
        self.tls.get_or_create(&TlsLabels { result }).inc();
    }

    pub fn transaction(&self, connection: ConnectionUse) {
        self.transactions
            .get_or_create(&TransactionLabels { connection })
            .inc();
    }

    pub fn dkim(&self, result: DkimResult) {
        self.dkim.get_or_create(&DkimLabels { result }).inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registered_metrics_are_exposed() {
        let mut registry = Registry::default();
        let metrics = OutboundMetrics::register(registry.sub_registry_with_prefix("smtp"));
        metrics.recipient(RecipientResult::Delivered, Route::Mx);
        metrics.dsn(DsnResult::SuppressedNullSender);
        metrics.tls(TlsResult::NotOffered);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(
            text.contains("smtp_outbound_recipients_total{result=\"delivered\",route=\"mx\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("smtp_outbound_dsn_total{result=\"suppressed_null_sender\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("smtp_outbound_tls_total{result=\"not_offered\"} 1"),
            "{text}"
        );
    }
}
