//! Shared by the node's benchmarks: print figures (with the change against a saved baseline)
//! and save them as JSON, so runs can be compared.

use std::process::Child;

use serde_json::Value;

/// A node process, killed when dropped (also when the benchmark panics).
pub struct NodeProcess(pub Child);

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A field of /proc/<pid>/status in KiB: `VmRSS:` now, `VmHWM:` the peak.
pub fn rss_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
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
