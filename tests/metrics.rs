//! The Prometheus metrics contract: names, deltas between publishes, gauge removal, and the
//! text format as promtool reads it. The dashboard and alert rules in `deploy/` may only name
//! metrics that `farmwatch::metrics` exports.

mod support;

use std::collections::BTreeSet;
use std::io::Write;
use std::process::{Command, Stdio};

use farmwatch::metrics::{Metrics, Stats};

/// Stats with every map filled, as a pipeline would report them a few seconds into a capture.
fn busy_stats() -> Stats {
    let mut stats = Stats {
        packets: 1000,
        bytes: 900_000,
        capture_drops_kernel: 3,
        capture_drops_interface: 1,
        flows_active: 40,
        flows_total: 55,
        last_packet_ts: Some(1_793_000_000.25),
        truncated_records: 2,
        ..Stats::default()
    };
    stats.decode_errors.insert("ipv4_header", 5);
    stats.flows_evicted.insert("table_full", 7);
    stats.flows_by_app.insert("rdp", 2);
    stats.flows_by_app.insert("tls", 30);
    stats
        .events
        .insert(("alert", "laptop_farm_suspected", "high"), 1);
    stats
        .events
        .insert(("remote_desktop", "persistent_stream", "medium"), 2);
    stats
        .remote_desktop_active
        .insert(("rdp", "jdoe".to_string()), 1);
    stats
        .remote_desktop_active
        .insert(("anydesk", "asmith".to_string()), 2);
    stats.account_risk.insert("jdoe".to_string(), 0.85);
    stats.account_risk.insert("asmith".to_string(), 0.4);
    stats.sink_errors.insert("events", 1);
    stats
}

/// The value of the sample whose series (name and labels as rendered) is `series`.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|value| value.parse().ok())
}

/// Names of the metric families in a rendered scrape, from its `# TYPE` lines.
fn exported_names(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|line| line.strip_prefix("# TYPE ")?.split(' ').next())
        .map(str::to_string)
        .collect()
}

/// Every `farmwatch_...` identifier in `text`.
fn referenced_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(start) = rest.find("farmwatch_") {
        let tail = &rest[start..];
        let end = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(tail.len());
        names.insert(tail[..end].to_string());
        rest = &tail[end..];
    }
    names
}

#[test]
fn exports_the_contract_names() {
    let metrics = Metrics::new();
    metrics.publish(&busy_stats(), 1_793_000_010.0);
    let names = exported_names(&metrics.render());
    let contract = [
        "farmwatch_packets_total",
        "farmwatch_bytes_total",
        "farmwatch_capture_drops_total",
        "farmwatch_decode_errors_total",
        "farmwatch_capture_truncated_records_total",
        "farmwatch_capture_corrupt_files_total",
        "farmwatch_capture_unread_blocks_total",
        "farmwatch_capture_skipped_records_total",
        "farmwatch_capture_unindexed_records_total",
        "farmwatch_flows_active",
        "farmwatch_flows_total",
        "farmwatch_flows_evicted_total",
        "farmwatch_flows_by_app_total",
        "farmwatch_events_total",
        "farmwatch_remote_desktop_sessions_active",
        "farmwatch_account_risk_score",
        "farmwatch_sink_errors_total",
        "farmwatch_reloads_total",
        "farmwatch_state_evicted_total",
        "farmwatch_last_packet_timestamp_seconds",
        "farmwatch_processing_lag_seconds",
        "farmwatch_build_info",
    ];
    let expected: BTreeSet<String> = contract.iter().map(|s| s.to_string()).collect();
    assert_eq!(names, expected);
}

#[test]
fn counters_advance_by_delta_between_publishes() {
    let metrics = Metrics::new();
    let mut stats = busy_stats();
    metrics.publish(&stats, 1_793_000_010.0);
    stats.packets += 500;
    stats.bytes += 1_000;
    stats.capture_drops_kernel += 2;
    *stats.flows_by_app.entry("rdp").or_default() += 1;
    stats.flows_by_app.insert("ssh", 4);
    *stats
        .events
        .entry(("alert", "laptop_farm_suspected", "high"))
        .or_default() += 1;
    // A pipeline that forgets a label set does not make its counter go down.
    stats.decode_errors.clear();
    metrics.publish(&stats, 1_793_000_020.0);

    let text = metrics.render();
    assert_eq!(sample(&text, "farmwatch_packets_total"), Some(1500.0));
    assert_eq!(sample(&text, "farmwatch_bytes_total"), Some(901_000.0));
    assert_eq!(
        sample(&text, r#"farmwatch_capture_drops_total{source="kernel"}"#),
        Some(5.0)
    );
    assert_eq!(
        sample(
            &text,
            r#"farmwatch_capture_drops_total{source="interface"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(&text, r#"farmwatch_flows_by_app_total{app="rdp"}"#),
        Some(3.0)
    );
    assert_eq!(
        sample(&text, r#"farmwatch_flows_by_app_total{app="ssh"}"#),
        Some(4.0)
    );
    assert_eq!(
        sample(
            &text,
            r#"farmwatch_events_total{kind="alert",reason="laptop_farm_suspected",severity="high"}"#
        ),
        Some(2.0)
    );
    assert_eq!(
        sample(
            &text,
            r#"farmwatch_decode_errors_total{reason="ipv4_header"}"#
        ),
        Some(5.0)
    );
    // Publishing the same snapshot again changes nothing.
    metrics.publish(&stats, 1_793_000_030.0);
    assert_eq!(
        sample(&metrics.render(), "farmwatch_packets_total"),
        Some(1500.0)
    );
}

#[test]
fn gauges_follow_the_snapshot_and_drop_vanished_labels() {
    let metrics = Metrics::new();
    let mut stats = busy_stats();
    metrics.publish(&stats, 1_793_000_010.0);
    let text = metrics.render();
    assert_eq!(
        sample(
            &text,
            r#"farmwatch_remote_desktop_sessions_active{account="asmith",app="anydesk"}"#
        ),
        Some(2.0)
    );
    assert_eq!(
        sample(&text, r#"farmwatch_account_risk_score{account="jdoe"}"#),
        Some(0.85)
    );
    assert_eq!(
        sample(&text, "farmwatch_processing_lag_seconds"),
        Some(9.75)
    );

    stats
        .remote_desktop_active
        .remove(&("anydesk", "asmith".to_string()));
    stats.account_risk.remove("asmith");
    stats.flows_active = 12;
    stats.last_packet_ts = Some(1_793_000_015.0);
    metrics.publish(&stats, 1_793_000_020.0);
    let text = metrics.render();
    assert!(!text.contains(r#"account="asmith""#), "{text}");
    assert_eq!(
        sample(
            &text,
            r#"farmwatch_remote_desktop_sessions_active{account="jdoe",app="rdp"}"#
        ),
        Some(1.0)
    );
    assert_eq!(sample(&text, "farmwatch_flows_active"), Some(12.0));
    assert_eq!(sample(&text, "farmwatch_processing_lag_seconds"), Some(5.0));
    assert_eq!(
        sample(&text, "farmwatch_last_packet_timestamp_seconds"),
        Some(1_793_000_015.0)
    );
}

#[test]
fn renders_help_type_and_build_info() {
    let metrics = Metrics::new();
    let text = metrics.render();
    assert!(text.contains("# TYPE farmwatch_packets_total counter\n"));
    assert!(text.contains("# TYPE farmwatch_flows_active gauge\n"));
    assert!(text.contains("# HELP farmwatch_packets_total "));
    let build = format!(
        r#"farmwatch_build_info{{version="{}"}}"#,
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(sample(&text, &build), Some(1.0));
    // Series an alert divides or sums by exist before the first drop or sink error.
    assert_eq!(
        sample(&text, r#"farmwatch_sink_errors_total{sink="flows"}"#),
        Some(0.0)
    );
    assert_eq!(
        sample(&text, r#"farmwatch_capture_drops_total{source="kernel"}"#),
        Some(0.0)
    );
}

#[test]
fn label_values_are_escaped() {
    let metrics = Metrics::new();
    let mut stats = Stats::default();
    stats.account_risk.insert("o\"brien\\x".to_string(), 1.0);
    metrics.publish(&stats, 0.0);
    assert_eq!(
        sample(
            &metrics.render(),
            r#"farmwatch_account_risk_score{account="o\"brien\\x"}"#
        ),
        Some(1.0)
    );
}

#[test]
fn write_to_file_writes_the_rendering() {
    let metrics = Metrics::new();
    metrics.publish(&busy_stats(), 1_793_000_010.0);
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("farmwatch-metrics.prom");
    metrics.write_to_file(&path).unwrap();
    let written = std::fs::read_to_string(&path).unwrap();
    assert_eq!(written, metrics.render());
}

/// True when promtool can run; in CI (`CI=true`) its absence is a failure, elsewhere a skip.
fn have_promtool() -> bool {
    let found = Command::new("promtool").arg("--version").output().is_ok();
    if !found {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "promtool missing in CI: install Debian's prometheus package"
        );
        support::skip("promtool missing");
    }
    found
}

#[test]
fn promtool_accepts_the_rendering() {
    if !have_promtool() {
        return;
    }
    let metrics = Metrics::new();
    metrics.publish(&busy_stats(), 1_793_000_010.0);
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(metrics.render().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    // promtool also lints (e.g. counters must end in _total); any finding is a failure.
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn assert_only_exported(file: &str, text: &str) {
    let metrics = Metrics::new();
    metrics.publish(&busy_stats(), 1_793_000_010.0);
    let exported = exported_names(&metrics.render());
    let referenced = referenced_names(text);
    assert!(!referenced.is_empty(), "{file} names no farmwatch metric");
    let unknown: Vec<_> = referenced.difference(&exported).collect();
    assert!(
        unknown.is_empty(),
        "{file} names unknown metrics {unknown:?}"
    );
}

#[test]
fn alert_rules_name_only_exported_metrics() {
    let file = "deploy/prometheus/farmwatch-rules.yml";
    assert_only_exported(file, &std::fs::read_to_string(file).unwrap());
}

/// Every panel of the dashboard (rows nest panels) queries only exported metrics.
#[test]
fn dashboard_names_only_exported_metrics() {
    let file = "deploy/grafana/farmwatch.json";
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(file).unwrap()).unwrap();
    let mut panels: Vec<&serde_json::Value> = dashboard["panels"]
        .as_array()
        .expect("dashboard has panels")
        .iter()
        .collect();
    let mut exprs = 0;
    while let Some(panel) = panels.pop() {
        if let Some(nested) = panel["panels"].as_array() {
            panels.extend(nested);
        }
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().expect("target has an expr");
            assert_only_exported(&format!("{file} panel {}", panel["title"]), expr);
            exprs += 1;
        }
    }
    assert!(exprs >= 7, "dashboard has {exprs} queries");
    for variable in dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if let Some(query) = variable["definition"].as_str() {
            assert_only_exported(&format!("{file} variable {}", variable["name"]), query);
        }
    }
}
