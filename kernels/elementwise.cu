// Element-wise kernels. CPU references: cpu::ops::gelu_mul, cpu::ops::softcap,
// weights::DType::round (the casts), CpuBackend::gather_rows.

// gelu_tanh(g) * u, gelu_tanh(g) = 0.5 g (1 + tanh(sqrt(2/pi) (g + 0.044715 g^3)))
extern "C" __global__ void gelu_mul(const float* gate, const float* up, float* out, u64 n) {
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x) {
        float g = gate[i];
        float inner = 0.7978846f * (g + 0.044715f * g * g * g);
        out[i] = 0.5f * g * (1.0f + tanhf(inner)) * up[i];
    }
}

// The same from a stacked gate, up product: row r is [gate: inter | up: inter]; also rounded
// to bf16 into `half` where it is not null (the down product's input, as norm.cu). CPU
// reference: CpuBackend::gelu_mul_stacked.
extern "C" __global__ void gelu_mul_stacked(const float* gu, float* out, bf16* half, u64 inter,
                                            u64 n) {
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x) {
        const u64 r = i / inter, c = i % inter;
        const float g = gu[r * 2 * inter + c];
        const float inner = 0.7978846f * (g + 0.044715f * g * g * g);
        const float v = 0.5f * g * (1.0f + tanhf(inner)) * gu[r * 2 * inter + inter + c];
        out[i] = v;
        if (half) half[i] = f32_to_bf16(v);
    }
}

// tanh(x / cap) * cap, in place (the final logit softcap).
extern "C" __global__ void softcap(float* x, u64 n, float cap) {
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x)
        x[i] = tanhf(x[i] / cap) * cap;
}

// Activations to the weights' 16-bit type before a cuBLAS product (bf16 in, f32 accumulate).
extern "C" __global__ void cast_f32_bf16(const float* x, bf16* out, u64 n) {
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x)
        out[i] = f32_to_bf16(x[i]);
}

extern "C" __global__ void cast_f32_f16(const float* x, unsigned short* out, u64 n) {
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x)
        out[i] = f32_to_f16(x[i]);
}

// out[i] = x[rows[i]]. Grid: one block per output row.
extern "C" __global__ void gather_rows(const float* x, const unsigned int* rows, int cols,
                                       float* out) {
    const float* src = x + (u64)rows[blockIdx.x] * cols;
    float* dst = out + (u64)blockIdx.x * cols;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) dst[c] = src[c];
}
