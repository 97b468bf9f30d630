//! The smtpfleet operator binary.

use std::sync::Arc;

use clap::{Parser, Subcommand};
use smtpfleet_operator::runtime::{self, Context, ControllerError, RunArgs};
use smtpfleet_operator::{certificate, crdgen, maildomain, relaypool};

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
    /// service account.
    Run(Box<RunArgs>),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // Two crypto providers are linked through dependencies; pick ring explicitly.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    match cli.command {
        Command::Crd(args) => crdgen::run(&args, &mut std::io::stdout().lock())?,
        Command::Run(args) => runtime::run(*args, controllers).await?,
    }
    Ok(())
}

/// The controllers run while this replica leads; any one ending ends the run.
async fn controllers(ctx: Context) -> Result<(), ControllerError> {
    let pools = Arc::new(relaypool::Context::from_runtime(&ctx));
    let domains = Arc::new(maildomain::Context::from_flags(
        ctx.client.clone(),
        ctx.dns.nameservers.clone(),
        ctx.dns.query_rate.get(),
        ctx.namespaces.clone(),
    )?);
    let certificates = Arc::new(certificate::Context::new(
        ctx.client.clone(),
        ctx.namespaces.clone(),
    ));
    let shutdown = ctx.shutdown.clone();
    tokio::select! {
        result = relaypool::run(pools) => result.map_err(Into::into),
        () = maildomain::run(domains) => Ok(()),
        () = certificate::run(certificates) => Ok(()),
        () = shutdown.cancelled() => Ok(()),
    }
}
