//! Where mail for a domain goes: MX lookup (RFC 5321 section 5.1), implicit MX, null MX
//! (RFC 7505), then the addresses of each exchange.
//!
//! The decisions live in [`plan_exchanges`] and [`collect_targets`], which take lookup
//! answers and return a ranked list or a failure; [`MxResolver`] only performs the
//! lookups.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::net::NetError;
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::{Name, RData, RecordType};
use rand::Rng;
use rand::seq::SliceRandom;

use super::outcome::{Outcome, dns_temporary, local_reply};

/// Per-query DNS timeout; the resolver tries each name server twice.
pub const DNS_TIMEOUT: Duration = Duration::from_secs(5);

/// At most this many addresses are tried per destination, so that a domain publishing
/// hundreds of addresses cannot keep one delivery busy for hours.
pub const MAX_TARGETS: usize = 20;

/// One address to connect to, with the host name it came from (for TLS server names,
/// logs and DSN `Remote-MTA`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub host: String,
    pub addr: IpAddr,
}

/// The answer to one DNS query, reduced to what routing decisions need.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer<T> {
    Records(Vec<T>),
    /// The name exists but has no records of this type (NODATA).
    NoRecords,
    /// The name does not exist.
    NxDomain,
    /// SERVFAIL, timeout, refused, network error: may heal.
    Failed(String),
}

/// An MX record: preference and exchange name (`"."` for a null MX).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MxRecord {
    pub preference: u16,
    pub exchange: String,
}

/// The exchanges to try, in order. `implicit` when the domain has no MX records and its
/// own address records are used (RFC 5321 section 5.1).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Exchanges {
    pub hosts: Vec<String>,
    pub implicit: bool,
}

/// Decides the exchanges from the MX answer: sorted by preference, shuffled among equal
/// preferences to spread load as RFC 5321 asks.
///
/// A null MX anywhere in the answer means the domain accepts no mail (RFC 7505 says a
/// domain with a null MX must not publish others; if it does, the explicit refusal wins).
pub fn plan_exchanges(
    domain: &str,
    answer: Answer<MxRecord>,
    rng: &mut impl Rng,
) -> Result<Exchanges, Outcome> {
    match answer {
        Answer::Records(mut records) => {
            if records
                .iter()
                .any(|r| r.exchange == "." || r.exchange.is_empty())
            {
                return Err(Outcome::Permanent(local_reply(
                    556,
                    "5.1.10",
                    format!("recipient domain {domain} does not accept mail (null MX)"),
                )));
            }
            records.shuffle(rng);
            // A stable sort keeps the shuffled order among equal preferences.
            records.sort_by_key(|r| r.preference);
            let mut hosts: Vec<String> = Vec::with_capacity(records.len());
            for record in records {
                let host = record.exchange.trim_end_matches('.').to_ascii_lowercase();
                if !hosts.contains(&host) {
                    hosts.push(host);
                }
            }
            Ok(Exchanges {
                hosts,
                implicit: false,
            })
        }
        Answer::NoRecords => Ok(Exchanges {
            hosts: vec![domain.trim_end_matches('.').to_ascii_lowercase()],
            implicit: true,
        }),
        Answer::NxDomain => Err(Outcome::Permanent(local_reply(
            550,
            "5.1.2",
            format!("recipient domain {domain} does not exist"),
        ))),
        Answer::Failed(detail) => Err(dns_temporary(format!("MX {domain}: {detail}"))),
    }
}

/// Turns the address answers of each exchange (in exchange order) into connection
/// targets.
///
/// When no exchange has an address: any lookup that may heal makes the failure
/// temporary; otherwise it is permanent (5.1.2 for a domain without MX and without
/// addresses, 5.4.4 "unable to route" when every MX host name is dead).
pub fn collect_targets(
    domain: &str,
    exchanges: &Exchanges,
    answers: Vec<Answer<IpAddr>>,
) -> Result<Vec<Target>, Outcome> {
    let mut targets = Vec::new();
    let mut failures = Vec::new();
    for (host, answer) in exchanges.hosts.iter().zip(answers) {
        match answer {
            Answer::Records(addrs) => {
                for addr in addrs {
                    let target = Target {
                        host: host.clone(),
                        addr,
                    };
                    if !targets.contains(&target) {
                        targets.push(target);
                    }
                }
            }
            Answer::Failed(detail) => failures.push(format!("{host}: {detail}")),
            Answer::NoRecords | Answer::NxDomain => {}
        }
    }
    targets.truncate(MAX_TARGETS);
    if !targets.is_empty() {
        return Ok(targets);
    }
    if !failures.is_empty() {
        return Err(dns_temporary(failures.join("; ")));
    }
    Err(Outcome::Permanent(if exchanges.implicit {
        local_reply(
            550,
            "5.1.2",
            format!("recipient domain {domain} has neither MX nor address records"),
        )
    } else {
        local_reply(
            554,
            "5.4.4",
            format!(
                "no address found for any MX host of {domain} ({})",
                exchanges.hosts.join(", ")
            ),
        )
    }))
}

/// Reads a domain literal (`[192.0.2.1]`, `[IPv6:2001:db8::1]`) from an address's domain.
pub fn domain_literal(domain: &str) -> Option<IpAddr> {
    let inner = domain.strip_prefix('[')?.strip_suffix(']')?;
    let inner = inner
        .strip_prefix("IPv6:")
        .or_else(|| inner.strip_prefix("ipv6:"))
        .unwrap_or(inner);
    inner.parse().ok()
}

#[derive(Debug, thiserror::Error)]
pub enum ResolverError {
    #[error("cannot read the system resolver configuration: {0}")]
    System(NetError),
    #[error("cannot build the DNS resolver: {0}")]
    Build(NetError),
}

/// DNS lookups for delivery, against the configured name servers or the system's.
#[derive(Clone)]
pub struct MxResolver {
    resolver: TokioResolver,
}

impl MxResolver {
    /// Empty `nameservers` means the system configuration. Caching is kept (records are
    /// honoured for their TTL) but negative answers are cached for at most a minute, so a
    /// freshly fixed domain is retried promptly.
    pub fn new(nameservers: &[SocketAddr]) -> Result<Self, ResolverError> {
        let provider = TokioRuntimeProvider::default();
        let mut builder = if nameservers.is_empty() {
            TokioResolver::builder(provider).map_err(ResolverError::System)?
        } else {
            let servers = nameservers
                .iter()
                .map(|server| {
                    let mut udp = ConnectionConfig::udp();
                    udp.port = server.port();
                    let mut tcp = ConnectionConfig::tcp();
                    tcp.port = server.port();
                    NameServerConfig::new(server.ip(), true, vec![udp, tcp])
                })
                .collect();
            TokioResolver::builder_with_config(
                ResolverConfig::from_parts(None, Vec::new(), servers),
                provider,
            )
        };
        let options: &mut ResolverOpts = builder.options_mut();
        options.timeout = DNS_TIMEOUT;
        options.negative_max_ttl = Some(Duration::from_secs(60));
        Ok(Self {
            resolver: builder.build().map_err(ResolverError::Build)?,
        })
    }

    /// Targets for a recipient domain, in the order to try them.
    pub async fn resolve_domain(&self, domain: &str) -> Result<Vec<Target>, Outcome> {
        if let Some(addr) = domain_literal(domain) {
            return Ok(vec![Target {
                host: addr.to_string(),
                addr,
            }]);
        }
        let name = fqdn(domain)?;
        let answer = match self.resolver.mx_lookup(name).await {
            Ok(lookup) => Answer::Records(
                lookup
                    .answers()
                    .iter()
                    .filter_map(|record| match &record.data {
                        RData::MX(mx) => Some(MxRecord {
                            preference: mx.preference,
                            exchange: if mx.exchange.is_root() {
                                ".".to_string()
                            } else {
                                mx.exchange.to_ascii()
                            },
                        }),
                        _ => None,
                    })
                    .collect::<Vec<_>>(),
            ),
            Err(err) => classify(err),
        };
        // An answer with only CNAMEs and no MX behaves like NODATA.
        let answer = match answer {
            Answer::Records(records) if records.is_empty() => Answer::NoRecords,
            other => other,
        };
        let exchanges = plan_exchanges(domain, answer, &mut rand::rng())?;
        let mut answers = Vec::with_capacity(exchanges.hosts.len());
        for host in &exchanges.hosts {
            answers.push(self.addresses(host).await);
        }
        collect_targets(domain, &exchanges, answers)
    }

    /// Targets for a named host (smarthost): its own addresses, no MX.
    pub async fn resolve_host(&self, host: &str) -> Result<Vec<Target>, Outcome> {
        if let Ok(addr) = host.parse::<IpAddr>() {
            return Ok(vec![Target {
                host: host.to_string(),
                addr,
            }]);
        }
        let exchanges = Exchanges {
            hosts: vec![host.to_ascii_lowercase()],
            implicit: true,
        };
        let answers = vec![self.addresses(host).await];
        collect_targets(host, &exchanges, answers)
    }

    async fn addresses(&self, host: &str) -> Answer<IpAddr> {
        let name = match fqdn(host) {
            Ok(name) => name,
            Err(_) => return Answer::NxDomain,
        };
        match self.resolver.lookup_ip(name).await {
            Ok(lookup) => {
                let addrs: Vec<IpAddr> = lookup.iter().collect();
                if addrs.is_empty() {
                    Answer::NoRecords
                } else {
                    Answer::Records(addrs)
                }
            }
            Err(err) => classify(err),
        }
    }

    /// TXT records of a name, joined per record (for DKIM key checks and tests).
    pub async fn txt(&self, name: &str) -> Answer<String> {
        let name = match fqdn(name) {
            Ok(name) => name,
            Err(_) => return Answer::NxDomain,
        };
        match self.resolver.lookup(name, RecordType::TXT).await {
            Ok(lookup) => Answer::Records(
                lookup
                    .answers()
                    .iter()
                    .filter_map(|record| match &record.data {
                        RData::TXT(txt) => Some(
                            txt.txt_data
                                .iter()
                                .map(|part| String::from_utf8_lossy(part).into_owned())
                                .collect::<String>(),
                        ),
                        _ => None,
                    })
                    .collect(),
            ),
            Err(err) => classify(err),
        }
    }
}

fn fqdn(domain: &str) -> Result<Name, Outcome> {
    let mut name = Name::from_utf8(domain).map_err(|err| {
        Outcome::Permanent(local_reply(
            553,
            "5.1.2",
            format!("invalid recipient domain {domain:?}: {err}"),
        ))
    })?;
    name.set_fqdn(true);
    Ok(name)
}

fn classify<T>(err: NetError) -> Answer<T> {
    if err.is_nx_domain() {
        Answer::NxDomain
    } else if err.is_no_records_found() {
        Answer::NoRecords
    } else {
        Answer::Failed(err.to_string())
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;

    fn mx(preference: u16, exchange: &str) -> MxRecord {
        MxRecord {
            preference,
            exchange: exchange.to_string(),
        }
    }

    fn code(outcome: Outcome) -> (bool, u16, String) {
        let permanent = matches!(outcome, Outcome::Permanent(_));
        let reply = outcome.reply().clone();
        (permanent, reply.code, reply.enhanced.unwrap_or_default())
    }

    #[test]
    fn sorts_by_preference_and_deduplicates() {
        let answer = Answer::Records(vec![
            mx(20, "b.example.com."),
            mx(10, "A.example.com."),
            mx(30, "b.example.com."),
        ]);
        let plan = plan_exchanges("example.com", answer, &mut StdRng::seed_from_u64(1)).unwrap();
        assert_eq!(plan.hosts, ["a.example.com", "b.example.com"]);
        assert!(!plan.implicit);
    }

    #[test]
    fn shuffles_only_among_equal_preferences() {
        let mut firsts = std::collections::HashSet::new();
        for seed in 0..64 {
            let answer = Answer::Records(vec![
                mx(10, "x1."),
                mx(10, "x2."),
                mx(10, "x3."),
                mx(5, "primary."),
                mx(50, "last."),
            ]);
            let plan = plan_exchanges("d", answer, &mut StdRng::seed_from_u64(seed)).unwrap();
            assert_eq!(plan.hosts[0], "primary");
            assert_eq!(plan.hosts[4], "last");
            firsts.insert(plan.hosts[1].clone());
        }
        assert_eq!(
            firsts.len(),
            3,
            "every equal-preference host comes first sometimes"
        );
    }

    #[test]
    fn null_mx_is_a_permanent_556() {
        let answer = Answer::Records(vec![mx(0, ".")]);
        let err = plan_exchanges("nomail.example", answer, &mut rand::rng()).unwrap_err();
        assert_eq!(code(err), (true, 556, "5.1.10".into()));
    }

    #[test]
    fn no_mx_means_the_domain_itself() {
        let plan = plan_exchanges("Example.COM.", Answer::NoRecords, &mut rand::rng()).unwrap();
        assert_eq!(plan.hosts, ["example.com"]);
        assert!(plan.implicit);
    }

    #[test]
    fn nxdomain_is_permanent_and_servfail_temporary() {
        let err = plan_exchanges("gone.example", Answer::NxDomain, &mut rand::rng()).unwrap_err();
        assert_eq!(code(err), (true, 550, "5.1.2".into()));
        let err =
            plan_exchanges("d", Answer::Failed("SERVFAIL".into()), &mut rand::rng()).unwrap_err();
        assert_eq!(code(err), (false, 451, "4.4.3".into()));
    }

    #[test]
    fn targets_keep_exchange_order_and_skip_dead_hosts() {
        let exchanges = Exchanges {
            hosts: vec!["a".into(), "b".into(), "c".into()],
            implicit: false,
        };
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let targets = collect_targets(
            "d",
            &exchanges,
            vec![
                Answer::NxDomain,
                Answer::Records(vec![ip("192.0.2.2"), ip("2001:db8::2")]),
                Answer::Records(vec![ip("192.0.2.3")]),
            ],
        )
        .unwrap();
        let hosts: Vec<_> = targets.iter().map(|t| (t.host.as_str(), t.addr)).collect();
        assert_eq!(
            hosts,
            [
                ("b", ip("192.0.2.2")),
                ("b", ip("2001:db8::2")),
                ("c", ip("192.0.2.3"))
            ]
        );
    }

    #[test]
    fn no_addresses_at_all() {
        let implicit = Exchanges {
            hosts: vec!["d".into()],
            implicit: true,
        };
        let err = collect_targets("d", &implicit, vec![Answer::NoRecords]).unwrap_err();
        assert_eq!(code(err), (true, 550, "5.1.2".into()));

        let explicit = Exchanges {
            hosts: vec!["a".into(), "b".into()],
            implicit: false,
        };
        let err =
            collect_targets("d", &explicit, vec![Answer::NxDomain, Answer::NoRecords]).unwrap_err();
        assert_eq!(code(err), (true, 554, "5.4.4".into()));

        let err = collect_targets(
            "d",
            &explicit,
            vec![Answer::NxDomain, Answer::Failed("timeout".into())],
        )
        .unwrap_err();
        assert_eq!(code(err), (false, 451, "4.4.3".into()));
    }

    #[test]
    fn caps_the_number_of_targets() {
        let exchanges = Exchanges {
            hosts: vec!["a".into()],
            implicit: false,
        };
        let addrs = (0..50u8)
            .map(|i| IpAddr::from([192, 0, 2, i]))
            .collect::<Vec<_>>();
        let targets = collect_targets("d", &exchanges, vec![Answer::Records(addrs)]).unwrap();
        assert_eq!(targets.len(), MAX_TARGETS);
    }

    #[test]
    fn reads_domain_literals() {
        assert_eq!(
            domain_literal("[192.0.2.1]"),
            Some(IpAddr::from([192, 0, 2, 1]))
        );
        assert_eq!(
            domain_literal("[IPv6:2001:db8::1]"),
            Some("2001:db8::1".parse().unwrap())
        );
        assert_eq!(domain_literal("example.com"), None);
        assert_eq!(domain_literal("[example.com]"), None);
    }
}
