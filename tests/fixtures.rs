//! The committed fixtures are exactly what the generator writes: regenerate them into a
//! temporary directory and compare byte for byte. After changing the generator, run
//! `cargo run -p fixturegen` and commit the result.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Files under `dir` (relative paths), skipping the generator's sources and the README.
fn files(dir: &Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for sub in ["", "expected", "geo", "expected/geo"] {
        for entry in std::fs::read_dir(dir.join(sub)).unwrap() {
            let entry = entry.unwrap();
            if entry.file_type().unwrap().is_file() {
                let name = entry.file_name().into_string().unwrap();
                if name != "README.md" {
                    out.insert(if sub.is_empty() {
                        name
                    } else {
                        format!("{sub}/{name}")
                    });
                }
            }
        }
    }
    out
}

#[test]
fn committed_fixtures_match_the_generator() {
    let committed = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures");
    let fresh = std::env::temp_dir().join(format!("farmwatch-fixtures-{}", std::process::id()));
    let written: BTreeSet<String> = fixturegen::write_fixtures(&fresh)
        .unwrap()
        .into_iter()
        .collect();
    assert_eq!(files(&fresh), written);

    let mut problems = Vec::new();
    for name in &written {
        match std::fs::read(committed.join(name)) {
            Ok(bytes) if bytes == std::fs::read(fresh.join(name)).unwrap() => {}
            Ok(_) => problems.push(format!("{name}: differs from the generator's output")),
            Err(e) => problems.push(format!("{name}: {e}")),
        }
    }
    for stale in files(&committed).difference(&written) {
        problems.push(format!("{stale}: committed but no longer generated"));
    }
    std::fs::remove_dir_all(&fresh).unwrap();
    assert!(
        problems.is_empty(),
        "run `cargo run -p fixturegen` and commit:\n{}",
        problems.join("\n")
    );
}
