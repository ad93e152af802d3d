//! Starting the gRPC and HTTP servers of a role, with `grpc.health.v1`, reflection, and a
//! graceful stop.

use crate::pool::MAX_MESSAGE_BYTES;
use grm_proto::v1::aggregator_service_server::AggregatorServiceServer;
use grm_proto::v1::reward_service_server::RewardServiceServer;
use grm_proto::v1::worker_service_server::WorkerServiceServer;
use std::future::Future;
use std::net::SocketAddr;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Server;

/// HTTP/2 flow-control windows of every gRPC server (see `serve_grpc`).
const CONNECTION_WINDOW: u32 = 16 << 20;
const STREAM_WINDOW: u32 = 256 << 10;

/// The services one process serves over gRPC.
#[derive(Default)]
pub struct Services {
    pub router: Option<crate::router::Router>,
    pub worker: Option<crate::worker::Worker>,
    pub aggregator: Option<crate::aggregator::Aggregator>,
    /// Serve TLS (mutual when it names a client CA); None: plaintext.
    pub tls: Option<tonic::transport::ServerTlsConfig>,
    /// The cluster's keys: the internal services (WorkerService, AggregatorService) take
    /// only calls with a proof made with them.
    pub cluster_keys: Option<crate::cluster_keys::ClusterKeys>,
    /// This node's member id (the address it registers): proofs made for another are refused.
    pub member_id: String,
}

/// Binds `addr` (port 0 picks one), returning the listener and its real address.
pub async fn bind(addr: &str) -> std::io::Result<(TcpListener, SocketAddr)> {
    let l = TcpListener::bind(addr).await?;
    let a = l.local_addr()?;
    Ok((l, a))
}

/// Serves `services` on `listener` until `shutdown` resolves, then lets in-flight calls finish.
pub async fn serve_grpc(
    listener: TcpListener,
    services: Services,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    let (reporter, health) = tonic_health::server::health_reporter();
    // Reflection in both versions: grpcurl before 1.9, Postman, Evans and grpcui ask for
    // v1alpha only (grpc-go and grpc-java servers serve both).
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(grm_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection()
        .build_v1()
        .expect("the embedded descriptors are valid");
    let reflection_v1alpha = reflection()
        .build_v1alpha()
        .expect("the embedded descriptors are valid");
    let mut builder = Server::builder();
    if let Some(tls) = services.tls {
        builder = builder.tls_config(tls)?;
    }
    let mut routes = builder
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(10)))
        // h2 lets a connection buffer unread small DATA frames up to a budget of half its
        // window; a stream's window well under that keeps a paused ScoreStream (a full
        // read-ahead queue) within it, so flow control, not a GOAWAY, slows the client.
        .initial_connection_window_size(Some(CONNECTION_WINDOW))
        .initial_stream_window_size(Some(STREAM_WINDOW))
        .add_service(health)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha);
    if let Some(r) = services.router {
        reporter
            .set_serving::<RewardServiceServer<crate::router::Router>>()
            .await;
        let token = r.auth().cloned();
        let limit = r.limits().max_request_bytes;
        routes = routes.add_service(InterceptedService::new(
            crate::errors::PublicErrors {
                // A unary message over the router's limit is refused on its frame header,
                // before it is buffered; a stream's messages up to the cluster's ceiling are
                // read and each one over the limit answered in band (see PublicErrors).
                inner: RewardServiceServer::new(r)
                    .max_decoding_message_size(limit.max(MAX_MESSAGE_BYTES))
                    .max_encoding_message_size(MAX_MESSAGE_BYTES),
                unary_limit: limit,
            },
            move |req| crate::auth::check(token.as_ref(), req),
        ));
    }
    if let Some(w) = services.worker {
        reporter
            .set_serving::<WorkerServiceServer<crate::worker::Worker>>()
            .await;
        routes = routes.add_service(crate::internal_calls::RequireProof::new(
            WorkerServiceServer::new(w)
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
            services.cluster_keys.clone(),
            services.member_id.clone(),
        ));
    }
    if let Some(a) = services.aggregator {
        reporter
            .set_serving::<AggregatorServiceServer<crate::aggregator::Aggregator>>()
            .await;
        routes = routes.add_service(crate::internal_calls::RequireProof::new(
            AggregatorServiceServer::new(a)
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
            services.cluster_keys.clone(),
            services.member_id.clone(),
        ));
    }
    routes
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown)
        .await
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn termination() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
