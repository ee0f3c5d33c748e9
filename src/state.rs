//! The account stage's state as bytes, for the correlator's checkpoints (DESIGN §7).
//!
//! Values are written with `postcard` (serde, compact, a stable wire format) behind an
//! 8-byte header: [`MAGIC`] and the format [`VERSION`]. The layout of a state follows the
//! Rust types that hold it, so any change to those types (a field, a detector) changes the
//! version; a checkpoint of another version is refused with one line, never read as
//! something else. Timestamps are written as nanoseconds (see [`crate::timestamp`]), so a
//! state comes back exactly.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The first four bytes of every saved state.
pub const MAGIC: [u8; 4] = *b"FWst";
/// Bumped whenever a saved type changes shape.
pub const VERSION: u32 = 2;

/// `value` with the header.
pub fn save<T: Serialize>(value: &T) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(4096);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    postcard::to_extend(value, out).map_err(|e| format!("saving state: {e}"))
}

/// Reads what [`save`] wrote, refusing another format's or version's bytes.
pub fn load<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    let (magic, rest) = bytes.split_at_checked(4).ok_or("too short to be a state")?;
    if magic != MAGIC {
        return Err("not a farmwatch state".to_string());
    }
    let (version, body) = rest.split_at_checked(4).ok_or("too short to be a state")?;
    let version = u32::from_le_bytes(version.try_into().unwrap_or_default());
    if version != VERSION {
        return Err(format!(
            "state format version {version}, this farmwatch reads version {VERSION}"
        ));
    }
    decode(body)
}

/// One part of a state (a detector's), without the header: the whole state carries it.
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, String> {
    postcard::to_stdvec(value).map_err(|e| format!("saving state: {e}"))
}

/// Reads what [`encode`] wrote; trailing bytes are an error too.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    let (value, rest) = postcard::take_from_bytes(bytes).map_err(|e| format!("malformed: {e}"))?;
    if !rest.is_empty() {
        return Err(format!("malformed: {} bytes left over", rest.len()));
    }
    Ok(value)
}

/// A bounded structure read back must fit its bound: the bound is what keeps memory in
/// check, so a state over it is refused rather than trimmed.
pub fn within(what: &str, len: usize, max: usize) -> Result<(), String> {
    if len > max {
        Err(format!("{what}: {len} entries, more than the limit {max}"))
    } else {
        Ok(())
    }
}

/// A reason name (`&'static str`), read back as the registry's own (every detector's, the
/// inventory's, the scorer's): for `#[serde(with = "crate::state::reason")]`.
pub mod reason {
    use super::*;

    pub fn serialize<S: Serializer>(reason: &&'static str, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(reason)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<&'static str, D::Error> {
        let name = String::deserialize(d)?;
        known(&name).ok_or_else(|| serde::de::Error::custom(format!("unknown reason {name:?}")))
    }

    /// The registry's `&'static str` for `name`.
    pub fn known(name: &str) -> Option<&'static str> {
        crate::detect::reasons()
            .map(|r| r.name)
            .chain([crate::detect::score::ALERT_REASON])
            .find(|r| *r == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_state_comes_back_and_another_version_is_refused() {
        let value = (
            crate::timestamp::Timestamp(1_762_092_191_123_456_789),
            "x".to_string(),
        );
        let bytes = save(&value).unwrap();
        assert_eq!(
            load::<(crate::timestamp::Timestamp, String)>(&bytes),
            Ok(value)
        );
        let mut other = bytes.clone();
        other[4..8].copy_from_slice(&(VERSION + 1).to_le_bytes());
        assert_eq!(
            load::<(crate::timestamp::Timestamp, String)>(&other),
            Err(format!(
                "state format version {}, this farmwatch reads version {VERSION}",
                VERSION + 1
            ))
        );
        assert_eq!(
            load::<u8>(b"{\"seq\":1}").unwrap_err(),
            "not a farmwatch state"
        );
        assert_eq!(load::<u8>(b"FW").unwrap_err(), "too short to be a state");
        let mut longer = bytes;
        longer.push(0);
        assert!(load::<(crate::timestamp::Timestamp, String)>(&longer).is_err());
    }
}
