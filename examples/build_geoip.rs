//! Rebuilds the databases in `geoip/` from their readable sources.
//!
//! ```text
//! cargo run --example build_geoip -- test geoip/test/test-geo.json geoip/test/test-geo.mmdb
//! cargo run --release --example build_geoip -- asn <unpacked @ip-location-db/asn>/package geoip/asn.mmdb <build_epoch>
//! ```

use std::process::ExitCode;

use farmwatch::geo::writer;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["test", src, out] => std::fs::read_to_string(src)
            .map_err(|e| format!("{src}: {e}"))
            .and_then(|json| writer::build_from_json(&json))
            .and_then(|db| std::fs::write(out, db).map_err(|e| format!("{out}: {e}"))),
        ["asn", dir, out, epoch] => (|| {
            let epoch: u64 = epoch.parse().map_err(|_| "build_epoch: not a number")?;
            let v4 = std::fs::read_to_string(format!("{dir}/asn-ipv4.csv"))
                .map_err(|e| e.to_string())?;
            let v6 = std::fs::read_to_string(format!("{dir}/asn-ipv6.csv"))
                .map_err(|e| e.to_string())?;
            let (db, skipped) = writer::build_asn_from_csv(&[&v4, &v6], epoch);
            eprintln!("{} bytes, {skipped} unreadable lines skipped", db.len());
            std::fs::write(out, db).map_err(|e| format!("{out}: {e}"))
        })(),
        _ => Err(
            "usage: build_geoip test <json> <out.mmdb> | asn <csv dir> <out.mmdb> <build_epoch>"
                .into(),
        ),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("build_geoip: {e}");
            ExitCode::from(2)
        }
    }
}
