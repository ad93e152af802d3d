//! Who is in the cluster: workers and aggregators, by role, as a watched list that etcd (or a
//! static configuration) keeps current.

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
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Grm => "grm",
            Role::MetaRm => "meta-rm",
            Role::Aggregator => "aggregator",
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
            _ => Err(format!("role {s:?} is not one of grm, meta-rm, aggregator")),
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
        })
        .collect()
}
