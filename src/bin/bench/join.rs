//! Forming the lobbies: connecting to a relay (`ws://`, or `wss://` with
//! the CA that signed its certificate), joining, and waiting for both
//! players of a lobby to be `ready`.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::{ClientConfig, RootCertStore};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Message, http::Uri};
use tokio_util::either::Either;

/// A player's connection: plain TCP, or TLS over it.
pub type Ws = WebSocketStream<Either<TcpStream, TlsStream<TcpStream>>>;

/// A relay address: the URL for the handshake, the socket address to dial,
/// and for `wss://` the TLS client and the name its certificate must have.
#[derive(Clone)]
pub struct Target {
    pub url: String,
    addr: SocketAddr,
    tls: Option<(TlsConnector, ServerName<'static>)>,
}

/// Checks a `ws://` or `wss://` URL and resolves its host once; a `wss://`
/// relay's certificate is checked against the CA certificates (PEM) in
/// `ca` (the generator trusts nothing else).
pub fn resolve(url: &str, ca: Option<&Path>) -> Result<Target, String> {
    let uri: Uri = url.parse().map_err(|e| format!("{url}: {e}"))?;
    let secure = match uri.scheme_str() {
        Some("ws") => false,
        Some("wss") => true,
        _ => return Err(format!("{url}: only ws:// and wss:// URLs are supported")),
    };
    let host = uri.host().ok_or_else(|| format!("{url}: no host"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let addr = crate::resolve_host(
        host,
        uri.port_u16().unwrap_or(if secure { 443 } else { 80 }),
    )?;
    let tls = match (secure, ca) {
        (false, _) => None,
        (true, None) => return Err(format!("{url}: a wss:// relay needs --ca-cert")),
        (true, Some(ca)) => Some((
            tls_connector(ca)?,
            ServerName::try_from(host.to_owned()).map_err(|e| format!("{url}: {e}"))?,
        )),
    };
    Ok(Target {
        url: url.to_owned(),
        addr,
        tls,
    })
}

/// A TLS client that trusts the CA certificates of the PEM file `ca`.
fn tls_connector(ca: &Path) -> Result<TlsConnector, String> {
    let mut roots = RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(ca)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("cannot read --ca-cert {}: {e}", ca.display()))?;
    for cert in certs {
        roots
            .add(cert)
            .map_err(|e| format!("--ca-cert {}: {e}", ca.display()))?;
    }
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsConnector::from(Arc::new(config)))
}

fn ws_config(idle: bool) -> WebSocketConfig {
    // tungstenite zero-fills the whole free part of its read buffer before
    // every read (even one that finds nothing), so a large buffer costs a
    // large memset per message at game rates: 8 KiB holds a saturation
    // window of small messages; 4 KiB for thousands of idle connections.
    WebSocketConfig::default().read_buffer_size(if idle { 4096 } else { 8 * 1024 })
}

async fn connect(target: &Target, idle: bool) -> Result<Ws, String> {
    let tcp = TcpStream::connect(target.addr)
        .await
        .map_err(|e| format!("connect {}: {e}", target.addr))?;
    tcp.set_nodelay(true)
        .map_err(|e| format!("set TCP_NODELAY: {e}"))?;
    let stream = match &target.tls {
        None => Either::Left(tcp),
        Some((connector, name)) => Either::Right(
            connector
                .connect(name.clone(), tcp)
                .await
                .map_err(|e| format!("TLS with {}: {e}", target.addr))?,
        ),
    };
    let (ws, _) = tokio_tungstenite::client_async_with_config(
        target.url.as_str(),
        stream,
        Some(ws_config(idle)),
    )
    .await
    .map_err(|e| format!("handshake with {}: {e}", target.url))?;
    Ok(ws)
}

/// What the two players of a "lobby" join: one passphrase, or a queue
/// (quick match: each is seated by the relay, not necessarily with the
/// other; both wait for `ready` all the same).
#[derive(Debug, Clone)]
pub enum Lobby {
    Passphrase(String),
    Queue(String),
}

/// Connects, joins and waits for `ready`.
async fn join_player(
    target: &Target,
    lobby: &Lobby,
    idle: bool,
    resume: bool,
) -> Result<Ws, String> {
    let mut ws = connect(target, idle).await?;
    let join = match lobby {
        Lobby::Passphrase(passphrase) => {
            format!(r#"{{"type":"join","passphrase":"{passphrase}","resume":{resume}}}"#)
        }
        Lobby::Queue(queue) => format!(r#"{{"type":"join","queue":"{queue}","resume":{resume}}}"#),
    };
    ws.send(Message::text(join))
        .await
        .map_err(|e| format!("send join: {e}"))?;
    let mut joined = false;
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(text))) => {
                let kind = control_type(&text);
                match kind.as_deref() {
                    Some("joined") => joined = true,
                    Some("ready") if joined => return Ok(ws),
                    Some("ready") => return Err("`ready` before `joined`".into()),
                    Some("error") => return Err(format!("join refused: {text}")),
                    _ => {}
                }
            }
            Some(Ok(Message::Close(frame))) => {
                return Err(format!("closed by the relay while joining: {frame:?}"));
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(format!("while joining: {e}")),
            None => return Err("connection ended while joining".into()),
        }
    }
}

/// The `type` of a relay message (while joining; not on the hot path).
fn control_type(text: &str) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Typed {
        #[serde(rename = "type")]
        kind: String,
    }
    serde_json::from_str::<Typed>(text).ok().map(|t| t.kind)
}

/// Both players of a lobby, joined and ready, and how long it took.
pub struct Formed {
    pub a: Ws,
    pub b: Ws,
    pub took: Duration,
}

pub async fn form_lobby(
    a: &Target,
    b: &Target,
    lobby: Lobby,
    idle: bool,
    resume: bool,
    timeout: Duration,
) -> Result<Formed, String> {
    let started = Instant::now();
    let both = async {
        let (pa, pb) = tokio::join!(
            join_player(a, &lobby, idle, resume),
            join_player(b, &lobby, idle, resume)
        );
        Ok::<_, String>((
            pa.map_err(|e| format!("player A: {e}"))?,
            pb.map_err(|e| format!("player B: {e}"))?,
        ))
    };
    let (a, b) = tokio::time::timeout(timeout, both)
        .await
        .map_err(|_| format!("not formed within {timeout:?}"))??;
    Ok(Formed {
        a,
        b,
        took: started.elapsed(),
    })
}

/// A passphrase prefix of its own for this run.
pub fn random_prefix() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    h.write_u32(std::process::id());
    format!("bench-{:012x}", h.finish() & 0xffff_ffff_ffff)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_types() {
        assert_eq!(
            control_type(r#"{"type": "joined", "players":1,"capacity":2,"seat":1}"#).as_deref(),
            Some("joined")
        );
    }

    #[test]
    fn urls() {
        assert!(resolve("ws://127.0.0.1:8765/", None).is_ok());
        assert!(resolve("http://127.0.0.1:8765/", None).is_err());
        assert!(resolve("wss://127.0.0.1:8765/", None).is_err());
    }
}
