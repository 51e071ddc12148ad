//! Reading pub/sub: the store's subscribe/unsubscribe handle ([`Subscriptions`]),
//! the connections whose messages go to the hub as they are read
//! ([`Deliver`]), and, with one Redis, the task that keeps the one pub/sub
//! connection up ([`run_subscriber`]). In a cluster the sharded connections
//! are kept by `sharded.rs`, which uses the same [`Deliver`].

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use redis::PushKind;
use redis::aio::MultiplexedConnection;
use tokio::sync::{mpsc, oneshot, watch};

use super::connections::{CONNECT_TIMEOUT, MAX_BACKOFF, RESPONSE_TIMEOUT, timed};
use super::envelope;
use super::keys::{channel, channel_of, lobby_of_channel};
use super::liveness::{Liveness, is_reaped, lose_everything};
use crate::lobby::{EventSink, StoreError};
use crate::metrics;
use crate::passphrase::LobbyId;

/// What the store asks of the sharded pub/sub manager (`sharded.rs`).
pub enum Request {
    Subscribe(LobbyId, oneshot::Sender<Result<(), StoreError>>),
    Unsubscribe(LobbyId, oneshot::Sender<Result<(), StoreError>>),
}

/// The subscribe/unsubscribe handle of pub/sub: the one connection to a
/// single Redis, or the manager of a cluster's sharded subscriptions.
#[derive(Clone)]
pub enum Subscriptions {
    Single(MultiplexedConnection),
    Cluster(mpsc::Sender<Request>),
}

impl Subscriptions {
    pub async fn subscribe(&mut self, lobby: &LobbyId) -> Result<(), StoreError> {
        match self {
            Subscriptions::Single(conn) => timed(conn.subscribe(channel_of(lobby))).await,
            Subscriptions::Cluster(manager) => {
                let (reply, answer) = oneshot::channel();
                ask(manager, Request::Subscribe(*lobby, reply), answer).await
            }
        }
    }

    pub async fn unsubscribe(&mut self, lobby: &LobbyId) -> Result<(), StoreError> {
        match self {
            Subscriptions::Single(conn) => timed(conn.unsubscribe(channel_of(lobby))).await,
            Subscriptions::Cluster(manager) => {
                let (reply, answer) = oneshot::channel();
                ask(manager, Request::Unsubscribe(*lobby, reply), answer).await
            }
        }
    }
}

/// Asks the sharded pub/sub manager and waits for its answer (bounded: it
/// may be busy following a failover).
async fn ask(
    manager: &mpsc::Sender<Request>,
    request: Request,
    answer: oneshot::Receiver<Result<(), StoreError>>,
) -> Result<(), StoreError> {
    let asked = async {
        manager
            .send(request)
            .await
            .map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    };
    match tokio::time::timeout(CONNECT_TIMEOUT + 2 * RESPONSE_TIMEOUT, asked).await {
        Ok(result) => result,
        Err(_) => Err(StoreError::Unreachable(
            "Redis pub/sub did not answer in time",
        )),
    }
}

/// Where a pub/sub connection's pushes go. Messages are handed to the hub
/// right where the connection's reading task parses them: no queue and no
/// other task in between, so a relayed message wakes no task of this node
/// but its recipient's. Everything else the connection pushes (the end of a
/// subscription, its own end) goes to `others`, for the task that keeps the
/// connection.
pub struct Deliver {
    pub hub: Arc<dyn EventSink>,
    pub others: mpsc::UnboundedSender<redis::PushInfo>,
}

impl redis::aio::AsyncPushSender for Deliver {
    fn send(&self, push: redis::PushInfo) -> Result<(), redis::aio::SendError> {
        match push.kind {
            PushKind::Message | PushKind::SMessage => {
                if let (
                    Some(redis::Value::BulkString(name)),
                    Some(redis::Value::BulkString(payload)),
                ) = (push.data.first(), push.data.get(1))
                    && let Ok(name) = std::str::from_utf8(name)
                {
                    dispatch(&*self.hub, name, payload);
                }
                Ok(())
            }
            // Confirmations of what the node asked for.
            PushKind::Subscribe | PushKind::SSubscribe => Ok(()),
            _ => self.others.send(push).map_err(|_| redis::aio::SendError),
        }
    }
}

/// A pub/sub connection from `client` (RESP3) whose messages go to the hub,
/// and the receiver of its other pushes.
pub async fn pubsub_connection(
    client: &redis::Client,
    hub: &Arc<dyn EventSink>,
) -> redis::RedisResult<(
    MultiplexedConnection,
    mpsc::UnboundedReceiver<redis::PushInfo>,
)> {
    let (others, pushes) = mpsc::unbounded_channel();
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_response_timeout(Some(RESPONSE_TIMEOUT))
        .set_push_sender(Deliver {
            hub: hub.clone(),
            others,
        });
    let conn = client
        .get_multiplexed_async_connection_with_config(&config)
        .await?;
    Ok((conn, pushes))
}

/// Keeps one pub/sub connection up; its messages go to the hub as they are
/// read ([`Deliver`]). Pings it to notice a dead connection; after a
/// reconnect it subscribes again to every lobby of this node and asks for a
/// resync (what happened while it was away was not delivered).
pub async fn run_subscriber(liveness: Arc<Liveness>, slot: watch::Sender<Option<Subscriptions>>) {
    let link = &liveness.held.link;
    let ping_every = link.node_timeout / 3;
    let mut backoff = Duration::from_millis(50);
    let mut first = true;
    let Some(client) = link.pubsub_client() else {
        return;
    };
    loop {
        match tokio::time::timeout(CONNECT_TIMEOUT, pubsub_connection(client, &liveness.hub)).await
        {
            Ok(Ok((mut conn, mut pushes))) => {
                // Back after a cut: if the others reaped this node meanwhile,
                // its members are gone, and must not hear the lobby again
                // (the leave events that said so were missed).
                if !first {
                    match is_reaped(&liveness).await {
                        Ok(true) => lose_everything(&liveness, &liveness.identity.key()),
                        Ok(false) => {}
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot check whether this node was reaped");
                            tokio::time::sleep(backoff).await;
                            backoff = (backoff * 2).min(MAX_BACKOFF);
                            continue;
                        }
                    }
                }
                let channels: Vec<String> = liveness
                    .hub
                    .lobby_ids()
                    .iter()
                    .map(|id| channel(&id.to_string()))
                    .collect();
                let resubscribed =
                    channels.is_empty() || timed(conn.subscribe(&channels)).await.is_ok();
                if resubscribed {
                    slot.send_replace(Some(Subscriptions::Single(conn.clone())));
                    link.health.pubsub_ok.store(true, Ordering::Relaxed);
                    backoff = Duration::from_millis(50);
                    tracing::info!(lobbies = channels.len(), "pub/sub connected");
                    if !first {
                        metrics::get().pubsub_reconnects.increment(1);
                        link.health.resync.notify_one();
                    }
                    first = false;
                    let mut ping = tokio::time::interval(ping_every);
                    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    loop {
                        tokio::select! {
                            push = pushes.recv() => match push {
                                Some(push) if push.kind == PushKind::Disconnection => break,
                                Some(_) => {}
                                None => break,
                            },
                            _ = ping.tick() => {
                                if timed(redis::cmd("PING").query_async::<redis::Value>(&mut conn)).await.is_err() {
                                    tracing::warn!("pub/sub connection does not answer pings");
                                    break;
                                }
                            }
                        }
                    }
                    slot.send_replace(None);
                    link.health.pubsub_ok.store(false, Ordering::Relaxed);
                    metrics::get().redis_errors_pubsub.increment(1);
                    tracing::warn!("pub/sub connection lost, reconnecting");
                }
            }
            Ok(Err(e)) if e.kind() == redis::ErrorKind::RESP3NotSupported => tracing::error!(
                error = %e,
                "this Redis is too old: lobby-relay needs Redis 6.0 or later (pub/sub over RESP3)"
            ),
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot connect to Redis pub/sub"),
            Err(_) => tracing::warn!("connecting to Redis pub/sub timed out"),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Decodes one pub/sub message and hands it to the hub.
fn dispatch(hub: &dyn EventSink, channel_name: &str, payload: &[u8]) {
    let Some(lobby) = lobby_of_channel(channel_name) else {
        return;
    };
    let Some(event) = envelope::decode(payload) else {
        match payload.first() {
            // A newer node's event (a rolling upgrade): not for this one.
            Some(&tag) if !envelope::is_known(tag) => tracing::debug!(
                tag = %char::from(tag),
                "a lobby event of a newer version, skipped"
            ),
            _ => tracing::warn!(
                len = payload.len(),
                "undecodable message on a lobby channel"
            ),
        }
        return;
    };
    hub.deliver(&lobby, event);
}
