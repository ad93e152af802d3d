// The paged KV cache in bf16 (layout in common.cuh). CPU references: cpu::kv::CpuKv::write and
// CpuKv::copy. `layer_stride` is the elements of one layer's K (or V) region.

__device__ __forceinline__ u64 head_base(u64 block, int head, int kv_heads, int block_size,
                                         int head_dim) {
    return ((block * kv_heads + head) * (u64)block_size) * head_dim;
}

// Writes row r's K and V ([kv_heads x head_dim] each) at global slot slots[r]
// (block * block_size + offset) of one layer. Grid: one block per row.
extern "C" __global__ void write_kv(const float* k, const float* v, const u64* slots,
                                    int kv_heads, int head_dim, int block_size, bf16* kcache,
                                    bf16* vcache) {
    int r = blockIdx.x, width = kv_heads * head_dim;
    u64 slot = slots[r], b = slot / block_size;
    int s = (int)(slot % block_size);
    for (int i = threadIdx.x; i < width; i += blockDim.x) {
        int h = i / head_dim, d = i % head_dim;
        u64 base = head_base(b, h, kv_heads, block_size, head_dim);
        kcache[base + (u64)d * block_size + s] = f32_to_bf16(k[(u64)r * width + i]);
        vcache[base + (u64)s * head_dim + d] = f32_to_bf16(v[(u64)r * width + i]);
    }
}

// Copy-on-write: the first n[i] slots of block src[i] into block dst[i], in every layer.
// Grid: (ops, layers).
extern "C" __global__ void copy_blocks(const unsigned int* src, const unsigned int* dst,
                                       const unsigned int* n, int kv_heads, int head_dim,
                                       int block_size, u64 layer_stride, bf16* kcache,
                                       bf16* vcache) {
    int op = blockIdx.x;
    u64 layer = blockIdx.y * layer_stride;
    int slots = (int)n[op];
    int per_head = block_size * head_dim;
    for (int i = threadIdx.x; i < kv_heads * per_head; i += blockDim.x) {
        int h = i / per_head, e = i % per_head;
        u64 sb = layer + head_base(src[op], h, kv_heads, block_size, head_dim);
        u64 db = layer + head_base(dst[op], h, kv_heads, block_size, head_dim);
        // Keys: e = d * block_size + s; values: e = s * head_dim + d.
        if (e % block_size < slots) kcache[db + e] = kcache[sb + e];
        if (e / head_dim < slots) vcache[db + e] = vcache[sb + e];
    }
}
