//! Lobbies shared through Redis: stateless nodes, any number of them.
//!
//! - Membership: one hash per lobby, `lr:lobby:{<sha256 hex>}`, field = seat
//!   number, value = member id. Changed only by the Lua scripts `join.lua`
//!   and `leave.lua`, which are atomic, so a race of joiners never overfills
//!   a lobby, and which publish the join/leave event themselves.
//! - Fan-out: one pub/sub channel per lobby, `lr:chan:{<sha256 hex>}`. A
//!   node subscribes only to the lobbies it has members in.
//! - Order: every publish of this node goes through one publisher task and
//!   one multiplexed connection, in batches (one pipeline per batch), so a
//!   sender's messages keep their order; a leave waits until the member's
//!   earlier messages are out before it runs.
//!
//! The `{...}` around the hash is a Redis Cluster hash tag: a lobby's key and
//! channel live in the same slot.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use redis::aio::{ConnectionManager, ConnectionManagerConfig, PubSubSink};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::Utf8Bytes;
use tokio_util::sync::CancellationToken;

use super::{JoinOutcome, LobbyEvent, LobbyStore, MemberId, StoreError};
use crate::hub::{Hub, LocalLobby};
use crate::passphrase::LobbyId;

/// Prefix of every Redis key and channel of lobby-relay.
pub const PREFIX: &str = "lr:";
const CHANNEL_PREFIX: &str = "lr:chan:{";

/// The membership hash of a lobby.
pub fn lobby_key(hex: &str) -> String {
    format!("lr:lobby:{{{hex}}}")
}

/// The pub/sub channel of a lobby.
pub fn channel(hex: &str) -> String {
    format!("{CHANNEL_PREFIX}{hex}}}")
}

/// The lobby of a channel name, if it is one of ours.
fn lobby_of_channel(name: &str) -> Option<LobbyId> {
    LobbyId::from_hex(name.strip_prefix(CHANNEL_PREFIX)?.strip_suffix('}')?)
}

/// How many queued publishes go into one pipeline at most.
const PUBLISH_BATCH: usize = 1024;
/// Room in the publish queue; a full queue slows the senders down.
const PUBLISH_QUEUE: usize = 16 * 1024;
/// Longest wait for a Redis command before answering `unavailable`.
const RESPONSE_TIMEOUT: Duration = Duration::from_millis(1000);
/// Longest wait for a connection to Redis.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Longest pause between two attempts to reconnect the pub/sub connection.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// The envelope of a lobby event on a pub/sub channel: one tag byte, then
/// the fields below. `J` and `L` are written by the Lua scripts.
mod envelope {
    pub const TEXT: u8 = b'T'; // from_seat, payload
    pub const BINARY: u8 = b'B'; // from_seat, payload
    pub const JOINED: u8 = b'J'; // seat, players, capacity, member id
    pub const LEFT: u8 = b'L'; // seat, players
}

/// Lobbies in Redis.
pub struct RedisStore {
    /// Commands and scripts; reconnects by itself.
    conn: ConnectionManager,
    /// The ordered path of every publish of this node.
    publisher: mpsc::Sender<PublishOp>,
    /// Subscribe/unsubscribe handle of the current pub/sub connection; `None`
    /// while it is being (re-)established.
    sink: watch::Receiver<Option<PubSubSink>>,
    join_script: redis::Script,
    leave_script: redis::Script,
    /// Stops the background tasks when the store is dropped.
    stop: CancellationToken,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore").finish_non_exhaustive()
    }
}

enum PublishOp {
    Publish {
        channel: String,
        payload: Vec<u8>,
    },
    /// Acknowledged once every publish queued before it has been sent.
    Barrier(oneshot::Sender<()>),
}

impl RedisStore {
    /// Starts the store's connections. Does not wait for Redis: a node whose
    /// Redis is down starts anyway and answers `unavailable` until it is back.
    pub fn start(url: &str, hub: Arc<Hub>) -> Result<Self, StoreError> {
        let client = redis::Client::open(url)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            .set_number_of_retries(2)
            .set_max_delay(MAX_BACKOFF);
        let conn = ConnectionManager::new_lazy_with_config(client.clone(), config)?;
        let stop = CancellationToken::new();
        let (publisher, queue) = mpsc::channel(PUBLISH_QUEUE);
        tokio::spawn(
            stop.clone()
                .run_until_cancelled_owned(run_publisher(conn.clone(), queue)),
        );
        let (sink_slot, sink) = watch::channel(None);
        tokio::spawn(
            stop.clone()
                .run_until_cancelled_owned(run_subscriber(client, hub, sink_slot)),
        );
        Ok(Self {
            conn,
            publisher,
            sink,
            join_script: redis::Script::new(include_str!("join.lua")),
            leave_script: redis::Script::new(include_str!("leave.lua")),
            stop,
        })
    }

    /// The current pub/sub connection, waiting a moment for it if it is
    /// being (re-)established.
    async fn sink(&self) -> Result<PubSubSink, StoreError> {
        let mut sink = self.sink.clone();
        match tokio::time::timeout(CONNECT_TIMEOUT, sink.wait_for(Option::is_some)).await {
            Ok(Ok(current)) => Ok(current.clone().expect("waited for Some")),
            _ => Err(StoreError::Protocol(
                "not connected to Redis pub/sub".into(),
            )),
        }
    }

    async fn enqueue(&self, op: PublishOp) -> Result<(), StoreError> {
        self.publisher
            .send(op)
            .await
            .map_err(|_| StoreError::Closed)
    }
}

impl Drop for RedisStore {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn timed<T>(fut: impl Future<Output = redis::RedisResult<T>>) -> Result<T, StoreError> {
    match tokio::time::timeout(RESPONSE_TIMEOUT, fut).await {
        Ok(result) => Ok(result?),
        Err(_) => Err(StoreError::Protocol("Redis did not answer in time".into())),
    }
}

impl LobbyStore for RedisStore {
    async fn subscribe(&self, lobby: &LobbyId) -> Result<(), StoreError> {
        let mut sink = self.sink().await?;
        timed(sink.subscribe(channel(&lobby.to_string()))).await
    }

    async fn unsubscribe(&self, lobby: &LobbyId) -> Result<(), StoreError> {
        let mut sink = self.sink().await?;
        timed(sink.unsubscribe(channel(&lobby.to_string()))).await
    }

    async fn join(
        &self,
        lobby: &LobbyId,
        member: &MemberId,
        capacity: u8,
    ) -> Result<JoinOutcome, StoreError> {
        let hex = lobby.to_string();
        let mut conn = self.conn.clone();
        let (seat, players): (i64, i64) = timed(
            self.join_script
                .key(lobby_key(&hex))
                .arg(&**member)
                .arg(capacity)
                .arg(channel(&hex))
                .invoke_async(&mut conn),
        )
        .await?;
        match (u8::try_from(seat), u8::try_from(players)) {
            (Ok(0), _) => Ok(JoinOutcome::Full),
            (Ok(seat), Ok(players)) => Ok(JoinOutcome::Seated { seat, players }),
            _ => Err(StoreError::Protocol(format!(
                "join.lua returned seat {seat}, players {players}"
            ))),
        }
    }

    async fn leave(&self, lobby: &LobbyId, member: &MemberId, seat: u8) -> Result<(), StoreError> {
        // The member's earlier messages must reach the others before its
        // `playerLeft` does: wait until the publisher has sent them.
        let (tx, rx) = oneshot::channel();
        self.enqueue(PublishOp::Barrier(tx)).await?;
        rx.await.map_err(|_| StoreError::Closed)?;
        let hex = lobby.to_string();
        let mut conn = self.conn.clone();
        let _remaining: i64 = timed(
            self.leave_script
                .key(lobby_key(&hex))
                .arg(seat)
                .arg(&**member)
                .arg(channel(&hex))
                .invoke_async(&mut conn),
        )
        .await?;
        Ok(())
    }

    async fn publish(
        &self,
        lobby: &Arc<LocalLobby>,
        from_seat: u8,
        message: Message,
    ) -> Result<(), StoreError> {
        let (tag, data): (u8, &[u8]) = match &message {
            Message::Text(text) => (envelope::TEXT, text.as_bytes()),
            Message::Binary(data) => (envelope::BINARY, data),
            _ => return Ok(()),
        };
        let mut payload = Vec::with_capacity(2 + data.len());
        payload.push(tag);
        payload.push(from_seat);
        payload.extend_from_slice(data);
        self.enqueue(PublishOp::Publish {
            channel: channel(&lobby.hex),
            payload,
        })
        .await
    }
}

/// Sends queued publishes in pipelines: while one batch is on its way, the
/// next one accumulates. One task and one connection keep the order.
async fn run_publisher(mut conn: ConnectionManager, mut queue: mpsc::Receiver<PublishOp>) {
    let mut ops = Vec::with_capacity(PUBLISH_BATCH);
    let mut barriers = Vec::new();
    let mut pipe = redis::pipe();
    while queue.recv_many(&mut ops, PUBLISH_BATCH).await > 0 {
        let mut publishes = 0usize;
        for op in ops.drain(..) {
            match op {
                PublishOp::Publish { channel, payload } => {
                    pipe.cmd("PUBLISH").arg(channel).arg(payload).ignore();
                    publishes += 1;
                }
                PublishOp::Barrier(ack) => barriers.push(ack),
            }
        }
        if publishes > 0 {
            if let Err(e) = timed(pipe.query_async::<()>(&mut conn)).await {
                // Pub/sub is at-most-once: what could not be published is
                // lost, as it would be for a subscriber that was away.
                tracing::warn!(error = %e, lost = publishes, "publishing to Redis failed");
            }
            pipe.clear();
        }
        for ack in barriers.drain(..) {
            let _ = ack.send(());
        }
    }
}

/// Keeps one pub/sub connection up and turns its messages into hub events.
/// After a reconnect it subscribes again to every lobby of this node.
async fn run_subscriber(
    client: redis::Client,
    hub: Arc<Hub>,
    slot: watch::Sender<Option<PubSubSink>>,
) {
    let mut backoff = Duration::from_millis(50);
    loop {
        match tokio::time::timeout(CONNECT_TIMEOUT, client.get_async_pubsub()).await {
            Ok(Ok(pubsub)) => {
                let (mut sink, mut stream) = pubsub.split();
                let channels: Vec<String> = hub
                    .lobby_ids()
                    .iter()
                    .map(|id| channel(&id.to_string()))
                    .collect();
                let resubscribed =
                    channels.is_empty() || timed(sink.subscribe(&channels)).await.is_ok();
                if resubscribed {
                    slot.send_replace(Some(sink));
                    backoff = Duration::from_millis(50);
                    tracing::info!(lobbies = channels.len(), "pub/sub connected");
                    while let Some(msg) = stream.next().await {
                        dispatch(&hub, msg.get_channel_name(), msg.get_payload_bytes());
                    }
                    slot.send_replace(None);
                    tracing::warn!("pub/sub connection lost, reconnecting");
                }
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot connect to Redis pub/sub"),
            Err(_) => tracing::warn!("connecting to Redis pub/sub timed out"),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Decodes one pub/sub message and hands it to the hub.
fn dispatch(hub: &Hub, channel_name: &str, payload: &[u8]) {
    let Some(lobby) = lobby_of_channel(channel_name) else {
        return;
    };
    let Some(event) = decode(payload) else {
        tracing::warn!(
            len = payload.len(),
            "undecodable message on a lobby channel"
        );
        return;
    };
    hub.dispatch(&lobby, event);
}

fn decode(payload: &[u8]) -> Option<LobbyEvent> {
    let (&tag, rest) = payload.split_first()?;
    match tag {
        envelope::TEXT => {
            let (&from_seat, data) = rest.split_first()?;
            let text = Utf8Bytes::try_from(Bytes::copy_from_slice(data)).ok()?;
            Some(LobbyEvent::Relay {
                from_seat,
                message: Message::Text(text),
            })
        }
        envelope::BINARY => {
            let (&from_seat, data) = rest.split_first()?;
            Some(LobbyEvent::Relay {
                from_seat,
                message: Message::Binary(Bytes::copy_from_slice(data)),
            })
        }
        envelope::JOINED => match rest {
            [seat, players, capacity, member @ ..] => Some(LobbyEvent::Joined {
                seat: *seat,
                players: *players,
                capacity: *capacity,
                member: std::str::from_utf8(member).ok()?.into(),
            }),
            _ => None,
        },
        envelope::LEFT => match rest {
            [seat, players] => Some(LobbyEvent::Left {
                seat: *seat,
                players: *players,
            }),
            _ => None,
        },
        _ => None,
    }
}

/// Lets the compiler check that the envelope shapes written in Lua and read
/// here agree.
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_carry_the_hash_as_a_cluster_hash_tag() {
        let hex = "ab".repeat(32);
        assert_eq!(lobby_key(&hex), format!("lr:lobby:{{{hex}}}"));
        assert_eq!(channel(&hex), format!("lr:chan:{{{hex}}}"));
        assert_eq!(lobby_of_channel(&channel(&hex)).unwrap().to_string(), hex);
        assert!(lobby_of_channel("lr:chan:{nope}").is_none());
        assert!(lobby_of_channel("other").is_none());
        assert!(PREFIX.starts_with("lr"));
    }

    #[test]
    fn decodes_every_envelope() {
        match decode(b"T\x02{\"type\":\"x\"}") {
            Some(LobbyEvent::Relay {
                from_seat: 2,
                message: Message::Text(t),
            }) => assert_eq!(t.as_str(), "{\"type\":\"x\"}"),
            other => panic!("{other:?}"),
        }
        match decode(b"B\x01\x00\xff") {
            Some(LobbyEvent::Relay {
                from_seat: 1,
                message: Message::Binary(b),
            }) => assert_eq!(&b[..], b"\x00\xff"),
            other => panic!("{other:?}"),
        }
        match decode(b"J\x02\x02\x02node-a/7") {
            Some(LobbyEvent::Joined {
                seat: 2,
                players: 2,
                capacity: 2,
                member,
            }) => assert_eq!(&*member, "node-a/7"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            decode(b"L\x01\x01"),
            Some(LobbyEvent::Left {
                seat: 1,
                players: 1
            })
        ));
        for bad in [
            &b""[..],
            b"T",
            b"T\x01\xff\xfe",
            b"J\x01",
            b"L\x01",
            b"X\x01\x01",
        ] {
            assert!(decode(bad).is_none(), "{bad:?}");
        }
    }
}
