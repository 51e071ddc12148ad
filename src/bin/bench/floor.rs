//! The floor: a do-nothing relay, to measure what the WebSocket stack, the
//! kernel and the load generator cost by themselves.
//!
//! It answers a `join` with `joined`, sends `ready` to both players when a
//! second connection sends the same passphrase, and from then on forwards
//! every frame of one to the other, byte for byte: no validation, no limits,
//! no Redis, one node. Built like a careful minimal relay (one reader task
//! and one batching writer task per connection, frames fed and flushed once
//! per batch), so that it is a fair floor, not a straw man.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::{Arc, Mutex, OnceLock};

use clap::Args;
use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// Options of `lobby-relay-bench floor`.
#[derive(Args, Debug)]
pub struct FloorArgs {
    /// Address to serve WebSocket on.
    #[arg(long, default_value = "127.0.0.1:8790")]
    pub listen: SocketAddr,

    /// Runtime worker threads (default: one per core, like lobby-relay).
    #[arg(long)]
    pub threads: Option<usize>,
}

type Outbound = mpsc::UnboundedSender<Message>;

/// The first player of a lobby, waiting for the second.
struct Waiting {
    conn: u64,
    tx: Outbound,
    peer: Arc<OnceLock<Outbound>>,
}

#[derive(Default)]
struct Lobbies {
    waiting: Mutex<HashMap<String, Waiting>>,
}

/// Frames fed to the socket before one flush.
const BATCH: usize = 64;

pub fn run(args: FloorArgs) -> ExitCode {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = args.threads {
        builder.worker_threads(n.max(1));
    }
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("floor: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let listener = match listen(args.listen) {
            Ok(l) => l,
            Err(e) => {
                eprintln!("floor: cannot listen on {}: {e}", args.listen);
                return ExitCode::FAILURE;
            }
        };
        eprintln!("floor: listening on {}", args.listen);
        let lobbies = Arc::new(Lobbies::default());
        let mut next_conn = 0u64;
        loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => {
                        next_conn += 1;
                        tokio::spawn(serve(stream, next_conn, lobbies.clone()));
                    }
                    Err(e) => {
                        // Out of file descriptors, say: wait a little.
                        eprintln!("floor: accept: {e}");
                        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                    }
                },
                _ = tokio::signal::ctrl_c() => return ExitCode::SUCCESS,
            }
        }
    })
}

/// Binds with a backlog of 4096: tokio's `TcpListener::bind` asks for 128,
/// and a burst of connects beyond it costs a 1 s SYN retransmission each.
fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(4096)
}

/// The passphrase of a join, either form; `None` for anything else.
fn passphrase(text: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(text).ok()?;
    let p = match v.get("type").and_then(|t| t.as_str()) {
        Some("join") => v.get("passphrase"),
        Some(_) => None,
        None => v.get("join"),
    }?;
    Some(p.as_str()?.trim().to_ascii_lowercase())
}

async fn serve(stream: TcpStream, conn: u64, lobbies: Arc<Lobbies>) {
    let _ = stream.set_nodelay(true);
    let config = WebSocketConfig::default().read_buffer_size(8 * 1024);
    let Ok(ws) = tokio_tungstenite::accept_async_with_config(stream, Some(config)).await else {
        return;
    };
    let (mut sink, mut frames) = ws.split();
    let (tx, mut rx) = mpsc::unbounded_channel::<Message>();
    let writer = tokio::spawn(async move {
        let mut batch = Vec::with_capacity(BATCH);
        while rx.recv_many(&mut batch, BATCH).await > 0 {
            for m in batch.drain(..) {
                if sink.feed(m).await.is_err() {
                    return;
                }
            }
            if sink.flush().await.is_err() {
                return;
            }
        }
        let _ = sink.close().await;
    });
    let peer: Arc<OnceLock<Outbound>> = Arc::default();
    let mut lobby: Option<String> = None;
    while let Some(Ok(frame)) = frames.next().await {
        match frame {
            Message::Text(_) | Message::Binary(_) => {
                if let Some(p) = peer.get() {
                    let _ = p.send(frame);
                    continue;
                }
                if lobby.is_some() {
                    continue; // Waiting for the second player: dropped.
                }
                let Message::Text(text) = &frame else {
                    continue;
                };
                let Some(pass) = passphrase(text) else {
                    continue;
                };
                join(&lobbies, pass.clone(), conn, &tx, &peer);
                lobby = Some(pass);
            }
            Message::Close(_) => break,
            _ => {}
        }
    }
    if let Some(pass) = lobby {
        let mut waiting = lobbies.waiting.lock().expect("lobbies lock");
        if waiting.get(&pass).is_some_and(|w| w.conn == conn) {
            waiting.remove(&pass);
        }
    }
    drop(tx);
    let _ = writer.await;
}

fn join(lobbies: &Lobbies, pass: String, conn: u64, tx: &Outbound, peer: &Arc<OnceLock<Outbound>>) {
    let first = {
        let mut waiting = lobbies.waiting.lock().expect("lobbies lock");
        match waiting.remove(&pass) {
            Some(first) => Some(first),
            None => {
                waiting.insert(
                    pass,
                    Waiting {
                        conn,
                        tx: tx.clone(),
                        peer: peer.clone(),
                    },
                );
                None
            }
        }
    };
    match first {
        None => {
            let _ = tx.send(Message::text(
                r#"{"type":"joined","players":1,"capacity":2,"seat":1}"#,
            ));
        }
        Some(first) => {
            let _ = tx.send(Message::text(
                r#"{"type":"joined","players":2,"capacity":2,"seat":2}"#,
            ));
            let _ = peer.set(first.tx.clone());
            let _ = first.peer.set(tx.clone());
            let ready = Message::text(r#"{"type":"ready","players":2}"#);
            let _ = first.tx.send(ready.clone());
            let _ = tx.send(ready);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::passphrase;

    #[test]
    fn both_join_forms() {
        assert_eq!(
            passphrase(r#"{"type":"join","passphrase":"Jump-Rocket"}"#).as_deref(),
            Some("jump-rocket")
        );
        assert_eq!(passphrase(r#"{"join":"abc"}"#).as_deref(), Some("abc"));
        assert_eq!(passphrase(r#"{"type":"x","join":"abc"}"#), None);
    }
}
