use super::*;

fn refused(text: &str) -> ErrorCode {
    parse_text(text).expect_err(text).code
}

#[test]
fn join_in_both_forms() {
    let long = parse_text(r#"{"type":"join","passphrase":"jump-rocket"}"#).unwrap();
    let short = parse_text(r#"{"join":"jump-rocket"}"#).unwrap();
    let want = ClientMessage::Join {
        passphrase: "jump-rocket".into(),
        asks: Asks::default(),
    };
    assert_eq!(long, want);
    assert_eq!(short, want);
    // Escapes are decoded; extra fields are ignored.
    assert_eq!(
        parse_text(r#"{"type":"join","passphrase":"jump\u002drocket","v":2}"#).unwrap(),
        want
    );
}

/// `"host":true` (exactly) asks for the host, in a join of either form
/// and in a resume; anything else asks for nothing. A game message's
/// `host` field is never looked at.
#[test]
fn a_join_or_resume_may_ask_for_the_host() {
    for (text, host) in [
        (
            r#"{"type":"join","passphrase":"jump-rocket","host":true}"#,
            true,
        ),
        (r#"{"join":"jump-rocket","host":true,"resume":true}"#, true),
        (
            r#"{"type":"join","passphrase":"jump-rocket","host":1}"#,
            false,
        ),
        (
            r#"{"type":"join","passphrase":"jump-rocket","host":"true"}"#,
            false,
        ),
        (
            r#"{"type":"join","passphrase":"jump-rocket","host":true,"host":true}"#,
            false,
        ),
    ] {
        match parse_text(text) {
            Ok(ClientMessage::Join { asks, .. }) => assert_eq!(asks.host, host, "{text}"),
            other => panic!("{text}: {other:?}"),
        }
    }
    assert_eq!(
        parse_text(r#"{"type":"resume","token":"x","received":3,"host":true}"#),
        Ok(ClientMessage::Resume {
            token: "x".into(),
            received: 3,
            host: true
        })
    );
    assert_eq!(
        parse_text(r#"{"type":"move","host":true,"host":[1]}"#),
        Ok(ClientMessage::Game)
    );
}

#[test]
fn join_with_missing_or_wrong_fields_is_invalid_message() {
    for text in [
        r#"{"type":"join"}"#,
        r#"{"type":"join","passphrase":5}"#,
        r#"{"type":"join","passphrase":null}"#,
        r#"{"type":"join","join":"jump-rocket"}"#,
        r#"{"join":5}"#,
        r#"{"join":["jump-rocket"]}"#,
    ] {
        assert_eq!(refused(text), ErrorCode::InvalidMessage, "{text}");
    }
}

#[test]
fn type_wins_over_the_short_join_form() {
    assert_eq!(
        parse_text(r#"{"type":"playerMove","join":"jump-rocket"}"#).unwrap(),
        ClientMessage::Game
    );
}

#[test]
fn leave_and_ping() {
    assert_eq!(
        parse_text(r#"{"type":"leave"}"#).unwrap(),
        ClientMessage::Leave
    );
    assert_eq!(
        parse_text(r#"{"type":"ping","t":123}"#).unwrap(),
        ClientMessage::Ping {
            t: Some("123"),
            node: false
        }
    );
    assert_eq!(
        parse_text(r#"{"type":"ping"}"#).unwrap(),
        ClientMessage::Ping {
            t: None,
            node: false
        }
    );
    assert_eq!(
        parse_text(r#"{"type":"ping","t":{"a":[1, 2]}}"#).unwrap(),
        ClientMessage::Ping {
            t: Some(r#"{"a":[1, 2]}"#),
            node: false
        }
    );
}

#[test]
fn a_ping_may_ask_for_the_node() {
    assert_eq!(
        parse_text(r#"{"type":"ping","t":5,"node":true}"#).unwrap(),
        ClientMessage::Ping {
            t: Some("5"),
            node: true
        }
    );
    for text in [
        r#"{"type":"ping","node":false}"#,
        r#"{"type":"ping","node":"yes"}"#,
        r#"{"type":"ping","node":true,"node":true}"#,
    ] {
        assert!(
            matches!(
                parse_text(text),
                Ok(ClientMessage::Ping { node: false, .. })
            ),
            "{text}"
        );
    }
    assert_eq!(
        pong_with_node(Some("5"), "relay-1"),
        r#"{"type":"pong","t":5,"node":"relay-1"}"#
    );
    assert_eq!(pong_with_node(None, "a"), r#"{"type":"pong","node":"a"}"#);
}

#[test]
fn game_messages() {
    for text in [
        r#"{"type":"playerMove","x":1,"y":2}"#,
        r#"  {"type":"playerShoot"}  "#,
        r#"{"type":"Join"}"#,
        r#"{"type":""}"#,
        r#"{"type":"chat","text":"h\u00e9llo"}"#,
    ] {
        assert_eq!(parse_text(text).unwrap(), ClientMessage::Game, "{text}");
    }
}

#[test]
fn not_json_is_invalid_json() {
    for text in [
        "",
        "not json",
        "{",
        r#"{"type":"playerMove""#,
        "{'type':'x'}",
        r#"{"type":"a"} x"#,
    ] {
        assert_eq!(refused(text), ErrorCode::InvalidJson, "{text:?}");
    }
}

#[test]
fn a_shape_error_early_in_invalid_json_is_still_invalid_json() {
    // Regression, found by fuzzing: a string first, then garbage.
    assert_eq!(
        refused(r#"""ju":"{""ju":"j"b:ket"}"#),
        ErrorCode::InvalidJson
    );
    assert_eq!(refused(r#"{"type":5, nonsense"#), ErrorCode::InvalidJson);
    assert_eq!(
        refused(r#"{"type":"a","type":"b",}"#),
        ErrorCode::InvalidJson
    );
}

#[test]
fn numbers_beyond_f64_are_still_json() {
    // Found by fuzzing: JSON allows any number syntax; such frames are
    // judged by their shape and relayed byte for byte.
    assert_eq!(refused("[\n80e7777777777777\n]"), ErrorCode::InvalidMessage);
    assert_eq!(refused("777e777777"), ErrorCode::InvalidMessage);
    assert_eq!(
        parse_text(r#"{"type":"big","n":1e999}"#).unwrap(),
        ClientMessage::Game
    );
}

#[test]
fn json_of_the_wrong_shape_is_invalid_message() {
    for text in [
        "[1,2]",
        r#"["playerMove"]"#,
        r#""playerMove""#,
        "5",
        "null",
        "{}",
        r#"{"x":1}"#,
        r#"{"type":5}"#,
        r#"{"type":null}"#,
        r#"{"type":{"a":1}}"#,
        r#"{"type":"a","type":"b"}"#,
    ] {
        assert_eq!(refused(text), ErrorCode::InvalidMessage, "{text}");
    }
}

#[test]
fn relay_types_are_reserved() {
    for kind in [
        "joined",
        "ready",
        "playerJoined",
        "playerLeft",
        "pong",
        "error",
    ] {
        let text = format!(r#"{{"type":"{kind}"}}"#);
        assert_eq!(refused(&text), ErrorCode::ReservedType, "{text}");
    }
}

#[test]
fn auth_is_a_control_message_only_where_authentication_is_on() {
    let text = r#"{"type":"auth","token":"a.b.c"}"#;
    assert_eq!(parse_text(text), Ok(ClientMessage::Game));
    assert_eq!(
        parse_text_with(text, true),
        Ok(ClientMessage::Auth {
            token: "a.b.c".into()
        })
    );
    assert_eq!(
        parse_text_with(r#"{"type":"auth"}"#, true)
            .unwrap_err()
            .code,
        ErrorCode::InvalidMessage
    );
    assert_eq!(
        parse_text_with(r#"{"type":"authenticated"}"#, true)
            .unwrap_err()
            .code,
        ErrorCode::ReservedType
    );
    assert_eq!(
        parse_text(r#"{"type":"authenticated"}"#),
        Ok(ClientMessage::Game)
    );
}

#[test]
fn events_have_the_documented_shape() {
    assert_eq!(
        joined(&Arrival {
            players: 1,
            capacity: 2,
            seat: Some(1),
            users: &[],
            ..Arrival::default()
        }),
        r#"{"type":"joined","players":1,"capacity":2,"seat":1}"#
    );
    assert_eq!(ready(2, &[], None), r#"{"type":"ready","players":2}"#);
    // For a member that asked for the host.
    let host = Some(Host { seat: 2, epoch: 7 });
    assert_eq!(
        joined(&Arrival {
            players: 3,
            capacity: 4,
            seat: Some(1),
            queue: Some("duel"),
            users: &[],
            host,
            spectators: Some(5),
            resume_token: Some("t"),
            ..Arrival::default()
        }),
        r#"{"type":"joined","players":3,"capacity":4,"seat":1,"queue":"duel","host":2,"epoch":7,"spectators":5,"resumeToken":"t"}"#
    );
    // To a spectator.
    assert_eq!(
        joined(&Arrival {
            players: 2,
            capacity: 2,
            users: &[],
            spectators: Some(3),
            delay: Some(30),
            ..Arrival::default()
        }),
        r#"{"type":"watching","players":2,"capacity":2,"spectators":3,"delay":30}"#
    );
    assert_eq!(spectators(4), r#"{"type":"spectators","count":4}"#);
    assert_eq!(
        ready(2, &[], host),
        r#"{"type":"ready","players":2,"host":2,"epoch":7}"#
    );
    assert_eq!(
        host_changed(Host { seat: 3, epoch: 8 }),
        r#"{"type":"hostChanged","host":3,"epoch":8}"#
    );
    assert_eq!(
        player_joined(2, 2, &[]),
        r#"{"type":"playerJoined","players":2,"seat":2}"#
    );
    // With authenticated members: their user ids by seat, escaped.
    let users = [(1, "alice".into()), (2, "b\"ob".into())];
    assert_eq!(
        ready(2, &users, None),
        r#"{"type":"ready","players":2,"users":{"1":"alice","2":"b\"ob"}}"#
    );
    assert_eq!(
        authenticated("alice"),
        r#"{"type":"authenticated","user":"alice"}"#
    );
    assert_eq!(
        player_left(1, 2),
        r#"{"type":"playerLeft","players":1,"seat":2}"#
    );
    assert_eq!(pong(Some("123")), r#"{"type":"pong","t":123}"#);
    assert_eq!(pong(None), r#"{"type":"pong"}"#);
    let e: serde_json::Value =
        serde_json::from_str(&error(ErrorCode::LobbyFull, "the \"lobby\" is full")).unwrap();
    assert_eq!(e["type"], "error");
    assert_eq!(e["code"], "lobby_full");
    assert_eq!(e["message"], "the \"lobby\" is full");
}
