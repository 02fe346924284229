//! The edge worker (edge/, built by ci/build-edge.sh) under a real `wrangler dev` (workerd,
//! local mode) with real nodes on loopback: what it serves, how it syncs, what survives.
//!
//! They need the built worker and wrangler (ci/build-edge.sh, ci/edge-dev.sh --install-only);
//! `common::edge` starts it. Figures come from node/benches/edge.rs.
//! Without them they are skipped, saying why on stderr, so `cargo test` works anywhere;
//! `EDGE_TESTS=require` (ci/test.sh sets it) turns a skip into a failure.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::edge::{Edge, edge_available, find, get, post, todos_at};
use common::webdriver::{Browser, BrowserOptions, profile_dir};
use common::{TestNode, client, eventually, p2p_addr, p2p_config};
use serde_json::json;
use test_kit::restartable_port;

/// How long sync may take in these tests: the edge syncs every second here, and a node that
/// was down is tried again after at most its backoff (30 s).
const SYNC: Duration = Duration::from_secs(60);

fn base(node: &TestNode) -> String {
    format!("http://{}", node.addr)
}

async fn start_node(dir: &Path, name: &str, port: u16, bootstrap: &[String]) -> TestNode {
    let config = p2p_config(dir, name, bootstrap);
    TestNode::start_at(config, ([127, 0, 0, 1], port).into()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_edge_syncs_with_two_nodes_keeps_working_while_they_are_down_and_loses_nothing() {
    if !edge_available() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let (port_a, port_b) = (restartable_port(), restartable_port());
    let a = start_node(&dir.path().join("a"), "node-a", port_a, &[]).await;
    let a_addr = p2p_addr(&a).await;
    let b = start_node(
        &dir.path().join("b"),
        "node-b",
        port_b,
        std::slice::from_ref(&a_addr),
    )
    .await;
    let (url_a, url_b) = (base(&a), base(&b));
    let mut edge = Edge::start(&dir.path().join("edge-state"), &[&a, &b]);

    // The edge serves the app's page, as a node does.
    let (status, html) = get(&edge.url("/")).await;
    assert_eq!(status, 200, "{html}");
    assert!(html.contains("edge-test") && html.contains("Nothing to do yet."));

    // A todo added through the edge's form reaches both nodes.
    let r = post(&edge.url("/todos"), &[("title", "typed at the edge")]).await;
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()["location"], "/");
    for url in [&url_a, &url_b] {
        eventually(&format!("the edge's todo at {url}"), SYNC, || async {
            find(url, "typed at the edge").await
        })
        .await;
    }

    // One added on a node appears on the edge's page.
    let r = post(&format!("{url_a}/todos"), &[("title", "typed on node a")]).await;
    assert_eq!(r.status(), 303);
    let written = Instant::now();
    eventually("node a's todo on the edge's page", SYNC, || async {
        get(&edge.url("/"))
            .await
            .1
            .contains("typed on node a")
            .then_some(())
    })
    .await;
    eprintln!(
        "node write → edge page: {} ms (SYNC_INTERVAL_SECS=1)",
        written.elapsed().as_millis()
    );

    // Both nodes stop: the edge keeps serving and taking writes.
    let on_a = find(&url_a, "typed on node a").await.expect("listed");
    let id_a = on_a["id"].as_str().expect("id").to_owned();
    a.stop().await;
    b.stop().await;
    let r = post(
        &edge.url("/todos"),
        &[("title", "typed while the nodes are down")],
    )
    .await;
    assert_eq!(r.status(), 303);
    let r = post(
        &edge.url(&format!("/todos/{id_a}/toggle")),
        &[("completed", "1"), ("return_to", "/?filter=completed")],
    )
    .await;
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()["location"], "/?filter=completed");
    let (status, html) = get(&edge.url("/?filter=completed")).await;
    assert_eq!(status, 200);
    assert!(html.contains("typed on node a"), "{html}");
    let health: serde_json::Value =
        serde_json::from_str(&get(&edge.url("/health")).await.1).expect("health");
    assert_eq!(health["deployment"], "todo-hybrid");
    assert!(
        health["pending_changes"].as_u64().unwrap_or(0) >= 2,
        "the writes wait for the nodes: {health}"
    );

    // The edge restarts while the nodes are still down: nothing is lost.
    edge.restart();
    let (_, html) = get(&edge.url("/")).await;
    for title in [
        "typed at the edge",
        "typed on node a",
        "typed while the nodes are down",
    ] {
        assert!(html.contains(title), "{title} after the edge restarted");
    }

    // The nodes return: what was typed at the edge meanwhile reaches both.
    let a = start_node(&dir.path().join("a"), "node-a", port_a, &[]).await;
    let b = start_node(&dir.path().join("b"), "node-b", port_b, &[a_addr]).await;
    for url in [&url_a, &url_b] {
        eventually(
            &format!("the offline edge writes at {url}"),
            SYNC,
            || async {
                let done = find(url, "typed on node a").await?["completed"] == true;
                (find(url, "typed while the nodes are down").await.is_some() && done).then_some(())
            },
        )
        .await;
    }
    let health: serde_json::Value =
        serde_json::from_str(&get(&edge.url("/health")).await.1).expect("health");
    eprintln!("edge health at the end: {health}");
    drop(edge);
    a.stop().await;
    b.stop().await;
}

/// Bad input gets the same status from the edge as from a node, and changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_the_same_answers_as_on_a_node() {
    if !edge_available() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let node = TestNode::start(&dir.path().join("n")).await;
    let edge = Edge::start(&dir.path().join("edge-state"), &[&node]);
    let node_url = base(&node);
    let edge_url = edge.url("");
    // One todo everywhere, with the same id.
    let id = "0192f6a0-7c1e-7aaa-8bbb-0123456789ab";
    for base in [&node_url, &edge_url] {
        let r = post(
            &format!("{base}/todos"),
            &[("title", "keep me"), ("id", id)],
        )
        .await;
        assert_eq!(r.status(), 303);
    }
    let huge = "x".repeat(64 * 1024);
    type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], u16);
    let form: &[Case<'_>] = &[
        ("/todos", &[("title", "   ")], 422),
        ("/todos", &[("titel", "typo")], 400),
        ("/todos", &[("title", "x"), ("id", "../../etc")], 400),
        ("/todos", &[("title", &huge)], 413),
        ("/todos/nope/toggle", &[("completed", "1")], 404),
        ("/todos/nope/delete", &[], 404),
        ("/todos/nope/title", &[("title", "")], 404),
        ("/todos/nope/title", &[("title", "t")], 404),
        (
            "/todos/0192f6a0-7c1e-7aaa-8bbb-0123456789ab/toggle",
            &[("completed", "maybe")],
            400,
        ),
        (
            "/todos/0192f6a0-7c1e-7aaa-8bbb-0123456789ab/title",
            &[("title", "\u{7}")],
            422,
        ),
    ];
    for (path, fields, expected) in form {
        for base in [&node_url, &edge_url] {
            let r = post(&format!("{base}{path}"), fields).await;
            assert_eq!(
                r.status().as_u16(),
                *expected,
                "POST {base}{path} {fields:?}"
            );
        }
    }
    for (path, expected) in [("/?filter=bogus", 400), ("/no/such/page", 404), ("/", 200)] {
        for base in [&node_url, &edge_url] {
            assert_eq!(
                get(&format!("{base}{path}")).await.0,
                expected,
                "GET {base}{path}"
            );
        }
    }
    let c = client();
    for base in [&node_url, &edge_url] {
        let r = c
            .post(format!("{base}/todos"))
            .header("content-type", "application/json")
            .body(r#"{"title":"x"}"#)
            .send()
            .await
            .expect("post");
        assert_eq!(r.status(), 415, "{base}: JSON to a form");
        let r = c
            .post(format!("{base}/todos"))
            .header("origin", "https://evil.example")
            .form(&[("title", "csrf")])
            .send()
            .await
            .expect("post");
        assert_eq!(r.status(), 403, "{base}: cross-site post");
        let r = c
            .post(format!("{base}/api/changes"))
            .header("content-type", "application/json")
            .body(r#"{"changes":[{"table":"users"}]}"#)
            .send()
            .await
            .expect("post");
        assert_eq!(r.status(), 400, "{base}: a malformed push");
        let r = c.get(format!("{base}/")).send().await.expect("get");
        let csp = r.headers()["content-security-policy"]
            .to_str()
            .expect("ascii");
        assert!(csp.contains("script-src 'self'"), "{base}: {csp}");
        // The PWA's assets and the service worker, the node's own.
        for path in ["/sw.js", "/static/app.js", "/static/manifest.webmanifest"] {
            assert_eq!(get(&format!("{base}{path}")).await.0, 200, "{base}{path}");
        }
    }
    // Nothing changed anywhere: the one todo, untouched.
    for base in [&node_url, &edge_url] {
        let todos = todos_at(base).await;
        assert_eq!(todos.len(), 1, "{base}: {todos:?}");
        assert_eq!(todos[0]["title"], "keep me");
        assert_eq!(todos[0]["completed"], false);
    }
    assert_eq!(
        get(&format!("{node_url}/sw.js")).await.1,
        get(&format!("{edge_url}/sw.js")).await.1,
        "the same service worker (same build, same cache name)"
    );
    drop(edge);
    node.stop().await;
}

/// Polls a JavaScript expression in the page until it is truthy.
async fn wait_js(browser: &Browser, what: &str, expression: &str) {
    let status = "return 'page status: ' + JSON.stringify(window.todoApp || null)";
    browser.wait_js(what, expression, SYNC, status).await;
}

/// A page whose node goes down fails over to the edge (the node lists it in EDGE_URLS): the
/// work typed offline is pushed to the edge, the page moves there in server mode, and the
/// edge hands the work to the node when it returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_whose_node_is_down_fails_over_to_the_edge() {
    if !edge_available() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let (node_port, edge_port) = (restartable_port(), restartable_port());
    let edge_origin = format!("http://127.0.0.1:{edge_port}");
    let config = || {
        let mut c = p2p_config(&dir.path().join("a"), "node-a", &[]);
        c.edge_urls = vec![edge_origin.clone()];
        c
    };
    let a = TestNode::start_at(config(), ([127, 0, 0, 1], node_port).into()).await;
    let edge = Edge::start_on(edge_port, &dir.path().join("edge-state"), &[&a]);
    let peers: serde_json::Value =
        serde_json::from_str(&get(&a.url("/api/peers")).await.1).expect("peers");
    assert_eq!(peers["edges"], json!([edge_origin]));

    let (_profile_parent, profile) = profile_dir();
    let browser = Browser::start(BrowserOptions {
        profile: &profile,
        javascript: true,
    })
    .await;
    browser.goto(&a.url("/")).await;
    wait_js(
        &browser,
        "the edge among the known nodes",
        &format!(
            "navigator.serviceWorker.controller && \
             JSON.parse(localStorage.getItem('todo-known-nodes') || '[]').includes('{edge_origin}')"
        ),
    )
    .await;

    a.stop().await;
    browser.refresh().await;
    wait_js(
        &browser,
        "offline mode",
        "window.todoApp?.ready && todoApp.mode === 'offline'",
    )
    .await;
    browser
        .type_into("#new-title", "Written while the node was down")
        .await;
    browser.click("form.new-todo button").await;

    // The node stays down: the page pushes its work to the edge and moves there.
    wait_js(
        &browser,
        "the page served by the edge in server mode",
        &format!(
            "location.origin === '{edge_origin}' && window.todoApp?.mode === 'server' \
             && document.querySelector('.banner-server')"
        ),
    )
    .await;
    let page = browser.source().await;
    assert!(page.contains("Written while the node was down"), "{page}");
    assert!(page.contains("<strong>edge-test</strong>"));
    assert!(
        find(&edge.url(""), "Written while the node was down")
            .await
            .is_some()
    );

    // The node returns: the edge gives it the page's work.
    let a = TestNode::start_at(config(), ([127, 0, 0, 1], node_port).into()).await;
    eventually("the failed-over work on the node", SYNC, || async {
        find(&base(&a), "Written while the node was down").await
    })
    .await;
    browser.quit().await;
    drop(edge);
    a.stop().await;
}
