//! The players during a run: receiving and checking every message,
//! sending on schedule (or saturating), the schedule itself, and the
//! progress lines.
//!
//! Everything runs on one current-thread runtime (a `LocalSet`): shared
//! state is `Rc`/`Cell`/`RefCell`, with no locks and no atomics on the path
//! of a message.
//!
//! A game message is a text frame
//! `{"type":"b","s":SENDER,"n":SEQ,"t":SCHEDULED_NS,"p":"xxx…"}` padded to
//! `--size`; `t` is the *scheduled* send time in ns since the run started,
//! so a generator or relay that stalls shows in the latency instead of
//! delaying the measurements (no coordinated omission).

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::fmt::Write as _;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

use crate::join::Ws;
use crate::schedule::{Due, Plan, run_timer};
use crate::stats::{self, SeqTracker};

pub type Sink = SplitSink<Ws, Message>;
pub type Stream = SplitStream<Ws>;

/// Examples of unexpected frames and disconnects kept for the report.
pub const EXAMPLES: usize = 5;

/// One player (one connection) during the run.
pub struct Player {
    /// 0: player A (on URL A), 1: player B.
    pub side: usize,
    /// The other player of the lobby.
    pub peer: usize,
    /// Messages sent (fed to the socket) so far; the next sequence number.
    pub sent: Cell<u64>,
    /// Messages of this player its peer has received.
    pub acked: Cell<u64>,
    /// Scheduled send times (ns) due and not yet sent (rate mode).
    pub due: RefCell<VecDeque<u64>>,
    /// Wakes the sender: messages are due, the window opened, or the end.
    pub wake: Notify,
    /// The sender waits for the window to open (saturation).
    pub waiting: Cell<bool>,
    /// What this player received from its peer.
    pub from_peer: RefCell<SeqTracker>,
}

/// Measurements shared by every task (one thread: a `RefCell`).
pub struct Live {
    pub latency: Histogram<u64>,
    /// Latency since the last progress line.
    pub recent: Histogram<u64>,
    pub lag: Histogram<u64>,
    pub delivered_total: u64,
    pub delivered_measured: u64,
    pub sent: [u64; 2],
    pub misrouted: u64,
    pub unexpected: u64,
    pub unexpected_examples: Vec<String>,
    pub disconnects: u64,
    pub disconnect_examples: Vec<String>,
}

pub struct Shared {
    /// The time base of every `t`.
    pub epoch: Instant,
    pub players: Vec<Player>,
    pub saturate: bool,
    pub window: u64,
    pub size: usize,
    /// The measured interval, ns since `epoch` (set when sending starts).
    pub m0: Cell<u64>,
    pub m1: Cell<u64>,
    /// Senders stop; disconnects from now on are expected.
    pub stopping: Cell<bool>,
    pub closing: Cell<bool>,
    pub live: RefCell<Live>,
}

impl Shared {
    pub fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    pub fn in_measured(&self, ns: u64) -> bool {
        ns >= self.m0.get() && ns < self.m1.get()
    }

    pub fn disconnect(&self, player: usize, why: String) {
        if self.closing.get() {
            return;
        }
        let mut live = self.live.borrow_mut();
        live.disconnects += 1;
        if live.disconnect_examples.len() < EXAMPLES {
            live.disconnect_examples
                .push(format!("player {player}: {why}"));
        }
    }

    pub fn unexpected(&self, player: usize, what: &str) {
        if self.closing.get() {
            return; // `playerLeft` as the others close, say.
        }
        let mut live = self.live.borrow_mut();
        live.unexpected += 1;
        if live.unexpected_examples.len() < EXAMPLES {
            let what: String = what.chars().take(200).collect();
            live.unexpected_examples
                .push(format!("player {player} got: {what}"));
        }
    }

    /// A frame arrived for `me`.
    pub fn on_text(&self, me: usize, text: &str) {
        let Some((s, n, t)) = parse_game(text) else {
            return self.unexpected(me, text);
        };
        let now = self.now_ns();
        let receiver = &self.players[me];
        if s != receiver.peer {
            self.live.borrow_mut().misrouted += 1;
            return;
        }
        receiver.from_peer.borrow_mut().observe(n);
        let sender = &self.players[s];
        sender.acked.set(sender.acked.get() + 1);
        if self.saturate
            && sender.waiting.get()
            && sender.sent.get() - sender.acked.get() <= self.window / 2
        {
            sender.waiting.set(false);
            sender.wake.notify_one();
        }
        let us = now.saturating_sub(t) / 1000;
        let mut live = self.live.borrow_mut();
        live.delivered_total += 1;
        stats::record(&mut live.recent, us);
        if self.in_measured(t) {
            stats::record(&mut live.latency, us);
        }
        if self.in_measured(now) {
            live.delivered_measured += 1;
        }
    }

    /// Writes one game message of `me` into a new frame.
    pub fn game_message(&self, me: usize, n: u64, t: u64) -> Message {
        let mut m = String::with_capacity(self.size.max(64));
        let _ = write!(m, r#"{{"type":"b","s":{me},"n":{n},"t":{t},"p":""#);
        let pad = self.size.saturating_sub(m.len() + 2);
        m.extend(std::iter::repeat_n('x', pad));
        m.push_str("\"}");
        Message::Text(Utf8Bytes::from(m))
    }
}

/// Sender, sequence number and scheduled time of one of our game messages.
pub fn parse_game(text: &str) -> Option<(usize, u64, u64)> {
    fn number(s: &str) -> Option<(u64, &str)> {
        let end = s
            .bytes()
            .position(|b| !b.is_ascii_digit())
            .unwrap_or(s.len());
        if end == 0 || end > 19 {
            return None;
        }
        Some((s[..end].parse().ok()?, &s[end..]))
    }
    let rest = text.strip_prefix(r#"{"type":"b","s":"#)?;
    let (s, rest) = number(rest)?;
    let (n, rest) = number(rest.strip_prefix(r#","n":"#)?)?;
    let (t, _) = number(rest.strip_prefix(r#","t":"#)?)?;
    Some((s as usize, n, t))
}

pub async fn receive(shared: Rc<Shared>, me: usize, mut stream: Stream) {
    while let Some(item) = stream.next().await {
        match item {
            Ok(Message::Text(text)) => shared.on_text(me, &text),
            Ok(Message::Binary(_)) => shared.unexpected(me, "a binary frame"),
            Ok(Message::Close(frame)) => {
                shared.disconnect(me, format!("closed by the relay: {frame:?}"));
                return;
            }
            Ok(_) => {}
            Err(e) => {
                shared.disconnect(me, format!("read: {e}"));
                return;
            }
        }
    }
    shared.disconnect(me, "connection ended".into());
}

/// Rate mode: sends what the scheduler made due, all of it in one batch
/// (fed, then flushed once).
pub async fn send_scheduled(shared: Rc<Shared>, me: usize, mut sink: Sink) -> Sink {
    let player = &shared.players[me];
    let mut batch = VecDeque::new();
    loop {
        player.wake.notified().await;
        std::mem::swap(&mut batch, &mut *player.due.borrow_mut());
        if batch.is_empty() {
            if shared.stopping.get() {
                return sink;
            }
            continue;
        }
        let now = shared.now_ns();
        for t in batch.drain(..) {
            stats::record(
                &mut shared.live.borrow_mut().lag,
                now.saturating_sub(t) / 1000,
            );
            if !feed_next(&shared, me, &mut sink, t).await {
                return sink;
            }
        }
        if !flush(&shared, me, &mut sink).await {
            return sink;
        }
    }
}

/// Saturation: keeps up to `window` messages in flight, sending what the
/// window allows in one batch.
pub async fn send_saturated(shared: Rc<Shared>, me: usize, mut sink: Sink) -> Sink {
    let player = &shared.players[me];
    loop {
        let now = shared.now_ns();
        if shared.stopping.get() || now >= shared.m1.get() {
            return sink;
        }
        let in_flight = player.sent.get() - player.acked.get();
        if in_flight >= shared.window {
            player.waiting.set(true);
            player.wake.notified().await;
            continue;
        }
        for _ in in_flight..shared.window {
            if !feed_next(&shared, me, &mut sink, now).await {
                return sink;
            }
        }
        if !flush(&shared, me, &mut sink).await {
            return sink;
        }
    }
}

/// Feeds player `me`'s next game message (sent at `t`) into its sink and
/// counts it sent; false if the send failed (the player is disconnected).
async fn feed_next(shared: &Shared, me: usize, sink: &mut Sink, t: u64) -> bool {
    let player = &shared.players[me];
    let n = player.sent.get();
    if let Err(e) = sink.feed(shared.game_message(me, n, t)).await {
        shared.disconnect(me, format!("send: {e}"));
        return false;
    }
    player.sent.set(n + 1);
    shared.live.borrow_mut().sent[player.side] += 1;
    true
}

/// Flushes player `me`'s sink; false if that failed (the player is
/// disconnected).
async fn flush(shared: &Shared, me: usize, sink: &mut Sink) -> bool {
    if let Err(e) = sink.flush().await {
        shared.disconnect(me, format!("send: {e}"));
        return false;
    }
    true
}

/// Rate mode, on the runtime thread: passes what the timer thread made due
/// to the players' senders, until the end of the measured interval.
pub async fn schedule(shared: Rc<Shared>, plan: Plan) {
    let due = Arc::new(Due::default());
    let timer_due = due.clone();
    let epoch = shared.epoch;
    let timer = std::thread::Builder::new()
        .name("bench-timer".into())
        .spawn(move || run_timer(epoch, plan, timer_due))
        .expect("start the timer thread");
    let mut batch = Vec::new();
    loop {
        due.fired.notified().await;
        // Read `finished` before taking the batch: a batch handed over
        // before the flag is then never left behind.
        let finished = due.finished.load(std::sync::atomic::Ordering::Acquire);
        std::mem::swap(&mut batch, &mut *due.ready.lock().expect("due lock"));
        for (i, t) in batch.drain(..) {
            let player = &shared.players[i];
            player.due.borrow_mut().push_back(t);
            player.wake.notify_one();
        }
        if finished {
            break;
        }
    }
    let _ = timer.join();
}

/// One progress line a second on stderr.
pub async fn progress(shared: Rc<Shared>, formed: Rc<Cell<usize>>, lobbies: usize, quiet: bool) {
    if quiet {
        return;
    }
    let mut every = tokio::time::interval(Duration::from_secs(1));
    every.tick().await;
    let mut last = 0;
    loop {
        every.tick().await;
        let now = shared.now_ns();
        let mut live = shared.live.borrow_mut();
        let delivered = live.delivered_total - last;
        last = live.delivered_total;
        let phase = if shared.m1.get() == 0 {
            eprintln!(
                "[bench] {:5.1}s forming lobbies: {}/{}",
                now as f64 / 1e9,
                formed.get(),
                lobbies
            );
            continue;
        } else if now < shared.m0.get() {
            "warm-up"
        } else if now < shared.m1.get() {
            "measuring"
        } else {
            "draining"
        };
        let recent_p99 = live.recent.value_at_quantile(0.99) as f64 / 1000.0;
        let p99 = live.latency.value_at_quantile(0.99) as f64 / 1000.0;
        let lag = live.lag.max() as f64 / 1000.0;
        eprintln!(
            "[bench] {:5.1}s {phase:<9} delivered/s {delivered:>7}  p99 {recent_p99:.3} ms (last 1 s), {p99:.3} ms (measured so far)  sender lag max {lag:.3} ms  disconnects {}",
            now as f64 / 1e9,
            live.disconnects
        );
        live.recent.reset();
    }
}

pub fn new_live() -> Live {
    Live {
        latency: stats::histogram(),
        recent: stats::histogram(),
        lag: stats::histogram(),
        delivered_total: 0,
        delivered_measured: 0,
        sent: [0; 2],
        misrouted: 0,
        unexpected: 0,
        unexpected_examples: Vec::new(),
        disconnects: 0,
        disconnect_examples: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn game_messages_round_trip_at_the_requested_size() {
        let shared = Shared {
            epoch: Instant::now(),
            players: Vec::new(),
            saturate: false,
            window: 0,
            size: 64,
            m0: Cell::new(0),
            m1: Cell::new(0),
            stopping: Cell::new(false),
            closing: Cell::new(false),
            live: RefCell::new(new_live()),
        };
        let Message::Text(text) = shared.game_message(17, 42, 123_456_789) else {
            panic!("a text frame");
        };
        assert_eq!(text.len(), 64);
        assert_eq!(parse_game(&text), Some((17, 42, 123_456_789)));
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["type"], "b");
    }

    #[test]
    fn relay_messages_are_not_game_messages() {
        assert_eq!(
            parse_game(r#"{"type":"playerLeft","players":1,"seat":2}"#),
            None
        );
    }
}
