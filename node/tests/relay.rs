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
//! 3. **Loopback, no root needed**: in-process nodes and relay on 127.0.0.1, so the
//!    reservation lifecycle is covered on any machine: reserve, lose it when the relay stops,
//!    get it back by itself when the relay returns, and replicate through it.
//!
//! The namespace tests run the relay binary, from `cargo build -p todo-relay` (ci/test.sh
//! builds it) in the same target folder as this test. The test makes and removes its namespaces and processes itself,
//! also when it fails; its traffic stays inside them. The namespace tests need root and
//! `ip netns`, and say so and skip without them (see common/netlab.rs).

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::netlab::{
    Lab, add, can_run, curl, eventually, get_json, node_bin, node_env, node_json, peer_entry,
    relay_bin, titles,
};
use common::relay::InProcessRelay;

const WAIT: Duration = Duration::from_secs(60);

/// Starts the relay in `ns`, with the ports of the compose file; returns its index in `lab`.
fn start_relay(lab: &mut Lab, ns: &str, data: &Path) -> usize {
    let env = [
        ("DATA_DIR", data.display().to_string()),
        ("HOST", "0.0.0.0".into()),
        ("HTTP_PORT", "4000".into()),
        (
            "P2P_LISTEN",
            "/ip4/0.0.0.0/tcp/4001,/ip4/0.0.0.0/udp/4001/quic-v1".into(),
        ),
        ("LOG", "todo_relay=info,warn".into()),
    ];
    lab.spawn(ns, &relay_bin(), "relay", &env)
}

/// Starts a node in `ns` with mDNS off, reserving on `relay` and dialling `bootstrap` (if
/// not empty); returns its index in `lab`.
fn start_node(
    lab: &mut Lab,
    ns: &str,
    name: &str,
    data: &Path,
    relay: &str,
    bootstrap: &str,
) -> usize {
    let mut env = node_env(name, data);
    env.extend([
        ("ENABLE_MDNS", "false".to_owned()),
        ("MDNS_SERVICE_NAME", "relay-test".into()),
        (
            "P2P_LISTEN",
            "/ip4/0.0.0.0/tcp/4001,/ip4/0.0.0.0/udp/4001/quic-v1".into(),
        ),
        ("RELAY_ADDRS", relay.into()),
    ]);
    if !bootstrap.is_empty() {
        env.push(("BOOTSTRAP_PEERS", bootstrap.into()));
    }
    lab.spawn(ns, node_bin(), name, &env)
}

fn peer_id(ns: &str, url: &str) -> String {
    eventually(&format!("{url} answers in {ns}"), WAIT, || {
        get_json(ns, url)?["peer_id"].as_str().map(str::to_owned)
    })
}

fn reservation(ns: &str) -> Option<String> {
    node_json(ns, "/api/peers")?["relays"][0]["reservation"]
        .as_str()
        .map(str::to_owned)
}

#[test]
fn nodes_without_a_route_to_each_other_replicate_through_the_relay() {
    if !can_run("nodes_without_a_route_to_each_other_replicate_through_the_relay") {
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

    let relay = start_relay(&mut lab, &r, &data.path().join("relay"));
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

    start_node(&mut lab, &a, "a", &data.path().join("a"), &relay_for_a, "");
    let a_id = peer_id(&a, "http://127.0.0.1:3000/health");
    eventually("a holds a reservation on the relay", WAIT, || {
        (reservation(&a)? == "active").then_some(())
    });
    let a_via_relay = format!("{relay_for_b}/p2p-circuit/p2p/{a_id}");
    start_node(
        &mut lab,
        &b,
        "b",
        &data.path().join("b"),
        &relay_for_b,
        &a_via_relay,
    );
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
    let relay = start_relay(&mut lab, &r, &data.path().join("relay"));
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
    if !can_run("dcutr_upgrades_a_relayed_connection_to_direct_when_a_path_exists") {
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

    start_relay(&mut lab, &r, &data.path().join("relay"));
    let relay_id = peer_id(&r, "http://127.0.0.1:4000/health");
    let relay_addr = format!("/ip4/10.233.0.1/tcp/4001/p2p/{relay_id}");
    let na = start_node(&mut lab, &a, "a", &data.path().join("a"), &relay_addr, "");
    let a_id = peer_id(&a, "http://127.0.0.1:3000/health");
    eventually("a holds a reservation on the relay", WAIT, || {
        (reservation(&a)? == "active").then_some(())
    });
    let nb = start_node(
        &mut lab,
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

async fn relay_state(node: &common::TestNode) -> Option<String> {
    common::get_json(node, "/api/peers").await["relays"][0]["reservation"]
        .as_str()
        .map(str::to_owned)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_loopback_a_node_keeps_its_reservation_across_relay_restarts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut relay = InProcessRelay::start(&dir.path().join("relay")).await;
    let relay_id = relay.peer_id.clone();
    let relay_addr = relay.tcp_addr().to_string();

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

    relay.stop().await;
    common::eventually("a saw its reservation end", WAIT, || async {
        (relay_state(&a).await? != "active").then_some(())
    })
    .await;
    common::add(&a, "while the relay was down").await;
    relay.start_again().await;
    assert_eq!(relay.peer_id, relay_id);
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
    relay.restart().await;
    common::eventually(
        "b holds a reservation after another restart",
        WAIT,
        || async { (relay_state(&b).await? == "active").then_some(()) },
    )
    .await;
    b.stop().await;
    a.stop().await;
    relay.stop().await;
}
