//! SSH banner and KEXINIT parsing, with HASSH over whatever parses.
#![no_main]
use farmwatch::dissect::ssh;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let rest = match ssh::parse_banner(data) {
        Ok(b) => &data[b.len..],
        Err(_) => data,
    };
    if let Ok(k) = ssh::parse_kexinit(rest) {
        let _ = ssh::hassh(&k, true);
        let _ = ssh::hassh(&k, false);
    }
});
