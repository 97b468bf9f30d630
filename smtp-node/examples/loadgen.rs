//! SMTP load generator for the benchmark script.
//!
//! smtp-source measures throughput but not latency, and it cannot hold a fixed rate. This
//! tool does both: it sends messages from N concurrent sessions, optionally paced to a total
//! rate, and records the time from the end of DATA (the final `.`) to the server's reply —
//! the part of a transaction a server controls, spool fsync included.
//!
//! ```text
//! cargo run --release -p smtp-node --example loadgen -- \
//!     --target 127.0.0.1:2525 --sessions 20 --messages 20000 --size 4096 [--rate 2000] [--reuse]
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

#[derive(Parser, Debug, Clone)]
struct Args {
    /// Server to send to.
    #[arg(long, default_value = "127.0.0.1:2525")]
    target: String,
    /// Concurrent sessions.
    #[arg(long, default_value_t = 20)]
    sessions: usize,
    /// Total messages.
    #[arg(long, default_value_t = 20_000)]
    messages: u64,
    /// Body size in bytes (headers included).
    #[arg(long, default_value_t = 4096)]
    size: usize,
    /// Total send rate in messages per second; 0 sends as fast as the server answers.
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// Keep each session's connection open for many messages (like smtp-source -d).
    #[arg(long)]
    reuse: bool,
    #[arg(long, default_value = "loadgen@bench.example")]
    from: String,
    #[arg(long, default_value = "sink@dest.example")]
    to: String,
    /// Per-reply timeout.
    #[arg(long, default_value_t = 30)]
    timeout_secs: u64,
}

struct Conn {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
    timeout: Duration,
}

impl Conn {
    async fn open(args: &Args) -> Result<Self> {
        let timeout = Duration::from_secs(args.timeout_secs);
        let stream = tokio::time::timeout(timeout, TcpStream::connect(&args.target))
            .await
            .context("connect timed out")??;
        stream.set_nodelay(true)?;
        let (r, w) = stream.into_split();
        let mut conn = Self {
            reader: BufReader::new(r),
            writer: w,
            timeout,
        };
        conn.expect(220).await?;
        conn.command("EHLO loadgen.bench.example\r\n", 250).await?;
        Ok(conn)
    }

    /// Reads one (possibly multi-line) reply and returns its code.
    async fn reply(&mut self) -> Result<u16> {
        let mut line = String::new();
        loop {
            line.clear();
            let n = tokio::time::timeout(self.timeout, self.reader.read_line(&mut line))
                .await
                .context("reply timed out")??;
            if n == 0 {
                bail!("connection closed");
            }
            if line.len() < 4 {
                bail!("short reply line {line:?}");
            }
            if line.as_bytes()[3] != b'-' {
                return line[..3].parse().context("reply code");
            }
        }
    }

    async fn expect(&mut self, code: u16) -> Result<()> {
        let got = self.reply().await?;
        if got != code {
            bail!("expected {code}, got {got}");
        }
        Ok(())
    }

    async fn command(&mut self, cmd: &str, code: u16) -> Result<()> {
        self.writer.write_all(cmd.as_bytes()).await?;
        self.expect(code).await
    }

    /// Sends one message and returns the end-of-DATA to reply latency.
    async fn send(&mut self, args: &Args, body: &[u8]) -> Result<Duration> {
        self.command(&format!("MAIL FROM:<{}>\r\n", args.from), 250)
            .await?;
        self.command(&format!("RCPT TO:<{}>\r\n", args.to), 250)
            .await?;
        self.command("DATA\r\n", 354).await?;
        self.writer.write_all(body).await?;
        let start = Instant::now();
        self.writer.write_all(b".\r\n").await?;
        self.expect(250).await?;
        Ok(start.elapsed())
    }

    async fn quit(mut self) {
        let _ = self.writer.write_all(b"QUIT\r\n").await;
        let _ = self.reply().await;
    }
}

fn make_body(args: &Args) -> Vec<u8> {
    let mut body = format!(
        "From: <{}>\r\nTo: <{}>\r\nSubject: loadgen\r\nMessage-ID: <loadgen@bench.example>\r\n\r\n",
        args.from, args.to
    )
    .into_bytes();
    let line = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789\r\n";
    while body.len() + line.len() <= args.size {
        body.extend_from_slice(line);
    }
    body
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let body: Arc<[u8]> = make_body(&args).into();
    let next = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..args.sessions {
        let (args, body, next, failed) = (args.clone(), body.clone(), next.clone(), failed.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut conn: Option<Conn> = None;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= args.messages {
                    break;
                }
                if args.rate > 0.0 {
                    let due = start + Duration::from_secs_f64(i as f64 / args.rate);
                    tokio::time::sleep_until(due.into()).await;
                }
                let mut c = match conn.take() {
                    Some(c) => c,
                    None => match Conn::open(&args).await {
                        Ok(c) => c,
                        Err(e) => {
                            eprintln!("loadgen: connect: {e:#}");
                            failed.fetch_add(1, Ordering::Relaxed);
                            continue;
                        }
                    },
                };
                match c.send(&args, &body).await {
                    Ok(lat) => {
                        latencies.push(lat);
                        if args.reuse {
                            conn = Some(c);
                        } else {
                            c.quit().await;
                        }
                    }
                    Err(e) => {
                        eprintln!("loadgen: message {i}: {e:#}");
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            if let Some(c) = conn {
                c.quit().await;
            }
            latencies
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await?);
    }
    let elapsed = start.elapsed();
    all.sort();
    let ok = all.len();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "loadgen: sent={} ok={ok} failed={} elapsed_s={:.3} rate_msg_s={:.1} latency_ms p50={:.2} p90={:.2} p99={:.2} max={:.2}",
        args.messages,
        failed.load(Ordering::Relaxed),
        elapsed.as_secs_f64(),
        ok as f64 / elapsed.as_secs_f64(),
        ms(percentile(&all, 0.50)),
        ms(percentile(&all, 0.90)),
        ms(percentile(&all, 0.99)),
        ms(all.last().copied().unwrap_or_default()),
    );
    if failed.load(Ordering::Relaxed) > 0 {
        std::process::exit(1);
    }
    Ok(())
}
