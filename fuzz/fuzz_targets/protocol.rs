//! Any text frame a client may send: parsing never panics, and what it
//! accepts is what the protocol says.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lobby_relay::protocol::{self, AUTH_TYPES, ClientMessage, ErrorCode, RESERVED_TYPES};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // Both dialects: protocol v1, and with player authentication on.
    check(text, false);
    check(text, true);
});

fn check(text: &str, auth: bool) {
    match protocol::parse_text_with(text, auth) {
        Ok(message) => {
            // Accepted frames are JSON (numbers beyond f64 are JSON too, but
            // serde_json's Value refuses them: check the syntax with
            // IgnoredAny, the shape with Value when it can hold the frame).
            assert!(serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok());
            let value: Option<serde_json::Value> = serde_json::from_str(text).ok();
            if let Some(value) = &value {
                assert!(value.is_object(), "accepted, so an object");
            }
            match message {
                ClientMessage::Game => {
                    if let Some(value) = &value {
                        let kind = value["type"].as_str().expect("a game message has a string type");
                        assert!(!RESERVED_TYPES.contains(&kind), "reserved type relayed: {kind}");
                        assert!(!(auth && AUTH_TYPES.contains(&kind)), "auth type relayed: {kind}");
                    }
                }
                ClientMessage::Ping { t, .. } => {
                    // The pong echoes t and is valid JSON.
                    let pong: serde_json::Value =
                        serde_json::from_str(&protocol::pong(t)).expect("pong is JSON");
                    assert_eq!(pong["type"], "pong");
                }
                ClientMessage::Auth { .. } => assert!(auth, "auth parsed in protocol v1"),
                ClientMessage::Join { .. } | ClientMessage::Leave => {}
            }
        }
        Err(refusal) => {
            assert!(!refusal.message.is_empty());
            let error: serde_json::Value =
                serde_json::from_str(&protocol::error(refusal.code, &refusal.message))
                    .expect("error is JSON");
            assert_eq!(error["code"], refusal.code.as_str());
            let syntax_ok = serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok();
            assert_eq!(refusal.code != ErrorCode::InvalidJson, syntax_ok, "{:?}", refusal.code);
        }
    }
}
