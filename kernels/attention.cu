// Paged attention over the bf16 KV cache, f32 accumulate. CPU reference:
// cpu::attention::attend_row (the same definition; the order of the sums differs).
//
// For query row r (position pos, sequence seq) and head h (KV head h / G, G = heads/kv_heads):
//   keys j = lo..=pos, lo = pos - window + 1 on sliding layers (window > 0), else 0;
//   s_j = (q . k_j) * scale, then tanh(s_j / cap) * cap when cap > 0;
//   out = sum_j softmax(s)_j v_j.
// Key j of a sequence lives in block tables[table_start[seq] + j / block_size] at slot
// j % block_size. The k samples of one request point at the same prompt blocks, so their
// decode blocks read the same addresses and the prompt is served from L2 after the first.
//
// Both kernels score with lanes across keys, not across dimensions: the cache stores keys
// transposed ([head_dim][block_size] per block), so lanes reading consecutive keys at one
// dimension read consecutive addresses, and a key's score needs no butterfly sum of its own.

#define MAX_GROUP 32
#define MAX_DIMS_PER_LANE 8   // head_dim <= 256
#define PREFILL_WARPS 8
#define PAIRS_PER_WARP 4      // (query row, head) pairs per warp in the prefill kernel
#define SPLIT_KEYS 256        // keys per split of the decode kernel (cuda/plan.rs: DECODE_SPLIT_KEYS)
#define GROUP_CHUNK 4         // heads of a group scored together in registers (decode)

__device__ __forceinline__ u64 kv_head_base(u64 block, int head, int kv_heads, int block_size,
                                            int head_dim) {
    return ((block * kv_heads + head) * (u64)block_size) * head_dim;
}

__device__ __forceinline__ float cap_score(float s, float cap) {
    return cap > 0.0f ? tanhf(s / cap) * cap : s;
}

// Prefill: a tile of consecutive query rows of one sequence (rows tile_row0[t] ..
// + tile_rows[t], positions increasing) against one KV head. Each key block is read from the
// cache once per tile into shared memory and used by every (row, head) pair of the tile: this
// is where GQA and the causal tile save reads. A warp takes its pairs one at a time; for each
// it scores a block's keys with lanes across keys (and, for blocks under 32 keys, the rest of
// the lanes across interleaved dimensions), updates the running max and sum once per block,
// then accumulates values with lanes across dimensions.
// Grid: (tiles, kv_heads); block: 8 warps; dynamic shared memory, in floats:
// head_dim * (block_size + 1) keys (padded against bank conflicts) + block_size * head_dim
// values + 32 * head_dim queries (cuda/mod.rs: prefill_shared_bytes). Host guarantees
// tile_rows * G <= 8 * PAIRS_PER_WARP, G <= MAX_GROUP, head_dim <= 256.
extern "C" __global__ void attn_prefill(const float* q, const bf16* kc, const bf16* vc,
                                        const unsigned int* tables,
                                        const unsigned int* table_start,
                                        const unsigned int* seq_of,
                                        const unsigned int* positions,
                                        const unsigned int* tile_row0,
                                        const unsigned int* tile_rows, int heads, int kv_heads,
                                        int head_dim, int block_size, float scale, float cap,
                                        int window, float* out) {
    extern __shared__ float tile[];
    const int kstride = block_size + 1;
    float* ks = tile;                              // [head_dim][block_size + 1]
    float* vs = ks + head_dim * kstride;           // [block_size][head_dim]
    float* qs = vs + block_size * head_dim;        // [pairs][head_dim]
    const int G = heads / kv_heads, kh = blockIdx.y;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int row0 = tile_row0[blockIdx.x], nrows = tile_rows[blockIdx.x];
    const int pairs = nrows * G, qcols = heads * head_dim;
    const unsigned int* table = tables + table_start[seq_of[row0]];

    // Pair p = (row p / G, head kh * G + p % G).
    for (int e = threadIdx.x; e < pairs * head_dim; e += blockDim.x) {
        int p = e / head_dim, d = e % head_dim;
        qs[e] = q[(u64)(row0 + p / G) * qcols + (kh * G + p % G) * head_dim + d];
    }
    // Scoring lanes: kpp keys per pass, each scored by dsplit lanes over interleaved dims.
    const int kpp = block_size >= 32 ? 32 : block_size;
    const int dsplit = (32 % kpp == 0) ? 32 / kpp : 1;
    const int my_key = lane % kpp, part = lane / kpp;
    const bool scorer = part < dsplit;

    float acc[PAIRS_PER_WARP][MAX_DIMS_PER_LANE];
    float m[PAIRS_PER_WARP], l[PAIRS_PER_WARP];
    int pos[PAIRS_PER_WARP], lo[PAIRS_PER_WARP];
#pragma unroll
    for (int k = 0; k < PAIRS_PER_WARP; k++) {
        int p = warp + k * PREFILL_WARPS;
        m[k] = -INFINITY;
        l[k] = 0.0f;
        pos[k] = -1;
        lo[k] = 0;
        if (p < pairs) {
            pos[k] = (int)positions[row0 + p / G];
            lo[k] = window > 0 ? max(0, pos[k] - window + 1) : 0;
        }
#pragma unroll
        for (int i = 0; i < MAX_DIMS_PER_LANE; i++) acc[k][i] = 0.0f;
    }
    const int first_pos = (int)positions[row0];
    const int last_pos = (int)positions[row0 + nrows - 1];
    const int first_key = window > 0 ? max(0, first_pos - window + 1) : 0;
    const int per_block = block_size * head_dim;

    for (int b = first_key / block_size; b <= last_pos / block_size; b++) {
        u64 base = kv_head_base(table[b], kh, kv_heads, block_size, head_dim);
        __syncthreads();
        for (int e = threadIdx.x; e < per_block; e += blockDim.x) {
            int d = e / block_size, s = e % block_size;
            ks[d * kstride + s] = bf16_to_f32(kc[base + e]);
            vs[e] = bf16_to_f32(vc[base + e]);
        }
        __syncthreads();
        const int j0 = b * block_size;
#pragma unroll
        for (int k = 0; k < PAIRS_PER_WARP; k++) {
            // Warp-uniform: the pair sees none of this block's keys.
            if (pos[k] < j0 || lo[k] > j0 + block_size - 1) continue;
            const float* qp = qs + (warp + k * PREFILL_WARPS) * head_dim;
            for (int s0 = 0; s0 < block_size; s0 += kpp) {
                const int s = s0 + my_key, j = j0 + s;
                // Four independent sums, so the FMAs do not wait on each other.
                float d0 = 0.0f, d1 = 0.0f, d2 = 0.0f, d3 = 0.0f;
                if (scorer && s < block_size) {
                    int d = part;
                    for (; d + 3 * dsplit < head_dim; d += 4 * dsplit) {
                        d0 = fmaf(qp[d], ks[d * kstride + s], d0);
                        d1 = fmaf(qp[d + dsplit], ks[(d + dsplit) * kstride + s], d1);
                        d2 = fmaf(qp[d + 2 * dsplit], ks[(d + 2 * dsplit) * kstride + s], d2);
                        d3 = fmaf(qp[d + 3 * dsplit], ks[(d + 3 * dsplit) * kstride + s], d3);
                    }
                    for (; d < head_dim; d += dsplit) d0 = fmaf(qp[d], ks[d * kstride + s], d0);
                }
                float dot = (d0 + d1) + (d2 + d3);
                if (dsplit > 1)
                    for (int o = kpp; o < 32; o <<= 1) dot += __shfl_xor_sync(0xffffffffu, dot, o);
                const bool live = scorer && s < block_size && j >= lo[k] && j <= pos[k];
                const float sc = live ? cap_score(dot * scale, cap) : -INFINITY;
                const float mb = warp_max(sc);
                if (mb == -INFINITY) continue;
                const float mn = fmaxf(m[k], mb);
                const float c = expf(m[k] - mn);
                const float pj = live ? expf(sc - mn) : 0.0f;
                l[k] = l[k] * c + warp_sum(part == 0 ? pj : 0.0f);
                m[k] = mn;
#pragma unroll
                for (int i = 0; i < MAX_DIMS_PER_LANE; i++) acc[k][i] *= c;
                const int nk = min(kpp, block_size - s0);
                for (int t = 0; t < nk; t++) {
                    // Lane t (part 0) holds the weight of key s0 + t.
                    const float w = __shfl_sync(0xffffffffu, pj, t);
                    if (w == 0.0f) continue;
                    const float* vr = vs + (s0 + t) * head_dim;
#pragma unroll
                    for (int i = 0; i < MAX_DIMS_PER_LANE; i++) {
                        int d = lane + 32 * i;
                        if (d < head_dim) acc[k][i] = fmaf(w, vr[d], acc[k][i]);
                    }
                }
            }
        }
    }
#pragma unroll
    for (int k = 0; k < PAIRS_PER_WARP; k++) {
        int p = warp + k * PREFILL_WARPS;
        if (p >= pairs) continue;
        int rt = p / G, g = p % G;
        float inv = 1.0f / l[k];
#pragma unroll
        for (int i = 0; i < MAX_DIMS_PER_LANE; i++) {
            int d = lane + 32 * i;
            if (d < head_dim)
                out[(u64)(row0 + rt) * qcols + (kh * G + g) * head_dim + d] = acc[k][i] * inv;
        }
    }
}

// Decode, split over the keys (as flash-decoding): one query row (rows[blockIdx.x]) and one KV
// head per (x, y), and split z takes keys lo + z * SPLIT_KEYS .. + SPLIT_KEYS of the row, so a
// long context is read by many blocks at once. A thread per key scores it for every head of the
// group (the key read once), a warp per head turns the scores into weights, and a thread per
// dimension sums the values. With one split the block writes the output; with more it leaves
// its unnormalised output in part_o and its max and sum in part_ml for attn_decode_merge.
// Grid: (rows, kv_heads, splits); block: any multiple of 32 threads; dynamic shared memory:
// SPLIT_KEYS u64 + (G * head_dim + G * SPLIT_KEYS + 2 * MAX_GROUP) floats
// (cuda/mod.rs: decode_shared_bytes). part_o: [rows][heads][splits][head_dim];
// part_ml: [rows][heads][splits][2].
extern "C" __global__ void attn_decode(const float* q, const bf16* kc, const bf16* vc,
                                       const unsigned int* tables,
                                       const unsigned int* table_start,
                                       const unsigned int* seq_of,
                                       const unsigned int* positions, const unsigned int* rows,
                                       int heads, int kv_heads, int head_dim, int block_size,
                                       float scale, float cap, int window, float* out,
                                       float* part_o, float* part_ml) {
    extern __shared__ u64 smem[];
    u64* kbase = smem;                             // [SPLIT_KEYS] each key's block base
    float* qs = (float*)(kbase + SPLIT_KEYS);      // [G][head_dim]
    const int G = heads / kv_heads, kh = blockIdx.y;
    const int split = blockIdx.z, splits = gridDim.z;
    float* ps = qs + G * head_dim;                 // [G][SPLIT_KEYS] scores, then weights
    float* ml = ps + G * SPLIT_KEYS;               // [G][2] max and sum
    const int ri = blockIdx.x, r = (int)rows[ri];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    const int qcols = heads * head_dim, gd = G * head_dim;
    const int pos = (int)positions[r];
    const int lo = window > 0 ? max(0, pos - window + 1) : 0;
    const int k0 = lo + split * SPLIT_KEYS;
    const int n = min(pos + 1, k0 + SPLIT_KEYS) - k0;
    // (row, head kh * G + g, split) is partial pb + g * splits.
    const u64 pb = ((u64)ri * heads + kh * G) * splits + split;
    if (n <= 0) {
        // A split past this row's keys (another row of the step is longer): nothing to merge.
        for (int g = threadIdx.x; g < G; g += blockDim.x) {
            part_ml[2 * (pb + (u64)g * splits)] = -INFINITY;
            part_ml[2 * (pb + (u64)g * splits) + 1] = 0.0f;
        }
        return;
    }
    const unsigned int* table = tables + table_start[seq_of[r]];
    for (int i = threadIdx.x; i < gd; i += blockDim.x) qs[i] = q[(u64)r * qcols + kh * gd + i];
    for (int t = threadIdx.x; t < n; t += blockDim.x)
        kbase[t] = kv_head_base(table[(k0 + t) / block_size], kh, kv_heads, block_size, head_dim);
    __syncthreads();

    for (int t = threadIdx.x; t < n; t += blockDim.x) {
        const bf16* kp = kc + kbase[t] + (k0 + t) % block_size;
        for (int g0 = 0; g0 < G; g0 += GROUP_CHUNK) {
            // Even and odd dimensions summed apart (head_dim is even), so the FMAs of a head
            // do not wait on each other.
            float s0[GROUP_CHUNK], s1[GROUP_CHUNK];
#pragma unroll
            for (int u = 0; u < GROUP_CHUNK; u++) s0[u] = s1[u] = 0.0f;
#pragma unroll 4
            for (int d = 0; d < head_dim; d += 2) {
                const float k0 = bf16_to_f32(kp[(u64)d * block_size]);
                const float k1 = bf16_to_f32(kp[(u64)(d + 1) * block_size]);
#pragma unroll
                for (int u = 0; u < GROUP_CHUNK; u++)
                    if (g0 + u < G) {
                        s0[u] = fmaf(qs[(g0 + u) * head_dim + d], k0, s0[u]);
                        s1[u] = fmaf(qs[(g0 + u) * head_dim + d + 1], k1, s1[u]);
                    }
            }
#pragma unroll
            for (int u = 0; u < GROUP_CHUNK; u++)
                if (g0 + u < G)
                    ps[(g0 + u) * SPLIT_KEYS + t] = cap_score((s0[u] + s1[u]) * scale, cap);
        }
    }
    __syncthreads();
    for (int g = warp; g < G; g += warps) {
        float* pg = ps + g * SPLIT_KEYS;
        float mx = -INFINITY;
        for (int t = lane; t < n; t += 32) mx = fmaxf(mx, pg[t]);
        mx = warp_max(mx);
        float sum = 0.0f;
        for (int t = lane; t < n; t += 32) {
            const float e = expf(pg[t] - mx);
            pg[t] = e;
            sum += e;
        }
        sum = warp_sum(sum);
        if (lane == 0) {
            ml[2 * g] = mx;
            ml[2 * g + 1] = sum;
        }
    }
    __syncthreads();
    for (int d = threadIdx.x; d < head_dim; d += blockDim.x) {
        for (int g0 = 0; g0 < G; g0 += GROUP_CHUNK) {
            float o[GROUP_CHUNK];
#pragma unroll
            for (int u = 0; u < GROUP_CHUNK; u++) o[u] = 0.0f;
            // Unrolled so that several value loads are in flight at once.
#pragma unroll 8
            for (int t = 0; t < n; t++) {
                const int s = (k0 + t) % block_size;
                const float v = bf16_to_f32(vc[kbase[t] + (u64)s * head_dim + d]);
#pragma unroll
                for (int u = 0; u < GROUP_CHUNK; u++)
                    if (g0 + u < G) o[u] = fmaf(ps[(g0 + u) * SPLIT_KEYS + t], v, o[u]);
            }
#pragma unroll
            for (int u = 0; u < GROUP_CHUNK; u++) {
                const int g = g0 + u;
                if (g >= G) continue;
                if (splits == 1)
                    out[(u64)r * qcols + (kh * G + g) * head_dim + d] = o[u] / ml[2 * g + 1];
                else
                    part_o[(pb + (u64)g * splits) * head_dim + d] = o[u];
            }
        }
    }
    if (splits > 1)
        for (int g = threadIdx.x; g < G; g += blockDim.x) {
            part_ml[2 * (pb + (u64)g * splits)] = ml[2 * g];
            part_ml[2 * (pb + (u64)g * splits) + 1] = ml[2 * g + 1];
        }
}

// The splits of attn_decode merged: out = sum_z o_z e^(m_z - M) / sum_z l_z e^(m_z - M).
// Grid: (rows, heads); block: any number of threads (over head_dim).
extern "C" __global__ void attn_decode_merge(const float* part_o, const float* part_ml,
                                             const unsigned int* rows, int heads, int head_dim,
                                             int splits, float* out) {
    const int ri = blockIdx.x, h = blockIdx.y, r = (int)rows[ri];
    const u64 base = ((u64)ri * heads + h) * splits;
    float mx = -INFINITY;
    for (int z = 0; z < splits; z++) mx = fmaxf(mx, part_ml[2 * (base + z)]);
    float total = 0.0f;
    for (int z = 0; z < splits; z++) {
        const float mz = part_ml[2 * (base + z)];
        if (mz != -INFINITY) total = fmaf(part_ml[2 * (base + z) + 1], expf(mz - mx), total);
    }
    for (int d = threadIdx.x; d < head_dim; d += blockDim.x) {
        float o = 0.0f;
        for (int z = 0; z < splits; z++) {
            const float mz = part_ml[2 * (base + z)];
            if (mz != -INFINITY) o = fmaf(part_o[(base + z) * head_dim + d], expf(mz - mx), o);
        }
        out[(u64)r * heads * head_dim + (u64)h * head_dim + d] = o / total;
    }
}
