// Gemma-2's RMSNorm, x * rsqrt(mean(x^2) + eps) * (1 + w), in f32. CPU references:
// cpu::ops::rms_norm and cpu::ops::add_rms_norm. Grid: one block per row.

extern "C" __global__ void rms_norm(const float* x, const float* w, int cols, float eps,
                                    float* out) {
    __shared__ float scratch[32];
    const float* xr = x + (u64)blockIdx.x * cols;
    float ss = 0.0f;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) ss = fmaf(xr[c], xr[c], ss);
    float inv = 1.0f / sqrtf(block_sum(ss, scratch) / (float)cols + eps);
    float* o = out + (u64)blockIdx.x * cols;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) o[c] = (xr[c] * inv) * (1.0f + w[c]);
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
                                             int cols, float eps, float* out) {
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
    for (int c = threadIdx.x; c < cols; c += blockDim.x) o[c] = (row[c] * inv2) * (1.0f + w_next[c]);
}
