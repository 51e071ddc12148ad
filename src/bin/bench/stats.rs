//! What a run measures, and its summary (printed for people, written as JSON
//! for scripts).

use hdrhistogram::Histogram;
use serde::Serialize;

/// Highest value a histogram holds, µs (values above are clamped): 10 min.
const HIGHEST_US: u64 = 600_000_000;

/// A histogram of microseconds, 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, HIGHEST_US, 3).expect("valid histogram bounds")
}

/// Records `us` (at least 1, at most the bound) in `h`.
pub fn record(h: &mut Histogram<u64>, us: u64) {
    h.saturating_record(us.clamp(1, HIGHEST_US));
}

/// Receiver-side bookkeeping of one sender's messages: which sequence
/// numbers arrived (a bit set), duplicates and late arrivals.
#[derive(Debug, Default)]
pub struct SeqTracker {
    seen: Vec<u64>,
    /// The next sequence number if everything arrives in order.
    next: u64,
    pub distinct: u64,
    pub duplicates: u64,
    /// Messages that arrived after a message sent later than them.
    pub reordered: u64,
}

impl SeqTracker {
    pub fn observe(&mut self, n: u64) {
        let (word, bit) = ((n / 64) as usize, n % 64);
        if word >= self.seen.len() {
            self.seen.resize(word + 1 + self.seen.len() / 2, 0);
        }
        let mask = 1u64 << bit;
        if self.seen[word] & mask != 0 {
            self.duplicates += 1;
            return;
        }
        self.seen[word] |= mask;
        self.distinct += 1;
        if n < self.next {
            self.reordered += 1;
        } else {
            self.next = n + 1;
        }
    }
}

/// p50/p99/max and friends of a histogram, in the unit given.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Percentiles {
    pub count: u64,
    pub mean: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p99_9: f64,
    pub max: f64,
    /// (percentile, value) pairs for a percentile plot.
    pub distribution: Vec<(f64, f64)>,
}

/// The percentiles of the plot: 0, 50, 75, 90, 95, 99, 99.5, 99.9, 99.95,
/// 99.99, 99.999, 100.
const PLOT: [f64; 12] = [
    0.0, 50.0, 75.0, 90.0, 95.0, 99.0, 99.5, 99.9, 99.95, 99.99, 99.999, 100.0,
];

impl Percentiles {
    /// Values of a µs histogram, divided by `scale` (1000.0: ms).
    pub fn of(h: &Histogram<u64>, scale: f64) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        let at = |q: f64| h.value_at_quantile(q) as f64 / scale;
        Self {
            count: h.len(),
            mean: h.mean() / scale,
            p50: at(0.50),
            p90: at(0.90),
            p99: at(0.99),
            p99_9: at(0.999),
            max: h.max() as f64 / scale,
            distribution: PLOT.iter().map(|&p| (p, at(p / 100.0))).collect(),
        }
    }
}

/// The JSON summary of a run.
#[derive(Debug, Serialize)]
pub struct Summary {
    pub label: String,
    /// `rate`, `saturate` or `idle`.
    pub mode: &'static str,
    pub url_a: String,
    pub url_b: String,
    pub lobbies_requested: usize,
    /// Connections that took part (two per formed lobby).
    pub connections: usize,
    /// Messages per second per player (rate mode).
    pub rate_per_player: Option<f64>,
    /// All players together (rate mode).
    pub offered_per_s: Option<f64>,
    pub window: Option<usize>,
    pub size_bytes: usize,
    pub warmup_s: f64,
    pub duration_s: f64,
    pub tick_us: Option<f64>,
    pub joins: Joins,
    /// The measured interval, seconds (after the warm-up).
    pub measured_s: f64,
    pub messages: Messages,
    /// Messages delivered during the measured interval, per second.
    pub delivered_per_s: f64,
    /// One-way latency of the messages scheduled in the measured interval,
    /// from their scheduled send time, ms.
    pub latency_ms: Percentiles,
    /// How late the generator itself sent, ms.
    pub sender_lag_ms: Percentiles,
    pub generator: Generator,
    pub processes: Vec<Process>,
    pub ok: bool,
    pub problems: Vec<String>,
}

#[derive(Debug, Serialize, Default)]
pub struct Joins {
    pub formed: usize,
    pub failed: usize,
    /// Wall time from the first connect to the last `ready`, s.
    pub wall_s: f64,
    pub lobbies_per_s: f64,
    /// First connect of a lobby to both of its `ready`s, ms.
    pub join_to_ready_ms: Percentiles,
    /// The first few reasons lobbies failed to form.
    pub errors: Vec<String>,
    /// The generator's CPU seconds while forming the lobbies.
    pub generator_cpu_s: f64,
    /// CPU seconds of each `--pids` process while the lobbies formed (same
    /// order as `processes`).
    pub processes_cpu_s: Vec<f64>,
}

#[derive(Debug, Serialize, Default)]
pub struct Messages {
    /// Per direction: `[A→B, B→A]` (player A on url A sends to B on url B).
    pub sent: [u64; 2],
    pub received: [u64; 2],
    /// Sent minus received (distinct), after the drain.
    pub lost: [u64; 2],
    pub duplicates: u64,
    pub reordered: u64,
    /// Game messages that came from somebody else than the lobby's peer.
    pub misrouted: u64,
    /// Frames that were not game messages of this run (errors, playerLeft...).
    pub unexpected: u64,
    pub unexpected_examples: Vec<String>,
    /// Connections closed or failed before the end.
    pub disconnects: u64,
    pub disconnect_examples: Vec<String>,
}

#[derive(Debug, Serialize, Default)]
pub struct Generator {
    /// This process's CPU seconds (utime + stime) over the measured interval.
    pub cpu_s: f64,
    /// Share of one core over the measured interval (1.0 = a full core).
    pub cpu_share: f64,
}

#[derive(Debug, Serialize, Default)]
pub struct Process {
    pub name: String,
    pub pid: u32,
    /// CPU seconds over the measured interval.
    pub cpu_s: f64,
    /// Share of one core over the measured interval.
    pub cpu_share: f64,
    /// CPU µs per message delivered in the measured interval.
    pub cpu_us_per_msg: Option<f64>,
    /// RSS before the first connection, at the start and at the end of the
    /// measured interval, and the peak (VmHWM, since the process started).
    pub rss_before_kib: u64,
    pub rss_start_kib: u64,
    pub rss_end_kib: u64,
    pub peak_rss_kib: u64,
    /// RSS at the end of the measured interval minus RSS before the first
    /// connection, KiB (idle mode: the memory of the held connections).
    pub rss_delta_kib: i64,
    /// The process ended before the end of the measured interval.
    pub gone: bool,
}

impl Summary {
    /// The human summary (stdout).
    pub fn print(&self) {
        println!("== {} ({}) ==", self.label, self.mode);
        let j = &self.joins;
        println!(
            "lobbies       {} formed, {} failed in {:.2} s: {:.0} lobbies/s; join-to-ready p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            j.formed,
            j.failed,
            j.wall_s,
            j.lobbies_per_s,
            j.join_to_ready_ms.p50,
            j.join_to_ready_ms.p99,
            j.join_to_ready_ms.max
        );
        for e in &j.errors {
            println!("  join error: {e}");
        }
        let join_cpu: Vec<String> = self
            .processes
            .iter()
            .zip(&j.processes_cpu_s)
            .map(|(p, cpu)| format!("{} {cpu:.2} s", p.name))
            .collect();
        println!(
            "  CPU while forming: generator {:.2} s{}{}",
            j.generator_cpu_s,
            if join_cpu.is_empty() { "" } else { ", " },
            join_cpu.join(", ")
        );
        if self.mode != "idle" {
            let m = &self.messages;
            println!(
                "messages      sent A→B {} B→A {}; received {} / {}; lost {} / {}; duplicates {}; reordered {}; misrouted {}",
                m.sent[0],
                m.sent[1],
                m.received[0],
                m.received[1],
                m.lost[0],
                m.lost[1],
                m.duplicates,
                m.reordered,
                m.misrouted
            );
            match self.offered_per_s {
                Some(offered) => println!(
                    "throughput    {:.0} delivered/s over {:.1} s (offered {:.0}/s)",
                    self.delivered_per_s, self.measured_s, offered
                ),
                None => println!(
                    "throughput    {:.0} delivered/s over {:.1} s",
                    self.delivered_per_s, self.measured_s
                ),
            }
            let l = &self.latency_ms;
            println!(
                "latency (ms)  p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}  ({} messages, from the scheduled send time)",
                l.p50, l.p90, l.p99, l.p99_9, l.max, l.count
            );
            if self.mode == "rate" {
                let s = &self.sender_lag_ms;
                println!(
                    "sender lag    p50 {:.3} ms  p99 {:.3} ms  max {:.3} ms (how late the generator sent)",
                    s.p50, s.p99, s.max
                );
            }
        }
        println!(
            "generator     {:.2} CPU s, {:.0}% of a core",
            self.generator.cpu_s,
            self.generator.cpu_share * 100.0
        );
        for p in &self.processes {
            let per_msg = p
                .cpu_us_per_msg
                .map(|v| format!(", {v:.1} µs/msg"))
                .unwrap_or_default();
            let per_conn = if self.mode == "idle" {
                format!(
                    ", {:+} KiB since before the first connection",
                    p.rss_delta_kib
                )
            } else {
                String::new()
            };
            println!(
                "{:<13} {:.2} CPU s ({:.0}% of a core{}); RSS {} → {} KiB, peak {} KiB{}{}",
                p.name,
                p.cpu_s,
                p.cpu_share * 100.0,
                per_msg,
                p.rss_before_kib,
                p.rss_end_kib,
                p.peak_rss_kib,
                per_conn,
                if p.gone { " (process gone)" } else { "" }
            );
        }
        if self.mode == "idle" && self.connections > 0 && !self.processes.is_empty() {
            let grown: i64 = self.processes.iter().map(|p| p.rss_delta_kib).sum();
            println!(
                "memory        the watched processes together grew {grown:+} KiB = {:.2} KiB per connection held ({})",
                grown as f64 / self.connections as f64,
                self.connections
            );
        }
        if self.ok {
            println!("result        OK");
        } else {
            for p in &self.problems {
                println!("PROBLEM       {p}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_order_late_and_duplicate() {
        let mut t = SeqTracker::default();
        for n in [0, 1, 3, 2, 2, 4, 200] {
            t.observe(n);
        }
        assert_eq!(t.distinct, 6);
        assert_eq!(t.duplicates, 1);
        assert_eq!(t.reordered, 1);
    }

    #[test]
    fn percentiles_in_ms() {
        let mut h = histogram();
        for us in 1..=1000 {
            record(&mut h, us);
        }
        let p = Percentiles::of(&h, 1000.0);
        assert!((p.p50 - 0.5).abs() < 0.01);
        assert!((p.max - 1.0).abs() < 0.01);
        assert_eq!(p.count, 1000);
    }
}
