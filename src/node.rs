//! A relay node: its configuration, its local lobbies (the hub) and its lobby
//! store, and the three things a session asks of them: join, leave, relay.
//!
//! The node code is the same for both stores; only the store differs.
//!
//! `Node` is the one façade of the store and the hub: its fields are private,
//! so the session and the server reach them only through the operations
//! below (the compiler checks that the session never sees the store).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio_tungstenite::tungstenite::Message;

use crate::admin::{self, ClusterView};
use crate::auth::verify::Verifier;
use crate::config::Config;
use crate::hub::{Asks, Hub, JoinAnswer, LocalLobby, frames_for_seat};
use crate::identity::Identity;
use crate::lobby::{
    Goodbye, JoinLimiter, JoinOutcome, LobbyMembership, MemberId, RateKey, Reservation,
    ResumeOutcome, ResumeSetup, StoreError, StoreHealth, WatchOutcome,
};
use crate::metrics;
use crate::outbox::Outbox;
use crate::passphrase::LobbyId;
use crate::protocol;
use crate::queue::QueueName;

/// How long a joiner waits for its own join event to come back from the
/// store before the join is undone and answered `unavailable`.
const JOIN_EVENT_TIMEOUT: Duration = Duration::from_secs(2);

/// One relay node.
#[derive(Debug)]
pub struct Node<S> {
    config: Config,
    hub: Arc<Hub>,
    store: S,
    identity: Arc<Identity>,
    /// Player authentication (its mode may be `off`).
    auth: Arc<Verifier>,
    /// Set when the node starts shutting down: `/readyz` fails, new
    /// WebSockets are refused.
    draining: AtomicBool,
}

/// What a join asks for besides its lobby (additions to protocol v1).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JoinOptions {
    /// `"resume":true`: the seat is held when the connection drops.
    pub resume: bool,
    /// `"host":true`: the member is told who is host.
    pub host: bool,
    /// `"spectators":true`: the member is told how many watch.
    pub spectators: bool,
}

impl JoinOptions {
    fn asks(self) -> Asks {
        Asks {
            host: self.host,
            spectators: self.spectators,
        }
    }
}

/// A connection's seat in a lobby.
#[derive(Debug)]
pub struct Membership {
    pub lobby: Arc<LocalLobby>,
    pub member: MemberId,
    pub seat: u8,
    /// The member opted in to resume: when its connection ends without
    /// `leave`, its seat is held rather than given up.
    pub resumable: bool,
    /// A spectator: no seat (`seat` is 0), sends nothing.
    pub spectator: bool,
}

/// Why a resume failed: nothing changed.
#[derive(Debug, thiserror::Error)]
pub enum ResumeError {
    #[error("{0}")]
    Refused(&'static str),
    #[error("the lobby store is unavailable: {0}")]
    Unavailable(#[from] StoreError),
}

/// Why a join failed.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error("the lobby is full")]
    Full,
    #[error("the queue has as many lobbies as it may have")]
    QueueFull,
    #[error("the user already holds a seat in the lobby")]
    DuplicateUser,
    #[error("nobody plays there")]
    NothingToWatch,
    #[error("the lobby has as many spectators as it may have")]
    SpectatorsFull,
    #[error("the lobby store is unavailable: {0}")]
    Unavailable(#[from] StoreError),
}

/// A fresh resume token secret: 128 random bits, hex.
fn new_secret() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// `<lobby hex>.<seat>.<secret>` → its parts.
fn parse_resume_token(token: &str) -> Option<(LobbyId, u8, &str)> {
    let mut parts = token.split('.');
    let id = LobbyId::from_hex(parts.next()?)?;
    let seat: u8 = parts.next()?.parse().ok()?;
    let secret = parts.next()?;
    let ok = parts.next().is_none()
        && seat > 0
        && secret.len() == 32
        && secret.bytes().all(|b| b.is_ascii_hexdigit());
    ok.then_some((id, seat, secret))
}

impl<S> Node<S> {
    /// The node's settings (read only).
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Player authentication: the verifier of tokens (its mode may be `off`).
    pub fn auth(&self) -> &Verifier {
        &self.auth
    }
}

impl<S> Node<S> {
    pub fn new(
        config: Config,
        hub: Arc<Hub>,
        store: S,
        identity: Arc<Identity>,
        auth: Arc<Verifier>,
    ) -> Self {
        Self {
            config,
            hub,
            store,
            identity,
            auth,
            draining: AtomicBool::new(false),
        }
    }

    /// Starts draining: `/readyz` fails from now on.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    /// Whether the node is shutting down.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }
}

impl<S: StoreHealth> Node<S> {
    /// Whether the lobby store answers (always, in memory mode).
    pub fn store_reachable(&self) -> bool {
        self.store.is_healthy()
    }

    /// Why the node cannot serve right now, if it cannot.
    pub fn not_ready_reason(&self) -> Option<&'static str> {
        if self.is_draining() {
            Some("draining")
        } else if !self.store.is_healthy() {
            Some("lobby store unreachable")
        } else {
            None
        }
    }

    /// The cluster as the admin view shows it: every node and lobby the
    /// store knows of, or (a store that knows only this node) this node and
    /// its local lobbies.
    pub async fn cluster_view(&self) -> Result<ClusterView, StoreError> {
        Ok(match self.store.cluster_view().await? {
            Some(view) => view,
            None => admin::local_view(
                &self.config.node_id,
                &self.identity.key(),
                &self.hub,
                self.store.local_queues(),
            ),
        })
    }
}

impl<S: JoinLimiter> Node<S> {
    /// Whether `who` may join (or resume) once more under `--join-limit`;
    /// counts the attempt. (The store's future, returned as it is.)
    pub fn admit_join(
        &self,
        who: RateKey,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send + '_ {
        self.store.admit_join(who, self.config.limits.join_limit)
    }
}

impl<S: Goodbye> Node<S> {
    /// The node is shutting down and its members have left: the store
    /// removes what it holds about the node itself.
    pub async fn goodbye(&self) {
        self.store.goodbye().await;
    }
}

impl<S: LobbyMembership> Node<S> {
    /// Seats a new member in lobby `id` (as `user`, if authenticated). On
    /// success the member has already been sent `joined` (and `ready` if it
    /// filled the lobby), in the lobby's order, and receives everything that
    /// follows.
    pub async fn join(
        &self,
        id: LobbyId,
        user: Option<&str>,
        options: JoinOptions,
        outbox: &Outbox,
    ) -> Result<Membership, JoinError> {
        let member = self.identity.new_member(user);
        self.join_as(id, member, None, options, outbox).await
    }

    /// Quick match: seats a new member in the oldest lobby of `queue` with
    /// a free seat, or a new one, as [`Node::join`] does otherwise. The seat
    /// is reserved first (atomically, with the queue's open lobby), then
    /// this node subscribes to the lobby and the member takes the seat.
    pub async fn join_queue(
        &self,
        queue: &QueueName,
        user: Option<&str>,
        options: JoinOptions,
        outbox: &Outbox,
    ) -> Result<Membership, JoinError> {
        let capacity = self.config.lobby_capacity;
        let max_lobbies = self.config.limits.max_queue_lobbies;
        // A reservation that lapsed while this node was slow (its lobby
        // filled meanwhile) is answered `Full`: reserve again.
        for _ in 0..3 {
            let member = self.identity.new_member(user);
            let id = match self
                .store
                .reserve(queue, &member, capacity, max_lobbies)
                .await?
            {
                Reservation::Reserved(id) => id,
                Reservation::QueueFull => return Err(JoinError::QueueFull),
            };
            match self.join_as(id, member, Some(queue), options, outbox).await {
                Err(JoinError::Full) => continue,
                other => return other,
            }
        }
        Err(StoreError::Unreachable("no seat of the queue could be taken in three tries").into())
    }

    /// Spectators: `user` watches lobby `id` (of `queue`, for a quick-match
    /// lobby) without a seat, `delay` seconds behind. On success it has
    /// been sent `watching`, and receives every delivery of the lobby from
    /// then on.
    pub async fn watch(
        &self,
        id: LobbyId,
        queue: Option<&QueueName>,
        user: Option<&str>,
        options: JoinOptions,
        delay: u32,
        outbox: &Outbox,
    ) -> Result<Membership, JoinError> {
        let max = self.config.limits.max_spectators;
        if max == 0 {
            return Err(JoinError::SpectatorsFull);
        }
        let member = self.identity.new_member(user);
        let answer = JoinAnswer {
            queue: queue.map(QueueName::shared),
            delay: Some((delay, self.config.limits.outbound_queue_bytes * 4)),
            ..JoinAnswer::default()
        };
        let (lobby, activated) = self
            .attach(id, &member, outbox, answer.boxed(), options.asks())
            .await?;
        let refusal = match self.store.watch(&id, &member, max).await {
            Ok(WatchOutcome::Watching) => None,
            Ok(WatchOutcome::NothingToWatch) => Some(JoinError::NothingToWatch),
            Ok(WatchOutcome::Full) => Some(JoinError::SpectatorsFull),
            Err(e) => Some(e.into()),
        };
        if let Some(refusal) = refusal {
            self.detach(&lobby, &member).await;
            return Err(refusal);
        }
        let membership = Membership {
            lobby,
            member,
            seat: 0,
            resumable: false,
            spectator: true,
        };
        metrics::get().spectators.increment(1.0);
        match tokio::time::timeout(JOIN_EVENT_TIMEOUT, activated).await {
            Ok(Ok(_)) => Ok(membership),
            _ => {
                let _ = self.give_up(membership, false).await;
                Err(StoreError::Unreachable(
                    "the watch event did not come back from the lobby store",
                )
                .into())
            }
        }
    }

    /// Spectators: watches the game of `queue` that filled last.
    pub async fn watch_queue(
        &self,
        queue: &QueueName,
        user: Option<&str>,
        options: JoinOptions,
        delay: u32,
        outbox: &Outbox,
    ) -> Result<Membership, JoinError> {
        match self.store.latest_game(queue).await? {
            Some(id) => {
                self.watch(id, Some(queue), user, options, delay, outbox)
                    .await
            }
            None => Err(JoinError::NothingToWatch),
        }
    }

    /// Seats `member` in lobby `id` (`queue`: by its reservation there).
    async fn join_as(
        &self,
        id: LobbyId,
        member: MemberId,
        queue: Option<&QueueName>,
        options: JoinOptions,
        outbox: &Outbox,
    ) -> Result<Membership, JoinError> {
        let resumable = options.resume;
        let secret = resumable.then(new_secret);
        let setup = secret.as_ref().map(|secret| self.resume_setup(secret));
        let answer = JoinAnswer {
            resume_secret: secret.map(Into::into),
            queue: queue.map(QueueName::shared),
            delay: None,
        };
        let (lobby, activated) = match self
            .attach(id, &member, outbox, answer.boxed(), options.asks())
            .await
        {
            Ok(attached) => attached,
            Err(e) => {
                self.unreserve(queue, &id, &member).await;
                return Err(e.into());
            }
        };
        let seat = match self
            .store
            .join(
                &id,
                &member,
                self.config.lobby_capacity,
                setup.as_ref(),
                queue,
            )
            .await
        {
            Ok(JoinOutcome::Seated { seat, .. }) => seat,
            Ok(JoinOutcome::Full) => {
                self.detach(&lobby, &member).await;
                return Err(JoinError::Full);
            }
            Ok(JoinOutcome::DuplicateUser) => {
                self.detach(&lobby, &member).await;
                self.unreserve(queue, &id, &member).await;
                return Err(JoinError::DuplicateUser);
            }
            Err(e) => {
                self.detach(&lobby, &member).await;
                // The join may have happened, only its answer lost: make sure
                // no seat stays taken in this member's name.
                if let Err(cleanup) = self.store.leave(&id, &member, 0).await {
                    tracing::debug!(error = %cleanup, "cleaning up after a failed join");
                }
                self.unreserve(queue, &id, &member).await;
                return Err(e.into());
            }
        };
        let membership = Membership {
            lobby,
            member,
            seat,
            resumable,
            spectator: false,
        };
        match tokio::time::timeout(JOIN_EVENT_TIMEOUT, activated).await {
            Ok(Ok(_)) => Ok(membership),
            _ => {
                // Seated, but our own join event never came back (the
                // subscription broke): undo rather than play half-connected.
                let _ = self.leave(membership).await;
                Err(StoreError::Unreachable(
                    "the join event did not come back from the lobby store",
                )
                .into())
            }
        }
    }

    /// Gives up a quick-match reservation that no join took (best effort: it
    /// lapses by itself).
    async fn unreserve(&self, queue: Option<&QueueName>, id: &LobbyId, member: &MemberId) {
        if let Some(queue) = queue
            && let Err(e) = self
                .store
                .unreserve(queue, id, member, self.config.lobby_capacity)
                .await
        {
            tracing::debug!(error = %e, "giving a reservation up failed: it lapses by itself");
        }
    }

    /// Makes `member` a pending receiver of lobby `id` (subscribing this node
    /// if it is the first), before its join or resume becomes visible, so
    /// that nothing sent right after it is missed.
    async fn attach(
        &self,
        id: LobbyId,
        member: &MemberId,
        outbox: &Outbox,
        mut answer: Option<Box<JoinAnswer>>,
        asks: Asks,
    ) -> Result<(Arc<LocalLobby>, tokio::sync::oneshot::Receiver<u8>), StoreError> {
        loop {
            let lobby = self.hub.lobby(id);
            let mut subscribed = lobby.subscription.lock().await;
            let Some(activated) =
                lobby.add_pending(member.clone(), outbox.clone(), &mut answer, asks)
            else {
                continue; // torn down meanwhile: take the fresh one
            };
            if !*subscribed {
                if let Err(e) = self.store.subscribe(&id).await {
                    if lobby.remove(member) {
                        self.hub.forget(&lobby);
                    }
                    return Err(e);
                }
                *subscribed = true;
            }
            drop(subscribed);
            return Ok((lobby, activated));
        }
    }

    fn resume_setup(&self, secret: &str) -> ResumeSetup {
        ResumeSetup {
            secret_hash: crate::auth::user_hash(secret),
            max_messages: self.config.resume.buffer_messages,
            max_bytes: self.config.resume.buffer_bytes,
            grace: self.config.resume.grace,
        }
    }

    /// Takes a held seat back with its resume token (`<lobby hex>.<seat>.
    /// <secret>`), on this node. On success the member has been sent
    /// `resumed`, then every delivery it missed after its first `received`,
    /// and receives everything that follows. `hosted`: the member asked to
    /// be told who is host.
    pub async fn resume(
        &self,
        token: &str,
        received: u64,
        hosted: bool,
        user: Option<&str>,
        outbox: &Outbox,
    ) -> Result<Membership, ResumeError> {
        let (id, seat, secret) =
            parse_resume_token(token).ok_or(ResumeError::Refused("this is not a resume token"))?;
        let member = self.identity.new_member(user);
        let new_secret = new_secret();
        let asks = Asks {
            host: hosted,
            spectators: false,
        };
        let (lobby, activated) = self.attach(id, &member, outbox, None, asks).await?;
        let outcome = self
            .store
            .resume(
                &id,
                seat,
                &crate::auth::user_hash(secret),
                &crate::auth::user_hash(&new_secret),
                received,
                &member,
            )
            .await;
        let (players, host, sent, record, missed) = match outcome {
            Ok(ResumeOutcome::Resumed {
                players,
                host,
                sent,
                member,
                missed,
            }) => (players, host, sent, member, missed),
            Ok(ResumeOutcome::Refused(why)) => {
                self.detach(&lobby, &member).await;
                return Err(ResumeError::Refused(why.text()));
            }
            Err(e) => {
                self.detach(&lobby, &member).await;
                return Err(e.into());
            }
        };
        let membership = Membership {
            lobby,
            member: record,
            seat,
            resumable: true,
            spectator: false,
        };
        if !matches!(
            tokio::time::timeout(JOIN_EVENT_TIMEOUT, activated).await,
            Ok(Ok(_))
        ) {
            // Our own resume event never came back: hold the seat again.
            let _ = self.drop_member(membership).await;
            return Err(StoreError::Unreachable(
                "the resume event did not come back from the lobby store",
            )
            .into());
        }
        let replay = frames_for_seat(missed, seat, hosted);
        let token = format!("{}.{seat}.{new_secret}", membership.lobby.hex);
        outbox.send(Message::text(protocol::resumed(
            seat,
            players,
            self.config.lobby_capacity,
            replay.len(),
            sent,
            host.filter(|_| hosted),
            &token,
        )));
        membership.lobby.finish_resume(&membership.member, replay);
        Ok(membership)
    }

    /// The connection of a member ended without `leave`: a resumable seat
    /// is held for its player (the others get `playerAway`); any other seat
    /// is given up as by [`Node::leave`].
    pub async fn drop_member(&self, membership: Membership) -> Result<(), StoreError> {
        self.give_up(membership, true).await
    }

    /// Gives up a seat: the member stops receiving at once, its earlier
    /// messages still reach the others, then they get `playerLeft`.
    pub async fn leave(&self, membership: Membership) -> Result<(), StoreError> {
        self.give_up(membership, false).await
    }

    /// The member stops receiving at once; its seat is held (`hold`, if it
    /// is resumable) or given up.
    async fn give_up(&self, membership: Membership, hold: bool) -> Result<(), StoreError> {
        let Membership {
            lobby,
            member,
            seat,
            resumable,
            spectator,
        } = membership;
        let mut subscribed = lobby.subscription.lock().await;
        let last = lobby.remove(&member);
        if spectator {
            metrics::get().spectators.decrement(1.0);
            let result = self.store.unwatch(&lobby.id, &member).await;
            if last {
                self.retire(&lobby, &mut subscribed).await;
            }
            return result;
        }
        // A seat that turns out not to be resumable, or a store that cannot
        // be reached, gives the seat up (a leave is retried until it goes
        // through).
        let held = hold
            && resumable
            && matches!(self.store.away(&lobby.id, &member, seat).await, Ok(true));
        let result = if held {
            metrics::get().seats_held.increment(1);
            Ok(())
        } else {
            self.store.leave(&lobby.id, &member, seat).await
        };
        if last {
            self.retire(&lobby, &mut subscribed).await;
        }
        result
    }

    /// Relays a game message from `membership`'s seat to the other members.
    /// (Not an `async fn`: the store's future is returned as it is, without
    /// a wrapper holding a second copy of the arguments.)
    pub fn relay<'a>(
        &'a self,
        membership: &'a Membership,
        message: Message,
        sender: &'a Outbox,
    ) -> impl Future<Output = Result<(), StoreError>> + Send + 'a {
        self.store.publish(
            &membership.lobby.id,
            &*membership.lobby,
            &membership.member,
            membership.seat,
            message,
            sender,
        )
    }

    /// Removes a member that never got a seat.
    async fn detach(&self, lobby: &Arc<LocalLobby>, member: &MemberId) {
        let mut subscribed = lobby.subscription.lock().await;
        if lobby.remove(member) {
            self.retire(lobby, &mut subscribed).await;
        }
    }

    /// The last local member is gone: stop receiving the lobby's events and
    /// forget it. Runs under the lobby's subscription lock, so a joiner that
    /// races us waits and then starts over with a fresh lobby.
    async fn retire(&self, lobby: &Arc<LocalLobby>, subscribed: &mut bool) {
        if *subscribed {
            if let Err(e) = self.store.unsubscribe(&lobby.id).await {
                tracing::warn!(lobby = lobby.id.short(), error = %e, "unsubscribe failed");
            }
            *subscribed = false;
        }
        self.hub.forget(lobby);
    }
}

#[cfg(test)]
mod tests;
