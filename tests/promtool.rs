//! The shipped Prometheus alert rules load (`promtool check rules`) and behave as their unit
//! tests say (`promtool test rules`: a firing and a quiet case for every alert).
//! promtool comes from Debian's `prometheus` package; in CI (`CI=true`) it must be present.

mod support;

use std::collections::BTreeSet;

const RULES: &str = "deploy/prometheus/farmwatch-rules.yml";
const RULE_TESTS: &str = "deploy/prometheus/farmwatch-rules.test.yml";

/// Values of `key: value` lines in a YAML file, whatever their indentation.
fn yaml_values(text: &str, key: &str) -> Vec<String> {
    text.lines()
        .filter_map(|line| line.trim_start().strip_prefix(key)?.strip_prefix(':'))
        .map(|value| value.trim().to_string())
        .collect()
}

#[test]
fn rules_are_valid() {
    if let Some(out) = support::promtool(&["check", "rules", RULES]) {
        assert!(out.contains("SUCCESS"), "{out}");
    }
}

#[test]
fn rule_unit_tests_pass() {
    if let Some(out) = support::promtool(&["test", "rules", RULE_TESTS]) {
        assert!(out.contains("SUCCESS"), "{out}");
    }
}

/// Each alert has a unit test that expects it to fire and one that expects silence, and every
/// alert carries a severity, a summary, a description and a runbook hint.
#[test]
fn every_alert_is_tested_both_ways_and_documented() {
    let rules = std::fs::read_to_string(RULES).unwrap();
    let tests = std::fs::read_to_string(RULE_TESTS).unwrap();
    let alerts: BTreeSet<String> = yaml_values(&rules, "- alert").into_iter().collect();
    assert_eq!(alerts.len(), 10, "{alerts:?}");
    for key in ["severity", "summary", "description", "runbook"] {
        assert_eq!(yaml_values(&rules, key).len(), alerts.len(), "{key}");
    }

    let mut firing = BTreeSet::new();
    let mut quiet = BTreeSet::new();
    let mut current = String::new();
    for line in tests.lines().map(str::trim) {
        if let Some(name) = line.strip_prefix("alertname:") {
            current = name.trim().to_string();
        } else if line == "exp_alerts: []" {
            quiet.insert(current.clone());
        } else if line.starts_with("- exp_labels:") {
            firing.insert(current.clone());
        }
    }
    assert_eq!(firing, alerts, "alerts with a firing test");
    assert_eq!(quiet, alerts, "alerts with a not-firing test");
}

/// The dashboard's queries are valid PromQL: with Grafana's variables filled in, promtool
/// checks each as a recording rule.
#[test]
fn dashboard_queries_parse() {
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string("deploy/grafana/farmwatch.json").unwrap())
            .unwrap();
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    let mut panels: Vec<&serde_json::Value> =
        dashboard["panels"].as_array().unwrap().iter().collect();
    let mut queries = 0;
    while let Some(panel) = panels.pop() {
        panels.extend(panel["panels"].as_array().into_iter().flatten());
        for target in panel["targets"].as_array().into_iter().flatten() {
            queries += 1;
            let expr = target["expr"]
                .as_str()
                .unwrap()
                .replace("$__rate_interval", "5m")
                .replace("$__range", "6h")
                .replace("$instance", ".+");
            // A JSON string is a valid YAML double-quoted scalar.
            rules.push_str(&format!(
                "      - record: dashboard:query_{queries}\n        expr: {}\n",
                serde_json::Value::String(expr)
            ));
        }
    }
    // Left in place for a look after a failure; the next run overwrites it.
    let path =
        std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("farmwatch-dashboard-rules.yml");
    std::fs::write(&path, &rules).unwrap();
    let out = support::promtool(&["check", "rules", path.to_str().unwrap()]);
    if let Some(out) = out {
        assert!(out.contains("SUCCESS"), "{out}");
    }
}
