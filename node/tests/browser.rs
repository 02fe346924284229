//! The app in a real browser (headless Chromium driven over WebDriver) against real nodes:
//! the PWA keeps working when its node is down, keeps offline work across a browser restart
//! (OPFS), and syncs it back to the node — and through it to the other node — when the node
//! returns. And without JavaScript, every action works through the plain forms.

mod common;

use std::time::{Duration, Instant};

use common::webdriver::{Browser, BrowserOptions, profile_dir};
use common::{TestNode, add, eventually, get_json, p2p_addr, p2p_config, titles, todos};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(30);

/// Polls a JavaScript expression in the page until it is truthy; on timeout, fails with the
/// page's sync status (mode, last error) to say why.
async fn wait_js(browser: &Browser, what: &str, expression: &str) {
    let script = format!("try {{ return !!({expression}); }} catch (e) {{ return false; }}");
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        if browser.execute(&script, json!([])).await.as_bool() == Some(true) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let state = browser
        .execute("return JSON.stringify(window.todoApp ?? null)", json!([]))
        .await;
    panic!("timed out waiting for: {what}; page status: {state}");
}

/// Polls the page's HTML until `check` accepts it (works with JavaScript off).
async fn wait_source(browser: &Browser, what: &str, check: impl Fn(&str) -> bool) {
    eventually(what, WAIT, || async {
        check(&browser.source().await).then_some(())
    })
    .await;
}

async fn add_via_form(browser: &Browser, title: &str) {
    browser.type_into("#new-title", title).await;
    browser.click("form.new-todo button").await;
    let listed = format!("<span class=\"title\">{title}</span>");
    wait_source(browser, &format!("{title:?} listed"), |s| {
        s.contains(&listed)
    })
    .await;
}

/// The `li` id of the todo titled `title` on the page.
async fn item_id(browser: &Browser, title: &str) -> String {
    let found = browser
        .execute(
            "const li = [...document.querySelectorAll('li.todo')]
               .find((li) => li.querySelector('.title').textContent === arguments[0]);
             return li ? li.id : null;",
            json!([title]),
        )
        .await;
    found
        .as_str()
        .unwrap_or_else(|| panic!("no todo {title:?} on the page"))
        .to_owned()
}

async fn replica_titles(browser: &Browser) -> Vec<String> {
    let todos = browser
        .execute_async(
            "const done = arguments[arguments.length - 1];
             todoApp.replicaTodos().then(done, (e) => done(String(e)));",
            json!([]),
        )
        .await;
    let mut titles: Vec<String> = todos
        .as_array()
        .unwrap_or_else(|| panic!("replica todos: {todos}"))
        .iter()
        .filter_map(|t| t["title"].as_str().map(str::to_owned))
        .collect();
    titles.sort();
    titles
}

fn sorted(titles: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = titles.iter().map(|t| (*t).to_owned()).collect();
    v.sort();
    v
}

/// What the node holds, comparable across nodes: (id, title, completed), sorted.
async fn rows(node: &TestNode) -> Vec<(String, String, bool)> {
    let mut rows: Vec<(String, String, bool)> = todos(node)
        .await
        .iter()
        .map(|t| {
            (
                t["id"].as_str().unwrap_or_default().to_owned(),
                t["title"].as_str().unwrap_or_default().to_owned(),
                t["completed"].as_bool().unwrap_or_default(),
            )
        })
        .collect();
    rows.sort();
    rows
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_work_survives_a_browser_restart_and_reaches_both_nodes() {
    let (dir_a, dir_b) = (
        tempfile::tempdir().expect("dir"),
        tempfile::tempdir().expect("dir"),
    );
    let a = TestNode::start_with(p2p_config(dir_a.path(), "a", &[])).await;
    let b = TestNode::start_with(p2p_config(dir_b.path(), "b", &[p2p_addr(&a).await])).await;
    let a_addr = a.addr;
    let (_profile_parent, profile) = profile_dir();
    let options = || BrowserOptions {
        profile: &profile,
        javascript: true,
    };

    // (a) Server mode: the page is the node's; forms post to it.
    let browser = Browser::start(options()).await;
    browser.goto(&a.url("/")).await;
    wait_js(
        &browser,
        "the page ready in server mode, controlled by the service worker",
        "window.todoApp?.ready && todoApp.mode === 'server' && navigator.serviceWorker.controller",
    )
    .await;
    add_via_form(&browser, "Buy milk").await;
    add_via_form(&browser, "Walk the dog").await;
    assert_eq!(titles(&a).await, sorted(&["Buy milk", "Walk the dog"]));
    eventually("the browser replica to hold both todos", WAIT, || async {
        (replica_titles(&browser).await == sorted(&["Buy milk", "Walk the dog"])).then_some(())
    })
    .await;

    // Installable: Chromium's own installability check finds nothing missing.
    let installability = browser.cdp("Page.getInstallabilityErrors", json!({})).await;
    assert_eq!(
        installability["installabilityErrors"],
        json!([]),
        "installability: {installability}"
    );

    // The worker precached the shell in one cache named after this build.
    let caches = browser
        .execute_async(
            "const done = arguments[arguments.length - 1];
             caches.keys().then(done, (e) => done(String(e)));",
            json!([]),
        )
        .await;
    assert_eq!(
        caches,
        json!([format!("todo-shell-{}", todo_node::http::build_version())])
    );

    // (b) Node A stops. A form typed as it died is not lost: it is applied locally.
    a.stop().await;
    browser
        .type_into("#new-title", "Typed as the node died")
        .await;
    browser.click("form.new-todo button").await;
    wait_js(
        &browser,
        "offline mode with the last todo applied locally",
        "todoApp.mode === 'offline' && document.querySelector('.banner-offline') \
         && document.body.textContent.includes('Typed as the node died')",
    )
    .await;

    // A reload is served by the service worker: the cached shell renders the replica.
    let reload_started = Instant::now();
    browser.refresh().await;
    wait_js(
        &browser,
        "the offline page rendered from the replica after a reload",
        "window.todoApp?.ready && document.querySelector('.banner-offline') \
         && document.body.textContent.includes('Walk the dog')",
    )
    .await;
    let offline_render = reload_started.elapsed();

    add_via_form(&browser, "Written offline").await;
    let milk = item_id(&browser, "Buy milk").await;
    browser.click(&format!("#{milk} .toggle button")).await;
    wait_js(
        &browser,
        "Buy milk done",
        &format!("document.querySelector('#{milk}.completed')"),
    )
    .await;
    let dog = item_id(&browser, "Walk the dog").await;
    browser.click(&format!("#{dog} .delete button")).await;
    wait_js(
        &browser,
        "Walk the dog deleted",
        &format!("!document.getElementById('{dog}')"),
    )
    .await;
    wait_js(
        &browser,
        "the banner counting 4 waiting changes",
        "document.querySelector('.banner-offline').textContent.includes('4 changes waiting to sync')",
    )
    .await;

    // Node B's users see no change: B serves and takes writes meanwhile.
    add(&b, "Written on B meanwhile").await;

    // Close the browser and open it again on the same profile: the offline work is still there.
    browser.quit().await;
    let browser = Browser::start(options()).await;
    browser.goto(&format!("http://{a_addr}/")).await;
    wait_js(
        &browser,
        "the reopened browser showing the offline work",
        "window.todoApp?.ready && document.querySelector('.banner-offline') \
         && document.body.textContent.includes('Written offline') \
         && document.body.textContent.includes('Typed as the node died') \
         && !document.body.textContent.includes('Walk the dog')",
    )
    .await;
    assert_eq!(
        browser.execute("return todoApp.storage", json!([])).await,
        json!("opfs")
    );

    // (c) Node A returns: the page pushes, pulls and goes back to server mode by itself.
    let a = TestNode::start_at(p2p_config(dir_a.path(), "a", &[p2p_addr(&b).await]), a_addr).await;
    let back_started = Instant::now();
    wait_js(
        &browser,
        "server mode again",
        "window.todoApp?.ready && todoApp.mode === 'server' && document.querySelector('.banner-server')",
    )
    .await;
    let back_in_server_mode = back_started.elapsed();
    let want = sorted(&[
        "Buy milk",
        "Typed as the node died",
        "Written offline",
        "Written on B meanwhile",
    ]);
    eventually(
        "node A to hold the offline work and B's write",
        WAIT,
        || async { (titles(&a).await == want).then_some(()) },
    )
    .await;
    let on_a = rows(&a).await;
    assert!(
        on_a.iter().any(|(_, t, done)| t == "Buy milk" && *done),
        "the offline toggle reached A: {on_a:?}"
    );
    let page = browser.source().await;
    assert!(
        page.contains("Written offline") && page.contains("Written on B meanwhile") || {
            // The page reloaded before A had B's write; the next reload shows it.
            browser.refresh().await;
            wait_source(&browser, "B's write on A's page", |s| {
                s.contains("Written on B meanwhile")
            })
            .await;
            true
        }
    );

    // (d) The offline work reaches node B through A, and both hold the same rows.
    eventually("nodes A and B to hold the same rows", WAIT, || async {
        let (on_a, on_b) = (rows(&a).await, rows(&b).await);
        (on_a == on_b && on_b.len() == 4).then_some(())
    })
    .await;
    eventually("the browser replica to match the nodes", WAIT, || async {
        (replica_titles(&browser).await == want).then_some(())
    })
    .await;
    let health = get_json(&a, "/health").await;
    assert_eq!(health["todos"], json!(4));

    eprintln!(
        "figures: reload while the node is down -> offline page rendered: {} ms; \
         node back -> server mode with changes pushed: {} ms",
        offline_render.as_millis(),
        back_in_server_mode.as_millis()
    );
    browser.quit().await;
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_javascript_every_action_works_through_plain_forms() {
    let dir = tempfile::tempdir().expect("dir");
    let node = TestNode::start(dir.path()).await;
    let (_profile_parent, profile) = profile_dir();
    let browser = Browser::start(BrowserOptions {
        profile: &profile,
        javascript: false,
    })
    .await;
    browser.goto(&node.url("/")).await;
    wait_source(&browser, "the server-rendered page", |s| {
        s.contains("banner-server")
    })
    .await;

    add_via_form(&browser, "First").await;
    add_via_form(&browser, "Second").await;
    add_via_form(&browser, "Third").await;
    let id_of = |title: &'static str| {
        let node = &node;
        async move {
            todos(node)
                .await
                .into_iter()
                .find(|t| t["title"] == title)
                .and_then(|t| t["id"].as_str().map(str::to_owned))
                .unwrap_or_else(|| panic!("{title} on the node"))
        }
    };
    let (first, second, third) = (
        id_of("First").await,
        id_of("Second").await,
        id_of("Third").await,
    );

    browser
        .click(&format!("#todo-{first} .toggle button"))
        .await;
    wait_source(&browser, "First done", |s| {
        s.contains(&format!("todo completed\" id=\"todo-{first}\""))
    })
    .await;

    browser
        .click(&format!("#todo-{second} .edit summary"))
        .await;
    browser
        .type_into(&format!("#title-{second}"), "Second, renamed")
        .await;
    browser.click(&format!("#todo-{second} .edit button")).await;
    wait_source(&browser, "Second renamed", |s| {
        s.contains("Second, renamed")
    })
    .await;

    browser
        .click(&format!("#todo-{third} .delete button"))
        .await;
    wait_source(&browser, "Third deleted", |s| {
        !s.contains(&format!("todo-{third}"))
    })
    .await;

    browser.click("a[href=\"/?filter=completed\"]").await;
    wait_source(&browser, "the completed filter", |s| {
        s.contains("First") && !s.contains("Second, renamed")
    })
    .await;

    // A bad title gets the page again with the message, nothing added.
    browser.type_into("#new-title", "   ").await;
    browser.click("form.new-todo button").await;
    wait_source(&browser, "the validation message", |s| {
        s.contains("A todo needs a title.")
    })
    .await;

    browser
        .click("form[action=\"/todos/clear-completed\"] button")
        .await;
    wait_source(&browser, "completed todos cleared", |s| {
        !s.contains("First")
    })
    .await;

    let left: Vec<Value> = todos(&node).await;
    assert_eq!(left.len(), 1, "{left:?}");
    assert_eq!(left[0]["title"], "Second, renamed");
    assert_eq!(left[0]["completed"], false);
    browser.quit().await;
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_its_node_still_down_a_page_fails_over_to_another_known_node() {
    let (dir_a, dir_b) = (
        tempfile::tempdir().expect("dir"),
        tempfile::tempdir().expect("dir"),
    );
    let a = TestNode::start_with(p2p_config(dir_a.path(), "a", &[])).await;
    let b = TestNode::start_with(p2p_config(dir_b.path(), "b", &[p2p_addr(&a).await])).await;
    let b_addr = b.addr;
    let (_profile_parent, profile) = profile_dir();
    let browser = Browser::start(BrowserOptions {
        profile: &profile,
        javascript: true,
    })
    .await;
    browser.goto(&a.url("/")).await;
    // The page learns node B's address from node A's peers (B's PUBLIC_URL).
    let b_origin = format!("http://{b_addr}");
    wait_js(
        &browser,
        "node B among the known nodes",
        &format!(
            "navigator.serviceWorker.controller && \
             JSON.parse(localStorage.getItem('todo-known-nodes') || '[]').includes('{b_origin}')"
        ),
    )
    .await;

    // Both nodes go down; the user works offline.
    a.stop().await;
    b.stop().await;
    browser.refresh().await;
    wait_js(
        &browser,
        "offline mode",
        "window.todoApp?.ready && todoApp.mode === 'offline'",
    )
    .await;
    add_via_form(&browser, "Written while both were down").await;

    // Only B returns: the page pushes its work to B and moves there.
    let b = TestNode::start_at(p2p_config(dir_b.path(), "b", &[]), b_addr).await;
    wait_js(
        &browser,
        "the page served by node B in server mode",
        &format!(
            "location.origin === '{b_origin}' && window.todoApp?.mode === 'server' \
             && document.querySelector('.banner-server')"
        ),
    )
    .await;
    assert_eq!(titles(&b).await, ["Written while both were down"]);
    let page = browser.source().await;
    assert!(page.contains("Written while both were down") && page.contains("<strong>b</strong>"));
    browser.quit().await;
    b.stop().await;
}
