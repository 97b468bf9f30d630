//! The smtp-node binary.

use std::io::{IsTerminal, Read};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use smtp_node::config::Config;
use smtp_node::exit;
use smtp_node::spool::{LogSpool, LogSpoolOptions, RecipientState, Spool};
use tokio_util::sync::CancellationToken;

/// smtpfleet's SMTP relay node: accepts mail over ESMTP, keeps it in a durable spool,
/// and delivers it by MX or through a smarthost, DKIM-signed.
#[derive(Parser)]
#[command(name = "smtp-node", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs the node until SIGTERM or SIGINT (exit 0), or until an essential task fails
    /// (exit 2); exit 1 when it cannot start.
    Run {
        /// The node configuration file (YAML).
        #[arg(long, env = "SMTP_NODE_CONFIG")]
        config: PathBuf,
        /// Log format.
        #[arg(long, env = "SMTP_NODE_LOG_FORMAT", default_value = "text")]
        log_format: LogFormat,
    },
    /// Validates the configuration file and the files it names (certificate, users,
    /// DKIM keys), then exits: 0 when the node would start.
    CheckConfig {
        #[arg(long, env = "SMTP_NODE_CONFIG")]
        config: PathBuf,
    },
    /// Inspects the spool of a stopped node.
    Spool {
        #[command(subcommand)]
        command: SpoolCommand,
    },
    /// Reads a password on standard input and prints its Argon2id hash for the users
    /// file (`user:<hash>`).
    HashPassword,
}

#[derive(Subcommand)]
enum SpoolCommand {
    /// Lists queued messages: id, age, sender, and each recipient's state.
    List {
        /// The spool directory (`spool.dir` of the config).
        #[arg(long)]
        dir: PathBuf,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour only for a person at a terminal: a log file or a pipe gets plain text.
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// How long the runtime may take to wind down after the node stopped.
const RUNTIME_STOP: Duration = Duration::from_secs(2);

fn main() -> ExitCode {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    match real_main(cli) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("smtp-node: {error:#}");
            ExitCode::from(exit::START_UP)
        }
    }
}

fn real_main(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Run { config, log_format } => {
            init_tracing(log_format);
            let config = Config::load(&config)?;
            let runtime = tokio::runtime::Runtime::new().context("cannot start the runtime")?;
            let ran = runtime.block_on(async {
                let shutdown = CancellationToken::new();
                tokio::spawn(signals(shutdown.clone()));
                smtp_node::node::run(config, shutdown).await
            });
            // Whatever still runs (an aborted task's blocking call) must not hold up the
            // exit: the kubelet is waiting for it.
            runtime.shutdown_timeout(RUNTIME_STOP);
            match ran {
                Ok(()) => Ok(ExitCode::from(exit::CLEAN)),
                Err(error) => {
                    eprintln!("smtp-node: {error}");
                    Ok(ExitCode::from(error.exit_code()))
                }
            }
        }
        Command::CheckConfig { config: path } => {
            let config = Config::load(&path)?;
            smtp_node::node::check_files(&config)?;
            for warning in config.warnings() {
                println!("warning: {warning}");
            }
            println!("{}: ok", path.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Spool {
            command: SpoolCommand::List { dir },
        } => {
            let runtime = tokio::runtime::Runtime::new().context("cannot start the runtime")?;
            runtime.block_on(list_spool(dir))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::HashPassword => {
            let mut password = String::new();
            std::io::stdin()
                .read_to_string(&mut password)
                .context("cannot read the password from standard input")?;
            let password = password.trim_end_matches(['\r', '\n']);
            anyhow::ensure!(!password.is_empty(), "the password is empty");
            println!("{}", smtp_node::auth::hash_password(password)?);
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn list_spool(dir: PathBuf) -> anyhow::Result<()> {
    anyhow::ensure!(dir.is_dir(), "{} is not a spool directory", dir.display());
    let spool = LogSpool::open(&dir, LogSpoolOptions::default())?;
    let mut messages = spool.list().await?;
    messages.sort_by_key(|m| m.received_at);
    let now = smtp_node::spool::now_millis();
    for meta in &messages {
        let from = if meta.envelope.mail_from.is_empty() {
            "<>"
        } else {
            &meta.envelope.mail_from
        };
        println!(
            "{} age={}s size={} owner={} from={}",
            meta.id,
            now.saturating_sub(meta.received_at) / 1000,
            meta.size,
            meta.ownership.owner,
            from
        );
        for r in &meta.envelope.recipients {
            let state = match &r.state {
                RecipientState::Pending => "pending".to_owned(),
                RecipientState::Deferred { until } => {
                    format!("deferred for {}s", until.saturating_sub(now) / 1000)
                }
                RecipientState::Delivered { reply, .. } => format!("delivered ({})", reply.code),
                RecipientState::Failed { reply, .. } => {
                    format!("failed ({} {})", reply.code, reply.text)
                }
            };
            let last = r
                .attempts
                .last()
                .map(|a| format!(" last: {} {}", a.reply.code, a.reply.text))
                .unwrap_or_default();
            println!("    {} {state}{last}", r.address);
        }
    }
    println!("{} message(s)", messages.len());
    Ok(())
}

async fn signals(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; stop the node with SIGKILL");
        return;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
    shutdown.cancel();
}
