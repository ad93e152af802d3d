//! Which instruction set the CPU kernels use, chosen at run time for the CPU they run on.
//!
//! | path | needs | reductions (matmul) | bits |
//! |---|---|---|---|
//! | `portable` | nothing | 8 lanes, fixed fold | the reference order |
//! | `avx2` | AVX2, FMA, F16C | 8 lanes, fixed fold | = `portable` |
//! | `avx512` | AVX-512 F/BW/VL/DQ | 16 lanes, fixed fold | differ from `avx2` in the last bits of products; = `portable` run with 16 lanes |
//!
//! Every path is batch-invariant on its own: a row's result depends only on that row, in one
//! fixed order of f32 operations. Attention, the norms and the element-wise operations give
//! the same bits on every path (their order does not depend on the vector width); only the
//! matrix products' reductions follow the width, as the table says. Each path is compared with
//! the portable code run in the same order (bit for bit) and with the transformers fixtures
//! (`tests/reference.rs`, `tests/isa.rs`).
//!
//! `GRM_CPU_ISA=portable|avx2|avx512` asks for a path; one this CPU cannot run is refused (with
//! a warning, falling back to the best it can). Not used, only reported: VNNI (int8 dot
//! products: nothing to do while weights are f32, bf16 or f16) and AVX512_BF16 (`vdpbf16ps`
//! multiplies bf16 by bf16, so activations would be rounded to bf16 first: another order and
//! another precision, and no machine here to test it on).

use std::sync::OnceLock;

/// One instruction-set path of the CPU kernels, from the most portable up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Isa {
    Portable,
    Avx2,
    Avx512,
}

impl Isa {
    pub const ALL: [Isa; 3] = [Isa::Portable, Isa::Avx2, Isa::Avx512];

    pub fn name(self) -> &'static str {
        match self {
            Isa::Portable => "portable",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
        }
    }

    pub fn parse(s: &str) -> Option<Isa> {
        Isa::ALL.into_iter().find(|i| i.name() == s.trim())
    }

    /// Whether this CPU can run the path.
    pub fn available(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            let avx2 = is_x86_feature_detected!("avx2")
                && is_x86_feature_detected!("fma")
                && is_x86_feature_detected!("f16c");
            let avx512 = avx2
                && is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("avx512bw")
                && is_x86_feature_detected!("avx512vl")
                && is_x86_feature_detected!("avx512dq");
            match self {
                Isa::Portable => true,
                Isa::Avx2 => avx2,
                Isa::Avx512 => avx512,
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            self == Isa::Portable
        }
    }

    /// The best path this CPU can run.
    pub fn detect() -> Isa {
        Isa::ALL
            .into_iter()
            .rev()
            .find(|i| i.available())
            .unwrap_or(Isa::Portable)
    }

    /// The path of this process: `GRM_CPU_ISA` where it names one this CPU can run, else the
    /// best one (decided once).
    pub fn current() -> Isa {
        static CURRENT: OnceLock<Isa> = OnceLock::new();
        *CURRENT.get_or_init(|| {
            let best = Isa::detect();
            match std::env::var("GRM_CPU_ISA") {
                Ok(s) if !s.trim().is_empty() => match Isa::parse(&s) {
                    Some(i) if i.available() => i,
                    Some(i) => {
                        tracing::warn!(
                            "GRM_CPU_ISA={s}: this CPU cannot run {}; using {}",
                            i.name(),
                            best.name()
                        );
                        best
                    }
                    None => {
                        tracing::warn!(
                            "GRM_CPU_ISA={s} is not one of portable, avx2, avx512; using {}",
                            best.name()
                        );
                        best
                    }
                },
                _ => best,
            }
        })
    }

    /// Lanes of the matrix products' reductions on this path.
    pub fn lanes(self) -> usize {
        match self {
            Isa::Portable | Isa::Avx2 => 8,
            Isa::Avx512 => 16,
        }
    }

    /// Whether the AVX2 code (or better) may run.
    #[inline]
    pub fn avx2(self) -> bool {
        self >= Isa::Avx2
    }

    #[inline]
    pub fn avx512(self) -> bool {
        self >= Isa::Avx512
    }
}

/// The instruction-set extensions of this CPU that the kernels care about, for the record.
pub fn cpu_features() -> Vec<&'static str> {
    let mut v = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        macro_rules! f {
            ($($name:tt),*) => {$(
                if is_x86_feature_detected!($name) {
                    v.push($name);
                }
            )*};
        }
        f!(
            "avx2",
            "fma",
            "f16c",
            "avx512f",
            "avx512bw",
            "avx512vl",
            "avx512dq",
            "avx512vnni",
            "avx512bf16",
            "avx512fp16",
            "avxvnni"
        );
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_detection_is_consistent() {
        for i in Isa::ALL {
            assert_eq!(Isa::parse(i.name()), Some(i));
        }
        assert!(Isa::Portable.available());
        assert!(Isa::detect().available());
        assert!(Isa::current().available());
        // A path implies every one below it.
        for i in Isa::ALL {
            if i.available() {
                assert!(Isa::ALL.iter().filter(|j| **j < i).all(|j| j.available()));
            }
        }
    }
}
