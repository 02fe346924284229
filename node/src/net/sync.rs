//! Anti-entropy: asking each node of the deployment for its changes above the watermark kept
//! for it, page by page, and answering such requests. Every page is checked by the one rule
//! of `changeset::validate` before anything is merged; the merge and the watermark commit
//! together.

use std::time::Instant;

use changeset::{DbVersion, SiteId};
use libp2p::PeerId;
use libp2p::request_response::{self, OutboundRequestId, ResponseChannel};

use super::event_loop::{Done, EventLoop};
use super::protocol::{MAX_PAGE_BYTES, SyncRequest, SyncResponse};
use super::{SYNC_PAGE_CHANGES, SYNC_SERVES_IN_FLIGHT};
use crate::db::Watermark;

impl EventLoop {
    /// Starts a round with every node whose round is due.
    pub(super) fn begin_due_sync_rounds(&mut self, now: Instant) {
        let due: Vec<PeerId> = self
            .peers
            .iter()
            .filter(|(_, p)| {
                p.node()
                    .is_some_and(|n| n.round_due(self.sync_interval, now))
            })
            .map(|(id, _)| *id)
            .collect();
        for peer in due {
            self.begin_sync_round(peer);
        }
    }

    /// Starts an anti-entropy round: look up the watermark for the peer's site, then ask.
    pub(super) fn begin_sync_round(&mut self, peer: PeerId) {
        let Some(node) = self.peers.get_mut(&peer).and_then(|p| p.node_mut()) else {
            return;
        };
        if !node.start_round(Instant::now()) {
            return;
        }
        match node.site {
            Some(site) => {
                self.spawn_db(
                    move |store| match store.watermark(&peer.to_string(), site) {
                        Ok(since) => Done::WatermarkRead { peer, since },
                        Err(e) => Done::SyncFailed {
                            peer,
                            error: format!("reading watermark: {e}"),
                        },
                    },
                )
            }
            // A peer that did not say its site id: pull everything (merging is idempotent).
            None => self.request_page(peer, DbVersion(0)),
        }
    }

    pub(super) fn on_watermark_read(&mut self, peer: PeerId, since: DbVersion) {
        if let Some(node) = self.peers.get_mut(&peer).and_then(|p| p.node_mut()) {
            node.watermark = Some(since);
            self.request_page(peer, since);
        }
    }

    fn request_page(&mut self, peer: PeerId, since: DbVersion) {
        let request = SyncRequest {
            requester: self.site,
            since,
            limits: changeset::PageLimits {
                max_changes: SYNC_PAGE_CHANGES,
                ..changeset::PageLimits::default()
            },
        };
        let id = self.swarm.behaviour_mut().sync.send_request(&peer, request);
        if let Some(node) = self.peers.get_mut(&peer).and_then(|p| p.node_mut()) {
            node.page_requested(id);
        }
    }

    pub(super) fn on_sync_event(
        &mut self,
        event: request_response::Event<SyncRequest, SyncResponse>,
    ) {
        match event {
            request_response::Event::Message { peer, message, .. } => match message {
                request_response::Message::Request {
                    request, channel, ..
                } => self.serve_sync_request(peer, request, channel),
                request_response::Message::Response {
                    request_id,
                    response,
                } => self.on_sync_response(peer, request_id, response),
            },
            request_response::Event::OutboundFailure { peer, error, .. } => {
                tracing::warn!(%peer, %error, "sync request failed");
                self.end_sync_round_failed(peer);
            }
            request_response::Event::InboundFailure { peer, error, .. } => {
                tracing::debug!(%peer, %error, "serving a sync request failed");
            }
            request_response::Event::ResponseSent { .. } => {}
        }
    }

    /// Reads the page a node asked for, off the loop, if it is a node of this deployment and
    /// fewer than [`SYNC_SERVES_IN_FLIGHT`] pages are being read.
    fn serve_sync_request(
        &mut self,
        peer: PeerId,
        request: SyncRequest,
        channel: ResponseChannel<SyncResponse>,
    ) {
        if self.peers.get(&peer).and_then(|p| p.node()).is_none() {
            tracing::debug!(%peer, "sync request before identify; dropped");
            return;
        }
        let Ok(slot) = self.serve_slots.clone().try_acquire_owned() else {
            // The peer's request fails and it asks again next round.
            tracing::debug!(%peer, "busy serving {SYNC_SERVES_IN_FLIGHT} sync requests; dropped one");
            return;
        };
        // What the asker may ask for is bounded by what any receiver accepts, and a page (cut
        // by approximate size) well inside the frame limit.
        let limits = changeset::PageLimits {
            max_changes: request
                .limits
                .max_changes
                .min(changeset::MAX_CHANGES_PER_BATCH),
            max_bytes: request.limits.max_bytes.min(MAX_PAGE_BYTES / 2),
        };
        self.spawn_db(move |store| {
            let _slot = slot;
            let page = store
                .sync_page(request.since, request.requester, limits)
                .map_err(|e| e.to_string());
            Done::PageRead {
                peer,
                channel,
                page,
            }
        });
    }

    pub(super) fn send_page(
        &mut self,
        peer: PeerId,
        channel: ResponseChannel<SyncResponse>,
        page: Result<SyncResponse, String>,
    ) {
        match page {
            Ok(page) => {
                tracing::debug!(%peer, changes = page.changes.len(), more = page.more, "serving sync page");
                if self
                    .swarm
                    .behaviour_mut()
                    .sync
                    .send_response(channel, page)
                    .is_err()
                {
                    tracing::debug!(%peer, "peer went away before its sync page was sent");
                }
            }
            Err(error) => tracing::error!(%peer, %error, "reading changes for a peer failed"),
        }
    }

    /// A page arrived: checked, then merged off the loop with the watermark it earns.
    fn on_sync_response(
        &mut self,
        peer: PeerId,
        request_id: OutboundRequestId,
        response: SyncResponse,
    ) {
        let Some(node) = self.peers.get_mut(&peer).and_then(|p| p.node_mut()) else {
            return;
        };
        if !node.page_arrived(request_id) {
            return;
        }
        if node.site.is_some_and(|s| s != response.source) {
            self.penalise(
                peer,
                "sync response from a site other than the one it identified as",
            );
            return;
        }
        node.site = Some(response.source);
        let checked = changeset::validate(&response.changes).and_then(|()| {
            changeset::validate::page_up_to(&response.changes, response.up_to, response.more)
        });
        if let Err(error) = checked {
            self.penalise(peer, &format!("invalid sync page: {error}"));
            return;
        }
        let site = response.source;
        let count = response.changes.len();
        let (more, up_to) = (response.more, response.up_to);
        let watermark = Watermark {
            peer: peer.to_string(),
            source: site,
            version: up_to,
        };
        self.spawn_db(
            move |store| match store.merge(&response.changes, Some(&watermark)) {
                Ok(outcome) => Done::PageMerged {
                    peer,
                    site,
                    more,
                    up_to,
                    changes: count,
                    impacted: outcome.rows_impacted,
                },
                Err(e) => Done::SyncFailed {
                    peer,
                    error: e.to_string(),
                },
            },
        );
    }

    pub(super) fn on_page_merged(
        &mut self,
        peer: PeerId,
        site: SiteId,
        more: bool,
        up_to: DbVersion,
        changes: usize,
        impacted: i64,
    ) {
        let Some(node) = self.peers.get_mut(&peer).and_then(|p| p.node_mut()) else {
            return;
        };
        let Some(round) = node.page_merged(up_to, changes, more, Instant::now()) else {
            if more {
                self.request_page(peer, up_to);
            }
            return;
        };
        let duration_ms = round.duration.as_millis() as u64;
        if round.changes > 0 {
            tracing::info!(%peer, node = ?node.name, %site, changes = round.changes, impacted, up_to = up_to.0, duration_ms, "sync round");
        } else {
            tracing::debug!(%peer, %site, up_to = up_to.0, duration_ms, "sync round: up to date");
        }
    }

    pub(super) fn end_sync_round_failed(&mut self, peer: PeerId) {
        if let Some(node) = self.peers.get_mut(&peer).and_then(|p| p.node_mut()) {
            node.round_failed(Instant::now());
        }
    }
}
