//! A delayed spectator's delay line (`"delay":N`): its deliveries wait
//! here, in a task of their own, before they reach its connection.

use std::sync::Arc;

use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::outbox::Outbox;

/// A delayed spectator's deliveries, each handed to its connection `delay`
/// after it arrived, by a task of its own; at most `cap` bytes wait (past
/// that the spectator is closed: 1008).
#[derive(Debug)]
pub(super) struct DelayLine {
    tx: tokio::sync::mpsc::UnboundedSender<(tokio::time::Instant, Message)>,
    waiting: Arc<std::sync::atomic::AtomicUsize>,
    delay: std::time::Duration,
    cap: usize,
    outbox: Outbox,
}

impl DelayLine {
    pub(super) fn start(outbox: Outbox, delay: std::time::Duration, cap: usize) -> Box<Self> {
        use std::sync::atomic::Ordering;
        let (tx, mut rx) =
            tokio::sync::mpsc::unbounded_channel::<(tokio::time::Instant, Message)>();
        let waiting = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (out, left) = (outbox.clone(), waiting.clone());
        tokio::spawn(async move {
            while let Some((due, message)) = rx.recv().await {
                tokio::time::sleep_until(due).await;
                left.fetch_sub(message.len(), Ordering::Relaxed);
                out.deliver(message);
            }
        });
        Box::new(Self {
            tx,
            waiting,
            delay,
            cap,
            outbox,
        })
    }

    /// Holds `message` back for the delay; false if it cannot be.
    pub(super) fn push(&self, message: Message) -> bool {
        use std::sync::atomic::Ordering;
        let len = message.len();
        if self.waiting.fetch_add(len, Ordering::Relaxed) + len > self.cap {
            self.waiting.fetch_sub(len, Ordering::Relaxed);
            self.outbox.close(
                CloseCode::Policy,
                "too much to hold back for the delay: watch with a shorter one",
            );
            return false;
        }
        self.tx
            .send((tokio::time::Instant::now() + self.delay, message))
            .is_ok()
    }
}
