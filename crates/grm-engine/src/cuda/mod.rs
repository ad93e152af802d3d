//! The CUDA backend: the kernels of `kernels/` (compiled by NVRTC at start-up, see
//! [`kernels`]), matrix products through cuBLAS (16-bit weights and activations in, f32
//! accumulate and out), and the KV cache in bf16 in the CPU backend's block layout. CUDA's
//! libraries are opened at run time, so a build with this module runs anywhere and fails
//! with a clear error only when `--device cuda:N` is asked for where there is no GPU.
//!
//! Failures after start-up (a launch or an allocation refused by the driver) end the engine
//! thread with the driver's message; the worker then exits for its supervisor to restart it.

pub mod graphs;
pub mod kernels;
pub mod plan;
pub mod profile;
pub mod roofline;

use crate::backend::{AttentionParams, Backend, StepInputs};
use crate::device_sampler::RowSampling;
use crate::error::{EngineError, Result};
use crate::kv::CopyOp;
use crate::weights::{DType, Tensor};
use cudarc::cublas::{sys as blas_sys, CudaBlas};
use cudarc::driver::{
    sys as drv_sys, CudaContext, CudaFunction, CudaSlice, CudaStream, DevicePtr, DevicePtrMut,
    LaunchConfig, PushKernelArg,
};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// A device to run on, with how much of its memory the process may fill.
#[derive(Debug, Clone, Copy)]
pub struct CudaOptions {
    pub ordinal: usize,
    /// Share of the GPU's memory this process may use (weights, KV pool, activations).
    pub memory_fraction: f32,
}

impl Default for CudaOptions {
    fn default() -> Self {
        Self {
            ordinal: 0,
            memory_fraction: 0.9,
        }
    }
}

/// Why no CUDA device could be opened, or a kernel not compiled, in words a user can act on.
fn cuda_err(what: impl std::fmt::Display) -> EngineError {
    EngineError::Cuda(what.to_string())
}

/// Panics with the driver's message: used inside the `Backend` methods, which cannot return
/// errors (see the module comment).
fn ok<T, E: std::fmt::Debug>(r: std::result::Result<T, E>, what: &str) -> T {
    match r {
        Ok(v) => {
            profile::mark(what);
            v
        }
        Err(e) => panic!("CUDA {what} failed: {e:?}"),
    }
}

/// Activations on the device, f32 row-major.
pub struct CudaAct {
    pub rows: usize,
    pub cols: usize,
    pub buf: CudaSlice<f32>,
    /// The same values rounded to bf16, where the kernel that wrote them wrote both (a norm
    /// or the gated product feeding a bf16 weight's product): cuBLAS reads it without a cast.
    pub half: Option<CudaSlice<u16>>,
}

/// A weight matrix on the device in its stored type.
pub struct CudaMatrix {
    pub rows: usize,
    pub cols: usize,
    pub dtype: DType,
    pub bytes: CudaSlice<u8>,
}

/// The KV cache of every layer: K and V regions of `layer_stride` bf16 each per layer.
pub struct CudaKv {
    pub layers: usize,
    pub num_blocks: usize,
    pub block_size: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub layer_stride: usize,
    pub k: CudaSlice<u16>,
    pub v: CudaSlice<u16>,
}

/// One step's inputs on the device, uploaded once by `prepare_step` and read by every layer:
/// the tokens, the attention plan, positions and block tables, the RoPE tables and the KV slots.
/// A decode step replayed from a graph reads them from its shape's buffers, which stay where
/// they are (see [`graphs`]).
pub struct StepBufs {
    tokens: CudaSlice<u32>,
    tables: CudaSlice<u32>,
    table_start: CudaSlice<u32>,
    seq_of: CudaSlice<u32>,
    positions: CudaSlice<u32>,
    tile_row0: Option<CudaSlice<u32>>,
    tile_rows: Option<CudaSlice<u32>>,
    decode_rows: Option<CudaSlice<u32>>,
    cos: CudaSlice<f32>,
    sin: CudaSlice<f32>,
    /// Rows' slots, and the extra (row, slot) pairs as two lists.
    slots: CudaSlice<u64>,
    extra_rows: Option<CudaSlice<u32>>,
    extra_slots: Option<CudaSlice<u64>>,
}

/// A step as the layers read it: its buffers, and what the host knows of it.
pub struct CudaStep {
    /// Query heads per KV head, and the head size, the plan was made for.
    group: usize,
    head_dim: usize,
    /// The tensor-core prefill kernel the plan's tiles are sized for; `None`: attn_prefill's.
    mma: Option<&'static str>,
    plan: plan::AttentionPlan,
    rows: usize,
    extras: usize,
    bufs: Arc<StepBufs>,
    /// The shape's graph, and whether this step records or replays it; `None`: eager.
    graph: Option<(graphs::GraphKey, graphs::Use)>,
}

impl std::ops::Deref for CudaStep {
    type Target = StepBufs;
    fn deref(&self) -> &StepBufs {
        &self.bufs
    }
}

/// A shape's graph and the buffers it reads and writes.
struct Recorded {
    bufs: Arc<StepBufs>,
    /// Block-table entries the buffers hold.
    tables_cap: usize,
    graph: Option<SendGraph>,
    /// The final residual [rows × hidden] the graph leaves.
    hidden: CudaSlice<f32>,
    /// The KV cache the graph was recorded over.
    kv: Option<KvIdentity>,
}

/// Where a KV cache lies and how it is laid out: what a recorded graph holds of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct KvIdentity {
    k: u64,
    v: u64,
    block_size: usize,
    layer_stride: usize,
}

fn kv_identity(kv: &CudaKv, stream: &Arc<CudaStream>) -> KvIdentity {
    KvIdentity {
        k: kv.k.device_ptr(stream).0,
        v: kv.v.device_ptr(stream).0,
        block_size: kv.block_size,
        layer_stride: kv.layer_stride,
    }
}

/// A recorded graph, only touched under `Graphs`' lock.
struct SendGraph(cudarc::driver::CudaGraph);
// SAFETY: CUDA graphs are not internally synchronised; this one is used only while holding the
// backend's `graphs` mutex, so by one thread at a time.
unsafe impl Send for SendGraph {}

/// The decode graphs of this backend (see [`graphs`]).
struct Graphs {
    cache: graphs::GraphCache<Recorded>,
    /// GRM_CUDA_GRAPHS=0, `set_graphs(false)`, profiling, or a recording that panicked.
    off: bool,
    /// The model's sliding window and hidden size (from `check_model`); none: no graphs.
    model: Option<(Option<usize>, usize)>,
    recordings: u64,
    replays: u64,
}

pub struct CudaBackend {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    blas: CudaBlas,
    functions: HashMap<&'static str, CudaFunction>,
    name: String,
    arch: String,
    memory_fraction: f32,
    max_shared: usize,
    /// Whether prompt chunks run on the tensor-core prefill (attention_mma.cu) where the head
    /// size allows: sm_80 or later, unless GRM_CUDA_PREFILL=simt or `set_mma_prefill(false)`.
    mma_prefill: AtomicBool,
    /// Whether a bf16 weight was loaded: then norms and the gated product also write their
    /// output in bf16 (`CudaAct::half`), the products' input.
    bf16_weights: AtomicBool,
    /// Stands in for attn_decode's partial buffers when a step needs one split, which never
    /// writes them: two allocations and frees fewer a layer.
    unused_partials: std::sync::Mutex<(CudaSlice<f32>, CudaSlice<f32>)>,
    graphs: std::sync::Mutex<Graphs>,
    /// A recording panicked: no step is recorded or replayed again in this process.
    graphs_broken: AtomicBool,
    /// cuBLAS's workspace, set once so that no product allocates while a graph is recorded.
    _blas_workspace: CudaSlice<u8>,
}

/// The device's stream-ordered memory pool, where every buffer of this backend comes from.
fn default_pool(ctx: &CudaContext) -> Option<drv_sys::CUmemoryPool> {
    let mut pool: drv_sys::CUmemoryPool = std::ptr::null_mut();
    // SAFETY: a valid device handle and out-pointer.
    let r = unsafe { drv_sys::cuDeviceGetDefaultMemPool(&mut pool, ctx.cu_device()) };
    (r == drv_sys::CUresult::CUDA_SUCCESS).then_some(pool)
}

/// Whether a CUDA driver can be opened in this process.
pub fn driver_present() -> bool {
    // SAFETY: only tries to open the library.
    unsafe { drv_sys::is_culib_present() }
}

impl CudaBackend {
    /// Opens a device, compiles (or loads from the cache) every kernel for its architecture
    /// and starts cuBLAS.
    pub fn new(opts: CudaOptions) -> Result<Self> {
        if !(opts.memory_fraction > 0.0 && opts.memory_fraction <= 1.0) {
            return Err(EngineError::Invalid(format!(
                "gpu_memory_fraction is {}; it must lie in (0, 1]",
                opts.memory_fraction
            )));
        }
        if !driver_present() {
            return Err(cuda_err(
                "no CUDA driver (libcuda.so) could be opened: is the NVIDIA driver installed and visible to this process?",
            ));
        }
        let count = CudaContext::device_count()
            .map_err(|e| cuda_err(format!("the CUDA driver found no usable GPU ({e:?})")))?;
        if count <= 0 {
            return Err(cuda_err("the CUDA driver reports no GPU"));
        }
        if opts.ordinal >= count as usize {
            return Err(cuda_err(format!(
                "device cuda:{} does not exist: this machine has {count} GPU(s), cuda:0..cuda:{}",
                opts.ordinal,
                count - 1
            )));
        }
        if !kernels::nvrtc_present() {
            return Err(cuda_err(kernels::KernelError::NvrtcMissing));
        }
        // SAFETY: only tries to open the library.
        if !unsafe { blas_sys::is_culib_present() } {
            return Err(cuda_err(
                "cuBLAS (libcublas.so.13) could not be opened: install the CUDA 13 runtime libraries",
            ));
        }
        let ctx = CudaContext::new(opts.ordinal)
            .map_err(|e| cuda_err(format!("cannot open cuda:{}: {e:?}", opts.ordinal)))?;
        profile::init_from_env();
        // Activations come from the device's stream-ordered pool. Its default release threshold
        // (0) hands freed memory back to the driver at every synchronisation, so each decode
        // step would map its few hundred buffers afresh; kept, an allocation is a sub-allocation.
        if let Some(pool) = default_pool(&ctx) {
            let mut keep = u64::MAX;
            // SAFETY: a valid pool and a pointer to a u64, as the attribute takes.
            let _ = unsafe {
                drv_sys::cuMemPoolSetAttribute(
                    pool,
                    drv_sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
                    &mut keep as *mut u64 as *mut std::ffi::c_void,
                )
            };
        }
        // One stream does all the work, so the per-buffer events cudarc keeps for ordering
        // across streams are pure cost.
        // SAFETY: no other stream touches these buffers.
        unsafe { ctx.disable_event_tracking() };
        // A stream of its own: CUDA will not record a graph on the legacy default stream.
        let stream = ctx
            .new_stream()
            .map_err(|e| cuda_err(format!("creating a stream: {e:?}")))?;
        let (major, minor) = ctx
            .compute_capability()
            .map_err(|e| cuda_err(format!("compute capability: {e:?}")))?;
        let arch = format!("sm_{major}{minor}");
        let mut functions = HashMap::new();
        for file in kernels::FILES {
            let (cubin, cached) = kernels::cubin_cached(file, &arch).map_err(cuda_err)?;
            let load = |cubin| ctx.load_module(cudarc::nvrtc::Ptx::from_binary(cubin));
            let module = match load(cubin) {
                Ok(m) => m,
                // A damaged cache entry: compile afresh rather than fail.
                Err(e) if cached => {
                    tracing::warn!(file = file.name, error = ?e, "a cached kernel did not load; recompiling");
                    load(kernels::compile(file, &arch).map_err(cuda_err)?.cubin)
                        .map_err(|e| cuda_err(format!("loading {} for {arch}: {e:?}", file.name)))?
                }
                Err(e) => return Err(cuda_err(format!("loading {} for {arch}: {e:?}", file.name))),
            };
            for &k in file.kernels {
                let f = module
                    .load_function(k)
                    .map_err(|e| cuda_err(format!("kernel {k} in {}: {e:?}", file.name)))?;
                functions.insert(k, f);
            }
        }
        let unused_partials = {
            let one = || {
                stream
                    .alloc_zeros::<f32>(2)
                    .map_err(|e| cuda_err(format!("a first allocation: {e:?}")))
            };
            std::sync::Mutex::new((one()?, one()?))
        };
        let blas = CudaBlas::new(stream.clone()).map_err(|e| cuda_err(format!("cuBLAS: {e:?}")))?;
        // Hopper's recommended 32 MiB.
        let blas_workspace = stream
            .alloc_zeros::<u8>(32 << 20)
            .map_err(|e| cuda_err(format!("cuBLAS workspace: {e:?}")))?;
        {
            let (ptr, _g) = blas_workspace.device_ptr(&stream);
            // SAFETY: a live handle and a device buffer of the given size, kept as long as the
            // handle (both fields of the backend).
            let r = unsafe {
                blas_sys::cublasSetWorkspace_v2(
                    *blas.handle(),
                    ptr as *mut std::ffi::c_void,
                    32 << 20,
                )
            };
            if r != blas_sys::cublasStatus_t::CUBLAS_STATUS_SUCCESS {
                return Err(cuda_err(format!("cuBLAS workspace: {r:?}")));
            }
        }
        let max_shared = ctx
            .attribute(
                drv_sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN,
            )
            .unwrap_or(48 * 1024) as usize;
        let gpu = ctx.name().unwrap_or_else(|_| "unknown GPU".into());
        let total = ctx.total_mem().unwrap_or(0);
        let name = format!("cuda:{} ({gpu}, {arch}, {} GiB)", opts.ordinal, total >> 30);
        Ok(Self {
            ctx,
            stream,
            blas,
            functions,
            name,
            arch,
            memory_fraction: opts.memory_fraction,
            max_shared,
            bf16_weights: AtomicBool::new(false),
            unused_partials,
            graphs: std::sync::Mutex::new(Graphs {
                cache: graphs::GraphCache::default(),
                off: std::env::var("GRM_CUDA_GRAPHS").is_ok_and(|v| v == "0") || profile::enabled(),
                model: None,
                recordings: 0,
                replays: 0,
            }),
            graphs_broken: AtomicBool::new(false),
            _blas_workspace: blas_workspace,
            mma_prefill: AtomicBool::new(
                major >= 8 && std::env::var("GRM_CUDA_PREFILL").map_or(true, |v| v != "simt"),
            ),
        })
    }

    /// Chooses the prefill attention kernel of later steps: the tensor cores' (`true`, the
    /// default from sm_80 on) or attn_prefill's f32 CUDA-core kernel. Returns whether the
    /// tensor-core kernel is now on (never before sm_80).
    pub fn set_mma_prefill(&self, on: bool) -> bool {
        let on = on && self.compute_major() >= 8;
        self.mma_prefill.store(on, Ordering::Relaxed);
        on
    }

    fn compute_major(&self) -> u32 {
        self.arch
            .trim_start_matches("sm_")
            .parse::<u32>()
            .map_or(0, |v| v / 10)
    }

    /// The tensor-core prefill kernel for `head_dim`, where it is on and covers it: a multiple
    /// of 16 up to 256, its shared memory within the device's.
    fn mma_prefill_kernel(&self, head_dim: usize) -> Option<&'static str> {
        if !self.mma_prefill.load(Ordering::Relaxed)
            || head_dim == 0
            || head_dim % 16 != 0
            || mma_prefill_shared_bytes(head_dim) > self.max_shared
        {
            return None;
        }
        match head_dim {
            0..=64 => Some("attn_prefill_mma_64"),
            65..=128 => Some("attn_prefill_mma_128"),
            129..=256 => Some("attn_prefill_mma_256"),
            _ => None,
        }
    }

    /// A step's buffers, uploaded afresh (device buffers are never empty: a zero-length
    /// allocation is refused).
    fn step_bufs(&self, inputs: &StepInputs<'_>, p: &plan::AttentionPlan) -> StepBufs {
        let up_u32 = |v: &[u32]| self.upload(if v.is_empty() { &[0u32][..] } else { v });
        let up_f32 = |v: &[f32]| self.upload(if v.is_empty() { &[0f32][..] } else { v });
        let opt = |v: &[u32]| (!v.is_empty()).then(|| self.upload(v));
        let slots: Vec<u64> = inputs.slots.iter().map(|&s| s as u64).collect();
        let extra_rows: Vec<u32> = inputs.extra_slots.iter().map(|e| e.0 as u32).collect();
        let extra_slots: Vec<u64> = inputs.extra_slots.iter().map(|e| e.1 as u64).collect();
        StepBufs {
            tokens: up_u32(inputs.tokens),
            tables: up_u32(&p.tables),
            table_start: up_u32(&p.table_start),
            seq_of: up_u32(&inputs.meta.span_of),
            positions: up_u32(&inputs.meta.positions),
            tile_row0: opt(&p.tile_row0),
            tile_rows: opt(&p.tile_rows),
            decode_rows: opt(&p.decode_rows),
            cos: up_f32(inputs.cos),
            sin: up_f32(inputs.sin),
            slots: self.upload(if slots.is_empty() {
                &[0u64][..]
            } else {
                &slots
            }),
            extra_rows: (!extra_rows.is_empty()).then(|| self.upload(&extra_rows)),
            extra_slots: (!extra_slots.is_empty()).then(|| self.upload(&extra_slots)),
        }
    }

    fn lock_graphs(&self) -> std::sync::MutexGuard<'_, Graphs> {
        self.graphs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Turns the recording and replay of decode steps as CUDA graphs on or off (on unless
    /// GRM_CUDA_GRAPHS=0 or profiling); off forgets every graph.
    pub fn set_graphs(&self, on: bool) {
        let mut g = self.lock_graphs();
        g.off = !on || profile::enabled();
        if g.off {
            g.cache = graphs::GraphCache::default();
            drop(g);
            self.trim_graph_memory();
        }
    }

    /// Decode steps recorded as graphs, and replayed from them, so far.
    pub fn graph_counts(&self) -> (u64, u64) {
        let g = self.lock_graphs();
        (g.recordings, g.replays)
    }

    /// For a decode step of a shape seen before, that shape's buffers, holding this step's
    /// inputs, and whether the step records or replays its graph; `None`: run eagerly in
    /// buffers of its own.
    fn graph_bufs(
        &self,
        inputs: &StepInputs<'_>,
        p: &plan::AttentionPlan,
    ) -> Option<(Arc<StepBufs>, graphs::GraphKey, graphs::Use)> {
        let rows = inputs.slots.len();
        let mut g = self.lock_graphs();
        let (window, hidden) = g.model?;
        if g.off
            || self.graphs_broken.load(Ordering::Relaxed)
            || inputs.tokens.len() != rows
            || inputs.cos.len() != inputs.sin.len()
            // The shape's buffers hold one sequence a row.
            || p.table_start.len() != rows
            || inputs.meta.positions.len() != rows
            || inputs.meta.span_of.len() != rows
        {
            return None;
        }
        let half = inputs.cos.len() / rows.max(1);
        let key = graphs::key(p, rows, inputs.extra_slots.len(), window, half)?;
        let need = p.tables.len();
        let make = |cap: usize| -> Option<Recorded> {
            let bufs = self.step_bufs_of_shape(key, cap).ok()?;
            let hidden = self.stream.alloc_zeros::<f32>(rows * hidden).ok()?;
            Some(Recorded {
                bufs: Arc::new(bufs),
                tables_cap: cap,
                graph: None,
                hidden,
                kv: None,
            })
        };
        let (mut how, rec) = g.cache.arrive(key, || make(need.max(64) * 2));
        if how == graphs::Use::Eager {
            return None;
        }
        if rec.is_some_and(|r| r.tables_cap < need) {
            // Longer block tables than the buffers hold: new buffers, so a new recording.
            g.cache.forget(&key);
            how = g.cache.arrive(key, || make(need * 2)).0;
        }
        let rec = g.cache.get(&key)?;
        // A step still alive from before holds them (only a caller outside the model's loop).
        let bufs = Arc::get_mut(&mut rec.bufs)?;
        let filled = (|| -> std::result::Result<(), cudarc::driver::DriverError> {
            let slots: Vec<u64> = inputs.slots.iter().map(|&s| s as u64).collect();
            let s = &self.stream;
            s.memcpy_htod(inputs.tokens, &mut bufs.tokens)?;
            s.memcpy_htod(&p.tables[..], &mut bufs.tables.slice_mut(0..need))?;
            s.memcpy_htod(&p.table_start[..], &mut bufs.table_start)?;
            s.memcpy_htod(&inputs.meta.span_of[..], &mut bufs.seq_of)?;
            s.memcpy_htod(&inputs.meta.positions[..], &mut bufs.positions)?;
            if let Some(d) = bufs.decode_rows.as_mut() {
                s.memcpy_htod(&p.decode_rows[..], d)?;
            }
            s.memcpy_htod(inputs.cos, &mut bufs.cos)?;
            s.memcpy_htod(inputs.sin, &mut bufs.sin)?;
            s.memcpy_htod(&slots[..], &mut bufs.slots)
        })();
        if let Err(e) = filled {
            panic!("CUDA copy to device failed: {e:?}");
        }
        Some((rec.bufs.clone(), key, how))
    }

    /// Buffers for a decode step of `key`'s shape, with room for `tables` block-table entries.
    fn step_bufs_of_shape(
        &self,
        key: graphs::GraphKey,
        tables: usize,
    ) -> std::result::Result<StepBufs, cudarc::driver::DriverError> {
        let s = &self.stream;
        let rows = key.rows;
        Ok(StepBufs {
            tokens: s.alloc_zeros::<u32>(rows)?,
            tables: s.alloc_zeros::<u32>(tables.max(1))?,
            table_start: s.alloc_zeros::<u32>(rows)?,
            seq_of: s.alloc_zeros::<u32>(rows)?,
            positions: s.alloc_zeros::<u32>(rows)?,
            tile_row0: None,
            tile_rows: None,
            decode_rows: Some(s.alloc_zeros::<u32>(rows)?),
            cos: s.alloc_zeros::<f32>((rows * key.half).max(1))?,
            sin: s.alloc_zeros::<f32>((rows * key.half).max(1))?,
            slots: s.alloc_zeros::<u64>(rows)?,
            extra_rows: None,
            extra_slots: None,
        })
    }

    /// Runs a decode step from its shape's graph: records it first where `how` says so (the
    /// launches of `layers` captured, not run, then the graph launched), and returns a copy of
    /// the final residual it leaves. A recording that fails runs `layers` eagerly and leaves the
    /// shape eager from then on.
    fn run_graph(
        &self,
        key: graphs::GraphKey,
        how: graphs::Use,
        kv: &mut CudaKv,
        layers: &mut dyn FnMut(&mut CudaKv) -> CudaAct,
    ) -> CudaAct {
        use cudarc::driver::sys::CUstreamCaptureMode;
        let mut g = self.lock_graphs();
        let hidden_cols = g.model.map_or(0, |m| m.1);
        // The graph holds the addresses of the KV cache it wrote: another cache (a restarted
        // scheduler's, `run_once`'s) is recorded afresh.
        let kv_now = kv_identity(kv, &self.stream);
        let Some(rec) = g.cache.get(&key) else {
            drop(g);
            return layers(kv);
        };
        let replay = how == graphs::Use::Replay && rec.graph.is_some() && rec.kv == Some(kv_now);
        if !replay {
            rec.graph = None;
            let begun = self
                .stream
                .begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL);
            if let Err(e) = begun {
                // Not a shape's fault: no graph is recorded again.
                tracing::warn!(error = ?e, "CUDA graphs could not be recorded; decode steps run launch by launch");
                self.graphs_broken.store(true, Ordering::Relaxed);
                let _ = self.ctx.check_err();
                drop(g);
                return layers(kv);
            }
            // A panic inside (a launch the driver refused while capturing) must not leave the
            // stream capturing: the guard ends the capture and turns graphs off for good (the
            // graphs' lock is held here, so by a flag of its own).
            struct Capturing<'a>(&'a CudaBackend, bool);
            impl Drop for Capturing<'_> {
                fn drop(&mut self) {
                    if self.1 {
                        self.0.abandon_capture();
                        self.0.graphs_broken.store(true, Ordering::Relaxed);
                    }
                }
            }
            let mut guard = Capturing(self, true);
            let x = layers(kv);
            let copied = self.stream.memcpy_dtod(&x.buf, &mut rec.hidden);
            drop(x);
            guard.1 = false;
            let flags = cudarc::driver::sys::CUgraphInstantiate_flags::CUDA_GRAPH_INSTANTIATE_FLAG_AUTO_FREE_ON_LAUNCH;
            let graph = match copied {
                Ok(()) => self.stream.end_capture(flags),
                Err(e) => Err(e),
            };
            match graph {
                Ok(Some(graph)) => {
                    rec.graph = Some(SendGraph(graph));
                    rec.kv = Some(kv_now);
                    g.cache.recorded(&key);
                    g.recordings += 1;
                }
                failed => {
                    // Nothing of the step ran: it runs eagerly, and its shape stays eager.
                    tracing::warn!(rows = key.rows, error = ?failed.err(), "a decode step could not be recorded as a CUDA graph; that shape runs launch by launch");
                    self.abandon_capture();
                    g.cache.fail(&key);
                    drop(g);
                    return layers(kv);
                }
            }
        } else {
            g.replays += 1;
        }
        let Some(rec) = g.cache.get(&key) else {
            drop(g);
            return layers(kv);
        };
        let launched = match &rec.graph {
            Some(graph) => graph.0.launch(),
            None => Ok(()),
        };
        if let Err(e) = launched {
            // Out of memory for the graph's buffers, say: no graph from now on, and this step
            // eagerly (a launch that failed ran nothing).
            tracing::warn!(error = ?e, "a CUDA graph did not launch; decode steps run launch by launch");
            self.graphs_broken.store(true, Ordering::Relaxed);
            let _ = self.ctx.check_err();
            g.cache = graphs::GraphCache::default();
            drop(g);
            self.trim_graph_memory();
            return layers(kv);
        }
        CudaAct {
            rows: key.rows,
            cols: hidden_cols,
            buf: ok(self.stream.clone_dtod(&rec.hidden), "copy on device"),
            half: None,
        }
    }

    /// Ends a capture that went wrong, whatever error cudarc stored on the way (its
    /// `end_capture` returns a stored error without ending the capture), and drops the graph.
    fn abandon_capture(&self) {
        use cudarc::driver::sys::CUstreamCaptureStatus;
        let _ = self.ctx.check_err();
        if let Ok(Some(graph)) = self
            .stream
            .end_capture(cudarc::driver::sys::CUgraphInstantiate_flags(0))
        {
            drop(graph);
        }
        let _ = self.ctx.check_err();
        let capturing = !matches!(
            self.stream.capture_status(),
            Ok(CUstreamCaptureStatus::CU_STREAM_CAPTURE_STATUS_NONE)
        );
        if capturing {
            // SAFETY: this backend's live stream; a graph returned is ours to destroy.
            unsafe {
                if let Ok(graph) =
                    cudarc::driver::result::stream::end_capture(self.stream.cu_stream())
                {
                    if !graph.is_null() {
                        let _ = cudarc::driver::result::graph::destroy(graph);
                    }
                }
            }
        }
        let _ = self.ctx.check_err();
    }

    /// Hands the memory of graphs no longer held back to the device.
    fn trim_graph_memory(&self) {
        let _ = self.stream.synchronize();
        // SAFETY: a valid device of this context.
        let _ = unsafe { drv_sys::cuDeviceGraphMemTrim(self.ctx.cu_device()) };
    }

    /// Rows of the embedding table for `rows` tokens on the device, times `scale`.
    fn embed_rows(
        &self,
        table: &CudaMatrix,
        tokens: Option<&CudaSlice<u32>>,
        rows: usize,
        scale: f32,
    ) -> CudaAct {
        let cols = table.cols;
        let mut out = self.out_f32(rows * cols);
        if let (Some(toks), true) = (tokens, rows > 0) {
            let (dtype, c) = (dtype_code(table.dtype), cols as i32);
            let mut b = self.stream.launch_builder(self.f("embed"));
            b.arg(&table.bytes)
                .arg(&dtype)
                .arg(toks)
                .arg(&c)
                .arg(&scale)
                .arg(&mut out);
            // SAFETY: matches embed.cu; `tokens` holds at least `rows` ids.
            ok(
                unsafe { b.launch(Self::rows_config(rows, Self::row_threads(cols).min(256))) },
                "embed",
            );
        }
        CudaAct {
            rows,
            cols,
            buf: out,
            half: None,
        }
    }

    /// The architecture the kernels were compiled for (`sm_90`, ...).
    pub fn arch(&self) -> &str {
        &self.arch
    }

    /// Free and total device memory, in bytes.
    pub fn memory(&self) -> Result<(usize, usize)> {
        self.ctx
            .mem_get_info()
            .map_err(|e| cuda_err(format!("memory info: {e:?}")))
    }

    /// Refuses model shapes the kernels do not cover.
    pub fn check_shape(&self, heads: usize, kv_heads: usize, head_dim: usize) -> Result<()> {
        if kv_heads == 0 || heads % kv_heads != 0 {
            return Err(cuda_err(format!(
                "num_attention_heads ({heads}) must be a multiple of num_key_value_heads ({kv_heads})"
            )));
        }
        let group = heads / kv_heads;
        if head_dim > 256 || group > 32 || head_dim % 2 != 0 {
            return Err(cuda_err(format!(
                "the CUDA attention kernels need head_dim <= 256 (even) and at most 32 query heads per KV head; this model has head_dim {head_dim} and {group}"
            )));
        }
        Ok(())
    }

    fn f(&self, name: &str) -> &CudaFunction {
        match self.functions.get(name) {
            Some(f) => f,
            None => panic!("kernel {name} was not loaded"),
        }
    }

    /// The device's copy bandwidth and bf16 product rate, measured now (see [`roofline`]).
    pub fn roofline(&self) -> Result<roofline::GpuRoofline> {
        let r = roofline::measure(self);
        self.release_free_memory();
        r
    }

    /// Hands the pool's free memory back to the driver (it keeps freed buffers for reuse), so
    /// that what `memory()` reports as free is free to another allocation or process.
    pub fn release_free_memory(&self) {
        let _ = self.stream.synchronize();
        if let Some(pool) = default_pool(&self.ctx) {
            // SAFETY: a valid pool; nothing in flight holds its free memory (synchronised).
            let _ = unsafe { drv_sys::cuMemPoolTrimTo(pool, 0) };
        }
    }

    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// A bf16 twin of an output of n values, where products will read one (see
    /// `bf16_weights`); the kernel about to run writes all of it.
    fn twin(&self, n: usize) -> Option<CudaSlice<u16>> {
        if n == 0 || !self.bf16_weights.load(Ordering::Relaxed) {
            return None;
        }
        // SAFETY: every caller launches a kernel that writes all n elements.
        Some(ok(unsafe { self.stream.alloc::<u16>(n) }, "alloc"))
    }

    fn zeros_f32(&self, n: usize) -> CudaSlice<f32> {
        ok(self.stream.alloc_zeros::<f32>(n.max(1)), "alloc")
    }

    /// An output buffer that the kernel about to run writes in full: no memset launched (a
    /// decode step makes a few hundred of these).
    fn out_f32(&self, n: usize) -> CudaSlice<f32> {
        // SAFETY: every caller launches a kernel (or cuBLAS with beta = 0) that writes all
        // n elements before anything reads them; f32 has no invalid bit patterns.
        ok(unsafe { self.stream.alloc::<f32>(n.max(1)) }, "alloc")
    }

    fn upload<T: cudarc::driver::DeviceRepr>(&self, host: &[T]) -> CudaSlice<T> {
        ok(self.stream.clone_htod(host), "copy to device")
    }

    /// Activations from the host (tests and references).
    pub fn act_from_host(&self, rows: usize, cols: usize, data: &[f32]) -> CudaAct {
        assert_eq!(data.len(), rows * cols, "act_from_host: shape");
        CudaAct {
            rows,
            cols,
            buf: if data.is_empty() {
                self.zeros_f32(1)
            } else {
                self.upload(data)
            },
            half: None,
        }
    }

    fn rows_config(rows: usize, threads: u32) -> LaunchConfig {
        LaunchConfig {
            grid_dim: (rows as u32, 1, 1),
            block_dim: (threads, 1, 1),
            shared_mem_bytes: 0,
        }
    }

    fn flat_config(n: usize) -> LaunchConfig {
        let blocks = n.div_ceil(256).clamp(1, 65_535) as u32;
        LaunchConfig {
            grid_dim: (blocks, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        }
    }

    /// Threads for a per-row kernel over `cols` columns.
    fn row_threads(cols: usize) -> u32 {
        (cols.next_multiple_of(32)).clamp(32, 1024) as u32
    }

    fn dynamic_shared(&self, f: &CudaFunction, bytes: usize) {
        if bytes > 48 * 1024 {
            assert!(
                bytes <= self.max_shared,
                "a kernel needs {bytes} bytes of shared memory; the device allows {}",
                self.max_shared
            );
            ok(
                f.set_attribute(
                    drv_sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                    bytes as i32,
                ),
                "shared memory attribute",
            );
        }
    }

    /// The fused boundary between sublayers: `residual += rms_norm(x, w_post)`, then
    /// `rms_norm(residual, w_next)`.
    fn fused_norms(
        &self,
        residual: &mut CudaAct,
        x: &CudaAct,
        w_post: &CudaSlice<f32>,
        w_next: &CudaSlice<f32>,
        eps: f32,
    ) -> CudaAct {
        let (rows, cols) = (x.rows, x.cols);
        let mut out = self.out_f32(rows * cols);
        if rows == 0 {
            return CudaAct {
                rows,
                cols,
                buf: out,
                half: None,
            };
        }
        let f = self.f("add_rms_norm_norm");
        let bytes = cols * 4;
        self.dynamic_shared(f, bytes);
        let mut cfg = Self::rows_config(rows, Self::row_threads(cols));
        cfg.shared_mem_bytes = bytes as u32;
        let c = cols as i32;
        let (mut half, null) = (self.twin(rows * cols), 0u64);
        let mut b = self.stream.launch_builder(f);
        b.arg(&mut residual.buf)
            .arg(&x.buf)
            .arg(w_post)
            .arg(w_next)
            .arg(&c)
            .arg(&eps)
            .arg(&mut out);
        push_twin(&mut b, &mut half, &null);
        // SAFETY: argument types and counts match norm.cu's add_rms_norm_norm (a null twin
        // is skipped).
        ok(unsafe { b.launch(cfg) }, "add_rms_norm_norm");
        CudaAct {
            rows,
            cols,
            buf: out,
            half,
        }
    }

    /// cuBLAS's product `out[rows × n_out] = x[rows × k] · w[n_out × k]ᵀ` (row-major; cuBLAS
    /// sees column-major [k × n_out] transposed), x and w of `x_type`, f32 accumulate and out.
    ///
    /// # Safety
    /// The pointers are live device buffers of the sizes the dimensions describe.
    unsafe fn gemm_tn(
        &self,
        n_out: usize,
        rows: usize,
        k: usize,
        w: u64,
        (x, x_type): (u64, blas_sys::cudaDataType),
        out: u64,
    ) -> std::result::Result<(), cudarc::cublas::result::CublasError> {
        let (alpha, beta) = (1.0f32, 0.0f32);
        cudarc::cublas::result::gemm_ex(
            *self.blas.handle(),
            blas_sys::cublasOperation_t::CUBLAS_OP_T,
            blas_sys::cublasOperation_t::CUBLAS_OP_N,
            n_out as i32,
            rows as i32,
            k as i32,
            &alpha as *const f32 as *const _,
            w as *const _,
            x_type,
            k as i32,
            x as *const _,
            x_type,
            k as i32,
            &beta as *const f32 as *const _,
            out as *mut _,
            blas_sys::cudaDataType::CUDA_R_32F,
            n_out as i32,
            blas_sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
            blas_sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
        )
    }

    /// `x` as cuBLAS multiplies it by a weight of `dtype`: itself for f32 (`None`), else a
    /// 16-bit copy (bf16 or f16 in, f32 accumulate: the activations take the weights' type);
    /// `None` too where x has its bf16 twin for a bf16 weight (`gemm_with` reads that).
    fn gemm_input(&self, x: &CudaAct, dtype: DType) -> Option<CudaSlice<u16>> {
        let kname = match dtype {
            DType::F32 => return None,
            DType::BF16 if x.half.is_some() => return None,
            DType::BF16 => "cast_f32_bf16",
            DType::F16 => "cast_f32_f16",
        };
        let n = x.rows * x.cols;
        // SAFETY: the cast below writes all n elements.
        let mut h = ok(unsafe { self.stream.alloc::<u16>(n.max(1)) }, "alloc");
        if n > 0 {
            let n64 = n as u64;
            let mut b = self.stream.launch_builder(self.f(kname));
            b.arg(&x.buf).arg(&mut h).arg(&n64);
            // SAFETY: matches elementwise.cu's casts.
            ok(unsafe { b.launch(Self::flat_config(n)) }, kname);
        }
        Some(h)
    }

    /// cuBLAS: `x · wᵀ` with w [out × in] row-major (column-major [in × out], transposed).
    fn gemm(&self, x: &CudaAct, w: &CudaMatrix) -> CudaAct {
        let half = self.gemm_input(x, w.dtype);
        self.gemm_with(x, half.as_ref(), w)
    }

    /// [`Self::gemm`] with `x` already in the weight's type (`half`, from [`Self::gemm_input`]).
    fn gemm_with(&self, x: &CudaAct, half: Option<&CudaSlice<u16>>, w: &CudaMatrix) -> CudaAct {
        let (rows, k, n_out) = (x.rows, x.cols, w.rows);
        assert_eq!(k, w.cols, "gemm: x has {k} columns, the weight {}", w.cols);
        let mut out = self.out_f32(rows * n_out);
        if rows == 0 {
            return CudaAct {
                rows,
                cols: n_out,
                buf: out,
                half: None,
            };
        }
        use blas_sys::cudaDataType::{CUDA_R_16BF, CUDA_R_16F, CUDA_R_32F};
        let twin = match w.dtype {
            DType::BF16 => x.half.as_ref(),
            _ => None,
        };
        let (x_ptr, x_type, _x_guard) = match (w.dtype, half.or(twin)) {
            (DType::BF16, Some(h)) | (DType::F16, Some(h)) => {
                let (p, g) = h.device_ptr(&self.stream);
                let t = if w.dtype == DType::BF16 {
                    CUDA_R_16BF
                } else {
                    CUDA_R_16F
                };
                (p, t, g)
            }
            (DType::F32, None) => {
                let (p, g) = x.buf.device_ptr(&self.stream);
                (p, CUDA_R_32F, g)
            }
            (d, h) => panic!(
                "gemm: a {d:?} weight with {} input",
                if h.is_some() { "a 16-bit" } else { "an f32" }
            ),
        };
        let (w_ptr, _wg) = w.bytes.device_ptr(&self.stream);
        let (o_ptr, _og) = out.device_ptr_mut(&self.stream);
        // SAFETY: the pointers are live device buffers of the sizes the dimensions describe.
        let r = unsafe { self.gemm_tn(n_out, rows, k, w_ptr, (x_ptr, x_type), o_ptr) };
        ok(r, "cublasGemmEx");
        drop(_og);
        CudaAct {
            rows,
            cols: n_out,
            buf: out,
            half: None,
        }
    }

    /// Writes rows of `k` and `v` into slots of one layer (kv.cu).
    fn write_rows(
        &self,
        kv: &mut CudaKv,
        layer: usize,
        (k, v): (&CudaSlice<f32>, &CudaSlice<f32>),
        slots: &CudaSlice<u64>,
        rows: usize,
    ) {
        let (h, d, bs) = (kv.kv_heads as i32, kv.head_dim as i32, kv.block_size as i32);
        let range = layer * kv.layer_stride..(layer + 1) * kv.layer_stride;
        let mut kc = kv.k.slice_mut(range.clone());
        let mut vc = kv.v.slice_mut(range);
        let mut b = self.stream.launch_builder(self.f("write_kv"));
        b.arg(k)
            .arg(v)
            .arg(slots)
            .arg(&h)
            .arg(&d)
            .arg(&bs)
            .arg(&mut kc)
            .arg(&mut vc);
        // SAFETY: matches kv.cu; slots lie inside the pool (the block manager's invariant).
        ok(
            unsafe { b.launch(Self::rows_config(rows, 256)) },
            "write_kv",
        );
    }

    /// The given rows of `x`, by a device list of row indices.
    fn gather_by(&self, x: &CudaAct, idx: &CudaSlice<u32>, rows: usize) -> CudaSlice<f32> {
        let mut out = self.out_f32(rows * x.cols);
        let c = x.cols as i32;
        let mut b = self.stream.launch_builder(self.f("gather_rows"));
        b.arg(&x.buf).arg(idx).arg(&c).arg(&mut out);
        // SAFETY: matches elementwise.cu; the rows exist (the scheduler's extra slots).
        ok(
            unsafe { b.launch(Self::rows_config(rows, 256)) },
            "gather_rows",
        );
        out
    }

    /// Samples one token per row of `logits` on the device (kernels/sample.cu); only the
    /// token ids come back.
    pub fn sample_rows(&self, logits: &CudaAct, rows: &[RowSampling]) -> Vec<u32> {
        assert_eq!(rows.len(), logits.rows, "sample: one setting per row");
        if rows.is_empty() {
            return Vec::new();
        }
        let t: Vec<f32> = rows.iter().map(|r| r.temperature).collect();
        let p: Vec<f32> = rows.iter().map(|r| r.top_p).collect();
        let s: Vec<u64> = rows.iter().map(|r| r.seed).collect();
        let st: Vec<u64> = rows.iter().map(|r| r.step).collect();
        let (t, p, s, st) = (
            self.upload(&t),
            self.upload(&p),
            self.upload(&s),
            self.upload(&st),
        );
        let mut tokens = ok(self.stream.alloc_zeros::<u32>(rows.len()), "alloc");
        let vocab = logits.cols as i32;
        let mut b = self.stream.launch_builder(self.f("sample_rows"));
        b.arg(&logits.buf)
            .arg(&vocab)
            .arg(&t)
            .arg(&p)
            .arg(&s)
            .arg(&st)
            .arg(&mut tokens);
        // SAFETY: matches sample.cu.
        ok(
            unsafe { b.launch(Self::rows_config(rows.len(), 1024)) },
            "sample_rows",
        );
        ok(self.stream.clone_dtoh(&tokens), "copy to host")
    }
}

impl Backend for CudaBackend {
    type Act = CudaAct;
    type Matrix = CudaMatrix;
    type Vector = CudaSlice<f32>;
    type Kv = CudaKv;
    type Step<'a> = CudaStep;

    fn name(&self) -> String {
        // Which prefill attention runs, so that a result says what it measured.
        let prefill = if self.mma_prefill.load(Ordering::Relaxed) {
            "tensor-core prefill"
        } else {
            "f32 prefill"
        };
        let graphs = {
            let g = self.lock_graphs();
            if g.off || self.graphs_broken.load(Ordering::Relaxed) {
                "eager decode"
            } else {
                "decode graphs"
            }
        };
        format!("{}, {prefill}, {graphs}", self.name)
    }

    fn kv_element_bytes(&self) -> usize {
        2
    }

    fn check_model(&self, c: &crate::config::ModelConfig) -> Result<()> {
        self.check_shape(c.num_heads, c.num_kv_heads, c.head_dim)?;
        // Decode graphs fix the decode kernel's grid per kind of layer: the sliding layers'
        // window sets theirs. A model whose layers slide by several windows runs eagerly.
        let windows: std::collections::BTreeSet<usize> =
            (0..c.num_layers).filter_map(|i| c.window_of(i)).collect();
        let mut g = self.lock_graphs();
        g.model = (windows.len() <= 1).then(|| (windows.first().copied(), c.hidden_size));
        g.cache = graphs::GraphCache::default();
        Ok(())
    }

    fn kv_memory_budget(&self) -> Option<usize> {
        // What the fraction allows beyond what is in use now (the weights are loaded), less a
        // reserve of 5% of the device for activations and cuBLAS's workspace. Buffers the pool
        // keeps for reuse count as free.
        self.release_free_memory();
        let (free, total) = self.memory().ok()?;
        let allowed = (total as f64 * f64::from(self.memory_fraction)) as usize;
        let used = total - free;
        Some(allowed.saturating_sub(used).saturating_sub(total / 20))
    }

    fn matrix(&self, t: &Tensor) -> Result<CudaMatrix> {
        let (rows, cols) = t.matrix_dims();
        if t.dtype == DType::BF16 {
            self.bf16_weights.store(true, Ordering::Relaxed);
        }
        let bytes = self
            .stream
            .clone_htod(t.bytes())
            .map_err(|e| cuda_err(format!("uploading a {rows}×{cols} weight: {e:?}")))?;
        Ok(CudaMatrix {
            rows,
            cols,
            dtype: t.dtype,
            bytes,
        })
    }

    fn stacked_matrix(&self, ts: &[&Tensor]) -> Result<Option<CudaMatrix>> {
        let Some(first) = ts.first() else {
            return Ok(None);
        };
        let (_, cols) = first.matrix_dims();
        // One product needs one type and one input width.
        if ts
            .iter()
            .any(|t| t.dtype != first.dtype || t.matrix_dims().1 != cols)
        {
            return Ok(None);
        }
        let rows: usize = ts.iter().map(|t| t.matrix_dims().0).sum();
        if first.dtype == DType::BF16 {
            self.bf16_weights.store(true, Ordering::Relaxed);
        }
        let total: usize = ts.iter().map(|t| t.bytes().len()).sum();
        let mut bytes = self
            .stream
            .alloc_zeros::<u8>(total.max(1))
            .map_err(|e| cuda_err(format!("allocating a stacked {rows}×{cols} weight: {e:?}")))?;
        let mut at = 0;
        for t in ts {
            let n = t.bytes().len();
            self.stream
                .memcpy_htod(t.bytes(), &mut bytes.slice_mut(at..at + n))
                .map_err(|e| cuda_err(format!("uploading a stacked weight: {e:?}")))?;
            at += n;
        }
        Ok(Some(CudaMatrix {
            rows,
            cols,
            dtype: first.dtype,
            bytes,
        }))
    }

    fn vector(&self, v: &[f32]) -> Result<CudaSlice<f32>> {
        self.stream
            .clone_htod(v)
            .map_err(|e| cuda_err(format!("uploading a vector: {e:?}")))
    }

    fn new_kv(
        &self,
        layers: usize,
        num_blocks: usize,
        block_size: usize,
        kv_heads: usize,
        head_dim: usize,
    ) -> Result<CudaKv> {
        // The prefill kernel holds one block of keys and values, and a tile's queries, in
        // shared memory.
        let tile = prefill_shared_bytes(block_size, head_dim);
        if tile > self.max_shared {
            return Err(cuda_err(format!(
                "--block-size {block_size} with head_dim {head_dim} needs {tile} bytes of shared memory per attention block; this GPU allows {}: lower --block-size",
                self.max_shared
            )));
        }
        let layer_stride = num_blocks * block_size * kv_heads * head_dim;
        let alloc = || {
            self.stream
                .alloc_zeros::<u16>((layers * layer_stride).max(1))
                .map_err(|e| {
                    cuda_err(format!(
                        "allocating the KV cache ({num_blocks} blocks, {} MiB): {e:?}; lower --kv-blocks or --gpu-memory-fraction",
                        (2 * layers * layer_stride * 2) >> 20
                    ))
                })
        };
        Ok(CudaKv {
            layers,
            num_blocks,
            block_size,
            kv_heads,
            head_dim,
            layer_stride,
            k: alloc()?,
            v: alloc()?,
        })
    }

    fn embed(&self, table: &CudaMatrix, tokens: &[u32], scale: f32) -> CudaAct {
        match tokens.is_empty() {
            true => self.embed_rows(table, None, 0, scale),
            false => self.embed_rows(table, Some(&self.upload(tokens)), tokens.len(), scale),
        }
    }

    fn rms_norm(&self, x: &CudaAct, w: &CudaSlice<f32>, eps: f32) -> CudaAct {
        let mut out = self.out_f32(x.rows * x.cols);
        let (mut half, null) = (self.twin(x.rows * x.cols), 0u64);
        if x.rows > 0 {
            let c = x.cols as i32;
            let mut b = self.stream.launch_builder(self.f("rms_norm"));
            b.arg(&x.buf).arg(w).arg(&c).arg(&eps).arg(&mut out);
            push_twin(&mut b, &mut half, &null);
            // SAFETY: matches norm.cu (a null twin is skipped).
            ok(
                unsafe { b.launch(Self::rows_config(x.rows, Self::row_threads(x.cols))) },
                "rms_norm",
            );
        }
        CudaAct {
            rows: x.rows,
            cols: x.cols,
            buf: out,
            half,
        }
    }

    fn add_rms_norm(&self, residual: &mut CudaAct, x: &CudaAct, w: &CudaSlice<f32>, eps: f32) {
        if x.rows == 0 {
            return;
        }
        let c = x.cols as i32;
        let mut b = self.stream.launch_builder(self.f("add_rms_norm"));
        b.arg(&mut residual.buf)
            .arg(&x.buf)
            .arg(w)
            .arg(&c)
            .arg(&eps);
        // SAFETY: matches norm.cu.
        ok(
            unsafe { b.launch(Self::rows_config(x.rows, Self::row_threads(x.cols))) },
            "add_rms_norm",
        );
    }

    fn add_rms_norm_then_norm(
        &self,
        residual: &mut CudaAct,
        x: &CudaAct,
        w_post: &CudaSlice<f32>,
        w_next: &CudaSlice<f32>,
        eps: f32,
    ) -> CudaAct {
        self.fused_norms(residual, x, w_post, w_next, eps)
    }

    fn linears<const N: usize>(&self, x: &CudaAct, ws: [&CudaMatrix; N]) -> [CudaAct; N] {
        let dtype = ws.first().map(|w| w.dtype);
        if ws.iter().any(|w| w.rows <= 8 || Some(w.dtype) != dtype) {
            return ws.map(|w| self.linear(x, w));
        }
        // One cast of x serves every product (none where x has its bf16 twin).
        let half = dtype.and_then(|d| self.gemm_input(x, d));
        ws.map(|w| self.gemm_with(x, half.as_ref(), w))
    }

    fn linear(&self, x: &CudaAct, w: &CudaMatrix) -> CudaAct {
        if w.rows > 8 {
            return self.gemm(x, w);
        }
        // The scalar head of a reward model: a reduction per (row, label).
        let mut out = self.out_f32(x.rows * w.rows);
        if x.rows > 0 {
            let (dtype, c, l) = (dtype_code(w.dtype), x.cols as i32, w.rows as i32);
            let mut b = self.stream.launch_builder(self.f("score_head"));
            b.arg(&x.buf)
                .arg(&w.bytes)
                .arg(&dtype)
                .arg(&c)
                .arg(&l)
                .arg(&mut out);
            let cfg = LaunchConfig {
                grid_dim: (x.rows as u32, w.rows as u32, 1),
                block_dim: (256, 1, 1),
                shared_mem_bytes: 0,
            };
            // SAFETY: matches score_head.cu.
            ok(unsafe { b.launch(cfg) }, "score_head");
        }
        CudaAct {
            rows: x.rows,
            cols: w.rows,
            buf: out,
            half: None,
        }
    }

    fn prepare_step<'a>(&'a self, inputs: StepInputs<'a>) -> CudaStep {
        let mma = self.mma_prefill_kernel(inputs.head_dim);
        let pairs = match mma {
            Some(_) => plan::MMA_PREFILL_PAIRS,
            None => plan::PREFILL_PAIRS,
        };
        let p = plan::plan(inputs.meta, inputs.group, pairs);
        let rows = inputs.slots.len();
        let (bufs, graph) = match self.graph_bufs(&inputs, &p) {
            Some((bufs, key, how)) => (bufs, Some((key, how))),
            None => (Arc::new(self.step_bufs(&inputs, &p)), None),
        };
        CudaStep {
            group: inputs.group,
            head_dim: inputs.head_dim,
            mma,
            plan: p,
            rows,
            extras: inputs.extra_slots.len(),
            bufs,
            graph,
        }
    }

    fn embed_step(&self, table: &CudaMatrix, step: &CudaStep, scale: f32) -> CudaAct {
        self.embed_rows(table, Some(&step.tokens), step.rows, scale)
    }

    fn run_layers(
        &self,
        step: &CudaStep,
        kv: &mut CudaKv,
        layers: &mut dyn FnMut(&mut CudaKv) -> CudaAct,
    ) -> CudaAct {
        match step.graph {
            Some((key, how)) => self.run_graph(key, how, kv, layers),
            None => layers(kv),
        }
    }

    fn rope(&self, x: &mut CudaAct, heads: usize, head_dim: usize, step: &CudaStep) {
        if x.rows == 0 {
            return;
        }
        let (c, h, d) = (x.cols as i32, heads as i32, head_dim as i32);
        let mut b = self.stream.launch_builder(self.f("rope"));
        b.arg(&mut x.buf)
            .arg(&c)
            .arg(&h)
            .arg(&d)
            .arg(&step.cos)
            .arg(&step.sin);
        // SAFETY: matches rope.cu; the step's tables have a row per row of x.
        ok(unsafe { b.launch(Self::rows_config(x.rows, 256)) }, "rope");
    }

    fn split_qkv_rope(
        &self,
        qkv: &CudaAct,
        heads: usize,
        kv_heads: usize,
        head_dim: usize,
        step: &CudaStep,
    ) -> [CudaAct; 3] {
        let rows = qkv.rows;
        let (qc, kc) = (heads * head_dim, kv_heads * head_dim);
        assert_eq!(qkv.cols, qc + 2 * kc, "split_qkv_rope: the stacked width");
        let (mut q, mut k, mut v) = (
            self.out_f32(rows * qc),
            self.out_f32(rows * kc),
            self.out_f32(rows * kc),
        );
        if rows > 0 {
            let (h, kh, d) = (heads as i32, kv_heads as i32, head_dim as i32);
            let mut b = self.stream.launch_builder(self.f("qkv_rope_split"));
            b.arg(&qkv.buf)
                .arg(&h)
                .arg(&kh)
                .arg(&d)
                .arg(&step.cos)
                .arg(&step.sin)
                .arg(&mut q)
                .arg(&mut k)
                .arg(&mut v);
            // SAFETY: matches rope.cu's qkv_rope_split; the step's tables have a row per row,
            // and the outputs hold rows × their widths.
            ok(
                unsafe { b.launch(Self::rows_config(rows, 256)) },
                "qkv_rope_split",
            );
        }
        let act = |cols, buf| CudaAct {
            rows,
            cols,
            buf,
            half: None,
        };
        [act(qc, q), act(kc, k), act(kc, v)]
    }

    fn gelu_mul_stacked(&self, gate_up: &CudaAct) -> CudaAct {
        let inter = gate_up.cols / 2;
        let n = gate_up.rows * inter;
        let mut out = self.out_f32(n);
        let (mut half, null) = (self.twin(n), 0u64);
        if n > 0 {
            let (i64_, n64) = (inter as u64, n as u64);
            let mut b = self.stream.launch_builder(self.f("gelu_mul_stacked"));
            b.arg(&gate_up.buf).arg(&mut out);
            push_twin(&mut b, &mut half, &null);
            b.arg(&i64_).arg(&n64);
            // SAFETY: matches elementwise.cu's gelu_mul_stacked (a null twin is skipped).
            ok(
                unsafe { b.launch(Self::flat_config(n)) },
                "gelu_mul_stacked",
            );
        }
        CudaAct {
            rows: gate_up.rows,
            cols: inter,
            buf: out,
            half,
        }
    }

    fn gelu_mul(&self, gate: &CudaAct, up: &CudaAct) -> CudaAct {
        let n = gate.rows * gate.cols;
        let mut out = self.out_f32(n);
        if n > 0 {
            let n64 = n as u64;
            let mut b = self.stream.launch_builder(self.f("gelu_mul"));
            b.arg(&gate.buf).arg(&up.buf).arg(&mut out).arg(&n64);
            // SAFETY: matches elementwise.cu.
            ok(unsafe { b.launch(Self::flat_config(n)) }, "gelu_mul");
        }
        CudaAct {
            rows: gate.rows,
            cols: gate.cols,
            buf: out,
            half: None,
        }
    }

    fn softcap(&self, x: &mut CudaAct, cap: f32) {
        let n = x.rows * x.cols;
        if n == 0 {
            return;
        }
        let n64 = n as u64;
        let mut b = self.stream.launch_builder(self.f("softcap"));
        b.arg(&mut x.buf).arg(&n64).arg(&cap);
        // SAFETY: matches elementwise.cu.
        ok(unsafe { b.launch(Self::flat_config(n)) }, "softcap");
    }

    fn write_kv(&self, kv: &mut CudaKv, layer: usize, k: &CudaAct, v: &CudaAct, step: &CudaStep) {
        if step.rows == 0 {
            return;
        }
        assert_eq!(step.rows, k.rows, "write_kv: one slot per row");
        self.write_rows(kv, layer, (&k.buf, &v.buf), &step.slots, step.rows);
        if let (Some(rows), Some(slots)) = (&step.extra_rows, &step.extra_slots) {
            // Copies of the rows, so the same bits land in both slots.
            let (k2, v2) = (
                self.gather_by(k, rows, step.extras),
                self.gather_by(v, rows, step.extras),
            );
            self.write_rows(kv, layer, (&k2, &v2), slots, step.extras);
        }
    }

    fn copy_blocks(&self, kv: &mut CudaKv, ops: &[CopyOp]) {
        if ops.is_empty() {
            return;
        }
        // One launch runs the copies at once; the CPU runs them in order. They agree because no
        // copy reads or writes a block another writes: the scheduler keeps a step's copy
        // sources referenced until the step ends and refuses a plan that breaks this
        // (scheduler::check_copies), so this holds here.
        let src: Vec<u32> = ops.iter().map(|o| o.src).collect();
        let dst: Vec<u32> = ops.iter().map(|o| o.dst).collect();
        let n: Vec<u32> = ops.iter().map(|o| o.slots as u32).collect();
        let (src, dst, n) = (self.upload(&src), self.upload(&dst), self.upload(&n));
        let (h, d, bs, stride) = (
            kv.kv_heads as i32,
            kv.head_dim as i32,
            kv.block_size as i32,
            kv.layer_stride as u64,
        );
        let mut b = self.stream.launch_builder(self.f("copy_blocks"));
        b.arg(&src)
            .arg(&dst)
            .arg(&n)
            .arg(&h)
            .arg(&d)
            .arg(&bs)
            .arg(&stride)
            .arg(&mut kv.k)
            .arg(&mut kv.v);
        let cfg = LaunchConfig {
            grid_dim: (ops.len() as u32, kv.layers as u32, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: matches kv.cu.
        ok(unsafe { b.launch(cfg) }, "copy_blocks");
    }

    fn attention(
        &self,
        kv: &CudaKv,
        layer: usize,
        q: &CudaAct,
        step: &CudaStep,
        p: AttentionParams,
    ) -> CudaAct {
        let mut out = self.out_f32(q.rows * q.cols);
        if q.rows == 0 {
            return CudaAct {
                rows: q.rows,
                cols: q.cols,
                buf: out,
                half: None,
            };
        }
        let group = p.num_heads / p.num_kv_heads;
        // The plan's tiles are sized for the step's head group; the model's layers share it.
        assert_eq!(
            group, step.group,
            "attention: the step was prepared for another head group"
        );
        // The tiles of a step for the tensor-core kernel are too large for attn_prefill.
        assert!(
            step.mma.is_none() || p.head_dim == step.head_dim,
            "attention: the step was prepared for another head size"
        );
        let m = step;
        let range = layer * kv.layer_stride..(layer + 1) * kv.layer_stride;
        let (kc, vc) = (kv.k.slice(range.clone()), kv.v.slice(range));
        let (heads, kvh, hd, bs) = (
            p.num_heads as i32,
            p.num_kv_heads as i32,
            p.head_dim as i32,
            kv.block_size as i32,
        );
        let cap = p.softcap.unwrap_or(0.0);
        let window = p.window.map_or(0, |w| w as i32);
        // Both kernels take the step's tables, their rows (prefill: the tiles' first rows and
        // counts; decode: the rows), the shape, and the output; decode also its partials.
        let mut launch = |name: &'static str,
                          cfg: LaunchConfig,
                          rows: &[&CudaSlice<u32>],
                          partials: &mut [&mut CudaSlice<f32>]| {
            let mut b = self.stream.launch_builder(self.f(name));
            b.arg(&q.buf)
                .arg(&kc)
                .arg(&vc)
                .arg(&m.tables)
                .arg(&m.table_start)
                .arg(&m.seq_of)
                .arg(&m.positions);
            for r in rows {
                b.arg(*r);
            }
            b.arg(&heads)
                .arg(&kvh)
                .arg(&hd)
                .arg(&bs)
                .arg(&p.scale)
                .arg(&cap)
                .arg(&window)
                .arg(&mut out);
            for part in partials.iter_mut() {
                b.arg(&mut **part);
            }
            // SAFETY: matches attention.cu's attn_prefill and attn_decode, and
            // attention_mma.cu's attn_prefill_mma_* (attn_prefill's arguments); the plan keeps
            // prefill tiles within the kernel's pairs (PREFILL_PAIRS, MMA_PREFILL_PAIRS), and the partial buffers hold rows × heads ×
            // splits entries, the decode grid's.
            ok(unsafe { b.launch(cfg) }, name);
        };
        if let (Some(r0), Some(n), Some(name)) = (&m.tile_row0, &m.tile_rows, m.mma) {
            let bytes = mma_prefill_shared_bytes(p.head_dim);
            self.dynamic_shared(self.f(name), bytes);
            let cfg = LaunchConfig {
                grid_dim: (m.plan.tile_row0.len() as u32, p.num_kv_heads as u32, 1),
                block_dim: (128, 1, 1),
                shared_mem_bytes: bytes as u32,
            };
            launch(name, cfg, &[r0, n], &mut []);
        } else if let (Some(r0), Some(n)) = (&m.tile_row0, &m.tile_rows) {
            let bytes = prefill_shared_bytes(kv.block_size, p.head_dim);
            self.dynamic_shared(self.f("attn_prefill"), bytes);
            let cfg = LaunchConfig {
                grid_dim: (m.plan.tile_row0.len() as u32, p.num_kv_heads as u32, 1),
                block_dim: (256, 1, 1),
                shared_mem_bytes: bytes as u32,
            };
            launch("attn_prefill", cfg, &[r0, n], &mut []);
        }
        if let Some(rows) = &m.decode_rows {
            let nrows = m.plan.decode_rows.len();
            let splits = plan::decode_splits(m.plan.decode_max_pos, p.window);
            // Each split's unnormalised output, max and sum, for the merge (one split writes
            // the output itself and these go unused).
            let partials = nrows * p.num_heads * splits;
            let mut owned;
            let mut unused;
            let (po, pml): (&mut CudaSlice<f32>, &mut CudaSlice<f32>) = if splits > 1 {
                owned = (
                    self.out_f32(partials * p.head_dim),
                    self.out_f32(partials * 2),
                );
                (&mut owned.0, &mut owned.1)
            } else {
                unused = self
                    .unused_partials
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
                let pair = &mut *unused;
                (&mut pair.0, &mut pair.1)
            };
            let bytes = decode_shared_bytes(group, p.head_dim);
            self.dynamic_shared(self.f("attn_decode"), bytes);
            let cfg = LaunchConfig {
                grid_dim: (nrows as u32, p.num_kv_heads as u32, splits as u32),
                block_dim: (128, 1, 1),
                shared_mem_bytes: bytes as u32,
            };
            launch("attn_decode", cfg, &[rows], &mut [&mut *po, &mut *pml]);
            if splits > 1 {
                let s = splits as i32;
                let mut b = self.stream.launch_builder(self.f("attn_decode_merge"));
                b.arg(&*po)
                    .arg(&*pml)
                    .arg(rows)
                    .arg(&heads)
                    .arg(&hd)
                    .arg(&s)
                    .arg(&mut out);
                let cfg = LaunchConfig {
                    grid_dim: (nrows as u32, p.num_heads as u32, 1),
                    block_dim: (128, 1, 1),
                    shared_mem_bytes: 0,
                };
                // SAFETY: matches attention.cu's attn_decode_merge.
                ok(unsafe { b.launch(cfg) }, "attn_decode_merge");
            }
        }
        CudaAct {
            rows: q.rows,
            cols: q.cols,
            buf: out,
            half: None,
        }
    }

    fn gather_rows(&self, x: &CudaAct, rows: &[usize]) -> CudaAct {
        let mut out = self.out_f32(rows.len() * x.cols);
        if !rows.is_empty() {
            let idx: Vec<u32> = rows.iter().map(|&r| r as u32).collect();
            let idx = self.upload(&idx);
            let c = x.cols as i32;
            let mut b = self.stream.launch_builder(self.f("gather_rows"));
            b.arg(&x.buf).arg(&idx).arg(&c).arg(&mut out);
            // SAFETY: matches elementwise.cu; the rows exist (the scheduler's outputs).
            ok(
                unsafe { b.launch(Self::rows_config(rows.len(), 256)) },
                "gather_rows",
            );
        }
        CudaAct {
            rows: rows.len(),
            cols: x.cols,
            buf: out,
            half: None,
        }
    }

    fn samples_on_device(&self) -> bool {
        true
    }

    fn sample(
        &self,
        logits: &CudaAct,
        rows: &[usize],
        settings: &[RowSampling],
    ) -> Option<Vec<u32>> {
        let picked = self.gather_rows(logits, rows);
        Some(self.sample_rows(&picked, settings))
    }

    fn to_host(&self, x: &CudaAct) -> (usize, usize, Vec<f32>) {
        let n = x.rows * x.cols;
        let mut data = ok(self.stream.clone_dtoh(&x.buf), "copy to host");
        ok(self.stream.synchronize(), "synchronize");
        data.truncate(n);
        (x.rows, x.cols, data)
    }
}

/// Dynamic shared memory of attn_prefill: a block of keys (rows padded by one) and values, and
/// the tile's queries, in f32.
fn prefill_shared_bytes(block_size: usize, head_dim: usize) -> usize {
    (head_dim * (block_size + 1) + block_size * head_dim + plan::PREFILL_PAIRS * head_dim) * 4
}

/// A kernel's bf16 twin output (`CudaAct::half`), or a null pointer where there is none (the
/// kernel then skips it).
fn push_twin<'a>(
    b: &mut cudarc::driver::LaunchArgs<'a>,
    half: &'a mut Option<CudaSlice<u16>>,
    null: &'a u64,
) {
    match half {
        Some(h) => b.arg(h),
        None => b.arg(null),
    };
}

/// Dynamic shared memory of attn_prefill_mma_*: the tile's queries and a chunk of 32 keys,
/// key-major, and its values, dimension-major, in bf16, rows padded by 8.
fn mma_prefill_shared_bytes(head_dim: usize) -> usize {
    (plan::MMA_PREFILL_PAIRS * (head_dim + 8) + 32 * (head_dim + 8) + head_dim * (32 + 8)) * 2
}

/// Dynamic shared memory of attn_decode: each key's block base (u64), the group's queries,
/// its scores for one split, and a max and sum per head.
fn decode_shared_bytes(group: usize, head_dim: usize) -> usize {
    plan::DECODE_SPLIT_KEYS * 8 + (group * head_dim + group * plan::DECODE_SPLIT_KEYS + 64) * 4
}

fn dtype_code(d: DType) -> i32 {
    match d {
        DType::F32 => 0,
        DType::BF16 => 1,
        DType::F16 => 2,
    }
}
