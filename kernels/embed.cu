// Embedding gather: out[r] = table[tokens[r]] * scale (scale = sqrt(hidden) rounded to the
// weight dtype, as transformers does). CPU reference: CpuBackend::embed.
// Grid: one block per row.
extern "C" __global__ void embed(const void* table, int dtype, const unsigned int* tokens,
                                 int cols, float scale, float* out) {
    int r = blockIdx.x;
    u64 base = (u64)tokens[r] * (u64)cols;
    for (int c = threadIdx.x; c < cols; c += blockDim.x)
        out[(u64)r * cols + c] = load_weight(table, dtype, base + c) * scale;
}
