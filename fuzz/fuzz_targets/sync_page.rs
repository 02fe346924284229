//! A sync page as a peer answers it: decodes or errors; what decodes round-trips through the
//! encoder, and the checks a receiver makes on it never panic.
#![no_main]

use changeset::sync::wire;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(page) = wire::decode_page(data) {
        let again = wire::decode_page(&wire::encode_page(&page)).expect("re-encoded page decodes");
        assert_eq!(again.changes.len(), page.changes.len());
        assert_eq!(
            (again.source, again.up_to, again.more),
            (page.source, page.up_to, page.more)
        );
        let _ = changeset::validate(&page.changes);
        let _ = changeset::validate::page_up_to(&page.changes, page.up_to, page.more);
    }
});
