// Rotary embedding, HF's rotate-half form, in place on `heads` heads of each row:
// (x_i, x_{i+d/2}) <- (x_i cos - x_{i+d/2} sin, x_{i+d/2} cos + x_i sin), i < d/2, with the
// row's cos/sin tables [rows x d/2] computed on the host (crate::rope). CPU reference:
// cpu::ops::rope_row. Grid: one block per row.
extern "C" __global__ void rope(float* x, int cols, int heads, int head_dim, const float* cos_t,
                                const float* sin_t) {
    int r = blockIdx.x, half = head_dim / 2;
    float* row = x + (u64)r * cols;
    const float* c = cos_t + (u64)r * half;
    const float* s = sin_t + (u64)r * half;
    for (int i = threadIdx.x; i < heads * half; i += blockDim.x) {
        int h = i / half, k = i % half;
        float* xh = row + h * head_dim;
        float a = xh[k], b = xh[k + half];
        xh[k] = a * c[k] - b * s[k];
        xh[k + half] = b * c[k] + a * s[k];
    }
}

// A stacked q, k, v product split into q and k, rotated as `rope` does, and v: one pass over
// the row instead of two rotations in place of three separate products' outputs. Row r of qkv
// is [q: heads * head_dim | k: kv_heads * head_dim | v: kv_heads * head_dim]. CPU reference:
// CpuBackend::split_qkv_rope (the columns split, then cpu::ops::rope_row). Grid: one block per
// row.
extern "C" __global__ void qkv_rope_split(const float* qkv, int heads, int kv_heads,
                                          int head_dim, const float* cos_t, const float* sin_t,
                                          float* q, float* k, float* v) {
    const int r = blockIdx.x, half = head_dim / 2;
    const int qc = heads * head_dim, kc = kv_heads * head_dim;
    const float* row = qkv + (u64)r * (qc + 2 * kc);
    const float* c = cos_t + (u64)r * half;
    const float* s = sin_t + (u64)r * half;
    // The rotated pairs of q's heads, then k's.
    for (int i = threadIdx.x; i < (heads + kv_heads) * half; i += blockDim.x) {
        const int h = i / half, j = i % half;
        const float* x = row + h * head_dim;  // k's heads follow q's in the row
        float* o = h < heads ? q + (u64)r * qc + h * head_dim
                             : k + (u64)r * kc + (h - heads) * head_dim;
        const float a = x[j], b = x[j + half];
        o[j] = a * c[j] - b * s[j];
        o[j + half] = b * c[j] + a * s[j];
    }
    for (int i = threadIdx.x; i < kc; i += blockDim.x) v[(u64)r * kc + i] = row[qc + kc + i];
}
