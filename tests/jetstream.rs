//! The JetStream transport against real nats-server processes on loopback: order and
//! exactly-once reading, server-side deduplication, buffering while the server is away,
//! checkpoints larger than a message and resuming after a crash, a three-node cluster losing
//! a node, TLS with a user and password. nats-server comes from Debian's `nats-server`
//! package; without it (outside CI) the tests are skipped.

mod nats_support;
mod support;

use nats_support::{Server, free_port, have_server, spawn, standalone};

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use farmwatch::jetstream::{
    CorrelateConfig, CorrelateSource, Delivery, NatsAuth, PublishConfig, Publisher, Record,
    StreamConfig, StreamSetup,
};
use farmwatch::timestamp::Timestamp;

/// A fresh directory for one test's server state.
fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("jetstream-{name}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Waits (bounded) until `done` holds; the bound is a hang guard, not a timing check.
fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "gave up waiting: {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn obs_json(i: usize) -> Vec<u8> {
    format!("{{\"id\":\"o{i}\",\"n\":{i}}}").into_bytes()
}

fn ts(i: usize) -> Timestamp {
    Timestamp::from_secs(1_700_000_000 + i as u64)
}

fn consumer(name: &str) -> CorrelateConfig {
    CorrelateConfig {
        consumer: name.to_string(),
        batch: 200,
        ..CorrelateConfig::default()
    }
}

/// Reads until `n` deliveries came (bounded by the hang guard).
fn read(source: &mut CorrelateSource, n: usize) -> Vec<Delivery> {
    let mut got = Vec::new();
    wait_until("deliveries", || {
        got.extend(source.next_batch(Duration::from_millis(200)));
        got.len() >= n
    });
    got
}

fn obs_payloads(got: &[Delivery]) -> Vec<String> {
    got.iter()
        .filter_map(|d| match &d.record {
            Record::Obs { payload, .. } => Some(String::from_utf8_lossy(payload).into_owned()),
            Record::Clock(_) => None,
        })
        .collect()
}

#[test]
fn observations_arrive_in_order_once_and_repeats_are_deduplicated() {
    if !have_server() {
        return;
    }
    let dir = scratch("order");
    let port = free_port();
    let server = standalone(port, &dir);
    let servers = vec![server.url()];
    let stream = StreamConfig::default();

    let n = 300;
    let publisher = Publisher::start("dc1", &servers, &PublishConfig::default(), &stream).unwrap();
    for i in 0..n {
        assert!(publisher.publish_obs(&format!("o{i}"), ts(i), obs_json(i)));
    }
    assert!(publisher.publish_event("e1", b"{\"kind\":\"alert\"}".to_vec()));
    assert!(publisher.clock(ts(n)));
    assert!(publisher.end(ts(n)));
    assert_eq!(
        publisher.stream_setup(Duration::from_secs(10)),
        Some(Ok(StreamSetup::Created))
    );
    let report = publisher.finish(Duration::from_secs(20));
    assert_eq!(report.stats.acked, n as u64 + 3, "{report:?}");
    assert_eq!(report.stats.dropped + report.buffered_unsent, 0);

    let mut source = CorrelateSource::open(&servers, &consumer("order"), &stream).unwrap();
    assert_eq!(source.stream_setup(), &StreamSetup::Existing(vec![]));
    assert_eq!(source.take_checkpoint(), None);
    let dc1 = source.producers()["dc1"];
    assert!(dc1.clock.end);
    assert_eq!(dc1.clock.ts(), ts(n));

    let got = read(&mut source, n + 2);
    assert!(got.windows(2).all(|w| w[0].seq < w[1].seq));
    assert!(got.iter().all(|d| d.sensor == "dc1"));
    let expected: Vec<String> = (0..n)
        .map(|i| String::from_utf8(obs_json(i)).unwrap())
        .collect();
    assert_eq!(obs_payloads(&got), expected);
    assert!(matches!(got[0].record, Record::Obs { ts: t, .. } if t == ts(0)));
    assert!(matches!(got[n + 1].record, Record::Clock(c) if c.end));
    let stats = source.stats();
    assert_eq!(
        (stats.observations, stats.clocks, stats.skipped),
        (n as u64, 2, 1)
    );

    // The same replay published again, from another sensor even: the server stores nothing new.
    let again = Publisher::start("dc2", &servers, &PublishConfig::default(), &stream).unwrap();
    for i in 0..n {
        again.publish_obs(&format!("o{i}"), ts(i), obs_json(i));
    }
    // Its first heartbeat is new, and makes it a known producer.
    assert!(again.clock(ts(n + 5)));
    let report = again.finish(Duration::from_secs(20));
    assert_eq!((report.stats.acked, report.stats.duplicates), (1, n as u64));
    let joined = read(&mut source, 1);
    assert_eq!(joined.len(), 1);
    assert_eq!(joined[0].sensor, "dc2");
    assert_eq!(source.producers()["dc2"].clock.ts(), ts(n + 5));

    // A later connection with other settings is told what differs, and changes nothing.
    let week = StreamConfig {
        max_age: Duration::from_secs(7 * 86_400),
        ..StreamConfig::default()
    };
    let other = Publisher::start("dc3", &servers, &PublishConfig::default(), &week).unwrap();
    let differs = "stream FARMWATCH max_age is 30days, config says 7days".to_string();
    assert_eq!(
        other.stream_setup(Duration::from_secs(10)),
        Some(Ok(StreamSetup::Existing(vec![differs])))
    );
    drop(other);

    // Alerts are deduplicated by id, and the correlator reads past them.
    source.publish_alert("a1", b"{}".to_vec()).unwrap();
    source.publish_alert("a1", b"{}".to_vec()).unwrap();
    assert!(source.next_batch(Duration::from_millis(300)).is_empty());
    assert_eq!(source.stats().skipped, 2);
    assert_eq!(source.stats().observations, n as u64);
    assert_eq!(source.stats().clocks, 3);
}

#[test]
fn publisher_buffers_while_the_server_is_away_and_counts_every_drop() {
    if !have_server() {
        return;
    }
    let dir = scratch("away");
    let port = free_port();
    let servers = vec![format!("nats://127.0.0.1:{port}")];
    let stream = StreamConfig::default();
    let config = PublishConfig {
        buffer_messages: 100,
        connect_timeout: Duration::from_millis(500),
        ack_timeout: Duration::from_secs(1),
        ..PublishConfig::default()
    };

    let server = standalone(port, &dir);
    let publisher = Publisher::start("dc1", &servers, &config, &stream).unwrap();
    for i in 0..50 {
        assert!(publisher.publish_obs(&format!("o{i}"), ts(i), obs_json(i)));
    }
    wait_until("first 50 acked", || publisher.stats().acked == 50);
    drop(server);

    // With the server gone, the calls still return: 100 are held, 50 dropped.
    let accepted: Vec<bool> = (50..200)
        .map(|i| publisher.publish_obs(&format!("o{i}"), ts(i), obs_json(i)))
        .collect();
    assert_eq!(accepted.iter().filter(|a| **a).count(), 100);
    assert!(accepted[..100].iter().all(|a| *a));
    let stats = publisher.stats();
    assert_eq!(
        (stats.offered, stats.dropped, stats.buffered),
        (200, 50, 100)
    );
    assert_eq!(stats.acked, 50);

    // Back on the same port with the same store: the buffer drains.
    let server = standalone(port, &dir);
    let report = publisher.finish(Duration::from_secs(30));
    let s = report.stats;
    assert_eq!(report.buffered_unsent, 0, "{report:?}");
    assert_eq!(s.acked + s.duplicates + s.dropped + s.buffered, s.offered);
    assert_eq!(s.acked + s.duplicates, 150);

    let mut source = CorrelateSource::open(&[server.url()], &consumer("away"), &stream).unwrap();
    let got = read(&mut source, 150);
    let expected: Vec<String> = (0..150)
        .map(|i| String::from_utf8(obs_json(i)).unwrap())
        .collect();
    let payloads = obs_payloads(&got);
    assert_eq!(payloads.len(), 150, "each stored once");
    let as_set = |v: &[String]| v.iter().cloned().collect::<std::collections::BTreeSet<_>>();
    assert_eq!(as_set(&payloads), as_set(&expected));
}

/// Bytes that gzip cannot shrink much, so the checkpoint spans several chunks.
fn noise(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[test]
fn checkpoints_hold_large_states_and_reading_resumes_after_them() {
    if !have_server() {
        return;
    }
    let dir = scratch("checkpoint");
    let port = free_port();
    let server = standalone(port, &dir);
    let servers = vec![server.url()];
    let stream = StreamConfig::default();
    let publisher = Publisher::start("dc1", &servers, &PublishConfig::default(), &stream).unwrap();
    for i in 0..100 {
        publisher.publish_obs(&format!("o{i}"), ts(i), obs_json(i));
    }
    publisher.end(ts(100));
    assert_eq!(publisher.finish(Duration::from_secs(20)).stats.acked, 101);

    let config = consumer("resume");
    let mut source = CorrelateSource::open(&servers, &config, &stream).unwrap();
    let first = read(&mut source, 101);
    let state = noise(3 << 20);
    let at = first[39].seq;
    source.save_checkpoint(at, &state).unwrap();
    assert_eq!(source.load_checkpoint().unwrap(), Some((at, state.clone())));
    // A second checkpoint replaces the first (a new generation of chunks).
    let state = noise(2 << 20);
    source.save_checkpoint(at, &state).unwrap();
    assert_eq!(source.load_checkpoint().unwrap(), Some((at, state.clone())));
    // Even acknowledged past the checkpoint, then a crash: the checkpoint decides.
    source.ack_through(first[70].seq).unwrap();
    drop(source);

    let mut source = CorrelateSource::open(&servers, &config, &stream).unwrap();
    assert_eq!(source.take_checkpoint(), Some((at, state)));
    assert_eq!(source.position(), at);
    let again = read(&mut source, 61);
    assert_eq!(again, first[40..].to_vec());
    assert!(source.next_batch(Duration::from_millis(200)).is_empty());
    assert_eq!(source.stats().redelivered, 0);
    source.save_checkpoint(source.position(), b"done").unwrap();
    assert_eq!(source.lag().unwrap(), 0);
}

#[test]
fn a_three_node_cluster_loses_a_node_and_no_observation() {
    if !have_server() {
        return;
    }
    let client_ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let route_ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let mut nodes: Vec<Option<Server>> = (0..3)
        .map(|i| {
            let dir = scratch(&format!("cluster-{i}"));
            let routes: Vec<String> = (0..3)
                .filter(|j| *j != i)
                .map(|j| format!("nats://127.0.0.1:{}", route_ports[j]))
                .collect();
            Some(spawn(
                client_ports[i],
                &[
                    "-a".into(),
                    "127.0.0.1".into(),
                    "-p".into(),
                    client_ports[i].to_string(),
                    "-n".into(),
                    format!("n{i}"),
                    "-js".into(),
                    "-sd".into(),
                    dir.display().to_string(),
                    "--cluster_name".into(),
                    "farmwatch".into(),
                    "--cluster".into(),
                    format!("nats://127.0.0.1:{}", route_ports[i]),
                    "--routes".into(),
                    routes.join(","),
                ],
            ))
        })
        .collect();
    let servers: Vec<String> = client_ports
        .iter()
        .map(|p| format!("nats://127.0.0.1:{p}"))
        .collect();
    let stream = StreamConfig {
        replicas: 3,
        ..StreamConfig::default()
    };
    let config = PublishConfig {
        ack_timeout: Duration::from_secs(2),
        connect_timeout: Duration::from_secs(1),
        ..PublishConfig::default()
    };
    // Connected to node 0 only (the others it learns from the server), which is killed while
    // a second thread keeps publishing: the client must fail over, and resend what was not
    // acknowledged.
    let publisher = Publisher::start("dc1", &servers[..1], &config, &stream).unwrap();
    let total = 600;
    std::thread::scope(|scope| {
        let producer = scope.spawn(|| {
            for i in 0..total {
                assert!(publisher.publish_obs(&format!("o{i}"), ts(i), obs_json(i)));
                std::thread::sleep(Duration::from_millis(2));
            }
        });
        wait_until("a first part acked", || publisher.stats().acked >= 100);
        nodes[0] = None;
        producer.join().unwrap();
    });
    let report = publisher.finish(Duration::from_secs(20));
    eprintln!("after losing a node: {report:?}");
    assert_eq!(report.buffered_unsent, 0, "{report:?}");
    assert_eq!(report.stats.acked + report.stats.duplicates, total as u64);

    let mut source = CorrelateSource::open(&servers[1..], &consumer("cluster"), &stream).unwrap();
    let got = read(&mut source, total);
    let as_set = |v: Vec<String>| v.into_iter().collect::<std::collections::BTreeSet<_>>();
    let expected = (0..total).map(|i| String::from_utf8(obs_json(i)).unwrap());
    assert_eq!(as_set(obs_payloads(&got)), as_set(expected.collect()));
    assert_eq!(obs_payloads(&got).len(), total, "each stored once");
    drop(nodes);
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl runs");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A throw-away CA and a server certificate for 127.0.0.1, made with openssl.
fn make_certs(dir: &Path) {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut ca = vec!["req", "-x509"];
    ca.extend(ec);
    ca.extend([
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=farmwatch test CA",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]);
    openssl(dir, &ca);
    let mut csr = vec!["req"];
    csr.extend(ec);
    csr.extend([
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=127.0.0.1",
    ]);
    openssl(dir, &csr);
    std::fs::write(
        dir.join("server.ext"),
        "basicConstraints=CA:FALSE\nsubjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "2",
            "-extfile",
            "server.ext",
        ],
    );
}

#[test]
fn tls_and_a_password_are_required_and_work() {
    if !have_server() {
        return;
    }
    let dir = scratch("tls");
    make_certs(&dir);
    let port = free_port();
    let conf = dir.join("nats.conf");
    std::fs::write(
        &conf,
        format!(
            "listen: \"127.0.0.1:{port}\"\n\
             jetstream {{ store_dir: \"{store}\" }}\n\
             tls {{ cert_file: \"{d}/server.pem\", key_file: \"{d}/server.key\", timeout: 2 }}\n\
             authorization {{ user: sensor, password: \"s3cret pw\" }}\n",
            store = dir.join("store").display(),
            d = dir.display(),
        ),
    )
    .unwrap();
    let server = spawn(port, &["-c".into(), conf.display().to_string()]);
    let servers = vec![format!("tls://127.0.0.1:{}", server.port)];
    let stream = StreamConfig::default();
    let auth = |password: &str| NatsAuth {
        user: Some("sensor".into()),
        password: Some(password.into()),
        ca: Some(dir.join("ca.pem")),
        require_tls: true,
        ..NatsAuth::default()
    };
    let config = |password: &str| PublishConfig {
        auth: auth(password),
        connect_timeout: Duration::from_millis(500),
        ack_timeout: Duration::from_millis(500),
        ..PublishConfig::default()
    };

    let wrong = Publisher::start("dc1", &servers, &config("wrong"), &stream).unwrap();
    wrong.publish_obs("o1", ts(1), obs_json(1));
    let report = wrong.finish(Duration::from_secs(2));
    assert_eq!(
        (report.stats.acked, report.buffered_unsent),
        (0, 1),
        "{report:?}"
    );

    let right = Publisher::start("dc1", &servers, &config("s3cret pw"), &stream).unwrap();
    for i in 0..10 {
        right.publish_obs(&format!("o{i}"), ts(i), obs_json(i));
    }
    right.end(ts(10));
    let report = right.finish(Duration::from_secs(20));
    assert_eq!(report.stats.acked, 11, "{report:?}");

    let correlate = CorrelateConfig {
        auth: auth("s3cret pw"),
        ..consumer("tls")
    };
    let mut source = CorrelateSource::open(&servers, &correlate, &stream).unwrap();
    assert_eq!(read(&mut source, 11).len(), 11);
}
