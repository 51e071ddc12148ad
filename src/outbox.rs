//! A connection's outbound side: a bounded queue of frames, and the writer
//! that drains it into the socket in batches (in the connection's task,
//! beside the session that reads: see `server.rs`).
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

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::task::AtomicWaker;
use futures_util::{Sink, SinkExt};
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self, Message};

/// How many queued frames the writer feeds to the socket before one flush.
const WRITE_BATCH: usize = 64;
/// How long a close frame may take to go out before the socket is dropped;
/// also how long the writer may go on once every [`Outbox`] is gone (the
/// session has ended): a client that reads nothing would otherwise hold its
/// connection for ever.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// What a queued frame costs against the limit: its payload plus the
/// bookkeeping around it, so that a flood of empty frames is bounded too.
fn cost(message: &Message) -> usize {
    message.len() + 64
}

/// The sending end of a connection's queue. Cheap to clone.
#[derive(Debug)]
pub struct Outbox {
    shared: Arc<Shared>,
}

/// The queue itself: a `VecDeque` under a mutex and a [`Notify`] for the
/// writer. Tokio's mpsc channel allocates a block of 32 slots (1.8 KiB here)
/// as soon as it is created; an empty `VecDeque` allocates nothing, so an idle
/// connection's queue costs only this struct.
#[derive(Debug)]
struct Shared {
    queue: Mutex<Queue>,
    /// Most bytes that may wait for this client.
    limit: usize,
    /// The [`Outbox`]es alive (the session's, the lobby's); the writer ends
    /// once they are all gone and the queue is empty.
    senders: AtomicUsize,
    /// Wakes the writer: a frame was queued, or the last sender went.
    wake_writer: Notify,
    /// Woken when the last sender goes, for a writer stuck in a write
    /// ([`Abandoned`]).
    senders_gone: AtomicWaker,
    /// Set (once) by [`Outbox::abort`]; `abort_signal` wakes whoever waits
    /// for it (the session and the writer).
    aborted: AtomicBool,
    abort_signal: Notify,
    /// The close frame of an abort: used when the client is too slow for the
    /// queue to carry the close frame, or when the connection must stop at
    /// once.
    frame: OnceLock<CloseFrame>,
    /// A last message sent just before the close frame of an abort (e.g. the
    /// error that explains it).
    last_word: OnceLock<Message>,
    /// Bytes of this client's game messages that wait for the lobby store
    /// (Redis mode): see [`Outbox::reserve_waiting`].
    waiting: AtomicUsize,
    /// When this client was last told that messages of its were dropped
    /// (ms since the Unix epoch), so that it is told at most once a second.
    told_dropped_ms: AtomicU64,
}

#[derive(Debug, Default)]
struct Queue {
    frames: VecDeque<Message>,
    /// Bytes queued and not yet taken by the writer.
    bytes: usize,
    /// The writer has ended: nothing is queued any more.
    closed: bool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn is_aborted(&self) -> bool {
        self.aborted.load(Ordering::Acquire)
    }

    /// Resolves once the connection was aborted.
    async fn aborted(&self) {
        // A `Notified` created before `notify_waiters` is woken by it even
        // if it was not polled yet: no abort is missed between the check and
        // the wait.
        let signal = self.abort_signal.notified();
        if self.is_aborted() {
            return;
        }
        signal.await;
    }
}

/// Resolves [`CLOSE_TIMEOUT`] after the last [`Outbox`] is gone: the session
/// has ended and the lobby let go, so nothing but what is queued (its close
/// frame last) will ever be written. A struct rather than an `async fn`: it
/// is in every writer's state, so it is kept small (an `async fn` waiting on
/// a `Notify` made every connection's future 168 bytes larger), and the
/// timer it needs only at the end is boxed.
struct Abandoned<'a> {
    shared: &'a Shared,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Future for Abandoned<'_> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.timer.is_none() {
            // Registered before the check: a last drop racing it wakes us.
            self.shared.senders_gone.register(cx.waker());
            if self.shared.senders.load(Ordering::Acquire) != 0 {
                return Poll::Pending;
            }
        }
        self.timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(CLOSE_TIMEOUT)))
            .as_mut()
            .poll(cx)
    }
}

/// The receiving end, consumed by [`run_writer`].
#[derive(Debug)]
pub struct Inbox {
    shared: Arc<Shared>,
}

/// Creates a connection's queue, holding at most `limit` bytes.
pub fn channel(limit: usize) -> (Outbox, Inbox) {
    let shared = Arc::new(Shared {
        queue: Mutex::default(),
        limit,
        senders: AtomicUsize::new(1),
        wake_writer: Notify::new(),
        senders_gone: AtomicWaker::new(),
        aborted: AtomicBool::new(false),
        abort_signal: Notify::new(),
        frame: OnceLock::new(),
        last_word: OnceLock::new(),
        waiting: AtomicUsize::new(0),
        told_dropped_ms: AtomicU64::new(0),
    });
    (
        Outbox {
            shared: shared.clone(),
        },
        Inbox { shared },
    )
}

impl Clone for Outbox {
    fn clone(&self) -> Self {
        self.shared.senders.fetch_add(1, Ordering::Relaxed);
        Self {
            shared: self.shared.clone(),
        }
    }
}

impl Drop for Outbox {
    fn drop(&mut self) {
        if self.shared.senders.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.shared.wake_writer.notify_one();
            self.shared.senders_gone.wake();
        }
    }
}

impl Outbox {
    /// Queues a frame. Never waits: if the bytes waiting for this client
    /// would pass the limit, the client is too slow and is disconnected
    /// (1008). Returns whether the frame was queued.
    pub fn deliver(&self, message: Message) -> bool {
        let cost = cost(&message);
        let mut queue = self.shared.lock();
        if queue.closed {
            return false;
        }
        if queue.bytes + cost > self.shared.limit {
            let queued = queue.bytes;
            drop(queue);
            if !self.is_aborted() {
                crate::metrics::get().slow_clients.increment(1);
                tracing::info!(
                    event = "slow_client",
                    queued_bytes = queued,
                    "outbound queue full, disconnecting"
                );
            }
            self.abort(CloseCode::Policy, "too slow: outbound queue full");
            return false;
        }
        queue.bytes += cost;
        queue.frames.push_back(message);
        drop(queue);
        self.shared.wake_writer.notify_one();
        true
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
        let mut queue = self.shared.lock();
        if queue.closed {
            return;
        }
        queue.bytes += cost(&frame);
        queue.frames.push_back(frame);
        drop(queue);
        self.shared.wake_writer.notify_one();
    }

    /// Closes the connection now, skipping whatever is still queued.
    pub fn abort(&self, code: CloseCode, reason: &'static str) {
        let _ = self.shared.frame.set(CloseFrame {
            code,
            reason: reason.into(),
        });
        self.shared.aborted.store(true, Ordering::Release);
        self.shared.abort_signal.notify_waiters();
    }

    /// Like [`Outbox::abort`], but sends `last_word` (say, an error that
    /// explains why) just before the close frame.
    pub fn abort_with(&self, last_word: Message, code: CloseCode, reason: &'static str) {
        let _ = self.shared.last_word.set(last_word);
        self.abort(code, reason);
    }

    /// Resolves once [`Outbox::abort`] was called.
    pub async fn aborted(&self) {
        self.shared.aborted().await;
    }

    /// Whether [`Outbox::abort`] was called.
    pub fn is_aborted(&self) -> bool {
        self.shared.is_aborted()
    }

    /// Counts `bytes` of a game message of this client as waiting for the
    /// lobby store, unless that would make more than `limit` bytes waiting
    /// (one message is always let through, however large).
    /// The bytes count until the [`Waiting`] returned is dropped (the
    /// message was sent to the store, or dropped). It does not keep the
    /// connection open.
    pub fn reserve_waiting(&self, bytes: usize, limit: usize) -> Option<Waiting> {
        self.shared
            .waiting
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |waiting| {
                (waiting == 0 || waiting + bytes <= limit).then_some(waiting + bytes)
            })
            .ok()?;
        Some(Waiting {
            shared: Arc::downgrade(&self.shared),
            bytes,
        })
    }

    /// Takes what is queued, as the writer would (tests read what a
    /// connection was sent without a socket).
    #[cfg(test)]
    pub(crate) fn take_queued(&self) -> Vec<Message> {
        let mut queue = self.shared.lock();
        queue.bytes = 0;
        std::mem::take(&mut queue.frames).into()
    }
}

/// A game message of one client on its way to the lobby store: its bytes
/// count against the client's bound until this is dropped
/// ([`Outbox::reserve_waiting`]).
#[derive(Debug)]
pub struct Waiting {
    shared: Weak<Shared>,
    bytes: usize,
}

impl Waiting {
    /// The message was dropped on its way (the store did not take it in
    /// time): tells the client with `explain()`'s frame, at most once a
    /// second, if it is still connected.
    pub fn tell_dropped(&self, explain: impl FnOnce() -> Message) {
        let Some(shared) = self.shared.upgrade() else {
            return;
        };
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or_default();
        let last = shared.told_dropped_ms.load(Ordering::Relaxed);
        if now.saturating_sub(last) < 1000
            || shared
                .told_dropped_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        if shared.is_aborted() {
            return;
        }
        // Through a temporary sender: this handle does not keep the
        // connection open, but while it is open it may queue a frame.
        shared.senders.fetch_add(1, Ordering::Relaxed);
        let outbox = Outbox { shared };
        outbox.send(explain());
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        if let Some(shared) = self.shared.upgrade() {
            shared.waiting.fetch_sub(self.bytes, Ordering::AcqRel);
        }
    }
}

/// What the writer finds in the queue.
enum Taken {
    Batch(VecDeque<Message>),
    Nothing,
    /// Nothing, and every sender is gone.
    End,
}

impl Inbox {
    /// Takes up to [`WRITE_BATCH`] frames. When everything queued fits in
    /// one batch, the queue's storage itself is taken (and freed after the
    /// write), so that an idle connection keeps no buffer.
    fn take(&self) -> Taken {
        let mut queue = self.shared.lock();
        if queue.frames.is_empty() {
            // Read under the lock: a sender still alive may yet queue.
            if self.shared.senders.load(Ordering::Acquire) == 0 {
                return Taken::End;
            }
            return Taken::Nothing;
        }
        let batch = if queue.frames.len() <= WRITE_BATCH {
            std::mem::take(&mut queue.frames)
        } else {
            queue.frames.drain(..WRITE_BATCH).collect()
        };
        let taken: usize = batch.iter().map(cost).sum();
        queue.bytes -= taken;
        Taken::Batch(batch)
    }
}

impl Drop for Inbox {
    fn drop(&mut self) {
        // The writer has ended: whatever is still queued will never be sent.
        let mut queue = self.shared.lock();
        queue.closed = true;
        queue.bytes = 0;
        let frames = std::mem::take(&mut queue.frames);
        drop(queue);
        drop(frames);
    }
}

/// Drains a connection's queue into its socket until every [`Outbox`] is gone
/// and the queue is empty, a close frame was sent, the connection was
/// aborted, or the socket fails; gives the sink back, for the close that
/// follows (`closing::linger`). Once every [`Outbox`] is gone, a write that
/// does not finish within `CLOSE_TIMEOUT` (1 s) is given up.
///
/// Frames are fed in batches (up to 64) and flushed once per
/// batch: one system call for many small game messages.
pub async fn run_writer<S>(mut sink: S, inbox: Inbox) -> S
where
    S: Sink<Message, Error = tungstenite::Error> + Unpin,
{
    let shared = inbox.shared.clone();
    'writing: loop {
        let mut batch = loop {
            if shared.is_aborted() {
                break 'writing;
            }
            match inbox.take() {
                Taken::Batch(batch) => break batch,
                Taken::Nothing => {}
                Taken::End => {
                    // Every sender is gone: the session ended without a
                    // close frame of its own. Close normally.
                    close(&mut sink).await;
                    return sink;
                }
            }
            tokio::select! {
                biased;
                _ = shared.aborted() => break 'writing,
                _ = shared.wake_writer.notified() => {}
            }
        };
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
            _ = shared.aborted() => break,
            outcome = write => outcome,
            () = Abandoned { shared: &shared, timer: None } => {
                tracing::debug!("the client reads nothing: giving up writing to it");
                return sink;
            }
        };
        match outcome {
            Ok(false) => {}
            Ok(true) => {
                // Flushes the close frame; the client's answer is read (and
                // the socket closed) by `closing::linger`.
                close(&mut sink).await;
                return sink;
            }
            Err(e) => {
                tracing::debug!(error = %e, "write failed");
                return sink;
            }
        }
    }
    // Aborted: send the close frame if the socket takes it in time.
    if let Some(frame) = shared.frame.get().cloned() {
        let last_word = shared.last_word.get().cloned();
        let _ = Box::pin(tokio::time::timeout(CLOSE_TIMEOUT, async {
            if let Some(message) = last_word {
                sink.feed(message).await?;
            }
            sink.send(Message::Close(Some(frame))).await?;
            sink.close().await
        }))
        .await;
    }
    sink
}

/// Closes the socket, waiting at most [`CLOSE_TIMEOUT`]. The closing paths
/// are boxed: they run once, and their timer and futures would otherwise
/// take room in every connection's writer state, idle or not.
async fn close<S>(sink: &mut S)
where
    S: Sink<Message, Error = tungstenite::Error> + Unpin,
{
    let _ = Box::pin(tokio::time::timeout(CLOSE_TIMEOUT, sink.close())).await;
}

#[cfg(test)]
mod tests;
