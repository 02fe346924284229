//! The relay in-process (`todo_relay::run`), on loopback, on the same ports after a restart, so
//! nodes and browsers that learned its addresses find it again (`test_kit::restartable_port`:
//! ports no other test's port-0 bind can take while it is down); its identity in its data
//! folder, so its peer id stays too. The HTTP listener is bound here and handed over.

use std::path::Path;
use std::time::Duration;

use libp2p::Multiaddr;
use libp2p::multiaddr::Protocol;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::{client, eventually};

pub struct InProcessRelay {
    config: todo_relay::Config,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
    /// Its id, and libp2p addresses (TCP and WebSocket) ending in `/p2p/<id>`.
    pub peer_id: String,
    pub addrs: Vec<Multiaddr>,
}

impl InProcessRelay {
    pub async fn start(data_dir: &Path) -> Self {
        // TEST_LOG=todo_relay=debug (say) shows the relay's log when a test is investigated.
        if let Ok(filter) = std::env::var("TEST_LOG") {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_test_writer()
                .try_init();
        }
        let mut config = todo_relay::Config::with_data_dir(data_dir);
        config.log = "warn".into();
        config.http_port = test_kit::restartable_port();
        config.p2p_listen = vec![
            format!("/ip4/127.0.0.1/tcp/{}", test_kit::restartable_port())
                .parse()
                .expect("addr"),
            format!("/ip4/127.0.0.1/tcp/{}/ws", test_kit::restartable_port())
                .parse()
                .expect("addr"),
        ];
        Self::start_with(config).await
    }

    async fn start_with(config: todo_relay::Config) -> Self {
        let listener = tokio::net::TcpListener::bind(config.http_addr())
            .await
            .expect("bind the relay's HTTP port");
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(todo_relay::run(config.clone(), listener, async {
            let _ = stopped.await;
        }));
        let url = format!("http://{}/addrs", config.http_addr());
        let listeners = config.p2p_listen.len();
        let addrs = eventually(
            "the relay lists every listener in /addrs",
            Duration::from_secs(30),
            || {
                let url = url.clone();
                async move {
                    let r = client().get(&url).send().await.ok()?;
                    let v: serde_json::Value = r.json().await.ok()?;
                    (v["addrs"].as_array()?.len() >= listeners).then_some(v)
                }
            },
        )
        .await;
        let peer_id = addrs["peer_id"].as_str().expect("peer id").to_owned();
        let addrs: Vec<Multiaddr> = addrs["addrs"]
            .as_array()
            .expect("addrs")
            .iter()
            .filter_map(|a| a.as_str()?.parse().ok())
            .collect();
        Self {
            config,
            stop: Some(stop),
            task: Some(task),
            peer_id,
            addrs,
        }
    }

    /// Its HTTP server (`/health`, `/addrs`): what RELAY_ADDRS may name.
    pub fn url(&self) -> String {
        format!("http://{}", self.config.http_addr())
    }

    /// Its TCP address, ending in `/p2p/<id>`.
    pub fn tcp_addr(&self) -> Multiaddr {
        self.addrs
            .iter()
            .find(|a| !a.iter().any(|p| matches!(p, Protocol::Ws(_))))
            .expect("a TCP address")
            .clone()
    }

    pub async fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await
                .expect("relay task")
                .expect("the relay ran cleanly");
        }
    }

    /// Starts it again after `stop`, with the same data and addresses.
    pub async fn start_again(&mut self) {
        *self = Self::start_with(self.config.clone()).await;
    }

    pub async fn restart(&mut self) {
        self.stop().await;
        self.start_again().await;
    }
}
