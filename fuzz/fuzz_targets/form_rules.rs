//! The form bodies' fields through the rules node and browser share (crates/app): any
//! urlencoded body parses, and every rule answers Ok or a message, never a panic. (The
//! form_bodies target runs whole posts through the browser peer; this one is the fast path.)
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for (name, value) in form_urlencoded::parse(data) {
        let _ = app::return_target(Some(&value));
        match &*name {
            "title" => {
                if let Ok(title) = app::validate_title(&value) {
                    assert!(!title.trim().is_empty());
                    // What a form accepts, every replica accepts (changeset::validate).
                    assert!(title.len() <= changeset::validate::MAX_TITLE_BYTES);
                }
            }
            "id" => {
                if let Ok(id) = app::parse_client_id(&value) {
                    assert_eq!(id.len(), 36);
                }
            }
            "completed" => {
                let _ = app::parse_completed(&value);
            }
            _ => {}
        }
    }
});
