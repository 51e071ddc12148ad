//! Origin allowlist, lobby-key hardening and the admin token.

use crate::support;

use std::net::SocketAddr;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use sha2::Sha256;
use support::raw::{self, RawSocket};
use support::{Client, RECV_TIMEOUT, Relays, assert_quiet_pair, pair};
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
    let c = Relays::memory_with(&[
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
    let c = Relays::memory();
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
    let c = Relays::redis_with(&["--lobby-secret", SECRET]);
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
    let c = Relays::redis_with(&["--log-filter", "debug"]);
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

/// The nodes' `--admin-token` in these tests.
const ADMIN_TOKEN: &str = "security-test-admin-token";

/// `GET /admin/api/cluster` from `source` (any 127/8 address works on
/// Linux), with `authorization` as that header's value: the status and the
/// whole response.
async fn admin_api(node: SocketAddr, source: &str, authorization: Option<&str>) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind(format!("{source}:0").parse().expect("address"))
        .expect("bind");
    let mut stream = socket.connect(node).await.expect("connect");
    let mut request =
        "GET /admin/api/cluster HTTP/1.1\r\nHost: x\r\nConnection: close\r\n".to_owned();
    if let Some(value) = authorization {
        request.push_str(&format!("Authorization: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut response = Vec::new();
    tokio::time::timeout(RECV_TIMEOUT, stream.read_to_end(&mut response))
        .await
        .expect("an answer in time")
        .expect("read");
    let response = String::from_utf8_lossy(&response).into_owned();
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {response:?}"));
    (status, response)
}

/// The value of header `name` in an HTTP response.
fn header<'a>(response: &'a str, name: &str) -> Option<&'a str> {
    let head = response.split("\r\n\r\n").next().unwrap_or_default();
    head.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.eq_ignore_ascii_case(name).then(|| value.trim())
    })
}

/// Wrong admin tokens are throttled per client address: 10 at once, then
/// one every 6 s; past that an address gets 429 with Retry-After, and its
/// token is not even looked at (so a guesser learns nothing from a right
/// guess), the right token included. Another address has its own
/// allowance: the operator there gets in. Players from the throttled
/// address play on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_admin_tokens_are_throttled_per_address() {
    let c = Relays::memory_with(&["--admin-token", ADMIN_TOKEN]);
    let addr = c.addr_a();
    let (mut a, mut b) = pair(&c, "admin-throttle").await;
    let right = format!("Bearer {ADMIN_TOKEN}");
    let wrong = |i: u32| format!("Bearer wrong-admin-token-{i:04}");
    for i in 0..10 {
        let (status, response) = admin_api(addr, "127.0.0.1", Some(&wrong(i))).await;
        assert_eq!(status, 401, "wrong token {i}: {response}");
    }
    let (status, response) = admin_api(addr, "127.0.0.1", Some(&right)).await;
    assert_eq!(status, 429, "{response}");
    let retry_after: u64 = header(&response, "retry-after")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("429 without Retry-After seconds: {response}"));
    assert!((1..=6).contains(&retry_after), "{response}");
    assert!(
        response.contains("too many wrong admin tokens from your address"),
        "{response}"
    );
    // The attack goes on: at most one more try gets through every 6 s.
    let start = Instant::now();
    let mut let_through = 0;
    for i in 10..300 {
        let (status, response) = admin_api(addr, "127.0.0.1", Some(&wrong(i))).await;
        match status {
            401 => let_through += 1,
            429 => {}
            _ => panic!("wrong token {i}: {response}"),
        }
    }
    let allowed = start.elapsed().as_secs() / 6 + 2;
    assert!(
        let_through <= allowed,
        "{let_through} of 290 wrong tokens were checked within {:?}",
        start.elapsed()
    );
    // Another address: the operator gets in, and has an allowance of its own.
    let (status, response) = admin_api(addr, "127.0.0.2", Some(&right)).await;
    assert_eq!(status, 200, "{response}");
    let (status, response) = admin_api(addr, "127.0.0.2", Some(&wrong(0))).await;
    assert_eq!(status, 401, "{response}");
    assert_quiet_pair(&mut a, &mut b).await;
}

/// RFC 9110: the authentication scheme is case-insensitive, so `bearer`
/// and `BEARER` work as `Bearer` does; other schemes do not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_takes_any_case_of_bearer() {
    let c = Relays::memory_with(&["--admin-token", ADMIN_TOKEN]);
    let addr = c.addr_a();
    for scheme in ["Bearer", "bearer", "BEARER", "bEaReR"] {
        let value = format!("{scheme} {ADMIN_TOKEN}");
        let (status, response) = admin_api(addr, "127.0.0.1", Some(&value)).await;
        assert_eq!(status, 200, "{value}: {response}");
    }
    for value in [
        format!("Basic {ADMIN_TOKEN}"),
        format!("Bearer{ADMIN_TOKEN}"),
    ] {
        let (status, response) = admin_api(addr, "127.0.0.1", Some(&value)).await;
        assert_eq!(status, 401, "{value}: {response}");
    }
}

/// Runs `lobby-relay serve` with `args` and `env`, expecting it to refuse to
/// start: its exit status and standard error (it is killed, and the test
/// fails, if it still runs after 5 s).
fn refused_start(args: &[&str], env: &[(&str, &str)]) -> (ExitStatus, String) {
    use std::io::Read;
    let mut command = support::nodes::serve_command();
    command
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    command.envs(env.iter().copied());
    let mut child = command.spawn().expect("spawn lobby-relay");
    let deadline = Instant::now() + Duration::from_secs(5);
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("lobby-relay {args:?} started (still running after 5 s)");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    let _ = child
        .stderr
        .take()
        .expect("piped")
        .read_to_string(&mut stderr);
    (status, stderr)
}

/// An admin token that is blank, or has whitespace around it, could never
/// match a request's (header values and the page's input are trimmed): the
/// node refuses to start, naming the option and its variable and not
/// echoing the token.
#[test]
fn a_blank_or_padded_admin_token_is_refused_at_startup() {
    let blank = " ".repeat(20);
    let padded = format!("{ADMIN_TOKEN} ");
    let tabbed = format!("\t{ADMIN_TOKEN}");
    for (what, token, as_flag) in [
        ("blank variable", &blank, false),
        ("blank flag", &blank, true),
        ("padded variable", &padded, false),
        ("tabbed flag", &tabbed, true),
    ] {
        let (args, env) = if as_flag {
            (vec!["--admin-token", token.as_str()], vec![])
        } else {
            (vec![], vec![("LOBBY_RELAY_ADMIN_TOKEN", token.as_str())])
        };
        let (status, stderr) = refused_start(&args, &env);
        assert!(!status.success(), "{what}: {status}");
        assert!(
            stderr.contains("--admin-token") && stderr.contains("LOBBY_RELAY_ADMIN_TOKEN"),
            "{what}: the error names the option and its variable: {stderr}"
        );
        assert!(
            stderr.contains("whitespace"),
            "{what}: the error says why: {stderr}"
        );
        assert!(
            !stderr.contains(ADMIN_TOKEN),
            "{what}: the token is not echoed: {stderr}"
        );
    }
}

/// The upgrade is refused with 400 and a reason unless its
/// `Sec-WebSocket-Key` is 16 bytes in base64 (RFC 6455, 4.2.1); a good key
/// still gets 101.
#[test]
fn a_malformed_websocket_key_gets_400() {
    let c = Relays::memory();
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
    let c = Relays::memory();
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
    let c = Relays::memory();
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
