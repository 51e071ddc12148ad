//! Any passphrase a player may type: normalising never panics, accepted ones
//! follow the rules, and normalising is idempotent.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lobby_relay::passphrase::{self, LobbyId};

fuzz_target!(|data: &[u8]| {
    let Ok(raw) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(normal) = passphrase::normalize(raw) {
        assert!((passphrase::MIN_LEN..=passphrase::MAX_LEN).contains(&normal.len()));
        assert!(normal.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'));
        assert!(!normal.starts_with('-') && !normal.ends_with('-'));
        assert_eq!(passphrase::normalize(&normal).as_deref(), Ok(normal.as_str()));
        assert_eq!(LobbyId::from_passphrase(raw), LobbyId::from_passphrase(&normal));
        let id = LobbyId::from_passphrase(raw).expect("valid");
        assert_eq!(LobbyId::from_hex(&id.to_string()), Some(id));
    } else {
        assert!(LobbyId::from_passphrase(raw).is_err());
    }
});
