//! Who may send what through this node. Pure decisions, no I/O: the session gathers the
//! facts, asks here, and turns a [`Refusal`] into a reply.
//!
//! The node is a relay with no local mailboxes, so every accepted message is relayed. The
//! rules that keep it from being an open relay:
//! 1. the client is allowed to relay: it connected from `relay.allowedNetworks`, or it
//!    authenticated (submission listeners accept only the latter);
//! 2. the sender (MAIL FROM) domain is one this node serves (`relay.domains`), or the
//!    sender is null (`<>`, a bounce) and rule 1 holds.
//!
//! Both are checked at MAIL FROM so that a refused client never gets a transaction.

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::Arc;

use crate::config::{Network, RelayConfig};
use crate::domains::DomainState;

/// Why a command or message is refused; each maps to one reply and one metric label.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Submission listener, not authenticated.
    AuthRequired,
    /// Not in an allowed network and not authenticated.
    RelayDenied { client: IpAddr },
    /// MAIL FROM domain not in `relay.domains` nor in the pool's domain set.
    SenderDomainNotServed { domain: String },
    /// The pool's domain set is not loaded yet: a temporary refusal, so that a starting
    /// node never bounces mail for a domain it is about to serve.
    DomainsNotLoaded,
    /// Declared (SIZE=) or actual size over `limits.maxMessageSize`.
    MessageTooBig { max: u64 },
    /// RCPT past `limits.maxRecipients`.
    TooManyRecipients { max: usize },
}

impl Refusal {
    /// Label for the `smtp_rejections_total` metric.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::AuthRequired => "auth_required",
            Self::RelayDenied { .. } => "relay_denied",
            Self::SenderDomainNotServed { .. } => "sender_domain",
            Self::DomainsNotLoaded => "domains_not_loaded",
            Self::MessageTooBig { .. } => "size",
            Self::TooManyRecipients { .. } => "too_many_recipients",
        }
    }
}

/// What the session knows about the client when it asks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Client {
    pub ip: IpAddr,
    pub authenticated: bool,
    /// True on submission and implicit-TLS listeners.
    pub listener_requires_auth: bool,
}

/// The relay rules, prepared from the config for quick lookups.
#[derive(Clone, Debug, Default)]
pub struct RelayPolicy {
    networks: Vec<Network>,
    domains: HashSet<String>,
    /// The pool's domain set, reloaded while the node runs; `None` on a standalone node.
    pool_domains: Option<Arc<DomainState>>,
}

impl RelayPolicy {
    pub fn new(config: &RelayConfig) -> Self {
        Self {
            networks: config.allowed_networks.clone(),
            domains: config.domains.iter().map(|d| normalize_domain(d)).collect(),
            pool_domains: None,
        }
    }

    /// Also serves the domains of `state`, whatever set is in force at each MAIL FROM.
    pub fn with_pool_domains(mut self, state: Arc<DomainState>) -> Self {
        self.pool_domains = Some(state);
        self
    }

    /// Rule 1: may this client relay at all?
    pub fn check_client(&self, client: &Client) -> Result<(), Refusal> {
        if client.authenticated {
            return Ok(());
        }
        if client.listener_requires_auth {
            return Err(Refusal::AuthRequired);
        }
        // A v4 client reaching a dual-stack socket shows up as ::ffff:a.b.c.d.
        let ip = client.ip.to_canonical();
        if self.networks.iter().any(|net| net.contains(&ip)) {
            Ok(())
        } else {
            Err(Refusal::RelayDenied { client: ip })
        }
    }

    /// Whether the node serves `domain` (lower case, no trailing dot) now: it is in
    /// `relay.domains` or in the pool's domain set in force.
    pub fn serves(&self, domain: &str) -> bool {
        self.domains.contains(domain)
            || self
                .pool_domains
                .as_ref()
                .is_some_and(|state| state.current().serves(domain))
    }

    /// Rules 1 and 2 for a MAIL FROM reverse path (without angle brackets).
    pub fn check_sender(&self, client: &Client, reverse_path: &str) -> Result<(), Refusal> {
        self.check_client(client)?;
        if reverse_path.is_empty() {
            return Ok(());
        }
        let domain = address_domain(reverse_path).unwrap_or("");
        let normalized = normalize_domain(domain);
        if self.serves(&normalized) {
            return Ok(());
        }
        if let Some(state) = &self.pool_domains
            && !state.current().is_loaded()
        {
            return Err(Refusal::DomainsNotLoaded);
        }
        Err(Refusal::SenderDomainNotServed {
            domain: domain.to_string(),
        })
    }
}

/// Checks a SIZE= declaration (0 when none was given).
pub fn check_declared_size(declared: u64, max: u64) -> Result<(), Refusal> {
    if declared > max {
        Err(Refusal::MessageTooBig { max })
    } else {
        Ok(())
    }
}

/// Checks whether one more recipient fits, given how many the transaction has.
pub fn check_recipient_count(current: usize, max: usize) -> Result<(), Refusal> {
    if current >= max {
        Err(Refusal::TooManyRecipients { max })
    } else {
        Ok(())
    }
}

/// The domain of `local@domain`: after the last `@` (a quoted local part may hold `@`).
pub fn address_domain(address: &str) -> Option<&str> {
    address
        .rsplit_once('@')
        .map(|(_, domain)| domain)
        .filter(|d| !d.is_empty())
}

fn normalize_domain(domain: &str) -> String {
    domain.strip_suffix('.').unwrap_or(domain).to_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RelayPolicy {
        RelayPolicy::new(&RelayConfig {
            allowed_networks: vec![
                "10.0.0.0/8".parse().unwrap(),
                "2001:db8::/32".parse().unwrap(),
            ],
            users_file: None,
            domains: vec!["example.com".into(), "Mail.Example.ORG.".into()],
        })
    }

    fn client(ip: &str, authenticated: bool, requires_auth: bool) -> Client {
        Client {
            ip: ip.parse().unwrap(),
            authenticated,
            listener_requires_auth: requires_auth,
        }
    }

    #[test]
    fn allowed_network_may_relay_for_served_domains() {
        let p = policy();
        assert_eq!(
            p.check_sender(&client("10.1.2.3", false, false), "a@example.com"),
            Ok(())
        );
        assert_eq!(
            p.check_sender(&client("2001:db8::1", false, false), "a@EXAMPLE.com"),
            Ok(())
        );
        assert_eq!(
            p.check_sender(&client("10.1.2.3", false, false), "a@mail.example.org"),
            Ok(())
        );
    }

    #[test]
    fn outside_client_is_refused_even_for_served_domains() {
        let p = policy();
        assert_eq!(
            p.check_sender(&client("192.0.2.1", false, false), "a@example.com"),
            Err(Refusal::RelayDenied {
                client: "192.0.2.1".parse().unwrap()
            })
        );
    }

    #[test]
    fn mapped_v4_addresses_match_v4_networks() {
        let p = policy();
        assert_eq!(
            p.check_sender(&client("::ffff:10.0.0.1", false, false), "a@example.com"),
            Ok(())
        );
        assert_eq!(
            p.check_sender(&client("::ffff:192.0.2.1", false, false), "a@example.com"),
            Err(Refusal::RelayDenied {
                client: "192.0.2.1".parse().unwrap()
            })
        );
    }

    #[test]
    fn authenticated_client_may_relay_from_anywhere() {
        let p = policy();
        assert_eq!(
            p.check_sender(&client("192.0.2.1", true, false), "a@example.com"),
            Ok(())
        );
        assert_eq!(
            p.check_sender(&client("192.0.2.1", true, true), "a@example.com"),
            Ok(())
        );
    }

    #[test]
    fn submission_requires_auth_even_from_allowed_networks() {
        let p = policy();
        assert_eq!(
            p.check_sender(&client("10.0.0.1", false, true), "a@example.com"),
            Err(Refusal::AuthRequired)
        );
    }

    #[test]
    fn foreign_sender_domains_are_refused_for_everyone() {
        let p = policy();
        for c in [
            client("10.0.0.1", false, false),
            client("192.0.2.1", true, true),
        ] {
            assert_eq!(
                p.check_sender(&c, "a@example.net"),
                Err(Refusal::SenderDomainNotServed {
                    domain: "example.net".into()
                })
            );
            assert_eq!(
                p.check_sender(&c, "a@sub.example.com"),
                Err(Refusal::SenderDomainNotServed {
                    domain: "sub.example.com".into()
                }),
                "subdomains are not implied"
            );
        }
    }

    #[test]
    fn null_sender_needs_only_a_client_that_may_relay() {
        let p = policy();
        assert_eq!(
            p.check_sender(&client("10.0.0.1", false, false), ""),
            Ok(())
        );
        assert_eq!(
            p.check_sender(&client("192.0.2.1", false, false), ""),
            Err(Refusal::RelayDenied {
                client: "192.0.2.1".parse().unwrap()
            })
        );
    }

    #[test]
    fn no_domains_configured_means_no_named_sender_is_served() {
        let p = RelayPolicy::new(&RelayConfig {
            allowed_networks: vec!["0.0.0.0/0".parse().unwrap()],
            users_file: None,
            domains: vec![],
        });
        assert!(
            p.check_sender(&client("10.0.0.1", false, false), "a@example.com")
                .is_err()
        );
    }

    #[test]
    fn domain_is_taken_after_the_last_at() {
        assert_eq!(address_domain("\"a@b\"@example.com"), Some("example.com"));
        assert_eq!(address_domain("nodomain"), None);
        assert_eq!(address_domain("a@"), None);
    }

    #[test]
    fn size_and_recipient_limits() {
        assert_eq!(check_declared_size(0, 10), Ok(()));
        assert_eq!(check_declared_size(10, 10), Ok(()));
        assert_eq!(
            check_declared_size(11, 10),
            Err(Refusal::MessageTooBig { max: 10 })
        );
        assert_eq!(check_recipient_count(1, 2), Ok(()));
        assert_eq!(
            check_recipient_count(2, 2),
            Err(Refusal::TooManyRecipients { max: 2 })
        );
    }
}
