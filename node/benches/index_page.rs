//! Benchmark: `GET /` on a node holding 1,000 todos, at concurrency 16.
//!
//! Starts the real `todo-node` binary (release build) on loopback with a fresh DATA_DIR, adds
//! the todos through the form endpoint, then runs 16 keep-alive clients for a fixed time and
//! prints requests/s, latency percentiles and the node's resident memory. The load generator
//! runs on the same 2 cores as the node, so figures are a floor, not a ceiling.
//!
//! cargo bench -p todo-node --bench index_page [-- --seconds 10 --save out.json --compare old.json]

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::json;

mod common;
use common::{Process, rss_kib, start_node};

const TODOS: usize = 1_000;
const CONCURRENCY: usize = 16;

struct Args {
    seconds: u64,
    save: Option<String>,
    compare: Option<String>,
}

fn args() -> Args {
    let mut out = Args {
        seconds: 10,
        save: None,
        compare: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--seconds" => out.seconds = it.next().and_then(|v| v.parse().ok()).unwrap_or(10),
            "--save" => out.save = it.next(),
            "--compare" => out.compare = it.next(),
            _ => {} // cargo bench passes --bench; ignore what is not ours
        }
    }
    out
}

struct Node {
    process: Process,
    _dir: tempfile::TempDir,
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1e3
}

#[tokio::main]
async fn main() {
    let args = args();
    let dir = tempfile::tempdir().expect("tempdir");
    let (process, port) = start_node(
        Command::new(env!("CARGO_BIN_EXE_todo-node"))
            .env("DATA_DIR", dir.path())
            .env("LOG", "warn,todo_node=info"),
    );
    let node = Node { process, _dir: dir };
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .pool_max_idle_per_host(CONCURRENCY)
        .build()
        .expect("client");

    let started = Instant::now();
    while client.get(format!("{base}/health")).send().await.is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "node did not start"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let rss_idle = rss_kib(node.process.pid(), "VmRSS:");

    let seed = Instant::now();
    for i in 0..TODOS {
        let r = client
            .post(format!("{base}/todos"))
            .form(&[(
                "title",
                format!("todo number {i} with a realistic length title"),
            )])
            .send()
            .await
            .expect("add todo");
        assert_eq!(r.status(), 303);
    }
    let seed_secs = seed.elapsed().as_secs_f64();
    let page = client.get(format!("{base}/")).send().await.expect("page");
    let page_bytes = page.bytes().await.expect("body").len();

    let deadline = Instant::now() + Duration::from_secs(args.seconds);
    let load = Instant::now();
    let workers: Vec<_> = (0..CONCURRENCY)
        .map(|_| {
            let client = client.clone();
            let url = format!("{base}/");
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                while Instant::now() < deadline {
                    let t = Instant::now();
                    let r = client.get(&url).send().await.expect("GET /");
                    assert_eq!(r.status(), 200);
                    r.bytes().await.expect("body");
                    latencies.push(t.elapsed());
                }
                latencies
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for w in workers {
        latencies.extend(w.await.expect("worker"));
    }
    let elapsed = load.elapsed().as_secs_f64();
    latencies.sort();
    let pid = node.process.pid();
    let result = json!({
        "bench": "index_page",
        "todos": TODOS,
        "concurrency": CONCURRENCY,
        "seconds": elapsed,
        "requests": latencies.len(),
        "requests_per_sec": latencies.len() as f64 / elapsed,
        "p50_ms": percentile(&latencies, 0.50),
        "p99_ms": percentile(&latencies, 0.99),
        "max_ms": percentile(&latencies, 1.0),
        "page_bytes": page_bytes,
        "seed_writes_per_sec": TODOS as f64 / seed_secs,
        "rss_idle_kib": rss_idle,
        "rss_after_kib": rss_kib(pid, "VmRSS:"),
        "rss_peak_kib": rss_kib(pid, "VmHWM:"),
    });
    drop(node);

    common::report(
        &format!("GET / with {TODOS} todos, concurrency {CONCURRENCY}, {elapsed:.1} s"),
        &result,
        &[
            "requests_per_sec",
            "p50_ms",
            "p99_ms",
            "max_ms",
            "page_bytes",
            "seed_writes_per_sec",
            "rss_idle_kib",
            "rss_after_kib",
            "rss_peak_kib",
        ],
        args.save.as_deref(),
        args.compare.as_deref(),
    );
}
