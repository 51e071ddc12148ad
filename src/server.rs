//! The accept loop: takes TCP connections, upgrades them to WebSocket, runs a
//! [`Session`] for each, and shuts down gracefully.
//!
//! The caller binds the listener and owns the shutdown signal, so tests can
//! bind `127.0.0.1:0` and run the real server.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::StatusCode;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::lobby::LobbyStore;
use crate::node::Node;
use crate::outbox;
use crate::session::Session;

/// Paths that accept the WebSocket upgrade.
pub const WEBSOCKET_PATHS: [&str; 2] = ["/", "/ws"];
/// Per-connection read buffer. Small: most game messages are tens of bytes,
/// and tens of thousands of connections must fit (tungstenite allocates this
/// up front; its default of 128 KiB costs ~1 GB per 10,000 connections).
const READ_BUFFER: usize = 4 * 1024;
/// Frames are gathered up to this many bytes before a write to the socket;
/// the writer flushes after each batch anyway.
const WRITE_BUFFER: usize = 8 * 1024;
/// Longest time a client may take to complete the WebSocket handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves WebSocket clients on `listener` until `shutdown` resolves, then
/// closes every connection with 1012 (service restart), lets each leave its
/// lobby, and returns once they are done or `config.shutdown_timeout` passed.
pub async fn run<S: LobbyStore>(
    listener: TcpListener,
    node: Arc<Node<S>>,
    shutdown: impl Future<Output = ()>,
) {
    let stop = CancellationToken::new();
    let tracker = TaskTracker::new();
    let permits = Arc::new(Semaphore::new(node.config.max_connections));
    let ws_config = websocket_config(node.config.max_message_bytes);
    let mut backoff = Duration::from_millis(5);
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Usually out of file descriptors: wait for some to free up.
                    tracing::error!(error = %e, "accept failed");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                    continue;
                }
            },
        };
        backoff = Duration::from_millis(5);
        let _ = stream.set_nodelay(true);
        let permit = permits.clone().try_acquire_owned().ok();
        let node = node.clone();
        let stop = stop.clone();
        let (number, member) = node.next_member();
        let span = tracing::info_span!("conn", id = number, %peer);
        tracker.spawn(
            async move {
                match permit {
                    Some(permit) => {
                        handle(node, stream, member, ws_config, stop).await;
                        drop(permit);
                    }
                    None => refuse_busy(stream, ws_config).await,
                }
            }
            .instrument(span),
        );
    }
    drop(listener);
    tracing::info!(
        connections = tracker.len(),
        "shutting down: closing connections with 1012"
    );
    stop.cancel();
    tracker.close();
    if tokio::time::timeout(node.config.shutdown_timeout, tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            remaining = tracker.len(),
            "shutdown deadline passed with connections still open"
        );
    }
}

/// The WebSocket limits and buffer sizes of every connection.
pub fn websocket_config(max_message_bytes: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
        .max_write_buffer_size(WRITE_BUFFER + 2 * max_message_bytes + 1024)
        .max_message_size(Some(max_message_bytes))
        .max_frame_size(Some(max_message_bytes))
}

/// Only `/` and `/ws` upgrade; anything else is a 404.
#[allow(
    clippy::result_large_err,
    reason = "the signature of tungstenite's Callback"
)]
fn check_path(request: &Request, response: Response) -> Result<Response, ErrorResponse> {
    if WEBSOCKET_PATHS.contains(&request.uri().path()) {
        Ok(response)
    } else {
        let mut refusal = ErrorResponse::new(Some("not found: connect to / or /ws\n".into()));
        *refusal.status_mut() = StatusCode::NOT_FOUND;
        Err(refusal)
    }
}

async fn handle<S: LobbyStore>(
    node: Arc<Node<S>>,
    stream: TcpStream,
    member: crate::lobby::MemberId,
    ws_config: WebSocketConfig,
    stop: CancellationToken,
) {
    let upgrade =
        tokio_tungstenite::accept_hdr_async_with_config(stream, check_path, Some(ws_config));
    let ws = match tokio::time::timeout(HANDSHAKE_TIMEOUT, upgrade).await {
        Ok(Ok(ws)) => ws,
        Ok(Err(e)) => return tracing::debug!(error = %e, "handshake failed"),
        Err(_) => return tracing::debug!("handshake timed out"),
    };
    tracing::debug!(event = "connect", "connected");
    let (sink, frames) = ws.split();
    let (outbox, inbox) = outbox::channel(node.config.outbound_queue_bytes);
    let writer = tokio::spawn(outbox::run_writer(sink, inbox).in_current_span());
    let reason = Session::new(node, outbox, member).run(frames, stop).await;
    // The session and its outbox are gone: the writer sends what is left,
    // closes, and ends.
    let _ = writer.await;
    tracing::debug!(event = "disconnect", reason = ?reason, "disconnected");
}

/// Completes the handshake only to say "try again later" (1013).
async fn refuse_busy(stream: TcpStream, ws_config: WebSocketConfig) {
    tracing::warn!("connection limit reached: refusing with 1013");
    let upgrade =
        tokio_tungstenite::accept_hdr_async_with_config(stream, check_path, Some(ws_config));
    if let Ok(Ok(ws)) = tokio::time::timeout(HANDSHAKE_TIMEOUT, upgrade).await {
        let (sink, _frames) = ws.split();
        let (outbox, inbox) = outbox::channel(4096);
        outbox.close(CloseCode::Again, "too many connections");
        drop(outbox);
        outbox::run_writer(sink, inbox).await;
    }
}
