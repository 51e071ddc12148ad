//! The ordered path of this node's game messages to Redis.
//!
//! Every publish of this node goes through one publisher task and one
//! multiplexed connection, in batches (one pipeline per batch); in a cluster
//! through the lane of its lobby's slot (one task per slot), so a sender's
//! messages keep their order; a leave waits until the member's earlier
//! messages are out before it runs ([`Publisher::barrier`]).
//!
//! What waits for Redis is bounded ([`Claim`]: per connection and per node)
//! and never delivered late: a message not in Redis [`MAX_WAIT`] after the
//! relay took it is dropped (before it is sent, or by `relay.lua` on
//! Redis's clock, see [`RedisClock`]), and its sender told `unavailable`.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message;

use super::connections::{Conn, is_no_script, timed};
use super::envelope;
use super::held::HeldSeats;
use super::keys::{channel_of, lobby_key_of_channel};
use super::scripts::{HeldReply, now_ms, redis_time_of, relay_counts};
use super::topology;
use super::waiting::{Claim, DropReport, MAX_WAIT, RedisClock};
use crate::lobby::{MemberId, StoreError};
use crate::metrics;
use crate::outbox::Outbox;
use crate::passphrase::LobbyId;

/// The publisher: its queue (one Redis), its lanes (a cluster), and the
/// bounds and clocks of what waits for Redis.
pub struct Publisher {
    held: Arc<HeldSeats>,
    /// Redis is a cluster: publishes go to their slot's lane.
    cluster: bool,
    /// With one Redis, the queue of the publisher task.
    queue: mpsc::Sender<PublishOp>,
    /// In a cluster, the publisher's lanes (one per slot), to which the
    /// sessions hand their publishes themselves.
    lanes: Mutex<Lanes>,
    /// Bytes of game messages waiting for Redis (see [`Claim`]).
    waiting: Arc<AtomicUsize>,
    /// With one Redis: a batch of publishes went unanswered and Redis has
    /// not answered since. Game messages are then refused at once when
    /// their bounds are full, instead of waiting for room.
    stalled: AtomicBool,
    /// With one Redis: when the batch of publishes now on its way was sent
    /// (ms since the store started, plus one), 0 when none is.
    batch_out_since: std::sync::atomic::AtomicU64,
    /// Redis's clock, for the deadlines `relay.lua` checks.
    redis_clock: RedisClock,
    started: Instant,
}

impl Publisher {
    /// The publisher of a store, its task started (with one Redis; in a
    /// cluster the lanes start as lobbies need them).
    pub fn start(held: Arc<HeldSeats>) -> Arc<Self> {
        let (queue, ops) = mpsc::channel(PUBLISH_QUEUE);
        let publisher = Arc::new(Publisher {
            cluster: held.link.is_cluster(),
            held,
            queue,
            lanes: Mutex::default(),
            waiting: Arc::new(AtomicUsize::new(0)),
            stalled: AtomicBool::new(false),
            batch_out_since: std::sync::atomic::AtomicU64::new(0),
            redis_clock: RedisClock::new(),
            started: Instant::now(),
        });
        publisher
            .held
            .link
            .spawn_until_stopped(run_publisher(publisher.clone(), ops));
        publisher
    }

    /// Milliseconds since the store started (a clock for lanes' progress).
    fn elapsed_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Loads the relay script through `conn` (`SCRIPT LOAD`, which goes to
    /// every master of a cluster).
    async fn load_relay_script(&self, conn: &mut Conn) -> Result<String, StoreError> {
        timed(self.held.scripts.relay.prepare_invoke().load_async(conn)).await
    }

    /// Whether Redis looks frozen or gone to the publisher: a batch went
    /// unanswered, or the one on its way has been for [`STALL_AFTER`].
    /// Senders then get `unavailable` at once rather than wait for room: a
    /// session that waits stops reading, and what its client sends
    /// meanwhile would be relayed late.
    fn is_stalled(&self) -> bool {
        if self.stalled.load(Ordering::Relaxed) {
            return true;
        }
        let out = self.batch_out_since.load(Ordering::Relaxed);
        out != 0 && self.elapsed_ms() + 1 >= out + STALL_AFTER.as_millis() as u64
    }

    /// Resolves once every publish to `lobby` queued before it has been sent
    /// (with one Redis: every publish queued before it).
    pub async fn barrier(self: &Arc<Self>, lobby: LobbyId) -> Result<(), StoreError> {
        let (ack, done) = oneshot::channel();
        let op = PublishOp::Barrier { lobby, ack };
        let (queue, op) = if self.cluster {
            match Lanes::route(self, op) {
                Routed::Done => return done.await.map_err(|_| StoreError::Closed),
                Routed::Wait(queue, op) => (queue, op),
            }
        } else {
            (self.queue.clone(), op)
        };
        queue.send(op).await.map_err(|_| StoreError::Closed)?;
        done.await.map_err(|_| StoreError::Closed)
    }

    /// Queues a game message of `member` (in `from_seat`) to `lobby`; see
    /// [`LobbyStore::publish`](crate::lobby::LobbyStore::publish).
    pub fn publish(
        self: &Arc<Self>,
        lobby: &LobbyId,
        member: &MemberId,
        from_seat: u8,
        message: &Message,
        sender: &Outbox,
    ) -> impl Future<Output = Result<(), StoreError>> + Send + use<> {
        // Queued at once, not when first polled (the caller awaits at once
        // anyway): the future returned is then a few bytes, not a copy of
        // the message and the channel's send state, and every session holds
        // room for it.
        let queued = match envelope::encode_relay(from_seat, message) {
            None => Queued::Done(Ok(())),
            Some(payload) => {
                let node_key: Arc<str> = member.node_key().into();
                let channel = channel_of(lobby);
                match Claim::take(&self.waiting, sender, payload.len()) {
                    Some(claim) => queue_op(
                        self,
                        PublishOp::Publish {
                            node_key,
                            channel,
                            payload,
                            claim,
                        },
                    ),
                    None if self.is_stalled() => {
                        metrics::get().dropped_backlog.increment(1);
                        Queued::Done(Err(StoreError::Backlog))
                    }
                    // Redis is answering, only busy: the sender waits for
                    // room (and reads nothing meanwhile), as with a full
                    // queue, for at most MAX_WAIT.
                    None => Queued::Waiting(Box::pin(claim_later(
                        self.clone(),
                        sender.clone(),
                        (node_key, channel, payload),
                    ))),
                }
            }
        };
        async move {
            match queued {
                Queued::Done(result) => result,
                Queued::Waiting(send) => send.await,
            }
        }
    }
}

/// How many queued publishes go into one pipeline at most.
const PUBLISH_BATCH: usize = 1024;
/// Room in the publish queue; a full queue slows the senders down.
const PUBLISH_QUEUE: usize = 16 * 1024;

/// A batch of publishes unanswered this long means Redis is not keeping up
/// (a healthy one answers in a millisecond or two).
const STALL_AFTER: Duration = Duration::from_millis(250);

enum PublishOp {
    Publish {
        /// The sender's node key: its messages go out only while its seat
        /// is still held by a member of that incarnation (`relay.lua`).
        node_key: Arc<str>,
        channel: String,
        payload: Vec<u8>,
        /// Its place in the bounds of what waits for Redis, and its sender.
        claim: Claim,
    },
    /// Acknowledged once every publish to `lobby` queued before it has been
    /// sent (with one Redis: every publish queued before it).
    Barrier {
        lobby: LobbyId,
        ack: oneshot::Sender<()>,
    },
}

/// Hands a publish to the publisher (or its lane in a cluster).
fn queue_op(publisher: &Arc<Publisher>, op: PublishOp) -> Queued {
    if publisher.cluster {
        // Straight to the lobby's lane (no router in between).
        return match Lanes::route(publisher, op) {
            Routed::Done => Queued::Done(Ok(())),
            Routed::Wait(queue, op) => Queued::Waiting(Box::pin(async move {
                queue.send(op).await.map_err(|_| StoreError::Closed)
            })),
        };
    }
    match publisher.queue.try_send(op) {
        Ok(()) => Queued::Done(Ok(())),
        Err(mpsc::error::TrySendError::Full(op)) => {
            let queue = publisher.queue.clone();
            Queued::Waiting(Box::pin(async move {
                queue.send(op).await.map_err(|_| StoreError::Closed)
            }))
        }
        Err(mpsc::error::TrySendError::Closed(_)) => Queued::Done(Err(StoreError::Closed)),
    }
}

/// Waits for room among what may wait for Redis (see [`Claim`]), then
/// queues the publish; refuses it if there is none within [`MAX_WAIT`], or
/// as soon as Redis stops answering.
async fn claim_later(
    publisher: Arc<Publisher>,
    sender: Outbox,
    (node_key, channel, payload): (Arc<str>, String, Vec<u8>),
) -> Result<(), StoreError> {
    let deadline = Instant::now() + MAX_WAIT;
    let claim = loop {
        tokio::time::sleep(Duration::from_millis(2)).await;
        if let Some(claim) = Claim::take(&publisher.waiting, &sender, payload.len()) {
            break claim;
        }
        if Instant::now() >= deadline || publisher.is_stalled() {
            metrics::get().dropped_backlog.increment(1);
            return Err(StoreError::Backlog);
        }
    };
    let op = PublishOp::Publish {
        node_key,
        channel,
        payload,
        claim,
    };
    match queue_op(&publisher, op) {
        Queued::Done(result) => result,
        Queued::Waiting(send) => send.await,
    }
}

/// A publish handed to the publisher task (or its lane), or waiting for room
/// in its queue (boxed: rare).
enum Queued {
    Done(Result<(), StoreError>),
    Waiting(Pin<Box<dyn Future<Output = Result<(), StoreError>> + Send>>),
}

/// The messages of one batch that go out in one `relay.lua` run: sent by
/// one node key (incarnation), and in a cluster to lobbies of one slot.
struct RelayRun {
    node_key: Arc<str>,
    /// A lobby key of the run, which routes it in a cluster.
    lobby_key: String,
    messages: Vec<(String, Vec<u8>)>,
    /// The messages' claims, in the same order: released once the run is
    /// answered (or dropped).
    claims: Vec<Claim>,
}

impl RelayRun {
    /// Adds a publish to the run of its node key (a batch has a handful).
    fn add(
        runs: &mut Vec<RelayRun>,
        node_key: Arc<str>,
        channel: String,
        payload: Vec<u8>,
        claim: Claim,
    ) {
        let run = match runs.iter().rposition(|run| run.node_key == node_key) {
            Some(i) => &mut runs[i],
            None => {
                runs.push(RelayRun {
                    node_key,
                    lobby_key: lobby_key_of_channel(&channel),
                    messages: Vec::new(),
                    claims: Vec::new(),
                });
                runs.last_mut().expect("just pushed")
            }
        };
        run.messages.push((channel, payload));
        run.claims.push(claim);
    }

    /// When the run's oldest message was taken by the relay.
    fn since(&self) -> Instant {
        self.claims
            .iter()
            .map(|claim| claim.since)
            .min()
            .unwrap_or_else(Instant::now)
    }

    /// The run's messages were not relayed: their senders are told.
    fn dropped(&self) {
        for claim in &self.claims {
            claim.dropped();
        }
    }
}

/// Sends queued publishes in batches: while one batch is on its way, the
/// next one accumulates.
///
/// A batch is split into runs ([`RelayRun`]) of one node key; each run is
/// one `relay.lua`, which publishes every message whose sender still holds
/// its seat. With one Redis the runs of a batch go as one pipeline of
/// `EVALSHA`s (reloaded once if Redis forgot the script), and a batch is out
/// before the next one goes. In a cluster the sessions hand each publish to
/// its slot's lane ([`Lanes`]) themselves, and the lane batches the same way
/// for its slot alone (this task then has nothing to do). A lobby's messages
/// are always in one slot, so they keep their order either way.
async fn run_publisher(publisher: Arc<Publisher>, queue: mpsc::Receiver<PublishOp>) {
    if !publisher.cluster {
        run_batches(publisher, queue, None).await;
    }
}

/// Sends what `queue` holds in batches, the next batch gathering while one
/// is out: the whole node's publishes with one Redis, one slot's in a
/// cluster (a lane, which reports its `progress`). Acknowledges the
/// barriers of a batch once its runs are sent.
///
/// What waits is bounded ([`Claim`]) and never sent late: a message that
/// waited longer than [`MAX_WAIT`] is dropped here, and `relay.lua` drops
/// one that reaches Redis past it. Once a batch went unanswered (Redis
/// frozen or gone), the next one goes only after a `PING` came back: until
/// then batches are dropped rather than piled up in the connection's
/// buffers.
async fn run_batches(
    publisher: Arc<Publisher>,
    mut queue: mpsc::Receiver<PublishOp>,
    progress: Option<Arc<std::sync::atomic::AtomicU64>>,
) {
    let mut ops = Vec::with_capacity(PUBLISH_BATCH);
    let mut runs: Vec<RelayRun> = Vec::new();
    let mut acks = Vec::new();
    let mut stalled = false;
    let mut report = DropReport::default();
    while queue.recv_many(&mut ops, PUBLISH_BATCH).await > 0 {
        for op in ops.drain(..) {
            match op {
                PublishOp::Publish { claim, .. } if claim.is_stale() => {
                    claim.dropped();
                    metrics::get().dropped_stale.increment(1);
                    report.stale += 1;
                }
                PublishOp::Publish {
                    node_key,
                    channel,
                    payload,
                    claim,
                } => RelayRun::add(&mut runs, node_key, channel, payload, claim),
                PublishOp::Barrier { ack, .. } => acks.push(ack),
            }
        }
        if stalled && !runs.is_empty() {
            stalled = !answers_ping(&publisher).await;
            if stalled {
                for run in &runs {
                    run.dropped();
                    let unsent = run.messages.len() as u64;
                    metrics::get().dropped_stale.increment(unsent);
                    report.unsent += unsent;
                }
                runs.clear();
            }
        }
        if !runs.is_empty() {
            let started = Instant::now();
            if publisher.cluster {
                for run in &runs {
                    let sent = relay_run_cluster(&publisher, run).await;
                    stalled |= is_timeout(&sent);
                    settle(&publisher, std::iter::once((run, sent)), &mut report).await;
                }
            } else {
                publisher
                    .batch_out_since
                    .store(publisher.elapsed_ms() + 1, Ordering::Relaxed);
                let sent = relay_runs_single(&publisher, &runs).await;
                publisher.batch_out_since.store(0, Ordering::Relaxed);
                stalled |= sent.iter().any(is_timeout);
                settle(&publisher, runs.iter().zip(sent), &mut report).await;
            }
            metrics::observe(&metrics::get().redis_publish, started.elapsed());
            runs.clear();
        }
        if !publisher.cluster {
            // (A cluster's lanes stall one slot at a time: see LANE_STUCK.)
            publisher.stalled.store(stalled, Ordering::Relaxed);
        }
        report.log_now_and_then();
        for ack in acks.drain(..) {
            let _ = ack.send(());
        }
        if let Some(progress) = &progress {
            progress.store(publisher.elapsed_ms(), Ordering::Relaxed);
        }
    }
}

/// Whether a run went unanswered in time (Redis frozen, or the connection
/// dead).
fn is_timeout(sent: &Result<HeldReply, StoreError>) -> bool {
    matches!(sent, Err(StoreError::Unreachable(_)))
}

/// Whether Redis answers again after a run went unanswered (the `PING` goes
/// behind whatever the connection still holds).
async fn answers_ping(publisher: &Publisher) -> bool {
    let Ok(mut conn) = publisher.held.link.conn() else {
        return false;
    };
    timed(redis::cmd("PING").query_async::<()>(&mut conn))
        .await
        .is_ok()
}

/// Logs what the runs' replies say, tells the senders of what was not
/// relayed, and lists the held seats the runs overflowed.
async fn settle<'a>(
    publisher: &Publisher,
    results: impl Iterator<Item = (&'a RelayRun, Result<HeldReply, StoreError>)>,
    report: &mut DropReport,
) {
    let metrics = metrics::get();
    let mut away = Vec::new();
    for (run, result) in results {
        match result {
            Ok(reply) => {
                let (dropped, late) = relay_counts(reply.result);
                if dropped > 0 {
                    tracing::warn!(
                        node_key = &*run.node_key,
                        dropped,
                        "messages of members who no longer hold their seats were not relayed"
                    );
                }
                if late > 0 {
                    // Redis ran the run past its deadline (it was frozen
                    // meanwhile): nothing of it was relayed.
                    run.dropped();
                    report.lost += late as u64;
                    metrics.dropped_stale.increment(late as u64);
                }
                away.extend(reply.away_add);
            }
            Err(e) => {
                metrics.redis_errors_publish.increment(1);
                // Pub/sub is at-most-once: what could not be published
                // is lost, as it would be for a subscriber that was away.
                run.dropped();
                report.lost += run.messages.len() as u64;
                tracing::debug!(error = %e, lost = run.messages.len(), "publishing to Redis failed");
            }
        }
    }
    publisher.held.apply_away_or_later(away, Vec::new()).await;
}

/// Room in one slot's lane, in publishes.
const LANE_QUEUE: usize = 4096;

/// A lane that completed nothing for this long is stuck (its shard does not
/// answer: a master failing over, for seconds, up to its
/// cluster-node-timeout): new messages to its lobbies are dropped rather than
/// waited for, as pub/sub drops what a shard cannot take (a game message
/// seconds late is of no use anyway). A lane that is only busy makes its
/// senders wait, which slows them down, as with one Redis.
const LANE_STUCK: Duration = Duration::from_millis(500);

/// The publisher's lanes in a cluster: one task per slot with lobbies of
/// this node, each with its own queue, to which the sessions hand their
/// publishes. A lane sends what it has queued as
/// one `relay.lua` run (per node key), waits for the answer, and sends what
/// queued meanwhile, so a lobby's messages keep their order and batch up
/// when the shard is slow, whatever the other slots are doing: a shard that
/// is failing over delays only its own lobbies.
#[derive(Default)]
struct Lanes {
    lanes: HashMap<u16, Lane>,
    /// When dropped messages were last reported, and how many since.
    reported: Option<Instant>,
    dropped: usize,
}

struct Lane {
    queue: mpsc::Sender<PublishOp>,
    /// When the lane last finished a batch, in ms since the store started.
    progress: Arc<std::sync::atomic::AtomicU64>,
}

/// Where [`Lanes::route`] left a publish.
enum Routed {
    /// Queued, or dropped (its lane is stuck).
    Done,
    /// Its lane is full but moving: send it there, waiting for room.
    Wait(mpsc::Sender<PublishOp>, PublishOp),
}

impl Lanes {
    /// Queues `op` in the lane of its slot (started if there is none yet).
    fn route(publisher: &Arc<Publisher>, op: PublishOp) -> Routed {
        let mut lanes = publisher.lanes.lock().unwrap_or_else(|e| e.into_inner());
        lanes.queue(publisher, op)
    }

    fn queue(&mut self, publisher: &Arc<Publisher>, op: PublishOp) -> Routed {
        let slot = match &op {
            PublishOp::Publish { channel, .. } => topology::slot_number(channel),
            PublishOp::Barrier { lobby, .. } => topology::slot_number(&channel_of(lobby)),
        };
        let lane = self.lanes.entry(slot).or_insert_with(|| {
            let (queue, ops) = mpsc::channel(LANE_QUEUE);
            let progress = Arc::new(std::sync::atomic::AtomicU64::new(publisher.elapsed_ms()));
            publisher.held.link.spawn_until_stopped(run_batches(
                publisher.clone(),
                ops,
                Some(progress.clone()),
            ));
            Lane { queue, progress }
        });
        let op = match lane.queue.try_send(op) {
            Ok(()) => return Routed::Done,
            Err(mpsc::error::TrySendError::Closed(_)) => return Routed::Done,
            Err(mpsc::error::TrySendError::Full(op)) => op,
        };
        let stuck = publisher
            .elapsed_ms()
            .saturating_sub(lane.progress.load(Ordering::Relaxed))
            >= LANE_STUCK.as_millis() as u64;
        match op {
            PublishOp::Barrier { .. } => {
                // Never dropped: acknowledged once the lane gets there.
                let queue = lane.queue.clone();
                tokio::spawn(async move {
                    let _ = queue.send(op).await;
                });
            }
            PublishOp::Publish { .. } if !stuck => return Routed::Wait(lane.queue.clone(), op),
            PublishOp::Publish { claim, .. } => {
                claim.dropped();
                metrics::get().redis_errors_publish.increment(1);
                self.dropped += 1;
                if self
                    .reported
                    .is_none_or(|at| at.elapsed() >= Duration::from_secs(1))
                {
                    tracing::warn!(
                        lost = self.dropped,
                        "a Redis Cluster shard does not answer: messages to its lobbies were dropped"
                    );
                    self.reported = Some(Instant::now());
                    self.dropped = 0;
                }
            }
        }
        Routed::Done
    }
}

/// The `relay.lua` command of a run, by script hash.
fn relay_command(publisher: &Publisher, run: &RelayRun) -> redis::Cmd {
    let mut eval = redis::cmd("EVALSHA");
    eval.arg(publisher.held.scripts.relay.get_hash())
        .arg(1)
        .arg(&run.lobby_key)
        .arg(format!("{}.", run.node_key))
        .arg(publisher.redis_clock.deadline(run.since()));
    for (channel, payload) in &run.messages {
        eval.arg(channel).arg(payload);
    }
    eval
}

/// One Redis: every run of the batch in one pipeline.
async fn relay_runs_single(
    publisher: &Publisher,
    runs: &[RelayRun],
) -> Vec<Result<HeldReply, StoreError>> {
    let mut pipe = redis::pipe();
    for run in runs {
        pipe.add_command(relay_command(publisher, run));
    }
    let sent_ms = now_ms();
    let sent = async {
        let mut conn = publisher.held.link.conn()?;
        let mut sent = timed(pipe.query_async::<Vec<HeldReply>>(&mut conn)).await;
        if let Err(e) = &sent
            && is_no_script(e)
        {
            // A restarted Redis forgot the script; nothing of the batch
            // ran: load it and send the batch again.
            let loaded = publisher.load_relay_script(&mut conn).await;
            if loaded.is_ok() {
                sent = timed(pipe.query_async::<Vec<HeldReply>>(&mut conn)).await;
            }
        }
        sent
    };
    match sent.await {
        Ok(replies) => {
            if let Some(first) = replies.first() {
                publisher
                    .redis_clock
                    .sample(sent_ms, now_ms(), redis_time_of(first));
            }
            replies.into_iter().map(Ok).collect()
        }
        // A batch unanswered in time stays a timeout for every run of it
        // (`is_timeout`: the publisher then waits for a PING first).
        Err(StoreError::Unreachable(why)) => runs
            .iter()
            .map(|_| Err(StoreError::Unreachable(why)))
            .collect(),
        Err(e) => runs
            .iter()
            .map(|_| Err(StoreError::Protocol(e.to_string())))
            .collect(),
    }
}

/// A cluster: one run to the shard of its slot. A shard that forgot the
/// script (a promoted replica that never saw it) gets it loaded.
async fn relay_run_cluster(publisher: &Publisher, run: &RelayRun) -> Result<HeldReply, StoreError> {
    let mut conn = publisher.held.link.conn()?;
    let cmd = relay_command(publisher, run);
    let sent_ms = now_ms();
    let reply = timed(cmd.query_async::<HeldReply>(&mut conn)).await;
    if let Ok(reply) = &reply {
        publisher
            .redis_clock
            .sample(sent_ms, now_ms(), redis_time_of(reply));
    }
    match reply {
        Err(e) if is_no_script(&e) => {
            publisher.load_relay_script(&mut conn).await?;
            timed(cmd.query_async::<HeldReply>(&mut conn)).await
        }
        other => other,
    }
}
