// Sampling on the GPU, so that only token ids cross to the host each step. CPU reference:
// device_sampler::sample_row (the same algorithm; sums in another order).
//
// Per row: temperature 0 is greedy (the lowest index among equal maxima). Otherwise
// p_i = exp((x_i - max) / T); the nucleus is {i : p_i >= t} for the largest threshold t
// whose kept mass reaches top_p of the total (found by bisection, so no sort of the
// vocabulary); the token is where the running sum of kept p_i in index order passes
// u * kept mass, u in [0, 1) drawn from (seed, step) by SplitMix64 (counter-based: no state
// to carry between steps). Grid: one block per row; block: 1024 threads.

#define SAMPLE_THREADS 1024
#define BISECTION_STEPS 40

__device__ __forceinline__ u64 splitmix64(u64 x) {
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

extern "C" __global__ void sample_rows(const float* logits, int vocab, const float* temperature,
                                       const float* top_p, const u64* seeds, const u64* steps,
                                       unsigned int* tokens) {
    __shared__ float scratch[32];
    __shared__ float chunk_sum[SAMPLE_THREADS];
    __shared__ int best_idx[SAMPLE_THREADS];
    __shared__ float best_val[SAMPLE_THREADS];
    const int r = blockIdx.x, t = threadIdx.x;
    const float* x = logits + (u64)r * vocab;
    // Each thread owns one contiguous chunk of the vocabulary (index order matters below).
    const int per = (vocab + SAMPLE_THREADS - 1) / SAMPLE_THREADS;
    const int begin = min(vocab, t * per), end = min(vocab, begin + per);

    // Max (and its first index).
    float bv = -INFINITY;
    int bi = vocab;
    for (int i = begin; i < end; i++)
        if (x[i] > bv) { bv = x[i]; bi = i; }
    best_val[t] = bv;
    best_idx[t] = bi;
    __syncthreads();
    for (int stride = SAMPLE_THREADS / 2; stride > 0; stride >>= 1) {
        if (t < stride) {
            float ov = best_val[t + stride];
            int oi = best_idx[t + stride];
            if (ov > best_val[t] || (ov == best_val[t] && oi < best_idx[t])) {
                best_val[t] = ov;
                best_idx[t] = oi;
            }
        }
        __syncthreads();
    }
    const float mx = best_val[0];
    const float temp = temperature[r];
    if (temp == 0.0f) {
        if (t == 0) tokens[r] = (unsigned int)(best_idx[0] < vocab ? best_idx[0] : 0);
        return;
    }
    const float inv_t = 1.0f / temp;
    float local = 0.0f;
    for (int i = begin; i < end; i++) local += expf((x[i] - mx) * inv_t);
    const float total = block_sum(local, scratch);

    // The nucleus threshold: the largest t with mass(p >= t) >= top_p * total. p_max = 1.
    float thr = 0.0f;
    const float target = top_p[r] * total;
    if (top_p[r] < 1.0f) {
        float lo_t = 0.0f, hi_t = 1.0f;
        for (int it = 0; it < BISECTION_STEPS; it++) {
            float mid = 0.5f * (lo_t + hi_t);
            float kept = 0.0f;
            for (int i = begin; i < end; i++) {
                float p = expf((x[i] - mx) * inv_t);
                if (p >= mid) kept += p;
            }
            if (block_sum(kept, scratch) >= target) lo_t = mid; else hi_t = mid;
        }
        thr = lo_t;
    }
    // Kept mass per chunk, then an exclusive scan over the chunks in index order.
    float mine = 0.0f;
    for (int i = begin; i < end; i++) {
        float p = expf((x[i] - mx) * inv_t);
        if (p >= thr) mine += p;
    }
    chunk_sum[t] = mine;
    __syncthreads();
    if (t == 0) {
        float run = 0.0f;
        for (int i = 0; i < SAMPLE_THREADS; i++) {
            float v = chunk_sum[i];
            chunk_sum[i] = run;
            run += v;
        }
        scratch[0] = run;
    }
    __syncthreads();
    const float kept_total = scratch[0];
    const u64 bits = splitmix64(seeds[r] ^ splitmix64(steps[r]));
    const float u = (float)(bits >> 40) * (1.0f / 16777216.0f);
    const float goal = u * kept_total;
    float run = chunk_sum[t];
    // Exactly one chunk picks: the one whose range of the running sum holds the goal, or,
    // when rounding put the goal at the very end, the last chunk with mass (its end equals
    // kept_total bit for bit: the scan above added the same two numbers).
    // (`run < kept_total`: a trailing chunk whose mass was lost to rounding does not count.)
    const bool holds = goal >= run && goal < run + mine;
    const bool at_end = goal >= kept_total && run + mine == kept_total && run < kept_total;
    if (mine > 0.0f && (holds || at_end)) {
        // Within the chunk, from zero as `mine` was summed: where its running sum passes the
        // rest of the goal. Tokens of probability 0 are never drawn; if rounding leaves the
        // goal unreached, the chunk's last token of positive probability is.
        const float need = goal - run;
        float acc = 0.0f;
        int last = -1;
        for (int i = begin; i < end; i++) {
            float p = expf((x[i] - mx) * inv_t);
            if (p < thr || p <= 0.0f) continue;
            last = i;
            acc += p;
            if (acc > need) break;
        }
        if (last >= 0) tokens[r] = (unsigned int)last;
    }
}
