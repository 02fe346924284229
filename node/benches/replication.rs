//! Benchmark: replication between two `todo-node` processes on loopback.
//!
//! 1. Propagation: node A takes 200 writes, one at a time; for each, the time until node B
//!    reports it (B's /health todo count, polled every millisecond) — p50/p99/max.
//! 2. Catch-up: node B is stopped, A takes writes making 100,000 changes (33,334 todos × 3
//!    columns), B is restarted and the time until it holds all of them is measured, with the
//!    peak RSS (VmHWM) of both processes.
//! 3. A new browser: the browser peer's own logic (`wasm_peer::peer::Peer`, natively, in this
//!    process) pulls everything A holds through `GET /api/changes` pages, as app.js does: the
//!    time, the pages, this process's anonymous memory growth (the replica) and the size of the
//!    snapshot the browser keeps in OPFS.
//! 4. Bulk: A is given 50,000 completed todos (pushed in batches, as a browser or another
//!    replica would), B receives them; then one click clears them all on A, and the time until
//!    B holds none is measured (before the size-cliff fix that clear was one transaction of
//!    50,000 changes, which B refused: it never arrived). Peak RSS of both again.
//!
//! cargo bench -p todo-node --bench replication [-- --changes 100000 --bulk 50000 --save f.json --compare f.json]

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

#[path = "../tests/support/browser_pull.rs"]
mod browser_pull;
#[path = "../tests/support/bulk.rs"]
mod bulk;
mod common;
use common::{Process, rss_kib, start_node};

struct Node {
    process: Process,
    http: u16,
}

impl Node {
    fn peak_rss_mib(&self) -> f64 {
        rss_kib(self.process.pid(), "VmHWM:") as f64 / 1024.0
    }
}

fn start(dir: &std::path::Path, name: &str, p2p: u16, bootstrap: Option<&str>) -> Node {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_todo-node"));
    cmd.env("DATA_DIR", dir)
        .env("NODE_NAME", name)
        .env("P2P_LISTEN", format!("/ip4/127.0.0.1/tcp/{p2p}"))
        .env("SYNC_INTERVAL_SECS", "1")
        .env("LOG", "warn,todo_node=info");
    if let Some(b) = bootstrap {
        cmd.env("BOOTSTRAP_PEERS", b);
    }
    let (process, http) = start_node(&mut cmd);
    Node { process, http }
}

async fn health(client: &reqwest::Client, node: &Node) -> Option<Value> {
    client
        .get(format!("http://127.0.0.1:{}/health", node.http))
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()
}

async fn wait_until(what: &str, timeout: Duration, mut check: impl AsyncFnMut() -> bool) {
    let started = Instant::now();
    while !check().await {
        assert!(started.elapsed() < timeout, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

#[tokio::main]
async fn main() {
    let mut changes_target = 100_000usize;
    let mut bulk = 50_000usize;
    let (mut save, mut compare) = (None, None);
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--changes" => {
                changes_target = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(changes_target)
            }
            "--bulk" => bulk = args.next().and_then(|v| v.parse().ok()).unwrap_or(bulk),
            "--save" => save = args.next(),
            "--compare" => compare = args.next(),
            _ => {}
        }
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    // B restarts on its port (A redials it there).
    let (p2p_a, p2p_b) = (test_kit::restartable_port(), test_kit::restartable_port());
    let a = start(&dir.path().join("a"), "a", p2p_a, None);
    wait_until("a healthy", Duration::from_secs(30), async || {
        health(&client, &a).await.is_some()
    })
    .await;
    let a_id = health(&client, &a).await.expect("health")["peer_id"]
        .as_str()
        .expect("id")
        .to_owned();
    let seed = format!("/ip4/127.0.0.1/tcp/{p2p_a}/p2p/{a_id}");
    let mut b = start(&dir.path().join("b"), "b", p2p_b, Some(&seed));
    wait_until("b connected to a", Duration::from_secs(30), async || {
        health(&client, &b).await.is_some_and(|h| h["peers"] == 1)
    })
    .await;

    // 1. Propagation latency of single writes.
    let mut latencies = Vec::new();
    for i in 0..200 {
        let before = health(&client, &b).await.expect("health")["todos"]
            .as_i64()
            .expect("count");
        let t = Instant::now();
        let r = client
            .post(format!("http://127.0.0.1:{}/todos", a.http))
            .form(&[("title", format!("latency probe {i}"))])
            .send()
            .await
            .expect("post");
        assert_eq!(r.status(), 303);
        wait_until("b sees the write", Duration::from_secs(30), async || {
            health(&client, &b).await.and_then(|h| h["todos"].as_i64()) == Some(before + 1)
        })
        .await;
        latencies.push(t.elapsed());
    }
    latencies.sort();
    let pct = |p: f64| ms(latencies[((latencies.len() - 1) as f64 * p).round() as usize]);

    // 2. Catch-up after missing `changes_target` changes.
    drop(b);
    let todos = changes_target.div_ceil(3);
    let seed_started = Instant::now();
    let per_worker = todos.div_ceil(16);
    let workers: Vec<_> = (0..16)
        .map(|w| {
            let client = client.clone();
            let url = format!("http://127.0.0.1:{}/todos", a.http);
            tokio::spawn(async move {
                for i in 0..per_worker {
                    let r = client
                        .post(&url)
                        .form(&[("title", format!("missed write {w}-{i}"))])
                        .send()
                        .await
                        .expect("post");
                    assert_eq!(r.status(), 303);
                }
            })
        })
        .collect();
    for w in workers {
        w.await.expect("writer");
    }
    let seeded = seed_started.elapsed();
    let a_todos = health(&client, &a).await.expect("health")["todos"]
        .as_i64()
        .expect("count");
    let missed = (per_worker * 16 * 3) as f64;
    let catch_up_started = Instant::now();
    b = start(&dir.path().join("b"), "b", p2p_b, Some(&seed));
    wait_until("b caught up", Duration::from_secs(600), async || {
        health(&client, &b).await.and_then(|h| h["todos"].as_i64()) == Some(a_todos)
    })
    .await;
    let catch_up = catch_up_started.elapsed();
    let catch_up_rss = (a.peak_rss_mib(), b.peak_rss_mib());

    // 3. A new browser (the browser peer's logic, natively, in this process) pulls all A holds.
    let own_rss_before = rss_kib(std::process::id(), "RssAnon:");
    let mut browser = wasm_peer::peer::Peer::new(changeset::SiteId([0xB0; 16]));
    let pull_started = Instant::now();
    let pull_pages = browser_pull::pull_all(
        &mut browser,
        &client,
        &format!("http://127.0.0.1:{}", a.http),
    )
    .await;
    let browser_pull = pull_started.elapsed();
    assert_eq!(
        browser.todos().len() as i64,
        a_todos,
        "the browser holds A's todos"
    );
    let browser_rss_growth_mib =
        rss_kib(std::process::id(), "RssAnon:").saturating_sub(own_rss_before) as f64 / 1024.0;
    let browser_snapshot_mib = browser.save().len() as f64 / (1024.0 * 1024.0);
    drop(browser);

    // 4. A bulk clear: one click on A, `bulk` todos deleted, until B holds none.
    for batch in bulk::completed_todos("bulk", bulk).chunks(9_000) {
        let r = client
            .post(format!("http://127.0.0.1:{}/api/changes", a.http))
            .json(&json!({ "changes": batch }))
            .send()
            .await
            .expect("push");
        assert_eq!(r.status(), 200, "bulk push");
    }
    let with_bulk = a_todos + bulk as i64;
    wait_until(
        "b holds the bulk todos",
        Duration::from_secs(600),
        async || health(&client, &b).await.and_then(|h| h["todos"].as_i64()) == Some(with_bulk),
    )
    .await;
    let clear_started = Instant::now();
    let r = client
        .post(format!("http://127.0.0.1:{}/todos/clear-completed", a.http))
        .form(&[("return_to", "/")])
        .send()
        .await
        .expect("clear");
    assert_eq!(r.status(), 303);
    let clear_on_a = clear_started.elapsed();
    wait_until("b has the clear", Duration::from_secs(300), async || {
        health(&client, &b).await.and_then(|h| h["todos"].as_i64()) == Some(a_todos)
    })
    .await;
    let bulk_clear = clear_started.elapsed();
    let bulk_rss = (a.peak_rss_mib(), b.peak_rss_mib());
    drop(b);
    drop(a);

    let result = json!({
        "bench": "replication",
        "propagation_p50_ms": pct(0.5),
        "propagation_p99_ms": pct(0.99),
        "propagation_max_ms": pct(1.0),
        "missed_changes": missed,
        "catch_up_secs": catch_up.as_secs_f64(),
        "catch_up_changes_per_sec": missed / catch_up.as_secs_f64(),
        "seed_writes_per_sec": (per_worker * 16) as f64 / seeded.as_secs_f64(),
        "catch_up_peak_rss_a_mib": catch_up_rss.0,
        "catch_up_peak_rss_b_mib": catch_up_rss.1,
        "browser_pull_secs": browser_pull.as_secs_f64(),
        "browser_pull_pages": pull_pages as f64,
        "browser_pull_rss_growth_mib": browser_rss_growth_mib,
        "browser_snapshot_mib": browser_snapshot_mib,
        "bulk_cleared_todos": bulk as f64,
        "bulk_clear_on_a_secs": clear_on_a.as_secs_f64(),
        "bulk_clear_reaches_b_secs": bulk_clear.as_secs_f64(),
        "bulk_peak_rss_a_mib": bulk_rss.0,
        "bulk_peak_rss_b_mib": bulk_rss.1,
    });
    common::report(
        "replication between two nodes on loopback",
        &result,
        &[
            "propagation_p50_ms",
            "propagation_p99_ms",
            "propagation_max_ms",
            "missed_changes",
            "catch_up_secs",
            "catch_up_changes_per_sec",
            "seed_writes_per_sec",
            "catch_up_peak_rss_a_mib",
            "catch_up_peak_rss_b_mib",
            "browser_pull_secs",
            "browser_pull_pages",
            "browser_pull_rss_growth_mib",
            "browser_snapshot_mib",
            "bulk_cleared_todos",
            "bulk_clear_on_a_secs",
            "bulk_clear_reaches_b_secs",
            "bulk_peak_rss_a_mib",
            "bulk_peak_rss_b_mib",
        ],
        save.as_deref(),
        compare.as_deref(),
    );
}
