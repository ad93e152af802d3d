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

#define MAX_GROUP 32
#define MAX_DIMS_PER_LANE 8   // head_dim <= 256
#define PREFILL_WARPS 8
#define PAIRS_PER_WARP 4      // (query row, head) pairs per warp in the prefill kernel

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
// is where GQA and the causal tile save reads. Grid: (tiles, kv_heads); block: 8 warps;
// dynamic shared memory: 2 * block_size * head_dim floats. Host guarantees
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
    float* ks = tile;                           // [head_dim][block_size]
    float* vs = tile + block_size * head_dim;   // [block_size][head_dim]
    const int G = heads / kv_heads, kh = blockIdx.y;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int row0 = tile_row0[blockIdx.x], nrows = tile_rows[blockIdx.x];
    const int pairs = nrows * G, qcols = heads * head_dim;
    const unsigned int* table = tables + table_start[seq_of[row0]];

    float qr[PAIRS_PER_WARP][MAX_DIMS_PER_LANE];
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
        int rt = p / G, g = p % G;
        if (p < pairs) {
            pos[k] = (int)positions[row0 + rt];
            lo[k] = window > 0 ? max(0, pos[k] - window + 1) : 0;
        }
#pragma unroll
        for (int i = 0; i < MAX_DIMS_PER_LANE; i++) {
            int d = lane + 32 * i;
            acc[k][i] = 0.0f;
            qr[k][i] = (p < pairs && d < head_dim)
                           ? q[(u64)(row0 + rt) * qcols + (kh * G + g) * head_dim + d]
                           : 0.0f;
        }
    }
    const int first_pos = (int)positions[row0];
    const int last_pos = (int)positions[row0 + nrows - 1];
    const int first_key = window > 0 ? max(0, first_pos - window + 1) : 0;
    const int per_block = block_size * head_dim;

    for (int b = first_key / block_size; b <= last_pos / block_size; b++) {
        u64 base = kv_head_base(table[b], kh, kv_heads, block_size, head_dim);
        __syncthreads();
        for (int e = threadIdx.x; e < per_block; e += blockDim.x) {
            ks[e] = bf16_to_f32(kc[base + e]);
            vs[e] = bf16_to_f32(vc[base + e]);
        }
        __syncthreads();
#pragma unroll
        for (int k = 0; k < PAIRS_PER_WARP; k++) {
            if (pos[k] < 0) continue;
            for (int s = 0; s < block_size; s++) {
                int j = b * block_size + s;
                if (j < lo[k] || j > pos[k]) continue;
                float part = 0.0f;
#pragma unroll
                for (int i = 0; i < MAX_DIMS_PER_LANE; i++) {
                    int d = lane + 32 * i;
                    if (d < head_dim) part = fmaf(qr[k][i], ks[d * block_size + s], part);
                }
                float sc = cap_score(warp_sum(part) * scale, cap);
                float mn = fmaxf(m[k], sc);
                float c = expf(m[k] - mn), pj = expf(sc - mn);
                l[k] = l[k] * c + pj;
                m[k] = mn;
#pragma unroll
                for (int i = 0; i < MAX_DIMS_PER_LANE; i++) {
                    int d = lane + 32 * i;
                    if (d < head_dim) acc[k][i] = fmaf(pj, vs[s * head_dim + d], acc[k][i] * c);
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

// Decode: one query row (rows[blockIdx.x]) against one KV head, the keys split across the
// warps (a long context is read in parallel), each warp keeping a running max, sum and
// weighted values per head of the group; the warps' partial results are merged at the end.
// Grid: (rows, kv_heads); block: any multiple of 32 up to 1024 threads; dynamic shared memory:
// (G * head_dim * (1 + warps) + 2 * warps * G) floats.
extern "C" __global__ void attn_decode(const float* q, const bf16* kc, const bf16* vc,
                                       const unsigned int* tables,
                                       const unsigned int* table_start,
                                       const unsigned int* seq_of,
                                       const unsigned int* positions, const unsigned int* rows,
                                       int heads, int kv_heads, int head_dim, int block_size,
                                       float scale, float cap, int window, float* out) {
    extern __shared__ float sm[];
    const int G = heads / kv_heads, kh = blockIdx.y;
    const int r = (int)rows[blockIdx.x];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    const int qcols = heads * head_dim, gd = G * head_dim;
    float* qs = sm;                    // [G][head_dim]
    float* acc = qs + gd;              // [warps][G][head_dim]
    float* ms = acc + warps * gd;      // [warps][G]
    float* ls = ms + warps * G;        // [warps][G]

    for (int i = threadIdx.x; i < gd; i += blockDim.x)
        qs[i] = q[(u64)r * qcols + kh * gd + i];
    for (int i = threadIdx.x; i < warps * gd; i += blockDim.x) acc[i] = 0.0f;
    __syncthreads();

    const int pos = (int)positions[r];
    const int lo = window > 0 ? max(0, pos - window + 1) : 0;
    const unsigned int* table = tables + table_start[seq_of[r]];
    // Every lane of a warp holds the same running max and sum (the butterfly sums agree).
    float m[MAX_GROUP], l[MAX_GROUP];
    for (int g = 0; g < G; g++) {
        m[g] = -INFINITY;
        l[g] = 0.0f;
    }
    for (int j = lo + warp; j <= pos; j += warps) {
        u64 base = kv_head_base(table[j / block_size], kh, kv_heads, block_size, head_dim);
        int s = j % block_size;
        for (int g = 0; g < G; g++) {
            float part = 0.0f;
            for (int d = lane; d < head_dim; d += 32)
                part = fmaf(qs[g * head_dim + d], bf16_to_f32(kc[base + (u64)d * block_size + s]), part);
            float sc = cap_score(warp_sum(part) * scale, cap);
            float mn = fmaxf(m[g], sc);
            float c = expf(m[g] - mn), pj = expf(sc - mn);
            l[g] = l[g] * c + pj;
            m[g] = mn;
            float* a = acc + (warp * G + g) * head_dim;
            for (int d = lane; d < head_dim; d += 32)
                a[d] = fmaf(pj, bf16_to_f32(vc[base + (u64)s * head_dim + d]), a[d] * c);
        }
    }
    if (lane == 0)
        for (int g = 0; g < G; g++) {
            ms[warp * G + g] = m[g];
            ls[warp * G + g] = l[g];
        }
    __syncthreads();
    for (int i = threadIdx.x; i < gd; i += blockDim.x) {
        int g = i / head_dim, d = i % head_dim;
        float mx = -INFINITY;
        for (int w = 0; w < warps; w++) mx = fmaxf(mx, ms[w * G + g]);
        float total = 0.0f, o = 0.0f;
        for (int w = 0; w < warps; w++) {
            float mw = ms[w * G + g];
            if (mw == -INFINITY) continue;   // a warp that saw no key
            float f = expf(mw - mx);
            total = fmaf(ls[w * G + g], f, total);
            o = fmaf(acc[(w * G + g) * head_dim + d], f, o);
        }
        out[(u64)r * qcols + kh * gd + i] = o / total;
    }
}
