//! Embeds the cr-sqlite loadable extension and the browser peer's bundle into the node binary,
//! so one file is all a deployment needs. Both are built outside the clone, under `TODO_CACHE`
//! (~/.cache/todo-hybrid by default): ci/build-crsqlite.sh builds the extension from the npm
//! package into crsqlite-<version>/ with a .sha256 beside it (CRSQLITE_DIR overrides), and
//! ci/build-wasm.sh the bundle into wasm-bundle/ (WASM_BUNDLE_DIR overrides).
//!
//! Either one missing, stale or half-written does not stop the build: `cargo check`, clippy and
//! an editor's rust-analyzer must work on a fresh clone. Cargo prints a warning naming the
//! script to run, the crate is compiled with `cfg(crsqlite_missing)` / `cfg(wasm_bundle_missing)`,
//! and a node built that way refuses to start with the same message
//! (`todo_node::BUILD_PROBLEMS`).
//!
//! It also renders the PWA's PNG icons from `templates/static/icons/icon.svg` into OUT_DIR, so
//! the SVG is the one source of the design, and precompresses every text asset and the wasm
//! bundle (brotli and gzip, at their best levels: the cost is paid once here, not per request)
//! into OUT_DIR/compressed, which node/src/http/assets.rs serves to browsers that accept it.
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

const CRSQLITE_VERSION: &str = "0.16.3";

fn main() {
    println!("cargo::rustc-check-cfg=cfg(crsqlite_missing)");
    println!("cargo::rustc-check-cfg=cfg(wasm_bundle_missing)");
    let cache = home_cache();
    crsqlite(&cache);
    let bundle = wasm_bundle(&cache);
    icons();
    precompress(bundle.as_deref());
}

/// Where ci/env.sh keeps what it builds: `TODO_CACHE`, by default ~/.cache/todo-hybrid.
fn home_cache() -> PathBuf {
    println!("cargo::rerun-if-env-changed=TODO_CACHE");
    std::env::var_os("TODO_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            std::env::var_os("HOME")
                .map(PathBuf::from)
                .unwrap_or_default()
                .join(".cache/todo-hybrid")
        })
}

/// Tells cargo (a warning) and the crate (an env var it reports at start) what is missing.
fn missing(cfg: &str, env: &str, problem: &str) {
    println!("cargo::warning={problem}; a node built now refuses to start");
    println!("cargo::rustc-cfg={cfg}");
    println!("cargo::rustc-env={env}={problem}");
}

fn crsqlite(cache: &Path) {
    println!("cargo::rerun-if-env-changed=CRSQLITE_DIR");
    println!("cargo::rustc-env=CRSQLITE_VERSION={CRSQLITE_VERSION}");
    let dir = std::env::var_os("CRSQLITE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| cache.join(format!("crsqlite-{CRSQLITE_VERSION}")));
    let so = dir.join("crsqlite.so");
    let sum_file = dir.join("crsqlite.so.sha256");
    println!("cargo::rerun-if-changed={}", so.display());
    println!("cargo::rerun-if-changed={}", sum_file.display());
    match checked_extension(&so, &sum_file) {
        Ok(sha256) => {
            println!("cargo::rustc-env=CRSQLITE_SO_PATH={}", so.display());
            println!("cargo::rustc-env=CRSQLITE_SO_SHA256={sha256}");
        }
        Err(problem) => missing(
            "crsqlite_missing",
            "CRSQLITE_BUILD_PROBLEM",
            &format!(
                "{problem}: run ci/build-crsqlite.sh (it builds cr-sqlite {CRSQLITE_VERSION} \
                 from the npm package into {}), then build again",
                dir.display()
            ),
        ),
    }
}

/// The extension's sha256 if the file is there and matches the checksum its build recorded.
fn checked_extension(so: &Path, sum_file: &Path) -> Result<String, String> {
    let bytes = std::fs::read(so)
        .map_err(|e| format!("cr-sqlite extension not found at {}: {e}", so.display()))?;
    let recorded = std::fs::read_to_string(sum_file)
        .map_err(|e| format!("checksum file {} missing: {e}", sum_file.display()))?;
    let expected = recorded.split_whitespace().next().unwrap_or_default();
    let actual = hex::encode(Sha256::digest(&bytes));
    if expected == actual {
        Ok(actual)
    } else {
        Err(format!(
            "{} does not match its recorded sha256 ({expected}, found {actual}): the build is \
             stale or was interrupted; delete its folder",
            so.display()
        ))
    }
}

/// The browser peer's bundle, which node/src/http/assets.rs embeds from `WASM_BUNDLE_DIR`; its
/// folder when it is complete.
fn wasm_bundle(cache: &Path) -> Option<PathBuf> {
    println!("cargo::rerun-if-env-changed=WASM_BUNDLE_DIR");
    let dir = std::env::var_os("WASM_BUNDLE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| cache.join("wasm-bundle"));
    let mut absent = Vec::new();
    let files = [
        "wasm_peer.js",
        "wasm_peer_bg.wasm",
        "browser_p2p.js",
        "browser_p2p_bg.wasm",
    ];
    for file in files {
        let path = dir.join(file);
        println!("cargo::rerun-if-changed={}", path.display());
        if !path.is_file() {
            absent.push(path.display().to_string());
        }
    }
    if absent.is_empty() {
        println!("cargo::rustc-env=WASM_BUNDLE_DIR={}", dir.display());
        return Some(dir);
    }
    // rust-embed needs a folder that exists: an empty one in OUT_DIR stands in.
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").unwrap_or_default());
    let stand_in = out_dir.join("no-wasm-bundle");
    if let Err(e) = std::fs::create_dir_all(&stand_in) {
        println!("cargo::warning=cannot create {}: {e}", stand_in.display());
    }
    println!("cargo::rustc-env=WASM_BUNDLE_DIR={}", stand_in.display());
    missing(
        "wasm_bundle_missing",
        "WASM_BUNDLE_BUILD_PROBLEM",
        &format!(
            "the browser peer's bundle is missing ({} not found): run ci/build-wasm.sh (it \
             builds wasm-peer/ and browser-p2p/ for the browser into {}), then build again",
            absent.join(", "),
            dir.display()
        ),
    );
    None
}

/// The PNG icons the manifest names, rendered from icon.svg: `any` at 192 and 512 px, and a
/// `maskable` one whose mark is shrunk into the middle 80% (the safe zone a launcher's mask
/// never cuts) on the icon's own background colour.
fn icons() {
    use resvg::{tiny_skia, usvg};

    let svg_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../templates/static/icons/icon.svg");
    println!("cargo::rerun-if-changed={}", svg_path.display());
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR")).join("icons");
    std::fs::create_dir_all(&out).expect("create OUT_DIR/icons");
    let svg = std::fs::read(&svg_path).unwrap_or_else(|e| panic!("{}: {e}", svg_path.display()));
    let tree = usvg::Tree::from_data(&svg, &usvg::Options::default())
        .unwrap_or_else(|e| panic!("{} is not an SVG we can render: {e}", svg_path.display()));
    let render = |size: u32, mark_scale: f32| {
        let mut pixmap = tiny_skia::Pixmap::new(size, size).expect("a non-empty icon size");
        let fit = size as f32 / tree.size().width().max(tree.size().height());
        if mark_scale < 1.0 {
            // The background colour is whatever the SVG paints at its corner.
            let mut corner = tiny_skia::Pixmap::new(1, 1).expect("1x1");
            resvg::render(
                &tree,
                tiny_skia::Transform::from_scale(fit, fit),
                &mut corner.as_mut(),
            );
            let c = corner.pixel(0, 0).expect("a pixel").demultiply();
            pixmap.fill(tiny_skia::Color::from_rgba8(
                c.red(),
                c.green(),
                c.blue(),
                c.alpha(),
            ));
        }
        let scale = fit * mark_scale;
        let offset = size as f32 * (1.0 - mark_scale) / 2.0;
        let transform =
            tiny_skia::Transform::from_scale(scale, scale).post_translate(offset, offset);
        resvg::render(&tree, transform, &mut pixmap.as_mut());
        pixmap.encode_png().expect("PNG encoding")
    };
    for (name, size, mark_scale) in [
        ("icon-192.png", 192, 1.0),
        ("icon-512.png", 512, 1.0),
        ("icon-maskable-512.png", 512, 0.8),
    ] {
        let path = out.join(name);
        std::fs::write(&path, render(size, mark_scale))
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }
}

/// Writes `<asset>.br` and `<asset>.gz` into OUT_DIR/compressed for each text asset of
/// templates/static (the service worker is rendered per build version at run time, and is
/// small) and each file of the wasm bundle (under `wasm/`), named as the router names them. A
/// variant is written only when it saves at least a tenth: PNGs are compressed already.
fn precompress(bundle: Option<&Path>) {
    let out =
        PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR")).join("compressed");
    // Start empty: an asset deleted since the last build must not keep a compressed twin.
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(&out).expect("create OUT_DIR/compressed");
    let static_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../templates/static");
    println!("cargo::rerun-if-changed={}", static_dir.display());
    let mut assets = Vec::new();
    collect_files(&static_dir, &static_dir, &mut assets);
    assets.retain(|(name, _)| name != "sw.js");
    if let Some(bundle) = bundle {
        for entry in
            std::fs::read_dir(bundle).unwrap_or_else(|e| panic!("{}: {e}", bundle.display()))
        {
            let path = entry.expect("a bundle entry").path();
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default()
                .to_owned();
            if name.ends_with(".js") || name.ends_with(".wasm") {
                assets.push((format!("wasm/{name}"), path));
            }
        }
    }
    for (name, path) in assets {
        let raw = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        for (suffix, packed) in [("br", brotli_best(&raw)), ("gz", gzip_best(&raw))] {
            if packed.len() * 10 > raw.len() * 9 {
                continue;
            }
            let target = out.join(format!("{name}.{suffix}"));
            std::fs::create_dir_all(target.parent().expect("a parent"))
                .expect("create a folder in OUT_DIR/compressed");
            std::fs::write(&target, packed).unwrap_or_else(|e| panic!("{}: {e}", target.display()));
        }
    }
}

/// Every file under `dir`, named by its path from `root` with `/` separators.
fn collect_files(root: &Path, dir: &Path, into: &mut Vec<(String, PathBuf)>) {
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            collect_files(root, &path, into);
        } else {
            let name = path.strip_prefix(root).expect("under root");
            let name = name
                .components()
                .map(|c| c.as_os_str().to_string_lossy())
                .collect::<Vec<_>>()
                .join("/");
            into.push((name, path));
        }
    }
}

fn brotli_best(raw: &[u8]) -> Vec<u8> {
    let params = brotli::enc::BrotliEncoderParams {
        quality: 11,
        lgwin: 22,
        ..Default::default()
    };
    let mut packed = Vec::new();
    brotli::BrotliCompress(&mut &raw[..], &mut packed, &params).expect("brotli into memory");
    packed
}

fn gzip_best(raw: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    encoder.write_all(raw).expect("gzip into memory");
    encoder.finish().expect("gzip into memory")
}
