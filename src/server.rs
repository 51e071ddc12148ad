//! The accept loop: takes TCP connections, serves each one's HTTP request
//! (HTTP/1.1 by hyper; what plain requests are answered is [`crate::http`]),
//! hands a WebSocket upgrade to tungstenite, runs a [`Session`] for each
//! WebSocket, and drains gracefully.
//!
//! The caller binds the listener and owns the shutdown signal, so tests can
//! bind `127.0.0.1:0` and run the real server.

use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::upgrade::OnUpgrade;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::admission::{Admission, Limit, Limits, Place};
use crate::both::both;
use crate::client_addr;
use crate::closing;
use crate::http::{Body, Routed, Site, text, websocket_key};
use crate::lobby::LobbyStore;
use crate::metrics;
use crate::node::Node;
use crate::outbox;
use crate::read_ahead::ReadAhead;
use crate::session::{EndReason, Session};

/// tungstenite's read buffer, per connection. Small: tungstenite allocates
/// it up front, zero-fills it and never shrinks it, so for an idle connection
/// it is all resident (its default of 128 KiB costs ~1 GB per 10,000
/// connections; 4 KiB was a quarter of the relay's memory per connection).
/// Most game messages are tens of bytes; a larger one grows it to its size.
/// Reads from the socket are still up to 4 KiB at a time ([`ReadAhead`]).
const READ_BUFFER: usize = 256;
/// The socket under each WebSocket: reads from it go through [`ReadAhead`].
type Socket = ReadAhead<TokioIo<hyper::upgrade::Upgraded>>;
/// Frames are gathered up to this many bytes before a write to the socket;
/// the writer flushes after each batch anyway.
const WRITE_BUFFER: usize = 8 * 1024;
/// Largest HTTP request head accepted (a WebSocket handshake needs ~1 KiB).
const MAX_HEADER_BYTES: usize = 16 * 1024;

/// Room for connections the kernel has accepted and the node not yet taken:
/// tokio's default (128) overflows when thousands of players reconnect at
/// once, and each dropped connect then waits a 1 s retransmission (measured:
/// join-to-ready p99 of about 1 s in the join benchmark).
const LISTEN_BACKLOG: u32 = 4096;

/// Binds the relay's listening socket (address reuse on, a deep backlog).
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Serves clients on `listener` until `shutdown` resolves, then drains: the
/// node reports not-ready, refuses new WebSockets, closes every connection
/// with 1012 (service restart), lets each leave its lobby, and returns once
/// they are done or `config.drain.timeout` has passed.
pub async fn run<S: LobbyStore>(
    listener: TcpListener,
    node: Arc<Node<S>>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shutdown: impl Future<Output = ()>,
) {
    crate::admission::warn_if_files_are_short(node.config().limits.max_connections);
    let server = Arc::new(Server {
        tls,
        ws_config: websocket_config(node.config().limits.max_message_bytes),
        limits: Limits::new(
            node.config().limits.max_connections,
            node.config().limits.max_connections_per_address,
        ),
        stop: CancellationToken::new(),
        sessions: TaskTracker::new(),
        site: Site::new(node.clone()),
        node,
    });
    let accepting = accept_loop(&listener, &server);
    tokio::select! {
        _ = shutdown => {}
        _ = accepting => {}
    }
    server.node.start_draining();
    let deadline = tokio::time::Instant::now() + server.node.config().drain.timeout;
    // Keep answering health checks (readyz: 503) until the end.
    let drained = async {
        let delay = server.node.config().drain.delay;
        if !delay.is_zero() {
            tracing::info!(
                ?delay,
                "draining: reporting not-ready before closing connections"
            );
            tokio::time::sleep(delay).await;
        }
        tracing::info!(
            connections = server.sessions.len(),
            "draining: closing connections with 1012"
        );
        server.stop.cancel();
        server.sessions.close();
        server.sessions.wait().await;
    };
    tokio::select! {
        _ = drained => {}
        _ = accept_loop(&listener, &server) => {}
        _ = tokio::time::sleep_until(deadline) => {
            tracing::warn!(
                remaining = server.sessions.len(),
                "shutdown deadline passed with connections still open"
            );
        }
    }
    server.node.goodbye().await;
}

/// What every connection task shares.
struct Server<S> {
    node: Arc<Node<S>>,
    ws_config: WebSocketConfig,
    /// `--max-connections` and `--max-connections-per-address`, counted
    /// from accept.
    limits: Limits,
    /// Set when serving `wss://` directly.
    tls: Option<tokio_rustls::TlsAcceptor>,
    /// Cancelled when the node drains: every session closes with 1012.
    stop: CancellationToken,
    /// The running sessions, waited for when draining.
    sessions: TaskTracker,
    /// What answers plain HTTP requests.
    site: Site<S>,
}

async fn accept_loop<S: LobbyStore>(listener: &TcpListener, server: &Arc<Server<S>>) {
    let mut backoff = Duration::from_millis(5);
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Usually out of file descriptors: wait for some to free up.
                tracing::error!(error = %e, "accept failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        backoff = Duration::from_millis(5);
        // Counted here, in the order of accepting, before anything is read.
        let proxies = &server.node.config().http.trusted_proxies;
        let client = (!proxies.trusts(peer.ip())).then_some(peer.ip());
        let Some(admission) = server.limits.admit(client) else {
            tracing::debug!(%peer, "over the connection limits, reserve full: closed unread");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let server = server.clone();
        tokio::spawn(
            async move { server.accepted(stream, peer, admission).await }.in_current_span(),
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

/// An accepted upgrade, handed from the HTTP service to the connection task.
struct Upgrade {
    on_upgrade: OnUpgrade,
    /// The client's address (from `X-Forwarded-For` of a trusted proxy).
    client: IpAddr,
    /// The player's token (Authorization header or `token` query
    /// parameter), where player authentication is on.
    token: Option<String>,
}

impl<S: LobbyStore> Server<S> {
    /// Takes a new TCP connection through the PROXY protocol (from a trusted
    /// proxy) and TLS (when configured), then serves it.
    async fn accepted(
        self: Arc<Self>,
        mut stream: TcpStream,
        mut peer: SocketAddr,
        mut admission: Admission,
    ) {
        let config = self.node.config();
        let proxies = &config.http.trusted_proxies;
        if proxies.proxy_protocol && proxies.trusts(peer.ip()) {
            let timeout = admission.handshake_timeout(config.limits.handshake_timeout);
            match tokio::time::timeout(timeout, client_addr::read_proxy_header(&mut stream)).await {
                Ok(Ok(Some(client))) => {
                    peer = client;
                    admission = match self.limits.name_client(admission, client.ip()) {
                        Some(admission) => admission,
                        None => {
                            return tracing::debug!(%peer, "over the connection limits, reserve full: closed");
                        }
                    };
                }
                Ok(Ok(None)) => {} // the proxy's own health check
                Ok(Err(e)) => return tracing::info!(%peer, error = %e, "refused: bad PROXY header"),
                Err(_) => return tracing::debug!(%peer, "PROXY header timed out"),
            }
        }
        let timeout = admission.handshake_timeout(config.limits.handshake_timeout);
        match self.tls.clone() {
            None => self.connection(stream, peer, admission).await,
            Some(tls) => match tokio::time::timeout(timeout, tls.accept(stream)).await {
                Ok(Ok(stream)) => self.connection(stream, peer, admission).await,
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
            },
        }
    }

    /// Serves one TCP connection: one HTTP request (answers close it), and if it
    /// was a WebSocket upgrade, the session that follows.
    async fn connection<I>(self: Arc<Self>, stream: I, peer: SocketAddr, admission: Admission)
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let upgrade: Arc<Mutex<Option<Upgrade>>> = Arc::default();
        let over = admission.over();
        let service = {
            let server = self.clone();
            let upgrade = upgrade.clone();
            service_fn(move |request: Request<Incoming>| {
                let server = server.clone();
                let upgrade = upgrade.clone();
                async move {
                    let response = match server.site.answer(request, peer.ip(), over).await {
                        Routed::Answer(response) => response,
                        Routed::WebSocket(request) => server.upgrade(request, peer.ip(), &upgrade),
                    };
                    Ok::<_, Infallible>(response)
                }
            })
        };
        let timeout = admission.handshake_timeout(self.node.config().limits.handshake_timeout);
        let serving = http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(timeout)
            .max_buf_size(MAX_HEADER_BYTES)
            .serve_connection(TokioIo::new(stream), service)
            .with_upgrades();
        // The whole HTTP phase is bounded, silent clients included.
        match tokio::time::timeout(timeout, serving).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::debug!(%peer, error = %e, "HTTP connection failed"),
            Err(_) => {
                tracing::debug!(%peer, "handshake timed out");
                return;
            }
        }
        let Some(Upgrade {
            on_upgrade,
            client,
            token,
        }) = upgrade.lock().unwrap_or_else(|e| e.into_inner()).take()
        else {
            return;
        };
        // Behind a trusted proxy without the PROXY protocol, the client is
        // known from here (X-Forwarded-For). Over its limit with the reserve
        // full, the upgraded connection is dropped without a close frame.
        let admission = self.limits.name_client(admission, client);
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        let ws = WebSocketStream::from_raw_socket(
            ReadAhead::new(TokioIo::new(upgraded)),
            Role::Server,
            Some(self.ws_config),
        )
        .await;
        let span = tracing::info_span!("conn", id = next_connection(), peer = %client);
        match admission {
            Some(Admission::Admitted(place)) => {
                // A task of its own: this one's future holds the states of
                // the accept, TLS and HTTP phases (about 14 KiB), which an
                // idle connection should not keep.
                let session = span.in_scope(|| self.session(ws, client, token, place));
                self.sessions.spawn(session.instrument(span));
            }
            Some(Admission::Reserve(limit, held)) => {
                span.in_scope(|| match limit {
                    Limit::Node => tracing::warn!("connection limit reached: closing with 1013"),
                    Limit::Address => {
                        tracing::warn!("connection limit per address reached: closing with 1013")
                    }
                });
                close_at_once(ws, CloseCode::Again, limit.reason()).await;
                drop(held);
            }
            None => tracing::debug!(%client, "over the connection limits, reserve full: closed"),
        }
    }

    /// A WebSocket's session: the reader ([`Session::run`]) and the writer
    /// ([`outbox::run_writer`]) as one future, for a task of its own. Built
    /// from plain structs (no `async fn` around them, which would keep its
    /// arguments beside the futures it awaits): an idle connection is mostly
    /// this future, so its size is memory per connection.
    fn session(
        &self,
        ws: WebSocketStream<Socket>,
        client: IpAddr,
        token: Option<String>,
        held: Place,
    ) -> impl Future<Output = ()> + Send + 'static {
        use futures_util::{FutureExt, StreamExt};
        tracing::debug!(event = "connect", "connected");
        metrics::get().connections.increment(1.0);
        let (sink, frames) = ws.split();
        let (outbox, inbox) = outbox::channel(self.node.config().limits.outbound_queue_bytes);
        let reading = Session::new(self.node.clone(), outbox, client, token.as_deref())
            .run(frames, self.stop.clone());
        // Once the session and its outbox are gone, the writer sends what
        // is left, closes, and ends; then the socket is closed in good order.
        both(reading, outbox::run_writer(sink, inbox)).then(move |((reason, frames), sink)| {
            metrics::get().connections.decrement(1.0);
            tracing::debug!(event = "disconnect", reason = ?reason, "disconnected");
            // Boxed: it runs once, and its state would otherwise take
            // room in every connection's future, idle or not.
            Box::pin(async move {
                closing::linger(frames, sink, frames_after(reason)).await;
                // The connection counts against the limits until its
                // socket is closed.
                drop(held);
            })
        })
    }

    /// Answers a WebSocket upgrade request: 101, with the upgrade handed to
    /// the connection task, or why not.
    fn upgrade(
        &self,
        mut request: Request<Incoming>,
        peer: IpAddr,
        upgrade: &Mutex<Option<Upgrade>>,
    ) -> Response<Body> {
        let key = match websocket_key(&request) {
            Ok(key) => key,
            Err(bad) => return bad.response(),
        };
        if self.node.is_draining() {
            return text(
                StatusCode::SERVICE_UNAVAILABLE,
                "this node is shutting down: connect again\n",
            );
        }
        if !self.site.origin_allowed(&request) {
            return text(StatusCode::FORBIDDEN, "this origin may not connect\n");
        }
        let Some(on_upgrade) = request.extensions_mut().remove::<OnUpgrade>() else {
            return text(
                StatusCode::BAD_REQUEST,
                "this connection cannot be upgraded\n",
            );
        };
        let client = self
            .node
            .config()
            .http
            .trusted_proxies
            .forwarded_for(peer, request.headers());
        let token = if self.node.auth().enabled() {
            crate::auth::bearer::token_of_request(request.headers(), request.uri().query())
        } else {
            None
        };
        *upgrade.lock().unwrap_or_else(|e| e.into_inner()) = Some(Upgrade {
            on_upgrade,
            client,
            token,
        });
        let mut response = Response::new(Body::default());
        *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let headers = response.headers_mut();
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        if let Ok(accept) = HeaderValue::from_str(&derive_accept_key(key.as_bytes())) {
            headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
        }
        response
    }
}

/// A number for each connection, for logs.
fn next_connection() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// Closes a just-upgraded WebSocket with `code`, without a session.
async fn close_at_once<T>(ws: WebSocketStream<T>, code: CloseCode, reason: &'static str)
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use futures_util::StreamExt;
    let (sink, frames) = ws.split();
    let (outbox, inbox) = outbox::channel(64 * 1024);
    outbox.close(code, reason);
    drop(outbox);
    let sink = outbox::run_writer(sink, inbox).await;
    closing::linger(frames, sink, closing::Frames::Readable).await;
}

/// Whether the client's frames can still be read once its session ended so.
fn frames_after(reason: EndReason) -> closing::Frames {
    match reason {
        // A read failed: tungstenite reads no more.
        EndReason::MessageTooLarge | EndReason::ReadError | EndReason::ProtocolError => {
            closing::Frames::Broken
        }
        EndReason::ClientClosed
        | EndReason::IdleTimeout
        | EndReason::Shutdown
        | EndReason::Aborted
        | EndReason::Flooding
        | EndReason::AuthFailed => closing::Frames::Readable,
    }
}
