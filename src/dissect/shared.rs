//! Protocol details that many flows have in common, kept once.
//!
//! The SSH and TLS software of a fleet is a handful of banner, fingerprint and server-name
//! combinations, and a sensor may hold a hundred thousand sessions for hours: each finished
//! session points at one shared copy instead of carrying its own strings. Each set is
//! bounded; past the limit a new value is simply not shared, and the flow keeps its own.

use std::sync::Arc;

use hashbrown::HashTable;

use super::identify::{Details, Protocol};
use super::ja4::Memo as Ja4Memo;
use super::ssh::SshDetails;
use super::tls::{CertMemo, TlsDetails};

/// The details that describe software rather than a session, shared.
#[derive(Default)]
pub struct SharedDetails {
    ssh: Shared<SshDetails>,
    tls: Shared<TlsDetails>,
    /// JA4 hashes by the lists they hash: the fingerprints of the fleet's TLS clients.
    pub ja4: Ja4Memo,
    /// The certificates of the fleet's TLS servers, read.
    pub certs: CertMemo,
}

impl SharedDetails {
    /// Points `details` at the shared copies of its SSH and TLS parts.
    pub fn share(&mut self, details: &mut Details) {
        if let Some(tls) = details.tls.as_mut() {
            *tls = self.tls.share(Arc::clone(tls));
        }
        if let Some(Protocol::Ssh(ssh)) = details.other.as_mut() {
            *ssh = self.ssh.share(Arc::clone(ssh));
        }
    }

    /// Distinct values shared (SSH, TLS).
    #[cfg(test)]
    pub(crate) fn len(&self) -> (usize, usize) {
        (self.ssh.len(), self.tls.len())
    }
}

/// Distinct values shared at most; generous for software fingerprints.
const LIMIT: usize = 4096;

/// What a shared value is hashed by: a part of it that equal values have alike, enough to
/// tell a fleet's software apart. Every TLS flow is looked up, and hashing the whole of its
/// details (the certificate's issuer and names) cost more than the rest of the lookup.
pub(crate) trait Fingerprint {
    fn fingerprint(&self, hasher: &ahash::RandomState) -> u64;
}

impl Fingerprint for TlsDetails {
    fn fingerprint(&self, hasher: &ahash::RandomState) -> u64 {
        hasher.hash_one((self.version, &self.sni, &self.ja4, &self.cert_subject))
    }
}

impl Fingerprint for SshDetails {
    fn fingerprint(&self, hasher: &ahash::RandomState) -> u64 {
        hasher.hash_one(self)
    }
}

struct Shared<T> {
    table: HashTable<Arc<T>>,
    hasher: ahash::RandomState,
}

impl<T: Eq + Fingerprint> Shared<T> {
    /// The shared copy equal to `value`, which becomes the shared one if there is none.
    fn share(&mut self, value: Arc<T>) -> Arc<T> {
        let hash = value.fingerprint(&self.hasher);
        if let Some(known) = self.table.find(hash, |k| **k == *value) {
            return Arc::clone(known);
        }
        if self.table.len() < LIMIT {
            let hasher = &self.hasher;
            self.table
                .insert_unique(hash, Arc::clone(&value), |k| k.fingerprint(hasher));
        }
        value
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.table.len()
    }
}

/// Not derived: that would ask `T: Default` of the shared values.
impl<T> Default for Shared<T> {
    fn default() -> Shared<T> {
        Shared {
            table: HashTable::new(),
            hasher: ahash::RandomState::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl Fingerprint for String {
        fn fingerprint(&self, hasher: &ahash::RandomState) -> u64 {
            hasher.hash_one(self)
        }
    }

    impl Fingerprint for usize {
        fn fingerprint(&self, hasher: &ahash::RandomState) -> u64 {
            hasher.hash_one(self)
        }
    }

    /// TLS details that differ only where the fingerprint does not look (the issuer, the
    /// names) are not taken for one another.
    #[test]
    fn tls_details_alike_in_their_fingerprint_stay_apart() {
        let mut shared = Shared::default();
        let one = TlsDetails {
            sni: Some("a.example".into()),
            cert_issuer: Some("CN=one".into()),
            ..TlsDetails::default()
        };
        let other = TlsDetails {
            cert_issuer: Some("CN=other".into()),
            cert_san: vec!["b.example".into()],
            ..one.clone()
        };
        let a = shared.share(Arc::new(one.clone()));
        let b = shared.share(Arc::new(other.clone()));
        assert!(!Arc::ptr_eq(&a, &b));
        assert_eq!((*a == one, *b == other), (true, true));
        assert!(Arc::ptr_eq(&shared.share(Arc::new(other)), &b));
        assert_eq!(shared.len(), 2);
    }

    #[test]
    fn equal_values_share_one_copy() {
        let mut shared = Shared::default();
        let a = shared.share(Arc::new(String::from("SSH-2.0-OpenSSH_9.6")));
        let b = shared.share(Arc::new(String::from("SSH-2.0-OpenSSH_9.6")));
        let c = shared.share(Arc::new(String::from("SSH-2.0-PuTTY_0.81")));
        assert!(Arc::ptr_eq(&a, &b));
        assert!(!Arc::ptr_eq(&a, &c));
        assert_eq!(shared.len(), 2);
    }

    #[test]
    fn past_the_limit_values_are_kept_but_not_shared() {
        let mut shared = Shared::default();
        for i in 0..LIMIT {
            shared.share(Arc::new(i));
        }
        let late = shared.share(Arc::new(LIMIT));
        let again = shared.share(Arc::new(LIMIT));
        assert_eq!((*late, *again), (LIMIT, LIMIT));
        assert!(!Arc::ptr_eq(&late, &again));
        assert_eq!(shared.len(), LIMIT);
        assert!(Arc::ptr_eq(
            &shared.share(Arc::new(7)),
            &shared.share(Arc::new(7))
        ));
    }
}
