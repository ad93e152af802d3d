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
