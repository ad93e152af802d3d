//! Connections to the members of one role, kept in step with the membership, with the load
//! this process has put on each and a short cool-down for those that just failed.

use crate::cluster_keys::ClusterKeys;
use crate::internal_calls::ProvenChannel;
use crate::members::{Members, Role};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tonic::transport::{ClientTlsConfig, Endpoint};

/// One member this process talks to.
pub struct Peer {
    pub id: String,
    pub addr: String,
    /// Every call on it carries a fresh proof of the cluster's keys.
    pub channel: ProvenChannel,
    /// The model it serves, as registered, or as its Status said (see [`Pool::model_names`]).
    model: Mutex<String>,
    inflight: AtomicUsize,
    down_until: Mutex<Option<Instant>>,
    /// The work the member itself last reported (GRM workers: tokens to compute and to
    /// generate, from every router), and when.
    reported: Mutex<Option<(Instant, usize)>>,
}

/// How long a member's own report of its load counts.
const REPORT_FRESH: Duration = Duration::from_secs(3);

impl Peer {
    /// The work on it: what this process has in flight there (tokens of GRM work, texts,
    /// requests), or what the member reported (every caller's), whichever is larger.
    pub fn load(&self) -> usize {
        let own = self.inflight.load(Ordering::Relaxed);
        let reported = match *self.reported.lock().unwrap_or_else(|e| e.into_inner()) {
            Some((at, work)) if at.elapsed() < REPORT_FRESH => work,
            _ => 0,
        };
        own.max(reported)
    }

    /// Whether the member answered its last load poll (within the time a report counts).
    pub fn answering(&self) -> bool {
        matches!(*self.reported.lock().unwrap_or_else(|e| e.into_inner()), Some((at, _)) if at.elapsed() < REPORT_FRESH)
    }

    /// Records the member's own report of its load.
    pub fn report(&self, work: usize) {
        *self.reported.lock().unwrap_or_else(|e| e.into_inner()) = Some((Instant::now(), work));
    }

    /// Work of this process's that the member has finished: the last report (which counted
    /// it) is lowered by as much, so that a report taken just before does not make an idle
    /// member look busy until the next one.
    fn finished(&self, work: usize) {
        if let Some((_, w)) = self
            .reported
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_mut()
        {
            *w = w.saturating_sub(work);
        }
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
        self.peer.finished(n);
        self.n -= n;
    }
}

impl Drop for LoadGuard {
    fn drop(&mut self) {
        self.peer.inflight.fetch_sub(self.n, Ordering::Relaxed);
        self.peer.finished(self.n);
    }
}

/// The peers of one role.
pub struct Pool {
    role: Role,
    members: Members,
    /// How members are called: TLS (https) with this, else plaintext.
    tls: Option<ClientTlsConfig>,
    /// The cluster's keys: every internal call carries a proof made with them.
    keys: Option<ClusterKeys>,
    peers: Mutex<HashMap<String, Arc<Peer>>>,
}

/// Largest gRPC message between cluster nodes (requests carry whole conversations).
pub const MAX_MESSAGE_BYTES: usize = 64 << 20;

fn endpoint(
    addr: &str,
    tls: Option<&ClientTlsConfig>,
    tls_name: &str,
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
        Some(t) if !tls_name.is_empty() => ep.tls_config(t.clone().domain_name(tls_name)),
        Some(t) => ep.tls_config(t.clone()),
        None => Ok(ep),
    }
}

impl Pool {
    pub fn new(role: Role, members: Members) -> Arc<Self> {
        Self::with_tls(role, members, None, None)
    }

    /// A pool whose members are called over TLS when `tls` is given, each call carrying a
    /// proof of the cluster's `keys` when given.
    pub fn with_tls(
        role: Role,
        members: Members,
        tls: Option<ClientTlsConfig>,
        keys: Option<ClusterKeys>,
    ) -> Arc<Self> {
        Arc::new(Self {
            role,
            members,
            tls,
            keys,
            peers: Mutex::new(HashMap::new()),
        })
    }

    /// The cluster's keys, when it has them.
    pub fn keys(&self) -> Option<&ClusterKeys> {
        self.keys.as_ref()
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
                    let ep = match endpoint(&m.addr, self.tls.as_ref(), &m.tls_name) {
                        Ok(ep) => ep,
                        Err(e) => {
                            tracing::warn!(addr = m.addr, error = %e, "member address is not usable; ignored");
                            continue;
                        }
                    };
                    let p = Arc::new(Peer {
                        id: m.id.clone(),
                        addr: m.addr.clone(),
                        // A signed registration names the member the proofs are for; a member
                        // given by address (outside etcd) gets proofs for any member.
                        channel: ProvenChannel::new(
                            ep.connect_lazy(),
                            self.keys.clone(),
                            if m.sig.is_empty() {
                                String::new()
                            } else {
                                m.id.clone()
                            },
                        ),
                        model: Mutex::new(m.model.clone()),
                        inflight: AtomicUsize::new(0),
                        down_until: Mutex::new(None),
                        reported: Mutex::new(None),
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

    /// Waits up to `within` for the membership to hold a member of this role; whether it does.
    pub async fn await_member(&self, within: Duration) -> bool {
        let mut members = self.members.clone();
        let role = self.role;
        let found = tokio::time::timeout(
            within,
            members.wait_for(|l| l.iter().any(|m| m.role == role)),
        )
        .await;
        matches!(found, Ok(Ok(_)))
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

    /// The names of the models the live members serve: as registered, or, for members given
    /// by address only, from their Status (asked once, within `timeout`).
    pub async fn model_names(&self, timeout: Duration) -> Vec<String> {
        let mut names = Vec::new();
        for p in self.peers() {
            let known = p.model.lock().unwrap_or_else(|e| e.into_inner()).clone();
            let name = if known.is_empty() && !p.is_down() {
                let mut client = grm_proto::v1::worker_service_client::WorkerServiceClient::new(
                    p.channel.clone(),
                );
                let req = tonic::Request::new(grm_proto::v1::StatusRequest {});
                match tokio::time::timeout(timeout, client.status(req)).await {
                    Ok(Ok(s)) => {
                        let name = s.into_inner().model;
                        *p.model.lock().unwrap_or_else(|e| e.into_inner()) = name.clone();
                        name
                    }
                    _ => continue,
                }
            } else {
                known
            };
            if !name.is_empty() && !names.contains(&name) {
                names.push(name);
            }
        }
        names
    }

    /// Asks every GRM worker for its load every `interval` (the first time at once), so that
    /// placement sees the work other routers put there too, and `/health` which members
    /// answer. Ends when the pool is dropped.
    pub fn watch_load(self: &Arc<Self>, interval: Duration) {
        let pool = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                let Some(p) = pool.upgrade() else { return };
                p.poll_load(interval).await;
                drop(p);
                tokio::time::sleep(interval).await;
            }
        });
    }

    /// One round of load polls, each within `timeout`.
    pub async fn poll_load(&self, timeout: Duration) {
        let peers: Vec<Arc<Peer>> = self.peers().into_iter().filter(|p| !p.is_down()).collect();
        let asks = peers.into_iter().map(|p| {
            let mut req = tonic::Request::new(grm_proto::v1::StatusRequest {});
            req.set_timeout(timeout);
            let mut client =
                grm_proto::v1::worker_service_client::WorkerServiceClient::new(p.channel.clone());
            async move {
                if let Ok(Ok(s)) = tokio::time::timeout(timeout, client.status(req)).await {
                    p.report(s.into_inner().work_tokens as usize);
                }
            }
        });
        futures::future::join_all(asks).await;
    }

    /// The least-loaded available peer not in `exclude`.
    pub fn least_loaded(&self, exclude: &[String]) -> Option<Arc<Peer>> {
        self.available()
            .into_iter()
            .filter(|p| !exclude.contains(&p.addr))
            .min_by_key(|p| p.load())
    }
}
