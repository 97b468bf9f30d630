//! The smtpfleet operator binary.

use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use smtpfleet_operator::runtime::{self, Context, ControllerError, Controllers, RunArgs, exit};
use smtpfleet_operator::{certificate, crdgen, maildomain, queue, relaypool};

/// Kubernetes operator for smtpfleet relay pools and mail domains.
#[derive(Debug, Parser)]
#[command(name = "operator", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the CustomResourceDefinitions (RelayPool, MailDomain) as YAML.
    Crd(crdgen::CrdArgs),
    /// Run the controllers against the cluster of the current kubeconfig or the pod's
    /// service account. Exits 0 after SIGTERM, 1 when it cannot start, 2 when a
    /// controller, the HTTP server or the elector fails, 3 when leadership is lost.
    Run(Box<RunArgs>),
}

fn main() -> ExitCode {
    limit_malloc_arenas();
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime.block_on(run()),
        Err(error) => {
            eprintln!("operator: starting the async runtime failed: {error}");
            ExitCode::from(exit::START_UP)
        }
    }
}

/// Allocator arenas (glibc): at most two, unless `MALLOC_ARENA_MAX` says otherwise.
///
/// glibc gives every thread that allocates while the others hold their arenas a new
/// one, up to eight per CPU, and an arena keeps what is freed in it for its own thread.
/// A burst of MailDomains spread its short-lived peaks (API lists, reconciliations) over
/// the async workers and the key generation threads: nine arenas held 80 MiB, of which
/// the live heap at its peak was 65 MiB. Two arenas (there are two async workers) reuse
/// what was freed. Must run before any other thread starts.
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only sets an allocator parameter; no other thread exists yet.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 2);
        }
    }
}

async fn run() -> ExitCode {
    // Two crypto providers are linked through dependencies; pick ring explicitly.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    match cli.command {
        Command::Crd(args) => match crdgen::run(&args, &mut std::io::stdout().lock()) {
            Ok(()) => ExitCode::from(exit::CLEAN),
            Err(error) => {
                eprintln!("operator: {error:#}");
                ExitCode::from(exit::START_UP)
            }
        },
        Command::Run(args) => match runtime::run(*args, controllers).await {
            Ok(()) => ExitCode::from(exit::CLEAN),
            Err(error) => {
                eprintln!("operator: {error}");
                ExitCode::from(error.exit_code())
            }
        },
    }
}

/// The controllers run while this replica leads; any one ending ends the run, named.
async fn controllers(ctx: Context) -> Result<(), ControllerError> {
    let pools = Arc::new(relaypool::Context::from_runtime(&ctx));
    let domains = Arc::new(
        maildomain::Context::from_flags(
            ctx.client.clone(),
            ctx.dns.nameservers.clone(),
            ctx.dns.query_rate.get(),
            ctx.namespaces.clone(),
        )?
        .with_schedule(smtpfleet_operator::dns::CheckSchedule {
            verified_interval: ctx.dns.verified_interval,
            unverified_interval: ctx.dns.unverified_interval,
            ..smtpfleet_operator::dns::CheckSchedule::default()
        }),
    );
    let certificates = Arc::new(certificate::Context::new(
        ctx.client.clone(),
        ctx.namespaces.clone(),
    ));
    let queues = Arc::new(queue::Context::new(
        ctx.client.clone(),
        ctx.namespaces.clone(),
    ));
    let mut set = Controllers::default();
    set.spawn("relaypool", relaypool::run(pools));
    set.spawn("queue", async move {
        queue::run(queues).await;
        Ok::<(), ControllerError>(())
    });
    set.spawn("maildomain", async move {
        maildomain::run(domains).await;
        Ok::<(), ControllerError>(())
    });
    set.spawn("certificate", async move {
        certificate::run(certificates).await;
        Ok::<(), ControllerError>(())
    });
    set.run(ctx.shutdown.clone()).await?;
    Ok(())
}
