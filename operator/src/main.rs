//! The smtpfleet operator binary.

use clap::{Parser, Subcommand};
use smtpfleet_operator::crdgen;

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
}

fn main() -> anyhow::Result<()> {
    // Two crypto providers are linked through dependencies; pick ring explicitly.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    match cli.command {
        Command::Crd(args) => crdgen::run(&args, &mut std::io::stdout().lock())?,
    }
    Ok(())
}
