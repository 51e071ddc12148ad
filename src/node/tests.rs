//! A node's local lobbies against its store: the first local member of a
//! lobby subscribes the node, the last one gone unsubscribes it and the hub
//! forgets the lobby, and a join or resume that fails leaves nothing behind.

use std::sync::Arc;

use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

use super::{JoinError, JoinOptions, Membership, Node, ResumeError};
use crate::auth::AuthConfig;
use crate::auth::verify::Verifier;
use crate::config::Config;
use crate::hub::Hub;
use crate::identity::Identity;
use crate::lobby::memory::MemoryStore;
use crate::lobby::{LobbyMembership, MemberId};
use crate::outbox::{self, Inbox, Outbox};
use crate::passphrase::LobbyId;

fn node(capacity: u8) -> Node<MemoryStore> {
    let hub = Arc::new(Hub::default());
    let store = MemoryStore::new(hub.clone());
    let config = Config {
        lobby_capacity: capacity,
        ..Config::default()
    };
    let auth = Arc::new(Verifier::new(&AuthConfig::default()).unwrap());
    Node::new(config, hub, store, Arc::new(Identity::new("n1")), auth)
}

fn lobby() -> LobbyId {
    LobbyId::from_passphrase("node-tests").unwrap()
}

/// A connection's queue (the inbox is kept so that the queue stays open).
fn connection() -> (Outbox, Inbox) {
    outbox::channel(1 << 20)
}

async fn join(node: &Node<MemoryStore>, user: Option<&str>, outbox: &Outbox) -> Membership {
    node.join(lobby(), user, JoinOptions::default(), outbox)
        .await
        .unwrap()
}

#[tokio::test]
async fn the_first_member_subscribes_and_the_last_one_gone_retires_the_lobby() {
    let node = node(4);
    let (oa, _ia) = connection();
    let (ob, _ib) = connection();
    let a = join(&node, None, &oa).await;
    let b = join(&node, None, &ob).await;
    assert_eq!((a.seat, b.seat), (1, 2));
    assert_eq!(
        node.store.subscriptions(),
        (1, 0),
        "one subscription per lobby"
    );
    assert_eq!(node.hub.len(), 1);
    assert!(Arc::ptr_eq(&a.lobby, &b.lobby));

    node.leave(a).await.unwrap();
    assert_eq!(node.store.subscriptions(), (1, 0), "a member is still here");
    assert_eq!(node.hub.len(), 1);
    let retired = b.lobby.clone();
    node.leave(b).await.unwrap();
    assert_eq!(node.store.subscriptions(), (1, 1));
    assert!(node.hub.is_empty(), "the hub forgot the lobby");

    // A new joiner starts over with a fresh local lobby, subscribed again.
    let (oc, _ic) = connection();
    let c = join(&node, None, &oc).await;
    assert!(!Arc::ptr_eq(&c.lobby, &retired));
    assert_eq!(node.store.subscriptions(), (2, 1));
    assert_eq!(c.seat, 1);
}

#[tokio::test]
async fn a_failed_subscribe_leaves_nothing_attached() {
    let node = node(4);
    node.store.fail_next_subscribe();
    let (oa, _ia) = connection();
    match node.join(lobby(), None, JoinOptions::default(), &oa).await {
        Err(JoinError::Unavailable(_)) => {}
        other => panic!("expected unavailable, got {other:?}"),
    }
    assert!(node.hub.is_empty(), "no local lobby stays behind");
    assert_eq!(node.store.lobby_count(), 0, "and no seat");
    let a = join(&node, None, &oa).await;
    assert_eq!(a.seat, 1);
    assert_eq!(node.store.subscriptions(), (1, 0));
}

#[tokio::test]
async fn a_refused_join_detaches_and_the_last_one_retires() {
    let node = node(1);
    let (oa, _ia) = connection();
    let a = join(&node, Some("alice"), &oa).await;
    let (ob, _ib) = connection();
    match node.join(lobby(), None, JoinOptions::default(), &ob).await {
        Err(JoinError::Full) => {}
        other => panic!("expected full, got {other:?}"),
    }
    assert_eq!(a.lobby.seated().len(), 1, "the refused joiner is gone");
    assert_eq!(node.store.subscriptions(), (1, 0));
    node.leave(a).await.unwrap();
    assert_eq!(node.store.subscriptions(), (1, 1));
    assert!(node.hub.is_empty());

    // Refused with no other member on this node (alice sits there through
    // another node): attached, detached and retired at once.
    let node = self::node(2);
    let elsewhere: MemberId = Identity::new("n2").new_member(Some("alice"));
    node.store
        .join(&lobby(), &elsewhere, 2, None, None)
        .await
        .unwrap();
    let (ob, _ib) = connection();
    match node
        .join(lobby(), Some("alice"), JoinOptions::default(), &ob)
        .await
    {
        Err(JoinError::DuplicateUser) => {}
        other => panic!("expected duplicate user, got {other:?}"),
    }
    assert!(node.hub.is_empty(), "the lobby was retired");
    assert_eq!(node.store.subscriptions(), (1, 1));
}

/// The text frames a connection was sent, as JSON.
fn frames(outbox: &Outbox) -> Vec<Value> {
    outbox
        .take_queued()
        .into_iter()
        .filter_map(|f| match f {
            Message::Text(text) => serde_json::from_str(&text).ok(),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn a_held_seat_is_resumed_through_a_fresh_attach() {
    let node = node(2);
    let (oa, _ia) = connection();
    let a = node
        .join(
            lobby(),
            None,
            JoinOptions {
                resume: true,
                host: true,
                spectators: false,
            },
            &oa,
        )
        .await
        .unwrap();
    let (ob, _ib) = connection();
    let b = join(&node, None, &ob).await;
    let token = frames(&oa)
        .iter()
        .find_map(|f| f["resumeToken"].as_str().map(str::to_owned))
        .expect("a resume token in joined");
    ob.take_queued();

    node.drop_member(a).await.unwrap();
    assert_eq!(b.lobby.seated().len(), 1);
    assert_eq!(frames(&ob)[0]["type"], "playerAway");
    assert_eq!(node.store.subscriptions(), (1, 0), "b is still here");

    let (oc, _ic) = connection();
    match node.resume("not a token", 0, false, None, &oc).await {
        Err(ResumeError::Refused(_)) => {}
        other => panic!("{other:?}"),
    }
    let c = node.resume(&token, 1, false, None, &oc).await.unwrap();
    assert_eq!(c.seat, 1);
    assert!(Arc::ptr_eq(&c.lobby, &b.lobby));
    let resumed = frames(&oc);
    assert_eq!(resumed[0]["type"], "resumed");
    assert_eq!(frames(&ob)[0]["type"], "playerBack");
    // The token stays good until the new one (in `resumed`) is used: then
    // it is spent, and the refused member is detached.
    let new_token = resumed[0]["resumeToken"]
        .as_str()
        .expect("a new token in resumed")
        .to_owned();
    let (od, _id) = connection();
    let d = node.resume(&new_token, 1, false, None, &od).await.unwrap();
    assert_eq!(frames(&od)[0]["type"], "resumed");
    drop(c); // its seat went on with d
    let (oe, _ie) = connection();
    match node.resume(&token, 1, false, None, &oe).await {
        Err(ResumeError::Refused(_)) => {}
        other => panic!("{other:?}"),
    }
    assert_eq!(d.lobby.seated().len(), 2);
    node.leave(b).await.unwrap();
    node.leave(d).await.unwrap();
    assert!(node.hub.is_empty());
    assert_eq!(node.store.subscriptions(), (1, 1));
}
