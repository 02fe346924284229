//! Test kit for multi-host tests: network namespaces joined by veth pairs or a bridge (itself
//! in a "switch" namespace, so the host's network is untouched), processes started inside
//! them with their output in log files, and HTTP from inside a namespace so that the test's
//! traffic stays in the lab. A `Lab` removes everything it made when dropped, also when the
//! test fails, and then prints the tail of each process's log.
//!
//! These tests need root and `ip netns`. Without them a test is skipped, saying why on
//! stderr, unless `NETNS_TESTS=require` is set (ci/test.sh sets it): then it fails, so that
//! CI cannot pass by skipping them.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The port every node listens on for HTTP inside its namespace, as in the compose file.
pub const NODE_HTTP: &str = "http://127.0.0.1:3000";

pub fn node_bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_todo-node"))
}

/// The relay binary, built by `cargo build -p todo-relay` next to this package's binary.
pub fn relay_bin() -> PathBuf {
    let bin = node_bin().with_file_name("todo-relay");
    assert!(
        bin.is_file(),
        "{} is missing: build the relay first with `cargo build -p todo-relay` (ci/test.sh does)",
        bin.display()
    );
    bin
}

/// The settings every node in a lab shares: HTTP on port 3000 of all its addresses, quick
/// anti-entropy rounds, its own data dir. Tests add their discovery settings.
pub fn node_env(name: &str, data_dir: &Path) -> Vec<(&'static str, String)> {
    vec![
        ("DATA_DIR", data_dir.display().to_string()),
        ("HOST", "0.0.0.0".into()),
        ("PORT", "3000".into()),
        ("NODE_NAME", name.into()),
        ("SYNC_INTERVAL_SECS", "1".into()),
        ("LOG", "todo_node=info,warn".into()),
    ]
}

/// Runs `ip` and fails the test, with ip's message, if it fails.
pub fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Whether `test` can run here. When it cannot, says so on stderr (past the harness's
/// capture, so it shows in every run) and returns false; with `NETNS_TESTS=require` it fails.
pub fn can_run(test: &str) -> bool {
    let Some(why) = missing_prerequisite() else {
        return true;
    };
    assert!(
        std::env::var("NETNS_TESTS").as_deref() != Ok("require"),
        "{test} cannot run and NETNS_TESTS=require: {why}"
    );
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {why}");
    false
}

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

/// A process in a namespace, with its output in a log file.
struct Proc {
    child: Child,
    log: PathBuf,
}

/// Namespaces, links and processes of one test run; Drop removes them all.
pub struct Lab {
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
    /// `tag` keeps the names of tests that run at the same time apart; the process id keeps
    /// apart two runs of the same test.
    pub fn new(tag: &str) -> Self {
        Self {
            prefix: format!("{tag}{}", std::process::id() % 100_000),
            namespaces: Vec::new(),
            procs: Vec::new(),
            logs: tempfile::tempdir().expect("tempdir"),
        }
    }

    /// A new namespace with its loopback up.
    pub fn ns(&mut self, name: &str) -> String {
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
    pub fn link(&self, (a, a_addr): (&str, &str), (b, b_addr): (&str, &str), name: &str) {
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
    pub fn switch(&mut self) -> String {
        let sw = self.ns("sw");
        ip(&["-n", &sw, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", &sw, "link", "set", "br0", "up"]);
        sw
    }

    /// Connects namespace `host` to the bridge with address `addr`; `name` names the link.
    pub fn attach(&self, switch: &str, host: &str, addr: &str, name: &str) {
        let (inside, outside) = self.attachment(name);
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

    /// Cuts (or restores) the link `name` at the bridge: a partition.
    pub fn set_attached(&self, switch: &str, name: &str, up: bool) {
        let (_, outside) = self.attachment(name);
        let state = if up { "up" } else { "down" };
        ip(&["-n", switch, "link", "set", &outside, state]);
    }

    fn attachment(&self, name: &str) -> (String, String) {
        (
            format!("{}{name}i", self.prefix),
            format!("{}{name}o", self.prefix),
        )
    }

    /// Starts `bin` in namespace `ns` with `env`, its output in `<name>.log`; returns its
    /// index for `stop` and `log`.
    pub fn spawn(&mut self, ns: &str, bin: &Path, name: &str, env: &[(&str, String)]) -> usize {
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

    /// SIGTERM, and a clean exit within 10 s.
    pub fn stop(&mut self, index: usize) {
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

    pub fn log(&self, index: usize) -> String {
        std::fs::read_to_string(&self.procs[index].log).unwrap_or_default()
    }
}

/// HTTP from inside a namespace; None on any failure (no answer, or a 4xx/5xx).
pub fn curl(ns: &str, args: &[&str]) -> Option<String> {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "curl", "-sf", "--max-time", "5"])
        .args(args)
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

pub fn get_json(ns: &str, url: &str) -> Option<Value> {
    serde_json::from_str(&curl(ns, &[url])?).ok()
}

/// GET `path` from the node in namespace `ns`.
pub fn node_json(ns: &str, path: &str) -> Option<Value> {
    get_json(ns, &format!("{NODE_HTTP}{path}"))
}

/// Adds a todo through the form, as a browser without JavaScript would.
pub fn add(ns: &str, title: &str) {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "curl", "-s", "--max-time", "5"])
        .args(["-o", "/dev/null", "-w", "%{http_code}"])
        .args(["--data-urlencode", &format!("title={title}")])
        .args(["-d", "return_to=/", &format!("{NODE_HTTP}/todos")])
        .output()
        .expect("curl");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "303",
        "adding {title:?} on {ns}"
    );
}

/// The titles of the node's todos, sorted.
pub fn titles(ns: &str) -> Vec<String> {
    let mut t: Vec<String> = node_json(ns, "/api/todos")
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default()
        .iter()
        .filter_map(|t| t["title"].as_str().map(str::to_owned))
        .collect();
    t.sort();
    t
}

/// The node's entry for `peer` in /api/peers, once it lists it.
pub fn peer_entry(ns: &str, peer: &str) -> Option<Value> {
    node_json(ns, "/api/peers")?["peers"]
        .as_array()?
        .iter()
        .find(|p| p["peer_id"] == peer)
        .cloned()
}

/// Polls `check` until it gives a value, printing how long that took; fails after `timeout`.
pub fn eventually<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
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
