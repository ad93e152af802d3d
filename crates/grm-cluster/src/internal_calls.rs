//! Internal calls carry a proof, never the cluster's secret: [`ProvenChannel`] adds a fresh
//! one to every call a node makes to another, [`RequireProof`] checks it in front of the
//! internal services (WorkerService, AggregatorService). See `cluster_keys`.

use crate::cluster_keys::{ClusterKeys, PROOF_HEADER};
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use tonic::body::Body;
use tonic::codegen::http;
use tonic::server::NamedService;
use tonic::transport::Channel;
use tonic::Status;

/// A channel to a member whose every call carries a proof for its method (when the cluster
/// has keys).
#[derive(Clone)]
pub struct ProvenChannel {
    inner: Channel,
    keys: Option<ClusterKeys>,
    /// The member the proofs are for (its registered address; empty: any).
    member: String,
}

impl ProvenChannel {
    pub fn new(inner: Channel, keys: Option<ClusterKeys>, member: String) -> Self {
        Self {
            inner,
            keys,
            member,
        }
    }
}

impl tonic::codegen::Service<http::Request<Body>> for ProvenChannel {
    type Response = http::Response<Body>;
    type Error = tonic::transport::Error;
    type Future = <Channel as tonic::codegen::Service<http::Request<Body>>>::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        tonic::codegen::Service::poll_ready(&mut self.inner, cx)
    }

    fn call(&mut self, mut req: http::Request<Body>) -> Self::Future {
        if let Some(keys) = &self.keys {
            let proof = keys.prove_call(req.uri().path(), &self.member);
            if let Ok(v) = http::HeaderValue::from_str(&proof) {
                req.headers_mut().insert(PROOF_HEADER, v);
            }
        }
        self.inner.call(req)
    }
}

/// An internal service behind the proof check (no keys: every call passes, as on a cluster
/// without a token, which then relies on mutual TLS or a private network).
#[derive(Clone)]
pub struct RequireProof<S> {
    inner: S,
    keys: Option<ClusterKeys>,
    /// This member's registered address: proofs made for another member are refused.
    me: String,
}

impl<S> RequireProof<S> {
    pub fn new(inner: S, keys: Option<ClusterKeys>, me: String) -> Self {
        Self { inner, keys, me }
    }
}

impl<S: NamedService> NamedService for RequireProof<S> {
    const NAME: &'static str = S::NAME;
}

impl<S> tonic::codegen::Service<http::Request<Body>> for RequireProof<S>
where
    S: tonic::codegen::Service<
            http::Request<Body>,
            Response = http::Response<Body>,
            Error = Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        if let Some(keys) = &self.keys {
            let proof = req.headers().get(PROOF_HEADER).map(|v| v.as_bytes());
            if let Err(e) = keys.check_call(proof, req.uri().path(), &self.me) {
                tracing::warn!(method = req.uri().path(), reason = %e.to_string().chars().take(160).collect::<String>(), "internal call refused");
                return Box::pin(
                    async move { Ok(Status::unauthenticated(e.to_string()).into_http()) },
                );
            }
        }
        Box::pin(self.inner.call(req))
    }
}
