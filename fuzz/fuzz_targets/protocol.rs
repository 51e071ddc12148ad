//! Any text frame a client may send: parsing never panics, and what it
//! accepts is what the protocol says.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lobby_relay::protocol::{self, ClientMessage, ErrorCode, RESERVED_TYPES};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match protocol::parse_text(text) {
        Ok(message) => {
            // Accepted frames are JSON objects.
            let value: serde_json::Value = serde_json::from_str(text).expect("accepted, so JSON");
            let object = value.as_object().expect("accepted, so an object");
            match message {
                ClientMessage::Game => {
                    let kind = object["type"].as_str().expect("a game message has a string type");
                    assert!(!RESERVED_TYPES.contains(&kind), "reserved type relayed: {kind}");
                }
                ClientMessage::Ping { t } => {
                    // The pong echoes t and is valid JSON.
                    let pong: serde_json::Value =
                        serde_json::from_str(&protocol::pong(t)).expect("pong is JSON");
                    assert_eq!(pong["type"], "pong");
                }
                ClientMessage::Join { .. } | ClientMessage::Leave => {}
            }
        }
        Err(refusal) => {
            assert!(!refusal.message.is_empty());
            let error: serde_json::Value =
                serde_json::from_str(&protocol::error(refusal.code, &refusal.message))
                    .expect("error is JSON");
            assert_eq!(error["code"], refusal.code.as_str());
            if refusal.code != ErrorCode::InvalidJson {
                assert!(serde_json::from_str::<serde_json::Value>(text).is_ok());
            }
        }
    }
});
