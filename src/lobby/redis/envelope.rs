//! The bytes of a lobby event on a pub/sub channel: one tag byte, then the
//! fields below. `J` and `L` are written by the Lua scripts, `T` and `B` by
//! the node's publisher.
//!
//! - `T` from_seat payload: a text game message, payload as sent
//! - `B` from_seat payload: a binary game message, payload as sent
//! - `J` seat players capacity occupied\[players\] member: a join; then
//!   for each occupied seat (same order) a NUL and its user id (empty for an
//!   anonymous one), then a NUL, `h`, the host's seat and the epoch
//!   (decimal). Older nodes wrote the users only when some member was
//!   authenticated, and no host: such a join has no host.
//! - `H` seat epoch: the host's seat was freed and `seat` is host now
//!   (epoch in decimal)
//! - `W` players capacity occupied\[players\] member, then as in `J`: a
//!   spectator started watching (the tail's last part: the spectators)
//! - `S` count: the lobby's spectators now (decimal)
//! - `L` seat players occupied\[players\]: a leave
//! - `A` seat grace: a resumable member's connection is gone (grace in ms,
//!   decimal)
//! - `K` seat member: a member took its held seat back (resume)

use bytes::Bytes;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

use std::sync::Arc;

use crate::lobby::event::Host;
use crate::lobby::{LobbyEvent, MemberId};

pub const TEXT: u8 = b'T';
pub const BINARY: u8 = b'B';
pub const JOINED: u8 = b'J';
pub const LEFT: u8 = b'L';
pub const AWAY: u8 = b'A';
pub const BACK: u8 = b'K';
pub const HOST: u8 = b'H';
pub const WATCHING: u8 = b'W';
pub const SPECTATORS: u8 = b'S';

/// Whether this version knows events of tag `tag` (an unknown one is a
/// newer node's, during a rolling upgrade: skipped quietly).
pub fn is_known(tag: u8) -> bool {
    matches!(
        tag,
        TEXT | BINARY | JOINED | LEFT | AWAY | BACK | HOST | WATCHING | SPECTATORS
    )
}

/// The envelope of a game message from `from_seat`; `None` for frames that
/// are not relayed (control frames).
pub fn encode_relay(from_seat: u8, message: &Message) -> Option<Vec<u8>> {
    let (tag, data): (u8, &[u8]) = match message {
        Message::Text(text) => (TEXT, text.as_bytes()),
        Message::Binary(data) => (BINARY, data),
        _ => return None,
    };
    let mut payload = Vec::with_capacity(2 + data.len());
    payload.push(tag);
    payload.push(from_seat);
    payload.extend_from_slice(data);
    Some(payload)
}

/// Reads one envelope; `None` if it is not one.
pub fn decode(payload: &[u8]) -> Option<LobbyEvent> {
    let (&tag, rest) = payload.split_first()?;
    match tag {
        TEXT => {
            let (&from_seat, data) = rest.split_first()?;
            let text = Utf8Bytes::try_from(Bytes::copy_from_slice(data)).ok()?;
            Some(LobbyEvent::Relay {
                from_seat,
                message: Message::Text(text),
            })
        }
        BINARY => {
            let (&from_seat, data) = rest.split_first()?;
            Some(LobbyEvent::Relay {
                from_seat,
                message: Message::Binary(Bytes::copy_from_slice(data)),
            })
        }
        JOINED => match rest {
            [seat, players, capacity, more @ ..] if more.len() >= usize::from(*players) => {
                let (occupied, rest) = more.split_at(usize::from(*players));
                let tail = Tail::read(occupied, rest)?;
                Some(LobbyEvent::Joined {
                    seat: *seat,
                    players: *players,
                    capacity: *capacity,
                    occupied: sorted(occupied),
                    member: tail.member,
                    users: tail.users,
                    host: tail.host,
                    spectators: tail.spectators,
                })
            }
            _ => None,
        },
        WATCHING => match rest {
            [players, capacity, more @ ..] if more.len() >= usize::from(*players) => {
                let (occupied, rest) = more.split_at(usize::from(*players));
                let tail = Tail::read(occupied, rest)?;
                Some(LobbyEvent::Watching {
                    member: tail.member,
                    players: *players,
                    capacity: *capacity,
                    occupied: sorted(occupied),
                    users: tail.users,
                    host: tail.host,
                    spectators: tail.spectators.unwrap_or_default(),
                })
            }
            _ => None,
        },
        SPECTATORS => Some(LobbyEvent::Spectators(
            std::str::from_utf8(rest).ok()?.parse().ok()?,
        )),
        LEFT => match rest {
            [seat, players, occupied @ ..] if occupied.len() == usize::from(*players) => {
                Some(LobbyEvent::Left {
                    seat: *seat,
                    players: *players,
                    occupied: sorted(occupied),
                })
            }
            _ => None,
        },
        AWAY => {
            let (&seat, grace) = rest.split_first()?;
            Some(LobbyEvent::Away {
                seat,
                grace_ms: std::str::from_utf8(grace).ok()?.parse().ok()?,
            })
        }
        HOST => {
            let (&seat, epoch) = rest.split_first()?;
            Some(LobbyEvent::HostChanged(Host {
                seat,
                epoch: std::str::from_utf8(epoch).ok()?.parse().ok()?,
            }))
        }
        BACK => {
            let (&seat, member) = rest.split_first()?;
            Some(LobbyEvent::Back {
                seat,
                member: std::str::from_utf8(member).ok()?.into(),
            })
        }
        _ => None,
    }
}

/// What a join (or watch) event says after its seats: the member id, the
/// users by seat, then (newer nodes) the host and the spectators.
struct Tail {
    member: MemberId,
    users: Vec<(u8, Arc<str>)>,
    host: Option<Host>,
    spectators: Option<u32>,
}

impl Tail {
    fn read(occupied: &[u8], rest: &[u8]) -> Option<Tail> {
        let rest = std::str::from_utf8(rest).ok()?;
        let mut parts = rest.split('\0');
        let member = parts.next()?;
        let mut users: Vec<(u8, Arc<str>)> = occupied
            .iter()
            .zip(parts.by_ref())
            .filter(|(_, user)| !user.is_empty())
            .map(|(&seat, user)| (seat, user.into()))
            .collect();
        users.sort_unstable_by_key(|(seat, _)| *seat);
        let mut tail = Tail {
            member: member.into(),
            users,
            host: None,
            spectators: None,
        };
        for part in parts {
            match part.as_bytes().split_first() {
                Some((b'h', rest)) => {
                    let (&seat, epoch) = rest.split_first()?;
                    let epoch = std::str::from_utf8(epoch).ok()?.parse().ok()?;
                    tail.host = Some(Host { seat, epoch });
                }
                Some((b's', count)) => {
                    tail.spectators = Some(std::str::from_utf8(count).ok()?.parse().ok()?);
                }
                _ => {} // a later addition: skipped, as older nodes skip these
            }
        }
        Some(tail)
    }
}

fn sorted(seats: &[u8]) -> Vec<u8> {
    let mut seats = seats.to_vec();
    seats.sort_unstable();
    seats
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relayed_messages_round_trip() {
        let text = Message::text(r#"{"type":"x"}"#);
        for (seat, sent) in [(2, text), (1, Message::binary(vec![0u8, 255]))] {
            match decode(&encode_relay(seat, &sent).unwrap()) {
                Some(LobbyEvent::Relay { from_seat, message }) => {
                    assert_eq!((from_seat, message), (seat, sent))
                }
                other => panic!("{other:?}"),
            }
        }
        assert!(encode_relay(1, &Message::Ping(Bytes::new())).is_none());
    }

    #[test]
    fn decodes_script_events() {
        // As an older node's join.lua wrote it: no users, no host.
        match decode(b"J\x02\x02\x02\x02\x01node-a/7.1") {
            Some(LobbyEvent::Joined {
                seat: 2,
                players: 2,
                capacity: 2,
                occupied,
                member,
                users,
                host: None,
                spectators: None,
            }) => {
                assert_eq!(occupied, [1, 2]);
                assert_eq!(member.as_str(), "node-a/7.1");
                assert!(users.is_empty());
            }
            other => panic!("{other:?}"),
        }
        // As join.lua writes it now: every seat's user (none here), then
        // the host (seat 1, epoch 12).
        match decode(b"J\x02\x02\x02\x02\x01node-a/7.1\0\0\0h\x0112\0s3\0zlater") {
            Some(LobbyEvent::Joined {
                member,
                users,
                host: Some(Host { seat: 1, epoch: 12 }),
                spectators: Some(3),
                ..
            }) => {
                assert_eq!(member.as_str(), "node-a/7.1");
                assert!(users.is_empty());
            }
            other => panic!("{other:?}"),
        }
        match decode(b"W\x02\x02\x01\x02node-b/3.9\0\0alice\0h\x011\0s4") {
            Some(LobbyEvent::Watching {
                member,
                players: 2,
                capacity: 2,
                occupied,
                users,
                host: Some(Host { seat: 1, epoch: 1 }),
                spectators: 4,
            }) => {
                assert_eq!(member.as_str(), "node-b/3.9");
                assert_eq!(occupied, [1, 2]);
                assert_eq!(users, [(2, "alice".into())]);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(decode(b"S0"), Some(LobbyEvent::Spectators(0))));
        match decode(b"H\x037") {
            Some(LobbyEvent::HostChanged(Host { seat: 3, epoch: 7 })) => {}
            other => panic!("{other:?}"),
        }
        // With users: seat 2 (bob) joined seat 1 (anonymous) and seat 3
        // (carol); the seats come in Redis's order.
        match decode(b"J\x02\x03\x04\x03\x01\x02node-a/7.2|bob\0carol\0\0bob") {
            Some(LobbyEvent::Joined {
                member,
                users,
                occupied,
                ..
            }) => {
                assert_eq!(member.as_str(), "node-a/7.2|bob");
                assert_eq!(occupied, [1, 2, 3]);
                let users: Vec<(u8, &str)> = users.iter().map(|(s, u)| (*s, &**u)).collect();
                assert_eq!(users, [(2, "bob"), (3, "carol")]);
            }
            other => panic!("{other:?}"),
        }
        match decode(b"L\x01\x01\x02") {
            Some(LobbyEvent::Left {
                seat: 1,
                players: 1,
                occupied,
            }) => assert_eq!(occupied, [2]),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            decode(b"L\x01\x00"),
            Some(LobbyEvent::Left { players: 0, .. })
        ));
        assert!(matches!(
            decode(b"A\x0215000"),
            Some(LobbyEvent::Away {
                seat: 2,
                grace_ms: 15000
            })
        ));
        match decode(b"K\x02node-b/9.4") {
            Some(LobbyEvent::Back { seat: 2, member }) => assert_eq!(member.as_str(), "node-b/9.4"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn refuses_anything_else() {
        for bad in [
            &b""[..],
            b"T",
            b"T\x01\xff\xfe",
            b"J\x01",
            b"J\x01\x02\x02\x01",
            b"L\x01",
            b"L\x01\x02\x01",
            b"X\x01\x01",
            b"H",
            b"H\x01",
            b"H\x01x",
            b"S",
            b"Sx",
            b"W\x02",
        ] {
            assert!(decode(bad).is_none(), "{bad:?}");
        }
    }
}
