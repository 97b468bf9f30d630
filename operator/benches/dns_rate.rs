//! DNS check rate benchmark: checks many MailDomains at once against a local Knot
//! server with the global query limiter set to N queries per second, and prints the
//! rate Knot actually saw (average and peak one-second window, sampled from Knot's own
//! counters) next to the limit, plus the time taken.
//!
//! ```text
//! cargo bench -p smtpfleet-operator --bench dns_rate -- [--qps N] [--domains D] [--burst B]
//! ```
//! Defaults: 1,000 domains, 500 qps, burst 1. Needs `knotd`/`knotc` (Debian `knot`).

#[path = "../tests/dnsserver/mod.rs"]
mod dnsserver;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use dnsserver::KnotServer;
use smtpfleet_operator::dkim_keys::{DkimKey, KeyAlgorithm};
use smtpfleet_operator::dns::{
    DkimPublication, DmarcPolicy, DmarcSpec, DnsResolver, PublishSpec, QueryLimiter,
    ResolverSettings, SpfAll, check_domain, expected_records,
};

const ZONE: &str = "bench.test";

struct Args {
    qps: u32,
    domains: usize,
    burst: u32,
}

fn parse_args() -> Args {
    let mut args = Args {
        qps: 500,
        domains: 1000,
        burst: 1,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = |name: &str| -> u64 {
            it.next()
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{name} needs a number"))
        };
        match a.as_str() {
            "--qps" => args.qps = value("--qps") as u32,
            "--domains" => args.domains = value("--domains") as usize,
            "--burst" => args.burst = value("--burst") as u32,
            // `cargo bench` passes --bench; ignore what we do not know.
            _ => {}
        }
    }
    args
}

fn spec(i: usize, key: &DkimKey) -> PublishSpec {
    PublishSpec {
        domain: format!("d{i}.{ZONE}"),
        pool_hostname: "relay.pool.example.net".into(),
        dkim: vec![DkimPublication {
            selector: "mail".into(),
            algorithm: key.algorithm,
            public_key: key.dns_public_key.clone(),
            required: true,
            note: None,
        }],
        spf_mechanisms: vec![],
        spf_all: SpfAll::default(),
        dmarc: Some(DmarcSpec {
            policy: Some(DmarcPolicy::Reject),
            rua: vec![],
            pct: None,
        }),
        mta_sts: None,
        tls_rpt: None,
    }
}

#[tokio::main]
async fn main() {
    let args = parse_args();
    let specs: Vec<PublishSpec> = (0..args.domains)
        .map(|i| {
            let key = DkimKey::generate(KeyAlgorithm::Ed25519).expect("ed25519 key");
            spec(i, &key)
        })
        .collect();
    let mut body = String::new();
    for s in &specs {
        for r in expected_records(s) {
            body.push_str(&r.zone_file_line(3600));
            body.push('\n');
        }
    }
    let server = Arc::new(KnotServer::start(&[(ZONE, &body)]));
    let limiter = Arc::new(QueryLimiter::with_burst(args.qps, args.burst));
    let resolver = DnsResolver::new(
        &[server.addr()],
        &ResolverSettings::default(),
        limiter.clone(),
    )
    .expect("resolver");

    // Sample Knot's query counter to find the busiest one-second window.
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = {
        let server = server.clone();
        let sampling = sampling.clone();
        std::thread::spawn(move || {
            // Each sample is stamped with the middle of the knotc call that read it; half
            // the call's duration is the stamp's uncertainty.
            let sample = || {
                let before = Instant::now();
                let count = server.queries_answered();
                let took = before.elapsed();
                (before + took / 2, count, took / 2)
            };
            let mut samples = vec![sample()];
            while sampling.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(100));
                samples.push(sample());
            }
            samples
        })
    };

    let before = server.queries_answered();
    let started = Instant::now();
    let tasks: Vec<_> = specs
        .into_iter()
        .map(|s| {
            let resolver = resolver.clone();
            tokio::spawn(async move { check_domain(&resolver, &expected_records(&s)).await })
        })
        .collect();
    let mut verified = 0usize;
    for t in tasks {
        if t.await.expect("check task").verified() {
            verified += 1;
        }
    }
    let elapsed = started.elapsed();
    let answered = server.queries_answered() - before;
    sampling.store(false, Ordering::Relaxed);
    let samples = sampler.join().expect("sampler");

    // Peak: the most queries within any window of at least one second between samples.
    let mut peak = 0.0f64;
    let mut uncertainty = Duration::ZERO;
    for (i, (t0, c0, u0)) in samples.iter().enumerate() {
        if let Some((t1, c1, u1)) = samples[i..]
            .iter()
            .find(|(t, _, _)| t.duration_since(*t0) >= Duration::from_secs(1))
        {
            let rate = (c1 - c0) as f64 / t1.duration_since(*t0).as_secs_f64();
            if rate > peak {
                peak = rate;
                uncertainty = *u0 + *u1;
            }
        }
    }

    let secs = elapsed.as_secs_f64();
    println!(
        "domains checked:        {} ({verified} verified)",
        args.domains
    );
    if args.qps == 0 {
        println!("limit:                  none");
    } else {
        println!(
            "limit:                  {} qps (burst {})",
            args.qps, args.burst
        );
    }
    println!("queries sent (limiter): {}", limiter.acquired());
    println!("queries seen by Knot:   {answered}");
    println!("time taken:             {secs:.2} s");
    println!(
        "achieved rate:          {:.1} qps (average)",
        answered as f64 / secs
    );
    println!(
        "peak 1 s window:        {peak:.1} qps (sampling uncertainty ±{:.1} %)",
        uncertainty.as_secs_f64() * 100.0
    );
    if args.qps > 0 {
        // In any window of length w at most burst + w × qps queries may start.
        let within = answered as f64 <= f64::from(args.qps) * secs + f64::from(args.burst);
        println!(
            "within limit:           {}",
            if within { "yes" } else { "NO" }
        );
    }
    if verified != args.domains {
        eprintln!(
            "warning: {} domains did not verify",
            args.domains - verified
        );
    }
}
