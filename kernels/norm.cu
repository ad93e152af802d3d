// Gemma-2's RMSNorm, x * rsqrt(mean(x^2) + eps) * (1 + w), in f32. CPU references:
// cpu::ops::rms_norm and cpu::ops::add_rms_norm. Grid: one block per row. A norm's output
// feeds products: where `half` is not null it is also written there rounded to bf16, the input
// cuBLAS reads for bf16 weights, so no cast runs between.

extern "C" __global__ void rms_norm(const float* x, const float* w, int cols, float eps,
                                    float* out, bf16* half) {
    __shared__ float scratch[32];
    const float* xr = x + (u64)blockIdx.x * cols;
    float ss = 0.0f;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) ss = fmaf(xr[c], xr[c], ss);
    float inv = 1.0f / sqrtf(block_sum(ss, scratch) / (float)cols + eps);
    float* o = out + (u64)blockIdx.x * cols;
    bf16* h = half ? half + (u64)blockIdx.x * cols : nullptr;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) {
        const float v = (xr[c] * inv) * (1.0f + w[c]);
        o[c] = v;
        if (h) h[c] = f32_to_bf16(v);
    }
}

// residual += rms_norm(x, w)
extern "C" __global__ void add_rms_norm(float* residual, const float* x, const float* w,
                                        int cols, float eps) {
    __shared__ float scratch[32];
    const float* xr = x + (u64)blockIdx.x * cols;
    float ss = 0.0f;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) ss = fmaf(xr[c], xr[c], ss);
    float inv = 1.0f / sqrtf(block_sum(ss, scratch) / (float)cols + eps);
    float* rr = residual + (u64)blockIdx.x * cols;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) rr[c] += (xr[c] * inv) * (1.0f + w[c]);
}

// The fused pair at every sublayer boundary: residual += rms_norm(x, w_post), then
// out = rms_norm(residual, w_next), one read of x and of the residual instead of two passes.
// The updated row stays in shared memory between the two (dynamic shared: cols floats).
extern "C" __global__ void add_rms_norm_norm(float* residual, const float* x,
                                             const float* w_post, const float* w_next,
                                             int cols, float eps, float* out, bf16* half) {
    __shared__ float scratch[32];
    extern __shared__ float row[];
    const float* xr = x + (u64)blockIdx.x * cols;
    float ss = 0.0f;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) ss = fmaf(xr[c], xr[c], ss);
    float inv = 1.0f / sqrtf(block_sum(ss, scratch) / (float)cols + eps);
    float* rr = residual + (u64)blockIdx.x * cols;
    float ss2 = 0.0f;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) {
        float v = rr[c] + (xr[c] * inv) * (1.0f + w_post[c]);
        rr[c] = v;
        row[c] = v;
        ss2 = fmaf(v, v, ss2);
    }
    float inv2 = 1.0f / sqrtf(block_sum(ss2, scratch) / (float)cols + eps);
    float* o = out + (u64)blockIdx.x * cols;
    bf16* h = half ? half + (u64)blockIdx.x * cols : nullptr;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) {
        const float v = (row[c] * inv2) * (1.0f + w_next[c]);
        o[c] = v;
        if (h) h[c] = f32_to_bf16(v);
    }
}
