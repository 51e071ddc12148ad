//! In-memory lobbies: one node alone, the embedded default.
//!
//! Membership is a map from lobby to seats under one mutex; events are handed
//! to the hub while that mutex is held, so that every member sees joins and
//! leaves in the order they happened. Relayed messages go straight to the
//! local lobby: the sender's task delivers them, in the order it read them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use governor::DefaultKeyedRateLimiter;

use tokio_tungstenite::tungstenite::Message;

use super::{JoinOutcome, LobbyEvent, LobbyStore, MemberId, RateKey, StoreError};
use crate::hub::{Hub, LocalLobby};
use crate::identity::user_of;
use crate::limits::JoinLimit;
use crate::passphrase::LobbyId;

/// Lobbies held in this process.
#[derive(Debug)]
pub struct MemoryStore {
    hub: Arc<Hub>,
    /// Seat `i` of a lobby is `seats[i - 1]`; a lobby with no member is removed.
    lobbies: Mutex<HashMap<LobbyId, Vec<Option<MemberId>>>>,
    /// Join attempts per client address (the limit is the same for the whole
    /// life of the node, so the limiter is made on first use).
    joins: OnceLock<DefaultKeyedRateLimiter<RateKey>>,
}

impl MemoryStore {
    pub fn new(hub: Arc<Hub>) -> Self {
        Self {
            hub,
            lobbies: Mutex::default(),
            joins: OnceLock::new(),
        }
    }

    /// How many lobbies exist (for tests and metrics).
    pub fn lobby_count(&self) -> usize {
        self.lobbies.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

impl LobbyStore for MemoryStore {
    async fn subscribe(&self, _lobby: &LobbyId) -> Result<(), StoreError> {
        Ok(())
    }

    async fn unsubscribe(&self, _lobby: &LobbyId) -> Result<(), StoreError> {
        Ok(())
    }

    async fn join(
        &self,
        lobby: &LobbyId,
        member: &MemberId,
        capacity: u8,
    ) -> Result<JoinOutcome, StoreError> {
        let mut lobbies = self.lobbies.lock().unwrap_or_else(|e| e.into_inner());
        let seats = lobbies.entry(*lobby).or_default();
        let players = seats.iter().flatten().count();
        if players >= usize::from(capacity) {
            return Ok(JoinOutcome::Full);
        }
        if let Some(user) = user_of(member)
            && seats.iter().flatten().any(|m| user_of(m) == Some(user))
        {
            return Ok(JoinOutcome::DuplicateUser);
        }
        let index = match seats.iter().position(Option::is_none) {
            Some(free) => free,
            None => {
                seats.push(None);
                seats.len() - 1
            }
        };
        seats[index] = Some(member.clone());
        // Seats and players are at most `capacity`, which fits in a u8.
        let seat = (index + 1) as u8;
        let players = (players + 1) as u8;
        self.hub.dispatch(
            lobby,
            LobbyEvent::Joined {
                seat,
                players,
                capacity,
                occupied: occupied(seats),
                member: member.clone(),
                users: users(seats),
            },
        );
        Ok(JoinOutcome::Seated { seat, players })
    }

    async fn leave(&self, lobby: &LobbyId, member: &MemberId, seat: u8) -> Result<(), StoreError> {
        let mut lobbies = self.lobbies.lock().unwrap_or_else(|e| e.into_inner());
        let Some(seats) = lobbies.get_mut(lobby) else {
            return Ok(());
        };
        let index = match seat {
            0 => match seats.iter().position(|m| m.as_ref() == Some(member)) {
                Some(index) => index,
                None => return Ok(()),
            },
            seat => usize::from(seat) - 1,
        };
        let seat = (index + 1) as u8;
        if seats.get(index).and_then(Option::as_ref) != Some(member) {
            return Ok(());
        }
        seats[index] = None;
        while seats.last().is_some_and(Option::is_none) {
            seats.pop();
        }
        let occupied = occupied(seats);
        let players = occupied.len() as u8;
        if players == 0 {
            lobbies.remove(lobby);
        }
        self.hub.dispatch(
            lobby,
            LobbyEvent::Left {
                seat,
                players,
                occupied,
            },
        );
        Ok(())
    }

    async fn admit_join(&self, who: RateKey, limit: JoinLimit) -> Result<bool, StoreError> {
        let joins = self
            .joins
            .get_or_init(|| DefaultKeyedRateLimiter::keyed(limit.quota()));
        let admitted = joins.check_key(&who).is_ok();
        if joins.len() > 10_000 {
            joins.retain_recent();
        }
        Ok(admitted)
    }

    fn is_healthy(&self) -> bool {
        true
    }

    async fn goodbye(&self) {}

    async fn publish(
        &self,
        lobby: &Arc<LocalLobby>,
        _member: &MemberId,
        from_seat: u8,
        message: Message,
    ) -> Result<(), StoreError> {
        lobby.dispatch(LobbyEvent::Relay { from_seat, message });
        Ok(())
    }
}

/// The user ids of the authenticated members, by seat.
fn users(seats: &[Option<MemberId>]) -> Vec<(u8, Arc<str>)> {
    (1..)
        .zip(seats)
        .filter_map(|(seat, member)| Some((seat, user_of(member.as_ref()?)?.into())))
        .collect()
}

/// The numbers of the seats that hold a member.
fn occupied(seats: &[Option<MemberId>]) -> Vec<u8> {
    (1..)
        .zip(seats)
        .filter_map(|(seat, member)| member.as_ref().map(|_| seat))
        .collect()
}
