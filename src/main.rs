//! The `lobby-relay` command: parse arguments, bind, serve.

use std::io::Read;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use lobby_relay::config::{LogFormat, Secret, ServeArgs};
use lobby_relay::lobby::redis::{channel, lobby_key};
use lobby_relay::passphrase::LobbyId;
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
enum Command {
    /// Run a relay node (the default).
    Serve(Box<ServeArgs>),
    /// Show where a lobby lives in Redis, given its passphrase, and (with
    /// --redis-url) who is in it. Reads the passphrase from standard input
    /// when it is `-` or missing, so that it stays out of shell history.
    Inspect {
        /// The passphrase as players type it; `-` or nothing: read stdin.
        passphrase: Option<String>,
        /// Redis to read the lobby's members from.
        #[arg(long, env = "LOBBY_RELAY_REDIS_URL")]
        redis_url: Option<String>,
        /// The nodes' --lobby-secret, if they use one (lobby ids are then
        /// HMACs of the passphrase).
        #[arg(long, env = "LOBBY_RELAY_LOBBY_SECRET", hide_env_values = true)]
        lobby_secret: Option<Secret>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        None => serve(cli.serve),
        Some(Command::Serve(args)) => serve(*args),
        Some(Command::Inspect {
            passphrase,
            redis_url,
            lobby_secret,
        }) => inspect(passphrase, redis_url, lobby_secret),
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
        let store = if args.redis_url.is_some() {
            "redis"
        } else {
            "memory"
        };
        let scheme = if args.tls_cert.is_some() { "wss" } else { "ws" };
        tracing::info!(
            addr,
            node_id = config.node_id,
            store,
            scheme,
            capacity = config.lobby_capacity,
            version = env!("CARGO_PKG_VERSION"),
            "listening"
        );
        // Every line logged by the node carries its id (the `node` span).
        let node_span = tracing::info_span!("node", node_id = %config.node_id);
        match lobby_relay::serve(
            listener,
            config,
            args.redis_url.as_deref(),
            shutdown_signal(),
        )
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
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder
            .json()
            .with_current_span(false)
            .with_span_list(true)
            .init(),
    }
    Ok(())
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

fn inspect(
    passphrase: Option<String>,
    redis_url: Option<String>,
    secret: Option<Secret>,
) -> ExitCode {
    let passphrase = match passphrase.as_deref() {
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
    let id = match LobbyId::from_passphrase_keyed(&passphrase, secret.as_ref().map(Secret::bytes)) {
        Ok(id) => id,
        Err(e) => {
            eprintln!("lobby-relay: invalid passphrase: {e}");
            return ExitCode::FAILURE;
        }
    };
    let hex = id.to_string();
    println!("lobby:   {hex}");
    println!("key:     {}", lobby_key(&hex));
    println!("channel: {}", channel(&hex));
    let Some(url) = redis_url else {
        return ExitCode::SUCCESS;
    };
    let members = redis::Client::open(url.as_str()).and_then(|client| {
        let mut conn = client.get_connection_with_timeout(std::time::Duration::from_secs(2))?;
        redis::cmd("HGETALL")
            .arg(lobby_key(&hex))
            .query::<Vec<(u32, String)>>(&mut conn)
    });
    match members {
        Ok(mut members) if !members.is_empty() => {
            members.sort();
            for (seat, member) in members {
                println!("seat {seat}: {member}");
            }
            ExitCode::SUCCESS
        }
        Ok(_) => {
            println!("no members: the lobby does not exist right now");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("lobby-relay: cannot read the lobby from Redis: {e}");
            ExitCode::FAILURE
        }
    }
}
