//! What the node's and the relay's tests and benchmarks share.
//!
//! - [`eventually`]: poll until a condition holds, or fail naming what was awaited.
//! - [`Process`]: a binary (a node, a relay) started with port 0 everywhere, its addresses read
//!   back from its log, and killed when dropped. Reserving a port by binding port 0 and
//!   freeing it races with every other process on the machine; letting the process bind
//!   port 0 itself does not. (In-process servers get their bound listener handed over:
//!   `todo_node::run` and `todo_relay::run` take one.)
//! - [`restartable_port`]: for a server that must come back on the same port (a relay
//!   restarted under its clients), a port outside the range the system hands out for port 0,
//!   so no other test's port-0 bind can take it while the server is down. (libp2p listens with
//!   SO_REUSEPORT: a port-0 listener of another test that landed on a freed port would share it
//!   with the restarted server, and take half its connections.)
//! - [`rss_kib`]: a process's memory from /proc.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Polls `check` until it returns Some, or panics with `what` after `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A field of /proc/<pid>/status in KiB: `VmRSS:` now, `VmHWM:` the peak (0 if unreadable).
pub fn rss_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// A free TCP port on 127.0.0.1 below the system's ephemeral range (which port 0 draws from),
/// for a server that must restart on the same port: see the crate's docs. Different calls
/// (and processes) start from different points, so they rarely try the same port.
pub fn restartable_port() -> u16 {
    let ephemeral_start: u16 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(32768);
    let low = 10_000u16;
    let span = ephemeral_start.saturating_sub(low).max(1);
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0)
        ^ std::process::id().rotate_left(16);
    for i in 0..span {
        let port = low + ((seed as u16).wrapping_add(i.wrapping_mul(7919)) % span);
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port between {low} and {ephemeral_start}");
}

/// A child process whose output is read line by line, and which is killed when dropped (also
/// when the test panics).
pub struct Process {
    child: Child,
    lines: mpsc::Receiver<String>,
    /// Started in a process group of its own, which is killed whole (a launcher such as
    /// `wrangler dev` runs the server it starts as its own child).
    group: bool,
}

impl Process {
    /// Spawns `command` with its output (stdout and stderr) piped and colours off.
    pub fn spawn(command: &mut Command) -> Self {
        let mut child = command
            .env("NO_COLOR", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("start {:?}: {e}", command.get_program()));
        let (tx, lines) = mpsc::channel();
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");
        for stream in [
            Box::new(stdout) as Box<dyn std::io::Read + Send>,
            Box::new(stderr),
        ] {
            let tx = tx.clone();
            // Reads to the end, so the child never blocks on a full pipe.
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    let _ = tx.send(strip_ansi(&line));
                }
            });
        }
        Self {
            child,
            lines,
            group: false,
        }
    }

    /// Like [`Process::spawn`], in a new process group, all of which is killed on drop.
    pub fn spawn_group(command: &mut Command) -> Self {
        use std::os::unix::process::CommandExt;
        let mut process = Self::spawn(command.process_group(0));
        process.group = true;
        process
    }

    /// Waits for a line containing `marker` and returns it.
    pub fn wait_for(&mut self, marker: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(marker) => return line,
                Ok(line) => seen.push(line),
                Err(_) => panic!(
                    "no line with {marker:?} within {timeout:?} (exited: {:?}); output:\n{}",
                    self.child.try_wait().ok().flatten(),
                    seen.join("\n")
                ),
            }
        }
    }

    /// The lines written since the last read (for a failure message).
    pub fn output(&mut self) -> Vec<String> {
        self.lines.try_iter().collect()
    }

    /// Waits for a line containing `marker` and returns the value of `key=` in it: how a
    /// process started on port 0 says where it listens (`node listening addr=…`).
    pub fn logged(&mut self, marker: &str, key: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(marker) => {
                    return field(&line, key)
                        .unwrap_or_else(|| panic!("{key}= missing from {line:?}"));
                }
                Ok(_) => {}
                Err(_) => panic!(
                    "no line with {marker:?} within {timeout:?} (exited: {:?})",
                    self.child.try_wait().ok().flatten()
                ),
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL (to its whole group, if it has one), then reap.
    pub fn kill(&mut self) {
        if self.group
            && let Ok(pid) = libc::pid_t::try_from(self.child.id())
        {
            // SAFETY: signalling the process group we created for our own child.
            unsafe { libc::kill(-pid, libc::SIGKILL) };
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then waits for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = libc::pid_t::try_from(self.child.id()).expect("a pid fits pid_t");
        // SAFETY: signalling our own child by its pid; it has not been reaped yet.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        self.child.wait().expect("wait for the child")
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The value of `key=` in a log line (up to the next space; quotes removed).
pub fn field(line: &str, key: &str) -> Option<String> {
    let needle = format!("{key}=");
    let start = line
        .match_indices(&needle)
        .find(|(i, _)| *i == 0 || line.as_bytes()[i - 1] == b' ')
        .map(|(i, _)| i + needle.len())?;
    let value = line[start..].split(' ').next()?;
    Some(value.trim_matches('"').to_owned())
}

/// The line without ANSI escape sequences (a binary may colour its log regardless).
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // ESC [ ... final byte in @..~
            if chars.next() == Some('[') {
                for c in chars.by_ref() {
                    if ('@'..='~').contains(&c) {
                        break;
                    }
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restartable_ports_are_free_and_below_the_ephemeral_range() {
        let port = restartable_port();
        let ephemeral_start: u16 =
            std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
                .ok()
                .and_then(|s| s.split_whitespace().next()?.parse().ok())
                .unwrap_or(32768);
        assert!((10_000..ephemeral_start).contains(&port), "{port}");
        std::net::TcpListener::bind(("127.0.0.1", port)).expect("free");
    }

    #[test]
    fn fields_are_read_from_plain_and_coloured_log_lines() {
        let plain =
            "2026-11-25T02:00:00Z  INFO todo_node: node listening addr=127.0.0.1:41234 node=a";
        assert_eq!(field(plain, "addr").as_deref(), Some("127.0.0.1:41234"));
        assert_eq!(field(plain, "node").as_deref(), Some("a"));
        assert_eq!(field(plain, "de"), None, "only whole keys");
        let coloured = "\u{1b}[2m2026\u{1b}[0m \u{1b}[32m INFO\u{1b}[0m \u{1b}[3maddr\u{1b}[0m\u{1b}[2m=\u{1b}[0m127.0.0.1:5";
        assert_eq!(
            field(&strip_ansi(coloured), "addr").as_deref(),
            Some("127.0.0.1:5")
        );
    }

    #[test]
    fn a_process_says_where_it_listens_and_is_killed_on_drop() {
        let mut process = Process::spawn(Command::new("sh").args([
            "-c",
            "echo starting; echo 'ready addr=127.0.0.1:9 x=1'; sleep 30",
        ]));
        assert_eq!(
            process.logged("ready", "addr", Duration::from_secs(10)),
            "127.0.0.1:9"
        );
        let pid = process.pid();
        drop(process);
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        assert!(
            status.is_empty() || !status.contains("State:\tS"),
            "killed: {status}"
        );
        assert!(rss_kib(std::process::id(), "VmRSS:") > 0);
    }
}
