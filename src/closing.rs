//! How the node ends a WebSocket: the close code that tells a client which
//! rule of RFC 6455 its frames broke.

use tokio_tungstenite::tungstenite::error::ProtocolError;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self};

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
