//! Nodes replicate over real libp2p on loopback: writes anywhere reach everywhere, concurrent
//! edits converge, a stopped node catches up, a late joiner gets everything (over QUIC).

mod common;

use std::time::Duration;

use common::{TestNode, add, eventually, p2p_addr, p2p_config, post_form, titles, todos};

const CONVERGE: Duration = Duration::from_secs(30);

async fn three_nodes(dirs: &[tempfile::TempDir; 3]) -> [TestNode; 3] {
    let a = TestNode::start_with(p2p_config(dirs[0].path(), "a", &[])).await;
    let seed = p2p_addr(&a).await;
    let b =
        TestNode::start_with(p2p_config(dirs[1].path(), "b", std::slice::from_ref(&seed))).await;
    let c = TestNode::start_with(p2p_config(dirs[2].path(), "c", &[seed])).await;
    [a, b, c]
}

fn dirs() -> [tempfile::TempDir; 3] {
    [(); 3].map(|()| tempfile::tempdir().expect("tempdir"))
}

async fn wait_for_titles(node: &TestNode, want: &[&str]) {
    let mut want: Vec<String> = want.iter().map(|s| (*s).to_owned()).collect();
    want.sort();
    eventually(&format!("{} to hold {want:?}", node.addr), CONVERGE, || {
        let want = want.clone();
        async move { (titles(node).await == want).then_some(()) }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_todo_written_on_any_node_appears_on_all() {
    let dirs = dirs();
    let nodes = three_nodes(&dirs).await;
    add(&nodes[0], "from a").await;
    add(&nodes[1], "from b").await;
    add(&nodes[2], "from c").await;
    for n in &nodes {
        wait_for_titles(n, &["from a", "from b", "from c"]).await;
    }
    for n in nodes {
        n.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_edits_of_one_todo_converge_everywhere() {
    let dirs = dirs();
    let nodes = three_nodes(&dirs).await;
    let id = add(&nodes[0], "original").await;
    for n in &nodes {
        wait_for_titles(n, &["original"]).await;
    }
    // Three different edits of the same todo, as close together as the test can make them.
    let path = format!("/todos/{id}/title");
    let toggle = format!("/todos/{id}/toggle");
    tokio::join!(
        post_form(&nodes[0], &path, &[("title", "edit on a")]),
        post_form(&nodes[1], &path, &[("title", "edit on b")]),
        post_form(&nodes[2], &toggle, &[("completed", "1")]),
    );
    let converged = eventually("all three replicas to agree", CONVERGE, || async {
        let a = common::replicated_state(&nodes[0]).await;
        let same = common::replicated_state(&nodes[1]).await == a
            && common::replicated_state(&nodes[2]).await == a;
        let rows = todos(&nodes[0]).await;
        (same && todos(&nodes[1]).await == rows && todos(&nodes[2]).await == rows).then_some(rows)
    })
    .await;
    assert_eq!(converged.len(), 1);
    let title = converged[0]["title"].as_str().expect("title");
    assert!(title == "edit on a" || title == "edit on b", "{title}");
    assert_eq!(
        converged[0]["completed"], true,
        "the toggle is kept beside either title"
    );
    for n in nodes {
        n.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_node_catches_up_after_restart() {
    let dirs = dirs();
    let [a, b, c] = three_nodes(&dirs).await;
    add(&a, "before").await;
    wait_for_titles(&c, &["before"]).await;
    let c_config = p2p_config(dirs[2].path(), "c", &[p2p_addr(&a).await]);
    c.stop().await;

    let id = add(&a, "while c was down (a)").await;
    add(&b, "while c was down (b)").await;
    post_form(&b, &format!("/todos/{id}/toggle"), &[("completed", "1")]).await;
    wait_for_titles(
        &a,
        &["before", "while c was down (a)", "while c was down (b)"],
    )
    .await;

    let c = TestNode::start_with(c_config).await;
    wait_for_titles(
        &c,
        &["before", "while c was down (a)", "while c was down (b)"],
    )
    .await;
    eventually(
        "the toggle made while c was down to reach c",
        CONVERGE,
        || async { (todos(&c).await == todos(&a).await).then_some(()) },
    )
    .await;
    for n in [a, b, c] {
        n.stop().await;
    }
}

/// Listens on QUIC only, so every connection of this node is QUIC.
fn quic(mut config: todo_node::Config) -> todo_node::Config {
    config.p2p_listen = vec!["/ip4/127.0.0.1/udp/0/quic-v1".parse().expect("multiaddr")];
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_joining_late_receives_everything_over_quic() {
    let dirs = dirs();
    let a = TestNode::start_with(quic(p2p_config(dirs[0].path(), "a", &[]))).await;
    let a_addr = p2p_addr(&a).await;
    assert!(a_addr.contains("/quic-v1/"), "{a_addr}");
    let b = TestNode::start_with(quic(p2p_config(dirs[1].path(), "b", &[a_addr]))).await;
    let mut want = Vec::new();
    for i in 0..50 {
        let title = format!("early {i}");
        add(if i % 2 == 0 { &a } else { &b }, &title).await;
        want.push(title);
    }
    let gone = add(&a, "deleted before d joined").await;
    post_form(&a, &format!("/todos/{gone}/delete"), &[]).await;
    let want: Vec<&str> = want.iter().map(String::as_str).collect();
    wait_for_titles(&b, &want).await;

    // d knows only b.
    let d =
        TestNode::start_with(quic(p2p_config(dirs[2].path(), "d", &[p2p_addr(&b).await]))).await;
    wait_for_titles(&d, &want).await;
    eventually("d's replica to equal a's", CONVERGE, || async {
        (common::replicated_state(&d).await == common::replicated_state(&a).await).then_some(())
    })
    .await;
    for n in [a, b, d] {
        n.stop().await;
    }
}

/// Waits until `node` has finished an anti-entropy round with each of `peers` others.
async fn wait_for_sync_rounds(node: &TestNode, peers: usize) {
    eventually(
        &format!("{} to finish a sync round with {peers} peers", node.addr),
        CONVERGE,
        || async {
            let status = common::get_json(node, "/api/peers").await;
            let synced = status["peers"]
                .as_array()
                .expect("peers")
                .iter()
                .filter(|p| !p["last_sync_secs_ago"].is_null())
                .count();
            (synced >= peers).then_some(())
        },
    )
    .await;
}

/// Gossip alone: anti-entropy runs once when nodes connect and then only hourly, so a write
/// made after that first round travels by gossip or not at all. Node A has gossip off: its
/// write must not arrive (the control that shows the other write really came by gossip).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_reaches_the_other_nodes_by_gossip_alone() {
    let dirs = dirs();
    let hourly = |dir: &std::path::Path, name: &str, bootstrap: &[String]| {
        let mut config = p2p_config(dir, name, bootstrap);
        config.sync_interval_secs = 3600;
        config
    };
    let mut silent = hourly(dirs[0].path(), "a", &[]);
    silent.gossip = false;
    let a = TestNode::start_with(silent).await;
    let seed = p2p_addr(&a).await;
    let b = TestNode::start_with(hourly(dirs[1].path(), "b", std::slice::from_ref(&seed))).await;
    let c = TestNode::start_with(hourly(dirs[2].path(), "c", &[seed])).await;
    wait_for_sync_rounds(&b, 1).await;
    wait_for_sync_rounds(&c, 1).await;
    wait_for_sync_rounds(&a, 2).await;

    add(&b, "gossiped by b").await;
    wait_for_titles(&a, &["gossiped by b"]).await;
    wait_for_titles(&c, &["gossiped by b"]).await;

    add(&a, "kept by a").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(titles(&b).await, ["gossiped by b"], "A has gossip off");
    for n in [a, b, c] {
        n.stop().await;
    }
}

/// Anti-entropy alone: A publishes nothing (GOSSIP=false); B pulls from it every second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_reaches_the_other_node_by_anti_entropy_alone() {
    let dirs = dirs();
    let mut silent = p2p_config(dirs[0].path(), "a", &[]);
    silent.gossip = false;
    let a = TestNode::start_with(silent).await;
    let b = TestNode::start_with(p2p_config(dirs[1].path(), "b", &[p2p_addr(&a).await])).await;
    wait_for_sync_rounds(&b, 1).await;
    add(&a, "pulled by b").await;
    wait_for_titles(&b, &["pulled by b"]).await;
    for n in [a, b] {
        n.stop().await;
    }
}
