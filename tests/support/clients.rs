//! WebSocket clients speaking the wire protocol, with a timeout on every
//! read, and the protocol steps and assertions many tests share.

use std::time::Duration;

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream as TokioTcpStream;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::{RECV_TIMEOUT, Relays, unique};

type Ws = WebSocketStream<MaybeTlsStream<TokioTcpStream>>;

/// Opens a WebSocket, returning the handshake error instead of panicking.
pub async fn try_connect(url: &str) -> Result<Ws, tungstenite::Error> {
    match tokio::time::timeout(RECV_TIMEOUT, tokio_tungstenite::connect_async(url)).await {
        Ok(result) => result.map(|(ws, _response)| ws),
        Err(_) => panic!("connecting to {url} timed out after {RECV_TIMEOUT:?}"),
    }
}

/// One WebSocket client. Its `name` appears in every failure message.
pub struct Client {
    pub tx: Sender,
    pub rx: Receiver,
}

/// The sending half of a [`Client`].
pub struct Sender {
    name: String,
    sink: SplitSink<Ws, Message>,
}

/// The receiving half of a [`Client`].
pub struct Receiver {
    name: String,
    stream: SplitStream<Ws>,
}

impl Client {
    /// Connects to `url`; panics if the handshake fails.
    pub async fn connect(url: &str, name: &str) -> Client {
        let ws = try_connect(url)
            .await
            .unwrap_or_else(|e| panic!("{name}: connecting to {url} failed: {e}"));
        Client::from_ws(ws, name)
    }

    fn from_ws(ws: Ws, name: &str) -> Client {
        let (sink, stream) = ws.split();
        Client {
            tx: Sender {
                name: name.to_owned(),
                sink,
            },
            rx: Receiver {
                name: name.to_owned(),
                stream,
            },
        }
    }

    /// Connects with a prepared handshake request (extra headers, a query
    /// string); returns the handshake error instead of panicking.
    pub async fn connect_request(
        request: tungstenite::handshake::client::Request,
        name: &str,
    ) -> Result<Client, tungstenite::Error> {
        let ws = match tokio::time::timeout(RECV_TIMEOUT, tokio_tungstenite::connect_async(request))
            .await
        {
            Ok(result) => result?.0,
            Err(_) => panic!("{name}: connecting timed out after {RECV_TIMEOUT:?}"),
        };
        Ok(Client::from_ws(ws, name))
    }

    pub fn name(&self) -> &str {
        &self.tx.name
    }

    /// Splits the client so that it can send and receive at the same time.
    pub fn split(self) -> (Sender, Receiver) {
        (self.tx, self.rx)
    }

    pub async fn send_json(&mut self, value: Value) {
        self.tx.send_json(value).await
    }

    pub async fn send_text(&mut self, text: &str) {
        self.tx.send_text(text).await
    }

    pub async fn send_binary(&mut self, bytes: Vec<u8>) {
        self.tx.send_binary(bytes).await
    }

    /// The next data or Close message (Ping/Pong skipped), within 5 s.
    pub async fn recv(&mut self) -> Message {
        self.rx.recv().await
    }

    /// The next message, which must arrive within `timeout`.
    pub async fn recv_within(&mut self, timeout: Duration) -> Message {
        self.rx.recv_within(timeout).await
    }

    /// The next message, which must be JSON in a text frame arriving within
    /// `timeout`.
    pub async fn recv_json_within(&mut self, timeout: Duration) -> Value {
        let name = self.name().to_owned();
        match self.recv_within(timeout).await {
            Message::Text(text) => serde_json::from_str(text.as_str())
                .unwrap_or_else(|e| panic!("{name}: text frame is not JSON ({e}): {text:?}")),
            other => panic!("{name}: expected a JSON text frame, got {other:?}"),
        }
    }

    /// The next message, which must be a text frame.
    pub async fn recv_text(&mut self) -> String {
        self.rx.recv_text().await
    }

    /// The next message, which must be a text frame holding JSON.
    pub async fn recv_json(&mut self) -> Value {
        self.rx.recv_json().await
    }

    /// The next message, which must be a binary frame.
    pub async fn recv_binary(&mut self) -> Vec<u8> {
        self.rx.recv_binary().await
    }

    /// Asserts that nothing (but Ping/Pong) arrives for `duration`.
    pub async fn expect_silence(&mut self, duration: Duration) {
        self.rx.expect_silence(duration).await
    }

    /// Reads until a Close frame (data messages before it are skipped) and
    /// asserts its code.
    pub async fn expect_close(&mut self, code: u16) {
        self.rx.expect_close(code).await
    }

    /// Asserts that the next message is exactly this JSON value.
    pub async fn expect_json(&mut self, expected: Value) {
        let got = self.recv_json().await;
        assert_eq!(got, expected, "{}: unexpected message", self.name());
    }

    /// Asserts that the next message is a text frame with exactly this text.
    pub async fn expect_text(&mut self, expected: &str) {
        let got = self.recv_text().await;
        assert_eq!(got, expected, "{}: unexpected text frame", self.name());
    }

    /// Asserts that the next message is
    /// `{"type":"error","code":CODE,"message":<non-empty string>}`.
    pub async fn expect_error(&mut self, code: &str) -> Value {
        let got = self.recv_json().await;
        assert_error(self.name(), &got, code);
        got
    }

    /// Sends a `ping` with a fresh `t` and asserts that the next message is
    /// the matching `pong`: the connection is open and has nothing pending.
    pub async fn assert_open(&mut self) {
        let t = unique();
        self.send_json(json!({"type": "ping", "t": t})).await;
        let got = self.recv_json().await;
        assert_eq!(
            got,
            json!({"type": "pong", "t": t}),
            "{}: expected the pong of a liveness ping",
            self.name()
        );
    }

    /// Sends `{"type":"join","passphrase":P}` without waiting for the answer.
    pub async fn send_join(&mut self, passphrase: &str) {
        self.send_json(json!({"type": "join", "passphrase": passphrase}))
            .await
    }

    /// Joins and returns the `joined` reply (panics on anything else).
    pub async fn join(&mut self, passphrase: &str) -> Value {
        self.send_join(passphrase).await;
        let reply = self.recv_json().await;
        assert_eq!(
            reply["type"],
            "joined",
            "{}: joining {passphrase:?} failed: {reply}",
            self.name()
        );
        reply
    }

    pub async fn leave(&mut self) {
        self.send_json(json!({"type": "leave"})).await
    }

    /// Closes with a Close frame (1000) and waits for the server's Close.
    pub async fn close(mut self) {
        let name = self.name().to_owned();
        self.tx
            .sink
            .send(Message::Close(Some(CloseFrame {
                code: 1000.into(),
                reason: "bye".into(),
            })))
            .await
            .unwrap_or_else(|e| panic!("{name}: sending Close failed: {e}"));
        // The close handshake completes when the server answers.
        let _ = tokio::time::timeout(RECV_TIMEOUT, async {
            while let Some(Ok(message)) = self.rx.stream.next().await {
                if matches!(message, Message::Close(_)) {
                    break;
                }
            }
        })
        .await;
    }

    /// See [`Receiver::try_recv_within`].
    pub async fn try_recv_within(&mut self, timeout: Duration) -> Result<Option<Message>, String> {
        self.rx.try_recv_within(timeout).await
    }
}

/// Asserts `{"type":"error","code":CODE,"message":<non-empty string>}` exactly.
pub fn assert_error(name: &str, got: &Value, code: &str) {
    let object = got
        .as_object()
        .unwrap_or_else(|| panic!("{name}: expected error {code:?}, got {got}"));
    assert_eq!(
        got["type"], "error",
        "{name}: expected error {code:?}, got {got}"
    );
    assert_eq!(
        got["code"], code,
        "{name}: expected error {code:?}, got {got}"
    );
    let message = got["message"].as_str().unwrap_or("");
    assert!(
        !message.is_empty(),
        "{name}: error {code:?} needs a non-empty string `message`: {got}"
    );
    let mut keys: Vec<&str> = object.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        ["code", "message", "type"],
        "{name}: an error has exactly type, code and message: {got}"
    );
}

impl Sender {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub async fn send(&mut self, message: Message) {
        let name = &self.name;
        tokio::time::timeout(RECV_TIMEOUT, self.sink.send(message))
            .await
            .unwrap_or_else(|_| panic!("{name}: send timed out after {RECV_TIMEOUT:?}"))
            .unwrap_or_else(|e| panic!("{name}: send failed: {e}"));
    }

    pub async fn send_json(&mut self, value: Value) {
        self.send(Message::text(value.to_string())).await
    }

    pub async fn send_text(&mut self, text: &str) {
        self.send(Message::text(text)).await
    }

    /// Sends a text frame, returning the error instead of panicking (for a
    /// client that expects to be cut off while it sends).
    pub async fn try_send_text(&mut self, text: &str) -> Result<(), tungstenite::Error> {
        match tokio::time::timeout(RECV_TIMEOUT, self.sink.send(Message::text(text))).await {
            Ok(result) => result,
            Err(_) => Err(tungstenite::Error::ConnectionClosed),
        }
    }

    pub async fn send_binary(&mut self, bytes: Vec<u8>) {
        self.send(Message::binary(bytes)).await
    }
}

impl Receiver {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub async fn recv(&mut self) -> Message {
        self.recv_within(RECV_TIMEOUT).await
    }

    pub async fn recv_within(&mut self, timeout: Duration) -> Message {
        let Receiver { name, stream } = self;
        let next = async {
            loop {
                match stream.next().await {
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                    Some(Ok(message)) => return message,
                    Some(Err(e)) => panic!("{name}: reading failed: {e}"),
                    None => panic!("{name}: the connection ended without a Close frame"),
                }
            }
        };
        tokio::time::timeout(timeout, next)
            .await
            .unwrap_or_else(|_| panic!("{name}: nothing arrived within {timeout:?}"))
    }

    pub async fn recv_text(&mut self) -> String {
        match self.recv().await {
            Message::Text(text) => text.as_str().to_owned(),
            other => panic!("{}: expected a text frame, got {other:?}", self.name),
        }
    }

    pub async fn recv_json(&mut self) -> Value {
        let text = self.recv_text().await;
        serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{}: text frame is not JSON ({e}): {text:?}", self.name))
    }

    pub async fn recv_binary(&mut self) -> Vec<u8> {
        match self.recv().await {
            Message::Binary(bytes) => bytes.to_vec(),
            other => panic!("{}: expected a binary frame, got {other:?}", self.name),
        }
    }

    pub async fn expect_silence(&mut self, duration: Duration) {
        let Receiver { name, stream } = self;
        let next = async {
            loop {
                match stream.next().await {
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                    other => return other,
                }
            }
        };
        if let Ok(got) = tokio::time::timeout(duration, next).await {
            panic!("{name}: expected silence for {duration:?}, got {got:?}");
        }
    }

    pub async fn expect_close(&mut self, code: u16) {
        let Receiver { name, stream } = self;
        let mut skipped = Vec::new();
        let close = async {
            loop {
                match stream.next().await {
                    Some(Ok(Message::Close(frame))) => return frame,
                    Some(Ok(other)) => skipped.push(other),
                    Some(Err(e)) => {
                        panic!(
                            "{name}: reading failed before a Close frame: {e}; skipped {skipped:?}"
                        )
                    }
                    None => {
                        panic!(
                            "{name}: the connection ended without a Close frame; skipped {skipped:?}"
                        )
                    }
                }
            }
        };
        let frame = tokio::time::timeout(RECV_TIMEOUT, close)
            .await
            .unwrap_or_else(|_| panic!("{name}: no Close frame within {RECV_TIMEOUT:?}"));
        let got = frame.as_ref().map(|f| u16::from(f.code));
        assert_eq!(got, Some(code), "{name}: wrong close code; frame {frame:?}");
        self.expect_end().await;
    }

    /// After the relay's Close frame, does what a WebSocket client does:
    /// answers it (tungstenite sends the answer on the next read) and reads
    /// on until the relay ends the connection, which it must do at once and
    /// in good order (not with a reset).
    pub async fn expect_end(&mut self) {
        let Receiver { name, stream } = self;
        let end = tokio::time::timeout(RECV_TIMEOUT, stream.next())
            .await
            .unwrap_or_else(|_| {
                panic!("{name}: the relay kept the connection open after its close")
            });
        if let Some(after) = end {
            panic!("{name}: after the Close frame, {after:?} instead of the end");
        }
    }

    /// The next data or Close message (Ping/Pong skipped) if one arrives
    /// within `timeout`: `Ok(None)` if none did, `Err` if the connection
    /// failed or ended without a Close frame. Cancel-safe (for `select!`).
    pub async fn try_recv_within(&mut self, timeout: Duration) -> Result<Option<Message>, String> {
        let stream = &mut self.stream;
        let next = async {
            loop {
                match stream.next().await {
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                    Some(Ok(message)) => return Ok(message),
                    Some(Err(e)) => return Err(format!("reading failed: {e}")),
                    None => return Err("the connection ended without a Close frame".to_owned()),
                }
            }
        };
        match tokio::time::timeout(timeout, next).await {
            Ok(Ok(message)) => Ok(Some(message)),
            Ok(Err(e)) => Err(e),
            Err(_) => Ok(None),
        }
    }
}

// ---------------------------------------------------------------------------
// Protocol steps shared by many tests
// ---------------------------------------------------------------------------

/// Two players in a fresh capacity-2 lobby, A (seat 1) through node `a` and B
/// (seat 2) through node `b`, both past `ready`.
pub async fn pair(relays: &Relays, passphrase: &str) -> (Client, Client) {
    pair_named(relays, passphrase, "A", "B").await
}

/// [`pair`] with the clients' names for failure messages.
pub async fn pair_named(
    relays: &Relays,
    passphrase: &str,
    name_a: &str,
    name_b: &str,
) -> (Client, Client) {
    let mut a = Client::connect(&relays.url_a(), name_a).await;
    let mut b = Client::connect(&relays.url_b(), name_b).await;
    a.send_join(passphrase).await;
    a.expect_json(json!({"type": "joined", "players": 1, "capacity": 2, "seat": 1}))
        .await;
    join_second(&mut a, &mut b, passphrase).await;
    (a, b)
}

/// `b` joins the lobby of two that `a` sits in alone: `b` is seated second,
/// and both are told the lobby is ready.
pub async fn join_second(a: &mut Client, b: &mut Client, passphrase: &str) {
    b.send_join(passphrase).await;
    b.expect_json(json!({"type": "joined", "players": 2, "capacity": 2, "seat": 2}))
        .await;
    a.expect_json(json!({"type": "ready", "players": 2})).await;
    b.expect_json(json!({"type": "ready", "players": 2})).await;
}

/// A fresh game message, different on every call.
pub fn game_message(kind: &str) -> String {
    format!(r#"{{"type":"{kind}","n":{}}}"#, unique())
}

/// Proves that neither member has anything pending: a fresh message from
/// `a` is the next thing `b` receives, and `b`'s fresh answer is the next
/// thing `a` receives. Because one sender's messages keep their order, a
/// message that was wrongly relayed or echoed earlier would arrive first.
pub async fn assert_quiet_pair(a: &mut Client, b: &mut Client) {
    let there = game_message("probe");
    a.send_text(&there).await;
    b.expect_text(&there).await;
    let back = game_message("probeReply");
    b.send_text(&back).await;
    a.expect_text(&back).await;
}
