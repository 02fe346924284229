//! Load on the relay, all on loopback: N peers hold reservations at once, then M other peers
//! each open a circuit to one of them and push bytes through it (a request of `--bytes` and
//! its echo back), all at the same time. Reports the time to get the reservations, the
//! transfer time and throughput, circuit latencies, failures, and the relay process's memory
//! (VmRSS idle, with the reservations, peak VmHWM) and CPU time, from /proc.
//!
//! ```sh
//! cargo bench -p todo-relay --bench load -- --reservations 200 --circuits 100 --bytes 262144
//! ```
//! `--save FILE` writes the figures as JSON, `--compare FILE` prints the change against them.
//! The clients run in this process and share the machine's cores with the relay.

#[path = "../tests/common/mod.rs"]
mod common;

#[allow(dead_code)]
#[path = "../../node/benches/common/mod.rs"]
mod report;

use std::time::{Duration, Instant};

use common::{RelayProcess, TestPeer};
use futures::future::join_all;
use serde_json::json;

struct Args {
    reservations: usize,
    circuits: usize,
    bytes: usize,
    timeout: Duration,
    save: Option<String>,
    compare: Option<String>,
}

fn args() -> Args {
    let mut a = Args {
        reservations: 200,
        circuits: 100,
        bytes: 256 * 1024,
        timeout: Duration::from_secs(120),
        save: None,
        compare: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| panic!("{arg} needs a value"));
        match arg.as_str() {
            "--reservations" => a.reservations = value().parse().expect("--reservations N"),
            "--circuits" => a.circuits = value().parse().expect("--circuits M"),
            "--bytes" => a.bytes = value().parse().expect("--bytes B"),
            "--timeout" => {
                a.timeout = Duration::from_secs(value().parse().expect("--timeout SECONDS"))
            }
            "--save" => a.save = Some(value()),
            "--compare" => a.compare = Some(value()),
            "--bench" => {}
            other => panic!("unknown argument {other}"),
        }
    }
    assert!(
        a.circuits <= a.reservations,
        "each circuit goes to its own reserved peer: --circuits must be <= --reservations"
    );
    a
}

/// A field of /proc/<pid>/status in KiB (`VmRSS:`, `VmHWM:`).
fn status_kib(pid: u32, field: &str) -> f64 {
    report::rss_kib(pid, field) as f64
}

fn mib(kib: f64) -> f64 {
    kib / 1024.0
}

/// User + system CPU seconds of a process, from /proc/<pid>/stat.
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which is in parentheses and may hold spaces).
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of stat; here, after "pid (comm)", 11 and 12.
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (ticks(11) + ticks(12)) / hz
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let args = args();
    let dir = tempfile::tempdir().expect("tempdir");
    let limit = (args.reservations + args.circuits + 16).to_string();
    let mut relay = RelayProcess::start(
        dir.path(),
        &[
            ("MAX_RESERVATIONS", &limit),
            ("MAX_CIRCUITS", &limit),
            (
                "MAX_CONNECTIONS",
                &(2 * args.reservations + 2 * args.circuits + 64).to_string(),
            ),
            ("RESERVATION_RATE_PER_IP", "off"),
            ("CIRCUIT_RATE_PER_IP", "off"),
            ("LOG", "warn"),
        ],
    )
    .await;
    let pid = relay.pid();
    let rss_idle = status_kib(pid, "VmRSS:");
    let cpu_start = cpu_secs(pid);
    let relay_addr = relay.tcp_addr();

    // N peers reserve at once.
    let targets: Vec<TestPeer> = join_all((0..args.reservations).map(|_| TestPeer::new())).await;
    let started = Instant::now();
    let reserved = join_all(targets.iter().map(|t| t.reserve(&relay_addr, args.timeout))).await;
    let reserve_secs = started.elapsed().as_secs_f64();
    let reservation_failures = reserved.iter().filter(|r| r.is_err()).count();
    let held = relay.health().await["reservations"].as_u64().unwrap_or(0);
    let rss_reserved = status_kib(pid, "VmRSS:");
    let cpu_reserved = cpu_secs(pid);

    // M peers each open a circuit to a reserved peer and push bytes through it, all at once.
    let sources: Vec<TestPeer> = join_all((0..args.circuits).map(|_| TestPeer::new())).await;
    let payload: Vec<u8> = (0..args.bytes).map(|i| (i % 251) as u8).collect();
    let started = Instant::now();
    let runs = join_all(sources.iter().zip(&targets).map(|(source, target)| {
        let payload = payload.clone();
        let addr = relay.circuit_to(target.id);
        async move {
            let t = Instant::now();
            source.connect(addr, target.id, args.timeout).await?;
            let echoed =
                tokio::time::timeout(args.timeout, source.echo(target.id, payload.clone()))
                    .await
                    .map_err(|_| "echo timed out".to_owned())??;
            if echoed != payload {
                return Err("echo differs".to_owned());
            }
            Ok::<f64, String>(t.elapsed().as_secs_f64() * 1000.0)
        }
    }))
    .await;
    let transfer_secs = started.elapsed().as_secs_f64();
    let mut latencies: Vec<f64> = runs
        .iter()
        .filter_map(|r| r.as_ref().ok().copied())
        .collect();
    latencies.sort_by(f64::total_cmp);
    let circuit_failures = runs.len() - latencies.len();
    if let Some(e) = runs.iter().find_map(|r| r.as_ref().err()) {
        println!("first circuit failure: {e}");
    }
    let circuits_open = relay.health().await["circuits"].as_u64().unwrap_or(0);
    let relayed_mib = (latencies.len() * 2 * args.bytes) as f64 / (1024.0 * 1024.0);
    let cpu_end = cpu_secs(pid);
    let rss_after = status_kib(pid, "VmRSS:");
    let rss_peak = status_kib(pid, "VmHWM:");

    let result = json!({
        "reservations": args.reservations,
        "circuits": args.circuits,
        "bytes_each_way": args.bytes,
        "reservations_held": held,
        "reservation_failures": reservation_failures,
        "reserve_all_s": reserve_secs,
        "circuits_open_after": circuits_open,
        "circuit_failures": circuit_failures,
        "transfer_all_s": transfer_secs,
        "relayed_mib": relayed_mib,
        "throughput_mib_s": relayed_mib / transfer_secs,
        "circuit_p50_ms": percentile(&latencies, 0.5),
        "circuit_p99_ms": percentile(&latencies, 0.99),
        "circuit_max_ms": latencies.last().copied().unwrap_or(0.0),
        "relay_rss_idle_mib": mib(rss_idle),
        "relay_rss_reserved_mib": mib(rss_reserved),
        "relay_rss_after_mib": mib(rss_after),
        "relay_rss_peak_mib": mib(rss_peak),
        "relay_cpu_reserve_s": cpu_reserved - cpu_start,
        "relay_cpu_transfer_s": cpu_end - cpu_reserved,
    });
    let keys = [
        "reservations_held",
        "reservation_failures",
        "reserve_all_s",
        "circuits_open_after",
        "circuit_failures",
        "transfer_all_s",
        "relayed_mib",
        "throughput_mib_s",
        "circuit_p50_ms",
        "circuit_p99_ms",
        "circuit_max_ms",
        "relay_rss_idle_mib",
        "relay_rss_reserved_mib",
        "relay_rss_after_mib",
        "relay_rss_peak_mib",
        "relay_cpu_reserve_s",
        "relay_cpu_transfer_s",
    ];
    report::report(
        &format!(
            "relay load: {} reservations, {} circuits x {} KiB each way (loopback)",
            args.reservations,
            args.circuits,
            args.bytes / 1024
        ),
        &result,
        &keys,
        args.save.as_deref(),
        args.compare.as_deref(),
    );
    drop(sources);
    drop(targets);
    relay.stop().await;
}
