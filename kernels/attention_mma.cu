// Prefill attention on the tensor cores (mma.sync m16n8k16, bf16 in, f32 accumulate), as flash
// attention: scores and weights never leave registers. CPU reference: cpu::attention::attend_row
// with the queries rounded to bf16 (the kernel's inputs) and each weight rounded to bf16 before
// it multiplies a value (the products' inputs); the tests compare at that precision.
//
// Same definition as attention.cu's attn_prefill, over the same paged cache and the same tiles
// (consecutive query rows of one sequence against one KV head): for query row r, head h,
//   keys j = lo..=pos, lo = pos - window + 1 on sliding layers (window > 0), else 0;
//   s_j = (q . k_j) * scale, then tanh(s_j / cap) * cap when cap > 0;
//   out = sum_j softmax(s)_j v_j.
//
// A block of MMA_WARPS warps takes MMA_WARPS * 16 (row, head) pairs of one KV head: pair
// p = (row p / G, head kh * G + p % G), so the heads of a group share every key they read. The
// keys come in chunks of CHUNK_KEYS, gathered from the cache's blocks into shared memory
// (keys key-major, values dimension-major: the layouts whose B fragments are one 32-bit load
// each; the cache keeps keys dimension-major and values key-major, for the decode kernel).
// Each warp then computes its 16 pairs' scores for the chunk (S = Q K^T), updates their running
// max and sum, and adds P V, with P taken straight from S's accumulators (the C fragment of two
// n8 tiles is the A fragment of one k16 step).
//
// Fragments (PTX ISA, mma.m16n8k16, .bf16): g = lane / 4, t = lane % 4;
//   A (16 x 16, row): reg0 = A[g][2t..2t+1], reg1 = A[g+8][2t..], reg2 = A[g][2t+8..],
//                     reg3 = A[g+8][2t+8..];
//   B (16 x 8, col):  reg0 = B[2t..2t+1][g], reg1 = B[2t+8..2t+9][g];
//   C (16 x 8, f32):  c0, c1 = C[g][2t..2t+1], c2, c3 = C[g+8][2t..2t+1].
// Grid: (tiles, kv_heads); block: MMA_WARPS * 32 threads; dynamic shared memory, in bf16:
// MMA_PAIRS * (head_dim + 8) queries + CHUNK_KEYS * (head_dim + 8) keys
// + head_dim * (CHUNK_KEYS + 8) values (cuda/mod.rs: mma_prefill_shared_bytes); the rows pad by
// 8 so that the 8 groups of a fragment load fall in different banks. Host guarantees
// tile_rows * G <= MMA_PAIRS, head_dim a multiple of 16 and at most the kernel's (the _64,
// _128 and _256 forms differ only in the registers the output holds), sm_80 or later.

#define MMA_WARPS 4
#define MMA_PAIRS 64          // MMA_WARPS * 16 (cuda/plan.rs: MMA_PREFILL_PAIRS)
#define CHUNK_KEYS 32
#define ROW_PAD 8
#define MMA_ARGS                                                                               \
    const float *q, const bf16 *kc, const bf16 *vc, const unsigned int *tables,                \
        const unsigned int *table_start, const unsigned int *seq_of,                           \
        const unsigned int *positions, const unsigned int *tile_row0,                          \
        const unsigned int *tile_rows, int heads, int kv_heads, int head_dim, int block_size,  \
        float scale, float cap, int window, float *out

#if __CUDA_ARCH__ >= 800

__device__ __forceinline__ unsigned int pack_bf16(float lo, float hi) {
    return (unsigned int)f32_to_bf16(lo) | ((unsigned int)f32_to_bf16(hi) << 16);
}

__device__ __forceinline__ void mma_bf16(float* c, const unsigned int* a, unsigned int b0,
                                         unsigned int b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Two consecutive bf16 of shared memory as one register (the lower index in the low half).
__device__ __forceinline__ unsigned int ld2(const bf16* p) {
    return *(const unsigned int*)p;
}

template <int MAX_DIM>
__device__ __forceinline__ void prefill_mma(MMA_ARGS) {
    extern __shared__ bf16 smem16[];
    const int qstride = head_dim + ROW_PAD, vstride = CHUNK_KEYS + ROW_PAD;
    bf16* qs = smem16;                                  // [MMA_PAIRS][head_dim + 8]
    bf16* ks = qs + MMA_PAIRS * qstride;                // [CHUNK_KEYS][head_dim + 8]
    bf16* vs = ks + CHUNK_KEYS * qstride;               // [head_dim][CHUNK_KEYS + 8]
    const int G = heads / kv_heads, kh = blockIdx.y;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int g = lane >> 2, t = lane & 3;
    const int row0 = tile_row0[blockIdx.x], nrows = tile_rows[blockIdx.x];
    const int pairs = nrows * G, qcols = heads * head_dim;
    const unsigned int* table = tables + table_start[seq_of[row0]];

    for (int e = threadIdx.x; e < MMA_PAIRS * head_dim; e += blockDim.x) {
        const int p = e / head_dim, d = e % head_dim;
        const float x = p < pairs ? q[(u64)(row0 + p / G) * qcols + (kh * G + p % G) * head_dim + d]
                                  : 0.0f;
        qs[p * qstride + d] = f32_to_bf16(x);
    }

    // This thread's two fragment rows: pairs warp * 16 + g and + 8. A pair past the tile sees
    // no key (pos -1) and is not written.
    int pos[2], lo[2];
#pragma unroll
    for (int h = 0; h < 2; h++) {
        const int p = warp * 16 + g + 8 * h;
        pos[h] = p < pairs ? (int)positions[row0 + p / G] : -1;
        lo[h] = window > 0 ? max(0, pos[h] - window + 1) : 0;
    }
    // The warp's key range, for skipping chunks none of its pairs sees (warp-uniform).
    int wlast = max(pos[0], pos[1]), wfirst = min(pos[0] < 0 ? 0x7fffffff : lo[0],
                                                   pos[1] < 0 ? 0x7fffffff : lo[1]);
    for (int o = 1; o < 32; o <<= 1) {
        wlast = max(wlast, __shfl_xor_sync(0xffffffffu, wlast, o));
        wfirst = min(wfirst, __shfl_xor_sync(0xffffffffu, wfirst, o));
    }

    const int dtiles = head_dim / 8;                    // n8 tiles of the output
    float acc[MAX_DIM / 8][4];
#pragma unroll
    for (int n = 0; n < MAX_DIM / 8; n++) acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.0f;
    float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};

    const int first_pos = (int)positions[row0];
    const int last_pos = (int)positions[row0 + nrows - 1];
    const int first_key = window > 0 ? max(0, first_pos - window + 1) : 0;
    const int log2_block = __ffs(block_size) - 1;
    const bool pow2 = (block_size & (block_size - 1)) == 0;

    // Chunks start on a multiple of 4 keys, so that 4 keys of a block (block_size a multiple
    // of 4) are one 8-byte load; keys before first_key are masked like any outside a window,
    // and only a quad's load may start below it (in first_key's own block): other loads skip
    // them, so a table that drops blocks before the window is never read out of range.
    const bool quads = (block_size & 3) == 0;
    for (int c0 = first_key & ~3; c0 <= last_pos; c0 += CHUNK_KEYS) {
        __syncthreads();  // the previous chunk is no longer read
        // Keys: cache [head_dim][block_size] per block -> ks[key][dim]; lanes over keys, so
        // the reads are consecutive within a block. A key past last_pos reads as 0.
        if (quads) {
            // A warp takes 16 keys (4 quads: a 32-byte run of a block) at 8 dimensions, so
            // its reads fill whole sectors and its stores span 8 banks.
            for (int e = threadIdx.x; e < CHUNK_KEYS / 4 * head_dim; e += blockDim.x) {
                const int quad = ((e >> 5) & 1) * 4 + (e & 3), d = (e >> 6) * 8 + ((e >> 2) & 7);
                const int s = quad * 4, j = c0 + s;
                u64 four = 0;
                if (j <= last_pos) {
                    const int b = pow2 ? j >> log2_block : j / block_size;
                    const int o = j - b * block_size;
                    four = *(const u64*)(kc + ((u64)table[b] * kv_heads + kh) * block_size * head_dim +
                                         (u64)d * block_size + o);
                }
#pragma unroll
                for (int i = 0; i < 4; i++)
                    ks[(s + i) * qstride + d] = j + i <= last_pos ? (bf16)(four >> (16 * i)) : (bf16)0;
            }
        } else {
            for (int e = threadIdx.x; e < CHUNK_KEYS * head_dim; e += blockDim.x) {
                const int d = e / CHUNK_KEYS, s = e % CHUNK_KEYS, j = c0 + s;
                bf16 x = 0;
                if (j >= first_key && j <= last_pos) {
                    const int b = pow2 ? j >> log2_block : j / block_size;
                    const int o = j - b * block_size;
                    x = kc[((u64)table[b] * kv_heads + kh) * block_size * head_dim + (u64)d * block_size + o];
                }
                ks[s * qstride + d] = x;
            }
        }
        // Values: cache [block_size][head_dim] -> vs[dim][key]; lanes over dimensions, 4 at a
        // time (head_dim is a multiple of 16).
        // A warp takes 8 keys at 16 dimensions (4 quads: 32 bytes of each key's row), so its
        // reads fill whole sectors and its transposed stores meet at most 2 to a bank.
        for (int e = threadIdx.x; e < CHUNK_KEYS * head_dim / 4; e += blockDim.x) {
            const int rest = e >> 3, dq = rest % (head_dim / 4);
            const int s = (rest / (head_dim / 4)) * 8 + (e & 7), d = dq * 4, j = c0 + s;
            u64 four = 0;
            if (j >= first_key && j <= last_pos) {
                const int b = pow2 ? j >> log2_block : j / block_size;
                const int o = j - b * block_size;
                four = *(const u64*)(vc + (((u64)table[b] * kv_heads + kh) * block_size + o) * head_dim + d);
            }
#pragma unroll
            for (int i = 0; i < 4; i++) vs[(d + i) * vstride + s] = (bf16)(four >> (16 * i));
        }
        __syncthreads();
        if (wlast < c0 || wfirst > c0 + CHUNK_KEYS - 1) continue;

        // S = Q K^T for the warp's 16 pairs and the chunk's 32 keys: 4 n8 tiles.
        float s[CHUNK_KEYS / 8][4];
#pragma unroll
        for (int n = 0; n < CHUNK_KEYS / 8; n++) s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.0f;
        const bf16* qw = qs + (warp * 16 + g) * qstride + 2 * t;
        for (int k0 = 0; k0 < head_dim; k0 += 16) {
            unsigned int a[4] = {ld2(qw + k0), ld2(qw + 8 * qstride + k0), ld2(qw + k0 + 8),
                                 ld2(qw + 8 * qstride + k0 + 8)};
#pragma unroll
            for (int n = 0; n < CHUNK_KEYS / 8; n++) {
                const bf16* kp = ks + (n * 8 + g) * qstride + k0 + 2 * t;
                mma_bf16(s[n], a, ld2(kp), ld2(kp + 8));
            }
        }
        // Scale, cap, mask; the chunk's max per row (a row's 32 keys lie in the 4 lanes of
        // its quad).
        float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
        for (int n = 0; n < CHUNK_KEYS / 8; n++)
#pragma unroll
            for (int i = 0; i < 4; i++) {
                const int h = i >> 1, j = c0 + n * 8 + 2 * t + (i & 1);
                const bool live = j >= lo[h] && j <= pos[h];
                const float x = s[n][i] * scale;
                s[n][i] = live ? (cap > 0.0f ? tanhf(x / cap) * cap : x) : -INFINITY;
                mx[h] = fmaxf(mx[h], s[n][i]);
            }
        float corr[2], sum[2] = {0.0f, 0.0f};
#pragma unroll
        for (int h = 0; h < 2; h++) {
            mx[h] = fmaxf(mx[h], __shfl_xor_sync(0xffffffffu, mx[h], 1));
            mx[h] = fmaxf(mx[h], __shfl_xor_sync(0xffffffffu, mx[h], 2));
            const float mn = fmaxf(m[h], mx[h]);
            // A row that has seen no key yet has nothing to rescale (and -inf - -inf is NaN).
            corr[h] = m[h] == -INFINITY ? 0.0f : expf(m[h] - mn);
            m[h] = mn;
        }
#pragma unroll
        for (int n = 0; n < CHUNK_KEYS / 8; n++)
#pragma unroll
            for (int i = 0; i < 4; i++) {
                const int h = i >> 1;
                // Each weight rounded to bf16 as the product will read it, and summed so, so
                // that the sum normalises exactly the weights that were applied.
                const float p = s[n][i] == -INFINITY ? 0.0f : bf16_to_f32(f32_to_bf16(expf(s[n][i] - m[h])));
                s[n][i] = p;
                sum[h] += p;
            }
#pragma unroll
        for (int h = 0; h < 2; h++) {
            sum[h] += __shfl_xor_sync(0xffffffffu, sum[h], 1);
            sum[h] += __shfl_xor_sync(0xffffffffu, sum[h], 2);
            l[h] = l[h] * corr[h] + sum[h];
        }
#pragma unroll
        for (int n = 0; n < MAX_DIM / 8; n++) {
            acc[n][0] *= corr[0];
            acc[n][1] *= corr[0];
            acc[n][2] *= corr[1];
            acc[n][3] *= corr[1];
        }
        // O += P V: key steps of 16 (two score tiles each) over the output's n8 tiles.
#pragma unroll
        for (int kk = 0; kk < CHUNK_KEYS / 16; kk++) {
            const unsigned int a[4] = {pack_bf16(s[2 * kk][0], s[2 * kk][1]),
                                       pack_bf16(s[2 * kk][2], s[2 * kk][3]),
                                       pack_bf16(s[2 * kk + 1][0], s[2 * kk + 1][1]),
                                       pack_bf16(s[2 * kk + 1][2], s[2 * kk + 1][3])};
#pragma unroll
            for (int n = 0; n < MAX_DIM / 8; n++) {
                if (n < dtiles) {
                    const bf16* vp = vs + (n * 8 + g) * vstride + kk * 16 + 2 * t;
                    mma_bf16(acc[n], a, ld2(vp), ld2(vp + 8));
                }
            }
        }
    }

#pragma unroll
    for (int h = 0; h < 2; h++) {
        const int p = warp * 16 + g + 8 * h;
        if (p >= pairs) continue;
        const float inv = 1.0f / l[h];
        float* o = out + (u64)(row0 + p / G) * qcols + (kh * G + p % G) * head_dim + 2 * t;
#pragma unroll
        for (int n = 0; n < MAX_DIM / 8; n++)
            if (n < dtiles) {
                o[n * 8] = acc[n][2 * h] * inv;
                o[n * 8 + 1] = acc[n][2 * h + 1] * inv;
            }
    }
}

#define MMA_KERNEL(D)                                                                          \
    extern "C" __global__ void __launch_bounds__(MMA_WARPS * 32) attn_prefill_mma_##D(MMA_ARGS) { \
        prefill_mma<D>(q, kc, vc, tables, table_start, seq_of, positions, tile_row0, tile_rows,  \
                       heads, kv_heads, head_dim, block_size, scale, cap, window, out);           \
    }
MMA_KERNEL(64)
MMA_KERNEL(128)
MMA_KERNEL(256)

#else

// Before sm_80 there is no bf16 mma: the host never picks these kernels there (cuda/mod.rs),
// but their names must load.
#define MMA_KERNEL(D)                                                                          \
    extern "C" __global__ void attn_prefill_mma_##D(MMA_ARGS) { __trap(); }
MMA_KERNEL(64)
MMA_KERNEL(128)
MMA_KERNEL(256)

#endif
