//! What this machine can do, measured on the compute threads (rayon's pool) in the same run as
//! the figures set against it: memory bandwidth (a read and a copy benchmark) and peak f32 FMA
//! throughput on a given instruction-set path.

use super::isa::Isa;
use rayon::prelude::*;
use std::time::Instant;

/// Bytes read per second from a buffer much larger than the caches (best of `reps`), all pool
/// threads reading their own contiguous part.
pub fn read_bandwidth(bytes: usize, reps: usize) -> f64 {
    let words = bytes / 8;
    let buf: Vec<u64> = (0..words as u64).into_par_iter().collect();
    let chunk = words
        .div_ceil(rayon::current_num_threads().max(1))
        .max(1024);
    let mut best = f64::MAX;
    for _ in 0..reps.max(1) {
        let t = Instant::now();
        let x = buf
            .par_chunks(chunk)
            .map(|c| {
                let mut acc = [0u64; 8];
                for w in c.chunks_exact(8) {
                    for i in 0..8 {
                        acc[i] ^= w[i];
                    }
                }
                acc.iter().fold(0, |a, b| a ^ b)
            })
            .reduce(|| 0, |a, b| a ^ b);
        std::hint::black_box(x);
        best = best.min(t.elapsed().as_secs_f64());
    }
    (words * 8) as f64 / best
}

/// Bytes moved per second (read + written) copying one large buffer into another (best of
/// `reps`), as STREAM's copy counts them.
pub fn copy_bandwidth(bytes: usize, reps: usize) -> f64 {
    let words = bytes / 8;
    let src: Vec<u64> = (0..words as u64).into_par_iter().collect();
    let mut dst = vec![1u64; words];
    let chunk = words
        .div_ceil(rayon::current_num_threads().max(1))
        .max(1024);
    let mut best = f64::MAX;
    for _ in 0..reps.max(1) {
        let t = Instant::now();
        dst.par_chunks_mut(chunk)
            .zip(src.par_chunks(chunk))
            .for_each(|(d, s)| d.copy_from_slice(s));
        std::hint::black_box(&dst);
        best = best.min(t.elapsed().as_secs_f64());
    }
    (2 * words * 8) as f64 / best
}

/// Peak f32 FLOP/s (an FMA counts two) of the pool's threads on a path: each thread runs
/// independent FMA chains in registers, as wide as the path's vectors.
pub fn peak_flops(isa: Isa) -> f64 {
    const ITERS: usize = 20_000_000;
    let threads = rayon::current_num_threads().max(1);
    // Warm up (clocks, the pool), then time.
    let run = |iters: usize| {
        let t = Instant::now();
        let flops: f64 = rayon::broadcast(|_| fma_loop(isa, iters)).into_iter().sum();
        flops / t.elapsed().as_secs_f64()
    };
    run(ITERS / 10);
    let _ = threads;
    (0..3).map(|_| run(ITERS)).fold(0.0, f64::max)
}

/// FLOPs done.
fn fma_loop(isa: Isa, iters: usize) -> f64 {
    #[cfg(target_arch = "x86_64")]
    {
        if isa.avx512() {
            // SAFETY: the path's features were checked when it was chosen.
            return unsafe { x86::fma512(iters) };
        }
        if isa.avx2() {
            // SAFETY: as above.
            return unsafe { x86::fma256(iters) };
        }
    }
    let _ = isa;
    let mut acc = [1.0f32; 12];
    for _ in 0..iters / 8 {
        for a in acc.iter_mut() {
            *a = a.mul_add(0.999_999, 1e-7);
        }
    }
    std::hint::black_box(acc);
    (iters / 8 * 12 * 2) as f64
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    const CHAINS: usize = 12;

    #[target_feature(enable = "avx512f")]
    pub unsafe fn fma512(iters: usize) -> f64 {
        let (m, a) = (_mm512_set1_ps(0.999_999), _mm512_set1_ps(1e-7));
        let mut acc = [_mm512_set1_ps(1.0); CHAINS];
        for _ in 0..iters {
            for v in acc.iter_mut() {
                *v = _mm512_fmadd_ps(*v, m, a);
            }
        }
        std::hint::black_box(acc);
        (iters * CHAINS * 16 * 2) as f64
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn fma256(iters: usize) -> f64 {
        let (m, a) = (_mm256_set1_ps(0.999_999), _mm256_set1_ps(1e-7));
        let mut acc = [_mm256_set1_ps(1.0); CHAINS];
        for _ in 0..iters {
            for v in acc.iter_mut() {
                *v = _mm256_fmadd_ps(*v, m, a);
            }
        }
        std::hint::black_box(acc);
        (iters * CHAINS * 8 * 2) as f64
    }
}
