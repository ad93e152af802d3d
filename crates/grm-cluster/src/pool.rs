//! Connections to the members of one role, kept in step with the membership, with the load
//! this process has put on each and a short cool-down for those that just failed.

use crate::members::{Members, Role};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

/// One member this process talks to.
pub struct Peer {
    pub id: String,
    pub addr: String,
    pub channel: Channel,
    inflight: AtomicUsize,
    down_until: Mutex<Option<Instant>>,
}

impl Peer {
    /// Samples (or texts) this process has in flight on it.
    pub fn load(&self) -> usize {
        self.inflight.load(Ordering::Relaxed)
    }

    /// Counts `n` units of work on this peer until the guard drops.
    pub fn hold(self: &Arc<Self>, n: usize) -> LoadGuard {
        self.inflight.fetch_add(n, Ordering::Relaxed);
        LoadGuard {
            peer: Arc::clone(self),
            n,
        }
    }

    /// Avoid this peer for a while (it failed or stalled).
    pub fn mark_down(&self, for_: Duration) {
        *self.down_until.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now() + for_);
    }

    pub fn is_down(&self) -> bool {
        matches!(*self.down_until.lock().unwrap_or_else(|e| e.into_inner()), Some(t) if t > Instant::now())
    }
}

/// Releases the load it counts when dropped.
pub struct LoadGuard {
    peer: Arc<Peer>,
    n: usize,
}

impl LoadGuard {
    /// Releases part of the load early (samples that already finished).
    pub fn release(&mut self, n: usize) {
        let n = n.min(self.n);
        self.peer.inflight.fetch_sub(n, Ordering::Relaxed);
        self.n -= n;
    }
}

impl Drop for LoadGuard {
    fn drop(&mut self) {
        self.peer.inflight.fetch_sub(self.n, Ordering::Relaxed);
    }
}

/// The peers of one role.
pub struct Pool {
    role: Role,
    members: Members,
    /// How members are called: TLS (https) with this, else plaintext.
    tls: Option<ClientTlsConfig>,
    peers: Mutex<HashMap<String, Arc<Peer>>>,
}

/// Largest gRPC message between cluster nodes (requests carry whole conversations).
pub const MAX_MESSAGE_BYTES: usize = 64 << 20;

fn endpoint(
    addr: &str,
    tls: Option<&ClientTlsConfig>,
) -> Result<Endpoint, tonic::transport::Error> {
    let scheme = if tls.is_some() { "https" } else { "http" };
    let uri = if addr.contains("://") {
        addr.to_string()
    } else {
        format!("{scheme}://{addr}")
    };
    let ep = Endpoint::from_shared(uri)?
        .connect_timeout(Duration::from_secs(3))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(5));
    match tls {
        Some(t) => ep.tls_config(t.clone()),
        None => Ok(ep),
    }
}

impl Pool {
    pub fn new(role: Role, members: Members) -> Arc<Self> {
        Self::with_tls(role, members, None)
    }

    /// A pool whose members are called over TLS when `tls` is given.
    pub fn with_tls(role: Role, members: Members, tls: Option<ClientTlsConfig>) -> Arc<Self> {
        Arc::new(Self {
            role,
            members,
            tls,
            peers: Mutex::new(HashMap::new()),
        })
    }

    pub fn role(&self) -> Role {
        self.role
    }

    /// Every current member of the role (connections are made lazily and kept).
    pub fn peers(&self) -> Vec<Arc<Peer>> {
        let members = self.members.borrow().clone();
        let mut peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = Vec::new();
        for m in members.iter().filter(|m| m.role == self.role) {
            let peer = match peers.get(&m.addr) {
                Some(p) => Arc::clone(p),
                None => {
                    let ep = match endpoint(&m.addr, self.tls.as_ref()) {
                        Ok(ep) => ep,
                        Err(e) => {
                            tracing::warn!(addr = m.addr, error = %e, "member address is not usable; ignored");
                            continue;
                        }
                    };
                    let p = Arc::new(Peer {
                        id: m.id.clone(),
                        addr: m.addr.clone(),
                        channel: ep.connect_lazy(),
                        inflight: AtomicUsize::new(0),
                        down_until: Mutex::new(None),
                    });
                    peers.insert(m.addr.clone(), Arc::clone(&p));
                    p
                }
            };
            out.push(peer);
        }
        // Forget peers that left (in-flight calls keep their own handle).
        peers.retain(|addr, _| {
            members
                .iter()
                .any(|m| m.role == self.role && &m.addr == addr)
        });
        out
    }

    /// Peers not cooling down after a failure; all peers when every one is.
    pub fn available(&self) -> Vec<Arc<Peer>> {
        let all = self.peers();
        let up: Vec<_> = all.iter().filter(|p| !p.is_down()).cloned().collect();
        if up.is_empty() {
            all
        } else {
            up
        }
    }

    /// The least-loaded available peer not in `exclude`.
    pub fn least_loaded(&self, exclude: &[String]) -> Option<Arc<Peer>> {
        self.available()
            .into_iter()
            .filter(|p| !exclude.contains(&p.addr))
            .min_by_key(|p| p.load())
    }
}
