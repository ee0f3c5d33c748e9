//! Flows already open when the capture starts: real captures (the lab's, Zeek's and
//! suricata-verify's) with their first packets cut off at test time still get the label
//! their bytes show mid-stream, and their history starts with `~`.

mod support;

use std::path::{Path, PathBuf};

use serde_json::Value;

/// Writes `src` (classic pcap) without its first `skip` packets.
fn cut(src: &Path, skip: usize, tag: &str) -> PathBuf {
    let bytes = std::fs::read(src).expect("read capture");
    let little = match bytes[..4] {
        [0xd4, 0xc3, 0xb2, 0xa1] | [0x4d, 0x3c, 0xb2, 0xa1] => true,
        [0xa1, 0xb2, 0xc3, 0xd4] | [0xa1, 0xb2, 0x3c, 0x4d] => false,
        _ => panic!("{} is not a classic pcap", src.display()),
    };
    let mut out = bytes[..24].to_vec();
    let (mut at, mut n) = (24, 0);
    while at + 16 <= bytes.len() {
        let l: [u8; 4] = bytes[at + 8..at + 12].try_into().unwrap();
        let len = if little {
            u32::from_le_bytes(l)
        } else {
            u32::from_be_bytes(l)
        } as usize;
        let end = (at + 16 + len).min(bytes.len());
        if n >= skip {
            out.extend_from_slice(&bytes[at..end]);
        }
        at = end;
        n += 1;
    }
    assert!(n > skip, "{} has only {n} packets", src.display());
    let file = support::scratch(&format!("{tag}-cut")).join("cut.pcap");
    std::fs::write(&file, out).expect("write cut capture");
    file
}

fn lab(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/lab")
        .join(file)
}

/// The TCP flows that were picked up mid-stream and carried data both ways.
fn picked_up(flows: &[Value]) -> Vec<&Value> {
    flows
        .iter()
        .filter(|f| f["proto"] == "tcp" && f["interim"] != true)
        .filter(|f| f["history"].as_str().is_some_and(|h| h.starts_with('~')))
        .filter(|f| f["bytes_orig"].as_u64() > Some(0) && f["bytes_resp"].as_u64() > Some(0))
        .collect()
}

fn assert_cut_label(src: PathBuf, skip: usize, app: &str, tag: &str) {
    let file = cut(&src, skip, tag);
    let (_, flows) = support::replay(&[&file], &[], tag);
    let mid = picked_up(&flows);
    assert!(
        !mid.is_empty(),
        "{}: no flow picked up mid-stream",
        src.display()
    );
    for f in mid {
        assert_eq!(f["app"], app, "{} cut at {skip}: {f}", src.display());
    }
    // Uncut, the same capture has no flow picked up mid-stream.
    let (_, whole) = support::replay(&[&src], &[], &format!("{tag}-whole"));
    assert!(picked_up(&whole).is_empty(), "{}", src.display());
}

#[test]
fn vnc_framebuffer_requests_mid_stream() {
    assert_cut_label(lab("vnc-direct-25ms.pcap"), 40, "vnc", "mid-vnc-lab");
    let zeek = support::capture("zeek/Traces/rfb/vnc-mac-to-linux.pcap");
    assert_cut_label(zeek, 100, "vnc", "mid-vnc-zeek");
}

#[test]
fn rdp_tpkt_and_fast_path_mid_stream() {
    let zeek = support::capture("zeek/Traces/rdp/rdp-proprietary-encryption.pcap");
    assert_cut_label(zeek, 100, "rdp", "mid-rdp-zeek");
    let suricata = support::capture("suricata-verify/rdp-protocol/RDP-003.pcap");
    assert_cut_label(suricata, 40, "rdp", "mid-rdp-suricata");
}

/// RDP over TLS (xrdp, and Zeek's rdp-to-ssl) shows only TLS records mid-stream.
#[test]
fn tls_records_mid_stream() {
    assert_cut_label(lab("tls-direct-25ms.pcap"), 40, "tls", "mid-tls-lab");
    assert_cut_label(lab("rdp-direct-25ms.pcap"), 40, "tls", "mid-rdp-tls-lab");
    let zeek = support::capture("zeek/Traces/rdp/rdp-to-ssl.pcap");
    assert_cut_label(zeek, 100, "tls", "mid-tls-zeek");
}

/// The index of the first packet of a classic little-endian Ethernet/IPv4/TCP pcap whose
/// TCP payload satisfies `want`.
fn first_tcp_payload(src: &Path, want: impl Fn(&[u8]) -> bool) -> usize {
    let bytes = std::fs::read(src).expect("read capture");
    assert_eq!(bytes[..4], [0xd4, 0xc3, 0xb2, 0xa1], "{}", src.display());
    let (mut at, mut n) = (24, 0);
    while at + 16 <= bytes.len() {
        let len = u32::from_le_bytes(bytes[at + 8..at + 12].try_into().unwrap()) as usize;
        let frame = &bytes[at + 16..at + 16 + len];
        let ip = &frame[14..];
        if frame[12..14] == [8, 0] && ip[9] == 6 {
            let tcp = &ip[usize::from(ip[0] & 0x0f) * 4..];
            let payload = &tcp[usize::from(tcp[12] >> 4) * 4..];
            if !payload.is_empty() && want(payload) {
                return n;
            }
        }
        at += 16 + len;
        n += 1;
    }
    panic!("{}: no such packet", src.display());
}

/// OpenVPN with tls-crypt (lab: OpenVPN 2.6 over TCP, keys renegotiated every 8 s), picked
/// up at a renegotiation: the first bytes each way are tls-crypt-wrapped control packets
/// (soft reset, control, ACK) between data packets. With a CBC data cipher the data
/// packets show no counter in clear, so the wrapped control packets alone tell.
#[test]
fn openvpn_tls_crypt_control_packets_mid_stream() {
    for cipher in ["cbc", "gcm"] {
        let src = lab(&format!("openvpn-tls-crypt-tcp-{cipher}-25ms.pcap"));
        // After the u16 length: opcode 3, P_CONTROL_SOFT_RESET_V1.
        let skip = first_tcp_payload(&src, |p| p.len() > 3 && p[2] >> 3 == 3);
        assert_cut_label(src, skip, "openvpn", &format!("mid-tls-crypt-{cipher}"));
    }
}

#[test]
fn a_cut_capture_is_the_same_for_every_worker_count() {
    let file = cut(&lab("vnc-relay-25ms.pcap"), 40, "mid-workers");
    let one = support::replay(&[&file], &["--workers", "1"], "mid-workers-1");
    let three = support::replay(&[&file], &["--workers", "3"], "mid-workers-3");
    assert_eq!(one, three);
}
