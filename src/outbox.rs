//! A connection's outbound side: a bounded queue of frames, and the writer
//! task that drains it into the socket in batches.
//!
//! Everything that wants to reach a client goes through its [`Outbox`]: the
//! session's own answers (pong, errors) and the lobby's events and relayed
//! messages. The queue is bounded, so memory per connection is bounded: when
//! a client stops reading and its queue fills up, the relay disconnects it
//! (close 1008, "too slow") instead of buffering without limit, and delivery
//! to everybody else never waits on it.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures_util::{Sink, SinkExt};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_util::sync::CancellationToken;

/// How many queued frames the writer feeds to the socket before one flush.
const WRITE_BATCH: usize = 64;
/// How long a close frame may take to go out before the socket is dropped.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// The sending end of a connection's queue. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Outbox {
    tx: mpsc::Sender<Message>,
    abort: Arc<Abort>,
}

/// An out-of-band close: used when the queue itself cannot carry the close
/// frame (it is full) or when the connection must stop at once.
#[derive(Debug, Default)]
struct Abort {
    token: CancellationToken,
    frame: OnceLock<CloseFrame>,
}

/// The receiving end, consumed by [`run_writer`].
#[derive(Debug)]
pub struct Inbox {
    rx: mpsc::Receiver<Message>,
    abort: Arc<Abort>,
}

/// Creates a connection's queue, holding at most `capacity` frames.
pub fn channel(capacity: usize) -> (Outbox, Inbox) {
    let (tx, rx) = mpsc::channel(capacity);
    let abort = Arc::new(Abort::default());
    (
        Outbox {
            tx,
            abort: abort.clone(),
        },
        Inbox { rx, abort },
    )
}

impl Outbox {
    /// Queues a frame from another connection's path (lobby events, relayed
    /// messages). Never waits: if the queue is full the client is too slow,
    /// and it is disconnected. Returns whether the frame was queued.
    pub fn deliver(&self, message: Message) -> bool {
        match self.tx.try_send(message) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                if !self.abort.token.is_cancelled() {
                    tracing::info!(event = "slow_client", "outbound queue full, disconnecting");
                }
                self.abort(CloseCode::Policy, "too slow: outbound queue full");
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    /// Queues a frame from the connection's own task, waiting for room: a
    /// client that does not read its answers slows down its own reading.
    pub async fn send(&self, message: Message) {
        tokio::select! {
            _ = self.tx.send(message) => {}
            _ = self.abort.token.cancelled() => {}
        }
    }

    /// Sends a close frame after everything already queued, then ends.
    pub async fn close(&self, code: CloseCode, reason: &'static str) {
        self.send(Message::Close(Some(CloseFrame {
            code,
            reason: reason.into(),
        })))
        .await;
    }

    /// Closes the connection now, skipping whatever is still queued.
    pub fn abort(&self, code: CloseCode, reason: &'static str) {
        let _ = self.abort.frame.set(CloseFrame {
            code,
            reason: reason.into(),
        });
        self.abort.token.cancel();
    }

    /// Resolves once [`Outbox::abort`] was called.
    pub async fn aborted(&self) {
        self.abort.token.cancelled().await;
    }

    /// Whether [`Outbox::abort`] was called.
    pub fn is_aborted(&self) -> bool {
        self.abort.token.is_cancelled()
    }
}

/// Drains a connection's queue into its socket until the queue is closed, a
/// close frame was sent, the connection was aborted, or the socket fails.
///
/// Frames are fed in batches of up to [`WRITE_BATCH`] and flushed once per
/// batch: one system call for many small game messages.
pub async fn run_writer<S>(mut sink: S, mut inbox: Inbox)
where
    S: Sink<Message, Error = tungstenite::Error> + Unpin,
{
    let mut batch = Vec::with_capacity(WRITE_BATCH);
    let token = inbox.abort.token.clone();
    loop {
        let received = tokio::select! {
            biased;
            _ = token.cancelled() => break,
            n = inbox.rx.recv_many(&mut batch, WRITE_BATCH) => n,
        };
        if received == 0 {
            // Every sender is gone: the session ended without a close frame
            // of its own. Close normally.
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, sink.close()).await;
            return;
        }
        let write = async {
            let mut closing = false;
            for message in batch.drain(..) {
                closing = matches!(message, Message::Close(_));
                sink.feed(message).await?;
                if closing {
                    break;
                }
            }
            sink.flush().await?;
            Ok::<bool, tungstenite::Error>(closing)
        };
        let outcome = tokio::select! {
            biased;
            _ = token.cancelled() => break,
            outcome = write => outcome,
        };
        match outcome {
            Ok(false) => {}
            Ok(true) => {
                // Let the peer answer our close; the reader sees its reply.
                let _ = tokio::time::timeout(CLOSE_TIMEOUT, sink.close()).await;
                return;
            }
            Err(e) => {
                tracing::debug!(error = %e, "write failed");
                return;
            }
        }
    }
    // Aborted: send the close frame if the socket takes it in time.
    if let Some(frame) = inbox.abort.frame.get().cloned() {
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
            sink.send(Message::Close(Some(frame))).await?;
            sink.close().await
        })
        .await;
    }
}
