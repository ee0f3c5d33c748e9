//! tshark decodes every fixture as intended: the protocols and field values each fixture
//! is for are present, the frame count is the generator's, and nothing is malformed or
//! flagged at error severity. With `CI=true` a missing tshark fails the test.

mod support;

use std::path::PathBuf;
use std::process::Command;

const BASIC: &[&str] = &["eth", "ip", "tcp", "http", "ipv6", "udp", "dns"];

/// A tshark field and a value some frame must have ("" = any value).
type Check = (&'static str, &'static str);

/// A fixture, tokens that must appear in some frame's `frame.protocols`, and field checks.
type Intent = (&'static str, &'static [&'static str], &'static [Check]);

const INTENT: &[Intent] = &[
    (
        "pcap-le-us.pcap",
        BASIC,
        &[("frame.time_epoch", "1793628000.010000000")],
    ),
    (
        "pcap-be-us.pcap",
        BASIC,
        &[("frame.time_epoch", "1793628000.010000000")],
    ),
    (
        "pcap-le-ns.pcap",
        BASIC,
        &[("frame.time_epoch", "1793628000.010000321")],
    ),
    ("pcap-le-us.pcap.gz", BASIC, &[]),
    (
        "two-interfaces.pcapng",
        &["eth", "raw", "tcp", "http", "ipv6", "dns"],
        &[
            ("frame.interface_id", "1"),
            ("frame.encap_type", "7"),
            ("frame.time_epoch", "1793628000.000000789"),
        ],
    ),
    (
        "sll.pcap",
        &["sll", "ip", "tcp", "ipv6", "dns"],
        &[("sll.pkttype", "4"), ("frame.encap_type", "25")],
    ),
    (
        "sll2.pcap",
        &["sll", "ip", "tcp", "ipv6", "dns"],
        &[("sll.ifindex", "3"), ("frame.encap_type", "210")],
    ),
    ("raw-ip.pcap", &["raw", "ip", "tcp", "ipv6", "dns"], &[]),
    (
        "linktype-ipv4.pcap",
        &["ip", "tcp", "http"],
        &[("frame.encap_type", "129")],
    ),
    (
        "linktype-ipv6.pcap",
        &["ipv6", "tcp", "http", "dns"],
        &[("frame.encap_type", "130")],
    ),
    (
        "null-le.pcap",
        &["null", "ip", "ipv6", "dns"],
        &[("null.family", "30")],
    ),
    (
        "null-be.pcap",
        &["null", "ip", "ipv6", "dns"],
        &[("null.family", "24")],
    ),
    (
        "vlan-qinq.pcap",
        &["vlan", "ieee8021ad", "http", "dns"],
        &[
            ("vlan.id", "100"),
            ("ieee8021ad.id", "200"),
            ("vlan.id", "300"),
        ],
    ),
    (
        "ipv4-fragments.pcap",
        &["ip", "udp"],
        &[("ip.flags.mf", "1"), ("udp.length", "3008")],
    ),
    (
        "ipv6-ext-fragments.pcap",
        &["ipv6.hopopts", "ipv6.dstopts", "ipv6.fraghdr", "udp"],
        &[("udp.length", "2008")],
    ),
    (
        "gre.pcap",
        &["gre", "ip", "tcp", "http"],
        &[("gre.proto", "0x0800")],
    ),
    (
        "erspan2.pcap",
        &["gre", "erspan", "tcp", "http"],
        &[("erspan.version", "1"), ("erspan.spanid", "101")],
    ),
    (
        "erspan3.pcap",
        &["gre", "erspan", "tcp", "http"],
        &[("erspan.version", "2"), ("erspan.spanid", "102")],
    ),
    (
        "vxlan.pcap",
        &["vxlan", "tcp", "http"],
        &[("vxlan.vni", "4242")],
    ),
    (
        "geneve.pcap",
        &["geneve", "tcp", "http"],
        &[("geneve.vni", "0x001093")],
    ),
    (
        "icmp.pcap",
        &["icmp", "icmpv6"],
        &[("icmp.type", "0"), ("icmpv6.type", "129")],
    ),
    ("snaplen-64.pcap", &["tcp"], &[("frame.cap_len", "64")]),
    (
        "tcp-states.pcap",
        &["tcp", "http"],
        &[
            ("tcp.flags.reset", "1"),
            ("tcp.flags.fin", "1"),
            ("tcp.analysis.keep_alive", ""),
            ("tcp.dstport", "8443"),
        ],
    ),
    (
        "geo/week.pcap",
        &["radius", "tcp", "ssh"],
        &[
            ("radius.code", "4"),
            ("radius.Calling_Station_Id", "192.0.2.66"),
            ("tcp.dstport", "443"),
        ],
    ),
];

/// Fixtures that are broken on purpose; tshark rejects or flags them.
const BROKEN: &[&str] = &["truncated.pcap", "not-a-capture.pcap"];

/// Expert severity of "Error" (epan/proto.h PI_ERROR).
const PI_ERROR: u64 = 0x0080_0000;

fn tshark() -> Option<&'static str> {
    let found = Command::new("tshark")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if found {
        return Some("tshark");
    }
    support::require(false, "tshark");
    None
}

#[test]
fn tshark_decodes_every_fixture_as_intended() {
    let Some(tshark) = tshark() else { return };
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures");
    // Captures only: scenarios also write their inventory, config and session log.
    let fixtures: Vec<_> = fixturegen::foundation::all()
        .into_iter()
        .chain(fixturegen::scenarios_geo::all())
        .filter(|f| !f.name.ends_with(".toml") && !f.name.ends_with(".jsonl"))
        .collect();
    let mut problems = Vec::new();
    for f in &fixtures {
        if BROKEN.contains(&f.name) {
            continue;
        }
        let Some((_, protocols, fields)) = INTENT.iter().find(|(n, ..)| *n == f.name) else {
            problems.push(format!("{}: no intent declared in this test", f.name));
            continue;
        };
        let mut cmd = Command::new(tshark);
        cmd.arg("-r").arg(dir.join(f.name)).args([
            "-T",
            "fields",
            "-E",
            "separator=\t",
            "-E",
            "occurrence=a",
        ]);
        cmd.args([
            "-e",
            "frame.protocols",
            "-e",
            "_ws.malformed",
            "-e",
            "_ws.expert.severity",
        ]);
        // One column per distinct field (tshark prints a repeated -e once).
        let mut columns: Vec<&str> = Vec::new();
        for (field, _) in *fields {
            if !columns.contains(field) {
                columns.push(field);
                cmd.args(["-e", field]);
            }
        }
        let out = cmd.output().expect("run tshark");
        if !out.status.success() {
            problems.push(format!(
                "{}: tshark failed: {}",
                f.name,
                String::from_utf8_lossy(&out.stderr)
            ));
            continue;
        }
        let text = String::from_utf8(out.stdout).expect("tshark writes UTF-8");
        let rows: Vec<Vec<&str>> = text.lines().map(|l| l.split('\t').collect()).collect();
        let expected = f.expected.as_ref().expect("captures have expectations");
        if rows.len() as u64 != expected.frames {
            problems.push(format!(
                "{}: tshark read {} frames, generator wrote {}",
                f.name,
                rows.len(),
                expected.frames
            ));
        }
        for (i, row) in rows.iter().enumerate() {
            let col = |n: usize| row.get(n).copied().unwrap_or("");
            if !col(1).is_empty() {
                problems.push(format!(
                    "{} frame {}: malformed ({})",
                    f.name,
                    i + 1,
                    col(0)
                ));
            }
            let worst = col(2)
                .split(',')
                .filter_map(|s| s.parse::<u64>().ok())
                .max()
                .unwrap_or(0);
            if worst >= PI_ERROR {
                problems.push(format!(
                    "{} frame {}: expert info of error severity",
                    f.name,
                    i + 1
                ));
            }
        }
        for p in *protocols {
            if !rows.iter().any(|r| r[0].split(':').any(|t| t == *p)) {
                problems.push(format!("{}: no frame with protocol {p}", f.name));
            }
        }
        for (field, value) in *fields {
            let k = columns
                .iter()
                .position(|c| c == field)
                .expect("every field has a column");
            let present = rows.iter().any(|r| {
                let v = r.get(3 + k).copied().unwrap_or("");
                if value.is_empty() {
                    !v.is_empty()
                } else {
                    v.split(',').any(|x| x == *value)
                }
            });
            if !present {
                problems.push(format!("{}: no frame with {field} = {value:?}", f.name));
            }
        }
    }
    for (name, ..) in INTENT {
        if !fixtures.iter().any(|f| f.name == *name) {
            problems.push(format!("{name}: declared here but not generated"));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn tshark_rejects_the_broken_fixtures() {
    let Some(tshark) = tshark() else { return };
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures");
    for (name, says) in [
        ("truncated.pcap", "cut short in the middle of a packet"),
        ("not-a-capture.pcap", "isn't a capture file"),
    ] {
        let out = Command::new(tshark)
            .arg("-r")
            .arg(dir.join(name))
            .output()
            .expect("run tshark");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(says), "{name}: tshark said {err}");
    }
}
