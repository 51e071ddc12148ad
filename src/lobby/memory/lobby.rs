//! A lobby of the in-memory store: its seats, held seats (resume), host
//! and quick-match reservations.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use crate::lobby::event::Host;
use crate::lobby::{LobbyEvent, MemberId};
use crate::queue::QueueName;

#[derive(Debug, Default)]
pub(super) struct MemLobby {
    /// Seat `i` is `seats[i - 1]`; a lobby with no member is removed.
    pub(super) seats: Vec<Option<MemberId>>,
    /// Resumable seats.
    pub(super) held: HashMap<u8, Held>,
    /// The host (set by the first join).
    pub(super) host: Option<Host>,
    /// The queue of a quick-match lobby.
    pub(super) queue: Option<QueueName>,
    /// Spectators watching the lobby.
    pub(super) spectators: u32,
    /// The capacity given by the joins (for spectators' `watching`).
    pub(super) capacity: u8,
    /// Quick match: the seats reserved, by member, until when.
    pub(super) reserved: Vec<(MemberId, tokio::time::Instant)>,
}

/// What is kept for one resumable seat.
#[derive(Debug)]
pub(super) struct Held {
    pub(super) secret_hash: String,
    /// The token the last resume presented: still good until the new one
    /// is used (that resume's answer may have died with its connection).
    pub(super) presented_hash: Option<String>,
    pub(super) max_messages: usize,
    pub(super) max_bytes: usize,
    pub(super) grace: Duration,
    /// Deliveries to the seat so far.
    pub(super) delivered: u64,
    /// The last deliveries, with their sizes.
    pub(super) buffer: VecDeque<(LobbyEvent, usize)>,
    pub(super) bytes: usize,
    /// Game messages accepted from the seat.
    pub(super) sent: u64,
    /// While away: `delivered` when it went away, and which absence it is
    /// (a timer of an earlier one does nothing).
    pub(super) away: Option<(u64, u64)>,
    /// While away: when its grace period ends. A resume from then on is
    /// refused, even before the timer has released the seat.
    pub(super) due: Option<tokio::time::Instant>,
    pub(super) overflowed: bool,
}

impl Held {
    pub(super) fn push(&mut self, event: &LobbyEvent) {
        let size = match event {
            LobbyEvent::Relay { message, .. } => message.len() + 2,
            _ => 16,
        };
        self.delivered += 1;
        self.buffer.push_back((event.clone(), size));
        self.bytes += size;
        while self.buffer.len() > self.max_messages || self.bytes > self.max_bytes {
            if let Some((_, size)) = self.buffer.pop_front() {
                self.bytes -= size;
            }
        }
        if let Some((away_at, _)) = self.away {
            let first = self.delivered - self.buffer.len() as u64;
            if first > away_at {
                self.overflowed = true;
            }
        }
    }
}

impl MemLobby {
    pub(super) fn occupied(&self) -> Vec<u8> {
        (1..)
            .zip(&self.seats)
            .filter_map(|(seat, member)| member.as_ref().map(|_| seat))
            .collect()
    }

    pub(super) fn players(&self) -> u8 {
        self.seats.iter().flatten().count() as u8
    }

    /// The seats taken or reserved (lapsed reservations are dropped).
    pub(super) fn taken(&mut self) -> usize {
        let now = tokio::time::Instant::now();
        self.reserved.retain(|(_, until)| *until > now);
        usize::from(self.players()) + self.reserved.len()
    }

    /// Keeps `event` for every resumable seat but `skip`; returns the seats
    /// whose buffer overflowed while away.
    pub(super) fn hold(&mut self, skip: u8, event: &LobbyEvent) -> Vec<u8> {
        let mut overflowed = Vec::new();
        for (&seat, held) in &mut self.held {
            if seat != skip {
                let before = held.overflowed;
                held.push(event);
                if held.overflowed && !before {
                    overflowed.push(seat);
                }
            }
        }
        overflowed
    }

    /// Frees `seat`; returns the leave event, and the new host if the
    /// seat was the host's and others remain.
    pub(super) fn free(&mut self, seat: u8) -> (LobbyEvent, Option<Host>) {
        let index = usize::from(seat) - 1;
        self.seats[index] = None;
        self.held.remove(&seat);
        while self.seats.last().is_some_and(Option::is_none) {
            self.seats.pop();
        }
        let occupied = self.occupied();
        let new_host = match (self.host, occupied.first()) {
            (Some(host), Some(&lowest)) if host.seat == seat => {
                let host = Host {
                    seat: lowest,
                    epoch: host.epoch + 1,
                };
                self.host = Some(host);
                Some(host)
            }
            _ => None,
        };
        let left = LobbyEvent::Left {
            seat,
            players: occupied.len() as u8,
            occupied,
        };
        (left, new_host)
    }
}
