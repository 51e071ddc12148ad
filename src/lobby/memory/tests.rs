//! The in-memory store alone: membership, the events the hub receives (read
//! as the frames a local member of the lobby is sent), resume and held
//! seats, the grace period under paused time.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use super::MemoryStore;
use crate::hub::{Hub, LocalLobby};
use crate::identity::Identity;
use crate::lobby::{JoinOutcome, LobbyMembership, MemberId, ResumeOutcome, ResumeSetup};
use crate::outbox::{self, Inbox, Outbox};
use crate::passphrase::LobbyId;

/// A store, the hub it hands events to, and one lobby of it.
struct Fixture {
    hub: Arc<Hub>,
    store: MemoryStore,
    identity: Identity,
    id: LobbyId,
}

/// A member of this node: what the hub delivers to it lands in `outbox`.
struct Player {
    member: MemberId,
    outbox: Outbox,
    /// Kept so that the queue stays open.
    _inbox: Inbox,
}

impl Player {
    /// The JSON of every text frame it was sent since the last call.
    fn frames(&self) -> Vec<Value> {
        self.outbox
            .take_queued()
            .into_iter()
            .map(|frame| match frame {
                Message::Text(text) => serde_json::from_str(&text).expect("JSON"),
                other => panic!("not a text frame: {other:?}"),
            })
            .collect()
    }

    fn types(&self) -> Vec<String> {
        self.frames()
            .iter()
            .map(|f| f["type"].as_str().unwrap_or("(relayed)").to_owned())
            .collect()
    }
}

fn resumable(secret: &str, grace: Duration, max_messages: u32) -> ResumeSetup {
    ResumeSetup {
        secret_hash: secret.to_owned(),
        max_messages,
        max_bytes: 1 << 20,
        grace,
    }
}

impl Fixture {
    fn new() -> Self {
        let hub = Arc::new(Hub::default());
        Self {
            store: MemoryStore::new(hub.clone()),
            hub,
            identity: Identity::new("n1"),
            id: LobbyId::from_passphrase("memory-store-tests").unwrap(),
        }
    }

    fn local(&self) -> Arc<LocalLobby> {
        self.hub.lobby(self.id)
    }

    /// A player of this node joins (as `Node::join` does: a pending member
    /// of the local lobby first, then the store's join).
    async fn join(
        &self,
        user: Option<&str>,
        capacity: u8,
        resume: Option<&ResumeSetup>,
    ) -> (JoinOutcome, Player) {
        let member = self.identity.new_member(user);
        let (outbox, inbox) = outbox::channel(1 << 20);
        self.local()
            .add_pending(
                member.clone(),
                outbox.clone(),
                &mut None,
                crate::hub::Asks::default(),
            )
            .expect("lobby not retired");
        let outcome = self
            .store
            .join(&self.id, &member, capacity, resume, None)
            .await
            .unwrap();
        if !matches!(outcome, JoinOutcome::Seated { .. }) {
            self.local().remove(&member);
        }
        let player = Player {
            member,
            outbox,
            _inbox: inbox,
        };
        (outcome, player)
    }

    async fn seated(&self, capacity: u8) -> Player {
        self.seated_resumable(capacity, None).await
    }

    async fn seated_resumable(&self, capacity: u8, resume: Option<&ResumeSetup>) -> Player {
        match self.join(None, capacity, resume).await {
            (JoinOutcome::Seated { .. }, player) => player,
            (other, _) => panic!("not seated: {other:?}"),
        }
    }

    async fn relay(&self, from: &Player, seat: u8, text: &str) {
        let lobby = self.local();
        self.store
            .publish(
                &self.id,
                &*lobby,
                &from.member,
                seat,
                Message::text(text),
                &from.outbox,
            )
            .await
            .unwrap();
    }

    /// Its connection ends without `leave` (as `Node::drop_member` does).
    async fn away(&self, player: &Player, seat: u8) -> bool {
        self.local().remove(&player.member);
        self.store
            .away(&self.id, &player.member, seat)
            .await
            .unwrap()
    }

    async fn resume(&self, seat: u8, secret: &str, received: u64) -> ResumeOutcome {
        self.resume_to(seat, secret, "next-secret", received).await
    }

    /// A resume presenting `secret` that replaces the token by `next`.
    async fn resume_to(&self, seat: u8, secret: &str, next: &str, received: u64) -> ResumeOutcome {
        let member = self.identity.new_member(None);
        self.store
            .resume(&self.id, seat, secret, next, received, &member)
            .await
            .unwrap()
    }

    /// A lobby of two: player a, whose seat is resumable (`secret`, `grace`,
    /// at most `max_messages` kept), then player b.
    async fn resumable_pair(
        &self,
        secret: &str,
        grace: Duration,
        max_messages: u32,
    ) -> (Player, Player) {
        let setup = resumable(secret, grace, max_messages);
        let pa = self.seated_resumable(2, Some(&setup)).await;
        let pb = self.seated(2).await;
        (pa, pb)
    }

    /// A resume of `seat` that must be refused; `what` names the case.
    async fn refused(&self, seat: u8, secret: &str, received: u64, what: &str) {
        match self.resume(seat, secret, received).await {
            ResumeOutcome::Refused(_) => {}
            other => panic!("{what}: {other:?}"),
        }
    }

    /// Three players seated in a lobby of three, the frames of their joins
    /// taken.
    async fn three_seated(&self) -> [Player; 3] {
        let players = [
            self.seated(3).await,
            self.seated(3).await,
            self.seated(3).await,
        ];
        for p in &players {
            p.frames();
        }
        players
    }
}

#[tokio::test]
async fn seats_are_taken_in_order_until_the_lobby_is_full() {
    let f = Fixture::new();
    let (a, pa) = f.join(None, 3, None).await;
    assert_eq!(
        a,
        JoinOutcome::Seated {
            seat: 1,
            players: 1
        }
    );
    let (b, pb) = f.join(None, 3, None).await;
    assert_eq!(
        b,
        JoinOutcome::Seated {
            seat: 2,
            players: 2
        }
    );
    assert_eq!(
        pa.frames(),
        [
            json!({"type": "joined", "players": 1, "capacity": 3, "seat": 1}),
            json!({"type": "playerJoined", "players": 2, "seat": 2}),
        ]
    );
    assert_eq!(
        pb.frames(),
        [json!({"type": "joined", "players": 2, "capacity": 3, "seat": 2})]
    );
    let (c, pc) = f.join(None, 3, None).await;
    assert_eq!(
        c,
        JoinOutcome::Seated {
            seat: 3,
            players: 3
        }
    );
    // The join that fills the lobby: `ready` to everybody, the joiner too.
    let ready = json!({"type": "ready", "players": 3});
    assert_eq!(pa.frames(), std::slice::from_ref(&ready));
    assert_eq!(pb.frames(), [ready]);
    assert_eq!(pc.types(), ["joined", "ready"]);
    let (d, pd) = f.join(None, 3, None).await;
    assert_eq!(d, JoinOutcome::Full);
    assert!(pd.frames().is_empty());
    assert!(pa.frames().is_empty(), "a refused join is no event");
    assert_eq!(f.local().occupied(), [1, 2, 3]);
    assert_eq!(f.store.lobby_count(), 1);
}

#[tokio::test]
async fn a_user_holds_one_seat_per_lobby() {
    let f = Fixture::new();
    let (first, alice) = f.join(Some("alice"), 4, None).await;
    assert_eq!(
        first,
        JoinOutcome::Seated {
            seat: 1,
            players: 1
        }
    );
    assert_eq!(
        alice.frames(),
        [
            json!({"type": "joined", "players": 1, "capacity": 4, "seat": 1, "users": {"1": "alice"}})
        ]
    );
    let (again, _) = f.join(Some("alice"), 4, None).await;
    assert_eq!(again, JoinOutcome::DuplicateUser);
    let (bob, _) = f.join(Some("bob"), 4, None).await;
    assert_eq!(
        bob,
        JoinOutcome::Seated {
            seat: 2,
            players: 2
        }
    );
    let (anonymous, _) = f.join(None, 4, None).await;
    assert_eq!(
        anonymous,
        JoinOutcome::Seated {
            seat: 3,
            players: 3
        }
    );
    let (anonymous_too, _) = f.join(None, 4, None).await;
    assert_eq!(
        anonymous_too,
        JoinOutcome::Seated {
            seat: 4,
            players: 4
        },
        "players without a user are never duplicates"
    );
    assert_eq!(
        alice.frames().last().unwrap(),
        &json!({"type": "ready", "players": 4, "users": {"1": "alice", "2": "bob"}})
    );
}

#[tokio::test]
async fn a_leave_frees_the_seat_for_the_next_joiner_and_an_empty_lobby_goes() {
    let f = Fixture::new();
    let [pa, pb, pc] = f.three_seated().await;
    f.local().remove(&pb.member);
    f.store.leave(&f.id, &pb.member, 2).await.unwrap();
    let left = json!({"type": "playerLeft", "players": 2, "seat": 2});
    assert_eq!(pa.frames(), std::slice::from_ref(&left));
    assert_eq!(pc.frames(), [left]);
    assert!(pb.frames().is_empty(), "the leaver is told nothing");
    assert_eq!(f.local().occupied(), [1, 3]);

    // A leave of a seat the member does not hold changes nothing.
    f.store.leave(&f.id, &pb.member, 1).await.unwrap();
    f.store.leave(&f.id, &pb.member, 0).await.unwrap();
    assert!(pa.frames().is_empty());

    let (d, pd) = f.join(None, 3, None).await;
    assert_eq!(
        d,
        JoinOutcome::Seated {
            seat: 2,
            players: 3
        }
    );

    // Seat 0: whichever seat the member holds (a join whose answer was lost).
    f.store.leave(&f.id, &pc.member, 0).await.unwrap();
    assert_eq!(
        pa.frames().last().unwrap(),
        &json!({"type": "playerLeft", "players": 2, "seat": 3})
    );
    f.store.leave(&f.id, &pd.member, 2).await.unwrap();
    assert_eq!(f.store.lobby_count(), 1);
    f.store.leave(&f.id, &pa.member, 1).await.unwrap();
    assert_eq!(
        f.store.lobby_count(),
        0,
        "nothing of an empty lobby remains"
    );
}

#[tokio::test]
async fn a_game_message_goes_to_everybody_but_its_sender_in_order() {
    let f = Fixture::new();
    let [pa, pb, pc] = f.three_seated().await;
    for n in 0..5 {
        f.relay(&pa, 1, &format!(r#"{{"n":{n}}}"#)).await;
    }
    f.relay(&pb, 2, r#"{"from":"b"}"#).await;
    let from_a: Vec<Value> = (0..5).map(|n| json!({ "n": n })).collect();
    assert_eq!(pa.frames(), [json!({"from": "b"})]);
    assert_eq!(pb.frames(), from_a);
    let mut to_c = from_a.clone();
    to_c.push(json!({"from": "b"}));
    assert_eq!(pc.frames(), to_c);
}

#[tokio::test]
async fn an_away_seat_is_held_and_resumed_with_what_it_missed() {
    let f = Fixture::new();
    let grace = Duration::from_secs(30);
    let (pa, pb) = f.resumable_pair("secret-a", grace, 100).await;
    assert_eq!(pa.types(), ["joined", "ready"]);
    pb.frames();

    assert!(f.away(&pa, 1).await, "a resumable seat is held");
    assert_eq!(
        pb.frames(),
        [json!({"type": "playerAway", "seat": 1, "grace": 30_000})]
    );
    f.relay(&pb, 2, r#"{"n":1}"#).await;
    f.relay(&pb, 2, r#"{"n":2}"#).await;

    f.refused(1, "wrong", 1, "a wrong secret resumed").await;
    f.refused(1, "secret-a", 99, "a count beyond the deliveries resumed")
        .await;
    // It had received `joined` (the answer, not a delivery) and `ready`.
    let missed_of = |outcome: ResumeOutcome| match outcome {
        ResumeOutcome::Resumed {
            players, missed, ..
        } => {
            assert_eq!(players, 2);
            missed
                .iter()
                .map(|e| match e {
                    crate::lobby::LobbyEvent::Relay { message, .. } => message.to_string(),
                    other => format!("{other:?}"),
                })
                .collect::<Vec<String>>()
        }
        other => panic!("not resumed: {other:?}"),
    };
    let missed = missed_of(f.resume_to(1, "secret-a", "secret-b", 1).await);
    assert_eq!(missed, [r#"{"n":1}"#, r#"{"n":2}"#]);
    assert_eq!(pb.frames(), [json!({"type": "playerBack", "seat": 1})]);
    // That resume's answer (with secret-b) may have died with its
    // connection: the token it presented is still good, with the same
    // count, and the same deliveries come again.
    let missed = missed_of(f.resume_to(1, "secret-a", "secret-c", 1).await);
    assert_eq!(missed, [r#"{"n":1}"#, r#"{"n":2}"#]);
    // The token of an answer that never arrived (secret-b) is not good any
    // more; the latest (secret-c) is, and once it is used, secret-a is
    // spent.
    f.refused(1, "secret-b", 3, "a token never received resumed")
        .await;
    assert!(matches!(
        f.resume_to(1, "secret-c", "secret-d", 3).await,
        ResumeOutcome::Resumed { .. }
    ));
    f.refused(
        1,
        "secret-a",
        1,
        "a token spent by a later resume resumed again",
    )
    .await;
}

#[tokio::test]
async fn a_seat_that_is_not_resumable_is_not_held() {
    let f = Fixture::new();
    let pa = f.seated(2).await;
    let _pb = f.seated(2).await;
    assert!(!f.away(&pa, 1).await, "the caller leaves instead");
    f.refused(1, "anything", 0, "resumed").await;
}

#[tokio::test(start_paused = true)]
async fn a_held_seat_is_released_when_its_grace_ends() {
    let f = Fixture::new();
    let grace = Duration::from_secs(10);
    let (pa, pb) = f.resumable_pair("secret-a", grace, 100).await;
    pb.frames();
    assert!(f.away(&pa, 1).await);
    assert_eq!(pb.types(), ["playerAway"]);

    tokio::time::sleep(grace - Duration::from_millis(10)).await;
    assert!(pb.frames().is_empty(), "held for the whole grace period");
    assert_eq!(f.local().occupied(), [1, 2]);

    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(
        pb.frames(),
        [json!({"type": "playerLeft", "players": 1, "seat": 1})]
    );
    assert_eq!(f.local().occupied(), [2]);
    f.refused(1, "secret-a", 1, "resumed after its grace").await;
    let (again, _) = f.join(None, 2, None).await;
    assert_eq!(
        again,
        JoinOutcome::Seated {
            seat: 1,
            players: 2
        }
    );
}

/// A seat resumed within its grace is not released by the timer of that
/// absence, even when it goes away again later.
#[tokio::test(start_paused = true)]
async fn the_timer_of_an_earlier_absence_releases_nothing() {
    let f = Fixture::new();
    let grace = Duration::from_secs(10);
    let (pa, pb) = f.resumable_pair("s1", grace, 100).await;
    assert!(f.away(&pa, 1).await);
    tokio::time::sleep(grace / 2).await;
    let member = match f.resume(1, "s1", 1).await {
        ResumeOutcome::Resumed { member, .. } => member,
        other => panic!("{other:?}"),
    };
    tokio::time::sleep(grace / 4).await;
    // Away again: a new grace period of its own.
    assert!(f.store.away(&f.id, &member, 1).await.unwrap());
    pb.frames();
    tokio::time::sleep(grace / 2).await; // the first timer is due now
    assert!(pb.frames().is_empty(), "released by an old timer");
    tokio::time::sleep(grace / 2 + Duration::from_millis(10)).await;
    assert_eq!(pb.types(), ["playerLeft"]);
}

/// A held seat that missed more than its buffer holds cannot be resumed
/// faithfully: it is released at once.
#[tokio::test]
async fn a_held_seat_that_misses_too_much_is_released() {
    let f = Fixture::new();
    let (pa, pb) = f
        .resumable_pair("secret-a", Duration::from_secs(30), 2)
        .await;
    assert!(f.away(&pa, 1).await);
    pb.frames();
    f.relay(&pb, 2, "1").await;
    f.relay(&pb, 2, "2").await;
    assert!(pb.frames().is_empty());
    f.relay(&pb, 2, "3").await;
    assert_eq!(
        pb.frames(),
        [json!({"type": "playerLeft", "players": 1, "seat": 1})]
    );
    f.refused(1, "secret-a", 1, "resumed").await;
}
