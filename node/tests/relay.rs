//! Nodes that reach each other only through the relay, in network namespaces.
//!
//! 1. **No route between the nodes**: the relay's namespace has one link to node A's and one
//!    to node B's, and does not forward, so A and B have no path to each other. A keeps a
//!    reservation on the relay (RELAY_ADDRS); B is told only A's circuit address
//!    (`BOOTSTRAP_PEERS=<relay>/p2p-circuit/p2p/<A>`). A todo added on A through the form
//!    appears on B, and back; hole punching cannot succeed, so the connection stays relayed.
//!    Then the relay restarts: both nodes reserve again by themselves, B reconnects, and what
//!    was written meanwhile arrives.
//! 2. **A direct path exists** (all three on one bridge, mDNS off, B again given only A's
//!    circuit address): DCUtR replaces the relayed connection with a direct one.
//!
//! 3. **Loopback, no root needed**: in-process nodes and the relay binary on 127.0.0.1, so the
//!    reservation lifecycle is covered on any machine: reserve, lose it when the relay stops,
//!    get it back by itself when the relay returns, and replicate through it.
//!
//! The relay binary comes from `cargo build -p todo-relay` (ci/test.sh builds it) in the same
//! target folder as this test. The test makes and removes its namespaces and processes itself,
//! also when it fails; its traffic stays inside them. It needs root and `ip netns`, and says
//! so and skips without them.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const WAIT: Duration = Duration::from_secs(60);

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Says on stderr (past the test harness's capture, so it shows in every run) that a test
/// is skipped and why.
fn skip(test: &str, why: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {why}");
}

/// Why this machine cannot run the test, if it cannot.
fn missing_prerequisite() -> Option<&'static str> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("it must run as root (network namespaces)");
    }
    let probe = Command::new("ip").args(["netns", "list"]).output();
    if !probe.is_ok_and(|o| o.status.success()) {
        return Some("`ip netns` (iproute2) is not available");
    }
    let curl = Command::new("curl").arg("--version").output();
    if !curl.is_ok_and(|o| o.status.success()) {
        return Some("curl is not installed");
    }
    None
}

/// The relay binary, built by `cargo build -p todo-relay` next to this package's binary.
fn relay_bin() -> PathBuf {
    let bin = Path::new(env!("CARGO_BIN_EXE_todo-node")).with_file_name("todo-relay");
    assert!(
        bin.is_file(),
        "{} is missing: build the relay first with `cargo build -p todo-relay` (ci/test.sh does)",
        bin.display()
    );
    bin
}

/// A process in a namespace, with its output in a log file.
struct Proc {
    child: Child,
    log: PathBuf,
}

/// Namespaces, links and processes of one test run; Drop removes them all.
struct Lab {
    prefix: String,
    namespaces: Vec<String>,
    procs: Vec<Proc>,
    logs: tempfile::TempDir,
}

impl Drop for Lab {
    fn drop(&mut self) {
        for p in &mut self.procs {
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
        if std::thread::panicking() {
            for p in &self.procs {
                let log = std::fs::read_to_string(&p.log).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(40).collect();
                eprintln!("--- last lines of {} ---", p.log.display());
                for line in tail.iter().rev() {
                    eprintln!("{line}");
                }
            }
        }
        for ns in &self.namespaces {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

impl Lab {
    fn new(tag: &str) -> Self {
        Self {
            prefix: format!("{tag}{}", std::process::id() % 100_000),
            namespaces: Vec::new(),
            procs: Vec::new(),
            logs: tempfile::tempdir().expect("tempdir"),
        }
    }

    fn ns(&mut self, name: &str) -> String {
        let ns = format!("{}-{name}", self.prefix);
        // Leftovers of an earlier run that was killed before it could clean up.
        let _ = Command::new("ip")
            .args(["netns", "del", &ns])
            .stderr(Stdio::null())
            .status();
        ip(&["netns", "add", &ns]);
        self.namespaces.push(ns.clone());
        ip(&["-n", &ns, "link", "set", "lo", "up"]);
        ns
    }

    /// A veth pair between namespaces `a` and `b`, with the given addresses (`x.x.x.x/nn`).
    fn link(&self, (a, a_addr): (&str, &str), (b, b_addr): (&str, &str), name: &str) {
        let (ia, ib) = (
            format!("{}{name}a", self.prefix),
            format!("{}{name}b", self.prefix),
        );
        ip(&["link", "add", &ia, "type", "veth", "peer", "name", &ib]);
        ip(&["link", "set", &ia, "netns", a]);
        ip(&["link", "set", &ib, "netns", b]);
        for (ns, dev, addr) in [(a, &ia, a_addr), (b, &ib, b_addr)] {
            ip(&["-n", ns, "addr", "add", addr, "dev", dev]);
            ip(&["-n", ns, "link", "set", dev, "up"]);
        }
    }

    /// A namespace holding a bridge; hosts are attached with `attach`.
    fn switch(&mut self) -> String {
        let sw = self.ns("sw");
        ip(&["-n", &sw, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", &sw, "link", "set", "br0", "up"]);
        sw
    }

    fn attach(&self, switch: &str, host: &str, addr: &str, name: &str) {
        let (inside, outside) = (
            format!("{}{name}i", self.prefix),
            format!("{}{name}o", self.prefix),
        );
        ip(&[
            "link", "add", &inside, "type", "veth", "peer", "name", &outside,
        ]);
        ip(&["link", "set", &inside, "netns", host]);
        ip(&["link", "set", &outside, "netns", switch]);
        ip(&["-n", switch, "link", "set", &outside, "master", "br0"]);
        ip(&["-n", switch, "link", "set", &outside, "up"]);
        ip(&["-n", host, "addr", "add", addr, "dev", &inside]);
        ip(&["-n", host, "link", "set", &inside, "up"]);
    }

    /// Starts `bin` in namespace `ns` with `env`; returns its index in `procs`.
    fn spawn(&mut self, ns: &str, bin: &Path, name: &str, env: &[(&str, String)]) -> usize {
        let log = self.logs.path().join(format!("{name}.log"));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("log file");
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", ns])
            .arg(bin)
            .env("NO_COLOR", "1")
            .stdout(Stdio::from(file.try_clone().expect("log")))
            .stderr(Stdio::from(file));
        for (k, v) in env {
            command.env(k, v);
        }
        let child = command.spawn().expect("start a process in its namespace");
        self.procs.push(Proc { child, log });
        self.procs.len() - 1
    }

    fn relay(&mut self, ns: &str, data: &Path) -> usize {
        self.spawn(
            ns,
            &relay_bin(),
            "relay",
            &[
                ("DATA_DIR", data.display().to_string()),
                ("HOST", "0.0.0.0".into()),
                ("HTTP_PORT", "4000".into()),
                (
                    "P2P_LISTEN",
                    "/ip4/0.0.0.0/tcp/4001,/ip4/0.0.0.0/udp/4001/quic-v1".into(),
                ),
                ("LOG", "todo_relay=info,warn".into()),
            ],
        )
    }

    fn node(&mut self, ns: &str, name: &str, data: &Path, relay: &str, bootstrap: &str) -> usize {
        let mut env = vec![
            ("DATA_DIR", data.display().to_string()),
            ("HOST", "0.0.0.0".into()),
            ("PORT", "3000".into()),
            ("NODE_NAME", name.into()),
            ("ENABLE_MDNS", "false".into()),
            ("MDNS_SERVICE_NAME", "relay-test".into()),
            (
                "P2P_LISTEN",
                "/ip4/0.0.0.0/tcp/4001,/ip4/0.0.0.0/udp/4001/quic-v1".into(),
            ),
            ("RELAY_ADDRS", relay.into()),
            ("SYNC_INTERVAL_SECS", "1".into()),
            ("LOG", "todo_node=info,warn".into()),
        ];
        if !bootstrap.is_empty() {
            env.push(("BOOTSTRAP_PEERS", bootstrap.into()));
        }
        self.spawn(ns, Path::new(env!("CARGO_BIN_EXE_todo-node")), name, &env)
    }

    /// SIGTERM, and a clean exit within 10 s.
    fn stop(&mut self, index: usize) {
        let child = &mut self.procs[index].child;
        let pid = libc::pid_t::try_from(child.id()).expect("pid");
        // SAFETY: signalling a child process of ours by its pid.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let started = Instant::now();
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                assert!(status.success(), "exited with {status} after SIGTERM");
                return;
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "no exit 10 s after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log(&self, index: usize) -> String {
        std::fs::read_to_string(&self.procs[index].log).unwrap_or_default()
    }
}

/// HTTP from inside a namespace (the test's traffic stays inside the lab).
fn curl(ns: &str, args: &[&str]) -> Option<String> {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "curl", "-sf", "--max-time", "5"])
        .args(args)
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn get_json(ns: &str, url: &str) -> Option<Value> {
    serde_json::from_str(&curl(ns, &[url])?).ok()
}

fn node_json(ns: &str, path: &str) -> Option<Value> {
    get_json(ns, &format!("http://127.0.0.1:3000{path}"))
}

/// Adds a todo through the form, as a browser without JavaScript would.
fn add(ns: &str, title: &str) {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "curl", "-s", "--max-time", "5"])
        .args(["-o", "/dev/null", "-w", "%{http_code}"])
        .args(["--data-urlencode", &format!("title={title}")])
        .args(["-d", "return_to=/", "http://127.0.0.1:3000/todos"])
        .output()
        .expect("curl");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "303",
        "adding {title:?} on {ns}"
    );
}

fn titles(ns: &str) -> Vec<String> {
    let mut t: Vec<String> = node_json(ns, "/api/todos")
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default()
        .iter()
        .filter_map(|t| t["title"].as_str().map(str::to_owned))
        .collect();
    t.sort();
    t
}

fn eventually<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let started = Instant::now();
    loop {
        if let Some(v) = check() {
            println!("  ok: {what} ({:.1} s)", started.elapsed().as_secs_f64());
            return v;
        }
        assert!(
            started.elapsed() < timeout,
            "timed out after {timeout:?} waiting for: {what}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn peer_id(ns: &str, url: &str) -> String {
    eventually(&format!("{url} answers in {ns}"), WAIT, || {
        get_json(ns, url)?["peer_id"].as_str().map(str::to_owned)
    })
}

/// The node's view of `peer` in /api/peers, once it lists it.
fn peer_entry(ns: &str, peer: &str) -> Option<Value> {
    node_json(ns, "/api/peers")?["peers"]
        .as_array()?
        .iter()
        .find(|p| p["peer_id"] == peer)
        .cloned()
}

fn reservation(ns: &str) -> Option<String> {
    node_json(ns, "/api/peers")?["relays"][0]["reservation"]
        .as_str()
        .map(str::to_owned)
}

#[test]
fn nodes_without_a_route_to_each_other_replicate_through_the_relay() {
    if let Some(why) = missing_prerequisite() {
        skip(
            "nodes_without_a_route_to_each_other_replicate_through_the_relay",
            why,
        );
        return;
    }
    let data = tempfile::tempdir().expect("tempdir");
    let mut lab = Lab::new("tr");
    let r = lab.ns("relay");
    let a = lab.ns("a");
    let b = lab.ns("b");
    lab.link((&r, "10.232.1.1/24"), (&a, "10.232.1.2/24"), "ra");
    lab.link((&r, "10.232.2.1/24"), (&b, "10.232.2.2/24"), "rb");
    let forwarding = Command::new("ip")
        .args(["netns", "exec", &r, "cat", "/proc/sys/net/ipv4/ip_forward"])
        .output()
        .expect("read ip_forward");
    assert_eq!(
        String::from_utf8_lossy(&forwarding.stdout).trim(),
        "0",
        "the relay's namespace must not forward between the nodes"
    );
    println!("step: relay {r} between {a} (10.232.1.2) and {b} (10.232.2.2), no route a <-> b");

    let relay = lab.relay(&r, &data.path().join("relay"));
    let relay_id = peer_id(&r, "http://127.0.0.1:4000/health");
    let addrs = get_json(&r, "http://127.0.0.1:4000/addrs").expect("/addrs");
    let relay_for_a = format!("/ip4/10.232.1.1/tcp/4001/p2p/{relay_id}");
    let relay_for_b = format!("/ip4/10.232.2.1/tcp/4001/p2p/{relay_id}");
    for addr in [&relay_for_a, &relay_for_b] {
        assert!(
            addrs["addrs"]
                .as_array()
                .is_some_and(|l| l.iter().any(|x| x == addr.as_str())),
            "/addrs lists {addr}: {addrs}"
        );
    }

    lab.node(&a, "a", &data.path().join("a"), &relay_for_a, "");
    let a_id = peer_id(&a, "http://127.0.0.1:3000/health");
    eventually("a holds a reservation on the relay", WAIT, || {
        (reservation(&a)? == "active").then_some(())
    });
    let a_via_relay = format!("{relay_for_b}/p2p-circuit/p2p/{a_id}");
    lab.node(&b, "b", &data.path().join("b"), &relay_for_b, &a_via_relay);
    let b_id = peer_id(&b, "http://127.0.0.1:3000/health");
    assert!(
        curl(&a, &["http://10.232.2.2:3000/health"]).is_none(),
        "a must have no route to b"
    );

    println!("step: b connects to a through the relay");
    let entry = eventually("b lists a as a peer", WAIT, || peer_entry(&b, &a_id));
    assert_eq!(entry["connection"], "relayed", "{entry}");
    eventually("a lists b as a peer", WAIT, || peer_entry(&a, &b_id));

    println!("step: a todo added on a appears on b, and back");
    add(&a, "written on a");
    eventually("b holds the todo written on a", WAIT, || {
        (titles(&b) == ["written on a"]).then_some(())
    });
    add(&b, "written on b");
    eventually("a holds the todo written on b", WAIT, || {
        (titles(&a) == ["written on a", "written on b"]).then_some(())
    });
    let entry = peer_entry(&b, &a_id).expect("still connected");
    assert_eq!(
        entry["connection"], "relayed",
        "no direct path exists: {entry}"
    );
    assert_eq!(entry["direct_connections"], 0, "{entry}");

    println!("step: the relay restarts; nodes reserve again and reconnect by themselves");
    lab.stop(relay);
    eventually("a noticed its reservation ended", WAIT, || {
        (reservation(&a)? != "active").then_some(())
    });
    add(&a, "written while the relay was down");
    let relay = lab.relay(&r, &data.path().join("relay"));
    assert_eq!(
        peer_id(&r, "http://127.0.0.1:4000/health"),
        relay_id,
        "the relay keeps its identity"
    );
    for ns in [&a, &b] {
        eventually(&format!("{ns} holds a reservation again"), WAIT, || {
            (reservation(ns)? == "active").then_some(())
        });
    }
    eventually(
        "b received what a wrote while the relay was down",
        WAIT,
        || (titles(&b).len() == 3).then_some(()),
    );
    eventually("identical rows on both", WAIT, || {
        let rows = node_json(&a, "/api/todos")?;
        (Some(&rows) == node_json(&b, "/api/todos").as_ref()).then_some(())
    });
    let relay_log = lab.log(relay);
    assert!(relay_log.contains("circuit opened"), "{relay_log}");
}

#[test]
fn dcutr_upgrades_a_relayed_connection_to_direct_when_a_path_exists() {
    if let Some(why) = missing_prerequisite() {
        skip(
            "dcutr_upgrades_a_relayed_connection_to_direct_when_a_path_exists",
            why,
        );
        return;
    }
    let data = tempfile::tempdir().expect("tempdir");
    let mut lab = Lab::new("td");
    let sw = lab.switch();
    let r = lab.ns("relay");
    let a = lab.ns("a");
    let b = lab.ns("b");
    lab.attach(&sw, &r, "10.233.0.1/24", "r");
    lab.attach(&sw, &a, "10.233.0.2/24", "a");
    lab.attach(&sw, &b, "10.233.0.3/24", "b");
    println!("step: relay, a and b on one bridge; mDNS off; b knows only a's circuit address");

    lab.relay(&r, &data.path().join("relay"));
    let relay_id = peer_id(&r, "http://127.0.0.1:4000/health");
    let relay_addr = format!("/ip4/10.233.0.1/tcp/4001/p2p/{relay_id}");
    let na = lab.node(&a, "a", &data.path().join("a"), &relay_addr, "");
    let a_id = peer_id(&a, "http://127.0.0.1:3000/health");
    eventually("a holds a reservation on the relay", WAIT, || {
        (reservation(&a)? == "active").then_some(())
    });
    let nb = lab.node(
        &b,
        "b",
        &data.path().join("b"),
        &relay_addr,
        &format!("{relay_addr}/p2p-circuit/p2p/{a_id}"),
    );

    println!("step: the relayed connection is upgraded to a direct one");
    let entry = eventually("b has a direct connection to a", WAIT, || {
        peer_entry(&b, &a_id).filter(|p| p["direct_connections"].as_u64() >= Some(1))
    });
    assert_eq!(entry["connection"], "direct", "{entry}");
    let upgraded = "direct connection established by hole punching (DCUtR)";
    eventually("a node logged the DCUtR upgrade", WAIT, || {
        (lab.log(na).contains(upgraded) || lab.log(nb).contains(upgraded)).then_some(())
    });
    add(&a, "over the direct connection");
    eventually("b holds the todo written on a", WAIT, || {
        (titles(&b) == ["over the direct connection"]).then_some(())
    });
}

/// The relay binary on loopback, on fixed ports so it can be restarted at the same address.
struct LoopbackRelay {
    child: Child,
    http: u16,
    tcp: u16,
    data: PathBuf,
    log: PathBuf,
}

impl LoopbackRelay {
    fn start(http: u16, tcp: u16, data: &Path, log: &Path) -> Self {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("log");
        let child = Command::new(relay_bin())
            .env("DATA_DIR", data)
            .env("HOST", "127.0.0.1")
            .env("HTTP_PORT", http.to_string())
            .env("P2P_LISTEN", format!("/ip4/127.0.0.1/tcp/{tcp}"))
            .env("LOG", "todo_relay=info,warn")
            .env("NO_COLOR", "1")
            .stdout(Stdio::from(file.try_clone().expect("log")))
            .stderr(Stdio::from(file))
            .spawn()
            .expect("start todo-relay");
        Self {
            child,
            http,
            tcp,
            data: data.to_owned(),
            log: log.to_owned(),
        }
    }

    async fn peer_id(&self) -> String {
        let url = format!("http://127.0.0.1:{}/health", self.http);
        common::eventually("the relay answers /health", WAIT, || {
            let url = url.clone();
            async move {
                let r = common::client().get(&url).send().await.ok()?;
                let v: Value = r.json().await.ok()?;
                v["peer_id"].as_str().map(str::to_owned)
            }
        })
        .await
    }

    fn stop(&mut self) {
        let pid = libc::pid_t::try_from(self.child.id()).expect("pid");
        // SAFETY: signalling a child process of ours by its pid.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let status = self.child.wait().expect("wait for the relay");
        assert!(status.success(), "the relay exited with {status}");
    }

    fn restart(&mut self) {
        self.stop();
        *self = Self::start(self.http, self.tcp, &self.data.clone(), &self.log.clone());
    }
}

impl Drop for LoopbackRelay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

async fn relay_state(node: &common::TestNode) -> Option<String> {
    common::get_json(node, "/api/peers").await["relays"][0]["reservation"]
        .as_str()
        .map(str::to_owned)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_loopback_a_node_keeps_its_reservation_across_relay_restarts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut relay = LoopbackRelay::start(
        free_port(),
        free_port(),
        &dir.path().join("relay"),
        &dir.path().join("relay.log"),
    );
    let relay_id = relay.peer_id().await;
    let relay_addr = format!("/ip4/127.0.0.1/tcp/{}/p2p/{relay_id}", relay.tcp);

    let mut config = common::p2p_config(&dir.path().join("a"), "a", &[]);
    config.relay_addrs = vec![relay_addr.parse().expect("multiaddr")];
    let a = common::TestNode::start_with(config).await;
    common::eventually("a holds a reservation", WAIT, || async {
        (relay_state(&a).await? == "active").then_some(())
    })
    .await;
    let health = common::get_json(&a, "/health").await;
    assert_eq!(health["relay_reservations"], 1, "{health}");
    let a_id = health["peer_id"].as_str().expect("peer id").to_owned();

    relay.stop();
    common::eventually("a saw its reservation end", WAIT, || async {
        (relay_state(&a).await? != "active").then_some(())
    })
    .await;
    common::add(&a, "while the relay was down").await;
    relay = LoopbackRelay::start(
        relay.http,
        relay.tcp,
        &relay.data.clone(),
        &relay.log.clone(),
    );
    assert_eq!(relay.peer_id().await, relay_id);
    common::eventually("a holds a reservation again", WAIT, || async {
        (relay_state(&a).await? == "active").then_some(())
    })
    .await;

    // Another node reaches a through the relay and gets its todo.
    let mut config = common::p2p_config(
        &dir.path().join("b"),
        "b",
        &[format!("{relay_addr}/p2p-circuit/p2p/{a_id}")],
    );
    config.relay_addrs = vec![relay_addr.parse().expect("multiaddr")];
    let b = common::TestNode::start_with(config).await;
    common::eventually("b holds a's todo", WAIT, || async {
        (common::titles(&b).await == ["while the relay was down"]).then_some(())
    })
    .await;
    relay.restart();
    common::eventually(
        "b holds a reservation after another restart",
        WAIT,
        || async { (relay_state(&b).await? == "active").then_some(()) },
    )
    .await;
    b.stop().await;
    a.stop().await;
}
