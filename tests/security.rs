//! Origin allowlist and lobby-key hardening.

mod support;

use std::process::Command;

use hmac::{Hmac, Mac};
use sha2::Sha256;
use support::raw::{self, RawSocket};
use support::{Client, Cluster, pair};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

async fn connect_with_origin(url: &str, origin: Option<&str>) -> Result<(), u16> {
    let mut request = url.into_client_request().expect("request");
    if let Some(origin) = origin {
        request
            .headers_mut()
            .insert("Origin", HeaderValue::from_str(origin).expect("header"));
    }
    match tokio_tungstenite::connect_async(request).await {
        Ok(_) => Ok(()),
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            Err(response.status().as_u16())
        }
        Err(e) => panic!("unexpected failure: {e}"),
    }
}

/// With `--allowed-origins`, a browser page from another origin is refused
/// with 403; the allowed origin and native clients (no Origin) get in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_allowed_origins_may_connect() {
    let c = Cluster::memory_with(&[
        "--allowed-origins",
        "https://play.example.com,https://example.com/",
    ]);
    let url = c.url_a();
    assert_eq!(
        connect_with_origin(&url, Some("https://evil.example.net")).await,
        Err(403)
    );
    assert_eq!(
        connect_with_origin(&url, Some("http://play.example.com")).await,
        Err(403)
    );
    assert_eq!(
        connect_with_origin(&url, Some("https://play.example.com")).await,
        Ok(())
    );
    assert_eq!(
        connect_with_origin(&url, Some("https://Example.com")).await,
        Ok(())
    );
    assert_eq!(connect_with_origin(&url, None).await, Ok(()));
}

/// Without an allowlist any origin may connect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_origin_by_default() {
    let c = Cluster::memory();
    assert_eq!(
        connect_with_origin(&c.url_a(), Some("https://anywhere.example")).await,
        Ok(())
    );
}

const SECRET: &str = "a-secret-of-the-studio";

/// With `--lobby-secret`, the lobby key in Redis is the HMAC of the
/// passphrase, the plain SHA-256 appears nowhere, players still meet across
/// nodes, and `lobby-relay inspect` with the same secret finds them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lobby_secret_hardens_the_keys() {
    let c = Cluster::redis_with(&["--lobby-secret", SECRET]);
    let passphrase = format!("hardened-{}", support::unique());
    let (mut a, mut b) = pair(&c, &passphrase).await;
    a.send_text(r#"{"type":"hello"}"#).await;
    b.expect_text(r#"{"type":"hello"}"#).await;

    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(passphrase.as_bytes());
    let hmac: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let redis = c.redis_probe().await.expect("redis");
    assert_eq!(
        redis.keys("lr:lobby:*").await,
        [format!("lr:lobby:{{{hmac}}}")]
    );
    let plain = support::lobby_id(&passphrase);
    for item in redis.everything().await {
        assert!(
            !item.contains(&plain),
            "the plain SHA-256 is in Redis: {item}"
        );
    }

    let redis_url = c.redis_url().expect("redis");
    let run = |secret: Option<&str>| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_lobby-relay"));
        command
            .args(["inspect", &passphrase, "--redis-url", &redis_url])
            .env_remove("LOBBY_RELAY_LOBBY_SECRET");
        if let Some(secret) = secret {
            command.env("LOBBY_RELAY_LOBBY_SECRET", secret);
        }
        let output = command.output().expect("inspect runs");
        assert!(output.status.success(), "{output:?}");
        String::from_utf8(output.stdout).expect("utf-8")
    };
    let found = run(Some(SECRET));
    assert!(found.contains(&hmac), "{found}");
    assert!(
        found.contains("seat 1: a/") && found.contains("seat 2: b/"),
        "{found}"
    );
    let without = run(None);
    assert!(without.contains("no members"), "{without}");

    drop(a);
    let mut c1 = Client::connect(&c.url_b(), "C").await;
    c1.assert_open().await;
}

/// Nothing a node logs, even at `debug`, and nothing in Redis contains a
/// passphrase: valid ones (joined, full, left), invalid ones, and the short
/// join form, across two nodes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_passphrase_in_logs_or_redis() {
    const TYPED: [&str; 4] = [
        " Walrus-Tango-4412 ",
        "walrus-tango-4412",
        "otter_secret_words",
        "Quiet-Lynx-8",
    ];
    let c = Cluster::redis_with(&["--log-filter", "debug"]);
    let mut a = Client::connect(&c.url_a(), "A").await;
    let mut b = Client::connect(&c.url_b(), "B").await;
    let mut third = Client::connect(&c.url_a(), "C").await;
    a.send_join(TYPED[0]).await;
    a.recv_json().await;
    b.send_json(serde_json::json!({ "join": TYPED[1] })).await;
    b.recv_json().await;
    third.send_join(TYPED[1]).await;
    third.expect_error("lobby_full").await;
    third.send_join(TYPED[2]).await;
    third.expect_error("invalid_passphrase").await;
    third.send_join(TYPED[3]).await;
    third.recv_json().await;
    a.recv_json().await;
    b.recv_json().await;
    a.leave().await;
    b.recv_json().await;
    drop((a, b, third));

    let redis = c.redis_probe().await.expect("redis");
    let stored = redis.everything().await;
    let logs: Vec<String> = c.logs().iter().flat_map(|l| l.lines()).collect();
    assert!(
        logs.iter().any(|l| l.contains("joined lobby")),
        "the logs were captured"
    );
    for typed in TYPED {
        let needle = typed.trim().to_ascii_lowercase();
        for line in logs.iter().chain(&stored) {
            assert!(
                !line.to_ascii_lowercase().contains(&needle),
                "passphrase {needle:?} leaked: {line}"
            );
        }
    }
}

/// The upgrade is refused with 400 and a reason unless its
/// `Sec-WebSocket-Key` is 16 bytes in base64 (RFC 6455, 4.2.1); a good key
/// still gets 101.
#[test]
fn a_malformed_websocket_key_gets_400() {
    let c = Cluster::memory();
    for key in [
        "not base64 at all!",
        "aGVsbG8=",                     // 5 bytes
        "AAAAAAAAAAAAAAAAAAAAAAAAAAAA", // 21 bytes
        "dGhlIHNhbXBsZSBub25jZQ",       // 16 bytes, padding missing
    ] {
        let answer = RawSocket::connect(c.addr_a()).exchange(&raw::upgrade_request(key));
        assert_eq!(answer.status, 400, "key {key:?}: {answer:?}");
        assert!(
            answer.body.contains("Sec-WebSocket-Key"),
            "key {key:?}: the reason is in the body: {answer:?}"
        );
    }
    let answer = RawSocket::connect(c.addr_a()).exchange(&raw::upgrade_request(raw::GOOD_KEY));
    assert_eq!(answer.status, 101, "{answer:?}");
    assert!(
        answer
            .head
            .contains("sec-websocket-accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
        "the accept key of RFC 6455's example: {answer:?}"
    );
}

/// An HTTP/1.1 request without exactly one valid `Host` header gets 400
/// (RFC 9112, 3.2), an upgrade as well as a health check; HTTP/1.0 needs
/// none.
#[test]
fn an_http_1_1_request_without_one_host_gets_400() {
    let c = Cluster::memory();
    let upgrade_without_host = raw::upgrade_request(raw::GOOD_KEY).replace("Host: relay\r\n", "");
    for request in [
        "GET /healthz HTTP/1.1\r\n\r\n",
        "GET /healthz HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        "GET /healthz HTTP/1.1\r\nHost: a b\r\n\r\n",
        "GET /healthz HTTP/1.1\r\nHost: user@relay\r\n\r\n",
        &upgrade_without_host,
    ] {
        let answer = RawSocket::connect(c.addr_a()).exchange(request);
        assert_eq!(answer.status, 400, "{request:?}: {answer:?}");
        assert!(
            answer.body.contains("Host"),
            "{request:?}: the reason is in the body: {answer:?}"
        );
    }
    for request in [
        "GET /healthz HTTP/1.1\r\nHost: relay.example:8765\r\n\r\n",
        "GET /healthz HTTP/1.1\r\nHost: [::1]:8765\r\n\r\n",
        "GET /healthz HTTP/1.0\r\n\r\n",
    ] {
        let answer = RawSocket::connect(c.addr_a()).exchange(request);
        assert_eq!(answer.status, 200, "{request:?}: {answer:?}");
    }
}

/// Frames that break RFC 6455 are answered with the close code that says
/// which rule (7.4.1): 1007 for a text that is not UTF-8, 1002 for the rest;
/// never with a close frame without a code, which a client reads as a
/// normal close (1005). Another lobby on the node notices nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_errors_are_closed_with_1002_or_1007() {
    use raw::{BINARY, CLOSE, CONTINUATION, FIN, PING, TEXT, frame};
    let c = Cluster::memory();
    let (mut a, mut b) = pair(&c, &format!("bystanders-{}", support::unique())).await;
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        (
            "invalid UTF-8 in a text frame",
            frame(FIN | TEXT, b"{\"type\":\"\xff\xfe\"}", true),
            1007,
        ),
        (
            "invalid UTF-8 across the fragments of a text",
            [
                frame(TEXT, b"{\"t\":\"\xe2\x82", true),
                frame(FIN | CONTINUATION, b"(\"}", true),
            ]
            .concat(),
            1007,
        ),
        (
            "invalid UTF-8 in a close reason",
            frame(FIN | CLOSE, b"\x03\xe8\xff", true),
            1007,
        ),
        ("RSV1 set", frame(FIN | 0x40 | TEXT, b"{}", true), 1002),
        ("RSV3 set", frame(FIN | 0x10 | BINARY, b"x", true), 1002),
        ("reserved data opcode 3", frame(FIN | 0x3, b"x", true), 1002),
        (
            "reserved control opcode 11",
            frame(FIN | 0xb, b"", true),
            1002,
        ),
        ("an unmasked frame", frame(FIN | TEXT, b"{}", false), 1002),
        (
            "a ping of 126 bytes",
            frame(FIN | PING, &[b'p'; 126], true),
            1002,
        ),
        ("a fragmented ping", frame(PING, b"p", true), 1002),
        (
            "a continuation with nothing to continue",
            frame(FIN | CONTINUATION, b"x", true),
            1002,
        ),
        (
            "a new message before the last one ended",
            [frame(TEXT, b"{", true), frame(FIN | TEXT, b"{}", true)].concat(),
            1002,
        ),
        (
            "a close frame of one byte",
            frame(FIN | CLOSE, b"\x03", true),
            1002,
        ),
        // Already right before: the node answers with 1002 itself.
        (
            "close code 999",
            frame(FIN | CLOSE, b"\x03\xe7", true),
            1002,
        ),
    ];
    let addr = c.addr_a();
    tokio::task::spawn_blocking(move || {
        for (case, bytes, code) in cases {
            let mut socket = RawSocket::upgrade(addr);
            socket.send(&bytes);
            let (close, before) = socket.read_until_close();
            assert_eq!(before, [], "{case}: nothing but the close frame");
            assert_eq!(close.close_code(), Some(code), "{case}: {close:?}");
            socket.expect_end();
        }
    })
    .await
    .expect("the raw clients");
    a.send_text(r#"{"type":"still-here"}"#).await;
    b.expect_text(r#"{"type":"still-here"}"#).await;
    b.assert_open().await;
}
