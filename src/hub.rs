//! The node's local view of its lobbies: which connections of *this* node are
//! members of which lobby, and the delivery of lobby events to them.
//!
//! The lobby store (memory or Redis) decides membership; the hub only fans
//! the store's [`LobbyEvent`]s out to local connections. Locks here are std
//! mutexes held for a few pointer operations and never across an `.await`;
//! delivery itself never waits (see [`Outbox::deliver`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::lobby::{LobbyEvent, MemberId};
use crate::metrics;
use crate::outbox::Outbox;
use crate::passphrase::LobbyId;
use crate::protocol;

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
    /// Set when the last local member left: this object is being torn down
    /// and a new joiner must start over with a fresh one.
    retired: bool,
}

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
    /// Resume (opt-in): the secret of the member's resume token, sent in
    /// `joined` as `<lobby hex>.<seat>.<secret>`.
    resume_secret: Option<Box<str>>,
    /// While a resuming member waits for its missed deliveries to be queued
    /// first: what arrived after its resume event, in order.
    backlog: Option<Vec<Message>>,
}

impl LocalMember {
    /// Queues a delivery (behind the backlog of a resuming member).
    fn give(&mut self, message: Message) -> bool {
        match &mut self.backlog {
            Some(backlog) => {
                backlog.push(message);
                true
            }
            None => self.outbox.deliver(message),
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
            lobby.dispatch(event);
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

impl LocalLobby {
    /// Adds a member that is about to join; it receives nothing until its
    /// join event arrives, which fires the returned receiver with its seat.
    /// `None` if this lobby object was retired: start over with
    /// [`Hub::lobby`].
    pub fn add_pending(
        &self,
        id: MemberId,
        outbox: Outbox,
        resume_secret: Option<Box<str>>,
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
            resume_secret,
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
            LobbyEvent::Joined {
                seat,
                players,
                capacity,
                occupied,
                member,
                users,
            } => {
                // Taken, not cloned: `delivery` has no use for it.
                state.occupied = std::mem::take(occupied);
                if let Some(m) = state
                    .members
                    .iter_mut()
                    .find(|m| m.id == *member && m.seat.is_none())
                {
                    m.seat = Some(*seat);
                    let token = m
                        .resume_secret
                        .take()
                        .map(|secret| format!("{}.{seat}.{secret}", self.hex));
                    if m.outbox.deliver(Message::text(protocol::joined(
                        *players,
                        *capacity,
                        *seat,
                        users,
                        token.as_deref(),
                    ))) {
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
                    if m.seat.is_none() && same_member(&m.id, member) {
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
        let (to, frame) = delivery(event);
        for m in &mut state.members {
            if m.seat.is_some_and(|s| to.include(s)) && m.give(frame.clone()) {
                counter.increment(1);
                if let Some(bytes) = bytes {
                    metrics.bytes_out.increment(bytes);
                }
            }
        }
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

/// Whether two member records name the same member (the user id part may
/// differ: a resumed seat keeps the user of its first member).
fn same_member(a: &str, b: &str) -> bool {
    let base = |m: &str| m.split_once('|').map_or(m, |(base, _)| base).len();
    a[..base(a)] == b[..base(b)]
}

/// Which of a lobby's seated members a delivery goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Recipients {
    /// Every seated member (`ready`: the joiner too).
    All,
    /// Every seated member but the one in this seat: the sender of a game
    /// message, the subject of a lobby event.
    AllBut(u8),
}

impl Recipients {
    fn include(self, seat: u8) -> bool {
        match self {
            Self::All => true,
            Self::AllBut(skip) => seat != skip,
        }
    }
}

/// The one rule of delivery: which seated members of the lobby `event` goes
/// to, and the frame they get. Both live delivery ([`LocalLobby::dispatch`])
/// and resume replay ([`frames_for_seat`]) ask it, so that a resumed player
/// is given exactly what it would have been sent live; the stores keep a
/// seat's deliveries by the same rule (the seat `hold` skips, in `held.lua`
/// and `lobby/memory.rs`).
///
/// A member in the seat a leave or away event names is taken out of the
/// lobby before delivery (its seat is gone), so that it gets nothing either
/// way. The joiner's own `joined` is the answer to its join, not a delivery.
fn delivery(event: LobbyEvent) -> (Recipients, Message) {
    use Recipients::{All, AllBut};
    match event {
        LobbyEvent::Relay { from_seat, message } => (AllBut(from_seat), message),
        LobbyEvent::Joined {
            seat,
            players,
            capacity,
            users,
            ..
        } => {
            if players >= capacity {
                (All, Message::text(protocol::ready(players, &users)))
            } else {
                let note = protocol::player_joined(players, seat, &users);
                (AllBut(seat), Message::text(note))
            }
        }
        LobbyEvent::Left { seat, players, .. } => (
            AllBut(seat),
            Message::text(protocol::player_left(players, seat)),
        ),
        LobbyEvent::Away { seat, grace_ms } => (
            AllBut(seat),
            Message::text(protocol::player_away(seat, grace_ms)),
        ),
        LobbyEvent::Back { seat, .. } => (AllBut(seat), Message::text(protocol::player_back(seat))),
    }
}

/// What the member in `seat` receives of `events` (its missed deliveries,
/// replayed on resume): by `delivery`, as live.
pub fn frames_for_seat(events: Vec<LobbyEvent>, seat: u8) -> Vec<Message> {
    events
        .into_iter()
        .filter_map(|event| {
            let (to, frame) = delivery(event);
            to.include(seat).then_some(frame)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbox::{self, Inbox};

    /// A local member of the test lobby.
    struct Local {
        id: MemberId,
        outbox: Outbox,
        /// Kept so that the queue stays open (a closed one takes nothing).
        _inbox: Inbox,
        /// The seat it holds before the event, or takes by it.
        seat: u8,
    }

    fn member(n: u8) -> MemberId {
        format!("n1/1.{n}").into()
    }

    fn users() -> Vec<(u8, Arc<str>)> {
        vec![(1, "alice".into()), (4, "dave".into())]
    }

    fn local(id: MemberId, seat: u8) -> Local {
        let (outbox, inbox) = outbox::channel(1 << 20);
        Local {
            id,
            outbox,
            _inbox: inbox,
            seat,
        }
    }

    /// A lobby of this node whose local members sit in `seats` (joined
    /// through the hub, in that order), their queues emptied.
    fn seated_lobby(seats: &[u8]) -> (Arc<LocalLobby>, Vec<Local>) {
        let lobby = Hub::default().lobby(LobbyId::from_passphrase("frame-rule").unwrap());
        let mut locals = Vec::new();
        let mut occupied = Vec::new();
        for &seat in seats {
            let m = local(member(seat), seat);
            lobby
                .add_pending(m.id.clone(), m.outbox.clone(), None)
                .unwrap();
            occupied.push(seat);
            lobby.dispatch(LobbyEvent::Joined {
                seat,
                players: occupied.len() as u8,
                capacity: 8,
                occupied: occupied.clone(),
                member: m.id.clone(),
                users: Vec::new(),
            });
            locals.push(m);
        }
        assert_eq!(lobby.seated().len(), seats.len());
        for m in &locals {
            m.outbox.take_queued();
        }
        (lobby, locals)
    }

    /// The data frames queued for a member (a close frame is no delivery).
    fn delivered(m: &Local) -> Vec<Message> {
        m.outbox
            .take_queued()
            .into_iter()
            .filter(|f| matches!(f, Message::Text(_) | Message::Binary(_)))
            .collect()
    }

    /// One case: local members seated in `seats`, plus `pending` (a local
    /// member that takes a seat by `event`: a joiner or a resuming player),
    /// then `event`, delivered live.
    struct Case {
        name: &'static str,
        seats: &'static [u8],
        pending: Option<(MemberId, u8)>,
        event: LobbyEvent,
    }

    /// Every kind of lobby event, from a local and a remote member, with
    /// and without users.
    fn cases() -> Vec<Case> {
        let joined = |seat, players, capacity, users, member| LobbyEvent::Joined {
            seat,
            players,
            capacity,
            occupied: (1..=players).collect(),
            member,
            users,
        };
        let full = |users| joined(4, 4, 4, users, member(4));
        let not_full = |users| joined(4, 4, 5, users, member(4));
        vec![
            Case {
                name: "relay text from a local member",
                seats: &[1, 2, 3],
                pending: None,
                event: LobbyEvent::Relay {
                    from_seat: 2,
                    message: Message::text(r#"{"type":"relay","data":1}"#),
                },
            },
            Case {
                name: "relay binary from a remote member",
                seats: &[1, 2, 3],
                pending: None,
                event: LobbyEvent::Relay {
                    from_seat: 4,
                    message: Message::binary(vec![0, 1, 2, 255]),
                },
            },
            Case {
                name: "relay binary from a local member",
                seats: &[1, 2, 3],
                pending: None,
                event: LobbyEvent::Relay {
                    from_seat: 1,
                    message: Message::binary(vec![7; 3]),
                },
            },
            Case {
                name: "remote join, lobby not full, no users",
                seats: &[1, 2, 3],
                pending: None,
                event: not_full(Vec::new()),
            },
            Case {
                name: "remote join, lobby not full, with users",
                seats: &[1, 2, 3],
                pending: None,
                event: not_full(users()),
            },
            Case {
                name: "remote join fills the lobby, no users",
                seats: &[1, 2, 3],
                pending: None,
                event: full(Vec::new()),
            },
            Case {
                name: "remote join fills the lobby, with users",
                seats: &[1, 2, 3],
                pending: None,
                event: full(users()),
            },
            Case {
                name: "local join, lobby not full, with users",
                seats: &[1, 2, 3],
                pending: Some((member(4), 4)),
                event: not_full(users()),
            },
            Case {
                name: "local join fills the lobby, no users",
                seats: &[1, 2, 3],
                pending: Some((member(4), 4)),
                event: full(Vec::new()),
            },
            Case {
                name: "local join fills the lobby, with users",
                seats: &[1, 2, 3],
                pending: Some((member(4), 4)),
                event: full(users()),
            },
            Case {
                name: "remote member left",
                seats: &[1, 2, 3],
                pending: None,
                event: LobbyEvent::Left {
                    seat: 4,
                    players: 3,
                    occupied: vec![1, 2, 3],
                },
            },
            Case {
                name: "local member removed by another node",
                seats: &[1, 2, 3],
                pending: None,
                event: LobbyEvent::Left {
                    seat: 2,
                    players: 2,
                    occupied: vec![1, 3],
                },
            },
            Case {
                name: "remote member away",
                seats: &[1, 2, 3],
                pending: None,
                event: LobbyEvent::Away {
                    seat: 4,
                    grace_ms: 30_000,
                },
            },
            Case {
                name: "local member held away by another node",
                seats: &[1, 2, 3],
                pending: None,
                event: LobbyEvent::Away {
                    seat: 3,
                    grace_ms: 5_000,
                },
            },
            Case {
                name: "remote member back",
                seats: &[1, 2, 3],
                pending: None,
                event: LobbyEvent::Back {
                    seat: 4,
                    member: "n2/1.9".into(),
                },
            },
            Case {
                name: "local member back, no user",
                seats: &[1, 2, 3],
                pending: Some((member(9), 4)),
                event: LobbyEvent::Back {
                    seat: 4,
                    member: member(9),
                },
            },
            Case {
                name: "local member back with its user, replacing its old connection",
                seats: &[1, 2, 3],
                pending: Some((member(9), 2)),
                event: LobbyEvent::Back {
                    seat: 2,
                    member: "n1/1.9|bob".into(),
                },
            },
        ]
    }

    /// Resume correctness rests on this: for every kind of event, what a
    /// member in seat N is sent live ([`LocalLobby::dispatch`]) is exactly
    /// what [`frames_for_seat`] replays to seat N for that event.
    #[test]
    fn live_delivery_and_replay_agree_for_every_event() {
        for case in cases() {
            let (lobby, mut locals) = seated_lobby(case.seats);
            if let Some((id, seat)) = case.pending.clone() {
                let m = local(id, seat);
                lobby
                    .add_pending(m.id.clone(), m.outbox.clone(), None)
                    .unwrap();
                locals.push(m);
            }
            lobby.dispatch(case.event.clone());
            if let LobbyEvent::Back { member, .. } = &case.event {
                // A resuming member's live deliveries wait behind its replay
                // (here, none): out with them.
                lobby.finish_resume(member, Vec::new());
            }
            let mut receivers = 0;
            for m in &locals {
                let mut live = delivered(m);
                let joiner = case.pending.as_ref().is_some_and(|(id, _)| *id == m.id)
                    && matches!(case.event, LobbyEvent::Joined { .. });
                if joiner {
                    // The joiner's own `joined` is the answer to its join,
                    // not a delivery: nothing replays it.
                    let reply = live.remove(0);
                    assert!(
                        reply.to_text().unwrap().starts_with(r#"{"type":"joined""#),
                        "{}: the joiner's first frame is {reply:?}",
                        case.name
                    );
                }
                let replayed = frames_for_seat(vec![case.event.clone()], m.seat);
                assert_eq!(
                    live, replayed,
                    "{}: seat {} (live, then replayed)",
                    case.name, m.seat
                );
                receivers += usize::from(!live.is_empty());
            }
            // Not vacuous: in every case some local member receives the event.
            assert!(receivers > 0, "{}: nobody received anything", case.name);
        }
    }

    /// A local member whose seat another node gave away or held is told its
    /// seat is lost (an abort: `seat_lost`, 4001); an older connection of a
    /// player who resumed elsewhere is closed (4002) after what it was
    /// sent. Either way it is out of the lobby.
    #[test]
    fn members_taken_out_are_told_why() {
        let (lobby, locals) = seated_lobby(&[1, 2, 3, 4]);
        lobby.dispatch(LobbyEvent::Left {
            seat: 1,
            players: 3,
            occupied: vec![2, 3, 4],
        });
        lobby.dispatch(LobbyEvent::Away {
            seat: 2,
            grace_ms: 1000,
        });
        lobby.lose(&locals[2].id);
        let resumed = local(member(9), 4);
        lobby
            .add_pending(resumed.id.clone(), resumed.outbox.clone(), None)
            .unwrap();
        lobby.dispatch(LobbyEvent::Back {
            seat: 4,
            member: resumed.id.clone(),
        });
        assert_eq!(lobby.seated(), vec![(resumed.id.clone(), 4)]);
        for m in &locals[..3] {
            assert!(m.outbox.is_aborted(), "seat {}", m.seat);
        }
        let old = &locals[3];
        assert!(!old.outbox.is_aborted());
        let frames = old.outbox.take_queued();
        assert!(
            matches!(frames.last(), Some(Message::Close(Some(f))) if f.code == CloseCode::from(RESUMED_ELSEWHERE_CLOSE)),
            "{frames:?}"
        );
        // The last member going retires the lobby.
        assert!(lobby.remove(&resumed.id));
    }

    /// Replay of several events is the replay of each in turn, in order, as
    /// live delivery of the same events is.
    #[test]
    fn replay_of_a_sequence_matches_live_delivery_in_order() {
        let (lobby, locals) = seated_lobby(&[1, 2, 3]);
        let events: Vec<LobbyEvent> = cases()
            .into_iter()
            .filter(|c| c.pending.is_none() && c.seats == [1, 2, 3])
            .map(|c| c.event)
            // Events that take a local member out end the sequence for it;
            // keep the remote ones, whose subject is seat 4.
            .filter(|e| {
                !matches!(
                    e,
                    LobbyEvent::Left { seat: 1..=3, .. } | LobbyEvent::Away { seat: 1..=3, .. }
                )
            })
            .collect();
        for event in &events {
            lobby.dispatch(event.clone());
        }
        for m in &locals {
            let live = delivered(m);
            assert_eq!(
                live,
                frames_for_seat(events.clone(), m.seat),
                "seat {}",
                m.seat
            );
            assert!(live.len() >= events.len() - 1, "seat {}: {live:?}", m.seat);
        }
    }
}
