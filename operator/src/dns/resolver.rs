//! The only part of the DNS checks that talks to the network.
//!
//! Every lookup waits for the shared [`QueryLimiter`], bypasses the resolver's cache (the
//! checker wants what DNS says now; the schedule already respects TTLs), is bounded in
//! time, and turns the answer into an [`Answer`]: NXDOMAIN and empty answers become
//! `NoRecords` (→ Missing), timeouts, SERVFAIL, REFUSED and network errors become
//! `Failed` with the resolver's words (→ Error).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError, NetError};
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::{RData, RecordType};

use super::compare::{Answer, MxHost, Outcome};
use super::limiter::QueryLimiter;
use super::normalize_name;

#[derive(Debug, thiserror::Error)]
pub enum ResolverError {
    #[error("reading the system resolver configuration failed: {0}")]
    SystemConfig(String),
    #[error("building the resolver failed: {0}")]
    Build(String),
}

/// Timeouts and retries. Defaults keep one check of a domain well under a minute even
/// when every nameserver is silent.
#[derive(Debug, Clone)]
pub struct ResolverSettings {
    /// Per attempt, per nameserver.
    pub timeout: Duration,
    /// Attempts per query (hickory's `attempts`).
    pub attempts: usize,
    /// Upper bound for one lookup, whatever the resolver does internally.
    pub overall_timeout: Duration,
}

impl Default for ResolverSettings {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(3),
            attempts: 2,
            overall_timeout: Duration::from_secs(10),
        }
    }
}

/// A resolver for the DNS checks; cheap to clone, shared by all MailDomains.
#[derive(Clone)]
pub struct DnsResolver {
    inner: TokioResolver,
    limiter: Arc<QueryLimiter>,
    overall_timeout: Duration,
}

impl std::fmt::Debug for DnsResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DnsResolver")
            .field("limiter", &self.limiter)
            .finish_non_exhaustive()
    }
}

impl DnsResolver {
    /// Asks `nameservers` (UDP, then TCP for truncated answers) or, when the list is
    /// empty, the system's resolvers (`/etc/resolv.conf`; in a pod, the cluster DNS).
    pub fn new(
        nameservers: &[SocketAddr],
        settings: &ResolverSettings,
        limiter: Arc<QueryLimiter>,
    ) -> Result<Self, ResolverError> {
        let provider = TokioRuntimeProvider::default();
        let mut builder = if nameservers.is_empty() {
            TokioResolver::builder(provider)
                .map_err(|e| ResolverError::SystemConfig(e.to_string()))?
        } else {
            let servers = nameservers
                .iter()
                .map(|addr| {
                    let mut ns = NameServerConfig::udp_and_tcp(addr.ip());
                    for conn in &mut ns.connections {
                        conn.port = addr.port();
                    }
                    ns
                })
                .collect();
            TokioResolver::builder_with_config(ResolverConfig::from_name_servers(servers), provider)
        };
        let opts: &mut ResolverOpts = builder.options_mut();
        opts.timeout = settings.timeout;
        opts.attempts = settings.attempts;
        // Names are always absolute; never try search domains.
        opts.ndots = 0;
        opts.preserve_intermediates = true;
        opts.try_tcp_on_error = true;
        let inner = builder
            .build()
            .map_err(|e| ResolverError::Build(e.to_string()))?;
        Ok(Self {
            inner,
            limiter,
            overall_timeout: settings.overall_timeout,
        })
    }

    pub fn limiter(&self) -> &Arc<QueryLimiter> {
        &self.limiter
    }

    /// TXT records at `name`, each record's strings joined (as SPF, DKIM and DMARC
    /// receivers do).
    pub async fn txt(&self, name: &str) -> Answer {
        self.lookup(name, RecordType::TXT).await
    }

    pub async fn mx(&self, name: &str) -> Answer {
        self.lookup(name, RecordType::MX).await
    }

    async fn lookup(&self, name: &str, rtype: RecordType) -> Answer {
        let fqdn = format!("{}.", normalize_name(name));
        self.limiter.acquire().await;
        self.inner.clear_lookup_cache(fqdn.as_str(), rtype);
        let result = tokio::time::timeout(
            self.overall_timeout,
            self.inner.lookup(fqdn.as_str(), rtype),
        )
        .await;
        let answer = match result {
            Err(_) => Answer::new(
                Outcome::Failed(format!(
                    "no answer within {}s",
                    self.overall_timeout.as_secs_f32()
                )),
                None,
            ),
            Ok(Ok(lookup)) => {
                let relevant: Vec<_> = lookup
                    .answers()
                    .iter()
                    .filter(|r| r.record_type() == rtype)
                    .collect();
                let ttl = lookup.answers().iter().map(|r| r.ttl).min();
                let outcome = match rtype {
                    RecordType::MX => Outcome::Mx(
                        relevant
                            .iter()
                            .filter_map(|r| match &r.data {
                                RData::MX(mx) => Some(MxHost {
                                    preference: mx.preference,
                                    exchange: normalize_name(&mx.exchange.to_ascii()),
                                }),
                                _ => None,
                            })
                            .collect(),
                    ),
                    _ => Outcome::Txt(
                        relevant
                            .iter()
                            .filter_map(|r| match &r.data {
                                RData::TXT(txt) => Some(
                                    txt.txt_data
                                        .iter()
                                        .map(|s| String::from_utf8_lossy(s))
                                        .collect::<String>(),
                                ),
                                _ => None,
                            })
                            .collect(),
                    ),
                };
                let empty = match &outcome {
                    Outcome::Mx(v) => v.is_empty(),
                    Outcome::Txt(v) => v.is_empty(),
                    _ => false,
                };
                if empty {
                    Answer::new(Outcome::NoRecords { nxdomain: false }, ttl)
                } else {
                    Answer::new(outcome, ttl)
                }
            }
            Ok(Err(err)) => classify_error(&err),
        };
        tracing::trace!(name = %fqdn, %rtype, ?answer, "DNS lookup");
        answer
    }
}

fn classify_error(err: &NetError) -> Answer {
    match err {
        NetError::Dns(DnsError::NoRecordsFound(no)) => Answer::new(
            Outcome::NoRecords {
                nxdomain: no.response_code == ResponseCode::NXDomain,
            },
            no.negative_ttl,
        ),
        NetError::Dns(DnsError::ResponseCode(code)) => Answer::new(
            Outcome::Failed(format!("the nameserver answered {code}")),
            None,
        ),
        NetError::Timeout => Answer::new(
            Outcome::Failed("the nameserver did not answer (timeout)".into()),
            None,
        ),
        other => Answer::new(Outcome::Failed(other.to_string()), None),
    }
}
