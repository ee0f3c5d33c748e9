//! The scale-out deployment files: the compose file (Docker cannot run here, so it is parsed
//! and its topology checked), its configs, the Kubernetes correlator and the systemd unit.

mod support;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use farmwatch::jetstream::{CorrelateConfig, PublishConfig, StreamConfig};
use serde::Deserialize;
use serde_norway::Value;

const COMPOSE: &str = "deploy/compose/compose.yaml";
const UNIT: &str = "deploy/systemd/farmwatch-correlate.service";
const KUBE: &str = "deploy/kubernetes/correlate.yaml";

fn read(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn strings(v: &Value) -> Vec<String> {
    v.as_sequence()
        .unwrap_or_else(|| panic!("not a list: {v:?}"))
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect()
}

/// The value after `flag` in an argument list.
fn arg<'a>(args: &'a [String], flag: &str) -> &'a str {
    let at = args.iter().position(|a| a == flag);
    at.and_then(|i| args.get(i + 1))
        .unwrap_or_else(|| panic!("{flag} missing in {args:?}"))
}

/// The farmwatch sections of a config file; the others belong to `farmwatch check`.
#[derive(Deserialize)]
struct Sections {
    sensor: Sensor,
    #[serde(default)]
    publish: Option<PublishConfig>,
    #[serde(default)]
    correlate: Option<CorrelateConfig>,
    stream: StreamConfig,
}

#[derive(Deserialize)]
struct Sensor {
    name: String,
}

fn config(name: &str) -> Sections {
    let path = format!("deploy/compose/config/{name}");
    toml::from_str(&read(&path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[test]
fn compose_runs_three_nats_nodes_two_sensors_and_one_correlator() {
    let mut doc: Value = serde_norway::from_str(&read(COMPOSE)).unwrap();
    doc.apply_merge().unwrap();
    let services = doc["services"].as_mapping().unwrap();
    let names: BTreeSet<&str> = services.keys().map(|k| k.as_str().unwrap()).collect();
    assert_eq!(
        names,
        BTreeSet::from([
            "nats1",
            "nats2",
            "nats3",
            "sensor-dc1",
            "sensor-dc2",
            "correlate"
        ])
    );

    // Each node is in the cluster and routes to the two others.
    for node in ["nats1", "nats2", "nats3"] {
        let args = strings(&services[node]["command"]);
        assert!(args.contains(&"-js".to_string()), "{node}");
        assert_eq!(arg(&args, "-n"), node);
        assert_eq!(arg(&args, "--cluster_name"), "farmwatch");
        let routes: BTreeSet<String> = arg(&args, "--routes")
            .split(',')
            .map(String::from)
            .collect();
        let others: BTreeSet<String> = ["nats1", "nats2", "nats3"]
            .iter()
            .filter(|n| **n != node)
            .map(|n| format!("nats://{n}:6222"))
            .collect();
        assert_eq!(routes, others, "{node}");
    }

    let all = "nats://nats1:4222,nats://nats2:4222,nats://nats3:4222";
    let mut sensors = BTreeSet::new();
    for service in ["sensor-dc1", "sensor-dc2"] {
        let args = strings(&services[service]["command"]);
        assert_eq!(args[0], "replay");
        assert_eq!(arg(&args, "--publish"), all);
        let file = arg(&args, "--config")
            .strip_prefix("/etc/farmwatch/")
            .unwrap();
        let c = config(file);
        assert!(c.publish.is_some(), "{file} has [publish]");
        assert_eq!(c.stream.replicas, 3, "{file}");
        c.stream.validate().unwrap();
        sensors.insert(c.sensor.name);
    }
    assert_eq!(sensors.len(), 2, "sensor names differ");

    let args = strings(&services["correlate"]["command"]);
    assert_eq!(args[0], "correlate");
    assert_eq!(arg(&args, "--nats"), all);
    assert_eq!(arg(&args, "--listen"), "0.0.0.0:9478");
    let c = config("correlate.toml");
    let correlate = c.correlate.expect("correlate.toml has [correlate]");
    correlate.validate().unwrap();
    assert_eq!(
        correlate.sensors.iter().cloned().collect::<BTreeSet<_>>(),
        sensors
    );
    assert_eq!(
        c.stream,
        config("dc1.toml").stream,
        "one stream setting everywhere"
    );

    let accounts = read("deploy/compose/config/accounts.toml");
    farmwatch::accounts::Inventory::parse(&accounts, "accounts.toml")
        .unwrap_or_else(|p| panic!("{p:?}"));
}

#[test]
fn kubernetes_runs_exactly_one_correlator() {
    let text = read(KUBE);
    let docs: Vec<Value> = serde_norway::Deserializer::from_str(&text)
        .map(|d| Value::deserialize(d).unwrap())
        .collect();
    let deployment = docs
        .iter()
        .find(|d| d["kind"] == "Deployment")
        .expect("a Deployment");
    let spec = &deployment["spec"];
    assert_eq!(spec["replicas"].as_u64(), Some(1));
    assert_eq!(spec["strategy"]["type"], "Recreate");
    let pod = &spec["template"];
    assert_eq!(pod["metadata"]["annotations"]["prometheus.io/port"], "9478");
    let container = &pod["spec"]["containers"][0];
    let args = strings(&container["args"]);
    assert_eq!(args[0], "correlate");
    assert_eq!(arg(&args, "--listen"), "0.0.0.0:9478");
    assert_eq!(container["ports"][0]["containerPort"].as_u64(), Some(9478));

    let map = docs
        .iter()
        .find(|d| d["kind"] == "ConfigMap")
        .expect("a ConfigMap");
    let toml_text = map["data"]["farmwatch.toml"].as_str().unwrap();
    let c: Sections = toml::from_str(toml_text).unwrap();
    c.correlate.unwrap().validate().unwrap();
    c.stream.validate().unwrap();
}

#[test]
fn correlate_unit_runs_without_capabilities_on_the_correlate_port() {
    let unit = read(UNIT);
    let value = |key: &str| {
        unit.lines()
            .find_map(|line| line.strip_prefix(key)?.strip_prefix('='))
            .unwrap_or_else(|| panic!("{key} missing"))
            .to_string()
    };
    assert_eq!(value("AmbientCapabilities"), "");
    assert_eq!(value("CapabilityBoundingSet"), "");
    assert_eq!(value("NoNewPrivileges"), "yes");
    assert!(value("ExecStart").contains(" correlate --nats ${FARMWATCH_NATS} "));
    assert!(value("ExecStart").ends_with("--listen 127.0.0.1:9478"));
    assert!(read("deploy/systemd/farmwatch-correlate.default").contains("\nFARMWATCH_NATS="));

    // systemd-analyze checks ExecStart's binary, so point it at one that exists here.
    let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join("farmwatch-correlate.service");
    std::fs::write(&path, unit.replace("/usr/local/bin/farmwatch", "/bin/true")).unwrap();
    let path = path.to_str().unwrap();
    let Ok(verify) = Command::new("systemd-analyze")
        .args(["verify", path])
        .output()
    else {
        support::require(false, "systemd-analyze (Debian package systemd)");
        return;
    };
    assert!(
        verify.status.success() && verify.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&verify.stderr)
    );
    let security = Command::new("systemd-analyze")
        .args(["security", "--offline=yes", "--threshold=25", path])
        .output()
        .unwrap();
    assert!(
        security.status.success(),
        "{}",
        String::from_utf8_lossy(&security.stdout)
    );
}

const RULES: &str = "deploy/prometheus/farmwatch-jetstream-rules.yml";
const RULE_TESTS: &str = "deploy/prometheus/farmwatch-jetstream-rules.test.yml";

#[test]
fn jetstream_rules_load_and_pass_their_unit_tests() {
    if let Some(out) = support::promtool(&["check", "rules", RULES]) {
        assert!(out.contains("SUCCESS: 3 rules found"), "{out}");
    }
    if let Some(out) = support::promtool(&["test", "rules", RULE_TESTS]) {
        assert!(out.contains("SUCCESS"), "{out}");
    }
}

/// Every alert has a firing and a quiet test case and its annotations; the rules name only
/// metrics the "Several sensors" section documents.
#[test]
fn jetstream_rules_are_tested_both_ways_and_name_documented_metrics() {
    let rules: Value = serde_norway::from_str(&read(RULES)).unwrap();
    let mut alerts = BTreeSet::new();
    for rule in rules["groups"][0]["rules"].as_sequence().unwrap() {
        let name = rule["alert"].as_str().unwrap().to_string();
        assert!(rule["labels"]["severity"].is_string(), "{name}");
        for key in ["summary", "description", "runbook"] {
            assert!(rule["annotations"][key].is_string(), "{name} {key}");
        }
        alerts.insert(name);
    }
    assert_eq!(alerts.len(), 3);

    let tests: Value = serde_norway::from_str(&read(RULE_TESTS)).unwrap();
    let (mut firing, mut quiet) = (BTreeSet::new(), BTreeSet::new());
    for case in tests["tests"].as_sequence().unwrap() {
        for check in case["alert_rule_test"].as_sequence().unwrap() {
            let name = check["alertname"].as_str().unwrap().to_string();
            match check["exp_alerts"].as_sequence().unwrap().is_empty() {
                true => quiet.insert(name),
                false => firing.insert(name),
            };
        }
    }
    assert_eq!(firing, alerts, "alerts with a firing case");
    assert_eq!(quiet, alerts, "alerts with a quiet case");

    let documented = read("README.md");
    let text = read(RULES);
    let named: BTreeSet<&str> = text
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("farmwatch_"))
        .collect();
    assert!(!named.is_empty());
    for metric in named {
        assert!(
            documented.contains(&format!("`{metric}`")),
            "{metric} undocumented"
        );
    }
}
