//! Prometheus metrics, served at `GET /metrics` on the relay's port.
//!
//! Handles are looked up once ([`get`]) so that counting on the hot path is
//! one atomic add. No label ever carries a passphrase or a lobby id: labels
//! are kinds, results, codes and operations, all from fixed lists.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use metrics::{Counter, Gauge, Histogram, counter, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::protocol::ErrorCode;

/// Every metric of a node.
pub struct Metrics {
    pub connections: LiveGauge,
    pub lobbies: LiveGauge,
    pub members: LiveGauge,
    /// Spectators watching lobbies from this node.
    pub spectators: LiveGauge,
    pub joins_joined: Counter,
    pub joins_full: Counter,
    pub joins_rate_limited: Counter,
    pub joins_unavailable: Counter,
    pub messages_in_text: LiveCounter,
    pub messages_in_binary: LiveCounter,
    pub bytes_in: Counter,
    pub messages_out_text: LiveCounter,
    pub messages_out_binary: LiveCounter,
    pub messages_out_event: LiveCounter,
    pub bytes_out: Counter,
    pub slow_clients: Counter,
    pub floods_closed: Counter,
    pub seats_lost: Counter,
    pub pubsub_reconnects: Counter,
    pub nodes_reaped: Counter,
    pub redis_join: Histogram,
    pub redis_leave: Histogram,
    pub redis_publish: Histogram,
    pub redis_heartbeat: Histogram,
    pub redis_errors_join: Counter,
    pub redis_errors_leave: Counter,
    pub redis_errors_publish: Counter,
    pub redis_errors_heartbeat: Counter,
    pub redis_errors_pubsub: Counter,
    /// Game messages refused because too much waited for Redis already.
    pub dropped_backlog: Counter,
    /// Game messages dropped for waiting too long for Redis (never
    /// delivered late).
    pub dropped_stale: Counter,
    /// Resume: seats held for a player whose connection ended without
    /// `leave` (on the node that held the connection).
    pub seats_held: Counter,
    /// Resume: held seats released (grace over or buffer overflow).
    pub held_seats_released: Counter,
    /// Resume: seats taken back.
    pub resumes: Counter,
    /// The round trip of the last heartbeat to Redis, in microseconds
    /// (`u64::MAX`: none yet, or no Redis).
    redis_rtt_us: AtomicU64,
    errors: Vec<(ErrorCode, Counter)>,
}

/// A Prometheus gauge whose value the node can also read back (for the
/// figures it publishes in its heartbeat, see [`figures`]).
pub struct LiveGauge {
    gauge: Gauge,
    value: AtomicI64,
}

impl LiveGauge {
    fn new(gauge: Gauge) -> Self {
        Self {
            gauge,
            value: AtomicI64::new(0),
        }
    }

    pub fn increment(&self, by: f64) {
        self.gauge.increment(by);
        self.value.fetch_add(by as i64, Ordering::Relaxed);
    }

    pub fn decrement(&self, by: f64) {
        self.gauge.decrement(by);
        self.value.fetch_sub(by as i64, Ordering::Relaxed);
    }

    pub fn value(&self) -> u64 {
        self.value.load(Ordering::Relaxed).max(0) as u64
    }
}

/// A Prometheus counter whose value the node can also read back.
pub struct LiveCounter {
    counter: Counter,
    value: AtomicU64,
}

impl LiveCounter {
    fn new(counter: Counter) -> Self {
        Self {
            counter,
            value: AtomicU64::new(0),
        }
    }

    pub fn increment(&self, by: u64) {
        self.counter.increment(by);
        self.value.fetch_add(by, Ordering::Relaxed);
    }

    pub fn value(&self) -> u64 {
        self.value.load(Ordering::Relaxed)
    }
}

/// A node's headline figures: what it publishes in its heartbeat (Redis) and
/// what the admin view (`/admin`) shows and charts. Counters only grow;
/// rates are differences between two readings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Figures {
    /// When the figures were read (Unix time, ms), to turn counters into rates.
    pub at_ms: u64,
    /// Open WebSocket connections.
    pub connections: u64,
    /// Lobbies with members on this node.
    pub lobbies: u64,
    /// This node's members of lobbies.
    pub members: u64,
    /// Spectators watching from this node (0 in the heartbeat of a node
    /// older than spectators).
    #[serde(default)]
    pub spectators: u64,
    /// Messages received from clients (text and binary frames).
    pub messages_in: u64,
    /// Messages sent to clients: relayed game messages and lobby events.
    pub messages_out: u64,
    /// Round trip of the last heartbeat to Redis, in µs (none in memory mode).
    pub redis_rtt_us: Option<u64>,
}

/// The node's figures now.
pub fn figures() -> Figures {
    let m = get();
    let rtt = m.redis_rtt_us.load(Ordering::Relaxed);
    Figures {
        at_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or_default(),
        connections: m.connections.value(),
        lobbies: m.lobbies.value(),
        members: m.members.value(),
        spectators: m.spectators.value(),
        messages_in: m.messages_in_text.value() + m.messages_in_binary.value(),
        messages_out: m.messages_out_text.value()
            + m.messages_out_binary.value()
            + m.messages_out_event.value(),
        redis_rtt_us: (rtt != u64::MAX).then_some(rtt),
    }
}

/// Records the round trip of a heartbeat to Redis (see [`Figures`]).
pub fn record_redis_rtt(elapsed: Duration) {
    get().redis_rtt_us.store(
        elapsed.as_micros().min(u128::from(u64::MAX - 1)) as u64,
        Ordering::Relaxed,
    );
}

impl Metrics {
    fn new() -> Self {
        let codes = ErrorCode::ALL;
        let redis = |op: &'static str| histogram!("lobby_relay_redis_command_seconds", "op" => op);
        let redis_errors =
            |op: &'static str| counter!("lobby_relay_redis_errors_total", "op" => op);
        Self {
            connections: LiveGauge::new(gauge!("lobby_relay_connections")),
            lobbies: LiveGauge::new(gauge!("lobby_relay_lobbies")),
            members: LiveGauge::new(gauge!("lobby_relay_members")),
            spectators: LiveGauge::new(gauge!("lobby_relay_spectators")),
            joins_joined: counter!("lobby_relay_joins_total", "result" => "joined"),
            joins_full: counter!("lobby_relay_joins_total", "result" => "lobby_full"),
            joins_rate_limited: counter!("lobby_relay_joins_total", "result" => "rate_limited"),
            joins_unavailable: counter!("lobby_relay_joins_total", "result" => "unavailable"),
            messages_in_text: LiveCounter::new(
                counter!("lobby_relay_messages_in_total", "kind" => "text"),
            ),
            messages_in_binary: LiveCounter::new(
                counter!("lobby_relay_messages_in_total", "kind" => "binary"),
            ),
            bytes_in: counter!("lobby_relay_bytes_in_total"),
            messages_out_text: LiveCounter::new(
                counter!("lobby_relay_messages_out_total", "kind" => "text"),
            ),
            messages_out_binary: LiveCounter::new(
                counter!("lobby_relay_messages_out_total", "kind" => "binary"),
            ),
            messages_out_event: LiveCounter::new(
                counter!("lobby_relay_messages_out_total", "kind" => "event"),
            ),
            bytes_out: counter!("lobby_relay_bytes_out_total"),
            slow_clients: counter!("lobby_relay_slow_clients_closed_total"),
            floods_closed: counter!("lobby_relay_flooders_closed_total"),
            seats_lost: counter!("lobby_relay_seats_lost_total"),
            pubsub_reconnects: counter!("lobby_relay_pubsub_reconnects_total"),
            nodes_reaped: counter!("lobby_relay_nodes_reaped_total"),
            redis_join: redis("join"),
            redis_leave: redis("leave"),
            redis_publish: redis("publish"),
            redis_heartbeat: redis("heartbeat"),
            redis_errors_join: redis_errors("join"),
            redis_errors_leave: redis_errors("leave"),
            redis_errors_publish: redis_errors("publish"),
            redis_errors_heartbeat: redis_errors("heartbeat"),
            redis_errors_pubsub: redis_errors("pubsub"),
            dropped_backlog: counter!("lobby_relay_messages_dropped_total", "reason" => "backlog"),
            dropped_stale: counter!("lobby_relay_messages_dropped_total", "reason" => "stale"),
            seats_held: counter!("lobby_relay_seats_held_total"),
            held_seats_released: counter!("lobby_relay_held_seats_released_total"),
            resumes: counter!("lobby_relay_resumes_total"),
            redis_rtt_us: AtomicU64::new(u64::MAX),
            errors: codes
                .into_iter()
                .map(|code| {
                    (
                        code,
                        counter!("lobby_relay_errors_total", "code" => code.as_str()),
                    )
                })
                .collect(),
        }
    }

    /// Counts an error sent to a client.
    pub fn error(&self, code: ErrorCode) {
        if let Some((_, counter)) = self.errors.iter().find(|(c, _)| *c == code) {
            counter.increment(1);
        }
    }
}

static METRICS: OnceLock<Metrics> = OnceLock::new();
static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// How often the recorder's histogram samples are folded into their buckets
/// (see [`install`]).
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// Installs the Prometheus recorder (once per process) and records the
/// node's identity in `lobby_relay_node_info`.
///
/// The recorder keeps every histogram sample (a Redis command's duration:
/// about one per relayed message in Redis mode) in a queue until an upkeep
/// folds the queue into the histogram's buckets, and nothing runs that
/// upkeep on its own for a recorder installed this way: without the thread
/// started here, a node that is never scraped holds every sample forever
/// (about 16 bytes a relayed message, issue 17).
pub fn install(node_id: &str, store: &'static str) {
    let handle = HANDLE.get_or_init(|| {
        let buckets = [
            0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
            1.0,
        ];
        let handle = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &buckets)
            .and_then(|builder| builder.install_recorder())
            .map_err(|e| tracing::warn!(error = %e, "metrics are unavailable"))
            .ok()?;
        let upkeep = handle.clone();
        // A thread of its own (a small stack, asleep but every few seconds),
        // so that it outlives any one runtime the recorder was installed from.
        let started = std::thread::Builder::new()
            .name("metrics-upkeep".into())
            .stack_size(64 * 1024)
            .spawn(move || {
                loop {
                    std::thread::sleep(UPKEEP_EVERY);
                    upkeep.run_upkeep();
                }
            });
        if let Err(e) = started {
            // Only a scrape of /metrics folds the samples in now.
            tracing::warn!(error = %e, "cannot start the metrics' upkeep thread");
        }
        Some(handle)
    });
    if handle.is_some() {
        gauge!(
            "lobby_relay_node_info",
            "version" => env!("CARGO_PKG_VERSION"),
            "node_id" => node_id.to_owned(),
            "store" => store
        )
        .set(1.0);
        // Every series exists from the start, at zero (issue 19): `rate()`
        // needs two samples, and an alert on absence cannot tell "nothing
        // happened yet" from "not exported". Registering the handles is
        // what makes the recorder list them (histograms with a zero count).
        let _ = get();
        let _ = state();
    }
}

/// What the node's state was at the last scrape: gauges set by
/// [`record_state`] just before each rendering, not on any hot path.
struct State {
    store_reachable: Gauge,
    draining: Gauge,
}

fn state() -> &'static State {
    static STATE: OnceLock<State> = OnceLock::new();
    STATE.get_or_init(|| State {
        store_reachable: gauge!("lobby_relay_store_reachable"),
        draining: gauge!("lobby_relay_draining"),
    })
}

/// Records, for the scrape about to be rendered, whether the lobby store is
/// reachable (always, in memory mode) and whether the node is draining: what
/// `/readyz` answers, as series an alert can use.
pub fn record_state(store_reachable: bool, draining: bool) {
    let state = state();
    state
        .store_reachable
        .set(if store_reachable { 1.0 } else { 0.0 });
    state.draining.set(if draining { 1.0 } else { 0.0 });
}

/// The metrics' handles (no-ops until [`install`] ran).
pub fn get() -> &'static Metrics {
    METRICS.get_or_init(Metrics::new)
}

/// The text exposition of every metric, for `GET /metrics`.
pub fn render() -> Option<String> {
    let handle = HANDLE.get()?.as_ref()?;
    handle.run_upkeep();
    Some(handle.render())
}

/// Times a Redis operation into `histogram`.
pub fn observe(histogram: &Histogram, elapsed: Duration) {
    histogram.record(elapsed.as_secs_f64());
}
