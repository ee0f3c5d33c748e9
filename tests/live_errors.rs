//! `farmwatch live` startup errors (exit 2, one line naming the problem) and SIGHUP: outputs
//! reopened for logrotate, a broken config rejected while the sensor keeps running.

mod live_support;
mod support;

use std::net::TcpListener;
use std::process::Command;

use live_support::{Sensor, can_capture, http_get, live_fails, wait_for};
use support::scratch;

/// The one line a startup failure prints.
fn one_line(stderr: &str) -> &str {
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "expected one line, got:\n{stderr}");
    lines[0]
}

#[test]
fn missing_interface_is_named_with_the_available_ones() {
    let dir = scratch("live-missing-if");
    let (code, stderr) = live_fails(&dir, &["--interface", "fw-no-such0"]);
    assert_eq!(code, Some(2), "{stderr}");
    let line = one_line(&stderr);
    assert!(
        line.starts_with("farmwatch: no such interface: fw-no-such0; available: "),
        "{line}"
    );
    assert!(line.contains("lo"), "{line}");
}

#[test]
fn bad_bpf_filter_is_a_usage_error() {
    if !can_capture() {
        return;
    }
    let dir = scratch("live-bad-bpf");
    let (code, stderr) = live_fails(&dir, &["--interface", "lo", "--bpf", "tcp port"]);
    assert_eq!(code, Some(2), "{stderr}");
    let line = one_line(&stderr);
    assert!(
        line.starts_with("farmwatch: bad BPF filter \"tcp port\": "),
        "{line}"
    );
}

#[test]
fn listen_address_in_use_is_a_usage_error() {
    if !can_capture() {
        return;
    }
    let dir = scratch("live-port-used");
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let mut sensor = Sensor::start_on(&dir, port, &["--interface", "lo"]);
    let code = sensor.wait_exit().code();
    let stderr = sensor.stderr();
    assert_eq!(code, Some(2), "{stderr}");
    let line = one_line(&stderr);
    assert!(
        line.starts_with(&format!("farmwatch: cannot listen on 127.0.0.1:{port}: ")),
        "{line}"
    );
}

/// Without CAP_NET_RAW the sensor says which capabilities it needs. Runs the binary as
/// `nobody` with every capability dropped (setpriv, util-linux).
#[test]
fn missing_privileges_name_the_capabilities() {
    if !can_capture() || !support::require(support::has_tool("setpriv"), "setpriv") {
        return;
    }
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
        ])
        .arg(support::bin())
        .args(["live", "--interface", "lo"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert_eq!(
        one_line(&stderr),
        "farmwatch: cannot capture on lo: needs CAP_NET_RAW and CAP_NET_ADMIN (or root)"
    );
}

/// logrotate (`nocreate`) moves the outputs away and sends SIGHUP: the sensor must create
/// them anew, keep running, and flush its open flows into the new file at SIGTERM. A config
/// broken in between is rejected with one line and the sensor carries on.
#[test]
fn sighup_reopens_outputs_and_rejects_a_broken_config() {
    if !can_capture() {
        return;
    }
    let dir = scratch("live-sighup");
    let (events, flows, config) = (
        dir.join("events.jsonl"),
        dir.join("flows.jsonl"),
        dir.join("farmwatch.toml"),
    );
    std::fs::write(&config, "[sensor]\nname = \"hup-test\"\n").unwrap();
    let mut sensor = Sensor::start(
        &dir,
        &[
            "--interface",
            "lo",
            "--bpf",
            "tcp",
            "--config",
            config.to_str().unwrap(),
            "--events",
            events.to_str().unwrap(),
            "--flows",
            flows.to_str().unwrap(),
        ],
    );
    sensor.wait_healthy();
    assert!(events.exists() && flows.exists());

    std::fs::rename(&events, dir.join("events.jsonl.1")).unwrap();
    std::fs::rename(&flows, dir.join("flows.jsonl.1")).unwrap();
    std::fs::write(&config, "[sensor]\nnmae = \"typo\"\n").unwrap();
    sensor.signal("HUP");
    assert!(
        wait_for(std::time::Duration::from_secs(30), || events.exists()
            && flows.exists()),
        "outputs not recreated after SIGHUP:\n{}",
        sensor.stderr()
    );
    assert!(
        wait_for(std::time::Duration::from_secs(30), || sensor
            .stderr()
            .contains("new config rejected")),
        "{}",
        sensor.stderr()
    );
    assert!(
        sensor.stderr().contains("unknown field `nmae`"),
        "{}",
        sensor.stderr()
    );
    let metrics = http_get(sensor.port, "/metrics").expect("scrape").2;
    assert!(
        metrics.contains("farmwatch_reloads_total{result=\"failed\"} 1"),
        "{metrics}"
    );

    // Still capturing: this request is a TCP flow on lo that the sensor sees.
    let (status, _, body) = http_get(sensor.port, "/healthz").expect("healthz after SIGHUP");
    assert_eq!((status, body.as_str()), (200, "ok\n"));

    sensor.signal("TERM");
    let status = sensor.wait_exit();
    assert_eq!(status.code(), Some(0), "{}", sensor.stderr());
    let text = std::fs::read_to_string(&flows).unwrap();
    let port = sensor.port;
    let records: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON flow record"))
        .collect();
    assert!(
        records
            .iter()
            .any(|r| r["dst_port"] == port && r["proto"] == "tcp" && r["interim"] == false),
        "no final record of the HTTP flow to port {port} in the new flows file:\n{text}"
    );
}

/// A sink that cannot write (a full disk: /dev/full) is logged as an error and makes the
/// exit status 1 instead of losing flow records silently.
#[test]
fn full_disk_is_logged_and_fails_the_exit_status() {
    if !can_capture() {
        return;
    }
    let dir = scratch("live-full-disk");
    let mut sensor = Sensor::start(
        &dir,
        &[
            "--interface",
            "lo",
            "--bpf",
            "tcp",
            "--events",
            dir.join("events.jsonl").to_str().unwrap(),
            "--flows",
            "/dev/full",
        ],
    );
    // These requests are TCP flows on lo whose records must go to /dev/full.
    sensor.wait_healthy();
    http_get(sensor.port, "/metrics").expect("scrape");
    sensor.signal("TERM");
    let status = sensor.wait_exit();
    let stderr = sensor.stderr();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("farmwatch: error: output writes are failing"),
        "{stderr}"
    );
    assert!(stderr.contains("No space left on device"), "{stderr}");
}
