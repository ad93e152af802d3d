//! The GPU's own bounds, measured by `grm bench engine` in the same run as its figures: the
//! device-to-device copy bandwidth (bytes read plus written, as STREAM counts a copy) and the
//! rate of a large bf16 matrix product through the same cuBLAS call the model uses (bf16 in,
//! f32 accumulate and out). Decode is set against the first, prefill against the second.

use super::{cuda_err, CudaBackend};
use crate::error::Result;
use cudarc::cublas::sys as blas_sys;
use cudarc::driver::{DevicePtr, DevicePtrMut};
use std::time::Instant;

#[derive(Debug, Clone, Copy)]
pub struct GpuRoofline {
    /// Device-to-device copy, bytes read + written per second, in GB/s.
    pub copy_gb_per_s: f64,
    /// An n×n×n bf16 product (f32 accumulate and out), in TFLOP/s.
    pub bf16_tflop_per_s: f64,
    pub gemm_n: usize,
    pub copy_bytes: usize,
}

/// Best of `reps` timed runs of `f` (each synchronised), after one untimed.
fn best_of(b: &CudaBackend, reps: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    f()?;
    b.stream
        .synchronize()
        .map_err(|e| cuda_err(format!("{e:?}")))?;
    let mut best = f64::MAX;
    for _ in 0..reps {
        let t = Instant::now();
        f()?;
        b.stream
            .synchronize()
            .map_err(|e| cuda_err(format!("{e:?}")))?;
        best = best.min(t.elapsed().as_secs_f64());
    }
    Ok(best)
}

pub fn measure(b: &CudaBackend) -> Result<GpuRoofline> {
    let alloc_err = |e| cuda_err(format!("roofline buffers: {e:?}"));
    // Copy: 1 GiB each way, far past the L2.
    let copy_bytes = 1usize << 30;
    let src = b.stream.alloc_zeros::<u8>(copy_bytes).map_err(alloc_err)?;
    let mut dst = b.stream.alloc_zeros::<u8>(copy_bytes).map_err(alloc_err)?;
    let copy_s = best_of(b, 10, || {
        b.stream
            .memcpy_dtod(&src, &mut dst)
            .map_err(|e| cuda_err(format!("copy: {e:?}")))
    })?;
    drop((src, dst));

    // Product: n×n by n×n, bf16 operands of small random-looking values (zeros run faster).
    let n = 8192usize;
    let host: Vec<u16> = (0..n * n)
        .map(|i| half::bf16::from_f32(((i * 7919 % 1013) as f32 / 1013.0 - 0.5) * 0.1).to_bits())
        .collect();
    let a = b.stream.clone_htod(&host).map_err(alloc_err)?;
    let w = b.stream.clone_htod(&host).map_err(alloc_err)?;
    let mut c = b.stream.alloc_zeros::<f32>(n * n).map_err(alloc_err)?;
    let gemm_s = best_of(b, 10, || {
        let (ap, _ag) = a.device_ptr(&b.stream);
        let (wp, _wg) = w.device_ptr(&b.stream);
        let (cp, _cg) = c.device_ptr_mut(&b.stream);
        // SAFETY: three live n×n buffers of the types named.
        unsafe { b.gemm_tn(n, n, n, wp, (ap, blas_sys::cudaDataType::CUDA_R_16BF), cp) }
            .map_err(|e| cuda_err(format!("cublasGemmEx: {e:?}")))
    })?;
    Ok(GpuRoofline {
        copy_gb_per_s: 2.0 * copy_bytes as f64 / copy_s / 1e9,
        bf16_tflop_per_s: 2.0 * (n * n * n) as f64 / gemm_s / 1e12,
        gemm_n: n,
        copy_bytes,
    })
}
