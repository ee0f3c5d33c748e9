//! The account inventory: strict loading with exact problem lines, inventory findings.

use std::path::PathBuf;

use farmwatch::accounts::{AccountKind, Inventory, check, inventory_events, run_check};
use farmwatch::event::Kind;
use farmwatch::timestamp::Timestamp;

const GOOD: &str = r#"# two contractors and an employee
[[account]]
id = "jdoe"
kind = "contractor"
name = "J. Doe"
declared_country = "US"
declared_timezone = "America/Chicago"
phone = "+1 312 555 0142"
hosts = ["10.8.0.12"]

[[account]]
id = "mmuster"
kind = "employee"
declared_country = "DE"
declared_timezone = "Europe/Berlin"
allowed_countries = ["DE", "FR"]
hosts = ["10.20.1.0/28", "fd00:20::/64"]

[[account]]
id = "svc-backup"
kind = "service"
"#;

fn problems(text: &str) -> Vec<String> {
    Inventory::parse(text, "accounts.toml")
        .expect_err("inventory should be rejected")
        .iter()
        .map(|p| p.to_string())
        .collect()
}

#[test]
fn good_inventory_loads() {
    let inv = Inventory::parse(GOOD, "accounts.toml").unwrap();
    assert_eq!(inv.accounts.len(), 3);
    let jdoe = inv.get("jdoe").unwrap();
    assert_eq!(jdoe.kind, AccountKind::Contractor);
    assert_eq!(jdoe.allowed_countries, ["US"]);
    assert_eq!(jdoe.timezone, Some(chrono_tz::America::Chicago));
    assert_eq!(jdoe.line, 2);
    let m = inv.get("mmuster").unwrap();
    assert_eq!(m.allowed_countries, ["DE", "FR"]);
    assert_eq!(
        inv.static_owner("10.20.1.5".parse().unwrap()).unwrap().id,
        "mmuster"
    );
    assert_eq!(
        inv.static_owner("fd00:20::9".parse().unwrap()).unwrap().id,
        "mmuster"
    );
    assert!(inv.static_owner("10.20.1.16".parse().unwrap()).is_none());
    assert!(inv.findings().is_empty());
    assert!(inventory_events(&inv, Timestamp::ZERO).is_empty());
}

#[test]
fn every_problem_is_reported_with_line_and_field() {
    let text = r#"[[account]]
id = "a"
kind = "contractor"
hosts = ["10.8.0.0/24", "10.8.0.999"]
allowed_countries = ["US", "XX"]

[[account]]
id = "a"
kind = "freelancer"
hosts = ["10.8.0.12", "10.9.0.1/16"]
"#;
    assert_eq!(
        problems(text),
        [
            r#"accounts.toml:4: account[0].hosts[1]: "10.8.0.999" is not an IP address or CIDR"#,
            r#"accounts.toml:5: account[0].allowed_countries[1]: "XX" is not an ISO 3166-1 alpha-2 code"#,
            r#"accounts.toml:8: account[1].id: duplicate id "a" (first at line 1)"#,
            r#"accounts.toml:9: account[1].kind: "freelancer" is not contractor, employee or service"#,
            r#"accounts.toml:10: account[1].hosts[0]: 10.8.0.12 overlaps 10.8.0.0/24 of account "a" (line 4)"#,
            r#"accounts.toml:10: account[1].hosts[1]: "10.9.0.1/16" is not an IP address or CIDR"#,
        ]
    );
}

#[test]
fn unknown_keys_and_syntax_errors_have_lines() {
    let text = "[[account]]\nid = \"a\"\nkind = \"service\"\nphone_number = \"+1\"\n";
    let p = problems(text);
    assert_eq!(p.len(), 1);
    assert!(
        p[0].starts_with("accounts.toml:4: unknown field `phone_number`"),
        "{p:?}"
    );
    let p = problems("[[account]]\nid = \"a\"\nkind = \n");
    assert!(p[0].starts_with("accounts.toml:3: "), "{p:?}");
    let p = problems("[[account]]\nkind = \"service\"\n");
    assert!(p[0].contains("missing field `id`"), "{p:?}");
}

#[test]
fn declared_data_findings_become_inventory_events() {
    let text = r#"[[account]]
id = "ok"
kind = "contractor"
declared_country = "US"
phone = "+1 312 555 0142"

[[account]]
id = "cn-phone"
kind = "contractor"
declared_country = "US"
phone = "+86 138 0013 8000"

[[account]]
id = "no-plus"
kind = "contractor"
declared_country = "US"
declared_timezone = "America/Chicgo"
phone = "312-555-0142"

[[account]]
id = "nowhere"
kind = "employee"
declared_country = "XX"
"#;
    let inv = Inventory::parse(text, "accounts.toml").unwrap();
    let events = inventory_events(&inv, Timestamp::from_secs(1_762_092_191));
    let got: Vec<(&str, Option<&str>, Option<u64>)> = events
        .iter()
        .map(|e| {
            assert_eq!(e.kind, Kind::Inventory);
            (
                e.reason,
                e.account.as_deref(),
                e.evidence.get("line").and_then(|v| v.as_u64()),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("phone_format", Some("cn-phone"), Some(11)),
            ("unknown_timezone", Some("no-plus"), Some(17)),
            ("phone_format", Some("no-plus"), Some(18)),
            ("unknown_country", Some("nowhere"), Some(23)),
        ]
    );
    assert_eq!(
        events[0].evidence["detail"],
        "calling code +86 does not fit declared country US (+1)"
    );
    // Allowed countries default to the declared one even when it is unknown.
    assert_eq!(inv.get("nowhere").unwrap().allowed_countries, ["XX"]);
}

#[test]
fn check_lists_problems_and_findings() {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let good = dir.join("accounts-good.toml");
    std::fs::write(&good, GOOD).unwrap();
    assert_eq!(check(&good), (vec![], true));

    let bad = dir.join("accounts-bad.toml");
    std::fs::write(
        &bad,
        "[[account]]\nid = \"x\"\nkind = \"employee\"\nphone = \"555\"\n",
    )
    .unwrap();
    let (lines, ok) = check(&bad);
    assert!(!ok);
    assert_eq!(
        lines,
        [format!(
            "{}:4: account[0].phone: \"555\" is not E.164: no +country code (phone_format)",
            bad.display()
        )]
    );

    let mut out = Vec::new();
    assert!(!run_check(&bad, &mut out).unwrap());
    assert_eq!(String::from_utf8(out).unwrap(), format!("{}\n", lines[0]));

    let missing = dir.join("no-such-accounts.toml");
    let (lines, ok) = check(&missing);
    assert!(!ok);
    assert_eq!(lines.len(), 1);
}
