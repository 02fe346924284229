//! A rogue libp2p peer that passes as a node of the deployment, then sends hostile input: an
//! undecodable gossip message, and a sync page whose second change is of an unknown column.
//! The node must apply nothing of either, log it, and disconnect and ban the peer.

mod common;

use std::time::Duration;

use changeset::{Change, DbVersion, SiteId, Value, pack_columns};
use common::{TestNode, add, p2p_addr, p2p_config, titles};
use futures::StreamExt;
use libp2p::gossipsub::{self, IdentTopic};
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{Multiaddr, Swarm, identify, noise, tcp, yamux};
use todo_node::net::protocol::{SyncCodec, SyncResponse, sync_protocol};

#[derive(NetworkBehaviour)]
struct Rogue {
    identify: identify::Behaviour,
    gossipsub: gossipsub::Behaviour,
    sync: request_response::Behaviour<SyncCodec>,
}

fn rogue_swarm() -> Swarm<Rogue> {
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
                        .with_agent_version(format!(
                            "rogue site={} name=rogue",
                            SiteId([0xEE; 16])
                        )),
                ),
                gossipsub,
                sync: request_response::Behaviour::with_codec(
                    SyncCodec,
                    [(sync_protocol("todo-hybrid"), ProtocolSupport::Full)],
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
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poisoned_sync_page_applies_nothing_and_gets_the_peer_banned() {
    attack(Attack::PoisonedSyncPage).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_gossip_is_rejected_and_gets_the_peer_banned() {
    attack(Attack::GarbageGossip).await;
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
            SwarmEvent::Behaviour(RogueEvent::Sync(request_response::Event::Message {
                message: request_response::Message::Request { channel, .. },
                ..
            })) if attack == Attack::PoisonedSyncPage => {
                let page = SyncResponse {
                    site_id: SiteId([0xEE; 16]),
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
