//! cr-sqlite's packed primary key (every change carries one): unpacks or errors; what unpacks
//! packs back to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(values) = changeset::unpack_columns(data) {
        if let Ok(packed) = changeset::pack_columns(&values) {
            let again = changeset::unpack_columns(&packed).expect("packed key unpacks");
            assert_eq!(again.len(), values.len());
        }
    }
});
