//! `farmwatch sessions`: OpenVPN status files (versions 1, 2, 3) and FreeRADIUS `detail`
//! files become the session feed of DESIGN §3, which `--sessions` then takes line for line.
//! The inputs in `tests/sessions/` are synthesized from the formats' documentation (see
//! its README).

mod support;

use std::path::Path;
use std::sync::Arc;

use farmwatch::accounts::Inventory;
use farmwatch::identity::Identity;
use farmwatch::timestamp::Timestamp;

fn input(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/sessions")
        .join(name)
        .display()
        .to_string()
}

/// stdout of `farmwatch sessions --from FORMAT FILES...`, which must succeed.
fn convert(format: &str, files: &[&str]) -> (String, String) {
    let mut args = vec!["sessions".to_string(), "--from".into(), format.into()];
    args.extend(files.iter().map(|f| input(f)));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = support::run(&args);
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "{args:?}: {stderr}");
    (String::from_utf8(out.stdout).unwrap(), stderr)
}

const JDOE_START: &str = r#"{"ts":"2026-11-02T14:03:11Z","account":"jdoe","assigned_ip":"10.8.0.12","public_ip":"73.14.2.9","event":"start"}"#;

#[test]
fn openvpn_status_v1_joins_clients_and_routes() {
    let (out, stderr) = convert("openvpn-status", &["openvpn-status-v1.log"]);
    let want = [
        JDOE_START,
        r#"{"ts":"2026-11-02T14:05:40Z","account":"asmith","assigned_ip":"10.8.0.14","public_ip":"81.2.69.142","event":"start"}"#,
    ];
    assert_eq!(out.lines().collect::<Vec<_>>(), want);
    // The client without a route of its own, and asmith's iroute subnet, give nothing.
    assert!(
        stderr.contains(
            "2 records from 1 files; passed over: OpenVPN client without a virtual address (1)"
        ),
        "{stderr}"
    );
}

#[test]
fn openvpn_status_v2_snapshots_give_starts_and_stops() {
    let (out, _) = convert(
        "openvpn-status",
        &["openvpn-status-v2-1410.log", "openvpn-status-v2-1420.log"],
    );
    let want = [
        // Username beats Common Name; both virtual addresses are the account's.
        JDOE_START,
        r#"{"ts":"2026-11-02T14:03:11Z","account":"jdoe","assigned_ip":"fd00:8::1000","public_ip":"73.14.2.9","event":"start"}"#,
        // Username UNDEF: the common name; an IPv6 real address has no port.
        r#"{"ts":"2026-11-02T14:05:40Z","account":"laptop-0077","assigned_ip":"10.8.0.14","public_ip":"2001:db8:4::23","event":"start"}"#,
        // Gone from the 14:20 snapshot; jdoe's sessions, still there, are not repeated.
        r#"{"ts":"2026-11-02T14:20:00Z","account":"laptop-0077","assigned_ip":"10.8.0.14","public_ip":"2001:db8:4::23","event":"stop"}"#,
    ];
    assert_eq!(out.lines().collect::<Vec<_>>(), want);
}

#[test]
fn openvpn_status_v3_is_v2_with_tabs() {
    let (out, _) = convert("openvpn-status", &["openvpn-status-v3.log"]);
    assert_eq!(out.lines().collect::<Vec<_>>(), [JDOE_START]);
}

#[test]
fn radius_detail_start_interim_stop() {
    let (out, stderr) = convert("radius-detail", &["radius-detail-20261102"]);
    let want = [
        // Event-Timestamp (the NAS's clock) over Timestamp (when FreeRADIUS wrote it).
        JDOE_START,
        r#"{"ts":"2026-11-02T14:08:12Z","account":"jdoe","assigned_ip":"10.8.0.12","public_ip":"73.14.2.9","event":"interim"}"#,
        // Calling-Station-Id is a MAC here: the tagged Tunnel-Client-Endpoint is the address.
        r#"{"ts":"2026-11-02T14:09:30Z","account":"asmith","assigned_ip":"10.8.0.14","public_ip":"81.2.69.142","event":"start"}"#,
        r#"{"ts":"2026-11-02T14:33:12Z","account":"jdoe","assigned_ip":"10.8.0.12","public_ip":"73.14.2.9","event":"stop"}"#,
    ];
    assert_eq!(out.lines().collect::<Vec<_>>(), want);
    assert!(
        stderr.contains("passed over: RADIUS Acct-Status-Type Accounting-On (1)"),
        "{stderr}"
    );
}

#[test]
fn a_broken_file_stops_with_its_name_line_and_offset() {
    let dir = support::scratch("sessions-broken");
    let file = dir.join("detail");
    std::fs::write(&file, "Mon Nov  2 14:03:12 2026\n\tUser-Name \"jdoe\"\n").unwrap();
    let out = support::run(&[
        "sessions",
        "--from",
        "radius-detail",
        file.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "{}: line 2 (byte 25): not `Attribute = value`",
            file.display()
        )),
        "{stderr}"
    );
    let out = support::run(&["sessions", "--from", "cisco", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
}

/// The converter's output is a feed `--sessions` takes whole: every line accepted, and the
/// addresses belong to their accounts while the sessions last.
#[test]
fn converted_feeds_round_trip_through_replay() {
    let dir = support::scratch("sessions-round-trip");
    for (format, files) in [
        ("openvpn-status", &["openvpn-status-v1.log"][..]),
        (
            "openvpn-status",
            &["openvpn-status-v2-1410.log", "openvpn-status-v2-1420.log"],
        ),
        ("openvpn-status", &["openvpn-status-v3.log"]),
        ("radius-detail", &["radius-detail-20261102"]),
    ] {
        let (feed, _) = convert(format, files);
        let mut identity = Identity::new(Arc::new(Inventory::default()));
        let report = identity.load_sessions(feed.as_bytes());
        assert_eq!(report.errors, vec![], "{files:?}");
        assert_eq!(report.accepted, feed.lines().count(), "{files:?}");
        let at = Timestamp::from_secs(1_793_628_600); // 14:10
        let owner = identity.account_at("10.8.0.12".parse().unwrap(), at);
        assert_eq!(owner.map(|a| &*a.id), Some("jdoe"), "{files:?}");

        let path = dir.join("feed.jsonl");
        std::fs::write(&path, &feed).unwrap();
        let out = support::run(&[
            "replay",
            &format!(
                "{}/fixtures/detect-rdp-farm.pcap",
                env!("CARGO_MANIFEST_DIR")
            ),
            "--sessions",
            path.to_str().unwrap(),
            "--events",
            dir.join("events.jsonl").to_str().unwrap(),
        ]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{stderr}");
        assert!(!stderr.contains("session lines skipped"), "{stderr}");
    }
}
