//! The node's configuration: every setting is an env var with a CLI flag of the same meaning
//! (`PORT` / `--port`). Defaults run a node on localhost with its data in ./data.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use clap::Parser;
use libp2p::Multiaddr;
use libp2p::multiaddr::Protocol;

#[derive(Debug, Clone, Parser)]
#[command(
    name = "todo-node",
    version,
    about = "The todo list server: SSR pages from a cr-sqlite replica"
)]
pub struct Config {
    /// TCP port for HTTP.
    #[arg(long, env = "PORT", default_value_t = 3000)]
    pub port: u16,

    /// Address to listen on (0.0.0.0 to accept connections from other hosts).
    #[arg(long, env = "HOST", default_value_t = IpAddr::V4(Ipv4Addr::LOCALHOST))]
    pub host: IpAddr,

    /// Folder for the database (created if missing).
    #[arg(long, env = "DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,

    /// Name shown on pages and in /health, to tell nodes apart.
    #[arg(long, env = "NODE_NAME", default_value = "node", value_parser = parse_node_name)]
    pub node_name: String,

    /// Log filter, in tracing's EnvFilter syntax (e.g. "info", "todo_node=debug").
    #[arg(long, env = "LOG", default_value = "info")]
    pub log: String,

    /// Read templates from this folder on every request instead of the embedded copies
    /// (development: edit a template, reload the page).
    #[arg(long, env = "TEMPLATES_DIR")]
    pub templates_dir: Option<PathBuf>,

    /// Find other nodes on the local network by mDNS.
    #[arg(long, env = "ENABLE_MDNS", default_value_t = false, action = clap::ArgAction::Set)]
    pub enable_mdns: bool,

    /// The deployment's name: only nodes with the same name replicate with each other (it
    /// names the gossip topic and the sync protocol, and is checked when peers meet).
    #[arg(long, env = "MDNS_SERVICE_NAME", default_value = "todo-hybrid", value_parser = parse_service_name)]
    pub mdns_service_name: String,

    /// Nodes to connect to at start and keep connected (comma-separated multiaddrs, each
    /// ending in /p2p/<peer id>), for networks without multicast.
    #[arg(long, env = "BOOTSTRAP_PEERS", value_delimiter = ',', value_parser = parse_peer_addr)]
    pub bootstrap_peers: Vec<Multiaddr>,

    /// Relays to keep a reservation on (comma-separated multiaddrs, each ending in
    /// /p2p/<relay id>), so that nodes which cannot reach this one directly connect through
    /// them at `<relay>/p2p-circuit/p2p/<this node's id>`; such connections are upgraded to
    /// direct ones by hole punching (DCUtR) where the network allows. An entry may instead be
    /// the URL of a relay's HTTP server (http://relay:4000): the node reads the relay's id and
    /// addresses from its /addrs, for deployments that cannot know the id in advance.
    #[arg(long, env = "RELAY_ADDRS", value_delimiter = ',', value_parser = parse_relay_addr)]
    pub relay_addrs: Vec<RelayAddr>,

    /// libp2p listen addresses (comma-separated multiaddrs; port 0 picks a free one). A
    /// `/tcp/<port>/ws` address lets browsers sync with this node over libp2p directly.
    #[arg(
        long,
        env = "P2P_LISTEN",
        value_delimiter = ',',
        default_value = "/ip4/0.0.0.0/tcp/0,/ip4/0.0.0.0/udp/0/quic-v1"
    )]
    pub p2p_listen: Vec<Multiaddr>,

    /// Where browsers reach this node (e.g. http://192.168.1.5:3001). Shared with the other
    /// nodes, so a page whose node is down can fail over to them. Default: the HTTP listen
    /// address, unless that is 0.0.0.0 / :: (then set it).
    #[arg(long, env = "PUBLIC_URL", value_parser = parse_public_url)]
    pub public_url: Option<String>,

    /// The deployment's edge workers (comma-separated origins, like
    /// https://todo.example.workers.dev): listed in /api/peers as `edges`, so a page whose
    /// nodes are all down can fail over to an edge.
    #[arg(long, env = "EDGE_URLS", value_delimiter = ',', value_parser = parse_public_url)]
    pub edge_urls: Vec<String>,

    /// Seconds between anti-entropy rounds with each connected node (repairs what gossip missed).
    #[arg(long, env = "SYNC_INTERVAL_SECS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub sync_interval_secs: u64,

    /// Publish each local write to the other nodes at once (gossip). With false, writes reach
    /// them by anti-entropy alone, within SYNC_INTERVAL_SECS: for networks where the extra
    /// traffic is unwanted, and for the test that proves anti-entropy alone converges.
    #[arg(long, env = "GOSSIP", default_value_t = true, action = clap::ArgAction::Set)]
    pub gossip: bool,

    /// libp2p connections at once (nodes, relays, and later browsers): each costs a few hundred
    /// KiB of buffers, so 256 keep a node's worst case near 100 MiB; a deployment has a handful
    /// of nodes.
    #[arg(long, env = "MAX_CONNECTIONS", default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: u32,

    /// libp2p connections one peer may hold: a direct one, a relayed one, and room for a
    /// reconnect or a hole-punch upgrade before the old one closes.
    #[arg(long, env = "MAX_CONNECTIONS_PER_PEER", default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections_per_peer: u32,

    /// New libp2p connections are refused while this process uses more memory than this
    /// (MiB); existing ones carry on. A node uses tens of MiB, so this only trips under attack.
    #[arg(long, env = "MAX_MEMORY_MIB", default_value_t = 1024, value_parser = clap::value_parser!(u64).range(64..))]
    pub max_memory_mib: u64,
}

impl Config {
    /// A configuration for tests and embedders: defaults, with the data in `data_dir`.
    pub fn with_data_dir(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            port: 0,
            host: IpAddr::V4(Ipv4Addr::LOCALHOST),
            data_dir: data_dir.into(),
            node_name: "node".to_owned(),
            log: "info".to_owned(),
            templates_dir: None,
            enable_mdns: false,
            mdns_service_name: "todo-hybrid".to_owned(),
            bootstrap_peers: Vec::new(),
            relay_addrs: Vec::new(),
            p2p_listen: vec![
                "/ip4/127.0.0.1/tcp/0"
                    .parse()
                    .expect("a valid literal multiaddr"),
            ],
            sync_interval_secs: 10,
            public_url: None,
            edge_urls: Vec::new(),
            gossip: true,
            max_connections: 256,
            max_connections_per_peer: 4,
            max_memory_mib: 1024,
        }
    }

    pub fn listen_addr(&self) -> SocketAddr {
        SocketAddr::new(self.host, self.port)
    }
}

fn parse_public_url(s: &str) -> Result<String, String> {
    let url = s.trim().trim_end_matches('/');
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .ok_or_else(|| format!("{s:?} must start with http:// or https://"))?;
    if rest.is_empty() || rest.contains(['/', ' ', '?', '#']) {
        return Err(format!(
            "{s:?} must be an origin only, like http://192.168.1.5:3001"
        ));
    }
    Ok(url.to_owned())
}

fn parse_node_name(s: &str) -> Result<String, String> {
    let name = s.trim();
    if name.is_empty() || name.chars().count() > 64 {
        return Err("must be 1 to 64 characters".to_owned());
    }
    if name.chars().any(char::is_control) {
        return Err("must not contain control characters".to_owned());
    }
    Ok(name.to_owned())
}

fn parse_service_name(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.len() <= 63
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if ok {
        Ok(s.to_owned())
    } else {
        Err("must be 1 to 63 ASCII letters, digits, '-' or '_'".to_owned())
    }
}

/// A multiaddr that names its peer (ends in /p2p/<peer id>), so the connection is authenticated.
fn parse_peer_addr(s: &str) -> Result<Multiaddr, String> {
    let addr: Multiaddr = s
        .trim()
        .parse()
        .map_err(|e| format!("{s:?} is not a multiaddr: {e}"))?;
    match addr.iter().last() {
        Some(Protocol::P2p(_)) => Ok(addr),
        _ => Err(format!("{s:?} must end in /p2p/<peer id>")),
    }
}

/// An entry of RELAY_ADDRS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RelayAddr {
    /// The relay's libp2p address, ending in /p2p/<relay id>.
    Peer(Multiaddr),
    /// The origin of the relay's HTTP server, whose /addrs gives its id and addresses.
    Http(String),
}

impl std::str::FromStr for RelayAddr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        parse_relay_addr(s)
    }
}

fn parse_relay_addr(s: &str) -> Result<RelayAddr, String> {
    if s.trim().starts_with("http://") || s.trim().starts_with("https://") {
        return parse_public_url(s).map(RelayAddr::Http);
    }
    parse_relay_multiaddr(s).map(RelayAddr::Peer)
}

/// A relay's own address: names the relay (/p2p/<id>) and is not itself a circuit.
fn parse_relay_multiaddr(s: &str) -> Result<Multiaddr, String> {
    let addr = parse_peer_addr(s)?;
    if addr.iter().any(|p| matches!(p, Protocol::P2pCircuit)) {
        return Err(format!(
            "{s:?} must be the relay's own address, not a /p2p-circuit address through it"
        ));
    }
    Ok(addr)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_run_on_localhost_3000_with_data_in_dot_data() {
        let c = Config::try_parse_from(["todo-node"]).expect("defaults parse");
        assert_eq!(c.listen_addr(), "127.0.0.1:3000".parse().expect("addr"));
        assert_eq!(c.data_dir, PathBuf::from("./data"));
    }

    #[test]
    fn bad_values_name_the_setting() {
        let err = Config::try_parse_from(["todo-node", "--port", "eighty"]).expect_err("bad port");
        assert!(err.to_string().contains("PORT"), "{err}");
        let err = Config::try_parse_from(["todo-node", "--node-name", " "]).expect_err("blank");
        assert!(err.to_string().contains("NODE_NAME"), "{err}");
        let err =
            Config::try_parse_from(["todo-node", "--enable-mdns", "maybe"]).expect_err("bool");
        assert!(err.to_string().contains("ENABLE_MDNS"), "{err}");
        let err = Config::try_parse_from(["todo-node", "--bootstrap-peers", "/ip4/10.0.0.1/tcp/1"])
            .expect_err("no peer id");
        assert!(err.to_string().contains("BOOTSTRAP_PEERS"), "{err}");
        assert!(err.to_string().contains("/p2p/"), "{err}");
        let err = Config::try_parse_from(["todo-node", "--relay-addrs", "/ip4/10.0.0.1/tcp/4001"])
            .expect_err("no relay id");
        assert!(err.to_string().contains("RELAY_ADDRS"), "{err}");
        let err = Config::try_parse_from([
            "todo-node",
            "--relay-addrs",
            "/ip4/10.0.0.1/tcp/4001/p2p/12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN/p2p-circuit/p2p/12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN",
        ])
        .expect_err("a circuit is not a relay");
        assert!(err.to_string().contains("RELAY_ADDRS"), "{err}");
    }

    #[test]
    fn bootstrap_peers_may_be_reached_through_a_relay() {
        let c = Config::try_parse_from([
            "todo-node",
            "--relay-addrs",
            "/ip4/10.0.0.1/tcp/4001/p2p/12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN",
            "--bootstrap-peers",
            "/ip4/10.0.0.1/tcp/4001/p2p/12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN/p2p-circuit/p2p/12D3KooWRBhwfeP2Y4TCx1SM6s9rUoHhR5STiGwxBhgFRcw3UERE",
        ])
        .expect("parse");
        assert_eq!(c.relay_addrs.len(), 1);
        assert_eq!(c.bootstrap_peers.len(), 1);
    }

    #[test]
    fn a_relay_may_be_named_by_the_url_of_its_http_server() {
        let c = Config::try_parse_from(["todo-node", "--relay-addrs", "http://relay:4000/"])
            .expect("parse");
        assert_eq!(c.relay_addrs, [RelayAddr::Http("http://relay:4000".into())]);
        let err = Config::try_parse_from(["todo-node", "--relay-addrs", "http://relay:4000/addrs"])
            .expect_err("a path");
        assert!(err.to_string().contains("RELAY_ADDRS"), "{err}");
    }

    #[test]
    fn peer_lists_are_comma_separated() {
        let c = Config::try_parse_from([
            "todo-node",
            "--bootstrap-peers",
            "/ip4/10.0.0.1/tcp/4001/p2p/12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN,/ip4/10.0.0.2/tcp/4001/p2p/12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN",
        ])
        .expect("parse");
        assert_eq!(c.bootstrap_peers.len(), 2);
    }
}
