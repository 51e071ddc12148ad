//! The chaos run: pairs of players play through a relay cluster while their
//! connections are cut at random, and every game message is checked to
//! arrive exactly once and in order.
//!
//! Each of the 2 x `--pairs` clients connects through a TCP forwarder of its
//! own, in this process, to `--url` (the load balancer), so that the driver
//! can cut that client's connection from outside: both sockets of the
//! forwarded connection are closed at once, as a network failure would, and
//! new connections through that forwarder are refused for a random outage.
//! Every pair has a lobby of its own (a random passphrase); both players
//! send numbered game messages `{"type":"move","n":k,"from":player}` at
//! `--rate` Hz for `--seconds`, while cuts come at random (a Poisson process
//! over the players holding a connection) until at least `--min-cuts` have
//! cut a live connection. Then the players stop sending, the run waits until
//! every player has what its peer sent (at most `--settle` seconds), the
//! players leave, and each receiver's sequence is checked.
//!
//! `scripts/chaos.sh` runs it against a local cluster (three nodes behind
//! HAProxy) and kills a node with SIGKILL meanwhile; it tells this program
//! when through `--events-file` (lines `kill EPOCH_MS NAME` and
//! `ready EPOCH_MS NAME`), read at the end to attribute what went wrong to
//! the kill or not. See `docs/chaos.md`.
//!
//! ```text
//! cargo run --release -p lobby-relay-client --example chaos -- --url ws://127.0.0.1:8765/
//! ```

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::Parser;
use lobby_relay_client::{Client, Event, GameMessage, Options};
use serde_json::json;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio::time::Instant;

/// Chaos run: pairs of lobby-relay clients play while their connections are
/// cut at random; checks that every game message arrives exactly once and in
/// order.
///
/// Exit status: 0 every message arrived once and in order (no duplicate, no
/// reordering, no gap, no seat lost); 1 the promise was broken (the report
/// says where); 2 usage; 3 the run was not what was asked (the pairs could
/// not all join, fewer cuts than --min-cuts, the target unreachable).
#[derive(Parser, Debug)]
#[command(name = "chaos", verbatim_doc_comment)]
struct Args {
    /// The relay's WebSocket URL: the load balancer of a cluster. Every
    /// client connects to it through a forwarder of its own.
    #[arg(long, default_value = "ws://127.0.0.1:8765/")]
    url: String,
    /// Pairs of players, each pair in a lobby of its own.
    #[arg(long, default_value_t = 20)]
    pairs: usize,
    /// How long the players send game messages, in seconds.
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// Game messages per second each player sends (the relay's default
    /// --message-rate is 120/s with a burst of 240; resends after a resume
    /// come on top).
    #[arg(long, default_value_t = 25)]
    rate: u32,
    /// Fewer cuts of live connections than this makes the run invalid (exit
    /// 3). Cuts come as a Poisson process with 1.5 x this many expected
    /// over --seconds; a cut that finds the chosen player without a
    /// connection is not counted and another player is chosen.
    #[arg(long, default_value_t = 100)]
    min_cuts: u32,
    /// After a cut, new connections through that player's forwarder are
    /// refused for a random time up to this many milliseconds (0: it may
    /// reconnect at once).
    #[arg(long, default_value_t = 500)]
    max_outage_ms: u64,
    /// After the players stop sending, wait at most this many seconds for
    /// every receiver to have all its peer sent.
    #[arg(long, default_value_t = 20)]
    settle: u64,
    /// Seconds for all pairs to join and be ready before the run gives up.
    #[arg(long, default_value_t = 60)]
    join_timeout: u64,
    /// Give each player its own source address on the loopback
    /// (127.1.x.y, Linux), so that the relay's per-address limits (joins
    /// and resumes per minute) count each player alone, as for real
    /// players. Off: all players share 127.0.0.1 and the relay's
    /// --join-rate must allow every join and resume of the run.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "true|false")]
    distinct_addresses: bool,
    /// A file of events from outside, read at the end: lines
    /// `kill EPOCH_MS NAME` (a node was killed) and `ready EPOCH_MS NAME`
    /// (it was back). A gap whose missing message was sent between 2 s
    /// before a kill and --kill-window seconds after it is reported as in
    /// the kill's window (and still fails the run: docs/protocol.md
    /// promises that a killed node loses nothing).
    #[arg(long)]
    events_file: Option<PathBuf>,
    /// Seconds after a kill that count as its window (see --events-file):
    /// the relay's default --node-timeout is 3 s, its peers declare it dead
    /// within about 4 s.
    #[arg(long, default_value_t = 6)]
    kill_window: u64,
    /// Also write the figures as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Print each player's events on standard error.
    #[arg(long)]
    verbose: bool,
}

fn epoch_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

// -----------------------------------------------------------------------------
// The forwarder: one per player, so that its connection can be cut.
// -----------------------------------------------------------------------------

struct Forwarder {
    port: u16,
    state: Arc<ForwarderState>,
}

struct ForwarderState {
    /// The forwarded connections' tasks; aborting one closes both sockets.
    links: Mutex<Vec<tokio::task::AbortHandle>>,
    /// New connections are refused (closed at once) until then.
    refuse_until: Mutex<Option<Instant>>,
}

impl Forwarder {
    async fn start(target: SocketAddr, source: Option<IpAddr>) -> std::io::Result<Self> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let port = listener.local_addr()?.port();
        let state = Arc::new(ForwarderState {
            links: Mutex::new(Vec::new()),
            refuse_until: Mutex::new(None),
        });
        let shared = Arc::clone(&state);
        tokio::spawn(async move {
            loop {
                let Ok((inbound, _)) = listener.accept().await else {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                let refused = {
                    let until = shared
                        .refuse_until
                        .lock()
                        .unwrap_or_else(|e| e.into_inner());
                    until.is_some_and(|until| Instant::now() < until)
                };
                if refused {
                    drop(inbound);
                    continue;
                }
                let link = tokio::spawn(async move {
                    let Ok(mut outbound) = connect_from(target, source).await else {
                        return;
                    };
                    let mut inbound = inbound;
                    let _ = inbound.set_nodelay(true);
                    let _ = outbound.set_nodelay(true);
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                });
                let mut links = shared.links.lock().unwrap_or_else(|e| e.into_inner());
                links.retain(|l| !l.is_finished());
                links.push(link.abort_handle());
            }
        });
        Ok(Self { port, state })
    }

    /// Closes every forwarded connection now and refuses new ones for
    /// `outage`; returns how many live connections it cut.
    fn cut(&self, outage: Duration) -> usize {
        *self
            .state
            .refuse_until
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(Instant::now() + outage);
        let links =
            std::mem::take(&mut *self.state.links.lock().unwrap_or_else(|e| e.into_inner()));
        let mut cut = 0;
        for link in links {
            if !link.is_finished() {
                link.abort();
                cut += 1;
            }
        }
        cut
    }

    /// Whether a forwarded connection is open.
    fn live(&self) -> bool {
        self.state
            .links
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .any(|l| !l.is_finished())
    }
}

async fn connect_from(target: SocketAddr, source: Option<IpAddr>) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    if let Some(source) = source {
        // Not every system routes all of 127.0.0.0/8 to the loopback: then
        // the connection comes from 127.0.0.1.
        let _ = socket.bind(SocketAddr::new(source, 0));
    }
    socket.connect(target).await
}

// -----------------------------------------------------------------------------
// The players
// -----------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Joining,
    Playing,
    Stopped,
    Closing,
}

/// What a player saw, for the report.
#[derive(Default)]
struct PlayerReport {
    /// Game messages accepted by the client (numbered 1..=sent).
    sent: u64,
    /// When message n was sent (epoch ms), at index n-1.
    send_times: Vec<u64>,
    /// Sends the client refused (queue full, or no lobby any more after a
    /// seat loss): not numbered.
    refused_sends: u64,
    /// The n of each game message from the peer, in arrival order.
    received: Vec<u64>,
    /// Game messages not from the peer, or not ours.
    foreign: u64,
    joins: u64,
    resumes: u64,
    resent: u64,
    replayed: u64,
    /// Drops (Reconnecting with attempt 1: the first after a drop) and their
    /// times (epoch ms).
    drop_times: Vec<u64>,
    reconnect_attempts: u64,
    /// The close code of each drop (the connection's end as the client saw
    /// it: 1006 without a close frame).
    drop_codes: BTreeMap<String, u64>,
    /// From a drop (its time, epoch ms) to the seat back, ms.
    resume_ms: Vec<(u64, u64)>,
    seat_losses: u64,
    errors: BTreeMap<String, u64>,
    player_away: u64,
    player_back: u64,
    /// Closed by something else than our close().
    closed_unexpectedly: Option<String>,
}

/// What the driver watches while the players play.
#[derive(Default)]
struct Progress {
    ready: AtomicBool,
    /// Highest n received from the peer.
    last_received: AtomicU64,
    sent: AtomicU64,
}

struct Shared {
    phase: watch::Receiver<Phase>,
    ready_count: AtomicUsize,
    rate: u32,
    verbose: bool,
}

async fn player(
    id: usize,
    peer: usize,
    url: String,
    passphrase: String,
    shared: Arc<Shared>,
    progress: Arc<Vec<Progress>>,
) -> PlayerReport {
    let mut report = PlayerReport::default();
    let mut client = match Client::connect(&url, Options::default()) {
        Ok(client) => client,
        Err(e) => {
            report.closed_unexpectedly = Some(format!("cannot start: {e}"));
            return report;
        }
    };
    client.join(&passphrase);
    let mut phase_rx = shared.phase.clone();
    let mut phase = *phase_rx.borrow();
    let period = Duration::from_secs_f64(1.0 / f64::from(shared.rate.max(1)));
    // A random phase, so that the players do not all send in the same
    // instant.
    let first = Instant::now() + period.mul_f64(rand::random::<f64>());
    let mut tick = tokio::time::interval_at(first, period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut dropped_at: Option<(Instant, u64)> = None;
    let mut closing_deadline: Option<Instant> = None;
    loop {
        let sending = phase == Phase::Playing;
        tokio::select! {
            event = client.next_event() => {
                let Some(event) = event else { break };
                if shared.verbose {
                    eprintln!("player {id}: {event:?}");
                }
                match event {
                    Event::Joined { players, .. } => {
                        report.joins += 1;
                        if players >= 2 { mark_ready(&shared, &progress[id]); }
                    }
                    Event::Ready { .. } => mark_ready(&shared, &progress[id]),
                    Event::Resumed { replayed, resent, .. } => {
                        report.resumes += 1;
                        report.replayed += replayed;
                        report.resent += resent as u64;
                        if let Some((at, epoch)) = dropped_at.take() {
                            report.resume_ms.push((epoch, at.elapsed().as_millis() as u64));
                        }
                    }
                    Event::Reconnecting { attempt, code, .. } => {
                        report.reconnect_attempts += 1;
                        if attempt == 1 {
                            let code = code.map_or_else(|| "none".to_owned(), |c| c.to_string());
                            *report.drop_codes.entry(code).or_default() += 1;
                            report.drop_times.push(epoch_ms());
                            dropped_at.get_or_insert_with(|| (Instant::now(), epoch_ms()));
                        }
                    }
                    Event::SeatLost { .. } => report.seat_losses += 1,
                    Event::Error(error) => *report.errors.entry(error.code).or_default() += 1,
                    Event::PlayerAway { .. } => report.player_away += 1,
                    Event::PlayerBack { .. } => report.player_back += 1,
                    Event::Message(GameMessage::Json { value, .. }) => {
                        let n = value.get("n").and_then(|n| n.as_u64());
                        let from = value.get("from").and_then(|f| f.as_u64());
                        match (n, from) {
                            (Some(n), Some(from)) if from == peer as u64 => {
                                report.received.push(n);
                                progress[id].last_received.fetch_max(n, Ordering::Relaxed);
                            }
                            _ => report.foreign += 1,
                        }
                    }
                    Event::Message(GameMessage::Binary(_)) => report.foreign += 1,
                    Event::Closed { reason, code, by_client } => {
                        if !by_client {
                            report.closed_unexpectedly = Some(format!("{code:?} {reason}"));
                        }
                        break;
                    }
                    _ => {}
                }
            }
            _ = tick.tick(), if sending => {
                let n = report.sent + 1;
                let message = json!({"type": "move", "n": n, "from": id});
                match client.send_json(&message) {
                    Ok(()) => {
                        report.sent = n;
                        report.send_times.push(epoch_ms());
                        progress[id].sent.store(n, Ordering::Relaxed);
                    }
                    Err(_) => report.refused_sends += 1,
                }
            }
            changed = phase_rx.changed() => {
                if changed.is_err() { break; }
                phase = *phase_rx.borrow_and_update();
                if phase == Phase::Closing {
                    client.close();
                    closing_deadline = Some(Instant::now() + Duration::from_secs(5));
                }
            }
            () = sleep_until(closing_deadline), if closing_deadline.is_some() => break,
        }
    }
    report
}

fn mark_ready(shared: &Shared, progress: &Progress) {
    if !progress.ready.swap(true, Ordering::Relaxed) {
        shared.ready_count.fetch_add(1, Ordering::Relaxed);
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

// -----------------------------------------------------------------------------
// The check
// -----------------------------------------------------------------------------

#[derive(Default)]
struct Check {
    duplicates: u64,
    out_of_order: u64,
    /// Numbers never sent by the peer.
    unknown: u64,
    /// (sender, n) never received.
    missing: Vec<(usize, u64)>,
}

/// Checks what `receiver` got from `sender`: strictly increasing, no
/// duplicate, nothing missing of 1..=sent.
fn check(receiver: &PlayerReport, sender_id: usize, sender: &PlayerReport, out: &mut Check) {
    let mut seen = vec![false; sender.sent as usize + 1];
    let mut last = 0u64;
    for &n in &receiver.received {
        if n == 0 || n > sender.sent {
            out.unknown += 1;
            continue;
        }
        if seen[n as usize] {
            out.duplicates += 1;
            continue;
        }
        seen[n as usize] = true;
        if n < last {
            out.out_of_order += 1;
        }
        last = last.max(n);
    }
    for n in 1..=sender.sent {
        if !seen[n as usize] {
            out.missing.push((sender_id, n));
        }
    }
}

struct Kill {
    name: String,
    at: u64,
    ready: Option<u64>,
}

fn read_kills(path: &PathBuf) -> Vec<Kill> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Vec::new();
    };
    let mut kills: Vec<Kill> = Vec::new();
    for line in text.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (Some(&what), Some(at), Some(&name)) = (
            fields.first(),
            fields.get(1).and_then(|t| t.parse::<u64>().ok()),
            fields.get(2),
        ) else {
            continue;
        };
        match what {
            "kill" => kills.push(Kill {
                name: name.into(),
                at,
                ready: None,
            }),
            "ready" => {
                if let Some(kill) = kills
                    .iter_mut()
                    .rev()
                    .find(|k| k.name == name && k.ready.is_none())
                {
                    kill.ready = Some(at);
                }
            }
            _ => {}
        }
    }
    kills
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

// -----------------------------------------------------------------------------
// The driver
// -----------------------------------------------------------------------------

const EXIT_BROKEN: u8 = 1;
const EXIT_INVALID: u8 = 3;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    match run(args).await {
        Ok(code) => std::process::ExitCode::from(code),
        Err(e) => {
            eprintln!("chaos: {e}");
            std::process::ExitCode::from(EXIT_INVALID)
        }
    }
}

/// ws://host:port/path -> (host:port, path)
fn split_url(url: &str) -> Result<(String, String), String> {
    let rest = url
        .strip_prefix("ws://")
        .ok_or_else(|| format!("{url}: only ws:// URLs (the forwarders speak plain TCP)"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let authority = if authority.contains(':') {
        authority.to_owned()
    } else {
        format!("{authority}:80")
    };
    Ok((authority, path.to_owned()))
}

async fn run(args: Args) -> Result<u8, String> {
    if args.pairs == 0 || args.seconds == 0 || args.rate == 0 {
        return Err("--pairs, --seconds and --rate must be at least 1".into());
    }
    let (authority, path) = split_url(&args.url)?;
    let target = tokio::net::lookup_host(&authority)
        .await
        .map_err(|e| format!("cannot resolve {authority}: {e}"))?
        .find(|a| a.is_ipv4())
        .ok_or_else(|| format!("no IPv4 address for {authority}"))?;
    TcpStream::connect(target)
        .await
        .map_err(|e| format!("nothing answers at {target} ({}): {e}", args.url))?;

    let players = args.pairs * 2;
    let run_id: u32 = rand::random();
    let (phase_tx, phase_rx) = watch::channel(Phase::Joining);
    let shared = Arc::new(Shared {
        phase: phase_rx,
        ready_count: AtomicUsize::new(0),
        rate: args.rate,
        verbose: args.verbose,
    });
    let progress: Arc<Vec<Progress>> =
        Arc::new((0..players).map(|_| Progress::default()).collect());
    let mut forwarders = Vec::with_capacity(players);
    let mut tasks = Vec::with_capacity(players);
    for id in 0..players {
        let source = args.distinct_addresses.then(|| {
            IpAddr::V4(Ipv4Addr::new(
                127,
                1,
                (id / 250) as u8,
                (id % 250 + 1) as u8,
            ))
        });
        let forwarder = Forwarder::start(target, source)
            .await
            .map_err(|e| format!("cannot start a forwarder: {e}"))?;
        let url = format!("ws://127.0.0.1:{}{}", forwarder.port, path);
        let pair = id / 2;
        let peer = id ^ 1;
        forwarders.push(forwarder);
        tasks.push((id, peer, url, pair));
    }
    // One passphrase per pair.
    let passphrases: Vec<String> = (0..args.pairs)
        .map(|pair| format!("chaos-{run_id:08x}-{:08x}-{pair}", rand::random::<u32>()))
        .collect();
    let mut handles = Vec::with_capacity(players);
    for (id, peer, url, pair) in tasks {
        handles.push(tokio::spawn(player(
            id,
            peer,
            url,
            passphrases[pair].clone(),
            Arc::clone(&shared),
            Arc::clone(&progress),
        )));
    }

    // Everyone seated, every lobby full.
    let join_deadline = Instant::now() + Duration::from_secs(args.join_timeout);
    let join_started = Instant::now();
    while shared.ready_count.load(Ordering::Relaxed) < players {
        if Instant::now() >= join_deadline {
            let ready = shared.ready_count.load(Ordering::Relaxed);
            let _ = phase_tx.send(Phase::Closing);
            for handle in handles {
                let _ = handle.await;
            }
            return Err(format!(
                "only {ready} of {players} players were in a full lobby after {} s",
                args.join_timeout
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let join_ms = join_started.elapsed().as_millis() as u64;
    eprintln!(
        "chaos: {players} players in {} lobbies after {join_ms} ms; playing for {} s",
        args.pairs, args.seconds
    );

    // Play, and cut.
    let started_ms = epoch_ms();
    let _ = phase_tx.send(Phase::Playing);
    let play_end = Instant::now() + Duration::from_secs(args.seconds);
    let cuts_per_second = f64::from(args.min_cuts) * 1.5 / args.seconds as f64;
    let mut cuts = 0u64;
    let mut cut_tries = 0u64;
    let mut cut_times: Vec<Vec<u64>> = vec![Vec::new(); players];
    let mut next_report = Instant::now() + Duration::from_secs(10);
    loop {
        let wait = if cuts_per_second > 0.0 {
            // Exponential inter-arrival times: a Poisson process.
            let u: f64 = rand::random::<f64>().max(1e-12);
            Duration::from_secs_f64(-u.ln() / cuts_per_second)
        } else {
            Duration::from_secs(3600)
        };
        let at = Instant::now() + wait;
        if at >= play_end {
            tokio::time::sleep_until(play_end).await;
            break;
        }
        tokio::time::sleep_until(at).await;
        if Instant::now() >= next_report {
            next_report += Duration::from_secs(10);
            let sent: u64 = progress
                .iter()
                .map(|p| p.sent.load(Ordering::Relaxed))
                .sum();
            eprintln!("chaos: {cuts} cuts, {sent} messages sent so far");
        }
        // A player with a live connection, at random.
        let live: Vec<usize> = (0..players).filter(|&i| forwarders[i].live()).collect();
        cut_tries += 1;
        if live.is_empty() {
            continue;
        }
        let victim = live[rand::random_range(0..live.len())];
        let outage = Duration::from_millis(if args.max_outage_ms > 0 {
            rand::random_range(0..=args.max_outage_ms)
        } else {
            0
        });
        if forwarders[victim].cut(outage) > 0 {
            cuts += 1;
            cut_times[victim].push(epoch_ms());
        }
    }
    let stopped_ms = epoch_ms();
    let _ = phase_tx.send(Phase::Stopped);
    eprintln!("chaos: stopped sending after {cuts} cuts; waiting for the last deliveries");

    // Settle: every receiver has what its peer sent, or the bound.
    let settle_started = Instant::now();
    let settle_end = settle_started + Duration::from_secs(args.settle);
    let settled = loop {
        let done = (0..players).all(|i| {
            progress[i].last_received.load(Ordering::Relaxed)
                >= progress[i ^ 1].sent.load(Ordering::Relaxed)
        });
        if done {
            break true;
        }
        if Instant::now() >= settle_end {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // A moment more, for anything that would come twice.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let settle_ms = settle_started.elapsed().as_millis() as u64;
    let _ = phase_tx.send(Phase::Closing);
    let mut reports = Vec::with_capacity(players);
    for handle in handles {
        reports.push(
            handle
                .await
                .map_err(|e| format!("a player's task failed: {e}"))?,
        );
    }

    // The check.
    let mut result = Check::default();
    for id in 0..players {
        check(&reports[id], id ^ 1, &reports[id ^ 1], &mut result);
    }
    let kills = args
        .events_file
        .as_ref()
        .map(read_kills)
        .unwrap_or_default();
    let window = |t: u64| {
        kills
            .iter()
            .any(|k| t + 2000 >= k.at && t <= k.at + args.kill_window * 1000)
    };
    let gaps_in_kill_window = result
        .missing
        .iter()
        .filter(|(sender, n)| window(reports[*sender].send_times[*n as usize - 1]))
        .count();
    let gaps = result.missing.len();

    // Drops that no cut of ours explains (within 1 s before): the node kill.
    let mut other_drops = 0u64;
    let mut other_drops_in_kill_window = 0u64;
    let explained = |id: usize, t: u64| cut_times[id].iter().any(|&c| c <= t + 50 && t <= c + 1000);
    for (id, report) in reports.iter().enumerate() {
        for &t in &report.drop_times {
            if !explained(id, t) {
                other_drops += 1;
                if window(t) {
                    other_drops_in_kill_window += 1;
                }
            }
        }
    }
    // Time to resume after the drops the kill caused.
    let mut kill_resume_ms: Vec<u64> = reports
        .iter()
        .enumerate()
        .flat_map(|(id, r)| {
            r.resume_ms
                .iter()
                .filter(move |(t, _)| !explained(id, *t) && window(*t))
                .map(|(_, ms)| *ms)
        })
        .collect();
    kill_resume_ms.sort_unstable();

    let sum = |f: fn(&PlayerReport) -> u64| reports.iter().map(f).sum::<u64>();
    let sent = sum(|r| r.sent);
    let received = sum(|r| r.received.len() as u64);
    let mut resume_ms: Vec<u64> = reports
        .iter()
        .flat_map(|r| r.resume_ms.iter().map(|(_, ms)| *ms))
        .collect();
    resume_ms.sort_unstable();
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    for report in &reports {
        for (code, count) in &report.errors {
            *errors.entry(code.clone()).or_default() += count;
        }
    }
    let mut drop_codes: BTreeMap<String, u64> = BTreeMap::new();
    for report in &reports {
        for (code, count) in &report.drop_codes {
            *drop_codes.entry(code.clone()).or_default() += count;
        }
    }
    let unexpected_closes: Vec<String> = reports
        .iter()
        .enumerate()
        .filter_map(|(id, r)| {
            r.closed_unexpectedly
                .as_ref()
                .map(|c| format!("player {id}: {c}"))
        })
        .collect();
    let drops = sum(|r| r.drop_times.len() as u64);
    let resumes = sum(|r| r.resumes);
    let seat_losses = sum(|r| r.seat_losses);
    let foreign = sum(|r| r.foreign);
    let refused_sends = sum(|r| r.refused_sends);

    let mut broken = Vec::new();
    if result.duplicates > 0 {
        broken.push(format!("{} duplicates", result.duplicates));
    }
    if result.out_of_order > 0 {
        broken.push(format!("{} out of order", result.out_of_order));
    }
    if gaps > 0 {
        broken.push(format!(
            "{gaps} messages missing ({gaps_in_kill_window} sent in a node kill's window)"
        ));
    }
    if result.unknown + foreign > 0 {
        broken.push(format!(
            "{} messages that no peer sent",
            result.unknown + foreign
        ));
    }
    if seat_losses > 0 {
        broken.push(format!("{seat_losses} seats lost"));
    }
    if !unexpected_closes.is_empty() {
        broken.push(format!("clients stopped: {}", unexpected_closes.join("; ")));
    }
    if errors.get("resend_incomplete").copied().unwrap_or(0) > 0 {
        broken.push("resend_incomplete".into());
    }
    let mut invalid = Vec::new();
    if cuts < u64::from(args.min_cuts) {
        invalid.push(format!(
            "only {cuts} cuts of live connections, fewer than --min-cuts {}",
            args.min_cuts
        ));
    }
    if refused_sends > 0 {
        invalid.push(format!(
            "{refused_sends} sends refused by the client (its queue full, or its seat lost): a player was away too long"
        ));
    }
    let verdict = if !broken.is_empty() {
        "BROKEN"
    } else if !invalid.is_empty() {
        "INVALID"
    } else {
        "OK"
    };

    let kills_json: Vec<_> = kills
        .iter()
        .map(|k| {
            json!({
                "node": k.name,
                "killed_at_s": (k.at as f64 - started_ms as f64) / 1000.0,
                "ready_after_s": k.ready.map(|r| (r as f64 - k.at as f64) / 1000.0),
            })
        })
        .collect();
    let first_missing: Vec<_> = result
        .missing
        .iter()
        .take(20)
        .map(|(sender, n)| {
            json!({
                "from": sender,
                "n": n,
                "sent_at_s": (reports[*sender].send_times[*n as usize - 1] as f64 - started_ms as f64) / 1000.0,
            })
        })
        .collect();
    let figures = json!({
        "verdict": verdict,
        "broken": broken,
        "invalid": invalid,
        "url": args.url,
        "pairs": args.pairs,
        "players": players,
        "seconds": args.seconds,
        "rate_hz": args.rate,
        "join_ms": join_ms,
        "play_s": (stopped_ms - started_ms) as f64 / 1000.0,
        "settled": settled,
        "settle_ms": settle_ms,
        "messages_sent": sent,
        "messages_received": received,
        "duplicates": result.duplicates,
        "out_of_order": result.out_of_order,
        "gaps": gaps,
        "gaps_in_kill_window": gaps_in_kill_window,
        "foreign": result.unknown + foreign,
        "cuts": cuts,
        "cut_draws": cut_tries,
        "drops": drops,
        "drops_without_cut": other_drops,
        "drops_without_cut_in_kill_window": other_drops_in_kill_window,
        "reconnect_attempts": sum(|r| r.reconnect_attempts),
        "resumes": resumes,
        "joins": sum(|r| r.joins),
        "seat_losses": seat_losses,
        "resent": sum(|r| r.resent),
        "replayed": sum(|r| r.replayed),
        "player_away": sum(|r| r.player_away),
        "player_back": sum(|r| r.player_back),
        "away_back": format!("{} / {}", sum(|r| r.player_away), sum(|r| r.player_back)),
        "refused_sends": refused_sends,
        "resume_ms": {
            "p50": percentile(&resume_ms, 50.0),
            "p99": percentile(&resume_ms, 99.0),
            "max": resume_ms.last().copied().unwrap_or(0),
        },
        "kill_resume_ms": {
            "count": kill_resume_ms.len(),
            "p50": percentile(&kill_resume_ms, 50.0),
            "max": kill_resume_ms.last().copied().unwrap_or(0),
        },
        "errors": errors,
        "drop_codes": drop_codes,
        "kills": kills_json,
        "first_missing": first_missing,
    });
    print_table(&figures);
    if let Some(path) = &args.json {
        std::fs::write(
            path,
            serde_json::to_string_pretty(&figures).unwrap_or_default() + "\n",
        )
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    Ok(match verdict {
        "OK" => 0,
        "BROKEN" => EXIT_BROKEN,
        _ => EXIT_INVALID,
    })
}

fn print_table(f: &serde_json::Value) {
    let rows: &[(&str, &str)] = &[
        ("pairs", "pairs"),
        ("players", "players"),
        ("seconds of play", "play_s"),
        ("game messages sent", "messages_sent"),
        ("game messages received", "messages_received"),
        ("duplicates", "duplicates"),
        ("out of order", "out_of_order"),
        ("gaps (missing)", "gaps"),
        ("  of which sent in a kill's window", "gaps_in_kill_window"),
        ("cuts of live connections", "cuts"),
        ("drops seen by clients", "drops"),
        ("  not from a cut", "drops_without_cut"),
        (
            "  of which in a kill's window",
            "drops_without_cut_in_kill_window",
        ),
        ("reconnection attempts", "reconnect_attempts"),
        ("resumes", "resumes"),
        ("seat losses", "seat_losses"),
        ("messages resent after a resume", "resent"),
        ("deliveries replayed on resume", "replayed"),
        ("playerAway / playerBack seen", "away_back"),
        ("sends refused by the client", "refused_sends"),
    ];
    println!("| figure | value |");
    println!("| --- | --- |");
    for (label, key) in rows {
        let value = &f[*key];
        match value.as_str() {
            Some(text) => println!("| {label} | {text} |"),
            None => println!("| {label} | {value} |"),
        }
    }
    println!(
        "| time to resume, p50 / p99 / max | {} / {} / {} ms |",
        f["resume_ms"]["p50"], f["resume_ms"]["p99"], f["resume_ms"]["max"]
    );
    println!(
        "| time to resume after the kill's drops, p50 / max | {} / {} ms ({} players) |",
        f["kill_resume_ms"]["p50"], f["kill_resume_ms"]["max"], f["kill_resume_ms"]["count"]
    );
    println!("| close codes of the drops | {} |", f["drop_codes"]);
    println!("| errors seen by clients | {} |", f["errors"]);
    let kills: Vec<String> = f["kills"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|k| {
            format!(
                "{} at {:.1} s of play, ready again {:.1} s later",
                k["node"].as_str().unwrap_or("?"),
                k["killed_at_s"].as_f64().unwrap_or(0.0),
                k["ready_after_s"].as_f64().unwrap_or(f64::NAN),
            )
        })
        .collect();
    println!(
        "| node killed (SIGKILL) | {} |",
        if kills.is_empty() {
            "none".to_owned()
        } else {
            kills.join("; ")
        }
    );
    println!("| verdict | {} |", f["verdict"].as_str().unwrap_or("?"));
    for line in f["broken"].as_array().into_iter().flatten() {
        println!("BROKEN: {}", line.as_str().unwrap_or_default());
    }
    for line in f["invalid"].as_array().into_iter().flatten() {
        println!("INVALID: {}", line.as_str().unwrap_or_default());
    }
}
