//! `operator run` flags from `SMTPFLEET_*` environment variables. Its own test binary
//! with a single test, because it changes the process environment.

use std::time::Duration;

use clap::Parser;
use smtpfleet_operator::runtime::{LogFormat, RunArgs};

#[derive(Debug, Parser)]
struct Cli {
    #[command(flatten)]
    run: RunArgs,
}

#[test]
fn every_flag_comes_from_the_environment_and_flags_win() {
    let vars = [
        ("SMTPFLEET_NAMESPACE", "mail,relay"),
        ("SMTPFLEET_LOG_FORMAT", "json"),
        ("SMTPFLEET_LOG_LEVEL", "warn"),
        ("SMTPFLEET_HTTP_ADDR", "127.0.0.1:9000"),
        ("SMTPFLEET_LEADER_ELECTION", "false"),
        ("SMTPFLEET_LEASE_NAME", "lock"),
        ("SMTPFLEET_LEASE_NAMESPACE", "ops"),
        ("SMTPFLEET_IDENTITY", "replica-a"),
        ("SMTPFLEET_LEASE_DURATION", "1m"),
        ("SMTPFLEET_RENEW_DEADLINE", "40s"),
        ("SMTPFLEET_RETRY_PERIOD", "5s"),
        ("SMTPFLEET_DNS_NAMESERVER", "127.0.0.1:5353,[::1]:53"),
        ("SMTPFLEET_DNS_QUERY_RATE", "7"),
    ];
    for (name, value) in vars {
        // SAFETY: this test binary runs this single test; no other thread reads the
        // environment concurrently.
        unsafe { std::env::set_var(name, value) };
    }

    let args = Cli::try_parse_from(["operator"]).unwrap().run;
    assert_eq!(args.namespaces, ["mail", "relay"]);
    assert_eq!(args.log_format, LogFormat::Json);
    assert_eq!(args.log_level, "warn");
    assert_eq!(args.http_addr, "127.0.0.1:9000".parse().unwrap());
    assert!(!args.leader_election);
    assert_eq!(args.lease_name, "lock");
    assert_eq!(args.lease_namespace.as_deref(), Some("ops"));
    assert_eq!(args.identity.as_deref(), Some("replica-a"));
    assert_eq!(args.lease_duration, Duration::from_secs(60));
    assert_eq!(args.renew_deadline, Duration::from_secs(40));
    assert_eq!(args.retry_period, Duration::from_secs(5));
    assert_eq!(
        args.dns_nameservers,
        [
            "127.0.0.1:5353".parse().unwrap(),
            "[::1]:53".parse().unwrap()
        ]
    );
    assert_eq!(args.dns_query_rate.get(), 7);

    let args = Cli::try_parse_from([
        "operator",
        "--namespace=edge",
        "--leader-election",
        "--log-format=text",
    ])
    .unwrap()
    .run;
    assert_eq!(args.namespaces, ["edge"]);
    assert!(args.leader_election);
    assert_eq!(args.log_format, LogFormat::Text);
}
