// The meta RM's scalar head (Gemma2ForSequenceClassification's `score`, [labels x hidden]):
// out[r][l] = x[r] . w[l], f32 accumulate. A cuBLAS product for one or two output columns
// would waste the GPU on a skinny shape, so one block reduces each (row, label).
// CPU reference: cpu::matmul::linear. Grid: (rows, labels).
extern "C" __global__ void score_head(const float* x, const void* w, int dtype, int cols,
                                      int labels, float* out) {
    __shared__ float scratch[32];
    int r = blockIdx.x, l = blockIdx.y;
    const float* xr = x + (u64)r * cols;
    float acc = 0.0f;
    for (int c = threadIdx.x; c < cols; c += blockDim.x)
        acc = fmaf(xr[c], load_weight(w, dtype, (u64)l * cols + c), acc);
    acc = block_sum(acc, scratch);
    if (threadIdx.x == 0) out[(u64)r * labels + l] = acc;
}
