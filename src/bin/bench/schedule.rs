//! The send schedule of rate mode, walked by a timer thread.
//!
//! Why a thread: tokio's timer rounds every sleep up to the next
//! millisecond, which would add up to 1 ms to every latency (or bunch the
//! sends into 1 ms bursts, which flatters a relay: it batches them). A plain
//! thread sleeping with `clock_nanosleep` (timer slack lowered, see
//! [`crate::cpu::tighten_timer_slack`]) wakes within microseconds, and costs
//! one sleep and one wake-up of the runtime thread per tick that has
//! messages due.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use tokio::sync::Notify;

/// The send schedule of rate mode. Player `i` of `N` sends message `k` at
/// `s0 + (i/N + k) / rate`, rounded up to the tick grid; that rounded time
/// is the message's scheduled time. Times are ns since the run's epoch.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    /// The first tick of the grid.
    pub s0: u64,
    /// Nothing is scheduled at or after this time.
    pub end: u64,
    /// Messages per second per player.
    pub rate: f64,
    /// The grid, ns.
    pub tick: u64,
    pub players: usize,
}

/// Messages made due by the timer thread, waiting for the runtime thread.
#[derive(Default)]
pub struct Due {
    /// (player, scheduled ns).
    pub ready: std::sync::Mutex<Vec<(usize, u64)>>,
    /// The whole schedule was handed over.
    pub finished: AtomicBool,
    /// Wakes the runtime thread.
    pub fired: Notify,
}

/// The timer thread: walks the schedule, sleeping until each tick that has
/// messages due, and hands them to the runtime thread.
pub fn run_timer(epoch: Instant, plan: Plan, due: Arc<Due>) {
    let period = 1e9 / plan.rate;
    let n = plan.players as f64;
    let offset = |i: usize, k: u64| period * (i as f64 / n + k as f64);
    let tick_of = |ns: f64| (ns / plan.tick as f64).ceil() as u64;
    let mut heap: BinaryHeap<Reverse<(u64, usize, u64)>> = (0..plan.players)
        .map(|i| Reverse((tick_of(offset(i, 0)), i, 0)))
        .collect();
    let mut batch = Vec::new();
    while let Some(&Reverse((next, _, _))) = heap.peek() {
        let at = plan.s0 + next * plan.tick;
        if at >= plan.end {
            break;
        }
        let deadline = epoch + Duration::from_nanos(at);
        loop {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            std::thread::sleep(deadline - now);
        }
        let now = epoch.elapsed().as_nanos() as u64;
        while let Some(&Reverse((tick, i, k))) = heap.peek() {
            let t = plan.s0 + tick * plan.tick;
            if t > now || t >= plan.end {
                break;
            }
            heap.pop();
            batch.push((i, t));
            heap.push(Reverse((tick_of(offset(i, k + 1)), i, k + 1)));
        }
        due.ready.lock().expect("due lock").append(&mut batch);
        due.fired.notify_one();
    }
    due.finished
        .store(true, std::sync::atomic::Ordering::Release);
    due.fired.notify_one();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_player_on_the_grid_evenly_and_never_early() {
        let epoch = Instant::now();
        let plan = Plan {
            s0: 1_000_000,
            end: 21_000_000,
            rate: 1000.0,
            tick: 100_000,
            players: 4,
        };
        let due = Arc::new(Due::default());
        run_timer(epoch, plan, due.clone());
        let handed_over = epoch.elapsed().as_nanos() as u64;
        assert!(due.finished.load(std::sync::atomic::Ordering::Acquire));
        let ready = due.ready.lock().unwrap();
        for player in 0..4 {
            let times: Vec<u64> = ready
                .iter()
                .filter(|(p, _)| *p == player)
                .map(|&(_, t)| t)
                .collect();
            // 20 ms at 1000/s.
            assert_eq!(times.len(), 20, "player {player}");
            assert!(times.windows(2).all(|w| w[1] > w[0]));
            for t in &times {
                assert_eq!((t - plan.s0) % plan.tick, 0, "on the grid");
                assert!(*t < plan.end && *t <= handed_over);
            }
            // A quarter of a period apart (250 µs), rounded up to the grid.
            let first = [0, 300_000, 500_000, 800_000][player];
            assert_eq!(times[0], plan.s0 + first);
        }
    }
}
