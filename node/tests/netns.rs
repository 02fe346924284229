//! Multi-host test: each node in its own network namespace with its own address on a bridge
//! (itself in a "switch" namespace, so the host's network is untouched). The nodes are given
//! no addresses of each other: they must find each other by mDNS alone, replicate, keep
//! working through a partition (the link of node A cut at the bridge) with writes on both
//! sides, and converge once the link is back. The test makes and removes its namespaces and
//! processes itself, also when it fails. Needs root and `ip netns` (see common/netlab.rs).

mod common;

use std::path::Path;
use std::time::Duration;

use common::netlab::{
    Lab, add, can_run, eventually, node_bin, node_env, node_json, peer_entry, titles,
};

const SUBNET: &str = "10.231.0";

/// Starts a node in `ns` that finds its peers by mDNS alone, in deployment `service`.
fn start_node(lab: &mut Lab, ns: &str, name: &str, service: &str, data_dir: &Path) {
    let mut env = node_env(name, data_dir);
    env.extend([
        ("ENABLE_MDNS", "true".to_owned()),
        ("MDNS_SERVICE_NAME", service.into()),
        ("P2P_LISTEN", "/ip4/0.0.0.0/tcp/4001".into()),
    ]);
    lab.spawn(ns, node_bin(), name, &env);
}

/// A node's peer id, from its /health.
fn peer_id(ns: &str) -> String {
    node_json(ns, "/health").expect("health")["peer_id"]
        .as_str()
        .expect("peer id")
        .to_owned()
}

#[test]
fn nodes_on_separate_hosts_find_each_other_by_mdns_and_converge_after_a_partition() {
    if !can_run("nodes_on_separate_hosts_find_each_other_by_mdns_and_converge_after_a_partition") {
        return;
    }
    let data = tempfile::tempdir().expect("tempdir");
    let mut lab = Lab::new("tn");
    let sw = lab.switch();
    let a = lab.ns("a");
    let b = lab.ns("b");
    // c runs another deployment on the same network: it must stay out of a and b's data.
    let c = lab.ns("c");
    for (ns, name, host) in [(&a, "a", 2), (&b, "b", 3), (&c, "c", 4)] {
        lab.attach(&sw, ns, &format!("{SUBNET}.{host}/24"), name);
    }
    println!("step: hosts {a} ({SUBNET}.2), {b} ({SUBNET}.3) and {c} ({SUBNET}.4) on a bridge");
    start_node(&mut lab, &a, "a", "netns-test", &data.path().join("a"));
    start_node(&mut lab, &b, "b", "netns-test", &data.path().join("b"));
    start_node(&mut lab, &c, "c", "another-app", &data.path().join("c"));
    let wait = Duration::from_secs(60);
    eventually("all three nodes healthy", wait, || {
        [&a, &b, &c]
            .iter()
            .all(|ns| node_json(ns, "/health").is_some())
            .then_some(())
    });

    println!("step: discovery by mDNS alone (no bootstrap addresses)");
    let b_id = peer_id(&b);
    eventually("a lists b as a peer", wait, || peer_entry(&a, &b_id));

    println!("step: replication");
    add(&a, "written on a");
    eventually("b holds the todo written on a", wait, || {
        (titles(&b) == ["written on a"]).then_some(())
    });

    println!("step: partition (a's link cut), writes on both sides");
    lab.set_attached(&sw, "a", false);
    add(&a, "a during partition");
    add(&b, "b during partition");
    // Not a synchronisation: a window in which a leak through the partition would show.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        titles(&a),
        ["a during partition", "written on a"],
        "a keeps working alone"
    );
    assert_eq!(
        titles(&b),
        ["b during partition", "written on a"],
        "b keeps working alone"
    );

    println!("step: heal, converge");
    lab.set_attached(&sw, "a", true);
    let all = ["a during partition", "b during partition", "written on a"];
    eventually("both hold every todo", wait, || {
        (titles(&a) == all && titles(&b) == all).then_some(())
    });
    eventually("identical rows on both", wait, || {
        let rows = node_json(&a, "/api/todos")?;
        (Some(&rows) == node_json(&b, "/api/todos").as_ref()).then_some(())
    });

    println!("step: the other deployment on the same network stayed apart");
    assert!(
        titles(&c).is_empty(),
        "c received another deployment's todos"
    );
    let c_id = peer_id(&c);
    for ns in [&a, &b] {
        assert!(
            peer_entry(ns, &c_id).is_none(),
            "{ns} lists the other deployment's node as a peer"
        );
    }
}
