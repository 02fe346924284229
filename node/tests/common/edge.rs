//! The edge worker under a real `wrangler dev` (workerd, local mode), for node/tests/edge.rs
//! and node/benches/edge.rs: whether it can run here, starting and restarting it, and HTTP
//! helpers against it and the nodes.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::json;
use test_kit::{Process, restartable_port};

use super::{TestNode, client};

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

pub fn wrangler() -> PathBuf {
    let cache = std::env::var_os("TODO_CACHE").map_or_else(
        || PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/todo-hybrid"),
        PathBuf::from,
    );
    let version = std::env::var("WRANGLER_VERSION").unwrap_or_else(|_| "3.114.17".into());
    cache.join(format!("wrangler-{version}/node_modules/.bin/wrangler"))
}

/// Whether the edge can run here; says why not (or fails, under EDGE_TESTS=require).
pub fn edge_available() -> bool {
    let missing: Vec<String> = [
        repo().join("edge/build/index.js"),
        repo().join("edge/public/sw.js"),
        wrangler(),
    ]
    .into_iter()
    .filter(|p| !p.exists())
    .map(|p| p.display().to_string())
    .collect();
    if missing.is_empty() {
        return true;
    }
    let why = format!(
        "edge tests skipped: missing {} (run ci/build-edge.sh and ci/edge-dev.sh --install-only)",
        missing.join(", ")
    );
    assert!(
        std::env::var("EDGE_TESTS").as_deref() != Ok("require"),
        "{why}"
    );
    eprintln!("{why}");
    false
}

/// `wrangler dev` serving the edge on a fixed port, its Durable Object's state in `state`.
pub struct Edge {
    port: u16,
    inspector: u16,
    state: PathBuf,
    nodes: String,
    process: Option<Process>,
}

impl Edge {
    pub fn start(state: &Path, nodes: &[&TestNode]) -> Self {
        Self::start_on(restartable_port(), state, nodes)
    }

    pub fn start_on(port: u16, state: &Path, nodes: &[&TestNode]) -> Self {
        let nodes = nodes
            .iter()
            .map(|n| format!("http://{}", n.addr))
            .collect::<Vec<_>>()
            .join(",");
        let mut edge = Self {
            port,
            inspector: restartable_port(),
            state: state.to_owned(),
            nodes,
            process: None,
        };
        edge.restart();
        edge
    }

    /// Starts (again) on the same port with the same state.
    pub fn restart(&mut self) {
        self.stop();
        let mut process = Process::spawn_group(
            Command::new(wrangler())
                .current_dir(repo())
                .env("WRANGLER_SEND_METRICS", "false")
                .env("CI", "true")
                .args(["dev", "--local", "--ip", "127.0.0.1", "--port"])
                .arg(self.port.to_string())
                .arg("--inspector-port")
                .arg(self.inspector.to_string())
                .arg("--persist-to")
                .arg(&self.state)
                .arg("--var")
                .arg(format!("NODE_URLS:{}", self.nodes))
                .args([
                    "--var",
                    "SYNC_INTERVAL_SECS:1",
                    "--var",
                    "EDGE_NAME:edge-test",
                ]),
        );
        process.wait_for("Ready on", Duration::from_secs(90));
        self.process = Some(process);
    }

    pub fn stop(&mut self) {
        if let Some(mut p) = self.process.take() {
            p.kill();
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Prints what wrangler logged (the edge's sync log among it), for a failing test.
    pub fn print_log(&mut self) {
        if let Some(p) = &mut self.process {
            for line in p.output() {
                eprintln!("[edge] {line}");
            }
        }
    }
}

impl Drop for Edge {
    fn drop(&mut self) {
        self.print_log();
    }
}

pub async fn post(url: &str, fields: &[(&str, &str)]) -> reqwest::Response {
    client()
        .post(url)
        .form(fields)
        .send()
        .await
        .unwrap_or_else(|e| panic!("POST {url}: {e}"))
}

pub async fn get(url: &str) -> (u16, String) {
    let r = client()
        .get(url)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    (r.status().as_u16(), r.text().await.expect("body"))
}

pub async fn todos_at(url: &str) -> Vec<serde_json::Value> {
    let (status, body) = get(&format!("{url}/api/todos")).await;
    assert_eq!(status, 200, "{url}/api/todos: {body}");
    serde_json::from_str(&body).expect("a list of todos")
}

/// The todo titled `title` at `base`, if any.
pub async fn find(base: &str, title: &str) -> Option<serde_json::Value> {
    todos_at(base)
        .await
        .into_iter()
        .find(|t| t["title"] == title)
}

/// `n` todos as one push body (`POST /api/changes`), from a replica of its own.
pub fn push_body(site: u8, from: usize, n: usize) -> String {
    use changeset::{Replica, SiteId, TableSchema, Value, Write};
    let mut r = Replica::new(SiteId([site; 16]), vec![TableSchema::todos()]);
    let writes: Vec<Write> = (from..from + n)
        .map(|i| Write::Insert {
            table: "todos".into(),
            pk: vec![Value::Text(format!("0192f6a0-7c1e-7aaa-8bbb-{i:012x}"))],
            values: vec![
                (
                    "title".into(),
                    Value::Text(format!("seeded todo number {i}")),
                ),
                (
                    "created_at".into(),
                    Value::Integer(i64::try_from(i).unwrap_or(0)),
                ),
            ],
        })
        .collect();
    for chunk in writes.chunks(1000) {
        r.write(chunk).expect("write");
    }
    json!({ "changes": r.changes() }).to_string()
}

pub async fn push_to(url: &str, body: String) {
    let r = client()
        .post(format!("{url}/api/changes"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("push");
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap_or_default());
}
