//! Benchmark: what a page and a write cost on one node, at several list sizes.
//!
//! Starts the real `todo-node` binary (release build) on loopback with a fresh DATA_DIR. For each
//! list size (default 100, 1,000, 10,000 and 100,000 todos; the list is grown by pushing
//! changesets, as another replica would) it measures `GET /`:
//! - 16 keep-alive clients for `--seconds`: requests/s, p50 and p99;
//! - one client for half as long: p50 (the latency a lone person sees);
//! - 16 clients revalidating the page they have (`If-None-Match`) for half as long: 304s/s, p99;
//! - the page's size and bytes of HTML per todo (uncompressed, as the load asks for it), its size
//!   in brotli, and the node's RSS after the load.
//!
//! Then, at the largest size, form posts from 4 clients (each a new todo, acknowledged with its
//! 303 only once fsynced): writes/s, p50 and p99. And the node's RSS idle (before any todo) and
//! its peak.
//!
//! The load generator runs on the same 2 cores as the node, so figures are a floor.
//!
//! cargo bench -p todo-node --bench index_page [-- --sizes 100,1000,10000,100000 --seconds 5
//!   --save out.json --compare old.json]

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Map, Value, json};

#[path = "../tests/support/bulk.rs"]
mod bulk;
mod common;
use common::{Process, rss_kib, start_node};

const PAGE_CONCURRENCY: usize = 16;
const WRITE_CONCURRENCY: usize = 4;

struct Args {
    sizes: Vec<usize>,
    seconds: f64,
    save: Option<String>,
    compare: Option<String>,
}

fn args() -> Args {
    let mut out = Args {
        sizes: vec![100, 1_000, 10_000, 100_000],
        seconds: 5.0,
        save: None,
        compare: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--sizes" => {
                let list = it.next().unwrap_or_default();
                out.sizes = list
                    .split(',')
                    .map(|s| {
                        s.trim()
                            .parse()
                            .unwrap_or_else(|_| panic!("--sizes takes numbers, got {s:?}"))
                    })
                    .collect();
                out.sizes.sort_unstable();
            }
            "--seconds" => {
                out.seconds = it
                    .next()
                    .and_then(|v| v.parse().ok())
                    .expect("--seconds takes a number")
            }
            "--save" => out.save = it.next(),
            "--compare" => out.compare = it.next(),
            _ => {} // cargo bench passes --bench; ignore what is not ours
        }
    }
    out
}

fn percentile_ms(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1e3
}

/// Latencies of `clients` concurrent loops of `request` until `duration` has passed, and the
/// wall time they took.
async fn load<F, Fut>(clients: usize, duration: Duration, request: F) -> (Vec<Duration>, f64)
where
    F: Fn(usize, u64) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let started = Instant::now();
    let deadline = started + duration;
    let workers: Vec<_> = (0..clients)
        .map(|client| {
            let request = request.clone();
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut n = 0;
                while Instant::now() < deadline {
                    let t = Instant::now();
                    request(client, n).await;
                    latencies.push(t.elapsed());
                    n += 1;
                }
                latencies
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for w in workers {
        latencies.extend(w.await.expect("load worker"));
    }
    latencies.sort();
    (latencies, started.elapsed().as_secs_f64())
}

/// The page's size in bytes on the wire, asking for `encoding` (reqwest decodes nothing here).
async fn get_page_as(client: &reqwest::Client, url: &str, encoding: &str) -> usize {
    let r = client
        .get(url)
        .header("accept-encoding", encoding)
        .send()
        .await
        .expect("GET /");
    assert_eq!(r.status(), 200, "GET /");
    r.bytes().await.expect("body").len()
}

async fn get_page(client: &reqwest::Client, url: &str) -> usize {
    get_page_as(client, url, "identity").await
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
    let pid = process.pid();
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .pool_max_idle_per_host(PAGE_CONCURRENCY)
        .build()
        .expect("client");
    test_kit::eventually("the node answers /health", Duration::from_secs(20), || {
        let (client, url) = (client.clone(), format!("{base}/health"));
        async move { client.get(url).send().await.ok().map(|_| ()) }
    })
    .await;
    let mut result = Map::new();
    result.insert("bench".into(), json!("index_page"));
    result.insert("seconds_per_run".into(), json!(args.seconds));
    // Most of an idle node's RSS is clean pages of its own binary (code and the embedded
    // extension), which the kernel can drop and read again; the anonymous part is its own.
    let mut keys = Vec::new();
    for (key, field) in [
        ("rss_idle_kib", "VmRSS:"),
        ("rss_idle_anon_kib", "RssAnon:"),
        ("rss_idle_file_kib", "RssFile:"),
    ] {
        result.insert(key.into(), json!(rss_kib(pid, field)));
        keys.push(key.to_owned());
    }

    let page_url = format!("{base}/");
    let mut held = 0;
    for &size in &args.sizes {
        // Grow the list to `size` with the bulk generator's completed todos, pushed in batches
        // below the node's per-request limit.
        let grow = bulk::completed_todos(&format!("s{size}"), size - held);
        for batch in grow.chunks(9_000) {
            let r = client
                .post(format!("{base}/api/changes"))
                .json(&json!({ "changes": batch }))
                .send()
                .await
                .expect("push");
            assert_eq!(r.status(), 200, "bulk push");
        }
        held = size;

        let page_bytes = get_page(&client, &page_url).await;
        let page_bytes_br = get_page_as(&client, &page_url, "br").await;
        let run = Duration::from_secs_f64(args.seconds);
        let fetch_page = {
            let (client, url) = (client.clone(), page_url.clone());
            move |_, _| {
                let (client, url) = (client.clone(), url.clone());
                async move {
                    get_page(&client, &url).await;
                }
            }
        };
        let (many, many_secs) = load(PAGE_CONCURRENCY, run, fetch_page.clone()).await;
        let (one, _) = load(1, run / 2, fetch_page).await;
        // A browser revalidating the page it has: 304 while nothing changed.
        let tag = client
            .get(&page_url)
            .send()
            .await
            .expect("GET /")
            .headers()
            .get("etag")
            .expect("the page has an ETag")
            .clone();
        let (revalidated, revalidated_secs) = load(PAGE_CONCURRENCY, run / 2, {
            let (client, url) = (client.clone(), page_url.clone());
            move |_, _| {
                let (client, url, tag) = (client.clone(), url.clone(), tag.clone());
                async move {
                    let r = client
                        .get(&url)
                        .header("if-none-match", tag)
                        .send()
                        .await
                        .expect("GET /");
                    assert_eq!(r.status(), 304, "an unchanged page");
                }
            }
        })
        .await;
        let figures = [
            ("rps", many.len() as f64 / many_secs),
            ("p50_ms", percentile_ms(&many, 0.50)),
            ("p99_ms", percentile_ms(&many, 0.99)),
            ("one_client_p50_ms", percentile_ms(&one, 0.50)),
            (
                "not_modified_rps",
                revalidated.len() as f64 / revalidated_secs,
            ),
            ("not_modified_p99_ms", percentile_ms(&revalidated, 0.99)),
            ("page_bytes", page_bytes as f64),
            ("bytes_per_todo", page_bytes as f64 / size as f64),
            ("page_bytes_br", page_bytes_br as f64),
            ("rss_after_kib", rss_kib(pid, "VmRSS:") as f64),
        ];
        for (name, value) in figures {
            let key = format!("todos_{size}_{name}");
            result.insert(key.clone(), json!(value));
            keys.push(key);
        }
        println!("measured {size} todos");
    }

    // Writes: each post adds a todo and is answered once the transaction is durable.
    let (writes, writes_secs) = load(WRITE_CONCURRENCY, Duration::from_secs_f64(args.seconds), {
        let (client, url) = (client.clone(), format!("{base}/todos"));
        move |worker, n| {
            let (client, url) = (client.clone(), url.clone());
            async move {
                let r = client
                    .post(&url)
                    .form(&[(
                        "title",
                        format!("write {worker}-{n} with a realistic title"),
                    )])
                    .send()
                    .await
                    .expect("POST /todos");
                assert_eq!(r.status(), 303, "POST /todos");
            }
        }
    })
    .await;
    for (key, value) in [
        ("writes_per_sec", writes.len() as f64 / writes_secs),
        ("write_p50_ms", percentile_ms(&writes, 0.50)),
        ("write_p99_ms", percentile_ms(&writes, 0.99)),
        ("rss_peak_kib", rss_kib(pid, "VmHWM:") as f64),
    ] {
        result.insert(key.into(), json!(value));
        keys.push(key.into());
    }
    drop::<Process>(process);

    let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
    common::report(
        &format!(
            "GET / at {:?} todos ({PAGE_CONCURRENCY} clients, then 1), POST /todos ({WRITE_CONCURRENCY} clients), {} s per run",
            args.sizes, args.seconds
        ),
        &Value::Object(result),
        &keys,
        args.save.as_deref(),
        args.compare.as_deref(),
    );
}
