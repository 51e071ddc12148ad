//! The players: forming the lobbies, sending on schedule (or saturating),
//! receiving and checking every message, and the run's phases.
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
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes, http::Uri};

use crate::RunArgs;
use crate::cpu::{self, Sample, Watched};
use crate::schedule::{Due, Plan, run_timer};
use crate::stats::{self, Generator, Joins, Messages, Percentiles, Process, SeqTracker, Summary};

type Ws = WebSocketStream<TcpStream>;
type Sink = SplitSink<Ws, Message>;
type Stream = SplitStream<Ws>;

/// Examples of unexpected frames and disconnects kept for the report.
const EXAMPLES: usize = 5;

/// A relay address: the URL for the handshake, the socket address to dial.
#[derive(Debug, Clone)]
pub struct Target {
    url: String,
    addr: SocketAddr,
}

/// Checks a `ws://` URL and resolves its host once.
pub fn resolve(url: &str) -> Result<Target, String> {
    let uri: Uri = url.parse().map_err(|e| format!("{url}: {e}"))?;
    if uri.scheme_str() != Some("ws") {
        return Err(format!("{url}: only ws:// URLs are supported"));
    }
    let host = uri.host().ok_or_else(|| format!("{url}: no host"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let addr = crate::resolve_host(host, uri.port_u16().unwrap_or(80))?;
    Ok(Target {
        url: url.to_owned(),
        addr,
    })
}

fn ws_config(idle: bool) -> WebSocketConfig {
    // tungstenite zero-fills the whole free part of its read buffer before
    // every read (even one that finds nothing), so a large buffer costs a
    // large memset per message at game rates: 8 KiB holds a saturation
    // window of small messages; 4 KiB for thousands of idle connections.
    WebSocketConfig::default().read_buffer_size(if idle { 4096 } else { 8 * 1024 })
}

async fn connect(target: &Target, idle: bool) -> Result<Ws, String> {
    let tcp = TcpStream::connect(target.addr)
        .await
        .map_err(|e| format!("connect {}: {e}", target.addr))?;
    tcp.set_nodelay(true)
        .map_err(|e| format!("set TCP_NODELAY: {e}"))?;
    let (ws, _) = tokio_tungstenite::client_async_with_config(
        target.url.as_str(),
        tcp,
        Some(ws_config(idle)),
    )
    .await
    .map_err(|e| format!("handshake with {}: {e}", target.url))?;
    Ok(ws)
}

/// Connects, joins and waits for `ready`.
async fn join_player(
    target: &Target,
    passphrase: &str,
    idle: bool,
    resume: bool,
) -> Result<Ws, String> {
    let mut ws = connect(target, idle).await?;
    let join = format!(r#"{{"type":"join","passphrase":"{passphrase}","resume":{resume}}}"#);
    ws.send(Message::text(join))
        .await
        .map_err(|e| format!("send join: {e}"))?;
    let mut joined = false;
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(text))) => {
                let kind = control_type(&text);
                match kind.as_deref() {
                    Some("joined") => joined = true,
                    Some("ready") if joined => return Ok(ws),
                    Some("ready") => return Err("`ready` before `joined`".into()),
                    Some("error") => return Err(format!("join refused: {text}")),
                    _ => {}
                }
            }
            Some(Ok(Message::Close(frame))) => {
                return Err(format!("closed by the relay while joining: {frame:?}"));
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(format!("while joining: {e}")),
            None => return Err("connection ended while joining".into()),
        }
    }
}

/// The `type` of a relay message (while joining; not on the hot path).
fn control_type(text: &str) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Typed {
        #[serde(rename = "type")]
        kind: String,
    }
    serde_json::from_str::<Typed>(text).ok().map(|t| t.kind)
}

/// Both players of a lobby, joined and ready, and how long it took.
struct Formed {
    a: Ws,
    b: Ws,
    took: Duration,
}

async fn form_lobby(
    a: &Target,
    b: &Target,
    passphrase: String,
    idle: bool,
    resume: bool,
    timeout: Duration,
) -> Result<Formed, String> {
    let started = Instant::now();
    let both = async {
        let (pa, pb) = tokio::join!(
            join_player(a, &passphrase, idle, resume),
            join_player(b, &passphrase, idle, resume)
        );
        Ok::<_, String>((
            pa.map_err(|e| format!("player A: {e}"))?,
            pb.map_err(|e| format!("player B: {e}"))?,
        ))
    };
    let (a, b) = tokio::time::timeout(timeout, both)
        .await
        .map_err(|_| format!("not formed within {timeout:?}"))??;
    Ok(Formed {
        a,
        b,
        took: started.elapsed(),
    })
}

/// One player (one connection) during the run.
struct Player {
    /// 0: player A (on URL A), 1: player B.
    side: usize,
    /// The other player of the lobby.
    peer: usize,
    /// Messages sent (fed to the socket) so far; the next sequence number.
    sent: Cell<u64>,
    /// Messages of this player its peer has received.
    acked: Cell<u64>,
    /// Scheduled send times (ns) due and not yet sent (rate mode).
    due: RefCell<VecDeque<u64>>,
    /// Wakes the sender: messages are due, the window opened, or the end.
    wake: Notify,
    /// The sender waits for the window to open (saturation).
    waiting: Cell<bool>,
    /// What this player received from its peer.
    from_peer: RefCell<SeqTracker>,
}

/// Measurements shared by every task (one thread: a `RefCell`).
struct Live {
    latency: Histogram<u64>,
    /// Latency since the last progress line.
    recent: Histogram<u64>,
    lag: Histogram<u64>,
    delivered_total: u64,
    delivered_measured: u64,
    sent: [u64; 2],
    misrouted: u64,
    unexpected: u64,
    unexpected_examples: Vec<String>,
    disconnects: u64,
    disconnect_examples: Vec<String>,
}

struct Shared {
    /// The time base of every `t`.
    epoch: Instant,
    players: Vec<Player>,
    saturate: bool,
    window: u64,
    size: usize,
    /// The measured interval, ns since `epoch` (set when sending starts).
    m0: Cell<u64>,
    m1: Cell<u64>,
    /// Senders stop; disconnects from now on are expected.
    stopping: Cell<bool>,
    closing: Cell<bool>,
    live: RefCell<Live>,
}

impl Shared {
    fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    fn in_measured(&self, ns: u64) -> bool {
        ns >= self.m0.get() && ns < self.m1.get()
    }

    fn disconnect(&self, player: usize, why: String) {
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

    fn unexpected(&self, player: usize, what: &str) {
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
    fn on_text(&self, me: usize, text: &str) {
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
    fn game_message(&self, me: usize, n: u64, t: u64) -> Message {
        let mut m = String::with_capacity(self.size.max(64));
        let _ = write!(m, r#"{{"type":"b","s":{me},"n":{n},"t":{t},"p":""#);
        let pad = self.size.saturating_sub(m.len() + 2);
        m.extend(std::iter::repeat_n('x', pad));
        m.push_str("\"}");
        Message::Text(Utf8Bytes::from(m))
    }
}

/// Sender, sequence number and scheduled time of one of our game messages.
fn parse_game(text: &str) -> Option<(usize, u64, u64)> {
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

async fn receive(shared: Rc<Shared>, me: usize, mut stream: Stream) {
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
async fn send_scheduled(shared: Rc<Shared>, me: usize, mut sink: Sink) -> Sink {
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
            let n = player.sent.get();
            stats::record(
                &mut shared.live.borrow_mut().lag,
                now.saturating_sub(t) / 1000,
            );
            if let Err(e) = sink.feed(shared.game_message(me, n, t)).await {
                shared.disconnect(me, format!("send: {e}"));
                return sink;
            }
            player.sent.set(n + 1);
            shared.live.borrow_mut().sent[player.side] += 1;
        }
        if let Err(e) = sink.flush().await {
            shared.disconnect(me, format!("send: {e}"));
            return sink;
        }
    }
}

/// Saturation: keeps up to `window` messages in flight, sending what the
/// window allows in one batch.
async fn send_saturated(shared: Rc<Shared>, me: usize, mut sink: Sink) -> Sink {
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
            let n = player.sent.get();
            if let Err(e) = sink.feed(shared.game_message(me, n, now)).await {
                shared.disconnect(me, format!("send: {e}"));
                return sink;
            }
            player.sent.set(n + 1);
            shared.live.borrow_mut().sent[player.side] += 1;
        }
        if let Err(e) = sink.flush().await {
            shared.disconnect(me, format!("send: {e}"));
            return sink;
        }
    }
}

/// Rate mode, on the runtime thread: passes what the timer thread made due
/// to the players' senders, until the end of the measured interval.
async fn schedule(shared: Rc<Shared>, plan: Plan) {
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
async fn progress(shared: Rc<Shared>, formed: Rc<Cell<usize>>, lobbies: usize, quiet: bool) {
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

fn random_prefix() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    h.write_u32(std::process::id());
    format!("bench-{:012x}", h.finish() & 0xffff_ffff_ffff)
}

fn sample_all(watched: &[Watched]) -> Vec<Option<Sample>> {
    watched.iter().map(|w| cpu::sample(w.pid)).collect()
}

/// A whole run: form, (warm up, measure, drain), report.
pub async fn run(args: RunArgs) -> Result<Summary, String> {
    let target_a = resolve(&args.url_a)?;
    let target_b = resolve(args.url_b())?;
    let watched = args.pids.clone();
    let before = sample_all(&watched);
    let own_before = cpu::own_cpu_seconds();
    let prefix = args.passphrase_prefix.clone().unwrap_or_else(random_prefix);
    let idle = args.idle;
    let mode = if idle {
        "idle"
    } else if args.saturate {
        "saturate"
    } else {
        "rate"
    };
    if !args.quiet {
        eprintln!(
            "[bench] {mode}: {} lobbies, A on {}, B on {}, passphrases {prefix}-N",
            args.lobbies, args.url_a, target_b.url
        );
    }

    // --- Forming the lobbies.
    let epoch = Instant::now();
    let shared_placeholder = Rc::new(Shared {
        epoch,
        players: Vec::new(),
        saturate: false,
        window: 0,
        size: 0,
        m0: Cell::new(0),
        m1: Cell::new(0),
        stopping: Cell::new(false),
        closing: Cell::new(false),
        live: RefCell::new(new_live()),
    });
    let formed_count = Rc::new(Cell::new(0usize));
    let forming_progress = tokio::task::spawn_local(progress(
        shared_placeholder.clone(),
        formed_count.clone(),
        args.lobbies,
        args.quiet,
    ));
    let mut join_hist = stats::histogram();
    let mut join_errors = Vec::new();
    let mut failed = 0;
    let mut formed = Vec::with_capacity(args.lobbies);
    {
        let (a, b, timeout) = (&target_a, &target_b, args.join_timeout);
        let mut attempts = futures_util::stream::iter(0..args.lobbies)
            .map(|i| form_lobby(a, b, format!("{prefix}-{i}"), idle, args.resume, timeout))
            .buffer_unordered(args.join_concurrency);
        while let Some(result) = attempts.next().await {
            match result {
                Ok(lobby) => {
                    stats::record(&mut join_hist, lobby.took.as_micros() as u64);
                    formed.push(lobby);
                    formed_count.set(formed.len());
                }
                Err(e) => {
                    failed += 1;
                    if join_errors.len() < EXAMPLES {
                        join_errors.push(e);
                    }
                }
            }
        }
    }
    let forming_wall = epoch.elapsed();
    let formed_at = sample_all(&watched);
    let own_formed = cpu::own_cpu_seconds();
    forming_progress.abort();
    let joins = Joins {
        formed: formed.len(),
        failed,
        wall_s: forming_wall.as_secs_f64(),
        lobbies_per_s: formed.len() as f64 / forming_wall.as_secs_f64().max(1e-9),
        join_to_ready_ms: Percentiles::of(&join_hist, 1000.0),
        errors: join_errors,
        generator_cpu_s: own_formed - own_before,
        processes_cpu_s: before
            .iter()
            .zip(&formed_at)
            .map(|(b, f)| match (b, f) {
                (Some(b), Some(f)) => f.cpu_s - b.cpu_s,
                _ => 0.0,
            })
            .collect(),
    };

    // --- The players.
    let mut streams = Vec::with_capacity(formed.len() * 2);
    let mut sinks = Vec::with_capacity(formed.len() * 2);
    let mut players = Vec::with_capacity(formed.len() * 2);
    for (j, lobby) in formed.into_iter().enumerate() {
        for (side, ws) in [(0, lobby.a), (1, lobby.b)] {
            let (sink, stream) = ws.split();
            sinks.push(sink);
            streams.push(stream);
            players.push(Player {
                side,
                peer: 2 * j + (1 - side),
                sent: Cell::new(0),
                acked: Cell::new(0),
                due: RefCell::new(VecDeque::new()),
                wake: Notify::new(),
                waiting: Cell::new(false),
                from_peer: RefCell::new(SeqTracker::default()),
            });
        }
    }
    let connections = players.len();
    let shared = Rc::new(Shared {
        epoch,
        players,
        saturate: args.saturate,
        window: args.window as u64,
        size: args.size,
        m0: Cell::new(0),
        m1: Cell::new(0),
        stopping: Cell::new(false),
        closing: Cell::new(false),
        live: RefCell::new(new_live()),
    });
    let receivers: Vec<_> = streams
        .into_iter()
        .enumerate()
        .map(|(me, stream)| tokio::task::spawn_local(receive(shared.clone(), me, stream)))
        .collect();

    // --- The schedule of the run.
    let s0 = shared.now_ns() + 20_000_000;
    let (m0, m1) = if idle {
        (s0, s0 + args.duration.as_nanos() as u64)
    } else {
        let m0 = s0 + args.warmup.as_nanos() as u64;
        (m0, m0 + args.duration.as_nanos() as u64)
    };
    shared.m0.set(m0);
    shared.m1.set(m1);
    let progress_task = tokio::task::spawn_local(progress(
        shared.clone(),
        formed_count.clone(),
        args.lobbies,
        args.quiet,
    ));

    let mut senders = Vec::new();
    let mut scheduler = None;
    if !idle && connections > 0 {
        for (me, sink) in sinks.drain(..).enumerate() {
            let task = if args.saturate {
                tokio::task::spawn_local(send_saturated(shared.clone(), me, sink))
            } else {
                tokio::task::spawn_local(send_scheduled(shared.clone(), me, sink))
            };
            senders.push(task);
        }
        if !args.saturate {
            let plan = Plan {
                s0,
                end: m1,
                rate: args.rate,
                tick: args.tick.as_nanos() as u64,
                players: connections,
            };
            scheduler = Some(tokio::task::spawn_local(schedule(shared.clone(), plan)));
        }
    }
    let sleep_to = |ns: u64| tokio::time::sleep_until((epoch + Duration::from_nanos(ns)).into());

    // Saturation senders start at once (the warm-up is theirs too).
    if args.saturate {
        for p in &shared.players {
            p.wake.notify_one();
        }
    }
    sleep_to(m0).await;
    let start = sample_all(&watched);
    let own_start = cpu::own_cpu_seconds();
    sleep_to(m1).await;
    let end = sample_all(&watched);
    let own_end = cpu::own_cpu_seconds();
    let measured_s = (m1 - m0) as f64 / 1e9;

    // --- Stop sending and drain.
    if let Some(scheduler) = scheduler {
        let _ = scheduler.await;
    }
    shared.stopping.set(true);
    for p in &shared.players {
        p.wake.notify_one();
    }
    for task in senders {
        if let Ok(sink) = task.await {
            sinks.push(sink);
        }
    }
    let drain_until = Instant::now() + args.drain;
    while !idle && Instant::now() < drain_until {
        let all_in = shared.players.iter().all(|p| p.acked.get() >= p.sent.get());
        if all_in {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    progress_task.abort();

    // --- Close every connection (best effort, bounded).
    shared.closing.set(true);
    let close_all = futures_util::future::join_all(sinks.iter_mut().map(|sink| async move {
        let _ = sink.send(Message::Close(None)).await;
    }));
    let _ = tokio::time::timeout(Duration::from_secs(3), close_all).await;
    for r in receivers {
        r.abort();
    }

    // --- The summary.
    let live = shared.live.borrow();
    let mut messages = Messages {
        sent: live.sent,
        misrouted: live.misrouted,
        unexpected: live.unexpected,
        unexpected_examples: live.unexpected_examples.clone(),
        disconnects: live.disconnects,
        disconnect_examples: live.disconnect_examples.clone(),
        ..Default::default()
    };
    for p in &shared.players {
        let t = p.from_peer.borrow();
        let sender_side = 1 - p.side;
        messages.received[sender_side] += t.distinct;
        messages.duplicates += t.duplicates;
        messages.reordered += t.reordered;
    }
    for side in 0..2 {
        messages.lost[side] = messages.sent[side].saturating_sub(messages.received[side]);
    }
    let per_s = |x: f64| {
        if measured_s > 0.0 {
            x / measured_s
        } else {
            0.0
        }
    };
    let delivered_per_s = per_s(live.delivered_measured as f64);
    let own_cpu = own_end - own_start;
    let processes = watched
        .iter()
        .enumerate()
        .map(|(i, w)| {
            let (b, s, e) = (before[i], start[i], end[i]);
            let gone = e.is_none();
            let cpu_s = match (s, e) {
                (Some(s), Some(e)) => e.cpu_s - s.cpu_s,
                _ => 0.0,
            };
            Process {
                name: w.name.clone(),
                pid: w.pid,
                cpu_s,
                cpu_share: per_s(cpu_s),
                cpu_us_per_msg: (live.delivered_measured > 0)
                    .then(|| cpu_s * 1e6 / live.delivered_measured as f64),
                rss_before_kib: b.map(|x| x.rss_kib).unwrap_or(0),
                rss_start_kib: s.map(|x| x.rss_kib).unwrap_or(0),
                rss_end_kib: e.map(|x| x.rss_kib).unwrap_or(0),
                peak_rss_kib: e.map(|x| x.hwm_kib).unwrap_or(0),
                rss_delta_kib: match (b, e) {
                    (Some(b), Some(e)) => e.rss_kib as i64 - b.rss_kib as i64,
                    _ => 0,
                },
                gone,
            }
        })
        .collect();

    let mut problems = Vec::new();
    if joins.failed > 0 {
        problems.push(format!(
            "{} of {} lobbies did not form (first: {})",
            joins.failed,
            args.lobbies,
            joins.errors.first().map(String::as_str).unwrap_or("?")
        ));
    }
    if messages.disconnects > 0 {
        problems.push(format!(
            "{} connections ended early (first: {})",
            messages.disconnects,
            messages
                .disconnect_examples
                .first()
                .map(String::as_str)
                .unwrap_or("?")
        ));
    }
    if !idle {
        let lost = messages.lost[0] + messages.lost[1];
        if lost > 0 {
            problems.push(format!(
                "{lost} messages lost (A→B {}, B→A {}) after a drain of up to {:?}",
                messages.lost[0], messages.lost[1], args.drain
            ));
        }
        if messages.duplicates > 0 {
            problems.push(format!("{} duplicated messages", messages.duplicates));
        }
        if messages.reordered > 0 {
            problems.push(format!("{} messages out of order", messages.reordered));
        }
        if messages.misrouted > 0 {
            problems.push(format!(
                "{} messages reached a player of another lobby",
                messages.misrouted
            ));
        }
        if connections > 0 && messages.sent[0] + messages.sent[1] == 0 {
            problems.push("no message was sent".into());
        }
    }
    if messages.unexpected > 0 {
        problems.push(format!(
            "{} unexpected frames (first: {})",
            messages.unexpected,
            messages
                .unexpected_examples
                .first()
                .map(String::as_str)
                .unwrap_or("?")
        ));
    }
    if joins.formed == 0 {
        problems.push("no lobby formed".into());
    }

    Ok(Summary {
        label: args.label.clone(),
        mode,
        url_a: args.url_a.clone(),
        url_b: args.url_b().to_owned(),
        lobbies_requested: args.lobbies,
        connections,
        rate_per_player: (mode == "rate").then_some(args.rate),
        offered_per_s: (mode == "rate").then_some(args.rate * connections as f64),
        window: (mode == "saturate").then_some(args.window),
        size_bytes: args.size,
        warmup_s: if idle { 0.0 } else { args.warmup.as_secs_f64() },
        duration_s: args.duration.as_secs_f64(),
        tick_us: (mode == "rate").then_some(args.tick.as_secs_f64() * 1e6),
        joins,
        measured_s,
        delivered_per_s,
        latency_ms: Percentiles::of(&live.latency, 1000.0),
        sender_lag_ms: Percentiles::of(&live.lag, 1000.0),
        generator: Generator {
            cpu_s: own_cpu,
            cpu_share: per_s(own_cpu),
        },
        processes,
        ok: problems.is_empty(),
        problems,
        messages,
    })
}

fn new_live() -> Live {
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
        assert_eq!(
            control_type(r#"{"type": "joined", "players":1,"capacity":2,"seat":1}"#).as_deref(),
            Some("joined")
        );
    }

    #[test]
    fn urls() {
        assert!(resolve("ws://127.0.0.1:8765/").is_ok());
        assert!(resolve("http://127.0.0.1:8765/").is_err());
    }
}
