//! The CUDA C++ sources of `kernels/`, compiled by NVRTC for the device's architecture at
//! start-up and cached on disk. Each file is compiled with `common.cuh` in front of it, so no
//! CUDA header is needed at run time. A compile that prints anything (a warning included) is
//! refused by [`check_all`], which CI runs for sm_90 without a GPU.

use cudarc::nvrtc::{result, sys};
use std::ffi::{c_char, CStr};
use std::path::PathBuf;
use thiserror::Error;

/// One kernel file and the kernels it defines.
pub struct KernelFile {
    pub name: &'static str,
    pub source: &'static str,
    pub kernels: &'static [&'static str],
}

const COMMON: &str = include_str!("../../../../kernels/common.cuh");

/// Every kernel file of the backend.
pub const FILES: &[KernelFile] = &[
    KernelFile {
        name: "embed.cu",
        source: include_str!("../../../../kernels/embed.cu"),
        kernels: &["embed"],
    },
    KernelFile {
        name: "norm.cu",
        source: include_str!("../../../../kernels/norm.cu"),
        kernels: &["rms_norm", "add_rms_norm", "add_rms_norm_norm"],
    },
    KernelFile {
        name: "rope.cu",
        source: include_str!("../../../../kernels/rope.cu"),
        kernels: &["rope", "qkv_rope_split"],
    },
    KernelFile {
        name: "elementwise.cu",
        source: include_str!("../../../../kernels/elementwise.cu"),
        kernels: &[
            "gelu_mul",
            "gelu_mul_stacked",
            "softcap",
            "cast_f32_bf16",
            "cast_f32_f16",
            "gather_rows",
        ],
    },
    KernelFile {
        name: "score_head.cu",
        source: include_str!("../../../../kernels/score_head.cu"),
        kernels: &["score_head"],
    },
    KernelFile {
        name: "kv.cu",
        source: include_str!("../../../../kernels/kv.cu"),
        kernels: &["write_kv", "copy_blocks"],
    },
    KernelFile {
        name: "attention.cu",
        source: include_str!("../../../../kernels/attention.cu"),
        kernels: &["attn_prefill", "attn_decode", "attn_decode_merge"],
    },
    KernelFile {
        name: "attention_mma.cu",
        source: include_str!("../../../../kernels/attention_mma.cu"),
        kernels: &[
            "attn_prefill_mma_64",
            "attn_prefill_mma_128",
            "attn_prefill_mma_256",
        ],
    },
    KernelFile {
        name: "sample.cu",
        source: include_str!("../../../../kernels/sample.cu"),
        kernels: &["sample_rows"],
    },
];

#[derive(Debug, Error)]
pub enum KernelError {
    #[error("NVRTC (libnvrtc.so.13) was not found: install the CUDA 13 runtime, or pip's nvidia-cuda-nvrtc==13.0.88, and put its lib directory on LD_LIBRARY_PATH")]
    NvrtcMissing,
    #[error("NVRTC failed on {file} for {arch}: {message}\n{log}")]
    Compile {
        file: &'static str,
        arch: String,
        message: String,
        log: String,
    },
    #[error("NVRTC printed diagnostics for {file} ({arch}); kernels must compile cleanly:\n{log}")]
    Diagnostics {
        file: &'static str,
        arch: String,
        log: String,
    },
}

/// A compiled file: the CUBIN, and what NVRTC printed.
pub struct Compiled {
    pub file: &'static str,
    pub cubin: Vec<u8>,
    pub log: String,
}

/// Whether NVRTC can be opened in this process.
pub fn nvrtc_present() -> bool {
    // SAFETY: only tries to open the library.
    unsafe { sys::is_culib_present() }
}

/// NVRTC's version, (major, minor).
pub fn nvrtc_version() -> Result<(i32, i32), KernelError> {
    if !nvrtc_present() {
        return Err(KernelError::NvrtcMissing);
    }
    let (mut major, mut minor) = (0, 0);
    // SAFETY: two out-parameters.
    let rc = unsafe { sys::nvrtcVersion(&mut major, &mut minor) };
    if rc != sys::nvrtcResult::NVRTC_SUCCESS {
        return Err(KernelError::NvrtcMissing);
    }
    Ok((major, minor))
}

/// The full text NVRTC compiles for a file: `#line` keeps diagnostics pointing at the file.
pub fn full_source(file: &KernelFile) -> String {
    format!(
        "#line 1 \"common.cuh\"\n{COMMON}\n#line 1 \"{}\"\n{}",
        file.name, file.source
    )
}

fn options(arch: &str) -> Vec<String> {
    vec![format!("--gpu-architecture={arch}"), "--std=c++17".into()]
}

/// Compiles one file to a CUBIN for `arch` (e.g. `sm_90`).
pub fn compile(file: &'static KernelFile, arch: &str) -> Result<Compiled, KernelError> {
    if !nvrtc_present() {
        return Err(KernelError::NvrtcMissing);
    }
    let fail = |message: String, log: String| KernelError::Compile {
        file: file.name,
        arch: arch.to_string(),
        message,
        log,
    };
    let src = std::ffi::CString::new(full_source(file))
        .map_err(|_| fail("the source holds a NUL byte".into(), String::new()))?;
    let name = std::ffi::CString::new(file.name).expect("file names hold no NUL");
    let prog = result::create_program(&src, Some(name.as_c_str()))
        .map_err(|e| fail(e.to_string(), String::new()))?;
    // SAFETY: `prog` was created above and is destroyed once, at the end.
    let out = unsafe {
        let compiled = result::compile_program(prog, &options(arch));
        let log = program_log(prog);
        match compiled {
            Err(e) => Err(fail(e.to_string(), log)),
            Ok(()) => cubin(prog)
                .map(|cubin| Compiled {
                    file: file.name,
                    cubin,
                    log,
                })
                .map_err(|e| fail(e, String::new())),
        }
    };
    // SAFETY: created above, not used after this.
    let _ = unsafe { result::destroy_program(prog) };
    out
}

/// # Safety
/// `prog` must be a live program.
unsafe fn program_log(prog: sys::nvrtcProgram) -> String {
    match result::get_program_log(prog) {
        Ok(raw) => CStr::from_ptr(raw.as_ptr() as *const c_char)
            .to_string_lossy()
            .trim()
            .to_string(),
        Err(e) => format!("(no log: {e})"),
    }
}

/// # Safety
/// `prog` must be a compiled program.
unsafe fn cubin(prog: sys::nvrtcProgram) -> Result<Vec<u8>, String> {
    let mut size = 0usize;
    if sys::nvrtcGetCUBINSize(prog, &mut size) != sys::nvrtcResult::NVRTC_SUCCESS || size == 0 {
        return Err("no CUBIN (was a virtual architecture given?)".into());
    }
    let mut buf = vec![0u8; size];
    if sys::nvrtcGetCUBIN(prog, buf.as_mut_ptr() as *mut c_char) != sys::nvrtcResult::NVRTC_SUCCESS
    {
        return Err("nvrtcGetCUBIN failed".into());
    }
    Ok(buf)
}

/// Compiles every file for `arch` and refuses any diagnostic: the check CI runs.
pub fn check_all(arch: &str) -> Result<Vec<Compiled>, KernelError> {
    FILES
        .iter()
        .map(|f| {
            let c = compile(f, arch)?;
            if c.log.is_empty() {
                Ok(c)
            } else {
                Err(KernelError::Diagnostics {
                    file: f.name,
                    arch: arch.to_string(),
                    log: c.log,
                })
            }
        })
        .collect()
}

/// Where compiled kernels are kept between runs: `$GRM_KERNEL_CACHE`, else
/// `$XDG_CACHE_HOME/grm/kernels`, else `~/.cache/grm/kernels`.
pub fn cache_dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("GRM_KERNEL_CACHE") {
        return Some(PathBuf::from(d));
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("grm").join("kernels"))
}

/// FNV-1a over the source, the options and NVRTC's version: a cached CUBIN is used only
/// for exactly what would be compiled now.
fn cache_key(file: &KernelFile, arch: &str, nvrtc: (i32, i32)) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let text = format!(
        "{}\0{}\0{}.{}",
        full_source(file),
        options(arch).join(" "),
        nvrtc.0,
        nvrtc.1
    );
    for b in text.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The CUBIN of a file for `arch`, from the disk cache or freshly compiled (and then stored;
/// a cache that cannot be written is only logged), and whether it came from the cache.
pub fn cubin_cached(file: &'static KernelFile, arch: &str) -> Result<(Vec<u8>, bool), KernelError> {
    let version = nvrtc_version()?;
    let path = cache_dir().map(|d| {
        d.join(format!(
            "{}-{arch}-{:016x}.cubin",
            file.name.trim_end_matches(".cu"),
            cache_key(file, arch, version)
        ))
    });
    if let Some(bytes) = path.as_ref().and_then(|p| std::fs::read(p).ok()) {
        if !bytes.is_empty() {
            return Ok((bytes, true));
        }
    }
    let compiled = compile(file, arch)?;
    if !compiled.log.is_empty() {
        tracing::warn!(file = file.name, log = %compiled.log, "NVRTC diagnostics");
    }
    if let Some(p) = path {
        let stored = p
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|()| {
                // Written aside under a name of its own and renamed, so that no concurrent start
                // (another process, or another thread of this one) reads half a file.
                static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
                let n = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let tmp = p.with_extension(format!("tmp{}-{n}", std::process::id()));
                std::fs::write(&tmp, &compiled.cubin)?;
                std::fs::rename(&tmp, &p)
            });
        if let Err(e) = stored {
            tracing::warn!(path = %p.display(), error = %e, "cannot cache compiled kernels");
        }
    }
    Ok((compiled.cubin, false))
}
