//! Test kit: real nodes on 127.0.0.1:0 with a temporary DATA_DIR, driven over real HTTP.
#![allow(dead_code)]

pub mod edge;
pub mod netlab;
pub mod relay;
pub mod webdriver;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use test_kit::eventually;
use todo_node::Config;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub struct TestNode {
    pub addr: SocketAddr,
    pub data_dir: PathBuf,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

impl TestNode {
    pub async fn start(data_dir: &Path) -> Self {
        Self::start_with(Config::with_data_dir(data_dir)).await
    }

    pub async fn start_with(config: Config) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        Self::start_on(config, listener).await
    }

    /// Restarts a node on the address it had (a browser knows it by its origin).
    pub async fn start_at(config: Config, addr: SocketAddr) -> Self {
        let mut attempts = 0;
        let listener = loop {
            match tokio::net::TcpListener::bind(addr).await {
                Ok(l) => break l,
                // The old listener may take a moment to release the port.
                Err(_) if attempts < 100 => {
                    attempts += 1;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("bind {addr} again: {e}"),
            }
        };
        Self::start_on(config, listener).await
    }

    async fn start_on(config: Config, listener: tokio::net::TcpListener) -> Self {
        let addr = listener.local_addr().expect("local addr");
        let (stop, stopped) = oneshot::channel::<()>();
        let data_dir = config.data_dir.clone();
        let task = tokio::spawn(todo_node::run(config, listener, async {
            let _ = stopped.await;
        }));
        let node = Self {
            addr,
            data_dir,
            stop: Some(stop),
            task: Some(task),
        };
        node.wait_healthy().await;
        node
    }

    async fn wait_healthy(&self) {
        let client = client();
        for _ in 0..200 {
            if let Ok(r) = client.get(self.url("/health")).send().await
                && r.status().is_success()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("node at {} did not become healthy", self.addr);
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Graceful stop: waits for the server to finish and the database to close.
    pub async fn stop(mut self) {
        self.shutdown().await;
    }

    async fn shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.expect("node task").expect("node ran cleanly");
        }
    }
}

/// A client that does not follow redirects, so tests see the 303s.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client")
}

pub async fn post_form(node: &TestNode, path: &str, fields: &[(&str, &str)]) -> reqwest::Response {
    client()
        .post(node.url(path))
        .form(fields)
        .send()
        .await
        .expect("post")
}

pub async fn get_text(node: &TestNode, path: &str) -> (u16, String) {
    let r = client().get(node.url(path)).send().await.expect("get");
    (r.status().as_u16(), r.text().await.expect("body"))
}

pub async fn todos(node: &TestNode) -> Vec<serde_json::Value> {
    serde_json::from_value(get_json(node, "/api/todos").await).expect("a list of todos")
}

/// Adds a todo through the form and returns its id (found by title in /api/todos).
pub async fn add(node: &TestNode, title: &str) -> String {
    let r = post_form(node, "/todos", &[("title", title), ("return_to", "/")]).await;
    assert_eq!(r.status(), 303, "adding {title:?}");
    todos(node)
        .await
        .into_iter()
        .rev()
        .find(|t| t["title"] == title.trim())
        .and_then(|t| t["id"].as_str().map(str::to_owned))
        .expect("added todo is listed")
}

/// The node's libp2p address for others to bootstrap from (`/ip4/…/tcp/…/p2p/<id>`).
pub async fn p2p_addr(node: &TestNode) -> String {
    let status = get_json(node, "/api/peers").await;
    let addr = status["listen_addrs"][0]
        .as_str()
        .expect("a listen address");
    format!(
        "{addr}/p2p/{}",
        status["peer_id"].as_str().expect("peer id")
    )
}

/// A node config for replication tests: loopback p2p on a free port, quick anti-entropy.
pub fn p2p_config(data_dir: &Path, name: &str, bootstrap: &[String]) -> Config {
    let mut c = Config::with_data_dir(data_dir);
    c.node_name = name.to_owned();
    c.sync_interval_secs = 1;
    c.bootstrap_peers = bootstrap
        .iter()
        .map(|a| a.parse().expect("multiaddr"))
        .collect();
    c
}

/// Titles of the node's todos, sorted.
pub async fn titles(node: &TestNode) -> Vec<String> {
    let mut t: Vec<String> = todos(node)
        .await
        .iter()
        .filter_map(|t| t["title"].as_str().map(str::to_owned))
        .collect();
    t.sort();
    t
}

/// GET `path` and parse the JSON answer.
pub async fn get_json(node: &TestNode, path: &str) -> serde_json::Value {
    client()
        .get(node.url(path))
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}"))
        .json()
        .await
        .unwrap_or_else(|e| panic!("GET {path}: not JSON: {e}"))
}

/// The crsql_changes rows of a node, minus its local db_versions: equal on two nodes when they
/// hold the same data with the same clocks (what cr-sqlite would converge to).
pub async fn replicated_state(node: &TestNode) -> Vec<serde_json::Value> {
    let page = get_json(node, "/api/changes?since=0").await;
    let mut rows: Vec<serde_json::Value> = page["changes"]
        .as_array()
        .expect("changes")
        .iter()
        .map(|c| {
            let mut c = c.clone();
            c.as_object_mut().expect("object").remove("db_version");
            c
        })
        .collect();
    rows.sort_by_key(|c| format!("{}{}", c["pk"], c["cid"]));
    rows
}
