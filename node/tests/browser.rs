//! The app in a real browser (headless Chromium driven over WebDriver) against real nodes:
//! the PWA keeps working when its node is down, keeps offline work across a browser restart
//! (OPFS), and syncs it back to the node — and through it to the other node — when the node
//! returns. Two browsers keep collaborating peer-to-peer through the relay while every node is
//! down, find each other again after reloads, restarts and a relay restart, and hand their
//! work to the node when it returns. And without JavaScript, every action works through the
//! plain forms.

mod common;

use std::time::{Duration, Instant};

use common::relay::InProcessRelay;
use common::webdriver::{Browser, BrowserOptions, profile_dir};
use common::{TestNode, add, eventually, get_json, p2p_addr, p2p_config, titles, todos};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(30);

/// Polls a JavaScript expression in the page until it is truthy; on timeout, fails with the
/// page's sync status (mode, last error) to say why.
async fn wait_js(browser: &Browser, what: &str, expression: &str) {
    let status = "return 'page status: ' + JSON.stringify(window.todoApp \
                  ? { ...todoApp, p2p: todoApp.p2p?.() } : null, null, 1)";
    browser.wait_js(what, expression, WAIT, status).await;
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

/// The page's peer-to-peer status (`P2p.status()`), or null before it started.
async fn p2p_status(browser: &Browser) -> Value {
    browser
        .execute(
            "return window.todoApp?.p2p ? todoApp.p2p() : null",
            json!([]),
        )
        .await
}

async fn wait_connected(browser: &Browser, who: &str, other: &str) {
    wait_js(
        browser,
        &format!("{who} syncing with {other} peer-to-peer"),
        &format!(
            "todoApp.mode === 'offline' && todoApp.p2p() \
             && todoApp.p2p().peers.some((p) => p.peer_id === '{other}')"
        ),
    )
    .await;
}

async fn peer_id(browser: &Browser, who: &str) -> String {
    wait_js(
        browser,
        &format!("{who}'s peer-to-peer peer started"),
        "window.todoApp?.p2p && todoApp.p2p()",
    )
    .await;
    p2p_status(browser).await["peer_id"]
        .as_str()
        .expect("a peer id")
        .to_owned()
}

async fn wait_text(browser: &Browser, who: &str, titles: &[&str]) {
    let checks: Vec<String> = titles
        .iter()
        .map(|t| format!("document.body.textContent.includes({})", json!(t)))
        .collect();
    wait_js(
        browser,
        &format!("{who}'s page showing {titles:?}"),
        &checks.join(" && "),
    )
    .await;
}

/// The seed's collaboration scenario with no node at all, then reloads, browser restarts and a
/// relay restart while the nodes stay down, then a node's return.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browsers_collaborate_peer_to_peer_while_every_node_is_down() {
    let dir = tempfile::tempdir().expect("dir");
    let mut relay = InProcessRelay::start(&dir.path().join("relay")).await;

    let relay_url = relay.url();
    let node_config = || {
        let mut c = p2p_config(&dir.path().join("a"), "a", &[]);
        c.relay_addrs = vec![relay_url.parse().expect("relay url")];
        c
    };
    let a = TestNode::start_with(node_config()).await;
    let a_addr = a.addr;
    eventually(
        "node A holds a reservation and knows the relay's WebSocket address",
        WAIT,
        || async {
            let peers = get_json(&a, "/api/peers").await;
            let relay = &peers["relays"][0];
            (relay["reservation"] == "active" && relay["browser_addrs"][0].is_string())
                .then_some(())
        },
    )
    .await;

    let (_alice_parent, alice_profile) = profile_dir();
    let (_bob_parent, bob_profile) = profile_dir();
    let open = |profile: &std::path::Path| {
        let profile = profile.to_owned();
        async move {
            let browser = Browser::start(BrowserOptions {
                profile: &profile,
                javascript: true,
            })
            .await;
            browser.goto(&format!("http://{a_addr}/")).await;
            browser
        }
    };
    let alice = open(&alice_profile).await;
    let bob = open(&bob_profile).await;
    for (browser, who) in [(&alice, "Alice"), (&bob, "Bob")] {
        wait_js(
            browser,
            &format!("{who}'s page in server mode, with the relays learned"),
            "window.todoApp?.ready && todoApp.mode === 'server' \
             && navigator.serviceWorker.controller \
             && JSON.parse(localStorage.getItem('todo-p2p-config') || 'null')?.relays.length > 0",
        )
        .await;
    }

    // 1. Every node stops. Each page works offline, and the two find each other by rendezvous.
    a.stop().await;
    let all_down = Instant::now();
    let alice_id = peer_id(&alice, "Alice").await;
    let bob_id = peer_id(&bob, "Bob").await;
    wait_connected(&alice, "Alice", &bob_id).await;
    wait_connected(&bob, "Bob", &alice_id).await;
    let found_each_other = all_down.elapsed();
    // Each remembers the other, to dial at once after a reload or restart.
    let remembered = alice
        .execute("return localStorage.getItem('todo-p2p-peers')", json!([]))
        .await;
    assert!(
        remembered.as_str().is_some_and(|r| r.contains(&bob_id)),
        "Alice remembers Bob: {remembered}"
    );

    for title in ["Alice 1", "Alice 2", "Alice 3"] {
        add_via_form(&alice, title).await;
    }
    let alice_wrote = Instant::now();
    wait_text(&bob, "Bob", &["Alice 1", "Alice 2", "Alice 3"]).await;
    let alice_to_bob = alice_wrote.elapsed();
    let from_all_down_to_bob = all_down.elapsed();
    for title in ["Bob 1", "Bob 2", "Bob 3"] {
        add_via_form(&bob, title).await;
    }
    let six = ["Alice 1", "Alice 2", "Alice 3", "Bob 1", "Bob 2", "Bob 3"];
    wait_text(&alice, "Alice", &six).await;
    wait_text(&bob, "Bob", &six).await;

    // Bob completes one of Alice's; Alice sees it.
    let item = item_id(&bob, "Alice 2").await;
    bob.click(&format!("#{item} .toggle button")).await;
    wait_js(
        &alice,
        "Alice 2 completed on Alice's page",
        &format!("document.querySelector('#{item}.completed')"),
    )
    .await;

    // 2. Both reload, then both browsers restart on the same profiles; the nodes stay down.
    // They find each other again from what they remember, and keep syncing.
    alice.refresh().await;
    bob.refresh().await;
    let reloaded = Instant::now();
    wait_connected(&alice, "Alice after a reload", &bob_id).await;
    wait_connected(&bob, "Bob after a reload", &alice_id).await;
    let found_after_reload = reloaded.elapsed();
    alice.quit().await;
    bob.quit().await;
    let alice = open(&alice_profile).await;
    let bob = open(&bob_profile).await;
    let restarted = Instant::now();
    wait_connected(&alice, "Alice after a browser restart", &bob_id).await;
    wait_connected(&bob, "Bob after a browser restart", &alice_id).await;
    let found_after_restart = restarted.elapsed();
    add_via_form(&alice, "After the restart").await;
    wait_text(&bob, "Bob", &["After the restart"]).await;

    // 4. The relay restarts (same addresses and identity): both reserve again and resume.
    relay.restart().await;
    let relay_back = Instant::now();
    wait_js(
        &bob,
        "Bob's reservation back after the relay restart",
        "todoApp.p2p().relays.every((r) => r.reservation === 'active')",
    )
    .await;
    wait_connected(&alice, "Alice after the relay restart", &bob_id).await;
    wait_connected(&bob, "Bob after the relay restart", &alice_id).await;
    add_via_form(&bob, "After the relay restart").await;
    wait_text(&alice, "Alice", &["After the relay restart"]).await;
    let resumed_after_relay = relay_back.elapsed();

    // 3. The node returns: it ends up with all the work of both, and both pages go back to
    // server mode.
    let a = TestNode::start_at(node_config(), a_addr).await;
    let everything = sorted(&[
        "Alice 1",
        "Alice 2",
        "Alice 3",
        "Bob 1",
        "Bob 2",
        "Bob 3",
        "After the restart",
        "After the relay restart",
    ]);
    for (browser, who) in [(&alice, "Alice"), (&bob, "Bob")] {
        wait_js(
            browser,
            &format!("{who}'s page back in server mode"),
            "window.todoApp?.ready && todoApp.mode === 'server'",
        )
        .await;
    }
    eventually("node A holds the work of both browsers", WAIT, || async {
        (titles(&a).await == everything).then_some(())
    })
    .await;
    let on_a = rows(&a).await;
    assert!(
        on_a.iter().any(|(_, t, done)| t == "Alice 2" && *done),
        "Bob's toggle of Alice's todo reached the node: {on_a:?}"
    );

    eprintln!(
        "figures: all nodes down -> Alice and Bob connected: {} ms; Alice's 3 todos -> on \
         Bob's page: {} ms (from all nodes down: {} ms); reload -> connected again: {} ms; \
         browser restart -> connected again: {} ms; relay restart -> a todo through it again: \
         {} ms",
        found_each_other.as_millis(),
        alice_to_bob.as_millis(),
        from_all_down_to_bob.as_millis(),
        found_after_reload.as_millis(),
        found_after_restart.as_millis(),
        resumed_after_relay.as_millis(),
    );
    alice.quit().await;
    bob.quit().await;
    a.stop().await;
    relay.stop().await;
}

/// Waits until `who` reaches `other` over a direct WebRTC connection (its status says so).
async fn wait_webrtc(browser: &Browser, who: &str, other: &str) {
    wait_js(
        browser,
        &format!("{who} reaching {other} over WebRTC"),
        &format!(
            "todoApp.p2p().peers.some((p) => p.peer_id === '{other}' && p.connection === 'webrtc')"
        ),
    )
    .await;
}

/// How many todos whose title starts with `prefix` the page's replica holds.
async fn replica_count(browser: &Browser, prefix: &str) -> u64 {
    let count = browser
        .execute_async(
            "const done = arguments[arguments.length - 1];
             todoApp.replicaTodos().then(
               (t) => done(t.filter((x) => x.title.startsWith(arguments[0])).length),
               (e) => done(String(e)));",
            json!([prefix]),
        )
        .await;
    count
        .as_u64()
        .unwrap_or_else(|| panic!("replica todos: {count}"))
}

/// Alice adds `count` todos of about 400 characters in one transaction (more than a megabyte of
/// changes); waits until Bob's replica holds them all. Returns the batch's size, how long
/// Alice's page took to write it, and how long Bob's replica took after that.
async fn bulk_sync(alice: &Browser, bob: &Browser, count: usize) -> (u64, Duration, Duration) {
    let prefix = "bulk ";
    let started = Instant::now();
    let bytes = alice
        .execute_async(
            "const done = arguments[arguments.length - 1];
             const titles = Array.from({ length: arguments[0] },
               (_, i) => `${arguments[1]}${String(i).padStart(5, '0')} ${'x'.repeat(400)}`);
             todoApp.addTodos(titles).then(done, (e) => done(String(e)));",
            json!([count, prefix]),
        )
        .await
        .as_u64()
        .expect("the batch's size");
    assert!(bytes > 1024 * 1024, "a batch of {bytes} bytes");
    // Alice's replica wrote them (and pushed the batch) by now: what follows is the transfer
    // and Bob's merge.
    let written = started.elapsed();
    let pushed = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let on_bob = replica_count(bob, prefix).await;
        if on_bob == count as u64 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "Bob's replica holds {on_bob} of Alice's {count} todos; Bob's log: {}",
            bob.execute("return todoApp.p2pLog.join('\\n')", json!([]))
                .await
        );
        // Not too often: each look reads Bob's whole replica.
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    (bytes, written, pushed.elapsed())
}

/// Where the WebRTC tests start: node A with the in-process relay, and Alice's and Bob's
/// browsers each showing A's page in server mode, having learned the relay from it.
struct PairOnNodeA {
    relay: InProcessRelay,
    a: TestNode,
    browsers: Vec<Browser>,
    _profiles: Vec<tempfile::TempDir>,
    _dir: tempfile::TempDir,
}

async fn pair_on_node_a() -> PairOnNodeA {
    let dir = tempfile::tempdir().expect("dir");
    let relay = InProcessRelay::start(&dir.path().join("relay")).await;
    let mut config = p2p_config(&dir.path().join("a"), "a", &[]);
    config.relay_addrs = vec![relay.url().parse().expect("relay url")];
    let a = TestNode::start_with(config).await;
    eventually(
        "node A knows the relay's WebSocket address",
        WAIT,
        || async {
            let peers = get_json(&a, "/api/peers").await;
            peers["relays"][0]["browser_addrs"][0]
                .is_string()
                .then_some(())
        },
    )
    .await;
    let (mut profiles, mut browsers) = (Vec::new(), Vec::new());
    for who in ["Alice", "Bob"] {
        let (parent, profile) = profile_dir();
        let browser = Browser::start(BrowserOptions {
            profile: &profile,
            javascript: true,
        })
        .await;
        browser.goto(&a.url("/")).await;
        wait_js(
            &browser,
            &format!("{who}'s page in server mode, with the relays learned"),
            "window.todoApp?.ready && todoApp.mode === 'server' \
             && navigator.serviceWorker.controller \
             && JSON.parse(localStorage.getItem('todo-p2p-config') || 'null')?.relays.length > 0",
        )
        .await;
        profiles.push(parent);
        browsers.push(browser);
    }
    PairOnNodeA {
        relay,
        a,
        browsers,
        _profiles: profiles,
        _dir: dir,
    }
}

/// Issue 16: two browsers, every node down, meet through the relay and upgrade to a direct
/// WebRTC connection (the browser-to-browser `/webrtc` transport of browser-p2p); then the relay
/// stops, and edits keep flowing both ways and a sync of more than a megabyte (thousands of
/// todos) completes over the data channels.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browsers_upgrade_to_webrtc_and_keep_syncing_after_the_relay_stops() {
    const BULK: usize = 3_000;
    let PairOnNodeA {
        mut relay,
        a,
        browsers,
        _profiles,
        _dir,
    } = pair_on_node_a().await;
    let (alice, bob) = (&browsers[0], &browsers[1]);

    a.stop().await;
    let alice_id = peer_id(alice, "Alice").await;
    let bob_id = peer_id(bob, "Bob").await;
    wait_connected(alice, "Alice", &bob_id).await;
    wait_connected(bob, "Bob", &alice_id).await;
    let relayed = Instant::now();
    wait_webrtc(alice, "Alice", &bob_id).await;
    wait_webrtc(bob, "Bob", &alice_id).await;
    let to_direct = relayed.elapsed();
    let mut notes = Vec::new();
    for (browser, other) in [(alice, &bob_id), (bob, &alice_id)] {
        let status = p2p_status(browser).await;
        let peer = status["peers"]
            .as_array()
            .and_then(|peers| peers.iter().find(|p| p["peer_id"] == other.as_str()))
            .map(|p| p["webrtc"].to_string());
        notes.push(peer.unwrap_or_default());
    }

    // The relay goes: only the direct connection is left.
    relay.stop().await;
    add_via_form(alice, "Direct from Alice").await;
    let sent = Instant::now();
    wait_text(bob, "Bob", &["Direct from Alice"]).await;
    let alice_to_bob = sent.elapsed();
    add_via_form(bob, "Direct from Bob").await;
    wait_text(alice, "Alice", &["Direct from Alice", "Direct from Bob"]).await;

    // Thousands of todos in one transaction, more than a megabyte of changes.
    let (bytes, written, bulk) = bulk_sync(alice, bob, BULK).await;
    wait_webrtc(bob, "Bob after the bulk sync", &alice_id).await;

    eprintln!(
        "figures: relayed -> WebRTC on both sides {} ms (upgrade as each page saw it: {}); \
         a todo Alice -> Bob over WebRTC {} ms; {BULK} todos ({bytes} bytes of changes) written \
         on Alice's page in {} ms, then in Bob's replica {} ms later = {:.2} MiB/s",
        to_direct.as_millis(),
        notes.join(", "),
        alice_to_bob.as_millis(),
        written.as_millis(),
        bulk.as_millis(),
        bytes as f64 / 1024.0 / 1024.0 / bulk.as_secs_f64(),
    );
    for browser in browsers {
        browser.quit().await;
    }
}

/// When ICE finds no path, the upgrade fails, the page says so, and both stay on the relayed
/// connection and keep syncing. Bob's page gathers no ICE candidates, as behind a NAT that STUN
/// cannot cross with no TURN server: its `RTCPeerConnection`s are created with
/// `iceTransportPolicy: "relay"` (TURN only) and no TURN server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browsers_stay_relayed_and_say_so_when_webrtc_cannot_connect() {
    let PairOnNodeA {
        mut relay,
        a,
        browsers,
        _profiles,
        _dir,
    } = pair_on_node_a().await;
    let (alice, bob) = (&browsers[0], &browsers[1]);
    // Before the page starts its peer (it does when the node goes, without a reload).
    bob.execute(
        "const Native = window.RTCPeerConnection;
         window.RTCPeerConnection = function (config) {
           return new Native({ ...(config || {}), iceTransportPolicy: 'relay' });
         };
         window.RTCPeerConnection.prototype = Native.prototype;",
        json!([]),
    )
    .await;
    a.stop().await;
    let alice_id = peer_id(alice, "Alice").await;
    let bob_id = peer_id(bob, "Bob").await;
    wait_connected(alice, "Alice", &bob_id).await;
    wait_connected(bob, "Bob", &alice_id).await;
    // Whichever dialled the relayed connection tried the upgrade; it says it failed.
    let failed = |other: &str| {
        format!(
            "todoApp.p2p().peers.some((p) => p.peer_id === '{other}' \
             && String(p.webrtc).startsWith('failed') && p.connection === 'relayed')"
        )
    };
    let deadline = Instant::now() + WAIT;
    let mut said = None;
    while said.is_none() && Instant::now() < deadline {
        for (browser, who, other) in [(alice, "Alice", &bob_id), (bob, "Bob", &alice_id)] {
            let script = format!(
                "try {{ return !!({}); }} catch (e) {{ return false; }}",
                failed(other)
            );
            if browser.execute(&script, json!([])).await.as_bool() == Some(true) {
                said = Some((browser, who, other));
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let Some((browser, who, other)) = said else {
        let mut why = String::new();
        for browser in [alice, bob] {
            why += &format!(
                "{}\n{}\n",
                p2p_status(browser).await,
                browser
                    .execute("return todoApp.p2pLog.join('\\n')", json!([]))
                    .await
            );
        }
        panic!("no page says the WebRTC upgrade failed:\n{why}");
    };
    let log = browser
        .execute("return todoApp.p2pLog.join('\\n')", json!([]))
        .await;
    assert!(
        log.as_str()
            .is_some_and(|l| l.contains("staying on the relayed connection")),
        "{who}'s log says it stays relayed: {log}"
    );
    let note = p2p_status(browser).await["peers"]
        .as_array()
        .and_then(|peers| {
            peers
                .iter()
                .find(|p| p["peer_id"] == other.as_str())
                .cloned()
        });
    let said_why = note
        .as_ref()
        .and_then(|n| n["webrtc"].as_str())
        .is_some_and(|w| w.contains("ICE"));
    assert!(said_why, "the status says ICE failed: {note:?}");
    // Still syncing, through the relay.
    add_via_form(alice, "Relayed from Alice").await;
    wait_text(bob, "Bob", &["Relayed from Alice"]).await;
    add_via_form(bob, "Relayed from Bob").await;
    wait_text(alice, "Alice", &["Relayed from Bob"]).await;
    for (browser, other) in [(alice, &bob_id), (bob, &alice_id)] {
        let status = p2p_status(browser).await;
        let path = status["peers"]
            .as_array()
            .and_then(|peers| peers.iter().find(|p| p["peer_id"] == other.as_str()))
            .map(|p| p["connection"].clone());
        assert_eq!(path, Some(json!("relayed")), "{status}");
    }
    // The same bulk as over WebRTC, through the relay, for comparison.
    let (bytes, written, bulk) = bulk_sync(alice, bob, 3_000).await;
    eprintln!("{who}'s status for the peer after the failed upgrade: {note:?}");
    eprintln!(
        "figures: relayed: 3000 todos ({bytes} bytes of changes) written on Alice's page in {} \
         ms, then in Bob's replica {} ms later = {:.2} MiB/s",
        written.as_millis(),
        bulk.as_millis(),
        bytes as f64 / 1024.0 / 1024.0 / bulk.as_secs_f64(),
    );
    for browser in browsers {
        browser.quit().await;
    }
    relay.stop().await;
}

/// The seed's scenario 1 over libp2p: node A is down, node B is up, and this browser cannot
/// reach B over HTTP (B's PUBLIC_URL is not reachable from it). The page of A works offline and
/// syncs with node B over libp2p (B's WebSocket listener, or its circuit on the relay); a
/// browser on B in server mode sees its writes, and it sees theirs. A page in server mode never
/// downloaded the peer-to-peer module.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_whose_node_is_down_syncs_with_another_node_over_libp2p() {
    let dir = tempfile::tempdir().expect("dir");
    let mut relay = InProcessRelay::start(&dir.path().join("relay")).await;
    let relay_url = relay.url();
    let mut a_config = p2p_config(&dir.path().join("a"), "a", &[]);
    a_config.relay_addrs = vec![relay_url.parse().expect("relay url")];
    let a = TestNode::start_with(a_config).await;
    let mut b_config = p2p_config(&dir.path().join("b"), "b", &[p2p_addr(&a).await]);
    b_config.relay_addrs = vec![relay_url.parse().expect("relay url")];
    b_config.p2p_listen = vec![
        "/ip4/127.0.0.1/tcp/0".parse().expect("addr"),
        "/ip4/127.0.0.1/tcp/0/ws".parse().expect("addr"),
    ];
    // Nothing listens on port 1: the page of A cannot fail over to B over HTTP.
    b_config.public_url = Some("http://127.0.0.1:1".to_owned());
    let b = TestNode::start_with(b_config).await;
    eventually("A knows B's WebSocket address", WAIT, || async {
        let peers = get_json(&a, "/api/peers").await;
        peers["peers"]
            .as_array()?
            .iter()
            .any(|p| p["browser_addrs"][0].is_string())
            .then_some(())
    })
    .await;

    let (_carol_parent, carol_profile) = profile_dir();
    let carol = Browser::start(BrowserOptions {
        profile: &carol_profile,
        javascript: true,
    })
    .await;
    carol.goto(&a.url("/")).await;
    wait_js(
        &carol,
        "Carol's page in server mode, knowing B's WebSocket address",
        "window.todoApp?.ready && todoApp.mode === 'server' && navigator.serviceWorker.controller \
         && JSON.parse(localStorage.getItem('todo-p2p-config') || 'null')?.direct.length > 0",
    )
    .await;
    let p2p_fetched = carol
        .execute(
            "return performance.getEntriesByType('resource')
               .filter((e) => e.name.includes('browser_p2p')).length",
            json!([]),
        )
        .await;
    assert_eq!(
        p2p_fetched,
        json!(0),
        "server mode loads no peer-to-peer code"
    );

    let (_dave_parent, dave_profile) = profile_dir();
    let dave = Browser::start(BrowserOptions {
        profile: &dave_profile,
        javascript: true,
    })
    .await;
    dave.goto(&b.url("/")).await;
    wait_js(
        &dave,
        "Dave's page on B in server mode",
        "window.todoApp?.ready && todoApp.mode === 'server'",
    )
    .await;

    a.stop().await;
    let b_id = get_json(&b, "/health").await["peer_id"]
        .as_str()
        .expect("peer id")
        .to_owned();
    wait_connected(&carol, "Carol", &b_id).await;
    add_via_form(&carol, "From Carol").await;
    eventually("node B holds Carol's todo", WAIT, || async {
        titles(&b)
            .await
            .contains(&"From Carol".to_owned())
            .then_some(())
    })
    .await;
    dave.refresh().await;
    wait_text(&dave, "Dave", &["From Carol"]).await;
    add_via_form(&dave, "From Dave").await;
    wait_text(&carol, "Carol", &["From Dave"]).await;
    assert_eq!(
        carol.execute("return todoApp.mode", json!([])).await,
        json!("offline"),
        "Carol stayed in client mode: B's HTTP was never reachable from her page"
    );
    carol.quit().await;
    dave.quit().await;
    b.stop().await;
    relay.stop().await;
}
