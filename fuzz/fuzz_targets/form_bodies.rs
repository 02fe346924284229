//! The plain HTML forms' urlencoded bodies, applied by the browser peer exactly as a node
//! applies them (crates/app's rules): every path with any body answers a redirect or a page,
//! never a panic. The first byte picks the form, the rest is the body.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use wasm_peer::peer::Peer;

const TODO: &str = "0190a0b0-0000-7000-8000-000000000001";

/// A peer holding one todo, made once: each run posts to a clone of it (building the
/// templates every run made this target a hundred times slower than the others).
fn seeded() -> Peer {
    static SEEDED: OnceLock<Peer> = OnceLock::new();
    SEEDED
        .get_or_init(|| {
            let mut peer = Peer::new(changeset::SiteId([7; 16]));
            let seed = format!("title=seed&id={TODO}");
            peer.submit("/todos", &seed, 1, TODO, "fuzz")
                .expect("seed todo");
            peer
        })
        .clone()
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, body)) = data.split_first() else {
        return;
    };
    let body = String::from_utf8_lossy(body);
    let mut peer = seeded();
    let path = match pick % 6 {
        0 => "/todos".to_owned(),
        1 => format!("/todos/{TODO}/toggle"),
        2 => format!("/todos/{TODO}/title"),
        3 => format!("/todos/{TODO}/delete"),
        4 => "/todos/clear-completed".to_owned(),
        _ => format!("/todos/{}/title", body.chars().take(40).collect::<String>()),
    };
    let _ = peer.submit(
        &path,
        &body,
        2,
        "0190a0b0-0000-7000-8000-000000000002",
        "fuzz",
    );
});
