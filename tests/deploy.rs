//! The deployment files in `deploy/`: the systemd unit passes `systemd-analyze` (syntax and a
//! sandbox exposure bound) and grants only the capture capabilities; all files agree on the
//! metrics port. Without systemd-analyze those tests skip (a recorded skip), except under
//! `CI=true`, where they fail.

mod support;

use std::path::Path;
use std::process::{Command, Output};

const UNIT: &str = "deploy/systemd/farmwatch.service";
const BINARY: &str = "/usr/local/bin/farmwatch";

/// Runs systemd-analyze with `args`, or None (a recorded skip) when it is not installed;
/// under `CI=true` its absence fails (tools/setup-debian installs systemd). It needs no
/// running systemd: `verify` and `security --offline` only read the unit.
fn systemd_analyze(args: &[&str]) -> Option<Output> {
    let out = Command::new("systemd-analyze").args(args).output().ok();
    support::require(out.is_some(), "systemd-analyze (Debian package systemd)")
        .then(|| out.expect("checked"))
}

/// The unit with its binary path pointed at an executable that exists here, because `verify`
/// checks ExecStart's binary; everything else is the shipped file.
fn unit_for_verify() -> std::path::PathBuf {
    let unit = std::fs::read_to_string(UNIT).unwrap();
    assert!(unit.contains(BINARY));
    let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join("farmwatch.service");
    std::fs::write(&path, unit.replace(BINARY, "/bin/true")).unwrap();
    path
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn systemd_unit_verifies() {
    let path = unit_for_verify();
    let Some(out) = systemd_analyze(&["verify", path.to_str().unwrap()]) else {
        return;
    };
    // verify only warns (exit 0) on an unknown key, so any output is a failure.
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "systemd-analyze verify:\n{}",
        text(&out)
    );
}

/// `systemd-analyze security` rates the sandbox from 0 (locked down) to 10; the unit stays
/// at 2.5 or below ("OK").
#[test]
fn systemd_unit_is_sandboxed() {
    let path = unit_for_verify();
    let Some(out) = systemd_analyze(&[
        "security",
        "--offline=yes",
        "--threshold=25",
        path.to_str().unwrap(),
    ]) else {
        return;
    };
    assert!(out.status.success(), "{}", text(&out));
}

#[test]
fn systemd_unit_grants_only_capture_capabilities() {
    let unit = std::fs::read_to_string(UNIT).unwrap();
    let value = |key: &str| {
        unit.lines()
            .find_map(|line| line.strip_prefix(key)?.strip_prefix('='))
            .unwrap_or_else(|| panic!("{key} missing"))
            .to_string()
    };
    assert_eq!(value("AmbientCapabilities"), "CAP_NET_RAW CAP_NET_ADMIN");
    assert_eq!(value("CapabilityBoundingSet"), "CAP_NET_RAW CAP_NET_ADMIN");
    assert_eq!(value("NoNewPrivileges"), "yes");
    assert_eq!(value("ProtectSystem"), "strict");
    assert_eq!(value("ExecReload"), "/bin/kill -HUP $MAINPID");
}

/// Prometheus finds the sensor where each deployment makes it listen.
#[test]
fn deploy_files_agree_on_the_metrics_port() {
    let read = |path: &str| std::fs::read_to_string(path).unwrap();
    assert!(read(UNIT).contains("--listen 127.0.0.1:9477"));
    assert!(read("deploy/docker/Dockerfile").contains("\nEXPOSE 9477\n"));
    let daemonset = read("deploy/kubernetes/daemonset.yaml");
    assert!(daemonset.contains("prometheus.io/port: \"9477\""));
    assert!(daemonset.contains("containerPort: 9477"));
    assert!(daemonset.contains("$(NODE_IP):9477"));
}
