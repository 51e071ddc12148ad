//! Network faults: a TCP forwarder that cuts or blackholes a node's
//! connections to its Redis.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpStream as TokioTcpStream;

/// A TCP forwarder between a node and its Redis, to cut the node off.
///
/// Listens on a free loopback port and forwards every connection to
/// `target`. Two kinds of partition:
/// - [`TcpProxy::cut`] closes every forwarded connection at once and makes
///   new ones close right after they are accepted (the node notices at
///   once);
/// - [`TcpProxy::blackhole`] stops forwarding bytes, both ways, on every
///   connection, old and new, while keeping them open (the node notices
///   only by its own timeouts; what was sent meanwhile waits and flows when
///   the partition heals, as TCP would retransmit it).
///
/// [`TcpProxy::restore`] ends either. Must be created inside a Tokio
/// runtime; stops on drop.
pub struct TcpProxy {
    port: u16,
    state: Arc<ProxyState>,
    accept: tokio::task::JoinHandle<()>,
}

struct ProxyState {
    cut: std::sync::atomic::AtomicBool,
    /// `false` while blackholed: no byte moves.
    flowing: tokio::sync::watch::Sender<bool>,
    /// The tasks of the forwarded connections; aborting one closes both of
    /// its sockets.
    links: Mutex<Vec<tokio::task::AbortHandle>>,
    /// Connections accepted so far (forwarded or refused).
    accepted: AtomicU64,
}

impl TcpProxy {
    pub async fn start(target: SocketAddr) -> TcpProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the proxy on 127.0.0.1:0");
        let port = listener.local_addr().expect("local_addr").port();
        let state = Arc::new(ProxyState {
            cut: std::sync::atomic::AtomicBool::new(false),
            flowing: tokio::sync::watch::Sender::new(true),
            links: Mutex::new(Vec::new()),
            accepted: AtomicU64::new(0),
        });
        let shared = state.clone();
        let accept = tokio::spawn(async move {
            loop {
                let Ok((inbound, _)) = listener.accept().await else {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                shared.accepted.fetch_add(1, Ordering::Relaxed);
                if shared.cut.load(Ordering::SeqCst) {
                    drop(inbound); // closed right after accept
                    continue;
                }
                let flowing = shared.flowing.subscribe();
                let link = tokio::spawn(async move {
                    let Ok(outbound) = TokioTcpStream::connect(target).await else {
                        return;
                    };
                    let _ = inbound.set_nodelay(true);
                    let _ = outbound.set_nodelay(true);
                    let (in_read, in_write) = inbound.into_split();
                    let (out_read, out_write) = outbound.into_split();
                    tokio::join!(
                        pump(in_read, out_write, flowing.clone()),
                        pump(out_read, in_write, flowing),
                    );
                });
                let mut links = shared.links.lock().unwrap_or_else(|e| e.into_inner());
                links.retain(|l| !l.is_finished());
                links.push(link.abort_handle());
                // A cut that came between the check above and now must not
                // miss this link.
                if shared.cut.load(Ordering::SeqCst) {
                    link.abort();
                }
            }
        });
        TcpProxy {
            port,
            state,
            accept,
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:PORT/`, for a node's `--redis-url`.
    pub fn redis_url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Closes every forwarded connection now; new ones are closed as soon as
    /// they are accepted.
    pub fn cut(&self) {
        self.state.cut.store(true, Ordering::SeqCst);
        let links =
            std::mem::take(&mut *self.state.links.lock().unwrap_or_else(|e| e.into_inner()));
        for link in links {
            link.abort();
        }
    }

    /// Stops every byte, both ways, on every connection (old and new),
    /// keeping the connections open.
    pub fn blackhole(&self) {
        self.state.flowing.send_replace(false);
    }

    /// Ends a cut or a blackhole: new connections are forwarded, and held
    /// bytes flow again.
    pub fn restore(&self) {
        self.state.cut.store(false, Ordering::SeqCst);
        self.state.flowing.send_replace(true);
    }

    /// How many connections the proxy has accepted so far.
    pub fn accepted(&self) -> u64 {
        self.state.accepted.load(Ordering::Relaxed)
    }
}

/// Waits until the proxy's flow state is `want`; false if the proxy is gone.
async fn flowing_is(flowing: &mut tokio::sync::watch::Receiver<bool>, want: bool) -> bool {
    flowing.wait_for(|on| *on == want).await.is_ok()
}

/// Copies bytes from `from` to `to` while `flowing` is true; holds them (and
/// stops reading) while it is false.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut flowing: tokio::sync::watch::Receiver<bool>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        if !flowing_is(&mut flowing, true).await {
            return;
        }
        let n = tokio::select! {
            read = from.read(&mut buf) => match read {
                Ok(0) | Err(_) => {
                    let _ = to.shutdown().await;
                    return;
                }
                Ok(n) => n,
            },
            _ = flowing_is(&mut flowing, false) => continue,
        };
        // Bytes read just as the blackhole began wait for its end.
        if !flowing_is(&mut flowing, true).await {
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}
