//! The README stays true: every `farmwatch.toml` example in it parses with the real config
//! types (unknown keys are errors there), every metric name it lists is exported, each
//! command's section documents exactly the options its `--help` lists, and every
//! `$ farmwatch ...` example runs and prints what the README shows.

mod support;

use std::collections::BTreeSet;
use std::path::Path;

fn readme() -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"))
        .expect("README.md")
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
    // The publish and correlate families appear with --publish and in correlate.
    let mut stats = farmwatch::metrics::Stats {
        last_packet_ts: Some(1.0),
        publish: Some(Default::default()),
        correlate: Some(Default::default()),
        ..Default::default()
    };
    stats
        .remote_desktop_active
        .insert(("rdp", "jdoe".into()), 1);
    stats.account_risk.insert("jdoe".into(), 50.0);
    stats.decode_errors.insert("not_ip", 1);
    stats.flows_evicted.insert("table_full", 1);
    stats.flows_by_app.insert("rdp", 1);
    stats
        .events
        .insert(("alert", "laptop_farm_suspected", "high"), 1);
    metrics.publish(&stats, 2.0);
    let text = metrics.render();
    let readme = readme();
    let listed: Vec<&str> = readme
        .split('`')
        .filter(|w| w.starts_with("farmwatch_") && !w.contains('{') && !w.contains(' '))
        .collect();
    assert!(listed.len() >= 15);
    for name in listed {
        assert!(
            text.contains(&format!("# TYPE {name} ")),
            "README lists {name}, which is not exported"
        );
    }
}

/// `--option` names in `text` (inside backticks, as the README writes them).
fn options_in(text: &str) -> BTreeSet<String> {
    text.split('`')
        .skip(1)
        .step_by(2)
        .flat_map(|code| code.split([' ', '/', '=', '[', ']']))
        .filter(|w| w.starts_with("--") && w.len() > 2)
        .map(|w| w.trim_end_matches(['.', ',']).to_string())
        .collect()
}

/// The sections `### \`farmwatch CMD ...\``: (CMD, the section's text).
fn command_sections(readme: &str) -> Vec<(String, String)> {
    readme
        .split("\n### `farmwatch ")
        .skip(1)
        .map(|section| {
            let cmd = section.split([' ', '`']).next().unwrap_or("").to_string();
            let body = section.split("\n## ").next().unwrap_or("");
            let body = format!("`farmwatch {body}");
            (cmd, body)
        })
        .collect()
}

#[test]
fn each_command_section_documents_exactly_the_options_of_its_help() {
    let readme = readme();
    let sections = command_sections(&readme);
    let names: Vec<&str> = sections.iter().map(|(c, _)| c.as_str()).collect();
    assert_eq!(names, ["replay", "live", "geoip", "check", "sessions"]);
    for (cmd, body) in &sections {
        let out = support::run(&[cmd, "--help"]);
        assert!(out.status.success(), "farmwatch {cmd} --help");
        let help = String::from_utf8_lossy(&out.stdout);
        let in_help: BTreeSet<String> = help
            .lines()
            .filter_map(|l| {
                let l = l.trim_start();
                let l = l.strip_prefix("-h, ").unwrap_or(l);
                l.starts_with("--")
                    .then(|| l.split([' ', '\t']).next().unwrap().to_string())
            })
            .filter(|o| o != "--help" && o != "--version")
            .collect();
        // The heading and the option tables' first cells; prose may name other options.
        let heading = body.lines().next().unwrap_or("");
        let cells: Vec<String> = body
            .lines()
            .filter_map(|l| l.strip_prefix('|'))
            .map(|row| row.replace("\\|", "/"))
            .filter_map(|row| row.split('|').next().map(str::to_string))
            // Option rows; other tables (figures, fields) may quote other tools' options.
            .filter(|cell| cell.trim_start().starts_with("`--"))
            .collect();
        let documented = options_in(&format!("{heading}\n{}", cells.join("\n")));
        assert_eq!(
            documented, in_help,
            "the README's `farmwatch {cmd}` section documents (left) other options than --help lists (right)"
        );
    }
}

#[test]
fn every_command_example_runs_and_prints_what_the_readme_shows() {
    let readme = readme();
    let mut examples = 0;
    // Lines inside fenced blocks; an example is `$ farmwatch ...` and the lines after it.
    let mut fenced = Vec::new();
    let mut inside = false;
    for line in readme.lines() {
        if line.starts_with("```") {
            inside = !inside;
            fenced.push(None);
        } else if inside {
            fenced.push(Some(line));
        }
    }
    let mut lines = fenced.into_iter().peekable();
    while let Some(line) = lines.next() {
        let Some(command) = line.and_then(|l| l.strip_prefix("$ farmwatch ")) else {
            continue;
        };
        {
            let mut shown = Vec::new();
            while let Some(Some(next)) = lines.next_if(|l| l.is_some_and(|l| !l.starts_with("$ ")))
            {
                shown.push(next);
            }
            let args: Vec<&str> = command.split_whitespace().collect();
            let out = std::process::Command::new(support::bin())
                .args(&args)
                .current_dir(env!("CARGO_MANIFEST_DIR"))
                .output()
                .expect("run farmwatch");
            let printed = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            for want in shown {
                assert!(
                    printed.lines().any(|l| l == want),
                    "`farmwatch {command}` did not print\n{want}\nbut:\n{printed}"
                );
            }
            examples += 1;
        }
    }
    assert!(examples >= 3, "found {examples} examples");
}
