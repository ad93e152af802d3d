// Shared by every kernel file: NVRTC compiles each file with this text in front of it, so no
// CUDA header is needed at run time (bf16 and f16 are handled as raw 16-bit words).
//
// Layouts (the same as the CPU backend's, see crates/grm-engine/src/cpu/kv.rs):
//   activations  f32, row-major [rows x cols]
//   weights      [out x in] in their stored type: 0 = f32, 1 = bf16, 2 = f16
//   KV cache     bf16; per layer, block and KV head: keys transposed [head_dim][block_size],
//                values [block_size][head_dim]

#define INFINITY __int_as_float(0x7f800000)

typedef unsigned short bf16;
typedef unsigned long long u64;

#define DTYPE_F32 0
#define DTYPE_BF16 1
#define DTYPE_F16 2

__device__ __forceinline__ float bf16_to_f32(bf16 h) {
    return __uint_as_float(((unsigned int)h) << 16);
}

// Round to nearest even, NaN kept NaN (as torch's .to(bfloat16)).
__device__ __forceinline__ bf16 f32_to_bf16(float f) {
    unsigned int u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (bf16)((u >> 16) | 0x40u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (bf16)(u >> 16);
}

__device__ __forceinline__ float f16_to_f32(unsigned short h) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}

__device__ __forceinline__ unsigned short f32_to_f16(float f) {
    unsigned short h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
}

__device__ __forceinline__ float load_weight(const void* w, int dtype, u64 i) {
    if (dtype == DTYPE_BF16) return bf16_to_f32(((const bf16*)w)[i]);
    if (dtype == DTYPE_F16) return f16_to_f32(((const unsigned short*)w)[i]);
    return ((const float*)w)[i];
}

__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// Sum over the block (blockDim.x a multiple of 32, at most 1024); every thread gets it.
// `scratch` holds 32 floats of shared memory.
__device__ __forceinline__ float block_sum(float v, float* scratch) {
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    v = warp_sum(v);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = lane < warps ? scratch[lane] : 0.0f;
    return warp_sum(v);
}

__device__ __forceinline__ float block_max(float v, float* scratch) {
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    v = warp_max(v);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = lane < warps ? scratch[lane] : -INFINITY;
    return warp_max(v);
}
