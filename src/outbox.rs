//! A connection's outbound side: a bounded queue of frames, and the writer
//! task that drains it into the socket in batches.
//!
//! Everything that wants to reach a client goes through its [`Outbox`]: the
//! session's own answers (pong, errors) and the lobby's events and relayed
//! messages. The queue is bounded in bytes, so memory per connection is
//! bounded: when a client stops reading and the bytes waiting for it pass the
//! limit, the relay disconnects it (close 1008, "too slow") instead of
//! buffering without limit, and delivery to everybody else never waits on it.
//!
//! The limit is in bytes, not frames, so that a burst of many small messages
//! (a game catching up, a benchmark) is never mistaken for a slow reader,
//! while a reader that really stops is found as soon as it holds the limit.

use std::sync::atomic::{AtomicUsize, Ordering};
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

/// What a queued frame costs against the limit: its payload plus the
/// bookkeeping around it, so that a flood of empty frames is bounded too.
fn cost(message: &Message) -> usize {
    message.len() + 64
}

/// The sending end of a connection's queue. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Outbox {
    tx: mpsc::UnboundedSender<Message>,
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    /// Bytes queued and not yet taken by the writer.
    queued: AtomicUsize,
    /// Most bytes that may wait for this client.
    limit: usize,
    /// An out-of-band close: used when the client is too slow for the queue
    /// to carry the close frame, or when the connection must stop at once.
    token: CancellationToken,
    frame: OnceLock<CloseFrame>,
    /// A last message sent just before the close frame of an abort (e.g. the
    /// error that explains it).
    last_word: OnceLock<Message>,
}

/// The receiving end, consumed by [`run_writer`].
#[derive(Debug)]
pub struct Inbox {
    rx: mpsc::UnboundedReceiver<Message>,
    shared: Arc<Shared>,
}

/// Creates a connection's queue, holding at most `limit` bytes.
pub fn channel(limit: usize) -> (Outbox, Inbox) {
    let (tx, rx) = mpsc::unbounded_channel();
    let shared = Arc::new(Shared {
        queued: AtomicUsize::new(0),
        limit,
        token: CancellationToken::new(),
        frame: OnceLock::new(),
        last_word: OnceLock::new(),
    });
    (
        Outbox {
            tx,
            shared: shared.clone(),
        },
        Inbox { rx, shared },
    )
}

impl Outbox {
    /// Queues a frame. Never waits: if the bytes waiting for this client
    /// would pass the limit, the client is too slow and is disconnected
    /// (1008). Returns whether the frame was queued.
    pub fn deliver(&self, message: Message) -> bool {
        let cost = cost(&message);
        let queued = self.shared.queued.fetch_add(cost, Ordering::Relaxed) + cost;
        if queued > self.shared.limit {
            self.shared.queued.fetch_sub(cost, Ordering::Relaxed);
            if !self.shared.token.is_cancelled() {
                crate::metrics::get().slow_clients.increment(1);
                tracing::info!(
                    event = "slow_client",
                    queued_bytes = queued - cost,
                    "outbound queue full, disconnecting"
                );
            }
            self.abort(CloseCode::Policy, "too slow: outbound queue full");
            return false;
        }
        self.tx.send(message).is_ok()
    }

    /// Queues the connection's own answer (pong, error); see [`Outbox::deliver`].
    pub fn send(&self, message: Message) {
        self.deliver(message);
    }

    /// Sends a close frame after everything already queued, then ends. The
    /// close frame is queued whatever the limit.
    pub fn close(&self, code: CloseCode, reason: &'static str) {
        let frame = Message::Close(Some(CloseFrame {
            code,
            reason: reason.into(),
        }));
        self.shared
            .queued
            .fetch_add(cost(&frame), Ordering::Relaxed);
        let _ = self.tx.send(frame);
    }

    /// Closes the connection now, skipping whatever is still queued.
    pub fn abort(&self, code: CloseCode, reason: &'static str) {
        let _ = self.shared.frame.set(CloseFrame {
            code,
            reason: reason.into(),
        });
        self.shared.token.cancel();
    }

    /// Like [`Outbox::abort`], but sends `last_word` (say, an error that
    /// explains why) just before the close frame.
    pub fn abort_with(&self, last_word: Message, code: CloseCode, reason: &'static str) {
        let _ = self.shared.last_word.set(last_word);
        self.abort(code, reason);
    }

    /// Resolves once [`Outbox::abort`] was called.
    pub async fn aborted(&self) {
        self.shared.token.cancelled().await;
    }

    /// Whether [`Outbox::abort`] was called.
    pub fn is_aborted(&self) -> bool {
        self.shared.token.is_cancelled()
    }
}

/// Drains a connection's queue into its socket until the queue is closed, a
/// close frame was sent, the connection was aborted, or the socket fails.
///
/// Frames are fed in batches (up to 64) and flushed once per
/// batch: one system call for many small game messages.
pub async fn run_writer<S>(mut sink: S, mut inbox: Inbox)
where
    S: Sink<Message, Error = tungstenite::Error> + Unpin,
{
    // Grows to the largest batch this connection has seen: an idle
    // connection holds no room for 64 frames it never gets.
    let mut batch = Vec::new();
    let token = inbox.shared.token.clone();
    loop {
        let received = tokio::select! {
            biased;
            _ = token.cancelled() => break,
            n = inbox.rx.recv_many(&mut batch, WRITE_BATCH) => n,
        };
        let taken: usize = batch.iter().map(cost).sum();
        inbox.shared.queued.fetch_sub(taken, Ordering::Relaxed);
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
    if let Some(frame) = inbox.shared.frame.get().cloned() {
        let last_word = inbox.shared.last_word.get().cloned();
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
            if let Some(message) = last_word {
                sink.feed(message).await?;
            }
            sink.send(Message::Close(Some(frame))).await?;
            sink.close().await
        })
        .await;
    }
}
