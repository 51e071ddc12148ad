//! A WebSocket client written by hand over a blocking TCP socket, for tests
//! that must send what no WebSocket library sends (bad frames, bad
//! handshakes, a flood that never reads) and see the exact bytes that come
//! back.

use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::Duration;

/// How long one read may wait before the test fails.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// A `Sec-WebSocket-Key` as RFC 6455 wants it: 16 bytes, base64.
pub const GOOD_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

/// The mask of every masked frame built here (its value does not matter).
const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

/// FIN bit of a frame's first byte.
pub const FIN: u8 = 0x80;
/// Opcodes.
pub const CONTINUATION: u8 = 0x0;
pub const TEXT: u8 = 0x1;
pub const BINARY: u8 = 0x2;
pub const CLOSE: u8 = 0x8;
pub const PING: u8 = 0x9;

/// One frame as bytes on the wire: `first` is the first byte (FIN, RSV bits
/// and opcode), the payload is masked as a client must unless `masked` is
/// false.
pub fn frame(first: u8, payload: &[u8], masked: bool) -> Vec<u8> {
    let mask_bit = if masked { 0x80 } else { 0 };
    let mut bytes = vec![first];
    match payload.len() {
        n if n < 126 => bytes.push(mask_bit | n as u8),
        n if n <= 0xffff => {
            bytes.push(mask_bit | 126);
            bytes.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            bytes.push(mask_bit | 127);
            bytes.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    if masked {
        bytes.extend_from_slice(&MASK);
        bytes.extend(payload.iter().enumerate().map(|(i, b)| b ^ MASK[i % 4]));
    } else {
        bytes.extend_from_slice(payload);
    }
    bytes
}

/// A masked, final text frame.
pub fn text(payload: &str) -> Vec<u8> {
    frame(FIN | TEXT, payload.as_bytes(), true)
}

/// A frame from the relay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// FIN, RSV bits and opcode.
    pub first: u8,
    pub payload: Vec<u8>,
}

impl Frame {
    pub fn opcode(&self) -> u8 {
        self.first & 0x0f
    }

    /// The payload of a text frame.
    pub fn text(&self) -> Option<&str> {
        (self.opcode() == TEXT)
            .then(|| std::str::from_utf8(&self.payload).ok())
            .flatten()
    }

    /// The status code of a close frame (`None`: a close frame without one,
    /// or not a close frame).
    pub fn close_code(&self) -> Option<u16> {
        (self.opcode() == CLOSE && self.payload.len() >= 2)
            .then(|| u16::from_be_bytes([self.payload[0], self.payload[1]]))
    }
}

/// An HTTP answer: status code, head and body.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub head: String,
    pub body: String,
}

/// A TCP connection to a node.
pub struct RawSocket {
    stream: TcpStream,
    /// Bytes read and not yet parsed.
    pending: Vec<u8>,
}

impl RawSocket {
    pub fn connect(addr: SocketAddr) -> RawSocket {
        RawSocket::from_stream(TcpStream::connect(addr).expect("connect"))
    }

    /// Connects from the loopback address `local` (`127.0.0.2`, ...): the
    /// node sees another client. Not from inside an async runtime.
    pub fn connect_from(addr: SocketAddr, local: IpAddr) -> RawSocket {
        RawSocket::from_stream(connect_from(addr, local))
    }

    fn from_stream(stream: TcpStream) -> RawSocket {
        stream
            .set_read_timeout(Some(READ_TIMEOUT))
            .expect("read timeout");
        RawSocket {
            stream,
            pending: Vec::new(),
        }
    }

    /// Connects and upgrades with a valid handshake on `/`: what follows is
    /// frames.
    pub fn upgrade(addr: SocketAddr) -> RawSocket {
        RawSocket::connect(addr).handshake()
    }

    /// [`RawSocket::upgrade`] from the loopback address `local`.
    pub fn upgrade_from(addr: SocketAddr, local: IpAddr) -> RawSocket {
        RawSocket::connect_from(addr, local).handshake()
    }

    fn handshake(mut self) -> RawSocket {
        let answer = self.exchange(&upgrade_request(GOOD_KEY));
        assert_eq!(answer.status, 101, "the upgrade failed: {answer:?}");
        self
    }

    /// Sends a `ping` and asserts that its `pong` is the next frame: the
    /// connection is in a session.
    pub fn assert_open(&mut self) {
        self.send(&text(r#"{"type":"ping","t":7}"#));
        let pong = self.read_frame().expect("a pong");
        assert_eq!(pong.text(), Some(r#"{"type":"pong","t":7}"#), "{pong:?}");
    }

    /// A second handle on the same socket, to write from another thread.
    pub fn writer(&self) -> TcpStream {
        self.stream.try_clone().expect("clone the socket")
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write");
    }

    /// Sends an HTTP request head and reads the answer's head (and body, by
    /// its Content-Length).
    pub fn exchange(&mut self, request: &str) -> Answer {
        self.send(request.as_bytes());
        let end = loop {
            if let Some(end) = self.pending.windows(4).position(|w| w == b"\r\n\r\n") {
                break end + 4;
            }
            self.fill()
                .unwrap_or_else(|e| panic!("no answer to {request:?}: {e}"));
        };
        let head = String::from_utf8_lossy(&self.pending[..end]).into_owned();
        self.pending.drain(..end);
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|code| code.parse().ok())
            .unwrap_or_else(|| panic!("not an HTTP answer: {head:?}"));
        let length = head
            .lines()
            .find_map(|line| {
                let (name, value) = line.split_once(':')?;
                name.eq_ignore_ascii_case("content-length")
                    .then(|| value.trim().parse::<usize>().ok())
                    .flatten()
            })
            .unwrap_or(0);
        while self.pending.len() < length {
            self.fill().expect("the body");
        }
        let body = String::from_utf8_lossy(&self.pending[..length]).into_owned();
        self.pending.drain(..length);
        Answer { status, head, body }
    }

    /// The next frame from the relay; `Err` if the connection ended (how).
    pub fn read_frame(&mut self) -> Result<Frame, String> {
        loop {
            if let Some((frame, used)) = parse_frame(&self.pending) {
                self.pending.drain(..used);
                return Ok(frame);
            }
            self.fill()?;
        }
    }

    /// Reads frames until a close frame; returns it and the data frames
    /// before it. Panics if the connection ends without one.
    pub fn read_until_close(&mut self) -> (Frame, Vec<Frame>) {
        let mut before = Vec::new();
        loop {
            match self.read_frame() {
                Ok(frame) if frame.opcode() == CLOSE => return (frame, before),
                Ok(frame) => before.push(frame),
                Err(e) => panic!("no close frame: {e}; frames before: {before:?}"),
            }
        }
    }

    /// Asserts that the relay ends the connection in good order next: a
    /// TCP FIN (end of stream), not a reset, with nothing before it.
    pub fn expect_end(&mut self) {
        match self.read_frame() {
            Err(e) if e == "end of stream" => {}
            other => panic!("expected the end of the stream, got {other:?}"),
        }
    }

    /// Asserts that the connection was not reset (no error pending on the
    /// socket). On Linux a reset that follows data leaves that data readable
    /// and the next read sees the end of the stream; on other systems, and
    /// on a network where the last segments are still in flight, the reset
    /// throws the data away: so a test that the client can read something
    /// asserts that there was no reset at all.
    pub fn expect_no_reset(&self) {
        let pending = self.stream.take_error().expect("SO_ERROR");
        assert!(pending.is_none(), "the connection was reset: {pending:?}");
    }

    /// Reads more bytes; `Err` says how the connection ended.
    fn fill(&mut self) -> Result<(), String> {
        let mut buf = [0u8; 16 * 1024];
        match self.stream.read(&mut buf) {
            Ok(0) => Err("end of stream".to_owned()),
            Ok(n) => {
                self.pending.extend_from_slice(&buf[..n]);
                Ok(())
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                Err(format!("nothing within {READ_TIMEOUT:?}"))
            }
            Err(e) => Err(format!("read failed: {e} ({:?})", e.kind())),
        }
    }
}

/// A TCP connection to `addr` from the loopback address `local` (the
/// standard library cannot bind before it connects; tokio can). Not from
/// inside an async runtime.
pub fn connect_from(addr: SocketAddr, local: IpAddr) -> TcpStream {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .expect("a runtime");
    let stream = runtime
        .block_on(async {
            let socket = tokio::net::TcpSocket::new_v4()?;
            socket.bind(SocketAddr::new(local, 0))?;
            socket.connect(addr).await?.into_std()
        })
        .unwrap_or_else(|e| panic!("connecting from {local} to {addr}: {e}"));
    stream.set_nonblocking(false).expect("blocking");
    stream
}

/// Whether the node has closed `stream` (end of stream or reset), without
/// waiting: `false` while it is open and silent.
pub fn is_closed(stream: &TcpStream) -> bool {
    stream.set_nonblocking(true).expect("non-blocking");
    let mut byte = [0u8; 1];
    let closed = match (&*stream).read(&mut byte) {
        Ok(0) => true,
        Ok(_) => panic!("the node sent something to a connection that sent nothing"),
        Err(e) => e.kind() != ErrorKind::WouldBlock,
    };
    stream.set_nonblocking(false).expect("blocking");
    closed
}

/// A WebSocket upgrade request on `/` with this `Sec-WebSocket-Key`.
pub fn upgrade_request(key: &str) -> String {
    format!(
        "GET / HTTP/1.1\r\nHost: relay\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\n\r\n"
    )
}

/// A frame from the start of `bytes` (unmasked, as a server sends) and the
/// bytes it took, or `None` if it is not all there yet.
fn parse_frame(bytes: &[u8]) -> Option<(Frame, usize)> {
    let [first, second, ..] = *bytes else {
        return None;
    };
    assert_eq!(second & 0x80, 0, "a frame from the relay is masked");
    let (length, header) = match second & 0x7f {
        126 => (
            u16::from_be_bytes(bytes.get(2..4)?.try_into().ok()?) as usize,
            4,
        ),
        127 => (
            u64::from_be_bytes(bytes.get(2..10)?.try_into().ok()?) as usize,
            10,
        ),
        n => (n as usize, 2),
    };
    let payload = bytes.get(header..header + length)?.to_vec();
    Some((Frame { first, payload }, header + length))
}
