//! Embeds the cr-sqlite loadable extension into the node binary, so one file is all a deployment
//! needs. The extension is built by ci/build-crsqlite.sh (npm package, pinned version) into
//! ~/.cache/todo-hybrid/crsqlite-<version>/ with a .sha256 beside it; CRSQLITE_DIR overrides.
//! A missing, stale or half-written build stops the Rust build here with the command to fix it.
use std::path::PathBuf;

use sha2::{Digest, Sha256};

const CRSQLITE_VERSION: &str = "0.16.3";

fn main() {
    println!("cargo:rerun-if-env-changed=CRSQLITE_DIR");
    let dir = std::env::var_os("CRSQLITE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let home = std::env::var_os("HOME")
                .map(PathBuf::from)
                .unwrap_or_default();
            home.join(".cache/todo-hybrid")
                .join(format!("crsqlite-{CRSQLITE_VERSION}"))
        });
    let so = dir.join("crsqlite.so");
    let sum_file = dir.join("crsqlite.so.sha256");
    println!("cargo:rerun-if-changed={}", so.display());
    println!("cargo:rerun-if-changed={}", sum_file.display());

    let fix = "run ci/build-crsqlite.sh (it builds cr-sqlite from the npm package) and build again";
    let bytes = std::fs::read(&so).unwrap_or_else(|e| {
        panic!(
            "cr-sqlite extension not found at {}: {e}; {fix}",
            so.display()
        )
    });
    let recorded = std::fs::read_to_string(&sum_file)
        .unwrap_or_else(|e| panic!("checksum file {} missing: {e}; {fix}", sum_file.display()));
    let expected = recorded.split_whitespace().next().unwrap_or_default();
    let actual = hex::encode(Sha256::digest(&bytes));
    if expected != actual {
        panic!(
            "{} does not match its recorded sha256 ({expected}, found {actual}): \
             the build is stale or was interrupted; delete {} and {fix}",
            so.display(),
            dir.display()
        );
    }
    println!("cargo:rustc-env=CRSQLITE_SO_PATH={}", so.display());
    println!("cargo:rustc-env=CRSQLITE_SO_SHA256={actual}");
    println!("cargo:rustc-env=CRSQLITE_VERSION={CRSQLITE_VERSION}");
}
