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
    wasm_bundle(&home_cache());
}

fn home_cache() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_default()
        .join(".cache/todo-hybrid")
}

/// The browser peer's bundle, built by ci/build-wasm.sh; WASM_BUNDLE_DIR overrides where.
fn wasm_bundle(cache: &std::path::Path) {
    println!("cargo:rerun-if-env-changed=WASM_BUNDLE_DIR");
    let dir = std::env::var_os("WASM_BUNDLE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| cache.join("wasm-bundle"));
    for file in ["wasm_peer.js", "wasm_peer_bg.wasm"] {
        let path = dir.join(file);
        println!("cargo:rerun-if-changed={}", path.display());
        if !path.is_file() {
            panic!(
                "the browser peer's bundle is missing ({} not found): run ci/build-wasm.sh \
                 (it builds wasm-peer/ for the browser) and build again",
                path.display()
            );
        }
    }
    println!("cargo:rustc-env=WASM_BUNDLE_DIR={}", dir.display());
}
