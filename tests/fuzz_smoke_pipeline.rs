//! The whole packet path takes hostile bytes without panicking: every frame of the
//! committed fixtures (link types, tunnels, fragments, the detector scenarios) is mutated
//! by a seeded xorshift and pushed through a pipeline (decode, flows, dissectors,
//! detectors), and mutated capture files go through the file reader. A deterministic,
//! cheap guard in `cargo test`; the cargo-fuzz targets in fuzz/ cover the dissectors deeper.

mod support;

use std::path::Path;
use support::Rng;

use farmwatch::account_stage::{Context, Sinks};
use farmwatch::config::Config;
use farmwatch::engine::Engine;
use farmwatch::source::{FileReader, LinkType, OwnedPacket};

/// Mutation rounds over all fixture frames (`FW_FUZZ_ROUNDS` and `FW_FUZZ_SEED` make a longer, different run).
const ROUNDS: usize = 4;

/// One to four edits: bit flips, boundary bytes, truncation, duplication of a slice.
fn mutate(rng: &mut Rng, seed: &[u8]) -> Vec<u8> {
    let mut b = seed.to_vec();
    for _ in 0..1 + rng.below(4) {
        let at = rng.below(b.len());
        match rng.below(5) {
            0 if !b.is_empty() => b[at] ^= 1 << rng.below(8),
            1 if !b.is_empty() => b[at] = [0, 1, 0x7f, 0x80, 0xff][rng.below(5)],
            2 => b.truncate(at),
            3 if !b.is_empty() => {
                let end = (at + 1 + rng.below(64)).min(b.len());
                let piece = b[at..end].to_vec();
                b.splice(at..at, piece);
            }
            _ => b.push(rng.next() as u8),
        }
    }
    b
}

fn fixture_packets() -> Vec<OwnedPacket> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures");
    let mut packets = Vec::new();
    let mut names: Vec<_> = std::fs::read_dir(&dir)
        .expect("fixtures")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "pcap" || x == "pcapng"))
        .collect();
    names.sort();
    for path in names {
        let Ok(mut reader) = FileReader::open(&path) else {
            continue;
        };
        while let Ok(true) = reader.advance() {
            packets.extend(reader.packet().map(OwnedPacket::from));
        }
    }
    packets
}

#[test]
fn mutated_frames_never_panic_the_pipeline() {
    let packets = fixture_packets();
    assert!(
        packets.len() > 1000,
        "only {} fixture packets",
        packets.len()
    );
    let config = Config::default();
    let context = Context::load(&config, None, None).expect("embedded geo");
    // Two flow workers: the merge and the account stage take the mutated stream too.
    let mut engine = Engine::new(&config, context, Sinks::default(), None, 2);
    let seed = std::env::var("FW_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok());
    let mut rng = Rng(seed.unwrap_or(0x5eed_f00d));
    let links = [
        LinkType::ETHERNET,
        LinkType::RAW,
        LinkType::LINUX_SLL2,
        LinkType::NULL,
    ];
    let rounds: usize = std::env::var("FW_FUZZ_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(ROUNDS);
    for round in 0..rounds {
        for p in &packets {
            let mut m = p.clone();
            m.data = mutate(&mut rng, &p.data);
            if round % 4 == 3 {
                m.link = links[rng.below(links.len())];
            }
            engine.packet(m.view());
        }
    }
    let done = engine.finish();
    assert!(done.stats.packets >= rounds as u64 * packets.len() as u64);
}

#[test]
fn mutated_capture_files_never_panic_the_reader() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures");
    let mut rng = Rng(0xcafe_beef);
    for name in [
        "pcap-le-us.pcap",
        "pcap-be-us.pcap",
        "two-interfaces.pcapng",
        "pcap-le-ns.pcap",
    ] {
        let seed = std::fs::read(dir.join(name)).expect("fixture");
        for _ in 0..300 {
            let bytes = mutate(&mut rng, &seed);
            let Ok(mut reader) =
                FileReader::from_reader(Path::new(name), Box::new(std::io::Cursor::new(bytes)))
            else {
                continue;
            };
            let mut n = 0;
            while let Ok(true) = reader.advance() {
                assert!(reader.packet().is_some(), "a packet without its bytes");
                n += 1;
                assert!(n < 100_000, "reader does not end");
            }
        }
    }
}
