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

/// The column ranges of `widths`, in order, each as its own activations.
fn split_cols<const N: usize>(x: &CpuAct, widths: [usize; N]) -> [CpuAct; N] {
    let mut at = 0;
    widths.map(|w| {
        let mut out = CpuAct::zeros(x.rows, w);
        for (o, row) in out
            .data
            .chunks_exact_mut(w.max(1))
            .zip(x.data.chunks_exact(x.cols.max(1)))
        {
            o.copy_from_slice(&row[at..at + w]);
        }
        at += w;
        out
    })
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

    /// The CPU never stacks (`stacked_matrix` is `None`): this is the reference of the GPU's
    /// `qkv_rope_split` kernel.
    fn split_qkv_rope(
        &self,
        qkv: &CpuAct,
        heads: usize,
        kv_heads: usize,
        head_dim: usize,
        step: &StepInputs<'_>,
    ) -> [CpuAct; 3] {
        let widths = [heads * head_dim, kv_heads * head_dim, kv_heads * head_dim];
        let [mut q, mut k, v] = split_cols(qkv, widths);
        self.rope(&mut q, heads, head_dim, step);
        self.rope(&mut k, kv_heads, head_dim, step);
        [q, k, v]
    }

    /// The reference of the GPU's `gelu_mul_stacked` kernel.
    fn gelu_mul_stacked(&self, gate_up: &CpuAct) -> CpuAct {
        let half = gate_up.cols / 2;
        let [g, u] = split_cols(gate_up, [half, half]);
        self.gelu_mul(&g, &u)
    }

    fn embed_step(&self, table: &CpuMatrix, step: &StepInputs<'_>, scale: f32) -> CpuAct {
        self.embed(table, step.tokens, scale)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::AttentionMeta;

    /// The stacked forms (the references of the GPU's fused kernels) are the column split
    /// followed by the separate operations.
    #[test]
    fn stacked_forms_are_the_split_then_the_operations() {
        let b = CpuBackend;
        let (rows, heads, kv_heads, hd) = (3, 4, 2, 8);
        let (qc, kc) = (heads * hd, kv_heads * hd);
        let width = qc + 2 * kc;
        let data: Vec<f32> = (0..rows * width).map(|i| (i as f32 * 0.37).sin()).collect();
        let half = hd / 2;
        let cos: Vec<f32> = (0..rows * half).map(|i| (i as f32 * 0.1).cos()).collect();
        let sin: Vec<f32> = (0..rows * half).map(|i| (i as f32 * 0.1).sin()).collect();
        let meta = AttentionMeta::default();
        let step = StepInputs {
            tokens: &[],
            meta: &meta,
            slots: &[],
            extra_slots: &[],
            cos: &cos,
            sin: &sin,
            group: 2,
            head_dim: hd,
        };
        let x = CpuAct {
            rows,
            cols: width,
            data: data.clone(),
        };
        let [q, k, v] = b.split_qkv_rope(&x, heads, kv_heads, hd, &step);
        let cols = |lo: usize, w: usize| -> Vec<f32> {
            (0..rows)
                .flat_map(|r| data[r * width + lo..r * width + lo + w].to_vec())
                .collect()
        };
        let mut q_want = cols(0, qc);
        let mut k_want = cols(qc, kc);
        for r in 0..rows {
            let t = r * half..(r + 1) * half;
            ops::rope_row(
                &mut q_want[r * qc..(r + 1) * qc],
                heads,
                hd,
                &cos[t.clone()],
                &sin[t.clone()],
            );
            ops::rope_row(
                &mut k_want[r * kc..(r + 1) * kc],
                kv_heads,
                hd,
                &cos[t.clone()],
                &sin[t],
            );
        }
        assert_eq!(q.data, q_want);
        assert_eq!(k.data, k_want);
        assert_eq!(v.data, cols(qc + kc, kc));
        assert_eq!((q.cols, k.cols, v.cols), (qc, kc, kc));

        let gu = CpuAct {
            rows,
            cols: 2 * 10,
            data: data[..rows * 20].to_vec(),
        };
        let g = CpuAct {
            rows,
            cols: 10,
            data: (0..rows)
                .flat_map(|r| gu.data[r * 20..r * 20 + 10].to_vec())
                .collect(),
        };
        let u = CpuAct {
            rows,
            cols: 10,
            data: (0..rows)
                .flat_map(|r| gu.data[r * 20 + 10..r * 20 + 20].to_vec())
                .collect(),
        };
        assert_eq!(b.gelu_mul_stacked(&gu).data, b.gelu_mul(&g, &u).data);
        // The CPU reads its weights in place: it never stacks.
        assert!(b.stacked_matrix(&[]).unwrap().is_none());
    }
}
