//! The JSON body of `POST /api/changes` (`{"changes": [...]}`), as the node reads it into
//! changeset's `Change`: parses or errors; what parses passes or fails validation without a
//! panic, and serialises back to JSON that parses to the same changes.
#![no_main]

use changeset::Change;
use libfuzzer_sys::fuzz_target;

#[derive(serde::Deserialize)]
struct PushBody {
    changes: Vec<Change>,
}

fuzz_target!(|data: &[u8]| {
    if let Ok(body) = serde_json::from_slice::<PushBody>(data) {
        let _ = changeset::validate(&body.changes);
        let json = serde_json::to_vec(&body.changes).expect("changes serialise");
        let again: Vec<Change> = serde_json::from_slice(&json).expect("serialised changes parse");
        assert_eq!(again.len(), body.changes.len());
    }
});
