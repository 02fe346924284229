//! Headless Chromium (Debian's chromium + chromium-driver) driven by `fantoccini`, behind the
//! few calls the browser tests make. Each `Browser` runs its own chromedriver, which picks its
//! own port (`--port=0`, read back from what it prints: no port is reserved and freed first),
//! and is killed with its browser on drop, so a failing test leaves no processes behind.
//!
//! Every WebDriver error fails the test, except "no such element" where the caller asks
//! whether an element exists: a dead session is never mistaken for a missing element.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use fantoccini::wd::WebDriverCompatibleCommand;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

pub const CHROMIUM: &str = "/usr/bin/chromium";
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

pub struct Browser {
    driver: Child,
    /// chromedriver's log: removed when the test quits the browser, kept when it fails.
    log: PathBuf,
    profile: PathBuf,
    quit: bool,
    client: Client,
}

pub struct BrowserOptions<'a> {
    /// The profile (`--user-data-dir`): reuse it to reopen the same browser state.
    pub profile: &'a Path,
    pub javascript: bool,
}

/// Fails the test with what to install when Chromium or its driver is missing.
pub fn require_chromium() {
    for (path, package) in [(CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")] {
        assert!(
            Path::new(path).exists(),
            "{path} not found: install Debian's {package} (ci/test.sh installs it)"
        );
    }
}

/// Chromium's DevTools passthrough (`/goog/cdp/execute`), which WebDriver itself lacks.
#[derive(Debug)]
struct Cdp {
    cmd: String,
    params: Value,
}

impl WebDriverCompatibleCommand for Cdp {
    fn endpoint(
        &self,
        base_url: &url::Url,
        session_id: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base_url.join(&format!(
            "session/{}/goog/cdp/execute",
            session_id.unwrap_or_default()
        ))
    }

    fn method_and_body(&self, _: &url::Url) -> (http::Method, Option<String>) {
        let body = json!({ "cmd": self.cmd, "params": self.params });
        (http::Method::POST, Some(body.to_string()))
    }
}

/// Starts chromedriver on a port of its choosing and returns it with that port and its log.
/// chromedriver's own choice can collide (it binds IPv6 first, then the same port on IPv4,
/// which someone may hold: "IPv4 port not available. Exiting..."), so a start that exits
/// that way is tried again.
async fn start_driver() -> (Child, u16, PathBuf) {
    let mut failures = Vec::new();
    for _ in 0..5 {
        match try_start_driver().await {
            Ok(started) => return started,
            Err(failure) => failures.push(failure),
        }
    }
    panic!("chromedriver did not start:\n{}", failures.join("\n---\n"));
}

async fn try_start_driver() -> Result<(Child, u16, PathBuf), String> {
    let log = tempfile::Builder::new()
        .prefix("chromedriver-")
        .suffix(".log")
        .tempfile()
        .expect("log file")
        .into_temp_path()
        .keep()
        .expect("keep the log");
    let mut driver = Command::new(CHROMEDRIVER)
        .arg("--port=0")
        .arg(format!("--log-path={}", log.display()))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start chromedriver");
    let stdout = driver.stdout.take().expect("chromedriver's stdout");
    let mut lines = BufReader::new(stdout).lines();
    let mut printed = Vec::new();
    let port = tokio::time::timeout(Duration::from_secs(20), async {
        while let Ok(Some(line)) = lines.next_line().await {
            // "ChromeDriver was started successfully on port 40611."
            if let Some(rest) = line.split("successfully on port ").nth(1) {
                return rest.trim_end_matches('.').parse::<u16>().ok();
            }
            printed.push(line);
        }
        None
    })
    .await
    .ok()
    .flatten();
    let Some(port) = port else {
        let _ = driver.kill().await;
        return Err(format!(
            "chromedriver did not say its port within 20 s; it printed:\n{}\nits log: {}",
            printed.join("\n"),
            log.display()
        ));
    };
    // Keep reading (and dropping) its output, so it never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok((driver, port, log))
}

impl Browser {
    pub async fn start(options: BrowserOptions<'_>) -> Self {
        require_chromium();
        let (driver, port, log) = start_driver().await;
        let mut prefs = json!({});
        if !options.javascript {
            prefs = json!({ "profile.managed_default_content_settings.javascript": 2 });
        }
        let args = [
            "--headless=new".to_owned(),
            "--no-sandbox".to_owned(),
            "--disable-gpu".to_owned(),
            "--no-first-run".to_owned(),
            "--disable-background-networking".to_owned(),
            "--disable-component-update".to_owned(),
            "--disable-sync".to_owned(),
            "--disable-dev-shm-usage".to_owned(),
            // WebRTC between browsers on loopback: Chromium gathers no loopback candidates
            // without the first flag, and hides host addresses behind mDNS names unless the
            // page may use media devices (the fake ones grant that without a prompt).
            "--allow-loopback-in-peer-connection".to_owned(),
            "--use-fake-ui-for-media-stream".to_owned(),
            "--use-fake-device-for-media-stream".to_owned(),
            "--disable-features=WebRtcHideLocalIpsWithMdns".to_owned(),
            format!("--user-data-dir={}", options.profile.display()),
        ];
        let mut capabilities = serde_json::Map::new();
        capabilities.insert("browserName".into(), json!("chrome"));
        capabilities.insert(
            "goog:chromeOptions".into(),
            json!({ "binary": CHROMIUM, "args": args, "prefs": prefs }),
        );
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let client = ClientBuilder::new(connector)
            .capabilities(capabilities)
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
            .unwrap_or_else(|e| panic!("chromedriver refused a session: {e}"));
        Self {
            driver,
            log,
            profile: options.profile.to_owned(),
            quit: false,
            client,
        }
    }

    pub async fn goto(&self, url: &str) {
        self.client
            .goto(url)
            .await
            .unwrap_or_else(|e| panic!("open {url}: {e}"));
    }

    pub async fn refresh(&self) {
        self.client.refresh().await.expect("reload the page");
    }

    /// Polls `expression` in the page until it is truthy, for up to `timeout`; on timeout,
    /// fails naming `what`, with what the `diagnose` script returns (e.g. the page's status).
    pub async fn wait_js(&self, what: &str, expression: &str, timeout: Duration, diagnose: &str) {
        let script = format!("try {{ return !!({expression}); }} catch (e) {{ return false; }}");
        let deadline = tokio::time::Instant::now() + timeout;
        while tokio::time::Instant::now() < deadline {
            if self.execute(&script, json!([])).await.as_bool() == Some(true) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let why = self.execute(diagnose, json!([])).await;
        let why = why.as_str().map_or_else(|| why.to_string(), str::to_owned);
        panic!("timed out waiting for: {what}; {why}");
    }

    pub async fn source(&self) -> String {
        self.client.source().await.expect("the page's source")
    }

    /// Runs `script` (a function body; `arguments` holds `args`) and returns its value.
    pub async fn execute(&self, script: &str, args: Value) -> Value {
        self.client
            .execute(script, args_vec(args))
            .await
            .unwrap_or_else(|e| panic!("script failed: {e}\n{script}"))
    }

    /// Runs an async script: `arguments[arguments.length - 1]` is the callback to call.
    pub async fn execute_async(&self, script: &str, args: Value) -> Value {
        self.client
            .execute_async(script, args_vec(args))
            .await
            .unwrap_or_else(|e| panic!("async script failed: {e}\n{script}"))
    }

    /// Whether an element matches `css` (any other WebDriver error fails the test).
    pub async fn find(&self, css: &str) -> Option<fantoccini::elements::Element> {
        match self.client.find(Locator::Css(css)).await {
            Ok(element) => Some(element),
            Err(e) if e.is_no_such_element() => None,
            Err(e) => panic!("looking for {css:?}: {e}"),
        }
    }

    pub async fn element(&self, css: &str) -> fantoccini::elements::Element {
        self.find(css)
            .await
            .unwrap_or_else(|| panic!("no element matches {css:?}"))
    }

    /// Clicks the element matching `css`. A live page (offline mode re-renders what peers
    /// send) may replace the element between finding and clicking it: then it is found again,
    /// as a person would click the new one.
    pub async fn click(&self, css: &str) {
        for _ in 0..5 {
            match self.element(css).await.click().await {
                Ok(()) => return,
                Err(e) if e.is_stale_element_reference() => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("click {css:?}: {e}"),
            }
        }
        panic!("click {css:?}: the element was replaced 5 times in a row");
    }

    /// Types `text` into the field matching `css` (found again if the page replaced it).
    pub async fn type_into(&self, css: &str, text: &str) {
        for _ in 0..5 {
            let element = self.element(css).await;
            let typed = match element.clear().await {
                Ok(()) => element.send_keys(text).await,
                Err(e) => Err(e),
            };
            match typed {
                Ok(()) => return,
                Err(e) if e.is_stale_element_reference() => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("type into {css:?}: {e}"),
            }
        }
        panic!("type into {css:?}: the element was replaced 5 times in a row");
    }

    /// A Chrome DevTools Protocol command through chromedriver.
    pub async fn cdp(&self, cmd: &str, params: Value) -> Value {
        self.client
            .issue_cmd(Cdp {
                cmd: cmd.to_owned(),
                params,
            })
            .await
            .unwrap_or_else(|e| panic!("CDP {cmd}: {e}"))
    }

    /// Ends the session (the browser exits and flushes its profile), then the driver.
    pub async fn quit(mut self) {
        let _ = self.client.clone().close().await;
        let _ = self.driver.kill().await;
        let _ = std::fs::remove_file(&self.log);
        self.quit = true;
    }
}

fn args_vec(args: Value) -> Vec<Value> {
    match args {
        Value::Array(items) => items,
        Value::Null => Vec::new(),
        other => vec![other],
    }
}

impl Drop for Browser {
    /// A test that failed before `quit`: kill the browser processes of this profile (found by
    /// their `--user-data-dir`), since killing chromedriver leaves them running.
    fn drop(&mut self) {
        if self.quit {
            return;
        }
        eprintln!("chromedriver's log: {}", self.log.display());
        let marker = format!("--user-data-dir={}", self.profile.display());
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return;
        };
        for entry in entries.flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
            if String::from_utf8_lossy(&cmdline).contains(&marker) {
                // SAFETY: kill(2) on a pid read from /proc; at worst it is gone already.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
}

/// A fresh profile directory for one browser.
pub fn profile_dir() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("profile dir");
    let path = dir.path().join("profile");
    (dir, path)
}
