//! The accept loop: takes TCP connections, serves the health endpoints and
//! the WebSocket upgrade (HTTP/1.1 by hyper), runs a [`Session`] for each
//! WebSocket, and drains gracefully.
//!
//! The caller binds the listener and owns the shutdown signal, so tests can
//! bind `127.0.0.1:0` and run the real server.
//!
//! HTTP endpoints on the relay's port:
//! - `GET /` or `/ws` with a WebSocket upgrade: a client connection.
//! - `GET /healthz`: 200 while the process runs.
//! - `GET /readyz`: 200 when the node can serve (its lobby store is reachable
//!   and it is not draining), 503 otherwise. Load balancers route by it.
//! - `GET /metrics`: Prometheus metrics.
//! - `GET /` without an upgrade, and `GET /playground`: the browser
//!   playground (unless `--playground off`).
//! - `GET /admin` and `GET /admin/api/cluster`: the admin view, only with
//!   `--admin-token`; the API wants the token as `Authorization: Bearer`.

use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::upgrade::OnUpgrade;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::admin::{self, AdminAccess, AdminRefusal};
use crate::admission::{Admission, Limit, Limits, Place};
use crate::both::both;
use crate::client_addr;
use crate::closing;
use crate::lobby::LobbyStore;
use crate::metrics;
use crate::node::Node;
use crate::outbox;
use crate::read_ahead::ReadAhead;
use crate::session::{EndReason, Session};

/// Paths that accept the WebSocket upgrade.
pub const WEBSOCKET_PATHS: [&str; 2] = ["/", "/ws"];
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
/// Path of the playground page (also served on `/` without an upgrade).
pub const PLAYGROUND_PATH: &str = "/playground";
/// Path of the admin page.
pub const ADMIN_PATH: &str = "/admin";
/// Path of the admin view's data (JSON).
pub const ADMIN_API_PATH: &str = "/admin/api/cluster";
/// Longest the admin API waits for the lobby store.
const ADMIN_API_TIMEOUT: Duration = Duration::from_secs(3);

type Body = Full<Bytes>;

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
/// they are done or `config.shutdown_timeout` has passed.
pub async fn run<S: LobbyStore>(
    listener: TcpListener,
    node: Arc<Node<S>>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shutdown: impl Future<Output = ()>,
) {
    crate::admission::warn_if_files_are_short(node.config().max_connections);
    let server = Arc::new(Server {
        tls,
        ws_config: websocket_config(node.config().max_message_bytes),
        limits: Limits::new(
            node.config().max_connections,
            node.config().max_connections_per_address,
        ),
        stop: CancellationToken::new(),
        sessions: TaskTracker::new(),
        admin: node.config().admin_token.as_ref().map(AdminAccess::new),
        node,
    });
    let accepting = accept_loop(&listener, &server);
    tokio::select! {
        _ = shutdown => {}
        _ = accepting => {}
    }
    server.node.start_draining();
    let deadline = tokio::time::Instant::now() + server.node.config().shutdown_timeout;
    // Keep answering health checks (readyz: 503) until the end.
    let drained = async {
        let delay = server.node.config().drain_delay;
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
    /// `--admin-token`: the admin view is served only with one.
    admin: Option<AdminAccess>,
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
        let proxies = &server.node.config().trusted_proxies;
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
        let proxies = &config.trusted_proxies;
        if proxies.proxy_protocol && proxies.trusts(peer.ip()) {
            let timeout = admission.handshake_timeout(config.handshake_timeout);
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
        let timeout = admission.handshake_timeout(config.handshake_timeout);
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
                    let response = if let Err(bad) = check_host(&request) {
                        bad.response()
                    } else if let Some(limit) = over.filter(|_| !served_over_a_limit(&request)) {
                        text(
                            StatusCode::SERVICE_UNAVAILABLE,
                            &format!("{}: try again later\n", limit.reason()),
                        )
                    } else if request.uri().path() == ADMIN_API_PATH {
                        server.admin_api(&request, peer.ip()).await
                    } else {
                        server.route(request, peer.ip(), &upgrade)
                    };
                    Ok::<_, Infallible>(response)
                }
            })
        };
        let timeout = admission.handshake_timeout(self.node.config().handshake_timeout);
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
        let (outbox, inbox) = outbox::channel(self.node.config().outbound_queue_bytes);
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

    /// Answers one HTTP request.
    fn route(
        &self,
        mut request: Request<Incoming>,
        peer: IpAddr,
        upgrade: &Mutex<Option<Upgrade>>,
    ) -> Response<Body> {
        let path = request.uri().path();
        if request.method() != Method::GET && request.method() != Method::HEAD {
            return text(StatusCode::METHOD_NOT_ALLOWED, "use GET\n");
        }
        match path {
            "/healthz" => text(StatusCode::OK, "ok\n"),
            "/metrics" => match metrics::render() {
                Some(body) => {
                    let mut response = text(StatusCode::OK, &body);
                    response.headers_mut().insert(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                    );
                    response
                }
                None => text(StatusCode::SERVICE_UNAVAILABLE, "metrics are off\n"),
            },
            "/readyz" => match self.node.not_ready_reason() {
                None => text(StatusCode::OK, "ready\n"),
                Some(why) => text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &format!("not ready: {why}\n"),
                ),
            },
            "/" if self.node.config().playground
                && !request.headers().contains_key(header::UPGRADE) =>
            {
                self.playground()
            }
            PLAYGROUND_PATH if self.node.config().playground => self.playground(),
            ADMIN_PATH if self.admin.is_some() => page(admin::ADMIN_HTML.to_owned()),
            p if WEBSOCKET_PATHS.contains(&p) => {
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
                if !self.origin_allowed(&request) {
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
                    .trusted_proxies
                    .forwarded_for(peer, request.headers());
                let token = if self.node.auth().enabled() {
                    crate::auth::token_of_request(request.headers(), request.uri().query())
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
            _ => text(
                StatusCode::NOT_FOUND,
                "not found: WebSocket on / or /ws; /healthz, /readyz, /metrics\n",
            ),
        }
    }

    /// The playground page, with this node's id in it.
    fn playground(&self) -> Response<Body> {
        page(admin::playground_page(&self.node.config().node_id))
    }

    /// `GET /admin/api/cluster`: 404 without `--admin-token`, 401 without the
    /// right token, 429 after too many wrong ones from the client's address,
    /// else the cluster as JSON.
    async fn admin_api(&self, request: &Request<Incoming>, peer: IpAddr) -> Response<Body> {
        let Some(access) = &self.admin else {
            return text(StatusCode::NOT_FOUND, "not found\n");
        };
        if request.method() != Method::GET && request.method() != Method::HEAD {
            return text(StatusCode::METHOD_NOT_ALLOWED, "use GET\n");
        }
        let headers = request.headers();
        let client = self
            .node
            .config()
            .trusted_proxies
            .forwarded_for(peer, headers);
        match access.check(client, headers.get(header::AUTHORIZATION)) {
            Ok(()) => {}
            Err(refusal @ AdminRefusal::WrongToken) => {
                tracing::info!(%client, "admin API: refused a request without the right token");
                let mut response = text(StatusCode::UNAUTHORIZED, &format!("{refusal}\n"));
                response.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"lobby-relay admin\""),
                );
                return response;
            }
            Err(refusal @ AdminRefusal::Throttled { retry_after_secs }) => {
                tracing::debug!(%client, "admin API: throttled after too many wrong tokens");
                let mut response = text(StatusCode::TOO_MANY_REQUESTS, &format!("{refusal}\n"));
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
                return response;
            }
        }
        let view = match tokio::time::timeout(ADMIN_API_TIMEOUT, self.node.cluster_view()).await {
            Ok(Ok(view)) => view,
            Ok(Err(e)) => {
                return text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &format!("cannot read the lobby store: {e}\n"),
                );
            }
            Err(_) => {
                return text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the lobby store did not answer in time\n",
                );
            }
        };
        let body = serde_json::to_string(&view).unwrap_or_else(|_| "{}".to_owned());
        let mut response = text(StatusCode::OK, &body);
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        response
    }
}

/// An HTML page of ours: inline script and style only, talking to this
/// origin only, never framed, never cached.
fn page(html: String) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from(html)));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
             connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; \
             frame-ancestors 'none'",
        ),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

impl<S> Server<S> {
    /// With `--allowed-origins`, only those origins (or none: native
    /// clients) may upgrade.
    fn origin_allowed(&self, request: &Request<Incoming>) -> bool {
        let allowed = &self.node.config().allowed_origins;
        if allowed.is_empty() {
            return true;
        }
        match request.headers().get(header::ORIGIN) {
            None => true,
            Some(origin) => origin.to_str().is_ok_and(|origin| {
                let origin = origin.trim_end_matches('/').to_ascii_lowercase();
                allowed.contains(&origin)
            }),
        }
    }
}

/// A request refused before it is served, and why: the reason is the body
/// of the answer, for whoever wrote the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
enum BadRequest {
    #[error(
        "an HTTP/1.1 request needs exactly one Host header, with a host and an optional port (RFC 9112, section 3.2)"
    )]
    Host,
    #[error("this is a WebSocket endpoint: connect with a WebSocket client")]
    NotWebSocket,
    #[error("WebSocket version 13 only")]
    Version,
    #[error("missing Sec-WebSocket-Key")]
    MissingKey,
    #[error("Sec-WebSocket-Key must be 16 bytes in base64 (RFC 6455, section 4.2.1)")]
    Key,
}

impl BadRequest {
    fn response(self) -> Response<Body> {
        let status = match self {
            Self::NotWebSocket | Self::Version => StatusCode::UPGRADE_REQUIRED,
            Self::Host | Self::MissingKey | Self::Key => StatusCode::BAD_REQUEST,
        };
        let mut response = text(status, &format!("{self}\n"));
        if self == Self::Version {
            response.headers_mut().insert(
                header::SEC_WEBSOCKET_VERSION,
                HeaderValue::from_static("13"),
            );
        }
        response
    }
}

/// What a connection over a connection limit is still answered: the health
/// endpoints and metrics as usual (a full node is not a dead one), and a
/// WebSocket upgrade, with 101 then close 1013 (what clients back off on).
/// Anything else gets 503.
fn served_over_a_limit(request: &Request<Incoming>) -> bool {
    let path = request.uri().path();
    matches!(path, "/healthz" | "/readyz" | "/metrics")
        || (WEBSOCKET_PATHS.contains(&path) && request.headers().contains_key(header::UPGRADE))
}

/// RFC 9112, section 3.2: an HTTP/1.1 request has exactly one `Host` header
/// (HTTP/1.0 may have none), holding a host and an optional port, or
/// nothing; anything else gets 400. hyper leaves this to the server.
fn check_host(request: &Request<Incoming>) -> Result<(), BadRequest> {
    let mut hosts = request.headers().get_all(header::HOST).iter();
    match (hosts.next(), hosts.next()) {
        (None, _) if request.version() == hyper::Version::HTTP_10 => Ok(()),
        (Some(host), None) if host.is_empty() => Ok(()),
        (Some(host), None) => {
            let authority = hyper::http::uri::Authority::try_from(host.as_bytes());
            // An authority may carry user information; a Host may not.
            match authority {
                Ok(authority) if !authority.as_str().contains('@') => Ok(()),
                _ => Err(BadRequest::Host),
            }
        }
        _ => Err(BadRequest::Host),
    }
}

/// Checks a WebSocket upgrade request (RFC 6455, section 4.2.1) and returns
/// its `Sec-WebSocket-Key`.
fn websocket_key(request: &Request<Incoming>) -> Result<HeaderValue, BadRequest> {
    use base64::Engine;
    let headers = request.headers();
    let has_token = |name: header::HeaderName, token: &str| {
        headers.get_all(name).iter().any(|value| {
            value
                .to_str()
                .unwrap_or("")
                .split(',')
                .any(|t| t.trim().eq_ignore_ascii_case(token))
        })
    };
    if !has_token(header::CONNECTION, "upgrade") || !has_token(header::UPGRADE, "websocket") {
        return Err(BadRequest::NotWebSocket);
    }
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .map(HeaderValue::as_bytes)
        != Some(b"13")
    {
        return Err(BadRequest::Version);
    }
    let Some(key) = headers.get(header::SEC_WEBSOCKET_KEY) else {
        return Err(BadRequest::MissingKey);
    };
    // 16 random bytes, base64 with its padding: 24 characters.
    let decoded = base64::engine::general_purpose::STANDARD.decode(key.as_bytes());
    match decoded {
        Ok(nonce) if nonce.len() == 16 => Ok(key.clone()),
        _ => Err(BadRequest::Key),
    }
}

/// A number for each connection, for logs.
fn next_connection() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

fn text(status: StatusCode, body: &str) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::copy_from_slice(body.as_bytes())));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    // One request per connection: health checks reconnect anyway, and a
    // connection then never outlives the node's drain.
    headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
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
