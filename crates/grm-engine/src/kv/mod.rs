//! The paged KV cache's bookkeeping: block pool (free list, reference counts), prefix cache
//! (hash chain of full blocks, LRU), block manager (per-sequence block tables). The storage
//! itself belongs to the backend (`cpu::kv`), laid out the same way on every backend.

pub mod block_manager;
pub mod block_pool;
pub mod prefix_cache;

pub use block_manager::{
    BlockManager, BlockTable, CopyOp, KvStats, OutOfBlocks, SeqId, TreePrompt,
};
pub use block_pool::BlockId;
