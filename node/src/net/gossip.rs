//! Gossip: each local transaction published at once as one message on the deployment's topic;
//! received messages checked by the one rule of `changeset::validate`, then merged. Browsers,
//! which run no gossipsub, push their transactions instead (the push protocol): merged the
//! same way, acknowledged, and gossiped on to the other nodes.

use changeset::{Change, DbVersion};
use libp2p::PeerId;
use libp2p::gossipsub::{self, MessageAcceptance};
use libp2p::request_response::{self, ResponseChannel};

use super::event_loop::{Done, EventLoop};
use super::protocol::{self, GossipMessage, PushAck};

impl EventLoop {
    pub(super) fn on_gossip(
        &mut self,
        source: PeerId,
        id: gossipsub::MessageId,
        message: gossipsub::Message,
    ) {
        let decoded = protocol::decode_gossip(&message.data)
            .map_err(|e| e.to_string())
            .and_then(|m| {
                changeset::validate(&m.changes)
                    .map(|()| m)
                    .map_err(|e| e.to_string())
            });
        let gossip = &mut self.swarm.behaviour_mut().gossipsub;
        match decoded {
            Ok(GossipMessage { changes }) => {
                gossip.report_message_validation_result(&id, &source, MessageAcceptance::Accept);
                let Ok(slot) = self.gossip_slots.clone().try_acquire_owned() else {
                    tracing::debug!(peer = %source, "busy: leaving a gossip message to anti-entropy");
                    return;
                };
                let count = changes.len();
                self.spawn_db(move |store| {
                    let _slot = slot;
                    match store.merge(&changes, None) {
                        Ok(outcome) => Done::GossipMerged {
                            peer: source,
                            changes: count,
                            impacted: outcome.rows_impacted,
                        },
                        Err(e) => Done::GossipMergeFailed {
                            peer: source,
                            error: e.to_string(),
                        },
                    }
                });
            }
            Err(error) => {
                gossip.report_message_validation_result(&id, &source, MessageAcceptance::Reject);
                self.penalise(source, &format!("invalid gossip message: {error}"));
            }
        }
    }

    pub(super) fn on_push_event(&mut self, event: request_response::Event<GossipMessage, PushAck>) {
        match event {
            request_response::Event::Message {
                peer,
                message:
                    request_response::Message::Request {
                        request, channel, ..
                    },
                ..
            } => self.on_push(peer, request, channel),
            request_response::Event::Message { .. }
            | request_response::Event::ResponseSent { .. } => {}
            request_response::Event::OutboundFailure { peer, error, .. } => {
                tracing::debug!(%peer, %error, "push failed");
            }
            request_response::Event::InboundFailure { peer, error, .. } => {
                tracing::debug!(%peer, %error, "receiving a push failed");
            }
        }
    }

    /// A transaction pushed by a peer of this deployment: checked like gossip, merged off the
    /// loop, answered once merged.
    fn on_push(&mut self, peer: PeerId, push: GossipMessage, channel: ResponseChannel<PushAck>) {
        if self.peers.get(&peer).and_then(|p| p.node()).is_none() {
            tracing::debug!(%peer, "push before identify; dropped");
            return;
        }
        if let Err(error) = changeset::validate(&push.changes) {
            let _ = self
                .swarm
                .behaviour_mut()
                .push
                .send_response(channel, PushAck::Refused);
            self.penalise(peer, &format!("invalid push: {error}"));
            return;
        }
        let Ok(slot) = self.gossip_slots.clone().try_acquire_owned() else {
            // Unanswered: the pusher's request fails, and anti-entropy brings the changes.
            tracing::debug!(%peer, "busy: leaving a push to anti-entropy");
            return;
        };
        self.spawn_db(move |store| {
            let _slot = slot;
            let merged = store
                .merge(&push.changes, None)
                .map(|outcome| (push.changes, outcome.rows_impacted))
                .map_err(|e| e.to_string());
            Done::PushMerged {
                peer,
                channel,
                merged,
            }
        });
    }

    pub(super) fn answer_push(
        &mut self,
        peer: PeerId,
        channel: ResponseChannel<PushAck>,
        merged: Result<(Vec<Change>, i64), String>,
    ) {
        let ack = match merged {
            Ok((changes, impacted)) => {
                tracing::debug!(%peer, changes = changes.len(), impacted, "merged a push");
                // The other nodes hear of it at once, as of a browser's HTTP push.
                self.gossip_transactions(&changes);
                PushAck::Merged
            }
            Err(error) => {
                tracing::error!(%peer, %error, "merging a push failed; nothing was applied");
                PushAck::Refused
            }
        };
        if self
            .swarm
            .behaviour_mut()
            .push
            .send_response(channel, ack)
            .is_err()
        {
            tracing::debug!(%peer, "peer went away before its push was answered");
        }
    }

    /// A local write committed: read the node's own changes not yet published, off the loop.
    pub(super) fn publish_local_changes(&mut self) {
        if self.publishing {
            return; // the running publication re-checks when it finishes
        }
        self.publishing = true;
        let since = self.last_published;
        // Reading happens off the loop; publishing needs the swarm, so it comes back as Done.
        self.spawn_db(move |store| match store.local_changes_since(since) {
            Ok(changes) => Done::PublishReady { changes, since },
            Err(e) => {
                tracing::warn!(error = %e, "reading local changes for gossip");
                Done::PublishFailed
            }
        });
    }

    /// Publishes each transaction (db_version) as one message. With no peer subscribed the
    /// publish fails; that is fine, anti-entropy delivers the changes when a peer appears.
    pub(super) fn publish(&mut self, changes: Vec<Change>, since: DbVersion) {
        let up_to = self.gossip_transactions(&changes).max(since);
        self.last_published = self.last_published.max(up_to);
        self.publishing = false;
        if self.local_writes.has_changed().unwrap_or(false) {
            self.publish_local_changes();
        }
    }

    /// Publishes each transaction (db_version) of `changes` as one gossip message; returns the
    /// highest db_version published (0 for none).
    pub(super) fn gossip_transactions(&mut self, changes: &[Change]) -> DbVersion {
        let mut up_to = DbVersion(0);
        if !self.gossip_enabled {
            // Anti-entropy alone delivers them (GOSSIP=false).
            return changes.iter().map(|c| c.db_version).max().unwrap_or(up_to);
        }
        for transaction in changes.chunk_by(|a, b| a.db_version == b.db_version) {
            let version = transaction[0].db_version;
            let bytes = protocol::encode_gossip(&GossipMessage {
                changes: transaction.to_vec(),
            });
            let topic = self.topic.clone();
            match self.swarm.behaviour_mut().gossipsub.publish(topic, bytes) {
                Ok(_) => tracing::debug!(
                    db_version = version.0,
                    changes = transaction.len(),
                    "published"
                ),
                Err(gossipsub::PublishError::NoPeersSubscribedToTopic) => {}
                Err(error) => {
                    tracing::warn!(%error, db_version = version.0, "gossip publish failed")
                }
            }
            up_to = up_to.max(version);
        }
        up_to
    }
}
