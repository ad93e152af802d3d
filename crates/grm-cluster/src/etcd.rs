//! Membership in etcd: each member puts `/grm/members/<role>/<id>` (its [`Member`] as JSON)
//! under a lease that it keeps alive; routers list and watch the prefix. When etcd is away,
//! members keep retrying and re-register once it is back, and watchers keep the last known
//! membership, so serving goes on.

use crate::cluster_keys::ClusterKeys;
use crate::members::{Member, Members};
use etcd_client::{Client, ConnectOptions, EventType, GetOptions, PutOptions, WatchOptions};
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::sync::{oneshot, watch};
use tonic::transport::ClientTlsConfig;
use tracing::{info, warn};

/// The key prefix of all members.
pub const PREFIX: &str = "/grm/members/";

fn key(m: &Member) -> String {
    format!("{PREFIX}{}/{}", m.role.as_str(), m.id)
}

/// Where etcd is, and how to reach it: plaintext for `http://` endpoints, TLS for `https://`
/// ones, with the node's CA (and its certificate, for etcd's `--client-cert-auth`).
#[derive(Clone, Debug)]
pub struct Endpoints {
    urls: Vec<String>,
    tls: Option<ClientTlsConfig>,
}

impl Endpoints {
    /// Checks the scheme of every URL against the TLS settings the node has.
    pub fn new(urls: Vec<String>, tls: Option<&ClientTlsConfig>) -> Result<Self, String> {
        let https = urls.iter().filter(|u| u.starts_with("https://")).count();
        if https > 0 && https < urls.len() {
            return Err(format!(
                "--etcd mixes http:// and https:// endpoints ({}); use one scheme",
                urls.join(",")
            ));
        }
        if https == 0 {
            return Ok(Self { urls, tls: None });
        }
        match tls {
            Some(t) => Ok(Self {
                urls,
                tls: Some(t.clone()),
            }),
            None => Err(format!(
                "--etcd {} is https: give --tls-ca (the CA of etcd's certificate), and --tls-cert/--tls-key if etcd checks client certificates",
                urls.join(",")
            )),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.urls.is_empty()
    }
}

async fn connect(endpoints: &Endpoints) -> Result<Client, etcd_client::Error> {
    let mut opts = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(2))
        .with_timeout(Duration::from_secs(5))
        // etcd refuses pings more often than every 5 s (--grpc-keepalive-min-time) with a
        // GOAWAY, which dropped the watch every few seconds; ping every 10 s, and only while
        // a stream (watch, lease keep-alive) is open, as its policy wants.
        .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5))
        .with_keep_alive_while_idle(false);
    if let Some(tls) = &endpoints.tls {
        opts = opts.with_tls(tls.clone());
    }
    Client::connect(&endpoints.urls, Some(opts)).await
}

/// A member's registration; [`Registration::deregister`] removes it at once (on drain).
pub struct Registration {
    stop: Option<oneshot::Sender<()>>,
    done: tokio::task::JoinHandle<()>,
}

impl Registration {
    /// Deletes the key and stops keeping the lease alive.
    pub async fn deregister(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), &mut self.done).await;
    }
}

/// Registers `member` under a lease of `ttl` seconds, re-registering whenever the lease is
/// lost (etcd restarted, network cut), until deregistered. With the cluster `token`, each
/// registration is signed over its key and its lease (see [`Member::sign`]).
pub fn register(
    endpoints: Endpoints,
    member: Member,
    ttl: Duration,
    token: Option<ClusterKeys>,
) -> Registration {
    let (stop_tx, mut stop) = oneshot::channel::<()>();
    let done = tokio::spawn(async move {
        let ttl_s = ttl.as_secs().max(1) as i64;
        let key = key(&member);
        loop {
            let session = async {
                let mut client = connect(&endpoints).await?;
                let lease = client.lease_grant(ttl_s, None).await?.id();
                let mut signed = member.clone();
                if let Some(t) = &token {
                    signed.sign(t, &key, lease);
                }
                let value = serde_json::to_string(&signed).expect("a member serialises");
                client
                    .put(
                        key.clone(),
                        value,
                        Some(PutOptions::new().with_lease(lease)),
                    )
                    .await?;
                info!(key, lease, "registered in etcd");
                let (mut keeper, mut responses) = client.lease_keep_alive(lease).await?;
                loop {
                    keeper.keep_alive().await?;
                    match responses.message().await? {
                        Some(r) if r.ttl() > 0 => {}
                        _ => {
                            return Err(etcd_client::Error::LeaseKeepAliveError(
                                "lease expired".into(),
                            ))
                        }
                    }
                    tokio::time::sleep(Duration::from_millis((ttl_s as u64 * 1000 / 3).max(200)))
                        .await;
                }
                #[allow(unreachable_code)]
                Ok::<_, etcd_client::Error>((client, lease))
            };
            tokio::select! {
                r = session => {
                    if let Err(e) = r {
                        warn!(key, error = %e, "etcd registration lost; retrying");
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                        _ = &mut stop => break,
                    }
                }
                _ = &mut stop => break,
            }
        }
        // Deregister: best effort, bounded.
        let removal = async {
            let mut client = connect(&endpoints).await?;
            client.delete(key.clone(), None).await?;
            Ok::<_, etcd_client::Error>(())
        };
        match tokio::time::timeout(Duration::from_secs(3), removal).await {
            Ok(Ok(())) => info!(key, "deregistered from etcd"),
            _ => warn!(key, "could not deregister from etcd; the lease will expire"),
        }
    });
    Registration {
        stop: Some(stop_tx),
        done,
    }
}

/// How long a node waits for its first listing of the members before it serves anyway (etcd
/// away at start: the watch keeps trying, and the list fills in when etcd answers).
pub const FIRST_LISTING: Duration = Duration::from_secs(10);

/// The members under [`PREFIX`], kept current by a watch, returned once the first listing is
/// in (or `first_within` has passed): a node that announced itself before knowing its peers
/// would take work it then does without them — an aggregator registered before its view of
/// the meta-RM workers voted without the meta RM that the router saw. While etcd cannot be
/// reached the last known list stays in place. With a cluster `token`, only members whose
/// registration it signed are kept: anyone who can write to etcd could otherwise add a member
/// and be sent requests.
pub async fn watch_members(
    endpoints: Endpoints,
    token: Option<ClusterKeys>,
    first_within: Duration,
) -> Members {
    let (tx, rx) = watch::channel(Vec::new());
    let (listed_tx, listed) = oneshot::channel::<()>();
    let mut listed_tx = Some(listed_tx);
    tokio::spawn(async move {
        let mut known: BTreeMap<String, Member> = BTreeMap::new();
        loop {
            let r = async {
                let mut client = connect(&endpoints).await?;
                let listing = client
                    .get(PREFIX, Some(GetOptions::new().with_prefix()))
                    .await?;
                let revision = listing.header().map_or(0, |h| h.revision());
                known.clear();
                for kv in listing.kvs() {
                    if let (Ok(k), Ok(m)) =
                        (kv.key_str(), serde_json::from_slice::<Member>(kv.value()))
                    {
                        if admitted(&m, token.as_ref(), k, kv.lease()) {
                            known.insert(k.to_string(), m);
                        }
                    }
                }
                publish(&tx, &known);
                if let Some(l) = listed_tx.take() {
                    let _ = l.send(());
                }
                let mut stream = client
                    .watch(
                        PREFIX,
                        Some(
                            WatchOptions::new()
                                .with_prefix()
                                .with_start_revision(revision + 1),
                        ),
                    )
                    .await?;
                while let Some(resp) = stream.message().await? {
                    for ev in resp.events() {
                        let Some(kv) = ev.kv() else { continue };
                        let Ok(k) = kv.key_str() else { continue };
                        match ev.event_type() {
                            EventType::Put => {
                                match serde_json::from_slice::<Member>(kv.value()) {
                                    Ok(m) if admitted(&m, token.as_ref(), k, kv.lease()) => {
                                        known.insert(k.to_string(), m);
                                    }
                                    // A key overwritten with something unsigned no longer
                                    // names a member.
                                    _ => {
                                        known.remove(k);
                                    }
                                }
                            }
                            EventType::Delete => {
                                known.remove(k);
                            }
                        }
                    }
                    publish(&tx, &known);
                }
                Ok::<_, etcd_client::Error>(())
            }
            .await;
            if tx.is_closed() {
                return;
            }
            if let Err(e) = r {
                warn!(error = %e, "etcd watch lost; keeping the last known members and retrying");
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    });
    if tokio::time::timeout(first_within, listed).await.is_err() {
        warn!(
            waited_s = first_within.as_secs(),
            "no listing of the members from etcd yet; serving, and the list fills in when etcd answers"
        );
    }
    rx
}

/// Whether a registration read from etcd is a member: signed with the cluster token for this
/// very key and the lease it is attached to, when the cluster has a token (a registration
/// copied under another key, or put without its lease, never expires and is no member).
fn admitted(m: &Member, token: Option<&ClusterKeys>, key: &str, lease: i64) -> bool {
    match token {
        None => true,
        Some(t) if m.verify(t, key, lease) => true,
        Some(_) => {
            warn!(
                key,
                lease,
                addr = m.addr,
                "ignoring an etcd entry not signed with the cluster token for its key and lease: it gets no work"
            );
            false
        }
    }
}

fn publish(tx: &watch::Sender<Vec<Member>>, known: &BTreeMap<String, Member>) {
    let list: Vec<Member> = known.values().cloned().collect();
    tx.send_if_modified(|cur| {
        if *cur == list {
            false
        } else {
            info!(members = list.len(), "membership changed");
            *cur = list;
            true
        }
    });
}
