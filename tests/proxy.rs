//! Real client addresses behind a load balancer: a trusted proxy's PROXY
//! header or X-Forwarded-For is believed, nobody else's.

use crate::support;

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::StreamExt;
use support::Node;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::{Error, Message};

/// Opens a TCP connection from `source` (any 127/8 address works on Linux).
async fn connect_from(source: &str, node: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("socket");
    socket
        .bind(format!("{source}:0").parse().expect("address"))
        .expect("bind");
    socket.connect(node).await.expect("connect")
}

type Ws = tokio_tungstenite::WebSocketStream<TcpStream>;

/// A WebSocket over `stream`, with optional extra request headers; returns
/// the close code if the node closes it at once, or `None` if it stays open
/// (the socket is parked in `keep` so that it stays open).
async fn websocket(
    keep: &mut Vec<Ws>,
    mut stream: TcpStream,
    node: SocketAddr,
    proxy_header: Option<Vec<u8>>,
    forwarded_for: Option<&str>,
) -> Result<Option<u16>, Error> {
    if let Some(header) = proxy_header {
        stream.write_all(&header).await.expect("write PROXY header");
    }
    let mut request = format!("ws://{node}/")
        .into_client_request()
        .expect("request");
    if let Some(xff) = forwarded_for {
        request.headers_mut().insert(
            "X-Forwarded-For",
            HeaderValue::from_str(xff).expect("header"),
        );
    }
    let (mut ws, _) = tokio_tungstenite::client_async(request, stream).await?;
    match tokio::time::timeout(Duration::from_millis(500), ws.next()).await {
        Err(_) => {
            keep.push(ws);
            Ok(None)
        }
        Ok(Some(Ok(Message::Close(Some(frame))))) => Ok(Some(frame.code.into())),
        Ok(other) => panic!("unexpected {other:?}"),
    }
}

fn logged_peers(node: &Node) -> Vec<String> {
    node.logs()
        .lines()
        .iter()
        .filter_map(|line| {
            let start = line.find("\"peer\":\"")? + 8;
            let end = line[start..].find('"')? + start;
            Some(line[start..end].to_owned())
        })
        .collect()
}

/// With --proxy-protocol, the trusted proxy's header gives the client
/// address: the per-address limit counts it and the logs show it. A forged
/// header from an untrusted address, and a trusted peer without a header,
/// are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_protocol_from_trusted_proxies_only() {
    let node = Node::start(
        "p",
        &[
            "--trusted-proxies",
            "127.0.0.1",
            "--proxy-protocol",
            "--max-connections-per-address",
            "1",
            "--log-filter",
            "debug",
        ],
    );
    let addr = node.addr();
    let mut keep = Vec::new();
    let v1 = |client: &str| format!("PROXY TCP4 {client} 127.0.0.1 40000 8765\r\n").into_bytes();

    // Through the proxy: one connection per client address.
    let first = websocket(
        &mut keep,
        connect_from("127.0.0.1", addr).await,
        addr,
        Some(v1("203.0.113.7")),
        None,
    );
    assert_eq!(
        first.await.expect("handshake"),
        None,
        "first client stays open"
    );
    let mut v2 = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    v2.extend_from_slice(&[
        0x21, 0x11, 0, 12, 203, 0, 113, 7, 127, 0, 0, 1, 0x9c, 0x41, 0x22, 0x3d,
    ]);
    let same = websocket(
        &mut keep,
        connect_from("127.0.0.1", addr).await,
        addr,
        Some(v2),
        None,
    );
    assert_eq!(
        same.await.expect("handshake"),
        Some(1013),
        "same client address, over its cap"
    );
    let other = websocket(
        &mut keep,
        connect_from("127.0.0.1", addr).await,
        addr,
        Some(v1("203.0.113.8")),
        None,
    );
    assert_eq!(
        other.await.expect("handshake"),
        None,
        "another client address"
    );
    let peers = logged_peers(&node);
    assert!(
        peers.iter().any(|p| p.starts_with("203.0.113.7")),
        "{peers:?}"
    );
    assert!(
        peers.iter().any(|p| p.starts_with("203.0.113.8")),
        "{peers:?}"
    );

    // A direct client forging the header is not a trusted proxy: refused.
    let forged = websocket(
        &mut keep,
        connect_from("127.0.0.2", addr).await,
        addr,
        Some(v1("198.51.100.1")),
        None,
    );
    assert!(
        forged.await.is_err(),
        "a forged PROXY header must be refused"
    );
    // A trusted peer must send the header.
    let bare = websocket(
        &mut keep,
        connect_from("127.0.0.1", addr).await,
        addr,
        None,
        None,
    );
    assert!(
        bare.await.is_err(),
        "a trusted peer without a PROXY header is refused"
    );
    assert!(
        !logged_peers(&node)
            .iter()
            .any(|p| p.starts_with("198.51.100.1")),
        "the forged address was never used"
    );
}

/// Without --proxy-protocol, a trusted proxy's X-Forwarded-For gives the
/// client address; from anyone else it is ignored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_for_from_trusted_proxies_only() {
    let node = Node::start(
        "x",
        &[
            "--trusted-proxies",
            "127.0.0.1",
            "--max-connections-per-address",
            "1",
        ],
    );
    let addr = node.addr();
    let mut keep = Vec::new();
    let mut open = async |source: &str, xff: &str| {
        let stream = connect_from(source, addr).await;
        websocket(&mut keep, stream, addr, None, Some(xff))
            .await
            .expect("handshake")
    };
    // From the trusted proxy: each forwarded client has its own cap.
    assert_eq!(open("127.0.0.1", "198.51.100.4").await, None);
    assert_eq!(open("127.0.0.1", "198.51.100.5").await, None);
    assert_eq!(open("127.0.0.1", "198.51.100.4").await, Some(1013));
    // From an untrusted address the header is ignored: both count as
    // 127.0.0.3.
    assert_eq!(open("127.0.0.3", "198.51.100.6").await, None);
    assert_eq!(open("127.0.0.3", "198.51.100.7").await, Some(1013));
}

/// A PROXY v2 header (TCP over IPv4, from 203.0.113.20) followed by `tlvs`
/// as its remaining declared length.
fn v2_with_tlvs(tlvs: &[u8]) -> Vec<u8> {
    let mut header = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    let length = u16::try_from(12 + tlvs.len()).expect("short");
    header.extend_from_slice(&[0x21, 0x11]);
    header.extend_from_slice(&length.to_be_bytes());
    header.extend_from_slice(&[203, 0, 113, 20, 127, 0, 0, 1, 0x9c, 0x41, 0x22, 0x3d]);
    header.extend_from_slice(tlvs);
    header
}

/// A v2 header's TLVs must fill the rest of it exactly, as HAProxy requires:
/// one whose length runs past the header's declared length, or stray bytes
/// too short to be a TLV, and the connection is refused like any bad PROXY
/// header; well-formed TLVs are accepted and the address is used.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_v2_headers_with_malformed_tlvs_are_refused() {
    let node = Node::start(
        "t",
        &[
            "--trusted-proxies",
            "127.0.0.1",
            "--proxy-protocol",
            "--log-filter",
            "debug",
        ],
    );
    let addr = node.addr();
    let mut keep = Vec::new();
    let mut open = async |header: Vec<u8>| {
        let stream = connect_from("127.0.0.1", addr).await;
        websocket(&mut keep, stream, addr, Some(header), None).await
    };
    // An ALPN TLV that says 5 bytes and has 1; two bytes that are no TLV.
    for (what, tlvs) in [
        ("a TLV running past the header", &[0x01, 0, 5, b'h'][..]),
        ("a truncated TLV", &[0x04, 0][..]),
    ] {
        assert!(
            open(v2_with_tlvs(tlvs)).await.is_err(),
            "{what}: the connection must be refused"
        );
    }
    // The log line may reach us after the client saw the close (the node's
    // output is read by another thread): wait for it, a few seconds at most.
    let refused = || {
        node.logs()
            .lines()
            .iter()
            .filter(|line| line.contains("refused: bad PROXY header") && line.contains("TLV"))
            .count()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while refused() < 2 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        refused(),
        2,
        "both are logged as bad PROXY headers, for their TLVs"
    );
    // A NOOP TLV and an ALPN TLV, each exactly as long as it says.
    let good = v2_with_tlvs(&[0x04, 0, 2, 0, 0, 0x01, 0, 2, b'h', b'2']);
    assert_eq!(
        open(good).await.expect("handshake"),
        None,
        "well-formed TLVs are accepted"
    );
    let used = || {
        logged_peers(&node)
            .iter()
            .any(|p| p.starts_with("203.0.113.20"))
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !used() && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(used(), "the address of the good header is used");
}
