//! The binary change batch of gossip and sync pages: any input decodes or errors (no panic,
//! no allocation over libFuzzer's limit), and what decodes re-encodes to a batch that decodes
//! to the same changes.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(changes) = changeset::decode_changes(data) {
        let again = changeset::decode_changes(&changeset::encode_changes(&changes))
            .expect("a re-encoded batch decodes");
        assert!(same(&changes, &again));
        let _ = changeset::validate(&changes);
    }
});

/// Equal, with NaN reals equal to themselves (bit patterns survive the round trip).
fn same(a: &[changeset::Change], b: &[changeset::Change]) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|(x, y)| match (&x.val, &y.val) {
            (changeset::Value::Real(p), changeset::Value::Real(q)) => {
                let (mut x, mut y) = (x.clone(), y.clone());
                x.val = changeset::Value::Null;
                y.val = changeset::Value::Null;
                p.to_bits() == q.to_bits() && x == y
            }
            _ => x == y,
        })
}
