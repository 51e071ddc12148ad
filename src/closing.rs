//! How the node ends a WebSocket: the close code that tells a client which
//! rule of RFC 6455 its frames broke, and the close itself.
//!
//! Closing a socket whose receive buffer still holds unread bytes makes the
//! kernel reset the connection instead of ending it, and a reset throws away
//! what is still in flight to the client: the error and the close frame
//! that say why it was closed. A client that is refused while it sends (a
//! flooder, a message over the limit, a connection over the limit, a drain)
//! has such bytes in flight. So the node closes as trusted servers do
//! ([`linger`]; nginx's `lingering_close`, Apache's lingering close): its
//! close frame, then the end of its side of the stream, then it reads and
//! discards whatever still comes until the client's close frame, the end of
//! the client's side, [`CLOSE_QUIET`] of silence or [`CLOSE_LINGER`] in all.

use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::{SplitSink, SplitStream};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::error::ProtocolError;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self, Message};

/// The longest the node reads and discards from a client after its own
/// close. A client answers a close frame with its own at once: only one
/// that goes on sending waits this long.
pub const CLOSE_LINGER: Duration = Duration::from_secs(2);

/// A client silent this long after the node's close has stopped sending
/// (its last bytes in flight have long arrived), so the socket can be
/// closed without a reset: ends the wait for a client that neither answers
/// nor ends its side (one that stopped reading when it got the close frame).
pub const CLOSE_QUIET: Duration = Duration::from_millis(500);

/// Whether the client's frames can still be read when the node closes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frames {
    /// They still parse: the node reads on until the client's close frame.
    Readable,
    /// A read failed (a protocol error, a frame over the size limit, the
    /// socket): tungstenite reads no more and where the next frame begins
    /// is unknown, so only bytes are read, until the client ends its side
    /// (which the node's end of the stream prompts it to do).
    Broken,
}

/// Ends a connection whose session and writer are done (the close frame, if
/// any, is sent): ends the node's side of the stream (TCP FIN; with TLS,
/// `close_notify` first), then reads and discards until the client's close
/// frame (when its `frames` are still readable), the end of its side, a
/// failure, [`CLOSE_QUIET`] of silence or [`CLOSE_LINGER`] in all. Nothing
/// read here is acted on. The socket is closed when the halves are dropped.
pub async fn linger<S>(
    frames: SplitStream<WebSocketStream<S>>,
    sink: SplitSink<WebSocketStream<S>, Message>,
    state: Frames,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    // The two halves of one stream: they always reunite.
    let Ok(mut ws) = frames.reunite(sink) else {
        return;
    };
    let _ = tokio::time::timeout(CLOSE_LINGER, async {
        // Nothing more is written: tungstenite answers no ping once a close
        // frame has gone either way (were one tried, the write would fail
        // and only bytes be read).
        ws.get_mut().shutdown().await?;
        if state == Frames::Readable {
            loop {
                match tokio::time::timeout(CLOSE_QUIET, ws.next()).await {
                    Ok(Some(Ok(Message::Close(_))) | None) | Err(_) => return Ok(()),
                    Ok(Some(Ok(_ignored))) => {}
                    Ok(Some(Err(_))) => break,
                }
            }
        }
        // The bytes under tungstenite.
        let socket = ws.get_mut();
        let mut discard = [0u8; crate::read_ahead::READ_AHEAD];
        while let Ok(read) = tokio::time::timeout(CLOSE_QUIET, socket.read(&mut discard)).await {
            if read? == 0 {
                break;
            }
        }
        Ok::<(), std::io::Error>(())
    })
    .await;
}

/// A client's frame that breaks RFC 6455, as the close frame that answers it
/// (section 7.4.1): 1007 for a text that is not UTF-8, 1002 for the rest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Violation {
    pub code: CloseCode,
    /// The close frame's reason, for whoever debugs the client.
    pub reason: &'static str,
}

impl Violation {
    /// The violation behind a read error, or `None` for errors that are not
    /// the client's frames (the connection failed or ended, a message over
    /// the size limit: answered elsewhere).
    pub fn of(error: &tungstenite::Error) -> Option<Self> {
        use ProtocolError as P;
        let reason = match error {
            tungstenite::Error::Utf8(_) => {
                return Some(Self {
                    code: CloseCode::Invalid,
                    reason: "invalid UTF-8 in a text message or close reason",
                });
            }
            tungstenite::Error::Protocol(violation) => match violation {
                P::NonZeroReservedBits => "reserved bits set without an extension",
                P::UnmaskedFrameFromClient => "unmasked frame from a client",
                P::FragmentedControlFrame => "fragmented control frame",
                P::ControlFrameTooBig => "control frame over 125 bytes",
                P::UnknownControlFrameType(_)
                | P::UnknownDataFrameType(_)
                | P::InvalidOpcode(_) => "reserved opcode",
                P::UnexpectedContinueFrame => "continuation frame with nothing to continue",
                P::ExpectedFragment(_) => "new message before the last one ended",
                P::InvalidCloseSequence => "close frame of one byte",
                // The connection ended without a close frame: nobody to tell.
                P::ResetWithoutClosingHandshake => return None,
                _ => "protocol error",
            },
            _ => return None,
        };
        Some(Self {
            code: CloseCode::Protocol,
            reason,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_tungstenite::tungstenite::error::CapacityError;

    #[test]
    fn utf8_is_1007_protocol_errors_1002_the_rest_nothing() {
        let utf8 = tungstenite::Error::Utf8("bad".into());
        assert_eq!(
            Violation::of(&utf8).map(|v| v.code),
            Some(CloseCode::Invalid)
        );
        let rsv = tungstenite::Error::Protocol(ProtocolError::NonZeroReservedBits);
        assert_eq!(
            Violation::of(&rsv).map(|v| v.code),
            Some(CloseCode::Protocol)
        );
        let reset = tungstenite::Error::Protocol(ProtocolError::ResetWithoutClosingHandshake);
        assert_eq!(Violation::of(&reset), None);
        let big = tungstenite::Error::Capacity(CapacityError::MessageTooLong {
            size: 2,
            max_size: 1,
        });
        assert_eq!(Violation::of(&big), None);
        let io = tungstenite::Error::Io(std::io::ErrorKind::ConnectionReset.into());
        assert_eq!(Violation::of(&io), None);
    }
}
