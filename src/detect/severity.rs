//! Severity policy: how much one fact weighs depends on whose account it is about. A
//! contractor connecting from a hosting network is the farm pattern (the laptop sits in a
//! data centre, or behind a VPN exit hiding where its user is); an employee doing it is
//! more often privacy-minded, and a service account runs there anyway.
//!
//! The policy is one table, per account kind and reason, of the severity a finding about
//! such an account is given; a reason the table does not name keeps its detector's
//! severity (which may grade its evidence, as `rtt_split` does). The account stage applies
//! it when it names the account of a finding; findings about no inventoried account are
//! left as raised. `[detect.severity.<kind>]` overrides or adds entries.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::accounts::AccountKind;
use crate::event::Severity;

/// The built-in entries: (kind, reason, severity).
const DEFAULTS: &[(AccountKind, &str, Severity)] = &[
    // Geo detectors raise it at low for anyone; for a contractor it is the farm pattern.
    (AccountKind::Contractor, "hosting_asn", Severity::Medium),
];

/// `[detect.severity]`: per account kind, reason → severity.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SeverityConfig {
    pub contractor: BTreeMap<String, Severity>,
    pub employee: BTreeMap<String, Severity>,
    pub service: BTreeMap<String, Severity>,
}

impl SeverityConfig {
    fn entries(&self) -> impl Iterator<Item = (AccountKind, &String, Severity)> {
        [
            (AccountKind::Contractor, &self.contractor),
            (AccountKind::Employee, &self.employee),
            (AccountKind::Service, &self.service),
        ]
        .into_iter()
        .flat_map(|(k, m)| m.iter().map(move |(r, s)| (k, r, *s)))
    }

    /// Every reason named must be one a finding can carry.
    pub fn validate(&self) -> Result<(), String> {
        for (kind, reason, _) in self.entries() {
            if !super::reasons().any(|r| r.name == reason) {
                return Err(format!(
                    "{}.{reason}: no finding has this reason",
                    kind.as_str()
                ));
            }
        }
        Ok(())
    }
}

/// The table, built once from the defaults and `[detect.severity]`.
#[derive(Clone, Debug, Default)]
pub struct SeverityPolicy {
    table: BTreeMap<(AccountKind, String), Severity>,
}

impl SeverityPolicy {
    pub fn new(config: &SeverityConfig) -> SeverityPolicy {
        let defaults = DEFAULTS.iter().map(|(k, r, s)| ((*k, r.to_string()), *s));
        let configured = config.entries().map(|(k, r, s)| ((k, r.clone()), s));
        SeverityPolicy {
            table: defaults.chain(configured).collect(),
        }
    }

    /// The severity of a finding with `reason` about an account of `kind`, raised at
    /// `raised`.
    pub fn severity(&self, kind: AccountKind, reason: &str, raised: Severity) -> Severity {
        self.table
            .get(&(kind, reason.to_string()))
            .copied()
            .unwrap_or(raised)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kind_decides_and_the_config_overrides() {
        let policy = SeverityPolicy::new(&SeverityConfig::default());
        let c = AccountKind::Contractor;
        assert_eq!(
            policy.severity(c, "hosting_asn", Severity::Low),
            Severity::Medium
        );
        let e = AccountKind::Employee;
        assert_eq!(
            policy.severity(e, "hosting_asn", Severity::Low),
            Severity::Low
        );
        assert_eq!(
            policy.severity(c, "rtt_split", Severity::Low),
            Severity::Low
        );

        let config: SeverityConfig = toml::from_str(
            "[contractor]\nhosting_asn = \"high\"\n[service]\nhosting_asn = \"info\"\n",
        )
        .unwrap();
        config.validate().unwrap();
        let policy = SeverityPolicy::new(&config);
        assert_eq!(
            policy.severity(c, "hosting_asn", Severity::Low),
            Severity::High
        );
        let s = AccountKind::Service;
        assert_eq!(
            policy.severity(s, "hosting_asn", Severity::Low),
            Severity::Info
        );
    }

    #[test]
    fn unknown_kinds_reasons_and_levels_are_refused() {
        assert!(toml::from_str::<SeverityConfig>("[vendor]\nhosting_asn = \"low\"\n").is_err());
        assert!(
            toml::from_str::<SeverityConfig>("[employee]\nhosting_asn = \"urgent\"\n").is_err()
        );
        let config: SeverityConfig = toml::from_str("[employee]\nhostingasn = \"low\"\n").unwrap();
        assert_eq!(
            config.validate().unwrap_err(),
            "employee.hostingasn: no finding has this reason"
        );
    }
}
