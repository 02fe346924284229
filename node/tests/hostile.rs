//! Hostile input. A rogue libp2p peer that passes as a node of the deployment sends an
//! undecodable gossip message, or a sync page whose second change is of an unknown column: the
//! node must apply nothing of either, log it, and disconnect and ban the peer. A rogue that
//! claims another node's site id and says it has nothing up to the end of time must not stop
//! the node from catching up with the real one. And one anonymous `POST /api/changes` with
//! counters at the limit must neither drag the node's clock nor split the cluster.

mod common;

use std::time::Duration;

use changeset::{Change, DbVersion, SiteId, Value, pack_columns};
use common::{TestNode, add, eventually, get_json, p2p_addr, p2p_config, post_form, titles};
use futures::StreamExt;
use libp2p::gossipsub::{self, IdentTopic};
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{Multiaddr, Swarm, identify, noise, tcp, yamux};
use todo_node::net::protocol::{
    GossipMessage, PushAck, PushCodec, SyncCodec, SyncResponse, push_protocol, sync_protocol,
};

#[derive(NetworkBehaviour)]
struct Rogue {
    identify: identify::Behaviour,
    gossipsub: gossipsub::Behaviour,
    sync: request_response::Behaviour<SyncCodec>,
    push: request_response::Behaviour<PushCodec>,
}

fn rogue_swarm() -> Swarm<Rogue> {
    rogue_swarm_as(SiteId([0xEE; 16]))
}

/// A rogue that says, in its identify agent string, that it is the node of site `site`.
fn rogue_swarm_as(site: SiteId) -> Swarm<Rogue> {
    libp2p::SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_tcp(
            tcp::Config::default(),
            noise::Config::new,
            yamux::Config::default,
        )
        .expect("tcp")
        .with_behaviour(|key| {
            let mut gossipsub = gossipsub::Behaviour::new(
                gossipsub::MessageAuthenticity::Signed(key.clone()),
                gossipsub::ConfigBuilder::default()
                    .heartbeat_interval(Duration::from_millis(200))
                    .build()
                    .expect("gossipsub config"),
            )
            .expect("gossipsub");
            gossipsub
                .subscribe(&IdentTopic::new("todo-hybrid/todo-hybrid/changes/1"))
                .expect("subscribe");
            Rogue {
                // Claims to belong to the deployment, so the node accepts and syncs with it.
                identify: identify::Behaviour::new(
                    identify::Config::new("/todo-hybrid/todo-hybrid/1".into(), key.public())
                        .with_agent_version(format!("rogue site={site} name=rogue")),
                ),
                gossipsub,
                sync: request_response::Behaviour::with_codec(
                    SyncCodec,
                    [(sync_protocol("todo-hybrid"), ProtocolSupport::Full)],
                    request_response::Config::default(),
                ),
                push: request_response::Behaviour::with_codec(
                    PushCodec,
                    [(push_protocol("todo-hybrid"), ProtocolSupport::Full)],
                    request_response::Config::default(),
                ),
            }
        })
        .expect("behaviour")
        .build()
}

fn change(id: &str, cid: &str, val: Value) -> Change {
    Change {
        table: "todos".into(),
        pk: pack_columns(&[Value::Text(id.into())]).expect("pk"),
        cid: cid.into(),
        val,
        col_version: 1,
        db_version: DbVersion(1),
        site_id: SiteId([0xEE; 16]),
        cl: 1,
        seq: 0,
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Attack {
    /// Answer the node's sync request with a page whose first change is fine and whose second
    /// names a column that does not exist.
    PoisonedSyncPage,
    /// Publish bytes that are not a change batch on the deployment's gossip topic.
    GarbageGossip,
    /// Push (as a browser does) a transaction with a change of a column that does not exist.
    PoisonedPush,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poisoned_sync_page_applies_nothing_and_gets_the_peer_banned() {
    attack(Attack::PoisonedSyncPage).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_gossip_is_rejected_and_gets_the_peer_banned() {
    attack(Attack::GarbageGossip).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poisoned_push_is_refused_and_gets_the_peer_banned() {
    attack(Attack::PoisonedPush).await;
}

async fn attack(attack: Attack) {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = TestNode::start_with(p2p_config(dir.path(), "victim", &[])).await;
    add(&node, "legit").await;
    let addr: Multiaddr = p2p_addr(&node).await.parse().expect("addr");

    let mut rogue = rogue_swarm();
    rogue.dial(addr.clone()).expect("dial");
    let mut sent = false;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let event = tokio::time::timeout_at(deadline, rogue.select_next_some())
            .await
            .expect("the node should disconnect the rogue");
        match event {
            // The node asks for a sync once it has identified the rogue: it takes pushes then.
            SwarmEvent::Behaviour(RogueEvent::Sync(request_response::Event::Message {
                peer,
                message: request_response::Message::Request { .. },
                ..
            })) if attack == Attack::PoisonedPush && !sent => {
                let push = GossipMessage {
                    changes: vec![
                        change("rogue-1", "title", Value::Text("smuggled".into())),
                        change("rogue-1", "is_admin", Value::Integer(1)),
                    ],
                };
                rogue.behaviour_mut().push.send_request(&peer, push);
                sent = true;
            }
            SwarmEvent::Behaviour(RogueEvent::Sync(request_response::Event::Message {
                message: request_response::Message::Request { channel, .. },
                ..
            })) if attack == Attack::PoisonedSyncPage => {
                let page = SyncResponse {
                    source: SiteId([0xEE; 16]),
                    changes: vec![
                        change("rogue-1", "title", Value::Text("smuggled".into())),
                        change("rogue-1", "is_admin", Value::Integer(1)),
                    ],
                    up_to: DbVersion(1),
                    more: false,
                };
                sent |= rogue
                    .behaviour_mut()
                    .sync
                    .send_response(channel, page)
                    .is_ok();
            }
            SwarmEvent::Behaviour(RogueEvent::Gossipsub(gossipsub::Event::Subscribed {
                ..
            })) if attack == Attack::GarbageGossip => {
                let topic = IdentTopic::new("todo-hybrid/todo-hybrid/changes/1");
                sent |= rogue
                    .behaviour_mut()
                    .gossipsub
                    .publish(topic, b"\x01\xff\xff not a change batch".to_vec())
                    .is_ok();
            }
            SwarmEvent::ConnectionClosed {
                num_established: 0, ..
            } => break,
            _ => {}
        }
    }
    assert!(
        sent,
        "the rogue got to send its hostile input before being thrown out"
    );

    // Nothing of it was applied, and the node still works.
    assert_eq!(titles(&node).await, ["legit"]);
    add(&node, "after the attack").await;
    assert_eq!(titles(&node).await, ["after the attack", "legit"]);

    // The ban holds: a new connection is closed at once and the rogue never becomes a peer.
    rogue.dial(addr).expect("redial");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let event = tokio::time::timeout_at(deadline, rogue.select_next_some())
            .await
            .expect("the banned rogue should be refused");
        if matches!(
            event,
            SwarmEvent::ConnectionClosed { .. } | SwarmEvent::OutgoingConnectionError { .. }
        ) {
            break;
        }
    }
    let peers = common::get_json(&node, "/api/peers").await;
    assert_eq!(peers["peers"].as_array().expect("peers").len(), 0);
    node.stop().await;
}

/// What a browser does with each transaction it makes: push it to the node it is connected to
/// over libp2p. The node merges it, acknowledges it, and the other node gets it too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pushed_transaction_is_acknowledged_and_reaches_every_node() {
    let (dir_a, dir_b) = (
        tempfile::tempdir().expect("a"),
        tempfile::tempdir().expect("b"),
    );
    let a = TestNode::start_with(p2p_config(dir_a.path(), "a", &[])).await;
    let b = TestNode::start_with(p2p_config(dir_b.path(), "b", &[p2p_addr(&a).await])).await;
    let addr: Multiaddr = p2p_addr(&a).await.parse().expect("addr");
    let mut browser = rogue_swarm();
    browser.dial(addr).expect("dial");
    let deadline = tokio::time::Instant::now() + CONVERGE;
    let mut pushed = false;
    let ack = loop {
        let event = tokio::time::timeout_at(deadline, browser.select_next_some())
            .await
            .expect("the node should answer the push");
        match event {
            SwarmEvent::Behaviour(RogueEvent::Sync(request_response::Event::Message {
                peer,
                message: request_response::Message::Request { .. },
                ..
            })) if !pushed => {
                let push = GossipMessage {
                    changes: vec![change("pushed-1", "title", Value::Text("pushed".into()))],
                };
                browser.behaviour_mut().push.send_request(&peer, push);
                pushed = true;
            }
            SwarmEvent::Behaviour(RogueEvent::Push(request_response::Event::Message {
                message: request_response::Message::Response { response, .. },
                ..
            })) => break response,
            SwarmEvent::Behaviour(RogueEvent::Push(request_response::Event::OutboundFailure {
                error,
                ..
            })) => panic!("push failed: {error}"),
            _ => {}
        }
    };
    assert_eq!(ack, PushAck::Merged);
    assert_eq!(
        titles(&a).await,
        ["pushed"],
        "merged before it was acknowledged"
    );
    eventually("B has the pushed todo", CONVERGE, || async {
        (titles(&b).await == ["pushed"]).then_some(())
    })
    .await;
    a.stop().await;
    b.stop().await;
}

const CONVERGE: Duration = Duration::from_secs(30);
/// The largest counter any replica accepts (2^53 − 1, exact in JavaScript).
const MAX_COUNTER: i64 = (1 << 53) - 1;

async fn site_of(node: &TestNode) -> SiteId {
    get_json(node, "/health").await["site_id"]
        .as_str()
        .expect("site id")
        .parse()
        .expect("hex site id")
}

/// The rogue claims node B's site id and answers every sync request from A with "nothing, and
/// you have everything up to 2^53 − 1". A keyed its watermark by the claimed site alone, so it
/// never again asked the real B for anything: what B wrote while apart never arrived.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_claiming_another_nodes_site_cannot_stop_catch_up_from_it() {
    let (dir_a, dir_b) = (
        tempfile::tempdir().expect("tempdir"),
        tempfile::tempdir().expect("tempdir"),
    );
    let a = TestNode::start_with(p2p_config(dir_a.path(), "a", &[])).await;
    let a_addr = p2p_addr(&a).await;
    let b = TestNode::start_with(p2p_config(dir_b.path(), "b", &[])).await;
    let b_site = site_of(&b).await;
    add(&b, "written on b while apart").await;
    b.stop().await;

    let mut rogue = rogue_swarm_as(b_site);
    rogue
        .dial(a_addr.parse::<Multiaddr>().expect("addr"))
        .expect("dial");
    let rogue_peer = rogue.local_peer_id().to_string();
    let forging = tokio::spawn(async move {
        loop {
            if let SwarmEvent::Behaviour(RogueEvent::Sync(request_response::Event::Message {
                message: request_response::Message::Request { channel, .. },
                ..
            })) = rogue.select_next_some().await
            {
                let forged = SyncResponse {
                    source: b_site,
                    changes: vec![],
                    up_to: DbVersion(MAX_COUNTER as u64),
                    more: false,
                };
                let _ = rogue.behaviour_mut().sync.send_response(channel, forged);
            }
        }
    });
    // A took the forged answer: its watermark for the rogue is at the end of the range.
    eventually("A to accept the rogue's forged page", CONVERGE, || async {
        let peers = get_json(&a, "/api/peers").await;
        peers["peers"]
            .as_array()
            .expect("peers")
            .iter()
            .any(|p| p["peer_id"] == rogue_peer.as_str() && p["watermark"] == MAX_COUNTER)
            .then_some(())
    })
    .await;

    // The real B comes back: A catches up with it all the same.
    let b = TestNode::start_with(p2p_config(dir_b.path(), "b", &[a_addr])).await;
    eventually("A to catch up with the real B", CONVERGE, || async {
        titles(&a)
            .await
            .contains(&"written on b while apart".to_owned())
            .then_some(())
    })
    .await;
    forging.abort();
    b.stop().await;
    a.stop().await;
}

/// One anonymous push of a title at col_version 2^53 − 1, sent with db_version 2^53 − 1. Node A
/// used to take both: its clock jumped to the end of the range, and its next edit of that title
/// carried col_version 2^53, which B refused as out of range — B banned the honest A and kept
/// the poisoned title for ever. Now A's clock does not move, the edit that would leave the range
/// is refused (409) before it is written, other edits go on, and A and B stay equal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_anonymous_push_at_the_counter_limit_does_not_split_the_cluster() {
    let (dir_a, dir_b) = (
        tempfile::tempdir().expect("tempdir"),
        tempfile::tempdir().expect("tempdir"),
    );
    let a = TestNode::start_with(p2p_config(dir_a.path(), "a", &[])).await;
    let b = TestNode::start_with(p2p_config(dir_b.path(), "b", &[p2p_addr(&a).await])).await;
    let id = add(&a, "honest").await;
    eventually("B to get the todo", CONVERGE, || async {
        (titles(&b).await == ["honest"]).then_some(())
    })
    .await;

    let poison = Change {
        col_version: MAX_COUNTER,
        db_version: DbVersion(MAX_COUNTER as u64),
        ..change(&id, "title", Value::Text("poisoned".into()))
    };
    let pushed = common::client()
        .post(a.url("/api/changes"))
        .json(&serde_json::json!({ "changes": [poison] }))
        .send()
        .await
        .expect("push");
    assert_eq!(
        pushed.status(),
        200,
        "{}",
        pushed.text().await.unwrap_or_default()
    );
    let clock = get_json(&a, "/health").await["db_version"]
        .as_i64()
        .expect("db_version");
    assert!(
        clock < 100,
        "a pushed db_version dragged A's clock to {clock}"
    );
    eventually("both to hold the pushed title", CONVERGE, || async {
        (titles(&a).await == ["poisoned"] && titles(&b).await == ["poisoned"]).then_some(())
    })
    .await;

    // An edit that would take the title's col_version past the limit is refused on A...
    let rename = post_form(&a, &format!("/todos/{id}/title"), &[("title", "mine")]).await;
    assert_eq!(rename.status(), 409);
    assert_eq!(titles(&a).await, ["poisoned"]);
    // ...while other edits of the same todo go on, and reach B.
    let toggle = post_form(&a, &format!("/todos/{id}/toggle"), &[("completed", "1")]).await;
    assert_eq!(toggle.status(), 303);
    let other = add(&a, "after the push").await;
    eventually(
        "A and B to hold the same rows and clocks",
        CONVERGE,
        || async {
            let (on_a, on_b) = (
                common::replicated_state(&a).await,
                common::replicated_state(&b).await,
            );
            (on_a == on_b
                && on_a
                    .iter()
                    .any(|c| c["cid"] == "completed" && c["val"][1] == 1))
            .then_some(())
        },
    )
    .await;
    assert!(
        titles(&b).await.contains(&"after the push".to_owned()),
        "{other}"
    );
    b.stop().await;
    a.stop().await;
}

/// MAX_CONNECTIONS bounds what peers can make a node hold: with room for one, a second peer's
/// connection is closed at once while the first carries on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_limit_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = p2p_config(dir.path(), "small", &[]);
    config.max_connections = 1;
    let node = TestNode::start_with(config).await;
    let addr: Multiaddr = p2p_addr(&node).await.parse().expect("addr");

    let mut first = rogue_swarm_as(SiteId([0xE1; 16]));
    first.dial(addr.clone()).expect("dial");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let event = tokio::time::timeout_at(deadline, first.select_next_some())
            .await
            .expect("the first peer connects");
        if matches!(event, SwarmEvent::ConnectionEstablished { .. }) {
            break;
        }
    }
    let keep_first = tokio::spawn(async move {
        loop {
            first.select_next_some().await;
        }
    });

    let mut second = rogue_swarm_as(SiteId([0xE2; 16]));
    second.dial(addr).expect("dial");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let event = tokio::time::timeout_at(deadline, second.select_next_some())
            .await
            .expect("the second peer should be refused");
        if matches!(
            event,
            SwarmEvent::ConnectionClosed { .. } | SwarmEvent::OutgoingConnectionError { .. }
        ) {
            break;
        }
    }
    let peers = get_json(&node, "/api/peers").await;
    assert_eq!(peers["peers"].as_array().expect("peers").len(), 1);
    keep_first.abort();
    node.stop().await;
}
