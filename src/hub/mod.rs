//! The node's local view of its lobbies: which connections of *this* node are
//! members of which lobby, and the delivery of lobby events to them.
//!
//! The lobby store (memory or Redis) decides membership; the hub only fans
//! the store's [`LobbyEvent`]s out to local connections: it is the stores'
//! [`EventSink`] (and each local lobby a [`LobbySink`], to which the memory
//! store hands game messages directly). Locks here are std mutexes held for
//! a few pointer operations and never across an `.await`; delivery itself
//! never waits (see [`Outbox::deliver`]). Which members an event goes to,
//! and as what frame, is the one rule of `delivery.rs`.

mod delay;
mod delivery;
mod view;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::lobby::event::Host;
use crate::lobby::{EventSink, LobbyEvent, LobbySink, MemberId};
use crate::metrics;
use crate::outbox::Outbox;
use crate::passphrase::LobbyId;
use crate::protocol;
use delay::DelayLine;
use delivery::delivery;
pub use delivery::frames_for_seat;

/// Every lobby that has at least one member on this node.
#[derive(Debug, Default)]
pub struct Hub {
    lobbies: Mutex<HashMap<LobbyId, Arc<LocalLobby>>>,
}

/// One lobby as seen from this node.
#[derive(Debug)]
pub struct LocalLobby {
    pub id: LobbyId,
    /// The hex form of `id`, computed once: Redis names are built from it.
    pub hex: Box<str>,
    state: Mutex<LocalState>,
    /// Whether this node receives the lobby's events (Redis: is subscribed to
    /// its channel). Held across the subscribe and unsubscribe round trips so
    /// that a join racing the last local leave is never lost.
    pub(crate) subscription: tokio::sync::Mutex<bool>,
}

#[derive(Debug, Default)]
struct LocalState {
    members: Vec<LocalMember>,
    /// The occupied seats (of every node) as of the last event seen, to
    /// notice what was missed while the lobby store was out of reach.
    occupied: Vec<u8>,
    /// The lobby's host as of the last event that said (joins and host
    /// changes), for the members that asked to be told.
    host: Option<Host>,
    /// The lobby's spectators as of the last event that said.
    spectators: u32,
    /// The count last told to the members that asked, and when: they are
    /// told at most once a `NOTICE_EVERY`.
    noticed: Option<u32>,
    noticed_at: Option<tokio::time::Instant>,
    /// A notice is due at the end of the current `NOTICE_EVERY`.
    notice_due: bool,
    /// Set when the last local member left: this object is being torn down
    /// and a new joiner must start over with a fresh one.
    retired: bool,
}

/// The players are told the count of spectators at most this often.
const NOTICE_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

impl LocalState {
    /// Takes the members `which` picks out of the lobby, `tell` first telling
    /// each why its connection is over (seat lost, resumed elsewhere).
    fn take_out(
        &mut self,
        mut which: impl FnMut(&LocalMember) -> bool,
        mut tell: impl FnMut(&LocalMember),
    ) {
        self.members.retain(|m| {
            let out = which(m);
            if out {
                tell(m);
                metrics::get().members.decrement(1.0);
            }
            !out
        });
    }

    /// Tells the members that asked how many spectators watch, if that
    /// changed since they were last told.
    fn tell_spectators(&mut self) {
        let count = self.spectators;
        if self.noticed == Some(count) {
            return;
        }
        self.noticed = Some(count);
        self.noticed_at = Some(tokio::time::Instant::now());
        let frame = Message::text(protocol::spectators(count));
        for m in &mut self.members {
            if m.asks.spectators && (m.seat.is_some() || m.watching) && m.give(frame.clone()) {
                metrics::get().messages_out_event.increment(1);
            }
        }
    }
}

#[derive(Debug)]
struct LocalMember {
    id: MemberId,
    /// `None` until the member's own join (or resume) event arrives: from
    /// then on it receives the lobby's events and messages.
    seat: Option<u8>,
    outbox: Outbox,
    /// Fired when the member's join (or resume) event arrives.
    activated: Option<oneshot::Sender<u8>>,
    /// What `joined` says beyond protocol v1 (one pointer while there is
    /// nothing to say; dropped once `joined` is sent).
    answer: Option<Box<JoinAnswer>>,
    /// What the member asked to be told (`"host":true`: `joined` and
    /// `ready` name the host, and it gets `hostChanged`;
    /// `"spectators":true`: the count of spectators).
    asks: Asks,
    /// A spectator, once its watch event arrived: it gets every delivery,
    /// as a member of no seat would.
    watching: bool,
    /// A spectator watching with a delay: its deliveries wait there.
    delay: Option<Box<DelayLine>>,
    /// While a resuming member waits for its missed deliveries to be queued
    /// first: what arrived after its resume event, in order.
    backlog: Option<Vec<Message>>,
}

/// What a joiner's `joined` carries beyond protocol v1.
#[derive(Debug, Default)]
pub struct JoinAnswer {
    /// Resume (opt-in): the secret of the member's resume token, sent as
    /// `<lobby hex>.<seat>.<secret>`.
    pub resume_secret: Option<Box<str>>,
    /// Quick match: the queue the lobby came from.
    pub queue: Option<Arc<str>>,
    /// A spectator's delay (seconds) and the most bytes it may hold back.
    pub delay: Option<(u32, usize)>,
}

impl JoinAnswer {
    /// `None` when there is nothing beyond protocol v1 to say.
    pub fn boxed(self) -> Option<Box<Self>> {
        (self.resume_secret.is_some() || self.queue.is_some() || self.delay.is_some())
            .then(|| Box::new(self))
    }
}

/// What a member asked to be told beyond protocol v1.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Asks {
    /// `"host":true`: the host in `joined`, `ready`, and `hostChanged`.
    pub host: bool,
    /// `"spectators":true`: the count of spectators.
    pub spectators: bool,
}

impl LocalMember {
    /// Queues a delivery (behind the backlog of a resuming member, or the
    /// delay of a spectator).
    fn give(&mut self, message: Message) -> bool {
        match (&mut self.backlog, &self.delay) {
            (Some(backlog), _) => {
                backlog.push(message);
                true
            }
            (None, Some(delay)) => delay.push(message),
            (None, None) => self.outbox.deliver(message),
        }
    }

    /// The seat whose deliveries the member gets: its own, or for a
    /// spectator none (0: every delivery); `None` while it waits for its
    /// join, resume or watch event.
    fn receives_as(&self) -> Option<u8> {
        match (self.seat, self.watching) {
            (Some(seat), _) => Some(seat),
            (None, true) => Some(0),
            (None, false) => None,
        }
    }
}

impl Hub {
    /// The local lobby for `id`, created if this node has none yet.
    pub fn lobby(&self, id: LobbyId) -> Arc<LocalLobby> {
        self.lock()
            .entry(id)
            .or_insert_with(|| {
                metrics::get().lobbies.increment(1.0);
                Arc::new(LocalLobby {
                    id,
                    hex: id.to_string().into_boxed_str(),
                    state: Mutex::default(),
                    subscription: tokio::sync::Mutex::new(false),
                })
            })
            .clone()
    }

    /// The local lobby for `id`, if this node has members in it.
    pub fn get(&self, id: &LobbyId) -> Option<Arc<LocalLobby>> {
        self.lock().get(id).cloned()
    }

    /// Drops a retired lobby from the map (if it is still the one there).
    pub fn forget(&self, lobby: &Arc<LocalLobby>) {
        let mut map = self.lock();
        if map.get(&lobby.id).is_some_and(|l| Arc::ptr_eq(l, lobby)) {
            map.remove(&lobby.id);
            metrics::get().lobbies.decrement(1.0);
        }
    }

    /// Delivers an event that came from the lobby store.
    pub fn dispatch(&self, id: &LobbyId, event: LobbyEvent) {
        let lobby = self.lock().get(id).cloned();
        if let Some(lobby) = lobby {
            let spectators = matches!(
                event,
                LobbyEvent::Watching { .. } | LobbyEvent::Spectators(_)
            );
            lobby.dispatch(event);
            if spectators {
                lobby.notice_spectators();
            }
        }
    }

    /// Every lobby with members on this node (to subscribe again after a
    /// reconnect).
    pub fn lobby_ids(&self) -> Vec<LobbyId> {
        self.lock().keys().copied().collect()
    }

    /// Every local lobby.
    pub fn lobbies(&self) -> Vec<Arc<LocalLobby>> {
        self.lock().values().cloned().collect()
    }

    /// How many lobbies have members on this node.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no lobby has members on this node.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<LobbyId, Arc<LocalLobby>>> {
        self.lobbies.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The stores hand this node's lobby events to the hub.
impl EventSink for Hub {
    fn deliver(&self, lobby: &LobbyId, event: LobbyEvent) {
        self.dispatch(lobby, event);
    }

    fn lobby_ids(&self) -> Vec<LobbyId> {
        Hub::lobby_ids(self)
    }

    fn has_lobby(&self, lobby: &LobbyId) -> bool {
        self.lock().contains_key(lobby)
    }

    fn seated(&self, lobby: &LobbyId) -> Vec<(MemberId, u8)> {
        self.get(lobby).map(|l| l.seated()).unwrap_or_default()
    }

    fn occupied(&self, lobby: &LobbyId) -> Vec<u8> {
        self.get(lobby).map(|l| l.occupied()).unwrap_or_default()
    }

    fn host(&self, lobby: &LobbyId) -> Option<Host> {
        self.get(lobby).and_then(|l| l.host())
    }

    fn spectators_here(&self, lobby: &LobbyId) -> usize {
        self.get(lobby).map_or(0, |l| l.spectators_here())
    }

    fn lose(&self, lobby: &LobbyId, member: &MemberId) {
        if let Some(lobby) = self.get(lobby) {
            lobby.lose(member);
        }
    }
}

/// The memory store hands a game message straight to the local lobby.
impl LobbySink for LocalLobby {
    fn deliver(&self, event: LobbyEvent) {
        self.dispatch(event);
    }
}

impl LocalLobby {
    /// Adds a member that is about to join; it receives nothing until its
    /// join event arrives, which fires the returned receiver with its seat.
    /// `None` if this lobby object was retired: start over with
    /// [`Hub::lobby`].
    pub fn add_pending(
        &self,
        id: MemberId,
        outbox: Outbox,
        answer: &mut Option<Box<JoinAnswer>>,
        asks: Asks,
    ) -> Option<oneshot::Receiver<u8>> {
        let mut state = self.lock();
        if state.retired {
            return None;
        }
        let (tx, rx) = oneshot::channel();
        metrics::get().members.increment(1.0);
        // Room for this one member only: a lobby has a few members, mostly
        // one or two per node, and a `Vec`'s first growth would make room
        // for four.
        state.members.reserve_exact(1);
        state.members.push(LocalMember {
            id,
            seat: None,
            outbox,
            activated: Some(tx),
            answer: answer.take(),
            asks,
            watching: false,
            delay: None,
            backlog: None,
        });
        Some(rx)
    }

    /// A resuming member's missed deliveries (`replay`, already turned into
    /// frames) go out first, then what arrived since its resume event; from
    /// then on it receives live.
    pub fn finish_resume(&self, id: &MemberId, replay: Vec<Message>) {
        let mut state = self.lock();
        if let Some(m) = state.members.iter_mut().find(|m| m.id == *id) {
            let backlog = m.backlog.take().unwrap_or_default();
            for message in replay.into_iter().chain(backlog) {
                if m.outbox.deliver(message) {
                    metrics::get().messages_out_event.increment(1);
                }
            }
        }
    }

    /// Removes a local member. Returns true if it was the last one: the lobby
    /// is then retired and must be unsubscribed and forgotten.
    pub fn remove(&self, id: &MemberId) -> bool {
        let mut state = self.lock();
        let before = state.members.len();
        state.members.retain(|m| m.id != *id);
        metrics::get()
            .members
            .decrement((before - state.members.len()) as f64);
        if state.members.is_empty() {
            state.retired = true;
        }
        state.retired
    }

    /// Delivers one lobby event to the local members it concerns: first what
    /// the event does to them (a joiner or resumed player takes its seat, a
    /// member whose seat went elsewhere is taken out), then its one frame to
    /// those `delivery` names.
    pub fn dispatch(&self, mut event: LobbyEvent) {
        let mut state = self.lock();
        match &mut event {
            LobbyEvent::Relay { .. } => {}
            LobbyEvent::HostChanged(host) => state.host = Some(*host),
            LobbyEvent::Spectators(count) => state.spectators = *count,
            LobbyEvent::Watching {
                member,
                players,
                capacity,
                occupied,
                users,
                host,
                spectators,
            } => {
                state.occupied = std::mem::take(occupied);
                if host.is_some() {
                    state.host = *host;
                }
                state.spectators = *spectators;
                let host = state.host;
                if let Some(m) = state
                    .members
                    .iter_mut()
                    .find(|m| m.id == *member && m.receives_as().is_none())
                {
                    m.watching = true;
                    let answer = m.answer.take().unwrap_or_default();
                    if let Some((seconds, cap)) = answer.delay.filter(|(s, _)| *s > 0) {
                        let delay = std::time::Duration::from_secs(u64::from(seconds));
                        m.delay = Some(DelayLine::start(m.outbox.clone(), delay, cap));
                    }
                    if m.outbox
                        .deliver(Message::text(protocol::joined(&protocol::Arrival {
                            players: *players,
                            capacity: *capacity,
                            queue: answer.queue.as_deref(),
                            users,
                            host: host.filter(|_| m.asks.host),
                            spectators: Some(*spectators),
                            delay: answer.delay.map(|(seconds, _)| seconds).filter(|s| *s > 0),
                            ..protocol::Arrival::default()
                        })))
                    {
                        metrics::get().messages_out_event.increment(1);
                    }
                    if let Some(tx) = m.activated.take() {
                        let _ = tx.send(0);
                    }
                }
            }
            LobbyEvent::Joined {
                seat,
                players,
                capacity,
                occupied,
                member,
                users,
                host,
                spectators,
            } => {
                // Taken, not cloned: `delivery` has no use for it.
                state.occupied = std::mem::take(occupied);
                if host.is_some() {
                    state.host = *host;
                }
                if let Some(count) = *spectators {
                    // The joiner is told in `joined`, the others knew.
                    state.spectators = count;
                    state.noticed = Some(count);
                }
                let host = state.host;
                let count = state.spectators;
                if let Some(m) = state
                    .members
                    .iter_mut()
                    .find(|m| m.id == *member && m.seat.is_none())
                {
                    m.seat = Some(*seat);
                    let answer = m.answer.take().unwrap_or_default();
                    let token = answer
                        .resume_secret
                        .map(|secret| format!("{}.{seat}.{secret}", self.hex));
                    if m.outbox
                        .deliver(Message::text(protocol::joined(&protocol::Arrival {
                            players: *players,
                            capacity: *capacity,
                            seat: Some(*seat),
                            queue: answer.queue.as_deref(),
                            users,
                            host: host.filter(|_| m.asks.host),
                            spectators: Some(count).filter(|_| m.asks.spectators),
                            resume_token: token.as_deref(),
                            ..protocol::Arrival::default()
                        })))
                    {
                        metrics::get().messages_out_event.increment(1);
                    }
                    if let Some(tx) = m.activated.take() {
                        let _ = tx.send(*seat);
                    }
                }
            }
            LobbyEvent::Left { seat, occupied, .. } => {
                state.occupied = std::mem::take(occupied);
                // A local member still in that seat was removed by somebody
                // else (its own leave removes it here first): another node
                // presumed this one dead. It has lost its place and must not
                // keep playing as if it had one.
                let seat = *seat;
                state.take_out(
                    |m| m.seat == Some(seat),
                    |m| {
                        tracing::warn!(
                            lobby = &self.hex[..8],
                            seat,
                            "member removed from its lobby by another node"
                        );
                        seat_lost(&m.outbox);
                    },
                );
            }
            LobbyEvent::Away { seat, .. } => {
                // A local member still in that seat was presumed gone by
                // another node (its node was reaped): its seat is held for a
                // resume, this connection is over.
                let seat = *seat;
                state.take_out(|m| m.seat == Some(seat), |m| seat_lost(&m.outbox));
            }
            LobbyEvent::Back { seat, member } => {
                let seat = *seat;
                // An older connection of the resumed player, still here
                // (the player saw the drop before this node did): replaced.
                // (The resumed member itself is still pending: seat None.)
                state.take_out(
                    |m| m.seat == Some(seat) && m.id != *member,
                    |m| {
                        m.outbox.close(
                            CloseCode::from(RESUMED_ELSEWHERE_CLOSE),
                            "resumed on another connection",
                        )
                    },
                );
                for m in &mut state.members {
                    if m.receives_as().is_none() && m.id.same_member(member) {
                        // Its record may carry the user id of the old one.
                        m.id = member.clone();
                        m.seat = Some(seat);
                        // What arrives from now on waits behind its replay.
                        m.backlog = Some(Vec::new());
                        if let Some(tx) = m.activated.take() {
                            let _ = tx.send(seat);
                        }
                    }
                }
            }
        }
        let metrics = metrics::get();
        // A game message counts by its kind, and its bytes; anything else
        // counts as a lobby event.
        let (counter, bytes) = match &event {
            LobbyEvent::Relay {
                message: Message::Binary(data),
                ..
            } => (&metrics.messages_out_binary, Some(data.len() as u64)),
            LobbyEvent::Relay { message, .. } => {
                (&metrics.messages_out_text, Some(message.len() as u64))
            }
            _ => (&metrics.messages_out_event, None),
        };
        // The frame is built once (a relayed message is moved, not copied);
        // each receiver gets a clone, which shares its bytes.
        let delivery = delivery(event);
        for m in &mut state.members {
            let Some(frame) = m
                .receives_as()
                .and_then(|s| delivery.frame_for(s, m.asks.host))
            else {
                continue;
            };
            if m.give(frame.clone()) {
                counter.increment(1);
                if let Some(bytes) = bytes {
                    metrics.bytes_out.increment(bytes);
                }
            }
        }
    }

    /// The lobby's host as of the last event this node saw.
    pub fn host(&self) -> Option<Host> {
        self.lock().host
    }

    /// The lobby's spectators changed: the members that asked are told
    /// the count, at once or (if they were told less than
    /// `NOTICE_EVERY` ago) at the end of that second, with the count as
    /// it is then.
    pub fn notice_spectators(self: &Arc<Self>) {
        let mut state = self.lock();
        if state.notice_due {
            return;
        }
        let now = tokio::time::Instant::now();
        match state.noticed_at {
            Some(at) if now < at + NOTICE_EVERY => {
                state.notice_due = true;
                let lobby = self.clone();
                tokio::spawn(async move {
                    tokio::time::sleep_until(at + NOTICE_EVERY).await;
                    let mut state = lobby.lock();
                    state.notice_due = false;
                    state.tell_spectators();
                });
            }
            _ => state.tell_spectators(),
        }
    }

    /// This node's spectators of the lobby.
    pub fn spectators_here(&self) -> usize {
        self.lock().members.iter().filter(|m| m.watching).count()
    }

    /// The occupied seats as of the last event this node saw.
    pub fn occupied(&self) -> Vec<u8> {
        self.lock().occupied.clone()
    }

    /// The members of this node that hold a seat: `(member, seat)`.
    pub fn seated(&self) -> Vec<(MemberId, u8)> {
        self.lock()
            .members
            .iter()
            .filter_map(|m| Some((m.id.clone(), m.seat?)))
            .collect()
    }

    /// Takes `member` out of the lobby because its seat is no longer its own
    /// in the lobby store: it gets `seat_lost` and is disconnected (4001).
    pub fn lose(&self, member: &MemberId) {
        self.lock()
            .take_out(|m| m.id == *member, |m| seat_lost(&m.outbox));
    }

    fn lock(&self) -> MutexGuard<'_, LocalState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Tells a member that its seat is gone and closes its connection with 4001,
/// so that it can connect and join again.
fn seat_lost(outbox: &Outbox) {
    let metrics = metrics::get();
    metrics.seats_lost.increment(1);
    metrics.error(protocol::ErrorCode::SeatLost);
    let error = protocol::error(
        protocol::ErrorCode::SeatLost,
        "this relay node lost its connection to the lobby store for too long and your seat was given up; join again",
    );
    outbox.abort_with(
        Message::text(error),
        CloseCode::from(SEAT_LOST_CLOSE),
        "seat lost: join again",
    );
}

/// The close code that follows a `seat_lost` error.
pub const SEAT_LOST_CLOSE: u16 = 4001;

/// The close code of a connection whose seat was resumed on another one.
pub const RESUMED_ELSEWHERE_CLOSE: u16 = 4002;
