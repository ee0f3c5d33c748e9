//! The README stays true: every `farmwatch.toml` example in it parses with the real config
//! types (unknown keys are errors there), and every metric name it lists is exported.

use std::path::Path;

fn readme() -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).expect("README.md")
}

fn toml_blocks(text: &str) -> Vec<String> {
    text.split("```toml\n")
        .skip(1)
        .filter_map(|b| b.split("```").next())
        .map(str::to_string)
        .collect()
}

#[test]
fn every_config_example_in_the_readme_parses() {
    let blocks: Vec<String> = toml_blocks(&readme())
        .into_iter()
        .filter(|b| !b.contains("[[account]]"))
        .collect();
    assert!(blocks.len() >= 3, "found {} config blocks", blocks.len());
    for block in blocks {
        farmwatch::config::parse_toml::<farmwatch::config::Config>(Path::new("README.md"), &block)
            .unwrap_or_else(|e| panic!("README example does not parse: {e}\n{block}"));
    }
}

#[test]
fn every_metric_the_readme_lists_is_exported() {
    let metrics = farmwatch::metrics::Metrics::new();
    let mut stats = farmwatch::metrics::Stats::default();
    stats.last_packet_ts = Some(1.0);
    stats.remote_desktop_active.insert(("rdp", "jdoe".into()), 1);
    stats.account_risk.insert("jdoe".into(), 50.0);
    stats.decode_errors.insert("not_ip", 1);
    stats.flows_evicted.insert("table_full", 1);
    stats.flows_by_app.insert("rdp", 1);
    stats.events.insert(("alert", "laptop_farm_suspected", "high"), 1);
    metrics.publish(&stats, 2.0);
    let text = metrics.render();
    let readme = readme();
    let listed: Vec<&str> = readme
        .split('`')
        .filter(|w| w.starts_with("farmwatch_") && !w.contains('{') && !w.contains(' '))
        .collect();
    assert!(listed.len() >= 15);
    for name in listed {
        assert!(text.contains(&format!("# TYPE {name} ")), "README lists {name}, which is not exported");
    }
}
