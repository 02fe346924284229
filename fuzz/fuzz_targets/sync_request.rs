//! A sync request as a peer sends it: decodes or errors; what decodes round-trips.
#![no_main]

use changeset::sync::wire;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(request) = wire::decode_request(data) {
        assert_eq!(wire::encode_request(&request), data);
    }
});
