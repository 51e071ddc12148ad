//! `lobby-relay-bench`: the load generator of docs/benchmarks.md, and the
//! do-nothing relay it is compared with.
//!
//! ```text
//! lobby-relay-bench [OPTIONS]            drive a relay (any relay speaking the protocol)
//! lobby-relay-bench floor --listen ADDR  serve the do-nothing relay (the floor)
//! ```
//!
//! The generator forms `--lobbies` lobbies (player A of each on `--url-a`,
//! player B on `--url-b`), then, after a warm-up, measures for `--duration`:
//! each player sends `--rate` messages a second on a fixed schedule (or, with
//! `--saturate`, as fast as a window of `--window` messages in flight
//! allows), and every message carries its sender, sequence number and
//! *scheduled* send time, so that loss, duplicates, reordering and one-way
//! latency are measured at the receiver without coordinated omission. With
//! `--idle` it only holds the joined connections (memory per connection).
//!
//! It runs on one tokio runtime thread (so that it leaves the cores to the
//! relay), plus one sleeping timer thread that wakes it at the scheduled send
//! times more precisely than tokio's millisecond timer could.

mod client;
mod cpu;
mod floor;
mod join;
mod players;
mod schedule;
mod stats;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

/// A load generator for lobby-relay (and any relay speaking its protocol),
/// and the do-nothing relay it is compared with.
#[derive(Parser)]
#[command(
    name = "lobby-relay-bench",
    version,
    args_conflicts_with_subcommands = true,
    after_help = "Exit status: 0 every check passed; 1 a check failed (a message lost, \
        duplicated or reordered, a lobby not formed, a connection ended early, an \
        unexpected frame: the summary says which); 2 bad options or no runtime.\n\
        Example (two nodes):\n  lobby-relay-bench --url-a ws://127.0.0.1:8765/ \
        --url-b ws://127.0.0.1:8766/ --lobbies 100 --rate 30 --duration 20s --json run.json"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Drive a relay and measure it (the default).
    Run(Box<RunArgs>),
    /// Serve the "floor": a do-nothing relay that answers `join` with
    /// `joined`, sends `ready` to both players when two connections sent the
    /// same passphrase, and forwards frames between the pair with no other
    /// check and no Redis (one node only).
    Floor(floor::FloorArgs),
}

/// Options of a run.
#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    /// Where player A of every lobby connects (`ws://`, or `wss://` with
    /// `--ca-cert`).
    #[arg(long, env = "BENCH_URL_A", default_value = "ws://127.0.0.1:8765/")]
    pub url_a: String,

    /// Where player B of every lobby connects (default: --url-a, one node).
    #[arg(long, env = "BENCH_URL_B")]
    pub url_b: Option<String>,

    /// Lobbies to form (two players each).
    #[arg(long, default_value_t = 100)]
    pub lobbies: usize,

    /// Messages per second per player, evenly spread over time and over the
    /// players.
    #[arg(long, default_value_t = 30.0)]
    pub rate: f64,

    /// Size of each game message in bytes (a JSON text frame padded to it;
    /// at least the ~50 bytes of its fields).
    #[arg(long, default_value_t = 64)]
    pub size: usize,

    /// Length of the measured interval, e.g. `10s`.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub duration: Duration,

    /// Sending before the measured interval (not measured), e.g. `2s`.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub warmup: Duration,

    /// After the last send, the longest wait for messages still in flight
    /// before the missing ones are counted as lost.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub drain: Duration,

    /// Saturation: instead of --rate, each player keeps up to --window
    /// messages in flight (sent, not yet delivered) and sends as fast as
    /// that allows.
    #[arg(long, conflicts_with = "idle")]
    pub saturate: bool,

    /// Messages in flight per player with --saturate.
    #[arg(long, default_value_t = 32)]
    pub window: usize,

    /// Join the lobbies and hold them for --duration, sending nothing
    /// (memory per connection).
    #[arg(long)]
    pub idle: bool,

    /// Processes to report CPU seconds and RSS of over the measured
    /// interval: comma-separated `PID` or `NAME=PID`.
    #[arg(long, value_delimiter = ',', value_parser = cpu::parse_pid)]
    pub pids: Vec<cpu::Watched>,

    /// Write the JSON summary to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,

    /// Name of the run in the summary.
    #[arg(long, default_value = "run")]
    pub label: String,

    /// Passphrases are `PREFIX-N`. Default: a random prefix, so that runs
    /// never collide.
    #[arg(long)]
    pub passphrase_prefix: Option<String>,

    /// Lobbies being formed at once.
    #[arg(long, default_value_t = 256)]
    pub join_concurrency: usize,

    /// The longest one lobby may take to form (both connects, both joins,
    /// both `ready`s).
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub join_timeout: Duration,

    /// Grid of the send schedule: scheduled send times are multiples of it,
    /// and the players due at one tick are sent together (one wake-up).
    #[arg(long, default_value = "250us", value_parser = humantime::parse_duration)]
    pub tick: Duration,

    /// PEM file of the CA certificate(s) that signed a `wss://` relay's
    /// certificate (needed for `wss://` URLs; nothing else is trusted).
    #[arg(long)]
    pub ca_cert: Option<PathBuf>,

    /// Quick match: every player joins this queue instead of a passphrase
    /// of its pair (`{"type":"join","queue":NAME}`); the relay pairs them as
    /// it likes, so only with `--idle` (the joins, not the messages, are
    /// measured). Default: passphrases.
    #[arg(long, requires = "idle")]
    pub queue: Option<String>,

    /// Players join with `"resume":true` (the relay keeps their recent
    /// deliveries for a resume: what that costs).
    #[arg(long)]
    pub resume: bool,

    /// No progress line on stderr.
    #[arg(long)]
    pub quiet: bool,
}

impl RunArgs {
    pub fn url_b(&self) -> &str {
        self.url_b.as_deref().unwrap_or(&self.url_a)
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Floor(args)) => floor::run(args),
        Some(Command::Run(args)) => run(*args),
        None => run(cli.run),
    }
}

fn run(args: RunArgs) -> ExitCode {
    if let Err(e) = check(&args) {
        eprintln!("lobby-relay-bench: {e}");
        return ExitCode::from(2);
    }
    cpu::tighten_timer_slack();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("lobby-relay-bench: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let local = tokio::task::LocalSet::new();
    let summary = match local.block_on(&runtime, client::run(args.clone())) {
        Ok(summary) => summary,
        Err(e) => {
            eprintln!("lobby-relay-bench: {e}");
            return ExitCode::from(2);
        }
    };
    summary.print();
    if let Some(path) = &args.json {
        let written = serde_json::to_string_pretty(&summary)
            .map_err(|e| e.to_string())
            .and_then(|json| std::fs::write(path, json + "\n").map_err(|e| e.to_string()));
        if let Err(e) = written {
            eprintln!("lobby-relay-bench: cannot write {}: {e}", path.display());
            return ExitCode::from(2);
        }
    }
    // Connections still open are closed by the exit.
    drop(local);
    runtime.shutdown_background();
    if summary.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn check(args: &RunArgs) -> Result<(), String> {
    if args.lobbies == 0 {
        return Err("--lobbies must be at least 1".into());
    }
    if !(args.rate > 0.0 && args.rate.is_finite()) {
        return Err("--rate must be above 0".into());
    }
    if args.window == 0 {
        return Err("--window must be at least 1".into());
    }
    if args.join_concurrency == 0 {
        return Err("--join-concurrency must be at least 1".into());
    }
    if args.tick.is_zero() {
        return Err("--tick must be above 0".into());
    }
    if let Some(prefix) = &args.passphrase_prefix {
        let ok = !prefix.is_empty()
            && prefix.len() <= 40
            && prefix
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && prefix.as_bytes()[0].is_ascii_alphanumeric();
        if !ok {
            return Err(
                "--passphrase-prefix: 1 to 40 of a-z, 0-9 and '-', starting with a letter or digit"
                    .into(),
            );
        }
    }
    for url in [args.url_a.as_str(), args.url_b()] {
        join::resolve(url, args.ca_cert.as_deref())?;
    }
    Ok(())
}

/// Resolves `host:port` once (no resolver thread per connection).
pub fn resolve_host(host: &str, port: u16) -> Result<SocketAddr, String> {
    use std::net::ToSocketAddrs;
    (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {host}: {e}"))?
        .next()
        .ok_or_else(|| format!("{host} has no address"))
}
