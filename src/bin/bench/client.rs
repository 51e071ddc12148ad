//! A whole run of the load generator: forming the lobbies ([`crate::join`]),
//! the players' warm-up, measured interval and drain
//! ([`crate::players`]), and the summary.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::Message;

use crate::RunArgs;
use crate::cpu::{self, Sample, Watched};
use crate::join::{Lobby, form_lobby, random_prefix, resolve};
use crate::players::{
    EXAMPLES, Player, Shared, new_live, progress, receive, schedule, send_saturated, send_scheduled,
};
use crate::schedule::Plan;
use crate::stats::{self, Generator, Joins, Messages, Percentiles, Process, SeqTracker, Summary};

fn sample_all(watched: &[Watched]) -> Vec<Option<Sample>> {
    watched.iter().map(|w| cpu::sample(w.pid)).collect()
}

/// A whole run: form, (warm up, measure, drain), report.
pub async fn run(args: RunArgs) -> Result<Summary, String> {
    let target_a = resolve(&args.url_a, args.ca_cert.as_deref())?;
    let target_b = resolve(args.url_b(), args.ca_cert.as_deref())?;
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
            .map(|i| {
                let lobby = match &args.queue {
                    Some(queue) => Lobby::Queue(queue.clone()),
                    None => Lobby::Passphrase(format!("{prefix}-{i}")),
                };
                form_lobby(a, b, lobby, idle, args.resume, timeout)
            })
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
