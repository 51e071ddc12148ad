//! Quick-match queues of the in-memory store: at most one open lobby per
//! queue, and a count of its lobbies. Changed under the store's lock (this
//! one is taken after the lobbies', never before).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use super::lobby::MemLobby;
use crate::cluster_view::{LocalQueues, QueueView, lobby_prefix};
use crate::lobby::{MemberId, Reservation};
use crate::passphrase::LobbyId;
use crate::queue::QueueName;

/// How long a quick-match reservation keeps its seat.
const RESERVATION: Duration = Duration::from_secs(10);

/// Every quick-match queue of the node.
#[derive(Debug, Default)]
pub(super) struct Queues(Mutex<HashMap<QueueName, MemQueue>>);

/// A quick-match queue.
#[derive(Debug, Default)]
struct MemQueue {
    /// The lobby with free seats that the next player is given, if any.
    open: Option<LobbyId>,
    /// The queue's lobbies (the open one included).
    lobbies: u32,
    /// The lobby that filled last (a game to watch).
    latest: Option<LobbyId>,
}

impl Queues {
    /// Reserves a seat in `queue`'s open lobby, or a new one (see
    /// [`LobbyMembership::reserve`](crate::lobby::LobbyMembership::reserve)),
    /// `lobbies` being the store's, locked.
    pub(super) fn reserve(
        &self,
        lobbies: &mut HashMap<LobbyId, MemLobby>,
        queue: &QueueName,
        member: &MemberId,
        capacity: u8,
        max_lobbies: u32,
    ) -> Reservation {
        let mut queues = self.lock();
        let q = queues.entry(queue.clone()).or_default();
        let until = tokio::time::Instant::now() + RESERVATION;
        let capacity = usize::from(capacity);
        if let Some(open) = q.open.take() {
            match lobbies.get_mut(&open) {
                Some(lobby) => {
                    if lobby.taken() < capacity {
                        lobby.reserved.push((member.clone(), until));
                        if lobby.taken() < capacity {
                            q.open = Some(open); // else spoken for: the next one opens one
                        }
                        return Reservation::Reserved(open);
                    }
                }
                None => q.lobbies = q.lobbies.saturating_sub(1),
            }
        }
        if q.lobbies >= max_lobbies {
            if q.lobbies == 0 {
                queues.remove(queue);
            }
            return Reservation::QueueFull;
        }
        let id = crate::queue::random_lobby();
        q.lobbies += 1;
        q.open = Some(id);
        lobbies.insert(
            id,
            MemLobby {
                queue: Some(queue.clone()),
                reserved: vec![(member.clone(), until)],
                ..MemLobby::default()
            },
        );
        Reservation::Reserved(id)
    }

    /// A lobby of `queue` has filled: the game spectators of the queue
    /// watch.
    pub(super) fn filled(&self, queue: &QueueName, lobby: LobbyId) {
        if let Some(q) = self.lock().get_mut(queue) {
            q.latest = Some(lobby);
        }
    }

    /// The lobby of `queue` that filled last.
    pub(super) fn latest(&self, queue: &QueueName) -> Option<LobbyId> {
        self.lock().get(queue).and_then(|q| q.latest)
    }

    /// A lobby of `queue` has free seats again (a reservation given up):
    /// it is the queue's open one if the queue has none.
    pub(super) fn reopen(&self, queue: &QueueName, lobby: LobbyId) {
        if let Some(q) = self.lock().get_mut(queue)
            && q.open.is_none()
        {
            q.open = Some(lobby);
        }
    }

    /// A quick-match lobby is gone: it is no longer its queue's open one.
    pub(super) fn forget_lobby(&self, queue: &QueueName, id: &LobbyId) {
        let mut queues = self.lock();
        if let Some(q) = queues.get_mut(queue) {
            q.lobbies = q.lobbies.saturating_sub(1);
            if q.open == Some(*id) {
                q.open = None;
            }
            if q.latest == Some(*id) {
                q.latest = None;
            }
            if q.lobbies == 0 {
                queues.remove(queue);
            }
        }
    }

    /// Every queue and the queue of each quick-match lobby, for the admin
    /// view; `lobbies` being the store's, locked (read only).
    pub(super) fn view(&self, lobbies: &HashMap<LobbyId, MemLobby>) -> LocalQueues {
        let mut view = LocalQueues {
            lobbies: lobbies
                .iter()
                .filter_map(|(id, lobby)| Some((id.to_string(), lobby.queue.as_ref()?.to_string())))
                .collect(),
            queues: Vec::new(),
        };
        for (name, q) in self.lock().iter() {
            view.queues.push(QueueView {
                queue: name.to_string(),
                lobbies: u64::from(q.lobbies),
                open: q.open.map(|id| lobby_prefix(&id.to_string())),
                open_players: q
                    .open
                    .map(|id| lobbies.get(&id).map_or(0, |l| usize::from(l.players()))),
            });
        }
        view.queues.sort_by(|a, b| a.queue.cmp(&b.queue));
        view
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<QueueName, MemQueue>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}
