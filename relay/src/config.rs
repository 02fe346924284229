//! The relay's configuration: every setting is an env var with a CLI flag of the same meaning
//! (`HTTP_PORT` / `--http-port`). Bad values stop the relay at start with a message naming the
//! setting.
//!
//! The limits default to what an app's sync traffic needs, not to libp2p's stock values (2 min
//! and 128 KiB per circuit, 16 circuits): those are sized for hole-punching coordination only
//! and cut a sync session short with "Max circuit bytes reached". Each default says why.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use clap::Parser;
use libp2p::Multiaddr;
use libp2p::multiaddr::Protocol;

#[derive(Debug, Clone, Parser)]
#[command(
    name = "todo-relay",
    version,
    about = "Circuit relay v2, rendezvous and AutoNAT for todo-hybrid nodes and browser peers"
)]
pub struct Config {
    /// Address the HTTP server (/health, /addrs) listens on.
    #[arg(long, env = "HOST", default_value_t = IpAddr::V4(Ipv4Addr::UNSPECIFIED))]
    pub host: IpAddr,

    /// TCP port of the HTTP server (/health, /addrs).
    #[arg(long, env = "HTTP_PORT", default_value_t = 4000)]
    pub http_port: u16,

    /// Folder for the relay's identity key (created if missing).
    #[arg(long, env = "DATA_DIR", default_value = "./relay-data")]
    pub data_dir: PathBuf,

    /// Log filter, in tracing's EnvFilter syntax (e.g. "info", "todo_relay=debug").
    #[arg(long, env = "LOG", default_value = "info")]
    pub log: String,

    /// libp2p listen addresses (comma-separated): TCP, QUIC and WebSocket (`/ws`, for browsers).
    #[arg(
        long,
        env = "P2P_LISTEN",
        value_delimiter = ',',
        value_parser = parse_listen_addr,
        default_value = "/ip4/0.0.0.0/tcp/4001,/ip4/0.0.0.0/udp/4001/quic-v1,/ip4/0.0.0.0/tcp/4002/ws"
    )]
    pub p2p_listen: Vec<Multiaddr>,

    /// Addresses at which others reach this relay (comma-separated multiaddrs, e.g. its public
    /// IP or `/dns4/relay.example.com/tcp/443/wss` behind a TLS proxy). They are announced in
    /// reservations, identify and /addrs.
    #[arg(long, env = "EXTERNAL_ADDRS", value_delimiter = ',', value_parser = parse_external_addr)]
    pub external_addrs: Vec<Multiaddr>,

    /// Also announce the concrete listen addresses (every interface of a 0.0.0.0 listener) as
    /// external. libp2p only advertises the relay (HOP) protocol with at least one external
    /// address, so this is on by default; turn it off when EXTERNAL_ADDRS lists them all.
    #[arg(long, env = "ADVERTISE_LISTEN_ADDRS", default_value_t = true, action = clap::ArgAction::Set)]
    pub advertise_listen_addrs: bool,

    /// Reservations held at once (each is a peer reachable through the relay: every node and
    /// browser tab online). 1,024 covers a deployment's users; one costs its connection, about
    /// 56 KiB (benches/load.rs: 1,000 reservations add 56 MiB), so the worst case is ~60 MiB.
    #[arg(long, env = "MAX_RESERVATIONS", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_reservations: u32,

    /// Reservations one peer may hold at once (one per connection to the relay). A client
    /// needs one; 4 leaves room for a reconnect that reserves before the old connection closes.
    #[arg(long, env = "MAX_RESERVATIONS_PER_PEER", default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_reservations_per_peer: u32,

    /// Seconds a reservation lasts; clients renew it before it ends. An hour (libp2p's value)
    /// keeps renewals rare and lets a vanished peer's slot free itself.
    #[arg(long, env = "RESERVATION_DURATION_SECS", default_value_t = 3600, value_parser = clap::value_parser!(u32).range(60..))]
    pub reservation_duration_secs: u32,

    /// Relayed connections open at once. 512: every online peer talking to a few others
    /// through the relay, with room to spare; a circuit moving data costs about 190 KiB
    /// (benches/load.rs: 500 busy circuits add 92 MiB), so the worst case is ~100 MiB.
    #[arg(long, env = "MAX_CIRCUITS", default_value_t = 512, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_circuits: u32,

    /// Circuits one peer may take part in at once, as source or destination. 32: a browser
    /// syncs with a handful of peers, a node with the browsers and nodes that cannot reach it
    /// directly; one peer cannot take a large share of MAX_CIRCUITS.
    #[arg(long, env = "MAX_CIRCUITS_PER_PEER", default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_circuits_per_peer: u32,

    /// Seconds after which a circuit is closed. An hour: a sync session is never cut in the
    /// middle of a burst; peers that still need the relay reconnect (nodes redial at once),
    /// and nodes that can see each other have moved to a direct connection (DCUtR) long before.
    #[arg(long, env = "MAX_CIRCUIT_DURATION_SECS", default_value_t = 3600, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_circuit_duration_secs: u32,

    /// Bytes a circuit may carry (both directions) before it is closed; 0 = no limit. 64 MiB:
    /// more than one largest sync message (32 MiB) with room for gossip; a longer catch-up
    /// reconnects and resumes from its watermark.
    #[arg(long, env = "MAX_CIRCUIT_BYTES", default_value_t = 64 * 1024 * 1024)]
    pub max_circuit_bytes: u64,

    /// Reservation requests per peer: `<burst>/<seconds>s` (a bucket of <burst>, one more
    /// every <seconds>) or `off`. A client reserves once per connection and renews hourly; 10
    /// covers reconnects after a relay restart, then one a minute stops a peer churning slots.
    #[arg(long, env = "RESERVATION_RATE_PER_PEER", default_value = "10/60s", value_parser = parse_rate)]
    pub reservation_rate_per_peer: RateLimit,

    /// Reservation requests per source IP (same format). Many browsers can share one NAT (an
    /// office): 100 at once, e.g. after a relay restart, then one every 6 s.
    #[arg(long, env = "RESERVATION_RATE_PER_IP", default_value = "100/6s", value_parser = parse_rate)]
    pub reservation_rate_per_ip: RateLimit,

    /// Circuits opened per source peer (same format). A peer coming online connects to its
    /// peers at once (30), then redials after drops (one every 10 s).
    #[arg(long, env = "CIRCUIT_RATE_PER_PEER", default_value = "30/10s", value_parser = parse_rate)]
    pub circuit_rate_per_peer: RateLimit,

    /// Circuits opened per source IP (same format): the peers behind one NAT together.
    #[arg(long, env = "CIRCUIT_RATE_PER_IP", default_value = "200/2s", value_parser = parse_rate)]
    pub circuit_rate_per_ip: RateLimit,

    /// Connections held at once (every reservation and circuit end is one). Past it new
    /// connections are refused, which bounds the relay's memory.
    #[arg(long, env = "MAX_CONNECTIONS", default_value_t = 4096, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: u32,

    /// Connections one peer may hold at once: one per reservation plus a few during reconnects
    /// and AutoNAT dial-backs.
    #[arg(long, env = "MAX_CONNECTIONS_PER_PEER", default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections_per_peer: u32,

    /// Rendezvous registrations stored at once (browser peers register their ids under the
    /// app's namespace so others find them).
    #[arg(long, env = "RENDEZVOUS_MAX_REGISTRATIONS", default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub rendezvous_max_registrations: u32,
}

/// A token bucket: `burst` requests at once, then one more every `every`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateLimit {
    Off,
    Limit { burst: NonZeroU32, every: Duration },
}

impl fmt::Display for RateLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Off => f.write_str("off"),
            Self::Limit { burst, every } => write!(f, "{burst}/{}s", every.as_secs()),
        }
    }
}

impl FromStr for RateLimit {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_rate(s)
    }
}

fn parse_rate(s: &str) -> Result<RateLimit, String> {
    let s = s.trim();
    if s.eq_ignore_ascii_case("off") {
        return Ok(RateLimit::Off);
    }
    let bad = || format!("{s:?} is not `<burst>/<seconds>s` (e.g. `10/60s`) or `off`");
    let (burst, every) = s.split_once('/').ok_or_else(bad)?;
    let burst: NonZeroU32 = burst.trim().parse().map_err(|_| bad())?;
    let secs: u64 = every
        .trim()
        .strip_suffix('s')
        .ok_or_else(bad)?
        .parse()
        .map_err(|_| bad())?;
    if secs == 0 {
        return Err(bad());
    }
    Ok(RateLimit::Limit {
        burst,
        every: Duration::from_secs(secs),
    })
}

fn parse_listen_addr(s: &str) -> Result<Multiaddr, String> {
    let addr: Multiaddr = s
        .trim()
        .parse()
        .map_err(|e| format!("{s:?} is not a multiaddr: {e}"))?;
    if addr.iter().any(|p| matches!(p, Protocol::P2pCircuit)) {
        return Err(format!(
            "{s:?}: a relay does not listen through another relay"
        ));
    }
    if addr
        .iter()
        .any(|p| matches!(p, Protocol::WebRTCDirect | Protocol::Certhash(_)))
    {
        return Err(format!(
            "{s:?}: WebRTC-direct is not supported (rust-libp2p's is broken for payloads over 16 KiB); browsers use /ws"
        ));
    }
    Ok(addr)
}

fn parse_external_addr(s: &str) -> Result<Multiaddr, String> {
    let addr: Multiaddr = s
        .trim()
        .parse()
        .map_err(|e| format!("{s:?} is not a multiaddr: {e}"))?;
    if addr.iter().any(|p| matches!(p, Protocol::P2pCircuit)) {
        return Err(format!("{s:?} must be a direct address, not a circuit"));
    }
    Ok(addr)
}

impl Config {
    /// A configuration for tests and embedders: defaults, data in `data_dir`, everything on
    /// loopback with ports picked by the system.
    pub fn with_data_dir(data_dir: impl Into<PathBuf>) -> Self {
        let mut config = Self::try_parse_from(["todo-relay"]).expect("the defaults parse");
        config.host = IpAddr::V4(Ipv4Addr::LOCALHOST);
        config.http_port = 0;
        config.data_dir = data_dir.into();
        config.p2p_listen = ["/ip4/127.0.0.1/tcp/0", "/ip4/127.0.0.1/tcp/0/ws"]
            .iter()
            .map(|a| a.parse().expect("a valid literal multiaddr"))
            .collect();
        config
    }

    pub fn http_addr(&self) -> SocketAddr {
        SocketAddr::new(self.host, self.http_port)
    }

    /// The libp2p relay configuration these settings describe.
    pub fn relay_config(&self) -> libp2p::relay::Config {
        let mut config = libp2p::relay::Config {
            max_reservations: self.max_reservations as usize,
            // libp2p-relay 0.22 refuses a new reservation only when the peer already holds
            // *more than* this many (`count > max`), and likewise for circuits: pass one less,
            // so that the setting is the number a peer may really hold (tested in tests/).
            max_reservations_per_peer: self.max_reservations_per_peer as usize - 1,
            reservation_duration: Duration::from_secs(self.reservation_duration_secs.into()),
            reservation_rate_limiters: Vec::new(),
            max_circuits: self.max_circuits as usize,
            max_circuits_per_peer: self.max_circuits_per_peer as usize - 1,
            max_circuit_duration: Duration::from_secs(self.max_circuit_duration_secs.into()),
            max_circuit_bytes: self.max_circuit_bytes,
            circuit_src_rate_limiters: Vec::new(),
        };
        if let RateLimit::Limit { burst, every } = self.reservation_rate_per_peer {
            config = config.reservation_rate_per_peer(burst, every);
        }
        if let RateLimit::Limit { burst, every } = self.reservation_rate_per_ip {
            config = config.reservation_rate_per_ip(burst, every);
        }
        if let RateLimit::Limit { burst, every } = self.circuit_rate_per_peer {
            config = config.circuit_src_per_peer(burst, every);
        }
        if let RateLimit::Limit { burst, every } = self.circuit_rate_per_ip {
            config = config.circuit_src_per_ip(burst, every);
        }
        config
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_listen_on_tcp_quic_and_ws_with_http_on_4000() {
        let c = Config::try_parse_from(["todo-relay"]).expect("defaults parse");
        assert_eq!(c.http_addr(), "0.0.0.0:4000".parse().expect("addr"));
        let listen: Vec<String> = c.p2p_listen.iter().map(ToString::to_string).collect();
        assert_eq!(
            listen,
            [
                "/ip4/0.0.0.0/tcp/4001",
                "/ip4/0.0.0.0/udp/4001/quic-v1",
                "/ip4/0.0.0.0/tcp/4002/ws"
            ]
        );
        assert_eq!(c.data_dir, PathBuf::from("./relay-data"));
        assert!(c.advertise_listen_addrs);
    }

    #[test]
    fn defaults_are_raised_above_libp2ps_for_sync_traffic() {
        let c = Config::try_parse_from(["todo-relay"]).expect("defaults parse");
        let stock = libp2p::relay::Config::default();
        let ours = c.relay_config();
        assert!(ours.max_circuit_bytes >= 32 * 1024 * 1024 && stock.max_circuit_bytes < 1 << 20);
        assert!(ours.max_circuit_duration > stock.max_circuit_duration);
        assert!(ours.max_circuits > stock.max_circuits);
        assert_eq!(ours.reservation_rate_limiters.len(), 2);
        assert_eq!(ours.circuit_src_rate_limiters.len(), 2);
    }

    #[test]
    fn rates_parse_and_print() {
        assert_eq!(parse_rate("off"), Ok(RateLimit::Off));
        let r = parse_rate("10/60s").expect("rate");
        assert_eq!(
            r,
            RateLimit::Limit {
                burst: NonZeroU32::new(10).expect("nonzero"),
                every: Duration::from_secs(60)
            }
        );
        assert_eq!(r.to_string(), "10/60s");
        for bad in ["10", "0/60s", "10/60", "10/0s", "x/1s", "10/-1s", ""] {
            assert!(parse_rate(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn off_rates_install_no_limiter() {
        let mut c = Config::try_parse_from(["todo-relay"]).expect("defaults parse");
        c.reservation_rate_per_ip = RateLimit::Off;
        c.circuit_rate_per_peer = RateLimit::Off;
        let r = c.relay_config();
        assert_eq!(r.reservation_rate_limiters.len(), 1);
        assert_eq!(r.circuit_src_rate_limiters.len(), 1);
    }

    #[test]
    fn bad_values_name_the_setting() {
        let cases: &[(&[&str], &str)] = &[
            (&["--http-port", "eighty"], "HTTP_PORT"),
            (&["--max-reservations", "0"], "MAX_RESERVATIONS"),
            (
                &["--max-reservations-per-peer", "0"],
                "MAX_RESERVATIONS_PER_PEER",
            ),
            (&["--max-circuits", "many"], "MAX_CIRCUITS"),
            (&["--max-circuit-bytes", "64MiB"], "MAX_CIRCUIT_BYTES"),
            (
                &["--max-circuit-duration-secs", "0"],
                "MAX_CIRCUIT_DURATION_SECS",
            ),
            (
                &["--reservation-duration-secs", "5"],
                "RESERVATION_DURATION_SECS",
            ),
            (
                &["--reservation-rate-per-ip", "lots"],
                "RESERVATION_RATE_PER_IP",
            ),
            (
                &["--circuit-rate-per-peer", "1/0s"],
                "CIRCUIT_RATE_PER_PEER",
            ),
            (&["--p2p-listen", "tcp:4001"], "P2P_LISTEN"),
            (
                &["--p2p-listen", "/ip4/0.0.0.0/udp/4003/webrtc-direct"],
                "P2P_LISTEN",
            ),
            (&["--external-addrs", "relay.example.com"], "EXTERNAL_ADDRS"),
            (
                &["--advertise-listen-addrs", "maybe"],
                "ADVERTISE_LISTEN_ADDRS",
            ),
        ];
        for (args, setting) in cases {
            let err = Config::try_parse_from(std::iter::once(&"todo-relay").chain(args.iter()))
                .expect_err("a bad value");
            assert!(err.to_string().contains(setting), "{args:?}: {err}");
        }
    }

    #[test]
    fn lists_are_comma_separated() {
        let c = Config::try_parse_from([
            "todo-relay",
            "--external-addrs",
            "/ip4/203.0.113.7/tcp/4001,/dns4/relay.example.com/tcp/443/wss",
        ])
        .expect("parse");
        assert_eq!(c.external_addrs.len(), 2);
    }
}
