//! In-memory lobbies: one node alone, the embedded default.
//!
//! Membership is a map from lobby to seats under one mutex; events are handed
//! to the hub while that mutex is held, so that every member sees joins and
//! leaves in the order they happened. Relayed messages go straight to the
//! local lobby: the sender's task delivers them, in the order it read them
//! (under the mutex too while some lobby has resumable seats, whose buffers
//! must hold exactly what their members are sent).
//!
//! Held seats (resume) follow the same rules as in Redis (`held.lua`): per
//! resumable seat, a count of deliveries and the last of them, capped; a
//! seat whose connection is gone is held until its grace period ends.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use governor::DefaultKeyedRateLimiter;

use tokio_tungstenite::tungstenite::Message;

use super::event::Host;
use super::{
    EventSink, Goodbye, JoinLimiter, JoinOutcome, LobbyEvent, LobbyMembership, LobbySink, MemberId,
    RateKey, Reservation, ResumeOutcome, ResumeRefusal, ResumeSetup, StoreError, StoreHealth,
    WatchOutcome,
};
use crate::limits::JoinLimit;
use crate::metrics;
use crate::outbox::Outbox;
use crate::passphrase::LobbyId;
use crate::queue::QueueName;
use lobby::{Held, MemLobby};
use queue::Queues;

/// Lobbies held in this process.
#[derive(Debug)]
pub struct MemoryStore {
    shared: Arc<Shared>,
    /// Join attempts per client address (the limit is the same for the whole
    /// life of the node, so the limiter is made on first use).
    joins: OnceLock<DefaultKeyedRateLimiter<RateKey>>,
    #[cfg(test)]
    hooks: TestHooks,
}

/// What the node's unit tests see of its subscriptions: how many subscribes
/// and unsubscribes, and a subscribe made to fail (a store out of reach).
#[cfg(test)]
#[derive(Debug, Default)]
struct TestHooks {
    subscribes: AtomicUsize,
    unsubscribes: AtomicUsize,
    fail_subscribe: std::sync::atomic::AtomicBool,
}

/// What the store's grace timers share with it.
struct Shared {
    /// This node's local lobbies (the hub).
    hub: Arc<dyn EventSink>,
    lobbies: Mutex<HashMap<LobbyId, MemLobby>>,
    /// Quick-match queues: locked after `lobbies`, never before.
    queues: Queues,
    /// How many lobbies have resumable seats (relays take the mutex then).
    held_lobbies: AtomicUsize,
}

impl MemoryStore {
    pub fn new(hub: Arc<dyn EventSink>) -> Self {
        Self {
            shared: Arc::new(Shared {
                hub,
                lobbies: Mutex::default(),
                queues: Queues::default(),
                held_lobbies: AtomicUsize::new(0),
            }),
            joins: OnceLock::new(),
            #[cfg(test)]
            hooks: TestHooks::default(),
        }
    }

    /// How many subscribes and unsubscribes the store was asked for.
    #[cfg(test)]
    pub(crate) fn subscriptions(&self) -> (usize, usize) {
        let hooks = &self.hooks;
        (
            hooks.subscribes.load(Ordering::SeqCst),
            hooks.unsubscribes.load(Ordering::SeqCst),
        )
    }

    /// The next subscribe fails, as if the store were out of reach (and is
    /// not counted).
    #[cfg(test)]
    pub(crate) fn fail_next_subscribe(&self) {
        self.hooks.fail_subscribe.store(true, Ordering::SeqCst);
    }

    /// How many lobbies exist (for tests and metrics).
    pub fn lobby_count(&self) -> usize {
        self.shared.lock().len()
    }
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("lobbies", &self.lobbies)
            .field("held_lobbies", &self.held_lobbies)
            .finish_non_exhaustive()
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, HashMap<LobbyId, MemLobby>> {
        self.lobbies.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Delivers `event` of `lobby` and keeps it for its resumable seats but
    /// `skip`; releases seats whose buffer overflowed. Runs under the lock.
    fn emit(
        self: &Arc<Self>,
        lobbies: &mut HashMap<LobbyId, MemLobby>,
        id: &LobbyId,
        skip: u8,
        event: LobbyEvent,
    ) {
        let Some(lobby) = lobbies.get_mut(id) else {
            return;
        };
        let overflowed = if lobby.held.is_empty() {
            Vec::new()
        } else {
            lobby.hold(skip, &event)
        };
        self.hub.deliver(id, event);
        for seat in overflowed {
            self.release(lobbies, id, seat);
        }
    }

    /// Releases a held seat: the others get `playerLeft`.
    fn release(self: &Arc<Self>, lobbies: &mut HashMap<LobbyId, MemLobby>, id: &LobbyId, seat: u8) {
        let Some(lobby) = lobbies.get_mut(id) else {
            return;
        };
        if lobby.held.get(&seat).is_none_or(|h| h.away.is_none()) {
            return;
        }
        let had_held = !lobby.held.is_empty();
        let (event, new_host) = lobby.free(seat);
        self.forget_if_empty(lobbies, id, had_held);
        metrics::get().held_seats_released.increment(1);
        tracing::info!(
            event = "held_seat_released",
            lobby = id.short(),
            seat,
            "a held seat was released: its player did not come back in time"
        );
        self.emit(lobbies, id, seat, event);
        self.announce_host(id, new_host);
    }

    /// Tells the lobby its new host, right after the leave that made it
    /// (under the same lock). Not held for resume: `resumed` names the host.
    fn announce_host(&self, id: &LobbyId, host: Option<Host>) {
        if let Some(host) = host {
            self.hub.deliver(id, LobbyEvent::HostChanged(host));
        }
    }

    /// Drops an empty lobby (not while a seat of it is reserved); keeps the
    /// count of lobbies with held seats, and the queue of a quick-match one.
    fn forget_if_empty(
        &self,
        lobbies: &mut HashMap<LobbyId, MemLobby>,
        id: &LobbyId,
        had_held: bool,
    ) {
        let Some(lobby) = lobbies.get_mut(id) else {
            return;
        };
        let has_held = !lobby.held.is_empty();
        if had_held && !has_held {
            self.held_lobbies.fetch_sub(1, Ordering::Relaxed);
        }
        if lobby.players() == 0 {
            // The next joiner opens the lobby anew (host, epoch 1).
            lobby.host = None;
        }
        if lobby.taken() == 0 {
            if let Some(queue) = lobby.queue.take() {
                self.queues.forget_lobby(&queue, id);
            }
            // Spectators keep an empty lobby: they see the next players come.
            if lobby.spectators == 0 {
                lobbies.remove(id);
            }
        }
    }

    /// Starts the grace period of an away seat.
    fn start_grace(self: &Arc<Self>, id: LobbyId, seat: u8, absence: u64, grace: Duration) {
        let shared = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(grace).await;
            let mut lobbies = shared.lock();
            let due = lobbies
                .get(&id)
                .and_then(|l| l.held.get(&seat))
                .is_some_and(|h| h.away.is_some_and(|(_, n)| n == absence));
            if due {
                shared.release(&mut lobbies, &id, seat);
            }
        });
    }
}

/// Absences are numbered so that the timer of an earlier one does nothing.
static ABSENCES: AtomicUsize = AtomicUsize::new(0);

impl LobbyMembership for MemoryStore {
    async fn subscribe(&self, _lobby: &LobbyId) -> Result<(), StoreError> {
        #[cfg(test)]
        {
            if self.hooks.fail_subscribe.swap(false, Ordering::SeqCst) {
                return Err(StoreError::Unreachable("test: subscribe fails"));
            }
            self.hooks.subscribes.fetch_add(1, Ordering::SeqCst);
        }
        Ok(())
    }

    async fn unsubscribe(&self, _lobby: &LobbyId) -> Result<(), StoreError> {
        #[cfg(test)]
        self.hooks.unsubscribes.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    async fn join(
        &self,
        lobby: &LobbyId,
        member: &MemberId,
        capacity: u8,
        resume: Option<&ResumeSetup>,
        queue: Option<&QueueName>,
    ) -> Result<JoinOutcome, StoreError> {
        let shared = &self.shared;
        let mut lobbies = shared.lock();
        let entry = match queue {
            // A queue's lobby exists from its first reservation on.
            Some(queue) => match lobbies.get_mut(lobby) {
                Some(entry) if entry.queue.as_ref() == Some(queue) => entry,
                _ => return Ok(JoinOutcome::Full),
            },
            None => lobbies.entry(*lobby).or_default(),
        };
        if queue.is_some() {
            entry.reserved.retain(|(m, _)| m != member);
        }
        let players = entry.players();
        if entry.taken() >= usize::from(capacity) {
            return Ok(JoinOutcome::Full);
        }
        if let Some(user) = member.user()
            && entry.seats.iter().flatten().any(|m| m.user() == Some(user))
        {
            return Ok(JoinOutcome::DuplicateUser);
        }
        let index = match entry.seats.iter().position(Option::is_none) {
            Some(free) => free,
            None => {
                entry.seats.push(None);
                entry.seats.len() - 1
            }
        };
        entry.seats[index] = Some(member.clone());
        // Seats and players are at most `capacity`, which fits in a u8.
        let seat = (index + 1) as u8;
        let players = players + 1;
        let host = *entry.host.get_or_insert(Host { seat, epoch: 1 });
        entry.capacity = capacity;
        if players >= capacity
            && let Some(queue) = &entry.queue
        {
            shared.queues.filled(queue, *lobby);
        }
        if let Some(setup) = resume {
            if entry.held.is_empty() {
                shared.held_lobbies.fetch_add(1, Ordering::Relaxed);
            }
            entry.held.insert(
                seat,
                Held {
                    secret_hash: setup.secret_hash.clone(),
                    presented_hash: None,
                    max_messages: setup.max_messages as usize,
                    max_bytes: setup.max_bytes as usize,
                    grace: setup.grace,
                    delivered: 0,
                    buffer: VecDeque::new(),
                    bytes: 0,
                    sent: 0,
                    away: None,
                    due: None,
                    overflowed: false,
                },
            );
        }
        let event = LobbyEvent::Joined {
            seat,
            players,
            capacity,
            occupied: entry.occupied(),
            member: member.clone(),
            users: users(&entry.seats),
            host: Some(host),
            spectators: Some(entry.spectators),
        };
        // Everybody but the joiner is told; the joiner too when it fills the
        // lobby (ready).
        let skip = if players >= capacity { 0 } else { seat };
        shared.emit(&mut lobbies, lobby, skip, event);
        Ok(JoinOutcome::Seated { seat, players })
    }

    async fn watch(
        &self,
        lobby: &LobbyId,
        member: &MemberId,
        max: u32,
    ) -> Result<WatchOutcome, StoreError> {
        let shared = &self.shared;
        let mut lobbies = shared.lock();
        let Some(entry) = lobbies.get_mut(lobby).filter(|l| l.players() > 0) else {
            return Ok(WatchOutcome::NothingToWatch);
        };
        if entry.spectators >= max {
            return Ok(WatchOutcome::Full);
        }
        entry.spectators += 1;
        let occupied = entry.occupied();
        let event = LobbyEvent::Watching {
            member: member.clone(),
            players: occupied.len() as u8,
            capacity: entry.capacity,
            occupied,
            users: users(&entry.seats),
            host: entry.host,
            spectators: entry.spectators,
        };
        // Not a delivery to the players (nothing held for resume).
        shared.hub.deliver(lobby, event);
        Ok(WatchOutcome::Watching)
    }

    async fn unwatch(&self, lobby: &LobbyId, _member: &MemberId) -> Result<(), StoreError> {
        let shared = &self.shared;
        let mut lobbies = shared.lock();
        let Some(entry) = lobbies.get_mut(lobby) else {
            return Ok(());
        };
        entry.spectators = entry.spectators.saturating_sub(1);
        let count = entry.spectators;
        shared.forget_if_empty(&mut lobbies, lobby, false);
        shared.hub.deliver(lobby, LobbyEvent::Spectators(count));
        Ok(())
    }

    async fn latest_game(&self, queue: &QueueName) -> Result<Option<LobbyId>, StoreError> {
        let lobbies = self.shared.lock();
        Ok(self
            .shared
            .queues
            .latest(queue)
            .filter(|id| lobbies.get(id).is_some_and(|l| l.players() > 0)))
    }

    async fn reserve(
        &self,
        queue: &QueueName,
        member: &MemberId,
        capacity: u8,
        max_lobbies: u32,
    ) -> Result<Reservation, StoreError> {
        let shared = &self.shared;
        let mut lobbies = shared.lock();
        Ok(shared
            .queues
            .reserve(&mut lobbies, queue, member, capacity, max_lobbies))
    }

    async fn unreserve(
        &self,
        queue: &QueueName,
        lobby: &LobbyId,
        member: &MemberId,
        capacity: u8,
    ) -> Result<(), StoreError> {
        let shared = &self.shared;
        let mut lobbies = shared.lock();
        let Some(entry) = lobbies.get_mut(lobby) else {
            return Ok(());
        };
        entry.reserved.retain(|(m, _)| m != member);
        if entry.taken() == 0 {
            shared.forget_if_empty(&mut lobbies, lobby, false);
        } else if entry.taken() < usize::from(capacity) {
            shared.queues.reopen(queue, *lobby);
        }
        Ok(())
    }

    async fn leave(&self, lobby: &LobbyId, member: &MemberId, seat: u8) -> Result<(), StoreError> {
        let shared = &self.shared;
        let mut lobbies = shared.lock();
        let Some(entry) = lobbies.get_mut(lobby) else {
            return Ok(());
        };
        let index = match seat {
            0 => match entry.seats.iter().position(|m| m.as_ref() == Some(member)) {
                Some(index) => index,
                None => return Ok(()),
            },
            seat => usize::from(seat) - 1,
        };
        let seat = (index + 1) as u8;
        if entry.seats.get(index).and_then(Option::as_ref) != Some(member) {
            return Ok(());
        }
        let had_held = !entry.held.is_empty();
        let (event, new_host) = entry.free(seat);
        shared.forget_if_empty(&mut lobbies, lobby, had_held);
        if lobbies.contains_key(lobby) {
            shared.emit(&mut lobbies, lobby, seat, event);
            shared.announce_host(lobby, new_host);
        } else {
            shared.hub.deliver(lobby, event);
        }
        Ok(())
    }

    async fn away(&self, lobby: &LobbyId, member: &MemberId, seat: u8) -> Result<bool, StoreError> {
        let shared = &self.shared;
        let mut lobbies = shared.lock();
        let Some(entry) = lobbies.get_mut(lobby) else {
            return Ok(true);
        };
        if entry
            .seats
            .get(usize::from(seat).wrapping_sub(1))
            .and_then(Option::as_ref)
            != Some(member)
        {
            return Ok(true); // not the member's seat any more: nothing to do
        }
        let Some(held) = entry.held.get_mut(&seat) else {
            return Ok(false);
        };
        if held.away.is_some() {
            return Ok(true);
        }
        let absence = ABSENCES.fetch_add(1, Ordering::Relaxed) as u64;
        held.away = Some((held.delivered, absence));
        held.due = Some(tokio::time::Instant::now() + held.grace);
        let grace = held.grace;
        shared.start_grace(*lobby, seat, absence, grace);
        let event = LobbyEvent::Away {
            seat,
            grace_ms: grace.as_millis().min(u128::from(u32::MAX)) as u32,
        };
        shared.emit(&mut lobbies, lobby, seat, event);
        Ok(true)
    }

    async fn resume(
        &self,
        lobby: &LobbyId,
        seat: u8,
        secret_hash: &str,
        new_secret_hash: &str,
        received: u64,
        member: &MemberId,
    ) -> Result<ResumeOutcome, StoreError> {
        let shared = &self.shared;
        let mut lobbies = shared.lock();
        let Some(entry) = lobbies.get_mut(lobby) else {
            return Ok(ResumeOutcome::Refused(ResumeRefusal::WrongToken));
        };
        let old = entry
            .seats
            .get(usize::from(seat).wrapping_sub(1))
            .cloned()
            .flatten();
        let (Some(old), Some(held)) = (old, entry.held.get_mut(&seat)) else {
            return Ok(ResumeOutcome::Refused(ResumeRefusal::WrongToken));
        };
        let expired = held
            .due
            .is_some_and(|due| tokio::time::Instant::now() >= due);
        let known =
            held.secret_hash == secret_hash || held.presented_hash.as_deref() == Some(secret_hash);
        if !known || expired {
            return Ok(ResumeOutcome::Refused(ResumeRefusal::WrongToken));
        }
        if held.overflowed {
            return Ok(ResumeOutcome::Refused(ResumeRefusal::TooMuchMissed));
        }
        let first = held.delivered - held.buffer.len() as u64;
        if received > held.delivered || received < first {
            return Ok(ResumeOutcome::Refused(ResumeRefusal::NotHeld));
        }
        let missed: Vec<LobbyEvent> = held
            .buffer
            .iter()
            .skip((received - first) as usize)
            .map(|(event, _)| event.clone())
            .collect();
        held.secret_hash = new_secret_hash.to_owned();
        held.presented_hash = Some(secret_hash.to_owned());
        held.away = None;
        held.due = None;
        let sent = held.sent;
        let record = member.with_user_of(&old);
        entry.seats[usize::from(seat) - 1] = Some(record.clone());
        let players = entry.players();
        let host = entry.host;
        let event = LobbyEvent::Back {
            seat,
            member: record.clone(),
        };
        shared.emit(&mut lobbies, lobby, seat, event);
        Ok(ResumeOutcome::Resumed {
            players,
            host,
            sent,
            member: record,
            missed,
        })
    }

    async fn publish(
        &self,
        lobby: &LobbyId,
        local: &dyn LobbySink,
        _member: &MemberId,
        from_seat: u8,
        message: Message,
        _sender: &Outbox,
    ) -> Result<(), StoreError> {
        let event = LobbyEvent::Relay { from_seat, message };
        if self.shared.held_lobbies.load(Ordering::Relaxed) == 0 {
            local.deliver(event);
            return Ok(());
        }
        let shared = &self.shared;
        let mut lobbies = shared.lock();
        match lobbies.get_mut(lobby) {
            Some(entry) if !entry.held.is_empty() => {
                if let Some(held) = entry.held.get_mut(&from_seat) {
                    held.sent += 1;
                }
                shared.emit(&mut lobbies, lobby, from_seat, event);
            }
            _ => {
                drop(lobbies);
                local.deliver(event);
            }
        }
        Ok(())
    }
}

impl JoinLimiter for MemoryStore {
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
}

impl StoreHealth for MemoryStore {
    fn is_healthy(&self) -> bool {
        true
    }

    fn local_queues(&self) -> crate::cluster_view::LocalQueues {
        let lobbies = self.shared.lock();
        self.shared.queues.view(&lobbies)
    }
}

impl Goodbye for MemoryStore {
    async fn goodbye(&self) {}
}

/// The user ids of the authenticated members, by seat.
fn users(seats: &[Option<MemberId>]) -> Vec<(u8, Arc<str>)> {
    (1..)
        .zip(seats)
        .filter_map(|(seat, member)| Some((seat, member.as_ref()?.user()?.into())))
        .collect()
}

mod lobby;
mod queue;
#[cfg(test)]
mod tests;
