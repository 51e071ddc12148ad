//! A relay node: its configuration, its local lobbies (the hub) and its lobby
//! store, and the three things a session asks of them: join, leave, relay.
//!
//! The node code is the same for both stores; only the store differs.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio_tungstenite::tungstenite::Message;

use crate::config::Config;
use crate::hub::{Hub, LocalLobby};
use crate::identity::Identity;
use crate::lobby::{JoinOutcome, LobbyStore, MemberId, StoreError};
use crate::outbox::Outbox;
use crate::passphrase::LobbyId;

/// How long a joiner waits for its own join event to come back from the
/// store before the join is undone and answered `unavailable`.
const JOIN_EVENT_TIMEOUT: Duration = Duration::from_secs(2);

/// One relay node.
#[derive(Debug)]
pub struct Node<S> {
    pub config: Config,
    pub hub: Arc<Hub>,
    pub store: S,
    pub identity: Arc<Identity>,
    /// Set when the node starts shutting down: `/readyz` fails, new
    /// WebSockets are refused.
    draining: AtomicBool,
}

/// A connection's seat in a lobby.
#[derive(Debug)]
pub struct Membership {
    pub lobby: Arc<LocalLobby>,
    pub member: MemberId,
    pub seat: u8,
}

/// Why a join failed.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error("the lobby is full")]
    Full,
    #[error("the lobby store is unavailable: {0}")]
    Unavailable(#[from] StoreError),
}

impl<S: LobbyStore> Node<S> {
    pub fn new(config: Config, hub: Arc<Hub>, store: S, identity: Arc<Identity>) -> Self {
        Self {
            config,
            hub,
            store,
            identity,
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

    /// Seats `member` in lobby `id`. On success the member has already been
    /// sent `joined` (and `ready` if it filled the lobby), in the lobby's
    /// order, and receives everything that follows.
    pub async fn join(&self, id: LobbyId, outbox: &Outbox) -> Result<Membership, JoinError> {
        let member = self.identity.new_member();
        // Be a receiver of the lobby's events before the join becomes
        // visible, so that nothing sent right after `ready` is missed.
        let (lobby, activated) = loop {
            let lobby = self.hub.lobby(id);
            let mut subscribed = lobby.subscription.lock().await;
            let Some(activated) = lobby.add_pending(member.clone(), outbox.clone()) else {
                continue; // torn down meanwhile: take the fresh one
            };
            if !*subscribed {
                if let Err(e) = self.store.subscribe(&id).await {
                    if lobby.remove(&member) {
                        self.hub.forget(&lobby);
                    }
                    return Err(e.into());
                }
                *subscribed = true;
            }
            drop(subscribed);
            break (lobby, activated);
        };
        let seat = match self
            .store
            .join(&id, &member, self.config.lobby_capacity)
            .await
        {
            Ok(JoinOutcome::Seated { seat, .. }) => seat,
            Ok(JoinOutcome::Full) => {
                self.detach(&lobby, &member).await;
                return Err(JoinError::Full);
            }
            Err(e) => {
                self.detach(&lobby, &member).await;
                // The join may have happened, only its answer lost: make sure
                // no seat stays taken in this member's name.
                if let Err(cleanup) = self.store.leave(&id, &member, 0).await {
                    tracing::debug!(error = %cleanup, "cleaning up after a failed join");
                }
                return Err(e.into());
            }
        };
        let membership = Membership {
            lobby,
            member,
            seat,
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

    /// Gives up a seat: the member stops receiving at once, its earlier
    /// messages still reach the others, then they get `playerLeft`.
    pub async fn leave(&self, membership: Membership) -> Result<(), StoreError> {
        let Membership {
            lobby,
            member,
            seat,
        } = membership;
        let mut subscribed = lobby.subscription.lock().await;
        let last = lobby.remove(&member);
        let result = self.store.leave(&lobby.id, &member, seat).await;
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
    ) -> impl Future<Output = Result<(), StoreError>> + Send + 'a {
        self.store.publish(
            &membership.lobby,
            &membership.member,
            membership.seat,
            message,
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
