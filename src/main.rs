//! The `lobby-relay` command: parse arguments, bind, serve.

use std::io::{IsTerminal, Read};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use lobby_relay::config::{LogFormat, ServeArgs};
use lobby_relay::inspect;
use lobby_relay::passphrase::LobbyId;
use lobby_relay::secret::Secret;
use tracing::Instrument;

/// A real-time WebSocket relay for multiplayer games. Players who type the
/// same passphrase meet in a lobby and exchange game messages through it.
///
/// Without a subcommand, `lobby-relay` serves (same as `lobby-relay serve`).
#[derive(Parser)]
#[command(version, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once, at start
enum Command {
    /// Run a relay node (the default).
    Serve(Box<ServeArgs>),
    /// Read what Redis holds: `inspect nodes`, `inspect lobbies`,
    /// `inspect queues` (quick match), or one lobby (`inspect lobby
    /// PASSPHRASE`, or just `inspect PASSPHRASE`).
    /// Tables for people; `--json` for scripts. The passphrase is read from
    /// standard input when it is `-` or missing, so that it stays out of shell
    /// history; it is hashed here and never sent to Redis.
    #[command(args_conflicts_with_subcommands = true)]
    Inspect {
        #[command(subcommand)]
        what: Option<InspectWhat>,
        #[command(flatten)]
        lobby: LobbyArgs,
        #[command(flatten)]
        common: InspectArgs,
    },
    /// Mint a player token (a JWT) for local testing of `--auth`, signed
    /// like a studio's backend would sign it, and print it. See
    /// docs/authentication.md.
    Token(Box<lobby_relay::auth::token::TokenArgs>),
}

#[derive(Subcommand)]
enum InspectWhat {
    /// Nodes that announced themselves: alive (heartbeat, ms left), lobbies
    /// and members they hold.
    Nodes {
        #[command(flatten)]
        common: InspectArgs,
    },
    /// Every lobby: hash, players, seats, host seat and epoch, queue (quick
    /// match), spectators, nodes (a lobby watched while it has no player
    /// too).
    Lobbies {
        #[command(flatten)]
        common: InspectArgs,
    },
    /// Every quick-match queue: its name, how many lobbies it has (full ones
    /// included), its open lobby (the one waiting for players; `-` if none)
    /// and the players seated in it.
    Queues {
        #[command(flatten)]
        common: InspectArgs,
    },
    /// One lobby, by passphrase or hash: its key, channel, host and epoch,
    /// queue (quick match), spectators (by node), seats and nodes.
    Lobby {
        #[command(flatten)]
        lobby: LobbyArgs,
        #[command(flatten)]
        common: InspectArgs,
    },
}

#[derive(clap::Args)]
struct LobbyArgs {
    /// The passphrase as players type it; `-` or nothing: read stdin.
    passphrase: Option<String>,
    /// The lobby's hash (64 hex digits) instead of its passphrase.
    #[arg(long, conflicts_with = "passphrase")]
    hash: Option<String>,
    /// The nodes' --lobby-secret, if they use one (lobby ids are then HMACs
    /// of the passphrase).
    #[arg(long, env = "LOBBY_RELAY_LOBBY_SECRET", hide_env_values = true)]
    lobby_secret: Option<Secret>,
}

#[derive(clap::Args)]
struct InspectArgs {
    /// The cluster's Redis.
    #[arg(
        long,
        env = "LOBBY_RELAY_REDIS_URL",
        global = true,
        hide_env_values = true
    )]
    redis_url: Option<String>,
    /// With `rediss://`: the PEM CA certificate(s) to verify Redis with.
    #[arg(long, env = "LOBBY_RELAY_REDIS_CA_CERT", global = true)]
    redis_ca_cert: Option<std::path::PathBuf>,
    /// Print JSON instead of a table.
    #[arg(long, global = true)]
    json: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        None => serve(cli.serve),
        Some(Command::Serve(args)) => serve(*args),
        Some(Command::Inspect {
            what,
            lobby,
            common,
        }) => match what {
            None => inspect_lobby(lobby, common),
            Some(InspectWhat::Lobby { lobby, common }) => inspect_lobby(lobby, common),
            Some(InspectWhat::Nodes { common }) => inspect_list(common, "nodes"),
            Some(InspectWhat::Lobbies { common }) => inspect_list(common, "lobbies"),
            Some(InspectWhat::Queues { common }) => inspect_list(common, "queues"),
        },
        Some(Command::Token(args)) => match lobby_relay::auth::token::mint(&args) {
            Ok(token) => {
                println!("{token}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("lobby-relay token: {e}");
                ExitCode::FAILURE
            }
        },
    }
}

fn serve(args: ServeArgs) -> ExitCode {
    if let Err(e) = init_logging(args.log_format, &args.log_filter) {
        eprintln!("lobby-relay: --log-filter: {e}");
        return ExitCode::FAILURE;
    }
    let config = args.config();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("lobby-relay: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let listener = match lobby_relay::server::bind(args.listen) {
            Ok(listener) => listener,
            Err(e) => {
                tracing::error!(addr = %args.listen, error = %e, "cannot listen");
                eprintln!("lobby-relay: cannot listen on {}: {e}", args.listen);
                return ExitCode::FAILURE;
            }
        };
        let addr = listener
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        let store = if config.store.redis_url.is_some() {
            "redis"
        } else {
            "memory"
        };
        let scheme = if args.tls_cert.is_some() { "wss" } else { "ws" };
        // The address to open in a browser (an unspecified address means
        // this machine too).
        let playground = listener
            .local_addr()
            .ok()
            .filter(|_| config.http.playground)
            .map(|mut a| {
                if a.ip().is_unspecified() {
                    a.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
                }
                let http = if args.tls_cert.is_some() {
                    "https"
                } else {
                    "http"
                };
                format!("{http}://{a}/")
            });
        tracing::info!(
            addr,
            playground,
            node_id = config.node_id,
            store,
            scheme,
            capacity = config.lobby_capacity,
            version = env!("CARGO_PKG_VERSION"),
            "listening"
        );
        // Every line logged by the node carries its id (the `node` span).
        let node_span = tracing::info_span!("node", node_id = %config.node_id);
        match lobby_relay::serve(listener, config, shutdown_signal())
            .instrument(node_span)
            .await
        {
            Ok(()) => {
                tracing::info!("stopped");
                ExitCode::SUCCESS
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot start");
                eprintln!("lobby-relay: {e}");
                ExitCode::FAILURE
            }
        }
    })
}

fn init_logging(format: LogFormat, filter: &str) -> Result<(), String> {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_new(filter).map_err(|e| e.to_string())?;
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        // Logs go to standard output: colour only when that is a terminal
        // (not a file, a pipe, `docker logs`), and never with NO_COLOR set.
        LogFormat::Text => builder
            .with_ansi(log_colour(
                std::io::stdout().is_terminal(),
                std::env::var_os("NO_COLOR"),
            ))
            .init(),
        LogFormat::Json => builder
            .json()
            .with_current_span(false)
            .with_span_list(true)
            .init(),
    }
    Ok(())
}

/// Whether text logs are coloured (ANSI escapes): only on a terminal, and not
/// when `NO_COLOR` is set to a non-empty value (<https://no-color.org>).
fn log_colour(stdout_is_terminal: bool, no_color: Option<std::ffi::OsString>) -> bool {
    stdout_is_terminal && no_color.is_none_or(|value| value.is_empty())
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutdown signal received");
}

/// Connects `inspect` to the Redis or Redis Cluster of `url`.
fn inspect_store(url: &str, ca_cert: Option<&std::path::Path>) -> Result<inspect::Store, String> {
    let ca_cert = match ca_cert {
        Some(path) => Some(
            std::fs::read(path).map_err(|e| format!("--redis-ca-cert {}: {e}", path.display()))?,
        ),
        None => None,
    };
    inspect::Store::open(url, ca_cert)
}

fn inspect_list(common: InspectArgs, what: &str) -> ExitCode {
    let Some(url) = common.redis_url else {
        eprintln!("lobby-relay: inspect {what} needs --redis-url (or LOBBY_RELAY_REDIS_URL)");
        return ExitCode::from(2);
    };
    let result = inspect_store(&url, common.redis_ca_cert.as_deref()).and_then(|mut store| {
        let rows = match what {
            "nodes" => inspect::nodes(&mut store),
            "queues" => inspect::queues(&mut store),
            _ => inspect::all_lobbies(&mut store),
        };
        rows.map(|rows| (rows, store.is_cluster()))
    });
    match result {
        Ok((rows, _)) if common.json => {
            println!("{rows}");
            ExitCode::SUCCESS
        }
        Ok((rows, cluster)) => {
            let columns: &[&str] = match what {
                "nodes" => &["node", "alive", "ttl_ms", "lobbies", "members"],
                // In a cluster, also the master each queue or lobby is on.
                "queues" if cluster => &["queue", "lobbies", "open", "open_players", "shard"],
                "queues" => &["queue", "lobbies", "open", "open_players"],
                _ if cluster => &[
                    "lobby",
                    "players",
                    "seats",
                    "host",
                    "epoch",
                    "queue",
                    "spectators",
                    "nodes",
                    "shard",
                ],
                _ => &[
                    "lobby",
                    "players",
                    "seats",
                    "host",
                    "epoch",
                    "queue",
                    "spectators",
                    "nodes",
                ],
            };
            println!("{}", inspect::table(&rows, columns));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("lobby-relay: {e}");
            ExitCode::FAILURE
        }
    }
}

fn inspect_lobby(lobby: LobbyArgs, common: InspectArgs) -> ExitCode {
    let hex = match lobby.hash {
        Some(hex) => match LobbyId::from_hex(&hex.to_ascii_lowercase()) {
            Some(id) => id.to_string(),
            None => {
                eprintln!("lobby-relay: --hash takes the 64 hex digits of a lobby id");
                return ExitCode::from(2);
            }
        },
        None => {
            let passphrase = match lobby.passphrase.as_deref() {
                Some(p) if p != "-" => p.to_owned(),
                _ => {
                    let mut input = String::new();
                    if let Err(e) = std::io::stdin().read_to_string(&mut input) {
                        eprintln!("lobby-relay: cannot read the passphrase from stdin: {e}");
                        return ExitCode::FAILURE;
                    }
                    input
                }
            };
            let secret = lobby.lobby_secret.as_ref().map(Secret::bytes);
            match LobbyId::from_passphrase_keyed(&passphrase, secret) {
                Ok(id) => id.to_string(),
                Err(e) => {
                    eprintln!("lobby-relay: invalid passphrase: {e}");
                    return ExitCode::FAILURE;
                }
            }
        }
    };
    let report = match &common.redis_url {
        None => inspect::lobby(None, &hex),
        Some(url) => inspect_store(url, common.redis_ca_cert.as_deref())
            .and_then(|mut store| inspect::lobby(Some(&mut store), &hex)),
    };
    let report = match report {
        Ok(report) => report,
        Err(e) => {
            eprintln!("lobby-relay: {e}");
            return ExitCode::FAILURE;
        }
    };
    if common.json {
        println!("{report}");
        return ExitCode::SUCCESS;
    }
    println!("lobby:   {hex}");
    println!("key:     {}", report["key"].as_str().unwrap_or_default());
    println!(
        "channel: {}",
        report["channel"].as_str().unwrap_or_default()
    );
    // In a cluster: the hash slot and the master that serves it.
    if let Some(slot) = report["slot"].as_u64() {
        let shard = report["shard"].as_str().unwrap_or("no master serves it");
        println!("shard:   {shard} (slot {slot})");
    }
    if common.redis_url.is_none() {
        return ExitCode::SUCCESS;
    }
    match (report["host"].as_u64(), report["epoch"].as_u64()) {
        (Some(host), Some(epoch)) => println!("host:    seat {host} (epoch {epoch})"),
        (Some(host), None) => println!("host:    seat {host}"),
        _ => println!("host:    none recorded"),
    }
    if let Some(queue) = report["queue"].as_str() {
        println!("queue:   {queue}");
    }
    // The spectators, and how many watch from each node.
    let spectators = report["spectators"].as_u64().unwrap_or(0);
    let by_node = report["spectators_by_node"]
        .as_object()
        .map(|nodes| {
            nodes
                .iter()
                .map(|(node, count)| format!("{node} {count}"))
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default();
    if spectators > 0 {
        println!("watched: {spectators} spectator(s) ({by_node})");
    }
    match report["seats"].as_array() {
        Some(seats) if !seats.is_empty() => {
            for seat in seats {
                let state = match (seat["resumable"] == true, seat["away"] == true) {
                    (_, true) => " (away: held for a resume)",
                    (true, false) => " (resumable)",
                    _ => "",
                };
                let host = if seat["host"] == true { " (host)" } else { "" };
                println!(
                    "seat {}: {}{host}{state}",
                    seat["seat"],
                    seat["member"].as_str().unwrap_or_default()
                );
            }
        }
        _ if spectators > 0 => println!("no players: only spectators watch it"),
        _ => println!("no members: the lobby does not exist right now"),
    }
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::log_colour;

    #[test]
    fn text_logs_are_coloured_only_on_a_terminal_without_no_color() {
        assert!(log_colour(true, None));
        assert!(log_colour(true, Some("".into())), "empty NO_COLOR is unset");
        assert!(!log_colour(true, Some("1".into())));
        assert!(!log_colour(false, None));
        assert!(!log_colour(false, Some("1".into())));
    }
}
