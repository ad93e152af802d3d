//! Who is in the cluster: workers and aggregators, by role, as a watched list that etcd (or a
//! static configuration) keeps current.

use crate::cluster_keys::ClusterKeys;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

/// What a member does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// Generates judgements.
    Grm,
    /// Scores judgements (a sequence-classification model).
    MetaRm,
    /// Aggregates a request's judgements into its answer.
    Aggregator,
    /// Serves the public API; registered so that routers can send a group's members to the
    /// router that owns the group.
    Router,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Grm => "grm",
            Role::MetaRm => "meta-rm",
            Role::Aggregator => "aggregator",
            Role::Router => "router",
        }
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "grm" => Ok(Role::Grm),
            "meta-rm" => Ok(Role::MetaRm),
            "aggregator" => Ok(Role::Aggregator),
            "router" => Ok(Role::Router),
            _ => Err(format!(
                "role {s:?} is not one of grm, meta-rm, aggregator, router"
            )),
        }
    }
}

/// One member, as registered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// Unique within the cluster (host:port by default).
    pub id: String,
    /// Where its gRPC service listens (host:port).
    pub addr: String,
    pub role: Role,
    /// The model it serves (empty for aggregators).
    pub model: String,
    /// Samples it runs at once, as a hint for load balancing.
    pub capacity: u32,
    /// The name its TLS certificate is checked against, when not the host of `addr` (a pod
    /// registered by IP whose certificate names its Service).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub tls_name: String,
    /// When the registration was signed (Unix seconds; 0 when unsigned).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub issued_s: u64,
    /// `KEYID.HMAC`: HMAC-SHA256 of the fields above, the etcd key and the lease it is
    /// registered under, with the registration key derived from the cluster's signing
    /// secret, so that a router can tell a member from an entry someone else wrote into etcd,
    /// and a live registration from a copy of an old one put under another key or without
    /// its lease. Empty when unsigned.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sig: String,
}

impl Member {
    /// The bytes the signature covers: every field, the etcd key and the lease,
    /// length-prefixed so that no two registrations share them.
    fn signed_bytes(&self, etcd_key: &str, lease: i64) -> Vec<u8> {
        let mut out = Vec::new();
        for field in [
            self.id.as_str(),
            self.addr.as_str(),
            self.role.as_str(),
            self.model.as_str(),
            self.tls_name.as_str(),
            etcd_key,
        ] {
            out.extend_from_slice(&(field.len() as u64).to_le_bytes());
            out.extend_from_slice(field.as_bytes());
        }
        out.extend_from_slice(&self.capacity.to_le_bytes());
        out.extend_from_slice(&lease.to_le_bytes());
        out.extend_from_slice(&self.issued_s.to_le_bytes());
        out
    }

    /// Signs this member's registration under `etcd_key` and `lease` with the cluster's keys,
    /// now.
    pub fn sign(&mut self, keys: &ClusterKeys, etcd_key: &str, lease: i64) {
        self.issued_s = now_s();
        self.sig = keys.sign_registration(&self.signed_bytes(etcd_key, lease));
    }

    /// Whether the signature is this member's, registered under `etcd_key` and `lease` (as
    /// etcd reports them), under the cluster token; checked in constant time. A registration
    /// without a lease is never one.
    /// A registration issued in the future (beyond the proofs' clock allowance) is none either:
    /// the clocks disagree, or it was made to outlive a key's rotation.
    pub fn verify(&self, keys: &ClusterKeys, etcd_key: &str, lease: i64) -> bool {
        let allowance = crate::cluster_keys::PROOF_WINDOW.as_secs();
        lease != 0
            && self.issued_s <= now_s() + allowance
            && keys.verify_registration(&self.signed_bytes(etcd_key, lease), &self.sig)
    }
}

fn now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

/// The current members; `changed()` wakes on every update.
pub type Members = watch::Receiver<Vec<Member>>;

/// A fixed membership.
pub fn fixed(members: Vec<Member>) -> Members {
    let (tx, rx) = watch::channel(members);
    // Nobody updates a fixed list; leak the sender so receivers never see it closed.
    std::mem::forget(tx);
    rx
}

/// Members given on the command line as addresses.
pub fn from_addrs(role: Role, addrs: &[String]) -> Vec<Member> {
    addrs
        .iter()
        .map(|a| Member {
            id: a.clone(),
            addr: a.clone(),
            role,
            model: String::new(),
            capacity: 0,
            tls_name: String::new(),
            issued_s: 0,
            sig: String::new(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_covers_every_field_the_key_and_the_lease_and_needs_the_token() {
        let token = ClusterKeys::parse("cluster-secret", "test").unwrap();
        let mut m = Member {
            id: "w1:50061".into(),
            addr: "w1:50061".into(),
            role: Role::Grm,
            model: "grm".into(),
            capacity: 0,
            tls_name: String::new(),
            issued_s: 0,
            sig: String::new(),
        };
        let (key, lease) = ("/grm/members/grm/w1:50061", 7);
        assert!(!m.verify(&token, key, lease), "unsigned");
        m.sign(&token, key, lease);
        assert!(m.verify(&token, key, lease));
        let other = ClusterKeys::parse("another-key", "test").unwrap();
        assert!(!m.verify(&other, key, lease));
        // A copy of the value replayed under another key, without a lease or under another.
        assert!(!m.verify(&token, "/grm/members/grm/replayed", lease));
        assert!(!m.verify(&token, key, 0), "no lease");
        assert!(!m.verify(&token, key, 8), "another lease");
        let mut moved = m.clone();
        moved.addr = "evil:50061".into();
        assert!(!moved.verify(&token, key, lease), "the address is covered");
        let mut role = m.clone();
        role.role = Role::MetaRm;
        assert!(!role.verify(&token, key, lease), "the role is covered");
        let mut later = m.clone();
        later.issued_s += 1;
        assert!(
            !later.verify(&token, key, lease),
            "the issue time is covered"
        );
        let mut future = m.clone();
        future.issued_s = now_s() + 3600;
        future.sig = token.sign_registration(&future.signed_bytes(key, lease));
        assert!(!future.verify(&token, key, lease), "issued an hour ahead");
        future.issued_s = now_s();
        future.sig = token.sign_registration(&future.signed_bytes(key, lease));
        assert!(future.verify(&token, key, lease));
        let mut garbled = m.clone();
        garbled.sig.replace_range(0..2, "zz");
        assert!(!garbled.verify(&token, key, lease));
    }
}
