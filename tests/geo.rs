//! Geo lookups against the embedded databases and the test database in geoip/test/.

use std::net::IpAddr;
use std::path::PathBuf;

use farmwatch::geo::{Category, Geo, GeoConfig, LocationSource, run_geoip, writer};

fn repo(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// The test database serves as city, country and ASN database at once.
fn test_geo() -> Geo {
    let db = repo("geoip/test/test-geo.mmdb");
    Geo::open(&GeoConfig {
        country: Some(db.clone()),
        asn: Some(db.clone()),
        city: Some(db),
        hosting_asns: Some(repo("geoip/test/hosting-asns.csv")),
        ..GeoConfig::default()
    })
    .unwrap()
}

#[test]
fn embedded_answers_google_dns() {
    let geo = Geo::embedded().unwrap();
    let info = geo.lookup(ip("8.8.8.8"));
    assert_eq!(info.country.as_deref(), Some("US"));
    assert_eq!(info.asn, Some(15169));
    assert_eq!(info.as_org.as_deref(), Some("Google LLC"));
    let loc = info.location.unwrap();
    assert_eq!(loc.source, LocationSource::CountryCentroid);
    assert_eq!(loc.radius_km, 2600.0);
    // IPv6 and the IPv4-mapped form answer too.
    assert_eq!(geo.lookup(ip("2001:4860:4860::8888")).asn, Some(15169));
    assert_eq!(
        geo.lookup(ip("::ffff:8.8.8.8")).country.as_deref(),
        Some("US")
    );
}

#[test]
fn embedded_has_nothing_for_private_or_documentation_ranges() {
    let geo = Geo::embedded().unwrap();
    for a in [
        "10.8.0.12",
        "192.168.1.1",
        "100.64.1.1",
        "192.0.2.1",
        "2001:db8::1",
        "fd00::1",
    ] {
        let info = geo.lookup(ip(a));
        assert_eq!(info.country, None, "{a}");
        assert_eq!(info.asn, None, "{a}");
    }
}

#[test]
fn embedded_hosting_list() {
    let geo = Geo::embedded().unwrap();
    assert_eq!(geo.asn_category(14061), Some(Category::Hosting));
    assert_eq!(geo.asn_category(39351), Some(Category::Vpn));
    assert_eq!(geo.asn_category(7922), None);
    assert!(geo.is_high_risk("KP"));
    assert!(!geo.is_high_risk("DE"));
}

#[test]
fn test_database_answers_documented_mapping() {
    let geo = test_geo();
    let cases = [
        ("192.0.2.1", "US", Some("Chicago"), 7922),
        ("192.0.2.17", "US", Some("Dallas"), 7018),
        ("192.0.2.33", "DE", Some("Berlin"), 3320),
        ("192.0.2.49", "FR", Some("Paris"), 3215),
        ("192.0.2.65", "CN", Some("Shenyang"), 4837),
        ("192.0.2.81", "KP", Some("Pyongyang"), 131279),
        ("192.0.2.97", "RU", Some("Moscow"), 12389),
        ("192.0.2.113", "US", Some("Dallas"), 64501),
        ("192.0.2.129", "DE", Some("Frankfurt am Main"), 14061),
        ("192.0.2.145", "PL", None, 5617),
        ("192.0.2.161", "US", None, 7922),
        ("2001:db8:1::5", "US", Some("Chicago"), 7922),
        ("2001:db8:2::5", "DE", Some("Berlin"), 3320),
        ("2001:db8:3::5", "CN", Some("Shenyang"), 4837),
        ("2001:db8:4::5", "US", Some("Dallas"), 64501),
    ];
    for (a, cc, city, asn) in cases {
        let info = geo.lookup(ip(a));
        assert_eq!(info.country.as_deref(), Some(cc), "{a}");
        assert_eq!(info.city.as_deref(), city, "{a}");
        assert_eq!(info.asn, Some(asn), "{a}");
        let loc = info.location.unwrap();
        let want = if city.is_some() {
            LocationSource::City
        } else {
            LocationSource::CountryCentroid
        };
        assert_eq!(loc.source, want, "{a}");
    }
    let chicago = geo.lookup(ip("192.0.2.1")).location.unwrap();
    assert_eq!(
        (chicago.lat, chicago.lon, chicago.radius_km),
        (41.8781, -87.6298, 20.0)
    );
    assert_eq!(geo.asn_category(64501), Some(Category::Vpn));
    assert_eq!(geo.asn_category(14061), Some(Category::Hosting));
    // Unmapped documentation space stays unknown.
    assert_eq!(geo.lookup(ip("203.0.113.5")), Default::default());
}

#[test]
fn test_database_rebuilds_byte_for_byte() {
    let json = std::fs::read_to_string(repo("geoip/test/test-geo.json")).unwrap();
    let built = writer::build_from_json(&json).unwrap();
    let path = repo("geoip/test/test-geo.mmdb");
    if std::env::var_os("FARMWATCH_BLESS").is_some() {
        std::fs::write(&path, &built).unwrap();
    }
    let committed = std::fs::read(&path).unwrap();
    assert!(
        built == committed,
        "geoip/test/test-geo.mmdb is stale: rerun with FARMWATCH_BLESS=1"
    );
}

#[test]
fn cache_evicts_in_insertion_order() {
    let geo = test_geo();
    let n = farmwatch::geo::CACHE_CAPACITY as u32 + 3;
    for i in 0..n {
        // 20.0.0.0/8 and up: public addresses the test database has no data for.
        geo.lookup(IpAddr::from((0x1400_0000u32 + i).to_be_bytes()));
    }
    assert_eq!(geo.cache_evictions(), 3);
}

#[test]
fn geoip_output_lines() {
    let geo = test_geo();
    let mut out = Vec::new();
    run_geoip(
        &geo,
        &[ip("192.0.2.113"), ip("192.0.2.145"), ip("10.8.0.12")],
        &mut out,
    )
    .unwrap();
    let text = String::from_utf8(out).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines,
        [
            "192.0.2.113  country US  city Dallas  AS64501 \"Astrill VPN (test stand-in)\"  network vpn  at 32.7767,-96.7970 ±20 km (city)",
            "192.0.2.145  country PL  AS5617 \"Orange Polska Spolka Akcyjna\"  at 52.0000,20.0000 ±450 km (country centroid)",
            "10.8.0.12  not a public address (no location)",
        ]
    );
}

#[test]
fn config_rejects_unknown_keys_and_bad_countries() {
    let err = toml::from_str::<GeoConfig>("countries = \"x\"").unwrap_err();
    assert!(err.to_string().contains("unknown field"), "{err}");
    let cfg: GeoConfig = toml::from_str("high_risk_countries = [\"ZZ\"]").unwrap();
    let err = Geo::open(&cfg).err().unwrap();
    assert!(err.0.contains("\"ZZ\""), "{err}");
    let cfg: GeoConfig = toml::from_str("").unwrap();
    assert_eq!(cfg.high_risk_countries, ["KP", "CN", "RU", "IR"]);
}

#[test]
fn missing_database_is_an_error() {
    let cfg = GeoConfig {
        asn: Some(repo("geoip/test/no-such.mmdb")),
        ..GeoConfig::default()
    };
    assert!(Geo::open(&cfg).is_err());
}
