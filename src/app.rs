//! Application labels: the contract list of DESIGN §4. A label is set only from evidence in
//! the bytes (a signature, a handshake field, an SNI, a certificate or a DNS answer); a
//! port-only hint is reported separately as a `guess`.

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum App {
    Rdp,
    Vnc,
    Anydesk,
    Teamviewer,
    Rustdesk,
    ChromeRemoteDesktop,
    Splashtop,
    Screenconnect,
    Parsec,
    Nomachine,
    ZohoAssist,
    Logmein,
    Radmin,
    Ssh,
    Telnet,
    Tls,
    Http,
    Dns,
    Quic,
    Stun,
    Wireguard,
    Openvpn,
    Ipsec,
    Tor,
    Socks,
    Radius,
    Anyconnect,
    FortinetSslvpn,
    Globalprotect,
    PulseSecure,
    Softether,
    Unknown,
}

impl App {
    pub const ALL: [App; 32] = [
        App::Rdp,
        App::Vnc,
        App::Anydesk,
        App::Teamviewer,
        App::Rustdesk,
        App::ChromeRemoteDesktop,
        App::Splashtop,
        App::Screenconnect,
        App::Parsec,
        App::Nomachine,
        App::ZohoAssist,
        App::Logmein,
        App::Radmin,
        App::Ssh,
        App::Telnet,
        App::Tls,
        App::Http,
        App::Dns,
        App::Quic,
        App::Stun,
        App::Wireguard,
        App::Openvpn,
        App::Ipsec,
        App::Tor,
        App::Socks,
        App::Radius,
        App::Anyconnect,
        App::FortinetSslvpn,
        App::Globalprotect,
        App::PulseSecure,
        App::Softether,
        App::Unknown,
    ];

    /// The label as it appears in records, events and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            App::Rdp => "rdp",
            App::Vnc => "vnc",
            App::Anydesk => "anydesk",
            App::Teamviewer => "teamviewer",
            App::Rustdesk => "rustdesk",
            App::ChromeRemoteDesktop => "chrome_remote_desktop",
            App::Splashtop => "splashtop",
            App::Screenconnect => "screenconnect",
            App::Parsec => "parsec",
            App::Nomachine => "nomachine",
            App::ZohoAssist => "zoho_assist",
            App::Logmein => "logmein",
            App::Radmin => "radmin",
            App::Ssh => "ssh",
            App::Telnet => "telnet",
            App::Tls => "tls",
            App::Http => "http",
            App::Dns => "dns",
            App::Quic => "quic",
            App::Stun => "stun",
            App::Wireguard => "wireguard",
            App::Openvpn => "openvpn",
            App::Ipsec => "ipsec",
            App::Tor => "tor",
            App::Socks => "socks",
            App::Radius => "radius",
            App::Anyconnect => "anyconnect",
            App::FortinetSslvpn => "fortinet_sslvpn",
            App::Globalprotect => "globalprotect",
            App::PulseSecure => "pulse_secure",
            App::Softether => "softether",
            App::Unknown => "unknown",
        }
    }

    /// Tools that show one machine's screen to a person at another.
    pub fn is_remote_desktop(self) -> bool {
        matches!(
            self,
            App::Rdp
                | App::Vnc
                | App::Anydesk
                | App::Teamviewer
                | App::Rustdesk
                | App::ChromeRemoteDesktop
                | App::Splashtop
                | App::Screenconnect
                | App::Parsec
                | App::Nomachine
                | App::ZohoAssist
                | App::Logmein
                | App::Radmin
        )
    }

    /// Protocols that carry other traffic: a tunnel inside the corporate tunnel.
    pub fn is_tunnel(self) -> bool {
        self.is_ssl_vpn()
            || matches!(
                self,
                App::Wireguard | App::Openvpn | App::Ipsec | App::Tor | App::Socks
            )
    }

    /// Vendor SSL-VPNs: IP packets framed inside TLS (and DTLS or ESP beside it).
    pub fn is_ssl_vpn(self) -> bool {
        matches!(
            self,
            App::Anyconnect
                | App::FortinetSslvpn
                | App::Globalprotect
                | App::PulseSecure
                | App::Softether
        )
    }

    /// Interactive protocols whose keystroke timing the stepping-stone detector follows.
    pub fn is_interactive(self) -> bool {
        self.is_remote_desktop() || matches!(self, App::Ssh | App::Telnet)
    }
}

impl std::fmt::Display for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serde_name_matches_as_str() {
        for app in App::ALL {
            let json = serde_json::to_string(&app).unwrap();
            assert_eq!(json, format!("\"{}\"", app.as_str()));
        }
    }
}
