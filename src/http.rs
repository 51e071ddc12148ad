//! What answers plain HTTP on the relay's port: the routing of each request
//! (all but the WebSocket upgrade itself, which [`crate::server`] hands to
//! tungstenite), the health endpoints, the browser pages, the admin API, and
//! the checks a request passes first (`Host`, the connection limits, the
//! WebSocket handshake headers, the origin).
//!
//! HTTP endpoints on the relay's port:
//! - `GET /` or `/ws` with a WebSocket upgrade: a client connection.
//! - `GET /healthz`: 200 while the process runs.
//! - `GET /readyz`: 200 when the node can serve (its lobby store is reachable
//!   and it is not draining), 503 otherwise. Load balancers route by it.
//! - `GET /metrics`: Prometheus metrics.
//! - `GET /` without an upgrade, and `GET /playground`: the browser
//!   playground (unless `--playground off`).
//! - `GET /client.js` and `GET /client/v1.js`: the JavaScript client
//!   (`clients/js/lobby-relay.js`, docs/clients.md), with the playground.
//! - `GET /admin` and `GET /admin/api/cluster`: the admin view, only with
//!   `--admin-token`; the API wants the token as `Authorization: Bearer`.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};

use crate::admin::{self, AdminAccess, AdminRefusal};
use crate::admission::Limit;
use crate::lobby::LobbyStore;
use crate::metrics;
use crate::node::Node;

/// Paths that accept the WebSocket upgrade.
pub const WEBSOCKET_PATHS: [&str; 2] = ["/", "/ws"];
/// Path of the playground page (also served on `/` without an upgrade).
pub const PLAYGROUND_PATH: &str = "/playground";
/// Paths of the JavaScript client: the current one, and the one of protocol
/// version 1 (the file a game may pin).
pub const CLIENT_JS_PATHS: [&str; 2] = ["/client.js", "/client/v1.js"];
/// The JavaScript client, as in the repository (`clients/js/lobby-relay.js`).
const CLIENT_JS: &str = include_str!("../clients/js/lobby-relay.js");
/// Path of the admin page.
pub const ADMIN_PATH: &str = "/admin";
/// Path of the admin view's data (JSON).
pub const ADMIN_API_PATH: &str = "/admin/api/cluster";
/// Longest the admin API waits for the lobby store.
const ADMIN_API_TIMEOUT: Duration = Duration::from_secs(3);

/// The body of every answer.
pub(crate) type Body = Full<Bytes>;

/// What the HTTP side of a connection needs of the node.
pub(crate) struct Site<S> {
    node: Arc<Node<S>>,
    /// `--admin-token`: the admin view is served only with one.
    admin: Option<AdminAccess>,
}

/// Where a request goes: answered here, or (a WebSocket upgrade on one of
/// [`WEBSOCKET_PATHS`], with GET or HEAD) handed back for the upgrade.
pub(crate) enum Routed {
    Answer(Response<Body>),
    WebSocket(Request<Incoming>),
}

impl<S> Site<S> {
    pub(crate) fn new(node: Arc<Node<S>>) -> Self {
        let admin = node
            .config()
            .http
            .admin_token
            .as_ref()
            .map(AdminAccess::new);
        Self { node, admin }
    }
}

impl<S: LobbyStore> Site<S> {
    /// Answers one HTTP request, unless it is a WebSocket upgrade: a bad
    /// `Host` first, then a connection `over` a limit, then the routes.
    pub(crate) async fn answer(
        &self,
        request: Request<Incoming>,
        peer: IpAddr,
        over: Option<Limit>,
    ) -> Routed {
        if let Err(bad) = check_host(&request) {
            Routed::Answer(bad.response())
        } else if let Some(limit) = over.filter(|_| !served_over_a_limit(&request)) {
            Routed::Answer(text(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!("{}: try again later\n", limit.reason()),
            ))
        } else if request.uri().path() == ADMIN_API_PATH {
            Routed::Answer(self.admin_api(&request, peer).await)
        } else {
            self.route(request)
        }
    }

    /// The body of `/metrics`: the node's state at this scrape (is the store
    /// reachable, is the node draining) recorded first, then every metric.
    fn scrape(&self) -> Option<String> {
        metrics::record_state(self.node.store_reachable(), self.node.is_draining());
        metrics::render()
    }

    /// Routes one HTTP request.
    fn route(&self, request: Request<Incoming>) -> Routed {
        let path = request.uri().path();
        if request.method() != Method::GET && request.method() != Method::HEAD {
            return Routed::Answer(text(StatusCode::METHOD_NOT_ALLOWED, "use GET\n"));
        }
        let response = match path {
            "/healthz" => text(StatusCode::OK, "ok\n"),
            "/metrics" => match self.scrape() {
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
            "/" if self.node.config().http.playground
                && !request.headers().contains_key(header::UPGRADE) =>
            {
                self.playground()
            }
            PLAYGROUND_PATH if self.node.config().http.playground => self.playground(),
            p if CLIENT_JS_PATHS.contains(&p) && self.node.config().http.playground => client_js(),
            ADMIN_PATH if self.admin.is_some() => page(
                admin::ADMIN_HTML.to_owned(),
                HeaderValue::from_static(ADMIN_CSP),
            ),
            p if WEBSOCKET_PATHS.contains(&p) => return Routed::WebSocket(request),
            _ => text(
                StatusCode::NOT_FOUND,
                "not found: WebSocket on / or /ws; /healthz, /readyz, /metrics\n",
            ),
        };
        Routed::Answer(response)
    }

    /// The playground page, with this node's id in it.
    fn playground(&self) -> Response<Body> {
        let csp = HeaderValue::from_str(&admin::PLAYGROUND_CSP).expect("an ASCII policy");
        page(admin::playground_page(&self.node.config().node_id), csp)
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
            .http
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
        let mut response = typed(StatusCode::OK, body, "application/json");
        let headers = response.headers_mut();
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        response
    }
}

/// The admin page's `Content-Security-Policy`: inline script and style
/// only, connections to this origin only, never framed. (The playground's
/// is `admin::PLAYGROUND_CSP`.)
const ADMIN_CSP: &str = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
     connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; \
     frame-ancestors 'none'";

/// An HTML page of ours, with its `Content-Security-Policy`: never cached.
pub(crate) fn page(html: String, csp: HeaderValue) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from(html)));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(header::CONTENT_SECURITY_POLICY, csp);
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

/// The JavaScript client: a static module, importable from a game's page
/// on any origin (module scripts are fetched with CORS; the file is public
/// and sent without credentials), cached for five minutes (a relay upgrade
/// may change it).
fn client_js() -> Response<Body> {
    let mut response = typed(StatusCode::OK, CLIENT_JS, "text/javascript; charset=utf-8");
    let headers = response.headers_mut();
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=300"),
    );
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}

impl<S> Site<S> {
    /// With `--allowed-origins`, only those origins (or none: native
    /// clients) may upgrade.
    pub(crate) fn origin_allowed(&self, request: &Request<Incoming>) -> bool {
        let allowed = &self.node.config().http.allowed_origins;
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
pub(crate) enum BadRequest {
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
    pub(crate) fn response(self) -> Response<Body> {
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
pub(crate) fn served_over_a_limit(request: &Request<Incoming>) -> bool {
    let path = request.uri().path();
    matches!(path, "/healthz" | "/readyz" | "/metrics")
        || (WEBSOCKET_PATHS.contains(&path) && request.headers().contains_key(header::UPGRADE))
}

/// RFC 9112, section 3.2: an HTTP/1.1 request has exactly one `Host` header
/// (HTTP/1.0 may have none), holding a host and an optional port, or
/// nothing; anything else gets 400. hyper leaves this to the server.
pub(crate) fn check_host(request: &Request<Incoming>) -> Result<(), BadRequest> {
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
pub(crate) fn websocket_key(request: &Request<Incoming>) -> Result<HeaderValue, BadRequest> {
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

pub(crate) fn text(status: StatusCode, body: &str) -> Response<Body> {
    typed(
        status,
        Bytes::copy_from_slice(body.as_bytes()),
        "text/plain; charset=utf-8",
    )
}

/// `body` as `content_type`, the connection closed after it.
fn typed(status: StatusCode, body: impl Into<Bytes>, content_type: &'static str) -> Response<Body> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    // One request per connection: health checks reconnect anyway, and a
    // connection then never outlives the node's drain.
    headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}
