//! A bot to test a game client against: it joins a lobby and plays back
//! every game message it receives, unchanged, to the other players (a
//! `playerMove` comes back as the same `playerMove`), and says on standard
//! error what happens. It resumes after a dropped connection, joins again
//! if its seat is lost, and stays in the lobby for the next player when one
//! leaves. Ctrl-C leaves the lobby and stops.
//!
//! ```text
//! cargo run --example bot -- --url ws://127.0.0.1:8765 --passphrase jump-rocket
//! ```
//! (in `clients/rust`, or `cargo run -p lobby-relay-client --example bot -- ...`
//! from the repository's root.)

use clap::Parser;
use lobby_relay_client::{Client, Event, GameMessage, Options};

/// Joins a lobby-relay lobby and plays back every game message it receives.
#[derive(Parser)]
#[command(name = "bot")]
struct Args {
    /// The relay's WebSocket URL (a node, or the load balancer).
    #[arg(long, default_value = "ws://127.0.0.1:8765/")]
    url: String,
    /// The lobby's passphrase (the game's players type the same).
    #[arg(long)]
    passphrase: String,
    /// A player token (JWT) for a relay that runs with --auth.
    #[arg(long, env = "LOBBY_RELAY_TOKEN")]
    token: Option<String>,
    /// Stop after playing back this many messages (default: never).
    #[arg(long)]
    count: Option<u64>,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let options = Options {
        rejoin_on_seat_lost: true,
        auth_token: args.token,
        ..Options::default()
    };
    let mut relay = match Client::connect(&args.url, options) {
        Ok(relay) => relay,
        Err(e) => {
            eprintln!("bot: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    relay.join(&args.passphrase);
    eprintln!("bot: joining {} at {}", args.passphrase, args.url);
    let mut played = 0u64;
    loop {
        let event = tokio::select! {
            event = relay.next_event() => event,
            _ = tokio::signal::ctrl_c() => {
                eprintln!("bot: leaving");
                relay.close();
                continue;
            }
        };
        let Some(event) = event else { break };
        match event {
            Event::Message(message) => {
                let sent = match &message {
                    GameMessage::Json { text, .. } => relay.send_text(text.clone()),
                    GameMessage::Binary(bytes) => relay.send_binary(bytes.clone()),
                };
                if let Err(e) = sent {
                    eprintln!("bot: could not play a message back: {e}");
                }
                played += 1;
                if args.count.is_some_and(|count| played >= count) {
                    eprintln!("bot: played back {played} messages");
                    relay.close();
                }
            }
            Event::Error(error) if error.fatal => {
                eprintln!("bot: {}: {}", error.code, error.message);
            }
            Event::Closed {
                code,
                reason,
                by_client,
            } => {
                eprintln!("bot: closed ({code:?} {reason})");
                return if by_client {
                    std::process::ExitCode::SUCCESS
                } else {
                    std::process::ExitCode::FAILURE
                };
            }
            other => eprintln!("bot: {other:?}"),
        }
    }
    std::process::ExitCode::SUCCESS
}
