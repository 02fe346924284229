//! Benchmark: the edge worker under a real `wrangler dev` (workerd, local mode) beside a real
//! node on loopback. Needs the built worker and wrangler (ci/build-edge.sh, ci/edge-dev.sh
//! --install-only); says so and stops without them.
//!
//! - a node write until it shows on the edge's page, and an edge write until the node has it
//!   (the edge syncs every second here): 5 each, median and max;
//! - warm `GET /` on the edge with 1,000 todos: 100 requests, median and p90, page size;
//! - a form write on the edge as its list grows to 1,000, 5,000 and 20,000 todos: 20 each;
//! - the first request after wrangler restarts with 20,000 todos (the Durable Object loads
//!   its change log) and the one after it.
//!
//! cargo bench -p todo-node --bench edge [-- --save f.json --compare f.json]

// Only its report is used here; the node-process helpers serve the other benchmarks.
#[allow(dead_code, unused_imports)]
mod common;
#[path = "../tests/common/mod.rs"]
mod tests_common;

use std::time::Instant;

use serde_json::{Map, Value, json};
use tests_common::edge::{Edge, edge_available, find, get, post, push_body, push_to, todos_at};
use tests_common::{TestNode, client, eventually, p2p_config};

const SYNC: std::time::Duration = std::time::Duration::from_secs(60);

fn quantile(ms: &mut [f64], q: f64) -> f64 {
    ms.sort_by(f64::total_cmp);
    ms[((ms.len() - 1) as f64 * q).round() as usize]
}

async fn timed_get(url: &str) -> (f64, usize) {
    let started = Instant::now();
    let r = client().get(url).send().await.expect("get");
    let len = r.bytes().await.expect("body").len();
    (started.elapsed().as_secs_f64() * 1000.0, len)
}

#[tokio::main]
async fn main() {
    let (mut save, mut compare) = (None, None);
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--save" => save = args.next(),
            "--compare" => compare = args.next(),
            _ => {} // cargo bench passes --bench
        }
    }
    if !edge_available() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let node = TestNode::start_with(p2p_config(&dir.path().join("n"), "n", &[])).await;
    let node_url = node.url("");
    let mut edge = Edge::start(&dir.path().join("edge-state"), &[&node]);
    let edge_url = edge.url("");
    let mut result = Map::new();
    result.insert("bench".into(), json!("edge"));
    let mut record = |key: &str, value: f64| {
        result.insert(key.into(), json!(value));
    };

    // Node write → edge page, edge write → node.
    let (mut to_edge, mut to_node) = (Vec::new(), Vec::new());
    for i in 0..5 {
        let title = format!("node write {i}");
        post(&format!("{node_url}/todos"), &[("title", &title)]).await;
        let started = Instant::now();
        eventually("the node's write on the edge page", SYNC, || async {
            get(&edge.url("/")).await.1.contains(&title).then_some(())
        })
        .await;
        to_edge.push(started.elapsed().as_secs_f64() * 1000.0);
        let title = format!("edge write {i}");
        post(&edge.url("/todos"), &[("title", &title)]).await;
        let started = Instant::now();
        eventually("the edge's write on the node", SYNC, || async {
            find(&node_url, &title).await
        })
        .await;
        to_node.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    record(
        "node_write_to_edge_page_p50_ms",
        quantile(&mut to_edge, 0.5),
    );
    record(
        "node_write_to_edge_page_max_ms",
        quantile(&mut to_edge, 1.0),
    );
    record("edge_write_to_node_p50_ms", quantile(&mut to_node, 0.5));
    record("edge_write_to_node_max_ms", quantile(&mut to_node, 1.0));

    // GET / with 1,000 todos, warm.
    let have = todos_at(&edge_url).await.len();
    push_to(&edge_url, push_body(0xB1, 0, 1_000 - have)).await;
    for _ in 0..10 {
        timed_get(&edge.url("/")).await;
    }
    let (mut get_ms, mut size) = (Vec::new(), 0);
    for _ in 0..100 {
        let (ms, len) = timed_get(&edge.url("/")).await;
        get_ms.push(ms);
        size = len;
    }
    record("get_1000_p50_ms", quantile(&mut get_ms, 0.5));
    record("get_1000_p90_ms", quantile(&mut get_ms, 0.9));
    record("get_1000_page_bytes", size as f64);

    // A form write as the list grows.
    for target in [1_000, 5_000, 20_000] {
        let mut from = todos_at(&edge_url).await.len();
        while from < target {
            let n = (target - from).min(3_000);
            push_to(&edge_url, push_body(0xB2, from, n)).await;
            from += n;
        }
        let mut write_ms = Vec::new();
        for i in 0..20 {
            let started = Instant::now();
            let r = post(&edge.url("/todos"), &[("title", &format!("w{target}-{i}"))]).await;
            assert_eq!(r.status(), 303);
            write_ms.push(started.elapsed().as_secs_f64() * 1000.0);
        }
        record(
            &format!("write_at_{target}_p50_ms"),
            quantile(&mut write_ms, 0.5),
        );
    }

    // A restart loads the whole change log once.
    edge.restart();
    let (first_ms, _) = timed_get(&edge.url("/health")).await;
    let (second_ms, _) = timed_get(&edge.url("/health")).await;
    record("restart_first_request_ms", first_ms);
    record("restart_next_request_ms", second_ms);
    drop(edge);
    node.stop().await;

    let keys: Vec<String> = result.keys().filter(|k| *k != "bench").cloned().collect();
    let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
    common::report(
        "the edge under wrangler dev beside one node",
        &Value::Object(result),
        &keys,
        save.as_deref(),
        compare.as_deref(),
    );
}
