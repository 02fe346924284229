//! The real `todo-relay` binary on loopback, with in-process libp2p peers as its clients:
//! identity across restarts, /health and /addrs, reservations and circuits (over TCP and
//! WebSocket), every limit that can be tuned refusing the peer over it while others carry on,
//! rendezvous, and configuration errors.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use common::{RelayProcess, TestPeer, eventually, get_json, http};
use libp2p::identity::Keypair;
use libp2p::multiaddr::Protocol;

const WAIT: Duration = Duration::from_secs(20);

/// Polls /health until `key` equals `want`.
async fn health_shows(relay: &RelayProcess, key: &str, want: u64) {
    eventually(&format!("/health shows {key} = {want}"), WAIT, || async {
        let h = relay.health().await;
        (h[key].as_u64() == Some(want)).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_the_peer_id_and_clients_reserve_and_connect_again() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut relay = RelayProcess::start(dir.path(), &[]).await;
    let id = relay.peer_id;

    // /addrs: full multiaddrs naming the relay, the WebSocket one among them; CORS on both.
    let page_origin = "http://127.0.0.1:3001";
    for path in ["/health", "/addrs"] {
        let r = http()
            .get(relay.url(path))
            .header("origin", page_origin)
            .send()
            .await
            .expect("get");
        assert_eq!(r.status(), 200, "{path}");
        assert_eq!(
            r.headers()
                .get("access-control-allow-origin")
                .map(|v| v.as_bytes()),
            Some(&b"*"[..]),
            "{path} is readable from other origins"
        );
        let preflight = http()
            .request(reqwest::Method::OPTIONS, relay.url(path))
            .header("origin", page_origin)
            .header("access-control-request-method", "GET")
            .send()
            .await
            .expect("preflight");
        assert!(preflight.status().is_success(), "{path}: preflight");
        let allowed = preflight.headers().get("access-control-allow-methods");
        assert!(
            allowed.is_some_and(|m| m.to_str().is_ok_and(|m| m.contains("GET"))),
            "{path}: preflight allows GET: {allowed:?}"
        );
    }
    let addrs = get_json(&relay.url("/addrs")).await.expect("/addrs");
    assert_eq!(addrs["peer_id"], id.to_string());
    let list: Vec<&str> = addrs["addrs"]
        .as_array()
        .expect("addrs")
        .iter()
        .filter_map(|a| a.as_str())
        .collect();
    assert!(
        list.contains(&relay.tcp_addr().to_string().as_str()),
        "{list:?}"
    );
    assert!(
        list.iter().all(|a| a.ends_with(&format!("/p2p/{id}"))),
        "{list:?}"
    );
    assert_eq!(
        addrs["ws"],
        serde_json::json!([relay.ws_addr().to_string()])
    );
    assert_eq!(relay.health().await["hop_advertised"], true);

    // A reserves over TCP; B reaches A through the relay over WebSocket and echoes bytes.
    let a = TestPeer::new().await;
    let b = TestPeer::new().await;
    a.reserve(&relay.tcp_addr(), WAIT)
        .await
        .expect("A reserves");
    health_shows(&relay, "reservations", 1).await;
    let via_ws = relay
        .ws_addr()
        .with(Protocol::P2pCircuit)
        .with(Protocol::P2p(a.id));
    b.connect(via_ws, a.id, WAIT).await.expect("B reaches A");
    assert_eq!(
        b.state().connections[&a.id],
        (1, 1),
        "one relayed connection"
    );
    let data: Vec<u8> = (0..64 * 1024).map(|i| (i % 251) as u8).collect();
    assert_eq!(b.echo(a.id, data.clone()).await.expect("echo"), data);
    health_shows(&relay, "circuits", 1).await;
    let logs = relay.logs();
    assert!(logs.contains("reservation accepted"), "{logs}");
    assert!(logs.contains("circuit opened"), "{logs}");

    // Restart: same identity, same addresses; the old reservation and circuit are gone.
    relay.restart().await;
    assert_eq!(relay.peer_id, id, "the peer id survives a restart");
    let addrs = get_json(&relay.url("/addrs")).await.expect("/addrs");
    assert_eq!(addrs["peer_id"], id.to_string());
    let key_file = relay.data_dir.join("p2p-identity.key");
    let mode = std::fs::metadata(&key_file)
        .expect("key file")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "the key is readable by its owner only");
    eventually("A's relay listener closed with the relay", WAIT, || async {
        (!a.state().listeners_closed.is_empty()).then_some(())
    })
    .await;
    eventually("B lost its relayed connection to A", WAIT, || async {
        (!b.state().connections.contains_key(&a.id)).then_some(())
    })
    .await;

    // Clients reserve again on the restarted relay and reach each other as before.
    a.reserve(&relay.tcp_addr(), WAIT)
        .await
        .expect("A reserves again");
    health_shows(&relay, "reservations", 1).await;
    b.connect(relay.circuit_to(a.id), a.id, WAIT)
        .await
        .expect("B reaches A again");
    assert_eq!(b.echo(a.id, data.clone()).await.expect("echo"), data);
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_over_its_reservation_limit_is_refused_while_others_reserve() {
    let dir = tempfile::tempdir().expect("tempdir");
    let relay = RelayProcess::start(dir.path(), &[("MAX_RESERVATIONS_PER_PEER", "2")]).await;
    // Three connections of one peer id (one swarm each), each asking for a reservation.
    let key = Keypair::generate_ed25519();
    let greedy = [
        TestPeer::with_key(key.clone()).await,
        TestPeer::with_key(key.clone()).await,
        TestPeer::with_key(key.clone()).await,
    ];
    greedy[0]
        .reserve(&relay.tcp_addr(), WAIT)
        .await
        .expect("first reservation");
    greedy[1]
        .reserve(&relay.tcp_addr(), WAIT)
        .await
        .expect("second reservation");
    let refused = greedy[2].reserve(&relay.tcp_addr(), WAIT).await;
    let error = refused.expect_err("a third reservation of the same peer is refused");
    assert!(error.contains("ResourceLimitExceeded"), "{error}");

    // Another peer still reserves, and is reachable.
    let other = TestPeer::new().await;
    other
        .reserve(&relay.tcp_addr(), WAIT)
        .await
        .expect("another peer reserves");
    health_shows(&relay, "reservations", 3).await;
    let dialer = TestPeer::new().await;
    dialer
        .connect(relay.circuit_to(other.id), other.id, WAIT)
        .await
        .expect("the other peer is reachable");

    // When one of the greedy peer's connections closes, its slot is free again.
    let [first, _second, third] = greedy;
    drop(first);
    health_shows(&relay, "reservations", 2).await;
    third
        .reserve(&relay.tcp_addr(), WAIT)
        .await
        .expect("a freed slot can be taken");
    health_shows(&relay, "reservations", 3).await;
    assert!(relay.logs().contains("reservation denied"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn circuits_over_the_per_peer_and_total_limits_are_refused_while_others_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    let relay = RelayProcess::start(
        dir.path(),
        &[("MAX_CIRCUITS", "3"), ("MAX_CIRCUITS_PER_PEER", "2")],
    )
    .await;
    let targets = [
        TestPeer::new().await,
        TestPeer::new().await,
        TestPeer::new().await,
    ];
    for t in &targets {
        t.reserve(&relay.tcp_addr(), WAIT).await.expect("reserve");
    }
    let [t1, t2, t3] = &targets;

    // One peer opens circuits to t1 and t2; a third one is over its limit of two.
    let hungry = TestPeer::new().await;
    for t in [t1, t2] {
        hungry
            .connect(relay.circuit_to(t.id), t.id, WAIT)
            .await
            .expect("within the per-peer limit");
    }
    let error = hungry
        .connect(relay.circuit_to(t3.id), t3.id, WAIT)
        .await
        .expect_err("a third circuit of the same peer is refused");
    assert!(error.contains("ResourceLimitExceeded"), "{error}");

    // Another peer still gets a circuit to t3: now three are open, the relay's total.
    let polite = TestPeer::new().await;
    polite
        .connect(relay.circuit_to(t3.id), t3.id, WAIT)
        .await
        .expect("another peer's circuit opens");
    health_shows(&relay, "circuits", 3).await;
    let late = TestPeer::new().await;
    let error = late
        .connect(relay.circuit_to(t1.id), t1.id, WAIT)
        .await
        .expect_err("a fourth circuit is over MAX_CIRCUITS");
    assert!(error.contains("ResourceLimitExceeded"), "{error}");

    // The open circuits still carry data.
    let data = vec![7u8; 100_000];
    assert_eq!(hungry.echo(t1.id, data.clone()).await.expect("echo"), data);
    assert_eq!(polite.echo(t3.id, data.clone()).await.expect("echo"), data);
    let logs = relay.logs();
    assert!(logs.contains("circuit denied"), "{logs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_circuit_is_closed_once_it_carried_max_circuit_bytes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let relay = RelayProcess::start(dir.path(), &[("MAX_CIRCUIT_BYTES", "262144")]).await;
    let target = TestPeer::new().await;
    target
        .reserve(&relay.tcp_addr(), WAIT)
        .await
        .expect("reserve");
    let source = TestPeer::new().await;
    source
        .connect(relay.circuit_to(target.id), target.id, WAIT)
        .await
        .expect("circuit");
    let small = vec![1u8; 32 * 1024];
    assert_eq!(
        source.echo(target.id, small.clone()).await.expect("echo"),
        small,
        "well under the limit"
    );
    let big = vec![2u8; 256 * 1024];
    source
        .echo(target.id, big)
        .await
        .expect_err("over the limit the circuit is cut");
    eventually("the relayed connection is closed", WAIT, || async {
        (!source.state().connections.contains_key(&target.id)).then_some(())
    })
    .await;
    health_shows(&relay, "circuits", 0).await;
    let logs = relay.logs();
    assert!(logs.contains("Max circuit bytes reached"), "{logs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reservation_rate_limits_apply_per_peer_and_per_ip() {
    let dir = tempfile::tempdir().expect("tempdir");
    let relay = RelayProcess::start(
        dir.path(),
        &[
            ("RESERVATION_RATE_PER_PEER", "1/3600s"),
            ("RESERVATION_RATE_PER_IP", "3/3600s"),
        ],
    )
    .await;
    // Per peer: one reservation an hour, so a second connection of the same peer is refused
    // (MAX_RESERVATIONS_PER_PEER would allow it).
    let key = Keypair::generate_ed25519();
    let first = TestPeer::with_key(key.clone()).await;
    let again = TestPeer::with_key(key).await;
    first.reserve(&relay.tcp_addr(), WAIT).await.expect("first");
    again
        .reserve(&relay.tcp_addr(), WAIT)
        .await
        .expect_err("the same peer, over its rate");
    // Per IP (all peers here come from 127.0.0.1): three an hour; the refusal above did not
    // use one up, so two more peers get theirs and a fourth is refused.
    let peers = [
        TestPeer::new().await,
        TestPeer::new().await,
        TestPeer::new().await,
    ];
    peers[0]
        .reserve(&relay.tcp_addr(), WAIT)
        .await
        .expect("2nd");
    peers[1]
        .reserve(&relay.tcp_addr(), WAIT)
        .await
        .expect("3rd");
    peers[2]
        .reserve(&relay.tcp_addr(), WAIT)
        .await
        .expect_err("the fourth from one IP is over its rate");
    health_shows(&relay, "reservations", 3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_find_each_other_through_rendezvous() {
    let dir = tempfile::tempdir().expect("tempdir");
    let relay = RelayProcess::start(dir.path(), &[]).await;
    let namespace = "todo-hybrid/test";
    let a = TestPeer::new().await;
    // The reservation gives A an external (circuit) address to register.
    a.reserve(&relay.tcp_addr(), WAIT).await.expect("reserve");
    a.register(namespace, relay.peer_id)
        .await
        .expect("register");
    health_shows(&relay, "registrations", 1).await;

    let b = TestPeer::new().await;
    b.connect(relay.tcp_addr(), relay.peer_id, WAIT)
        .await
        .expect("B connects to the relay");
    let found = b
        .discover(namespace, relay.peer_id)
        .await
        .expect("discover");
    assert_eq!(found, [a.id]);
    assert!(
        b.discover("todo-hybrid/other", relay.peer_id)
            .await
            .expect("discover")
            .is_empty()
    );
    // What B found is enough to reach A.
    b.connect(relay.circuit_to(a.id), a.id, WAIT)
        .await
        .expect("B reaches the peer it discovered");
}

#[test]
fn bad_configuration_stops_the_relay_naming_the_variable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let run = |env: &[(&str, &str)]| {
        let mut command = std::process::Command::new(common::RELAY_BIN);
        command
            .env("DATA_DIR", dir.path())
            .env("HOST", "127.0.0.1")
            .env("HTTP_PORT", "0");
        for (k, v) in env {
            command.env(k, v);
        }
        let out = command.output().expect("run todo-relay");
        assert!(!out.status.success(), "{env:?} should stop the relay");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = run(&[("MAX_CIRCUITS", "lots")]);
    assert!(err.contains("MAX_CIRCUITS"), "{err}");
    let err = run(&[("RESERVATION_RATE_PER_IP", "fast")]);
    assert!(err.contains("RESERVATION_RATE_PER_IP"), "{err}");
    // A port that is taken: the error names P2P_LISTEN.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port();
    let err = run(&[("P2P_LISTEN", &format!("/ip4/127.0.0.1/tcp/{port}"))]);
    assert!(err.contains("P2P_LISTEN"), "{err}");
}
