//! Dissectors: pure parsers over untrusted bytes that say what a flow is.
//!
//! Each protocol module parses `&[u8]` into a small owned summary and returns
//! `Err(Error::Incomplete)` when it needs more bytes: that is a normal result for a parser
//! fed the first segments of a stream, not a fault.

/// Why a parser could not produce a result.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// The bytes so far are a valid prefix; more are needed.
    Incomplete,
    /// The bytes are not this protocol, or break its rules (the reason is a short,
    /// static label fit for a metric).
    Invalid(&'static str),
}

pub type Result<T> = std::result::Result<T, Error>;

pub mod dns;
pub mod http;
pub mod identify;
pub mod ipsec;
pub mod ja4;
pub mod midstream;
pub mod openvpn;
pub mod quic;
pub mod radius;
pub mod rdp;
pub mod rfb;
pub mod shared;
pub mod socks;
pub mod ssh;
pub mod sslvpn;
pub mod stun;
pub mod tls;
pub mod tools;
pub mod wire;
pub mod wireguard;
