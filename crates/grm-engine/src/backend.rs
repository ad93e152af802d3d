//! The operations a Gemma-2 forward pass needs, behind one small trait, so that `model.rs`
//! drives the CPU and the CUDA backend alike. Activations are f32 row-major [rows × cols];
//! weight matrices stay in their stored type.

use crate::error::Result;
use crate::kv::CopyOp;
use crate::weights::Tensor;

/// Per-token and per-sequence layout of one batch, for attention.
#[derive(Debug, Clone, Default)]
pub struct AttentionMeta {
    /// Position of each token of the batch.
    pub positions: Vec<u32>,
    /// Index into `spans` of each token.
    pub span_of: Vec<u32>,
    /// Block table of each sequence in the batch (positions 0..=its last in this batch).
    pub spans: Vec<Vec<u32>>,
    pub block_size: usize,
}

/// What every layer of one forward step reads besides its activations, as the host has it.
#[derive(Debug, Clone, Copy)]
pub struct StepInputs<'a> {
    /// The step's tokens, a row each (empty where only attention or KV writes are tested).
    pub tokens: &'a [u32],
    pub meta: &'a AttentionMeta,
    /// The KV slot of each new row.
    pub slots: &'a [usize],
    /// (row, slot): rows whose K and V are also written to a second slot (the same prompt
    /// position in another branch of a prompt tree).
    pub extra_slots: &'a [(usize, usize)],
    /// RoPE tables of each row, [rows × head_dim/2].
    pub cos: &'a [f32],
    pub sin: &'a [f32],
    /// Query heads per KV head, and the head size (how the GPU tiles attention, and which
    /// prefill kernel it runs, depend on them).
    pub group: usize,
    pub head_dim: usize,
}

/// Static attention parameters of a layer.
#[derive(Debug, Clone, Copy)]
pub struct AttentionParams {
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    /// `query_pre_attn_scalar^-0.5`.
    pub scale: f32,
    pub softcap: Option<f32>,
    /// Sliding window of this layer: keys q − window + 1 ..= q.
    pub window: Option<usize>,
}

pub trait Backend: Send + Sync + 'static {
    /// Activations [rows × cols], f32.
    type Act: Send;
    /// A weight matrix [out × in] in its stored type.
    type Matrix: Send + Sync;
    /// A small f32 vector (norm weights).
    type Vector: Send + Sync;
    /// KV storage for every layer.
    type Kv: Send;
    /// One step's [`StepInputs`] as the layers read them (the GPU keeps them on the device).
    type Step<'a>
    where
        Self: 'a;

    fn name(&self) -> String;

    /// Bytes of one cached K or V element (the CPU keeps f32, the GPU bf16).
    fn kv_element_bytes(&self) -> usize {
        4
    }
    /// Refuses a model whose shapes the backend's kernels do not cover, at load.
    fn check_model(&self, _config: &crate::config::ModelConfig) -> Result<()> {
        Ok(())
    }
    /// Memory the KV pool may take when none was asked for (the GPU's, from its free memory);
    /// `None`: the engine's host default.
    fn kv_memory_budget(&self) -> Option<usize> {
        None
    }

    fn matrix(&self, t: &Tensor) -> Result<Self::Matrix>;
    fn vector(&self, v: &[f32]) -> Result<Self::Vector>;
    fn new_kv(
        &self,
        layers: usize,
        num_blocks: usize,
        block_size: usize,
        kv_heads: usize,
        head_dim: usize,
    ) -> Result<Self::Kv>;

    /// Rows of the embedding table, times `scale`.
    fn embed(&self, table: &Self::Matrix, tokens: &[u32], scale: f32) -> Self::Act;
    /// [`Backend::embed`] of the step's tokens, as `prepare_step` holds them.
    fn embed_step(&self, table: &Self::Matrix, step: &Self::Step<'_>, scale: f32) -> Self::Act;
    /// Runs `layers` over `kv` (the step's embedding and every layer, returning the final
    /// residual); a backend may instead replay a recording of a step of the same shape over the
    /// same cache with this step's inputs (the GPU's CUDA graphs of decode steps), which gives
    /// the same residual and the same KV writes.
    fn run_layers(
        &self,
        _step: &Self::Step<'_>,
        kv: &mut Self::Kv,
        layers: &mut dyn FnMut(&mut Self::Kv) -> Self::Act,
    ) -> Self::Act {
        layers(kv)
    }
    /// `x * rsqrt(mean(x²) + eps) * (1 + w)` per row.
    fn rms_norm(&self, x: &Self::Act, w: &Self::Vector, eps: f32) -> Self::Act;
    /// `residual += rms_norm(x)`.
    fn add_rms_norm(&self, residual: &mut Self::Act, x: &Self::Act, w: &Self::Vector, eps: f32);
    /// The boundary between sublayers: `residual += rms_norm(x, w_post)`, then
    /// `rms_norm(residual, w_next)` (one pass on the GPU).
    fn add_rms_norm_then_norm(
        &self,
        residual: &mut Self::Act,
        x: &Self::Act,
        w_post: &Self::Vector,
        w_next: &Self::Vector,
        eps: f32,
    ) -> Self::Act {
        self.add_rms_norm(residual, x, w_post, eps);
        self.rms_norm(residual, w_next, eps)
    }
    /// `x · wᵀ`.
    fn linear(&self, x: &Self::Act, w: &Self::Matrix) -> Self::Act;
    /// `x · wᵀ` for several weights of one input (a layer's q, k and v; its gate and up), so a
    /// backend can prepare `x` once.
    fn linears<const N: usize>(&self, x: &Self::Act, ws: [&Self::Matrix; N]) -> [Self::Act; N] {
        ws.map(|w| self.linear(x, w))
    }
    /// Several weights of one input (a layer's q, k and v; its gate and up) stacked as one
    /// [Σ out × in] matrix, where the backend gains from one wider product (the GPU: one launch
    /// instead of three, a longer read); `None` keeps them apart (the CPU, which reads the
    /// weights in place from the file). Only then are the stacked forms below called.
    fn stacked_matrix(&self, _ts: &[&Tensor]) -> Result<Option<Self::Matrix>> {
        Ok(None)
    }
    /// From a stacked q, k, v product [rows × (heads + 2 kv_heads) head_dim]: q and k with the
    /// step's rotary embedding, and v, each on its own.
    fn split_qkv_rope(
        &self,
        qkv: &Self::Act,
        heads: usize,
        kv_heads: usize,
        head_dim: usize,
        step: &Self::Step<'_>,
    ) -> [Self::Act; 3];
    /// `gelu_tanh(gate) * up` from a stacked gate, up product [rows × 2 intermediate].
    fn gelu_mul_stacked(&self, gate_up: &Self::Act) -> Self::Act;
    /// Prepares, once per forward step, what every layer of the step reuses: positions,
    /// block tables, RoPE rows, slots.
    fn prepare_step<'a>(&'a self, inputs: StepInputs<'a>) -> Self::Step<'a>;
    /// Rotary embedding in place on `heads` heads of `head_dim` per row, with the step's
    /// tables for each row.
    fn rope(&self, x: &mut Self::Act, heads: usize, head_dim: usize, step: &Self::Step<'_>);
    /// `gelu_tanh(gate) * up`.
    fn gelu_mul(&self, gate: &Self::Act, up: &Self::Act) -> Self::Act;
    /// `tanh(x / cap) * cap` in place.
    fn softcap(&self, x: &mut Self::Act, cap: f32);
    /// Writes each row's K and V into its slot of the step, then the rows of the step's
    /// extra slots into those (the same bits).
    fn write_kv(
        &self,
        kv: &mut Self::Kv,
        layer: usize,
        k: &Self::Act,
        v: &Self::Act,
        step: &Self::Step<'_>,
    );
    /// Copy-on-write of partial blocks, in every layer.
    fn copy_blocks(&self, kv: &mut Self::Kv, ops: &[CopyOp]);
    /// Paged attention of each query row over its sequence's cached keys and values, as the
    /// step's attention layout says.
    fn attention(
        &self,
        kv: &Self::Kv,
        layer: usize,
        q: &Self::Act,
        step: &Self::Step<'_>,
        p: AttentionParams,
    ) -> Self::Act;
    /// The given rows, in order.
    fn gather_rows(&self, x: &Self::Act, rows: &[usize]) -> Self::Act;
    /// Whether [`Backend::sample`] samples on the device (else the host samples).
    fn samples_on_device(&self) -> bool {
        false
    }
    /// Samples one token per setting from the given rows of `logits` on the device, so that
    /// only token ids reach the host; `None` where the backend samples on the host.
    fn sample(
        &self,
        _logits: &Self::Act,
        _rows: &[usize],
        _settings: &[crate::device_sampler::RowSampling],
    ) -> Option<Vec<u32>> {
        None
    }
    /// Rows × cols on the host.
    fn to_host(&self, x: &Self::Act) -> (usize, usize, Vec<f32>);
}
