//! Generated gRPC code of `proto/grm/v1`: the public `RewardService` and the internal
//! services between router, workers and aggregator.

pub mod v1 {
    tonic::include_proto!("grm.v1");
}

/// The encoded descriptors of every service here, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("grm_descriptor");
