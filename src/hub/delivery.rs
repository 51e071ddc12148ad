//! The one rule of delivery: which of a lobby's seated members an event
//! goes to, and the frame they get, for live delivery (the hub's
//! `LocalLobby::dispatch`) and resume replay ([`frames_for_seat`]) alike.
//! Its tests check that the two agree for every kind of event.

use tokio_tungstenite::tungstenite::Message;

use crate::lobby::LobbyEvent;
use crate::protocol;

/// Which of a lobby's seated members a delivery goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recipients {
    /// Every seated member (`ready`: the joiner too).
    All,
    /// Every seated member but the one in this seat: the sender of a game
    /// message, the subject of a lobby event.
    AllBut(u8),
    /// The seated members that asked to be told who is host.
    Hosted,
    /// Nobody: an event that is no delivery (the hub answers a spectator's
    /// watch and tells the count of spectators itself).
    Nobody,
}

impl Recipients {
    /// Whether the member in `seat` (that asked for the host, or not) is
    /// one of them.
    pub fn include(self, seat: u8, hosted: bool) -> bool {
        match self {
            Self::All => true,
            Self::AllBut(skip) => seat != skip,
            Self::Hosted => hosted,
            Self::Nobody => false,
        }
    }
}

/// One event's delivery: to whom, and the frame they get.
#[derive(Debug)]
pub struct Delivery {
    pub to: Recipients,
    pub frame: Message,
    /// The frame for the members that asked to be told who is host, where
    /// it differs (`ready` names the host for them).
    pub hosted_frame: Option<Message>,
}

impl Delivery {
    fn to(to: Recipients, frame: Message) -> Self {
        Self {
            to,
            frame,
            hosted_frame: None,
        }
    }

    /// The frame the member in `seat` gets, if any.
    pub fn frame_for(&self, seat: u8, hosted: bool) -> Option<&Message> {
        if !self.to.include(seat, hosted) {
            return None;
        }
        match (&self.hosted_frame, hosted) {
            (Some(frame), true) => Some(frame),
            _ => Some(&self.frame),
        }
    }
}

/// The one rule of delivery: which seated members of the lobby `event` goes
/// to, and the frame they get. Both live delivery (`LocalLobby::dispatch`)
/// and resume replay ([`frames_for_seat`]) ask it, so that a resumed player
/// is given exactly what it would have been sent live; the stores keep a
/// seat's deliveries by the same rule (the seat `hold` skips, in `held.lua`
/// and `lobby/memory.rs`).
///
/// A member in the seat a leave or away event names is taken out of the
/// lobby before delivery (its seat is gone), so that it gets nothing either
/// way. The joiner's own `joined` is the answer to its join, not a delivery.
///
/// A member that asked to be told who is host (`"host":true`) gets `ready`
/// with the host named, and `hostChanged`; the others get protocol v1
/// exactly.
pub fn delivery(event: LobbyEvent) -> Delivery {
    use Recipients::{All, AllBut, Hosted};
    match event {
        LobbyEvent::Relay { from_seat, message } => Delivery::to(AllBut(from_seat), message),
        LobbyEvent::Joined {
            seat,
            players,
            capacity,
            users,
            host,
            ..
        } => {
            if players >= capacity {
                Delivery {
                    to: All,
                    frame: Message::text(protocol::ready(players, &users, None)),
                    hosted_frame: host
                        .map(|host| Message::text(protocol::ready(players, &users, Some(host)))),
                }
            } else {
                let note = protocol::player_joined(players, seat, &users);
                Delivery::to(AllBut(seat), Message::text(note))
            }
        }
        LobbyEvent::Left { seat, players, .. } => Delivery::to(
            AllBut(seat),
            Message::text(protocol::player_left(players, seat)),
        ),
        LobbyEvent::Away { seat, grace_ms } => Delivery::to(
            AllBut(seat),
            Message::text(protocol::player_away(seat, grace_ms)),
        ),
        LobbyEvent::Back { seat, .. } => {
            Delivery::to(AllBut(seat), Message::text(protocol::player_back(seat)))
        }
        LobbyEvent::HostChanged(host) => {
            Delivery::to(Hosted, Message::text(protocol::host_changed(host)))
        }
        LobbyEvent::Watching { .. } | LobbyEvent::Spectators(_) => {
            Delivery::to(Recipients::Nobody, Message::text(""))
        }
    }
}

/// What the member in `seat` (that asked for the host, or not) receives of
/// `events` (its missed deliveries, replayed on resume): by `delivery`, as
/// live.
pub fn frames_for_seat(events: Vec<LobbyEvent>, seat: u8, hosted: bool) -> Vec<Message> {
    events
        .into_iter()
        .filter_map(|event| delivery(event).frame_for(seat, hosted).cloned())
        .collect()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

    use super::*;
    use crate::hub::Asks;
    use crate::hub::{Hub, LocalLobby, RESUMED_ELSEWHERE_CLOSE};
    use crate::lobby::MemberId;
    use crate::lobby::event::Host;
    use crate::outbox::{self, Inbox, Outbox};
    use crate::passphrase::LobbyId;

    /// A local member of the test lobby.
    struct Local {
        id: MemberId,
        outbox: Outbox,
        /// Kept so that the queue stays open (a closed one takes nothing).
        _inbox: Inbox,
        /// The seat it holds before the event, or takes by it.
        seat: u8,
        /// It asked to be told who is host (the members of even seats do).
        hosted: bool,
    }

    fn asks(host: bool) -> Asks {
        Asks {
            host,
            spectators: false,
        }
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
            hosted: seat % 2 == 0,
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
                .add_pending(m.id.clone(), m.outbox.clone(), &mut None, asks(m.hosted))
                .unwrap();
            occupied.push(seat);
            lobby.dispatch(LobbyEvent::Joined {
                seat,
                players: occupied.len() as u8,
                capacity: 8,
                occupied: occupied.clone(),
                member: m.id.clone(),
                users: Vec::new(),
                host: Some(Host {
                    seat: seats[0],
                    epoch: 1,
                }),
                spectators: None,
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
            host: Some(Host { seat: 1, epoch: 1 }),
            spectators: None,
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
                name: "join from a node that does not say who is host",
                seats: &[1, 2, 3],
                pending: None,
                event: LobbyEvent::Joined {
                    seat: 4,
                    players: 4,
                    capacity: 4,
                    occupied: vec![1, 2, 3, 4],
                    member: member(4),
                    users: Vec::new(),
                    host: None,
                    spectators: None,
                },
            },
            Case {
                name: "the host changed",
                seats: &[1, 2, 3],
                pending: None,
                event: LobbyEvent::HostChanged(Host { seat: 2, epoch: 5 }),
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
                    .add_pending(m.id.clone(), m.outbox.clone(), &mut None, asks(m.hosted))
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
                let replayed = frames_for_seat(vec![case.event.clone()], m.seat, m.hosted);
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
            .add_pending(
                resumed.id.clone(),
                resumed.outbox.clone(),
                &mut None,
                Asks::default(),
            )
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

    /// A member that asked for the host (`"host":true`) is named the host
    /// in `joined` and `ready` and gets `hostChanged`; one that did not gets
    /// protocol v1 exactly.
    #[test]
    fn only_members_that_asked_are_told_the_host() {
        let (lobby, locals) = seated_lobby(&[1, 2]);
        let joiner = local(member(3), 3); // seat 3: did not ask
        let asker = local(member(4), 4); // seat 4: asked
        for (m, players) in [(&joiner, 3), (&asker, 4)] {
            lobby
                .add_pending(m.id.clone(), m.outbox.clone(), &mut None, asks(m.hosted))
                .unwrap();
            lobby.dispatch(LobbyEvent::Joined {
                seat: m.seat,
                players,
                capacity: 4,
                occupied: (1..=players).collect(),
                member: m.id.clone(),
                users: Vec::new(),
                host: Some(Host { seat: 1, epoch: 1 }),
                spectators: None,
            });
        }
        lobby.dispatch(LobbyEvent::HostChanged(Host { seat: 2, epoch: 2 }));
        let text = |m: &Local| -> Vec<String> {
            delivered(m)
                .iter()
                .map(|f| f.to_text().unwrap().to_owned())
                .collect()
        };
        assert_eq!(
            text(&joiner),
            [
                r#"{"type":"joined","players":3,"capacity":4,"seat":3}"#,
                r#"{"type":"ready","players":4}"#,
            ]
        );
        assert_eq!(
            text(&asker),
            [
                r#"{"type":"joined","players":4,"capacity":4,"seat":4,"host":1,"epoch":1}"#,
                r#"{"type":"ready","players":4,"host":1,"epoch":1}"#,
                r#"{"type":"hostChanged","host":2,"epoch":2}"#,
            ]
        );
        assert_eq!(
            text(&locals[0]),
            [
                r#"{"type":"playerJoined","players":3,"seat":3}"#,
                r#"{"type":"ready","players":4}"#,
            ]
        );
        assert_eq!(
            text(&locals[1])[1..],
            [
                r#"{"type":"ready","players":4,"host":1,"epoch":1}"#,
                r#"{"type":"hostChanged","host":2,"epoch":2}"#,
            ]
        );
        assert_eq!(lobby.host(), Some(Host { seat: 2, epoch: 2 }));
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
                frames_for_seat(events.clone(), m.seat, m.hosted),
                "seat {}",
                m.seat
            );
            // Each member misses at most its own message, and `hostChanged`
            // if it did not ask for the host.
            let missed = 1 + usize::from(!m.hosted);
            assert!(
                live.len() >= events.len() - missed,
                "seat {}: {live:?}",
                m.seat
            );
        }
    }
}
