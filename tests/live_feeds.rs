//! `farmwatch live` follows its identity inputs while it runs: lines appended to the
//! session feed map addresses to accounts without a restart, and SIGHUP reloads the
//! account inventory and applies a new `[network]` section. Real traffic on `lo` (UDP from chosen 127/8 addresses) shows it.

mod live_support;
mod support;

use std::io::Write;
use std::net::UdpSocket;
use std::time::Duration;

use live_support::{Sensor, can_capture, wait_for};
use support::scratch;

fn send_from(src: &str, dst: &str) {
    let sock = UdpSocket::bind(format!("{src}:0")).expect("bind on lo");
    for _ in 0..3 {
        sock.send_to(b"farmwatch feed test", format!("{dst}:9999"))
            .expect("send");
    }
}

#[test]
fn appended_sessions_and_a_reloaded_inventory_name_the_accounts() {
    if !can_capture() {
        return;
    }
    let dir = scratch("live-feeds");
    let (config, accounts, sessions, flows) = (
        dir.join("farmwatch.toml"),
        dir.join("accounts.toml"),
        dir.join("sessions.jsonl"),
        dir.join("flows.jsonl"),
    );
    // Loopback starts outside; SIGHUP's new [network] makes it inside (so accounts apply).
    std::fs::write(&config, "[network]\ninside = [\"10.0.0.0/8\"]\n").unwrap();
    let account = |id: &str, host: &str| {
        format!(
            "[[account]]\nid = \"{id}\"\nkind = \"contractor\"\ndeclared_country = \"US\"\ndeclared_timezone = \"America/Chicago\"\nphone = \"+1 312 555 0142\"\nhosts = [\"{host}\"]\n"
        )
    };
    std::fs::write(&accounts, account("before", "127.0.0.50")).unwrap();
    std::fs::write(&sessions, "").unwrap();
    let mut sensor = Sensor::start(
        &dir,
        &[
            "--interface",
            "lo",
            "--bpf",
            "udp port 9999",
            "--config",
            config.to_str().unwrap(),
            "--accounts",
            accounts.to_str().unwrap(),
            "--sessions",
            sessions.to_str().unwrap(),
            "--events",
            dir.join("events.jsonl").to_str().unwrap(),
            "--flows",
            flows.to_str().unwrap(),
        ],
    );
    sensor.wait_healthy();

    let mut feed = std::fs::OpenOptions::new()
        .append(true)
        .open(&sessions)
        .unwrap();
    writeln!(
        feed,
        r#"{{"ts":"2020-01-01T00:00:00Z","account":"tailed","assigned_ip":"127.0.0.3","public_ip":"73.14.2.9","event":"start"}}"#
    )
    .unwrap();
    std::fs::write(&accounts, account("after", "127.0.0.4")).unwrap();
    std::fs::write(&config, "[network]\ninside = [\"127.0.0.0/8\"]\n").unwrap();
    sensor.signal("HUP");
    // The capture thread applies feeds before dispatching packets: keep some arriving.
    let reloaded = wait_for(Duration::from_secs(30), || {
        send_from("127.0.0.77", "127.0.0.9");
        sensor.stderr().contains("inventory reloaded")
    });
    assert!(reloaded, "{}", sensor.stderr());
    for _ in 0..15 {
        send_from("127.0.0.77", "127.0.0.9");
        std::thread::sleep(Duration::from_millis(200));
    }
    send_from("127.0.0.3", "127.0.0.9");
    send_from("127.0.0.4", "127.0.0.9");
    std::thread::sleep(Duration::from_secs(1));

    sensor.signal("TERM");
    assert_eq!(sensor.wait_exit().code(), Some(0), "{}", sensor.stderr());
    let records: Vec<serde_json::Value> = std::fs::read_to_string(&flows)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).expect("flow record"))
        .collect();
    let account_of = |src: &str| {
        records
            .iter()
            .find(|r| r["src_ip"] == src && r["dst_port"] == 9999)
            .map(|r| r["account"].clone())
    };
    assert_eq!(
        account_of("127.0.0.3"),
        Some(serde_json::json!("tailed")),
        "{records:?}"
    );
    assert_eq!(
        account_of("127.0.0.4"),
        Some(serde_json::json!("after")),
        "{records:?}"
    );
}
