//! No size cliff: a transaction of any size a replica accepted reaches every other replica.
//! Clearing 10,001 completed todos used to be one transaction of 10,001 changes: its sync page
//! went whole, over the 10,000 a batch may hold, and the receiving node refused it and banned
//! the honest sender; a browser that cleared as many offline got 413 on every push and stayed
//! offline. Both directions are checked here, with the browser peer's own logic
//! (`wasm_peer::peer::Peer`, the code the browser runs, natively) against real nodes.

#[path = "support/browser_pull.rs"]
mod browser_pull;
#[path = "support/bulk.rs"]
mod bulk;
mod common;

use std::time::Duration;

use bulk::completed_todos;
use changeset::{Change, SiteId};
use common::{TestNode, client, eventually, get_json, p2p_addr, p2p_config, post_form};
use wasm_peer::peer::Peer;

const TODOS: usize = 10_001;
const CONVERGE: Duration = Duration::from_secs(120);
/// What templates/static/app.js asks of a push.
const PUSH_MAX_CHANGES: usize = 2_000;

async fn todo_count(node: &TestNode) -> usize {
    get_json(node, "/api/todos")
        .await
        .as_array()
        .expect("todos")
        .len()
}

async fn wait_for_count(node: &TestNode, want: usize) {
    eventually(
        &format!("{} to hold {want} todos", node.addr),
        CONVERGE,
        || async { (todo_count(node).await == want).then_some(()) },
    )
    .await;
}

async fn push(node: &TestNode, changes: &[Change]) {
    for batch in changes.chunks(9_000) {
        let response = client()
            .post(node.url("/api/changes"))
            .json(&serde_json::json!({ "changes": batch }))
            .send()
            .await
            .expect("push");
        assert_eq!(
            response.status(),
            200,
            "{}",
            response.text().await.unwrap_or_default()
        );
    }
}

async fn browser_pulls(browser: &mut Peer, node: &TestNode) {
    browser_pull::pull_all(browser, &client(), &node.url("")).await;
}

/// What app.js does to push: batches of whole transactions until nothing waits.
async fn browser_pushes(browser: &mut Peer, node: &TestNode) {
    while let Some(batch) = browser.push_batch(PUSH_MAX_CHANGES) {
        let response = client()
            .post(node.url("/api/changes"))
            .header("content-type", "application/json")
            .body(batch.body)
            .send()
            .await
            .expect("push");
        assert_eq!(
            response.status(),
            200,
            "a push of {} changes: {}",
            batch.changes,
            response.text().await.unwrap_or_default()
        );
        browser.acknowledge_push(batch.up_to);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clearing_10001_completed_todos_reaches_every_node_and_browser() {
    let (dir_a, dir_b) = (
        tempfile::tempdir().expect("tempdir"),
        tempfile::tempdir().expect("tempdir"),
    );
    let a = TestNode::start_with(p2p_config(dir_a.path(), "a", &[])).await;
    let b = TestNode::start_with(p2p_config(dir_b.path(), "b", &[p2p_addr(&a).await])).await;
    let mut browser = Peer::new(SiteId([0xB0; 16]));

    // Cleared on a node: A clears, B and the browser follow.
    push(&a, &completed_todos("first", TODOS)).await;
    wait_for_count(&b, TODOS).await;
    browser_pulls(&mut browser, &a).await;
    assert_eq!(browser.todos().len(), TODOS);
    let cleared = post_form(&a, "/todos/clear-completed", &[]).await;
    assert_eq!(cleared.status(), 303);
    assert_eq!(todo_count(&a).await, 0);
    wait_for_count(&b, 0).await;
    browser_pulls(&mut browser, &a).await;
    assert_eq!(browser.todos().len(), 0);

    // Cleared in the browser, offline: its pushes reach B, and A through B.
    push(&a, &completed_todos("second", TODOS)).await;
    browser_pulls(&mut browser, &a).await;
    assert_eq!(browser.todos().len(), TODOS);
    browser
        .submit("/todos/clear-completed", "", 0, "", "offline")
        .expect("clear in the browser");
    assert_eq!(browser.todos().len(), 0);
    wait_for_count(&b, TODOS).await;
    browser_pushes(&mut browser, &b).await;
    assert_eq!(todo_count(&b).await, 0);
    wait_for_count(&a, 0).await;

    b.stop().await;
    a.stop().await;
}
