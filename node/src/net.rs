//! Replication between nodes over libp2p.
//!
//! Tasks and flow:
//! - **Discovery**: mDNS (when enabled) and BOOTSTRAP_PEERS find nodes; bootstrap peers are
//!   redialled with exponential backoff while disconnected. Identify tells every new peer's
//!   deployment (MDNS_SERVICE_NAME, in the identify protocol version) and site id (in the agent
//!   string); peers of another deployment are disconnected and ignored.
//! - **Gossip**: when a local write commits, the store bumps a watch channel; the loop reads the
//!   node's own changes above what it last published and publishes each transaction as one
//!   message on the deployment's gossipsub topic. Received messages are validated, accepted or
//!   rejected (which lowers the sender's score), and merged.
//! - **Anti-entropy**: on identify and every SYNC_INTERVAL_SECS, the node asks each peer for its
//!   changes above the watermark it keeps for that peer's site, page by page; each page is
//!   merged and the watermark advanced in the same transaction. This repairs whatever gossip
//!   missed: restarts, partitions, late joiners.
//! - **Relays**: for each of RELAY_ADDRS the node keeps a reservation (listens on
//!   `<relay>/p2p-circuit`), so others reach it at `<relay>/p2p-circuit/p2p/<its id>`; when the
//!   reservation ends (the relay restarted, the connection dropped, the relay refused) it asks
//!   again with backoff. BOOTSTRAP_PEERS may be such circuit addresses. DCUtR then tries to
//!   replace a relayed connection with a direct one (hole punching). Relays are recognised by
//!   being configured or by offering the relay protocol; they are kept connected but never
//!   synced with.
//! - **Hostile input** (undecodable bytes, wrong schema, oversized batches, absurd versions)
//!   is logged, applies nothing, and gets the peer disconnected and banned for a while.
//!
//! Database work runs on the blocking pool; results come back to the loop as `Done` messages,
//! so the swarm is never stalled by SQLite.
//!
//! Where things are:
//! - [`behaviour`]: the libp2p behaviours and the swarm they are built into.
//! - [`handle`]: what the HTTP side sees: [`NetHandle`] and the status types of /api/peers.
//! - [`event_loop`]: the one task that owns the swarm, and how events reach the rooms below.
//! - [`peers`]: each connected peer's state machine (unidentified, relay, node; a node's sync
//!   round), identify, bans.
//! - [`discovery`]: mDNS, bootstrap peers and redialling them.
//! - [`sync`]: anti-entropy, asking and answering.
//! - [`gossip`]: publishing local transactions and merging received ones.
//! - [`relays`]: finding relays and keeping a reservation on each.
//! - [`protocol`]: the messages on the wire (crates/p2p-protocol, shared with browsers);
//!   its `Backoff` is the one backoff.

mod behaviour;
mod discovery;
mod event_loop;
mod gossip;
mod handle;
mod peers;
mod relays;
mod sync;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use changeset::{DbVersion, SiteId};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, RelayAddr};
use crate::db::Store;
use event_loop::EventLoop;
pub use handle::{ConnectionKind, NetHandle, NetStatus, PeerInfo, RelayInfo, Reservation};
/// The messages on the wire, shared with the browser peer (crates/p2p-protocol).
pub use p2p_protocol as protocol;

/// Changes per sync page: large enough that catching up 100,000 changes takes few round trips,
/// small enough that one page is a few MiB and one SQLite transaction of well under a second.
const SYNC_PAGE_CHANGES: usize = 5_000;
/// How long a peer that sent hostile input is refused.
const BAN_DURATION: Duration = Duration::from_secs(60);
/// Bounded queues: commands from the HTTP side, and results of database work.
const COMMAND_QUEUE: usize = 64;
const DONE_QUEUE: usize = 256;
/// Gossip merges in flight at once. Past this, a received message is dropped (and counted in
/// the logs): anti-entropy brings its changes anyway, so a flood cannot pile up tasks.
const GOSSIP_MERGES_IN_FLIGHT: usize = 8;
/// Sync pages being read for peers at once: each reads up to 5,000 changes (a few MiB), so
/// this bounds the memory peers can make a node spend on them; more than the two cores can
/// use anyway.
const SYNC_SERVES_IN_FLIGHT: usize = 8;
/// Incoming connections still in their handshake: a flood of half-open dials cannot pile up.
const MAX_PENDING_INCOMING: u32 = 64;
/// How often the loop looks at what is due: redials, reservations, sync rounds, bans to lift.
const TICK: Duration = Duration::from_millis(500);

/// Builds the swarm and starts the network loop; returns its handle and task.
pub async fn start(
    config: &Config,
    store: Arc<Store>,
    local_writes: watch::Receiver<u64>,
    shutdown: CancellationToken,
) -> anyhow::Result<(NetHandle, tokio::task::JoinHandle<()>)> {
    let key = p2p_identity::load_or_create(&config.data_dir)?;
    let site = SiteId(store.site_id());
    let swarm = behaviour::build_swarm(config, key, site).await?;
    let now = Instant::now();
    let relays = relays::Relays::configured(config, now);
    let (commands_tx, commands) = mpsc::channel(COMMAND_QUEUE);
    let (done_tx, done) = mpsc::channel(DONE_QUEUE);
    let mut tasks = JoinSet::new();
    for relay in &config.relay_addrs {
        if let RelayAddr::Http(url) = relay {
            tasks.spawn(relays::resolve_relay(
                url.clone(),
                commands_tx.clone(),
                shutdown.clone(),
            ));
        }
    }
    let last_published = DbVersion(*local_writes.borrow());
    let event_loop = EventLoop {
        swarm,
        store,
        site,
        service: config.mdns_service_name.clone(),
        topic: behaviour::changes_topic(&config.mdns_service_name),
        commands,
        local_writes,
        last_published,
        publishing: false,
        done_tx,
        done,
        peers: HashMap::new(),
        banned: HashMap::new(),
        redials: discovery::bootstrap_redials(&config.bootstrap_peers, now),
        relays,
        sync_interval: Duration::from_secs(config.sync_interval_secs),
        gossip_enabled: config.gossip,
        gossip_slots: Arc::new(tokio::sync::Semaphore::new(GOSSIP_MERGES_IN_FLIGHT)),
        serve_slots: Arc::new(tokio::sync::Semaphore::new(SYNC_SERVES_IN_FLIGHT)),
        tasks,
        shutdown,
    };
    let task = tokio::spawn(event_loop.run());
    Ok((NetHandle::new(commands_tx), task))
}
