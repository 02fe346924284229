//! Failure scenario 4: the node process is killed (SIGKILL) in the middle of writes. Every write
//! that was acknowledged (its 303 reached the client) must be there after a restart.

use std::collections::HashSet;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use test_kit::Process;

/// Starts the node binary on `port` (it comes back on the same one after the kill) and waits
/// until it says it listens.
fn start(data_dir: &std::path::Path, port: u16) -> Process {
    let mut node = Process::spawn(
        Command::new(env!("CARGO_BIN_EXE_todo-node"))
            .env("PORT", port.to_string())
            .env("DATA_DIR", data_dir)
            .env("LOG", "warn,todo_node=info"),
    );
    let addr = node.logged("node listening", "addr", Duration::from_secs(20));
    assert_eq!(addr, format!("127.0.0.1:{port}"));
    node
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_kill_9() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = test_kit::restartable_port();
    let mut node = start(dir.path(), port);

    let acknowledged = Arc::new(Mutex::new(HashSet::new()));
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let client = client.clone();
            let acknowledged = acknowledged.clone();
            tokio::spawn(async move {
                for i in 0.. {
                    let title = format!("writer {w} todo {i}");
                    let sent = client
                        .post(format!("http://127.0.0.1:{port}/todos"))
                        .form(&[("title", title.as_str())])
                        .send()
                        .await;
                    match sent {
                        Ok(r) if r.status() == 303 => {
                            acknowledged.lock().expect("lock").insert(title);
                        }
                        _ => break, // the node is gone
                    }
                }
            })
        })
        .collect();

    // Kill once a good number of writes are acknowledged, while the writers are still going.
    let started = Instant::now();
    while acknowledged.lock().expect("lock").len() < 200 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "writes too slow"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    node.kill();
    for w in writers {
        w.await.expect("writer");
    }
    let acknowledged = acknowledged.lock().expect("lock").clone();

    let _node = start(dir.path(), port);
    let todos: Vec<serde_json::Value> = client
        .get(format!("http://127.0.0.1:{port}/api/todos"))
        .send()
        .await
        .expect("todos")
        .json()
        .await
        .expect("json");
    let stored: HashSet<String> = todos
        .iter()
        .filter_map(|t| t["title"].as_str().map(str::to_owned))
        .collect();
    let lost: Vec<_> = acknowledged.difference(&stored).collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged writes lost: {lost:?}",
        lost.len()
    );
    assert!(stored.len() >= acknowledged.len());
}
