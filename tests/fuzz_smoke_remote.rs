//! A deterministic mutation run over the remote-access dissectors: seeds are the unit tests'
//! byte vectors (real capture bytes and spec examples), mutated by a seeded xorshift, and
//! every parser must return without panicking. The cargo-fuzz targets in fuzz/ go further;
//! this keeps a cheap guard in `cargo test`.

mod support;

use farmwatch::dissect::{ipsec, openvpn, radius, rdp, rfb, socks, ssh, stun, tools, wireguard};
use support::Rng;

fn hex(s: &str) -> Vec<u8> {
    (0..s.len() / 2)
        .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap())
        .collect()
}

/// One to four random edits: bit flips, boundary bytes, big-endian length fields set to
/// boundary values, truncation, insertion and duplication.
fn mutate(rng: &mut Rng, seed: &[u8]) -> Vec<u8> {
    let mut b = seed.to_vec();
    for _ in 0..1 + rng.below(4) {
        let at = rng.below(b.len());
        match rng.below(7) {
            0 if !b.is_empty() => b[at] ^= 1 << rng.below(8),
            1 if !b.is_empty() => b[at] = [0, 1, 0x7f, 0x80, 0xff][rng.below(5)],
            2 if b.len() >= 2 => {
                let at = at.min(b.len() - 2);
                let v: u16 = [0, 1, 0x7fff, 0xffff, b.len() as u16][rng.below(5)];
                b[at..at + 2].copy_from_slice(&v.to_be_bytes());
            }
            3 => b.truncate(at),
            4 => b.insert(at, rng.next() as u8),
            5 if !b.is_empty() => {
                let end = (at + 1 + rng.below(16)).min(b.len());
                let chunk = b[at..end].to_vec();
                b.splice(at..at, chunk);
            }
            _ => b.push(rng.next() as u8),
        }
    }
    b
}

/// Runs `parse` over every seed and `rounds` mutations of each.
fn smoke(name: &str, seeds: &[Vec<u8>], rounds: usize, parse: impl Fn(&[u8])) {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ name.len() as u64);
    for seed in seeds {
        parse(seed);
        for i in 0..seed.len() {
            parse(&seed[..i]);
        }
        for _ in 0..rounds {
            parse(&mutate(&mut rng, seed));
        }
    }
}

#[test]
fn ssh_survives_mutations() {
    // A banner (zeek/Traces/ssh/ssh.pcap client) followed by a KEXINIT per RFC 4253 §7.1.
    let mut payload = vec![20];
    payload.extend([0x11; 16]);
    let lists = [
        "curve25519-sha256",
        "ssh-ed25519",
        "aes128-ctr",
        "aes128-ctr",
        "hmac-sha1",
    ];
    for l in lists.iter().chain(&["hmac-sha1", "none", "none", "", ""]) {
        payload.extend((l.len() as u32).to_be_bytes());
        payload.extend(l.as_bytes());
    }
    payload.extend([0; 5]);
    let padding = 8 - (payload.len() + 5) % 8 + 4;
    let mut kex = ((payload.len() + padding + 1) as u32)
        .to_be_bytes()
        .to_vec();
    kex.push(padding as u8);
    kex.extend(payload);
    kex.extend(vec![0; padding]);
    let mut s = b"SSH-2.0-OpenSSH_5.9\r\n".to_vec();
    s.extend(&kex);
    let seeds = [s, b"Hello\r\nSSH-1.99-x y\n".to_vec(), kex];
    assert!(ssh::parse_kexinit(&seeds[2]).is_ok());
    smoke("ssh", &seeds, 10_000, |d| {
        let rest = ssh::parse_banner(d).map_or(d, |b| &d[b.len..]);
        if let Ok(k) = ssh::parse_kexinit(rest) {
            ssh::hassh(&k, true);
        }
        let _ = ssh::parse_kexinit(d);
    });
}

#[test]
fn rdp_survives_mutations() {
    // zeek/Traces/rdp/rdp-to-ssl.pcap request and confirm; rdpeudp2 SYN and SYN+ACK.
    let seeds = [
        hex(
            "0300002f2ae00000000000436f6f6b69653a206d737473686173683d4157414b45434f44490d0a0100080003000000",
        ),
        hex("030000130ed000001234000201080002000000"),
        hex("030000130ed000001234000300080002000000"),
        hex(
            "ffffffff00401801a7eb5da404d004d0a2e2c8186de34f1e8d0f9175e4cd00000000000000000000000000000000000000010101",
        ),
        hex("a7eb5da4004010050547d72b04d004d000010101"),
    ];
    assert!(rdp::parse_connection_request(&seeds[0]).is_ok());
    smoke("rdp", &seeds, 5000, |d| {
        let _ = rdp::parse_connection_request(d);
        let _ = rdp::parse_connection_confirm(d);
        let _ = rdp::parse_rdpeudp_syn(d);
    });
}

#[test]
fn rfb_survives_mutations() {
    // zeek/Traces/rfb/vnc-scanner.pcap server side (3.8, types VNC+Tight, challenge,
    // failed result and reason) and the ARD offer of vncmac.pcap.
    let server = hex(concat!(
        "524642203030332e3030380a",
        "020210",
        "435414aa5735603f719e3bab73fd2de5",
        "00000001",
        "0000000441757468"
    ));
    let client = hex("524642203030332e3030380a0250e93126e93f23aeebc83832eb69af5201");
    let ard = hex("524642203030332e3838390a021e2300020080");
    assert!(rfb::parse_session(&client, &server).unwrap().auth_ok == Some(false));
    smoke(
        "rfb",
        &[server.clone(), client.clone(), ard.clone()],
        5000,
        |d| {
            let _ = rfb::parse_session(&client, d);
            let _ = rfb::parse_session(d, &server);
            let _ = rfb::parse_security_types(d, 3);
            let _ = rfb::parse_security_types(d, 8);
        },
    );
}

#[test]
fn tunnels_survive_mutations() {
    // openvpn.pcap / openvpn_udp_hmac_256.pcap / openvpn-tcp-tls-auth.pcap first packets,
    // the wireguard.pcap initiation header, ipsec main mode header, stun-ice-testcall.pcap
    // binding response, socks-auth.pcap client and server sides.
    let mut wg = hex("01000000622863c4ffb0f7a584483804");
    wg.resize(148, 0);
    let mut ike = hex("e47a591fd057587f00000000000000000110020000000000000000a8");
    ike.resize(168, 0);
    let seeds = [
        hex("389aa6b1e434889ad30000000000"),
        hex("40e7a77eba7c1c51b501000000009aa6b1e434889ad300000000"),
        hex(
            "38a5f634996d295c25ba6bb43be6a33727c99a57f0aa5a32915328c14663c5d22858d31a0b661fac5a0000000160df195a0000000000",
        ),
        hex(
            "002a3828e1328a7185e6ca779cda2d2230e4755040a78df956f0268c51fb710000000150ff20fd0000000000",
        ),
        wg,
        ike,
        hex("0101000c2112a442534f70436969354a6663317a00010008000111fc46c7802e"),
        hex("0103000c2112a442000102030405060708090a0b001600080001e242e112a64d"),
        hex("05030003020103626f6205616c69636505010001c0a800020016"),
        hex("0502010005000001c0a80001da8f"),
        hex("040100500000000175006578616d706c652e636f6d00"),
        b"NXSH-8.4.2\n".to_vec(),
    ];
    assert!(openvpn::parse(&seeds[3], true).is_ok() && wireguard::parse(&seeds[4]).is_ok());
    smoke("tunnels", &seeds, 2000, |d| {
        let _ = wireguard::parse(d);
        let _ = openvpn::parse(d, false);
        let _ = openvpn::parse(d, true);
        let _ = ipsec::parse_ike(d, false);
        let _ = ipsec::parse_esp(d);
        let _ = stun::parse(d);
        let _ = stun::is_channel_data(d);
        let _ = socks::parse_request(d);
        let _ = socks::parse_reply(d, 5);
        let _ = socks::parse_reply(d, 4);
        let _ = tools::match_payload(tools::Proto::Tcp, true, d);
        let _ = tools::match_payload(tools::Proto::Udp, false, d);
        let _ = tools::match_name(tools::NameKind::Sni, &String::from_utf8_lossy(d));
    });
}

#[test]
fn radius_survives_mutations() {
    // RFC 2865 §7.1 Access-Request example, and an Accounting-Request laid out per RFC 2866.
    let seeds = [
        hex(
            "010000380f403f9473978057bd83d5cb98f4227a01066e656d6f02120dbe708d93d413ce3196e43f782a0aee0406c0a80110050600000003",
        ),
        hex(
            "0407002c0000000000000000000000000000000028060000000108060a08000c6108002020010db82c045331",
        ),
    ];
    assert!(seeds.iter().all(|s| radius::parse(s).is_ok()));
    smoke("radius", &seeds, 10_000, |d| {
        let _ = radius::parse(d);
    });
}
