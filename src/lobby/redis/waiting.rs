//! What waits for Redis on the publisher's way, and its limits: the bytes
//! it may take ([`Claim`], per connection and per node), the deadline Redis
//! checks ([`RedisClock`]), and the log of what was dropped
//! ([`DropReport`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio_tungstenite::tungstenite::Message;

use super::scripts::now_ms;
use crate::outbox::Outbox;

/// The most bytes of one connection's game messages that may wait for Redis
/// (queued, or sent and not answered yet); past it the connection's next
/// message is refused with `unavailable`. One message always goes.
const CONNECTION_WAITING_BYTES: usize = 256 * 1024;
/// The most bytes of all of this node's game messages that may wait for
/// Redis; past it every next message is refused with `unavailable`.
const NODE_WAITING_BYTES: usize = 16 * 1024 * 1024;
/// A game message that has not reached Redis this long after the relay took
/// it is dropped, and its sender told (`unavailable`): never delivered late.
/// Checked before it is sent, and by `relay.lua` when Redis runs it (on
/// Redis's clock, which each reply of `relay.lua` tells).
pub const MAX_WAIT: Duration = Duration::from_secs(1);
/// What a waiting message costs against the bounds beyond its bytes.
const WAITING_OVERHEAD: usize = 128;

/// A game message's share of the bytes that may wait for Redis (its
/// connection's and the node's), from when the relay took it until it is
/// sent and answered, or dropped: released when the claim is dropped.
pub struct Claim {
    connection: crate::outbox::Waiting,
    node: Arc<AtomicUsize>,
    bytes: usize,
    /// When the relay took the message.
    pub since: Instant,
}

impl Claim {
    /// Claims room for `payload_len` bytes of `sender`'s message, or `None`
    /// if its connection or the node has too much waiting already.
    pub fn take(node: &Arc<AtomicUsize>, sender: &Outbox, payload_len: usize) -> Option<Claim> {
        let bytes = payload_len + WAITING_OVERHEAD;
        node.fetch_update(Ordering::AcqRel, Ordering::Acquire, |waiting| {
            (waiting == 0 || waiting + bytes <= NODE_WAITING_BYTES).then_some(waiting + bytes)
        })
        .ok()?;
        let Some(connection) = sender.reserve_waiting(bytes, CONNECTION_WAITING_BYTES) else {
            node.fetch_sub(bytes, Ordering::AcqRel);
            return None;
        };
        Some(Claim {
            connection,
            node: node.clone(),
            bytes,
            since: Instant::now(),
        })
    }

    /// Whether the message waited too long to be sent at all.
    pub fn is_stale(&self) -> bool {
        self.since.elapsed() > MAX_WAIT
    }

    /// The message was dropped on its way: its sender is told (at most once
    /// a second).
    pub fn dropped(&self) {
        self.connection.tell_dropped(|| {
            Message::text(crate::protocol::error(
                crate::protocol::ErrorCode::Unavailable,
                "the lobby store did not take some of your messages in time: they were not relayed",
            ))
        });
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.node.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

/// Redis's clock as this node sees it: the difference between Redis's
/// `TIME` and the node's clock, measured from the replies of `relay.lua`
/// that came back quickly, so that a message's deadline can be checked in
/// Redis, when Redis runs it (a message may wait in socket buffers while
/// Redis is frozen, and must not be relayed late when it thaws).
pub struct RedisClock {
    /// Redis's ms minus the node's, or `i64::MIN` while unknown.
    offset_ms: std::sync::atomic::AtomicI64,
}

/// A reply this slow says little about the clocks.
const CLOCK_SAMPLE_MAX_RTT_MS: u64 = 20;

impl RedisClock {
    pub fn new() -> Self {
        Self {
            offset_ms: std::sync::atomic::AtomicI64::new(i64::MIN),
        }
    }

    /// A reply sent at `sent_ms` and back at `back_ms` (the node's clock)
    /// said Redis's time was `redis_ms`.
    pub fn sample(&self, sent_ms: u64, back_ms: u64, redis_ms: i64) {
        if redis_ms <= 0 || back_ms.saturating_sub(sent_ms) > CLOCK_SAMPLE_MAX_RTT_MS {
            return;
        }
        let middle = (sent_ms + back_ms) / 2;
        self.offset_ms
            .store(redis_ms - middle as i64, Ordering::Relaxed);
    }

    /// The deadline on Redis's clock of a message the relay took at
    /// `since`, or 0 (none) while Redis's clock is unknown.
    pub fn deadline(&self, since: Instant) -> u64 {
        let offset = self.offset_ms.load(Ordering::Relaxed);
        if offset == i64::MIN {
            return 0;
        }
        let taken_ms = now_ms().saturating_sub(since.elapsed().as_millis() as u64);
        (taken_ms as i64 + MAX_WAIT.as_millis() as i64 + offset).max(1) as u64
    }
}

/// Game messages the publisher dropped, for a log line at most once a second
/// (the metric counts them as they go).
#[derive(Default)]
pub struct DropReport {
    /// Waited longer than [`MAX_WAIT`] before they could be sent.
    pub stale: u64,
    /// Not sent: Redis had not answered the previous batch.
    pub unsent: u64,
    /// Sent, but Redis did not answer, or ran them past their deadline.
    pub lost: u64,
    reported: Option<Instant>,
}

impl DropReport {
    pub fn log_now_and_then(&mut self) {
        let total = self.stale + self.unsent + self.lost;
        if total == 0
            || self
                .reported
                .is_some_and(|at| at.elapsed() < Duration::from_secs(1))
        {
            return;
        }
        tracing::warn!(
            waited_too_long = self.stale,
            not_sent = self.unsent,
            lost = self.lost,
            max_wait_ms = MAX_WAIT.as_millis() as u64,
            "Redis did not take game messages in time: they were dropped, and their senders told"
        );
        *self = DropReport {
            reported: Some(Instant::now()),
            ..DropReport::default()
        };
    }
}
