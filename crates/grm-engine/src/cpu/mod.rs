//! The CPU backend: kernels for the instruction set of the CPU they run on (AVX-512, AVX2/FMA,
//! or portable code: [`isa`]), each batch-invariant. Weights are read in place from the
//! memory-mapped files; rayon's pool supplies the threads.

pub mod attention;
pub mod isa;
pub mod kv;
pub mod matmul;
pub mod ops;
pub mod roofline;
pub mod simd;

use crate::backend::{AttentionParams, Backend, StepInputs};
use crate::error::Result;
use crate::kv::CopyOp;
use crate::weights::Tensor;
pub use isa::Isa;
use matmul::WeightRef;

/// Activations on the host, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct CpuAct {
    pub rows: usize,
    pub cols: usize,
    pub data: Vec<f32>,
}

impl CpuAct {
    pub fn zeros(rows: usize, cols: usize) -> Self {
        Self {
            rows,
            cols,
            data: vec![0.0; rows * cols],
        }
    }
}

/// A weight matrix [rows × cols] in the mapped file.
pub struct CpuMatrix {
    tensor: Tensor,
    rows: usize,
    cols: usize,
}

impl CpuMatrix {
    fn as_ref(&self) -> WeightRef<'_> {
        WeightRef {
            dtype: self.tensor.dtype,
            bytes: self.tensor.bytes(),
            rows: self.rows,
            cols: self.cols,
        }
    }
}

/// The CPU backend. `CpuBackend` (the constant) runs this process's path, [`Isa::current`];
/// [`CpuBackend::with_isa`] a given one.
#[derive(Debug, Default, Clone, Copy)]
pub struct CpuBackend {
    isa: Option<Isa>,
}

/// The backend on this process's path: `Gemma2::load(dir, CpuBackend)`.
#[allow(non_upper_case_globals)]
pub const CpuBackend: CpuBackend = CpuBackend { isa: None };

impl CpuBackend {
    /// The backend on a given path, where this CPU can run it.
    pub fn with_isa(isa: Isa) -> Result<Self> {
        if !isa.available() {
            return Err(crate::error::EngineError::Invalid(format!(
                "this CPU cannot run the {} kernels",
                isa.name()
            )));
        }
        Ok(Self { isa: Some(isa) })
    }

    /// The path its kernels take.
    pub fn isa(&self) -> Isa {
        self.isa.unwrap_or_else(Isa::current)
    }
}

impl Backend for CpuBackend {
    type Act = CpuAct;
    type Matrix = CpuMatrix;
    type Vector = Vec<f32>;
    type Kv = kv::CpuKv;
    type Step<'a> = StepInputs<'a>;

    fn name(&self) -> String {
        format!(
            "cpu ({}, {} threads)",
            self.isa().name(),
            rayon::current_num_threads()
        )
    }

    fn matrix(&self, t: &Tensor) -> Result<CpuMatrix> {
        let (rows, cols) = t.matrix_dims();
        Ok(CpuMatrix {
            tensor: t.clone(),
            rows,
            cols,
        })
    }

    fn vector(&self, v: &[f32]) -> Result<Vec<f32>> {
        Ok(v.to_vec())
    }

    fn new_kv(
        &self,
        layers: usize,
        num_blocks: usize,
        block_size: usize,
        kv_heads: usize,
        head_dim: usize,
    ) -> Result<kv::CpuKv> {
        Ok(kv::CpuKv::new(
            layers, num_blocks, block_size, kv_heads, head_dim,
        ))
    }

    fn embed(&self, table: &CpuMatrix, tokens: &[u32], scale: f32) -> CpuAct {
        let cols = table.cols;
        let mut out = CpuAct::zeros(tokens.len(), cols);
        let w = table.as_ref();
        for (row, &tok) in out.data.chunks_exact_mut(cols).zip(tokens) {
            let base = tok as usize * cols;
            for (c, o) in row.iter_mut().enumerate() {
                *o = crate::weights::element(w.bytes, w.dtype, base + c) * scale;
            }
        }
        out
    }

    fn rms_norm(&self, x: &CpuAct, w: &Vec<f32>, eps: f32) -> CpuAct {
        let mut out = CpuAct::zeros(x.rows, x.cols);
        ops::rms_norm(&x.data, w, eps, &mut out.data);
        out
    }

    fn add_rms_norm(&self, residual: &mut CpuAct, x: &CpuAct, w: &Vec<f32>, eps: f32) {
        ops::add_rms_norm(&mut residual.data, &x.data, w, eps);
    }

    fn linear(&self, x: &CpuAct, w: &CpuMatrix) -> CpuAct {
        let mut out = CpuAct::zeros(x.rows, w.rows);
        matmul::linear_on(self.isa(), &x.data, x.rows, w.as_ref(), &mut out.data);
        out
    }

    fn prepare_step<'a>(&'a self, inputs: StepInputs<'a>) -> StepInputs<'a> {
        inputs
    }

    fn rope(&self, x: &mut CpuAct, heads: usize, head_dim: usize, step: &StepInputs<'_>) {
        let (cos, sin) = (step.cos, step.sin);
        let half = head_dim / 2;
        for (r, row) in x.data.chunks_exact_mut(x.cols).enumerate() {
            ops::rope_row(
                row,
                heads,
                head_dim,
                &cos[r * half..(r + 1) * half],
                &sin[r * half..(r + 1) * half],
            );
        }
    }

    fn gelu_mul(&self, gate: &CpuAct, up: &CpuAct) -> CpuAct {
        let mut out = CpuAct::zeros(gate.rows, gate.cols);
        ops::gelu_mul_on(self.isa(), &gate.data, &up.data, &mut out.data);
        out
    }

    fn softcap(&self, x: &mut CpuAct, cap: f32) {
        ops::softcap_on(self.isa(), &mut x.data, cap);
    }

    fn write_kv(
        &self,
        kv: &mut kv::CpuKv,
        layer: usize,
        k: &CpuAct,
        v: &CpuAct,
        step: &StepInputs<'_>,
    ) {
        let rows = step.slots.iter().copied().enumerate();
        for (i, slot) in rows.chain(step.extra_slots.iter().copied()) {
            let (kr, vr) = (
                &k.data[i * k.cols..(i + 1) * k.cols],
                &v.data[i * v.cols..(i + 1) * v.cols],
            );
            kv.write(layer, slot, kr, vr);
        }
    }

    fn copy_blocks(&self, kv: &mut kv::CpuKv, ops: &[CopyOp]) {
        for &op in ops {
            kv.copy(op);
        }
    }

    fn attention(
        &self,
        kv: &kv::CpuKv,
        layer: usize,
        q: &CpuAct,
        step: &StepInputs<'_>,
        p: AttentionParams,
    ) -> CpuAct {
        CpuAct {
            rows: q.rows,
            cols: q.cols,
            data: attention::attention_on(self.isa(), kv, layer, &q.data, step.meta, p),
        }
    }

    fn gather_rows(&self, x: &CpuAct, rows: &[usize]) -> CpuAct {
        let mut out = CpuAct::zeros(rows.len(), x.cols);
        for (o, &r) in out.data.chunks_exact_mut(x.cols).zip(rows) {
            o.copy_from_slice(&x.data[r * x.cols..(r + 1) * x.cols]);
        }
        out
    }

    fn to_host(&self, x: &CpuAct) -> (usize, usize, Vec<f32>) {
        (x.rows, x.cols, x.data.clone())
    }
}
