//! Shared by the node's benchmarks: print figures (with the change against a saved baseline)
//! and save them as JSON, so runs can be compared.

use std::process::Command;
use std::time::Duration;

use serde_json::Value;
pub use test_kit::{Process, rss_kib};

/// Starts the node binary `command` describes on an HTTP port of its own choosing (PORT=0),
/// and returns it with that port once it says it listens.
pub fn start_node(command: &mut Command) -> (Process, u16) {
    let mut node = Process::spawn(command.env("PORT", "0"));
    let addr = node.logged("node listening", "addr", Duration::from_secs(30));
    let port = addr
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("a port in {addr}"));
    (node, port)
}

/// Prints each of `keys` from `result`, with its change against the baseline file at
/// `compare`, then the whole result as one JSON line; writes it to `save` when given.
pub fn report(
    title: &str,
    result: &Value,
    keys: &[&str],
    save: Option<&str>,
    compare: Option<&str>,
) {
    let baseline: Option<Value> = compare
        .and_then(|p| std::fs::read_to_string(p).ok())
        .and_then(|s| serde_json::from_str(&s).ok());
    println!("{title}");
    for key in keys {
        let now = result[*key].as_f64().unwrap_or(0.0);
        let delta = baseline
            .as_ref()
            .and_then(|b| b[*key].as_f64())
            .filter(|old| *old != 0.0)
            .map(|old| {
                format!(
                    "  ({:+.1}% vs baseline {old:.2})",
                    (now - old) / old * 100.0
                )
            })
            .unwrap_or_default();
        println!("  {key:<26} {now:>12.2}{delta}");
    }
    println!("{result}");
    if let Some(path) = save {
        std::fs::write(path, result.to_string()).expect("save results");
        println!("saved to {path}");
    }
}
