//! Flags of `operator run`.
//!
//! Every flag can also come from an `SMTPFLEET_*` environment variable so that the Helm
//! chart can set them through `env:` without rebuilding the argument list. A few values
//! (lease namespace, identity) depend on the environment the pod runs in; they stay
//! optional here and are resolved by the pure `resolve_*` functions below, which the
//! process runtime calls once it knows the client's default namespace.

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use clap::builder::BoolishValueParser;
use thiserror::Error;

/// Output format of the process logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One JSON object per line, for log collectors.
    Json,
    /// Human-readable lines, for a terminal.
    Text,
}

/// Arguments of `operator run`.
#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// Namespace to watch; repeat the flag (or comma-separate in the environment variable)
    /// for several. None means every namespace.
    #[arg(
        long = "namespace",
        env = "SMTPFLEET_NAMESPACE",
        value_delimiter = ',',
        value_name = "NAMESPACE"
    )]
    pub namespaces: Vec<String>,

    /// Log output format.
    #[arg(long, env = "SMTPFLEET_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Log filter, in `tracing_subscriber::EnvFilter` directive syntax
    /// (for example `info,smtpfleet_operator=debug`).
    #[arg(long, env = "SMTPFLEET_LOG_LEVEL", default_value = "info")]
    pub log_level: String,

    /// Address of the HTTP server that serves /metrics, /healthz and /readyz.
    #[arg(long, env = "SMTPFLEET_HTTP_ADDR", default_value = "0.0.0.0:8080")]
    pub http_addr: SocketAddr,

    /// Elect a single active replica through a coordination.k8s.io Lease.
    /// Turn off (`--leader-election=false`) only when exactly one replica runs.
    #[arg(
        long,
        env = "SMTPFLEET_LEADER_ELECTION",
        default_value = "true",
        default_missing_value = "true",
        num_args = 0..=1,
        require_equals = true,
        value_parser = BoolishValueParser::new(),
        action = clap::ArgAction::Set,
    )]
    pub leader_election: bool,

    /// Name of the Lease used for leader election.
    #[arg(
        long,
        env = "SMTPFLEET_LEASE_NAME",
        default_value = "smtpfleet-operator"
    )]
    pub lease_name: String,

    /// Namespace of the Lease. Defaults to `POD_NAMESPACE`, then to the namespace of the
    /// kubeconfig context or of the in-cluster service account.
    #[arg(long, env = "SMTPFLEET_LEASE_NAMESPACE")]
    pub lease_namespace: Option<String>,

    /// Identity written into the Lease. Defaults to `POD_NAME`, then to the hostname with a
    /// random suffix.
    #[arg(long, env = "SMTPFLEET_IDENTITY")]
    pub identity: Option<String>,

    /// How long a Lease stays valid after its last renewal; standbys wait this long
    /// before taking over from a silent leader.
    #[arg(long, env = "SMTPFLEET_LEASE_DURATION", default_value = "15s", value_parser = parse_duration)]
    pub lease_duration: Duration,

    /// How long the leader keeps retrying a failed renewal before it gives up leadership.
    /// Must be shorter than the lease duration, so that the old leader stops before a
    /// standby may start.
    #[arg(long, env = "SMTPFLEET_RENEW_DEADLINE", default_value = "10s", value_parser = parse_duration)]
    pub renew_deadline: Duration,

    /// Interval between attempts to acquire or renew the Lease.
    #[arg(long, env = "SMTPFLEET_RETRY_PERIOD", default_value = "2s", value_parser = parse_duration)]
    pub retry_period: Duration,

    /// DNS server (`ip:port`) used by the DNS record checks; repeat for several.
    /// None means the system resolver configuration.
    #[arg(
        long = "dns-nameserver",
        env = "SMTPFLEET_DNS_NAMESERVER",
        value_delimiter = ',',
        value_name = "IP:PORT"
    )]
    pub dns_nameservers: Vec<SocketAddr>,

    /// Upper bound on DNS queries per second across all domains, so that a large fleet
    /// of MailDomains does not hammer the resolver.
    #[arg(long, env = "SMTPFLEET_DNS_QUERY_RATE", default_value = "20")]
    pub dns_query_rate: NonZeroU32,

    /// Time between DNS checks of a MailDomain whose records all match (±10 % jitter;
    /// a longer TTL pushes a check out by at most 15 minutes). A broken record of a
    /// verified domain shows in its status within this time plus the jitter.
    #[arg(long, env = "SMTPFLEET_DNS_VERIFIED_INTERVAL", default_value = "10m", value_parser = parse_duration)]
    pub dns_verified_interval: Duration,

    /// Time between DNS checks while a record is missing or wrong (the owner is likely
    /// editing DNS and waiting for the result).
    #[arg(long, env = "SMTPFLEET_DNS_UNVERIFIED_INTERVAL", default_value = "1m", value_parser = parse_duration)]
    pub dns_unverified_interval: Duration,

    /// smtp-node image for RelayPools that do not set `spec.image`. The Helm chart sets it
    /// to the image matching the operator's version.
    #[arg(long, env = "SMTPFLEET_NODE_IMAGE", default_value = DEFAULT_NODE_IMAGE)]
    pub node_image: String,
}

/// The smtp-node image of this release.
pub const DEFAULT_NODE_IMAGE: &str =
    concat!("ghcr.io/smtpfleet/smtp-node:", env!("CARGO_PKG_VERSION"));

/// Timing of the leader election, checked for consistency.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ElectionTiming {
    /// Validity of the Lease after a renewal; written as whole seconds.
    pub lease_duration: Duration,
    /// How long the leader may fail to renew before it steps down.
    pub renew_deadline: Duration,
    /// Pause between attempts.
    pub retry_period: Duration,
}

/// A flag combination that cannot work.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ArgsError {
    /// The Lease stores its duration in whole seconds.
    #[error("--lease-duration must be a whole number of seconds, at least 1s (got {0:?})")]
    LeaseDurationNotWholeSeconds(Duration),
    /// Otherwise an old leader could still act after a standby took over.
    #[error(
        "--renew-deadline ({renew_deadline:?}) must be shorter than --lease-duration ({lease_duration:?})"
    )]
    RenewDeadlineTooLong {
        /// Given renew deadline.
        renew_deadline: Duration,
        /// Given lease duration.
        lease_duration: Duration,
    },
    /// Otherwise the leader gets at most one renewal attempt before it steps down.
    #[error(
        "--retry-period ({retry_period:?}) must be non-zero and shorter than --renew-deadline ({renew_deadline:?})"
    )]
    RetryPeriodTooLong {
        /// Given retry period.
        retry_period: Duration,
        /// Given renew deadline.
        renew_deadline: Duration,
    },
}

impl RunArgs {
    /// The leader election timing, rejecting combinations under which two leaders could
    /// overlap.
    pub fn election_timing(&self) -> Result<ElectionTiming, ArgsError> {
        let timing = ElectionTiming {
            lease_duration: self.lease_duration,
            renew_deadline: self.renew_deadline,
            retry_period: self.retry_period,
        };
        if timing.lease_duration.subsec_nanos() != 0 || timing.lease_duration.as_secs() == 0 {
            return Err(ArgsError::LeaseDurationNotWholeSeconds(
                timing.lease_duration,
            ));
        }
        if timing.renew_deadline >= timing.lease_duration {
            return Err(ArgsError::RenewDeadlineTooLong {
                renew_deadline: timing.renew_deadline,
                lease_duration: timing.lease_duration,
            });
        }
        if timing.retry_period.is_zero() || timing.retry_period >= timing.renew_deadline {
            return Err(ArgsError::RetryPeriodTooLong {
                retry_period: timing.retry_period,
                renew_deadline: timing.renew_deadline,
            });
        }
        Ok(timing)
    }
}

/// The Lease namespace: the flag, else the pod's namespace (downward API), else the
/// client's default namespace (kubeconfig context or in-cluster service account).
pub fn resolve_lease_namespace(
    flag: Option<&str>,
    pod_namespace: Option<&str>,
    client_default: &str,
) -> String {
    non_empty(flag)
        .or_else(|| non_empty(pod_namespace))
        .unwrap_or(client_default)
        .to_owned()
}

/// The identity written into the Lease: the flag, else the pod name, else the hostname
/// with a random suffix. The suffix keeps two processes on one host (or two containers
/// that share a hostname) from both believing they hold the Lease.
pub fn resolve_identity(
    flag: Option<&str>,
    pod_name: Option<&str>,
    hostname: &str,
    random_suffix: &str,
) -> String {
    if let Some(identity) = non_empty(flag).or_else(|| non_empty(pod_name)) {
        return identity.to_owned();
    }
    let host = if hostname.trim().is_empty() {
        "smtpfleet-operator"
    } else {
        hostname.trim()
    };
    format!("{host}-{random_suffix}")
}

fn non_empty(value: Option<&str>) -> Option<&str> {
    value.map(str::trim).filter(|v| !v.is_empty())
}

/// A duration that [`parse_duration`] does not understand.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum DurationParseError {
    /// Nothing to parse.
    #[error("empty duration")]
    Empty,
    /// A number without a unit, or a unit that is not ms, s, m or h.
    #[error(
        "invalid duration {0:?}: expected a number with a unit (ms, s, m, h), e.g. 15s, 1m30s, 500ms"
    )]
    Invalid(String),
    /// Larger than a `Duration` can hold.
    #[error("duration {0:?} is too large")]
    Overflow(String),
}

/// Parses `500ms`, `15s`, `1m`, `2h` and sums such as `1m30s`.
///
/// Hand-written rather than a dependency: the operator needs four units and a clear
/// error message, nothing more.
pub fn parse_duration(input: &str) -> Result<Duration, DurationParseError> {
    let text = input.trim();
    if text.is_empty() {
        return Err(DurationParseError::Empty);
    }
    let invalid = || DurationParseError::Invalid(input.to_owned());
    let overflow = || DurationParseError::Overflow(input.to_owned());
    let mut total = Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .ok_or_else(invalid)?;
        if digits == 0 {
            return Err(invalid());
        }
        let value: u64 = rest[..digits].parse().map_err(|_| overflow())?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let part = match &rest[..unit_len] {
            "ms" => Some(Duration::from_millis(value)),
            "s" => Some(Duration::from_secs(value)),
            "m" => value.checked_mul(60).map(Duration::from_secs),
            "h" => value.checked_mul(3600).map(Duration::from_secs),
            _ => return Err(invalid()),
        }
        .ok_or_else(overflow)?;
        total = total.checked_add(part).ok_or_else(overflow)?;
        rest = &rest[unit_len..];
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        run: RunArgs,
    }

    fn parse(args: &[&str]) -> Result<RunArgs, clap::Error> {
        let argv = std::iter::once("operator").chain(args.iter().copied());
        Cli::try_parse_from(argv).map(|cli| cli.run)
    }

    #[test]
    fn durations_in_each_unit() {
        assert_eq!(parse_duration("15s"), Ok(Duration::from_secs(15)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration(" 0s "), Ok(Duration::ZERO));
    }

    #[test]
    fn durations_summed() {
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1s500ms"), Ok(Duration::from_millis(1500)));
    }

    #[test]
    fn durations_rejected() {
        assert_eq!(parse_duration(""), Err(DurationParseError::Empty));
        for bad in ["15", "s", "1.5s", "10d", "-1s", "1 s", "1mm", "ms5"] {
            assert!(
                matches!(parse_duration(bad), Err(DurationParseError::Invalid(_))),
                "{bad:?} should be invalid, got {:?}",
                parse_duration(bad)
            );
        }
        assert!(matches!(
            parse_duration("99999999999999999999s"),
            Err(DurationParseError::Overflow(_))
        ));
        assert!(matches!(
            parse_duration(&format!("{}h", u64::MAX / 1000)),
            Err(DurationParseError::Overflow(_))
        ));
    }

    #[test]
    fn defaults() {
        let args = parse(&[]).unwrap();
        assert!(args.namespaces.is_empty());
        assert_eq!(args.log_format, LogFormat::Text);
        assert_eq!(args.log_level, "info");
        assert_eq!(args.http_addr, "0.0.0.0:8080".parse().unwrap());
        assert!(args.leader_election);
        assert_eq!(args.lease_name, "smtpfleet-operator");
        assert_eq!(args.lease_namespace, None);
        assert_eq!(args.identity, None);
        assert_eq!(args.lease_duration, Duration::from_secs(15));
        assert_eq!(args.renew_deadline, Duration::from_secs(10));
        assert_eq!(args.retry_period, Duration::from_secs(2));
        assert!(args.dns_nameservers.is_empty());
        assert_eq!(args.dns_query_rate.get(), 20);
        assert!(args.election_timing().is_ok());
    }

    #[test]
    fn every_flag() {
        let args = parse(&[
            "--namespace",
            "mail",
            "--namespace=relay,edge",
            "--log-format",
            "json",
            "--log-level",
            "debug,kube=warn",
            "--http-addr",
            "127.0.0.1:9090",
            "--leader-election=false",
            "--lease-name",
            "lock",
            "--lease-namespace",
            "ops",
            "--identity",
            "me",
            "--lease-duration",
            "30s",
            "--renew-deadline",
            "20s",
            "--retry-period",
            "500ms",
            "--dns-nameserver",
            "127.0.0.1:5353",
            "--dns-nameserver",
            "[::1]:53",
            "--dns-query-rate",
            "5",
        ])
        .unwrap();
        assert_eq!(args.namespaces, ["mail", "relay", "edge"]);
        assert_eq!(args.log_format, LogFormat::Json);
        assert_eq!(args.log_level, "debug,kube=warn");
        assert_eq!(args.http_addr, "127.0.0.1:9090".parse().unwrap());
        assert!(!args.leader_election);
        assert_eq!(args.lease_name, "lock");
        assert_eq!(args.lease_namespace.as_deref(), Some("ops"));
        assert_eq!(args.identity.as_deref(), Some("me"));
        assert_eq!(args.lease_duration, Duration::from_secs(30));
        assert_eq!(args.renew_deadline, Duration::from_secs(20));
        assert_eq!(args.retry_period, Duration::from_millis(500));
        assert_eq!(
            args.dns_nameservers,
            [
                "127.0.0.1:5353".parse().unwrap(),
                "[::1]:53".parse::<SocketAddr>().unwrap()
            ]
        );
        assert_eq!(args.dns_query_rate.get(), 5);
    }

    #[test]
    fn bare_leader_election_flag_means_on() {
        assert!(parse(&["--leader-election"]).unwrap().leader_election);
        assert!(parse(&["--leader-election=true"]).unwrap().leader_election);
        assert!(!parse(&["--leader-election=no"]).unwrap().leader_election);
    }

    #[test]
    fn invalid_values_are_rejected() {
        for bad in [
            &["--log-format", "yaml"][..],
            &["--http-addr", "localhost"],
            &["--lease-duration", "15"],
            &["--dns-nameserver", "127.0.0.1"],
            &["--dns-query-rate", "0"],
            &["--leader-election=maybe"],
        ] {
            assert!(parse(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn election_timing_must_leave_a_gap_between_leaders() {
        let timing = |lease: &str, renew: &str, retry: &str| {
            parse(&[
                "--lease-duration",
                lease,
                "--renew-deadline",
                renew,
                "--retry-period",
                retry,
            ])
            .unwrap()
            .election_timing()
        };
        assert!(timing("15s", "10s", "2s").is_ok());
        assert!(matches!(
            timing("10s", "10s", "2s"),
            Err(ArgsError::RenewDeadlineTooLong { .. })
        ));
        assert!(matches!(
            timing("15s", "10s", "10s"),
            Err(ArgsError::RetryPeriodTooLong { .. })
        ));
        assert!(matches!(
            timing("15s", "10s", "0s"),
            Err(ArgsError::RetryPeriodTooLong { .. })
        ));
        assert!(matches!(
            timing("1500ms", "1s", "100ms"),
            Err(ArgsError::LeaseDurationNotWholeSeconds(_))
        ));
    }

    #[test]
    fn lease_namespace_precedence() {
        assert_eq!(
            resolve_lease_namespace(Some("ops"), Some("pod"), "ctx"),
            "ops"
        );
        assert_eq!(resolve_lease_namespace(None, Some("pod"), "ctx"), "pod");
        assert_eq!(resolve_lease_namespace(Some(" "), Some(""), "ctx"), "ctx");
    }

    #[test]
    fn identity_precedence() {
        assert_eq!(
            resolve_identity(Some("me"), Some("pod-0"), "host", "x1"),
            "me"
        );
        assert_eq!(resolve_identity(None, Some("pod-0"), "host", "x1"), "pod-0");
        assert_eq!(resolve_identity(None, Some(""), "host", "x1"), "host-x1");
        assert_eq!(
            resolve_identity(None, None, "", "x1"),
            "smtpfleet-operator-x1"
        );
    }
}
