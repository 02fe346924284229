//! The one task that owns the swarm: it waits on the swarm, the HTTP side's commands, local
//! writes, results of database work and a tick, and hands each to the room that deals with it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use changeset::{Change, DbVersion, SiteId};
use futures::StreamExt;
use libp2p::gossipsub::{self, IdentTopic};
use libp2p::request_response::ResponseChannel;
use libp2p::swarm::SwarmEvent;
use libp2p::{PeerId, Swarm, dcutr, identify};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::TICK;
use super::behaviour::{Behaviour, BehaviourEvent};
use super::discovery::Redial;
use super::handle::Command;
use super::peers::Peer;
use super::protocol::{PushAck, SyncResponse};
use super::relays::Relays;
use crate::db::Store;

pub(super) struct EventLoop {
    pub swarm: Swarm<Behaviour>,
    pub store: Arc<Store>,
    pub site: SiteId,
    /// MDNS_SERVICE_NAME: the deployment this node belongs to.
    pub service: String,
    pub topic: IdentTopic,
    pub commands: mpsc::Receiver<Command>,
    /// Bumped by the store on every local write.
    pub local_writes: watch::Receiver<u64>,
    /// The node's own changes up to here were gossiped (or there was nobody to gossip to).
    pub last_published: DbVersion,
    /// A read of local changes for gossip is under way.
    pub publishing: bool,
    pub done_tx: mpsc::Sender<Done>,
    pub done: mpsc::Receiver<Done>,
    /// Every connected peer, whatever it turns out to be.
    pub peers: HashMap<PeerId, Peer>,
    /// Peers refused until the instant, for hostile input or another deployment.
    pub banned: HashMap<PeerId, Instant>,
    pub redials: HashMap<PeerId, Redial>,
    pub relays: Relays,
    pub sync_interval: Duration,
    /// GOSSIP: publish local writes at once (false: anti-entropy alone).
    pub gossip_enabled: bool,
    pub gossip_slots: Arc<Semaphore>,
    /// Sync requests being answered; more are dropped (the asker retries next round).
    pub serve_slots: Arc<Semaphore>,
    /// Every task the loop started (database work, relay look-ups): bounded by the slots
    /// above and by one sync round per peer, and aborted with the loop.
    pub tasks: JoinSet<()>,
    pub shutdown: CancellationToken,
}

/// Results of database work, sent back to the loop.
pub(super) enum Done {
    /// The node's own changes above `since`, read for gossip.
    PublishReady {
        changes: Vec<Change>,
        since: DbVersion,
    },
    PublishFailed,
    /// A sync page read for `peer`, to send on `channel`.
    PageRead {
        peer: PeerId,
        channel: ResponseChannel<SyncResponse>,
        page: Result<SyncResponse, String>,
    },
    /// The watermark kept for `peer`'s site: where its sync round starts.
    WatermarkRead {
        peer: PeerId,
        since: DbVersion,
    },
    /// A page from `peer` was merged and its watermark advanced to `up_to`.
    PageMerged {
        peer: PeerId,
        site: SiteId,
        more: bool,
        up_to: DbVersion,
        changes: usize,
        impacted: i64,
    },
    /// The sync round with `peer` failed in the database; nothing of the page was applied.
    SyncFailed {
        peer: PeerId,
        error: String,
    },
    GossipMerged {
        peer: PeerId,
        changes: usize,
        impacted: i64,
    },
    GossipMergeFailed {
        peer: PeerId,
        error: String,
    },
    /// A transaction `peer` pushed was merged (or failed to be): answer it.
    PushMerged {
        peer: PeerId,
        channel: ResponseChannel<PushAck>,
        merged: Result<(Vec<Change>, i64), String>,
    },
}

impl EventLoop {
    pub async fn run(mut self) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut writes_open = true;
        loop {
            tokio::select! {
                biased;
                () = self.shutdown.cancelled() => break,
                Some(done) = self.done.recv() => self.on_done(done),
                changed = self.local_writes.changed(), if writes_open => match changed {
                    Ok(()) => self.publish_local_changes(),
                    Err(_) => writes_open = false,
                },
                Some(command) = self.commands.recv() => self.on_command(command),
                Some(_) = self.tasks.join_next(), if !self.tasks.is_empty() => {}
                event = self.swarm.select_next_some() => self.on_swarm_event(event),
                _ = tick.tick() => self.on_tick(),
            }
        }
        tracing::info!("network loop stopped");
    }

    /// Runs `work` on the blocking pool; its result comes back to the loop as `Done`. The task
    /// belongs to the loop's JoinSet, so none outlives the loop.
    pub fn spawn_db<F>(&mut self, work: F)
    where
        F: FnOnce(&Store) -> Done + Send + 'static,
    {
        let store = self.store.clone();
        let done = self.done_tx.clone();
        self.tasks.spawn(async move {
            if let Ok(result) = tokio::task::spawn_blocking(move || work(&store)).await {
                // The loop may have stopped; nothing to report to then.
                let _ = done.send(result).await;
            }
        });
    }

    fn on_command(&mut self, command: Command) {
        match command {
            Command::AddRelay(addr) => self.add_relay(addr),
            Command::Gossip(changes) => {
                self.gossip_transactions(&changes);
            }
            Command::Status(reply) => {
                let _ = reply.send(self.status());
            }
        }
    }

    fn on_tick(&mut self) {
        let now = Instant::now();
        self.banned.retain(|_, until| *until > now);
        self.reserve_on_relays(now);
        self.redial_due(now);
        self.begin_due_sync_rounds(now);
    }

    fn on_swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::NewListenAddr { address, .. } => {
                if super::discovery::is_relayed(&address) {
                    tracing::info!(%address, "reachable through the relay");
                } else {
                    tracing::info!(%address, peer_id = %self.swarm.local_peer_id(), "p2p listening");
                }
            }
            SwarmEvent::ListenerClosed {
                listener_id,
                reason,
                ..
            } => self.on_relay_listener_closed(listener_id, reason.err().map(|e| e.to_string())),
            SwarmEvent::ConnectionEstablished {
                peer_id,
                connection_id,
                endpoint,
                ..
            } => self.on_connection_established(peer_id, connection_id, &endpoint),
            SwarmEvent::ConnectionClosed {
                peer_id,
                connection_id,
                num_established,
                ..
            } => self.on_connection_closed(peer_id, connection_id, num_established),
            SwarmEvent::OutgoingConnectionError { peer_id, error, .. } => {
                tracing::debug!(?peer_id, %error, "outgoing connection failed");
            }
            SwarmEvent::Behaviour(event) => self.on_behaviour_event(event),
            _ => {}
        }
    }

    fn on_behaviour_event(&mut self, event: BehaviourEvent) {
        match event {
            BehaviourEvent::Mdns(event) => self.on_mdns(event),
            BehaviourEvent::Identify(identify::Event::Received { peer_id, info, .. }) => {
                self.on_identified(peer_id, info);
            }
            BehaviourEvent::Gossipsub(gossipsub::Event::Message {
                propagation_source,
                message_id,
                message,
            }) => self.on_gossip(propagation_source, message_id, message),
            BehaviourEvent::Sync(event) => self.on_sync_event(event),
            BehaviourEvent::Push(event) => self.on_push_event(event),
            BehaviourEvent::RelayClient(event) => self.on_relay_client_event(event),
            BehaviourEvent::Dcutr(dcutr::Event {
                remote_peer_id,
                result,
            }) => match result {
                Ok(_) => {
                    tracing::info!(peer = %remote_peer_id, "direct connection established by hole punching (DCUtR); the relayed one is no longer needed")
                }
                Err(error) => {
                    tracing::info!(peer = %remote_peer_id, %error, "hole punching failed; the connection stays relayed")
                }
            },
            _ => {}
        }
    }

    fn on_done(&mut self, done: Done) {
        match done {
            Done::PublishReady { changes, since } => self.publish(changes, since),
            Done::PublishFailed => self.publishing = false,
            Done::PageRead {
                peer,
                channel,
                page,
            } => self.send_page(peer, channel, page),
            Done::WatermarkRead { peer, since } => self.on_watermark_read(peer, since),
            Done::PageMerged {
                peer,
                site,
                more,
                up_to,
                changes,
                impacted,
            } => self.on_page_merged(peer, site, more, up_to, changes, impacted),
            Done::SyncFailed { peer, error } => {
                tracing::error!(%peer, %error, "merging changes failed; nothing was applied");
                self.end_sync_round_failed(peer);
            }
            Done::GossipMerged {
                peer,
                changes,
                impacted,
            } => {
                tracing::debug!(%peer, changes, impacted, "merged gossip");
            }
            Done::PushMerged {
                peer,
                channel,
                merged,
            } => self.answer_push(peer, channel, merged),
            Done::GossipMergeFailed { peer, error } => {
                tracing::error!(%peer, %error, "merging gossip failed; nothing was applied (anti-entropy will bring it again)");
            }
        }
    }
}
