//! Gemma-2, top-down, exactly as HF transformers computes it (DESIGN.md §3), over any
//! [`Backend`]:
//!
//! embedding × √hidden (the factor rounded to the weight dtype) → per layer
//! [RMSNorm → attention (GQA, RoPE, scale `query_pre_attn_scalar^-½`, tanh softcap, sliding
//! window on sliding layers) → RMSNorm → residual; RMSNorm → GeGLU MLP → RMSNorm → residual]
//! → final RMSNorm → tied LM head with the final softcap, or the scalar `score` head.

use crate::backend::{AttentionMeta, AttentionParams, Backend, StepInputs};
use crate::config::{Head, ModelConfig};
use crate::error::{EngineError, Result};
use crate::kv::CopyOp;
use crate::rope::rope_tables;
use crate::weights::{ModelFiles, Tensor, WeightStore};
use std::path::Path;

/// The products of one input: apart, or stacked as one matrix where the backend gains from it
/// (`Backend::stacked_matrix`).
enum Products<B: Backend, const N: usize> {
    Apart([B::Matrix; N]),
    Stacked(B::Matrix),
}

impl<B: Backend, const N: usize> Products<B, N> {
    fn load(backend: &B, ts: [Tensor; N]) -> Result<Self> {
        if let Some(m) = backend.stacked_matrix(&ts.each_ref().map(|t| t))? {
            return Ok(Self::Stacked(m));
        }
        let mut ms = Vec::with_capacity(N);
        for t in &ts {
            ms.push(backend.matrix(t)?);
        }
        match ms.try_into() {
            Ok(ms) => Ok(Self::Apart(ms)),
            Err(_) => Err(EngineError::Internal(format!(
                "{N} products, loaded as fewer"
            ))),
        }
    }
}

struct Layer<B: Backend> {
    input_norm: B::Vector,
    /// q, k, v.
    qkv: Products<B, 3>,
    o: B::Matrix,
    post_attn_norm: B::Vector,
    pre_ff_norm: B::Vector,
    /// gate, up.
    gate_up: Products<B, 2>,
    down: B::Matrix,
    post_ff_norm: B::Vector,
    attn: AttentionParams,
}

enum TopHead<B: Backend> {
    /// Logits over the vocabulary; `None` is tied to the embedding.
    Lm(Option<B::Matrix>),
    /// `score.weight` of a sequence-classification model.
    Score(B::Matrix),
}

/// What one forward step computes: new tokens of several sequences at once.
#[derive(Debug, Clone, Default)]
pub struct ForwardBatch {
    /// Every new token of the step, sequence after sequence.
    pub tokens: Vec<u32>,
    /// The KV slot of each token (block × block_size + offset).
    pub slots: Vec<usize>,
    /// Positions and block tables for attention.
    pub meta: AttentionMeta,
    /// Copy-on-write of shared partial blocks, done before anything is written.
    pub copies: Vec<CopyOp>,
    /// (row, slot): rows whose K and V are also written to another slot — the same prompt
    /// position in another branch's block of a prompt tree (`scheduler::prompt_tree`).
    pub extra_slots: Vec<(usize, usize)>,
    /// Rows (indices into `tokens`) whose logits (or scores) are wanted, in order.
    pub outputs: Vec<usize>,
}

/// Rows × cols of f32: logits (causal LM) or scores (sequence classification).
#[derive(Debug, Clone, PartialEq)]
pub struct Outputs {
    pub rows: usize,
    pub cols: usize,
    pub data: Vec<f32>,
}

impl Outputs {
    pub fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.cols..(i + 1) * self.cols]
    }
}

pub struct Gemma2<B: Backend> {
    pub config: ModelConfig,
    backend: B,
    embed: B::Matrix,
    embed_scale: f32,
    layers: Vec<Layer<B>>,
    final_norm: B::Vector,
    head: TopHead<B>,
    weight_bytes: usize,
    files: ModelFiles,
}

impl<B: Backend> Gemma2<B> {
    /// Loads a HuggingFace model directory (config.json + safetensors).
    pub fn load(dir: &Path, backend: B) -> Result<Self> {
        let config = ModelConfig::load(dir)?;
        let store = WeightStore::open(dir)?;
        Self::from_store(config, &store, backend)
    }

    pub fn from_store(config: ModelConfig, store: &WeightStore, backend: B) -> Result<Self> {
        backend.check_model(&config)?;
        let c = &config;
        let (h, q_out, kv_out) = (
            c.hidden_size,
            c.num_heads * c.head_dim,
            c.num_kv_heads * c.head_dim,
        );
        let matrix = |name: &str, shape: &[usize]| -> Result<B::Matrix> {
            backend.matrix(&store.get(name, shape)?)
        };
        let tensor = |name: &str, shape: &[usize]| store.get(name, shape);
        let vector =
            |name: &str| -> Result<B::Vector> { backend.vector(&store.get(name, &[h])?.to_f32()) };

        let embed_t: Tensor = store.get("model.embed_tokens.weight", &[c.vocab_size, h])?;
        // HF: hidden * torch.tensor(hidden_size ** 0.5, dtype=weight dtype).
        let embed_scale = embed_t.dtype.round((h as f64).sqrt() as f32);
        let embed = backend.matrix(&embed_t)?;
        let mut layers = Vec::with_capacity(c.num_layers);
        for i in 0..c.num_layers {
            let p = format!("model.layers.{i}");
            layers.push(Layer {
                input_norm: vector(&format!("{p}.input_layernorm.weight"))?,
                qkv: Products::load(
                    &backend,
                    [
                        tensor(&format!("{p}.self_attn.q_proj.weight"), &[q_out, h])?,
                        tensor(&format!("{p}.self_attn.k_proj.weight"), &[kv_out, h])?,
                        tensor(&format!("{p}.self_attn.v_proj.weight"), &[kv_out, h])?,
                    ],
                )?,
                o: matrix(&format!("{p}.self_attn.o_proj.weight"), &[h, q_out])?,
                post_attn_norm: vector(&format!("{p}.post_attention_layernorm.weight"))?,
                pre_ff_norm: vector(&format!("{p}.pre_feedforward_layernorm.weight"))?,
                gate_up: Products::load(
                    &backend,
                    [
                        tensor(
                            &format!("{p}.mlp.gate_proj.weight"),
                            &[c.intermediate_size, h],
                        )?,
                        tensor(
                            &format!("{p}.mlp.up_proj.weight"),
                            &[c.intermediate_size, h],
                        )?,
                    ],
                )?,
                down: matrix(
                    &format!("{p}.mlp.down_proj.weight"),
                    &[h, c.intermediate_size],
                )?,
                post_ff_norm: vector(&format!("{p}.post_feedforward_layernorm.weight"))?,
                attn: AttentionParams {
                    num_heads: c.num_heads,
                    num_kv_heads: c.num_kv_heads,
                    head_dim: c.head_dim,
                    scale: c.query_pre_attn_scalar.powf(-0.5) as f32,
                    softcap: c.attn_softcap,
                    window: c.window_of(i),
                },
            });
        }
        let final_norm = vector("model.norm.weight")?;
        let head = match c.head {
            Head::CausalLm if !c.tie_word_embeddings => {
                TopHead::Lm(Some(matrix("lm_head.weight", &[c.vocab_size, h])?))
            }
            Head::CausalLm => TopHead::Lm(None),
            Head::SequenceClassification { num_labels } => {
                TopHead::Score(matrix("score.weight", &[num_labels, h])?)
            }
        };
        Ok(Self {
            weight_bytes: store.bytes(),
            files: {
                // A file cut short or written while a backend copied it (a GPU's upload reads
                // zeros past a shortened end): fail the load, never serve what was read.
                let files = store.files();
                files
                    .check()
                    .and_then(|_| files.check_headers())
                    .map_err(|why| EngineError::Invalid(format!("loading the weights: {why}")))?;
                files
            },
            config,
            backend,
            embed,
            embed_scale,
            layers,
            final_norm,
            head,
        })
    }

    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// Bytes of weights read by one forward step.
    /// The weight files the backend still reads in place (none once it copied them away).
    pub fn files(&self) -> &ModelFiles {
        &self.files
    }

    pub fn weight_bytes(&self) -> usize {
        self.weight_bytes
    }

    /// Width of an output row: the vocabulary, or the number of labels.
    pub fn output_width(&self) -> usize {
        match self.config.head {
            Head::CausalLm => self.config.vocab_size,
            Head::SequenceClassification { num_labels } => num_labels,
        }
    }

    /// A KV storage for `num_blocks` blocks of `block_size` tokens.
    pub fn new_kv(&self, num_blocks: usize, block_size: usize) -> Result<B::Kv> {
        let c = &self.config;
        self.backend.new_kv(
            c.num_layers,
            num_blocks,
            block_size,
            c.num_kv_heads,
            c.head_dim,
        )
    }

    /// Bytes of KV storage per token (all layers, K and V, in the backend's element type).
    pub fn kv_bytes_per_token(&self) -> usize {
        let c = &self.config;
        2 * c.num_layers * c.num_kv_heads * c.head_dim * self.backend.kv_element_bytes()
    }

    /// Runs one sequence through a KV cache of its own in a single step, returning the outputs
    /// of its last position, or of every position.
    pub fn run_once(&self, tokens: &[u32], all_positions: bool) -> Result<Outputs> {
        let c = &self.config;
        if tokens.is_empty() {
            return Err(EngineError::Invalid("no tokens given".into()));
        }
        check_vocab(tokens, c.vocab_size)?;
        if tokens.len() > c.max_position_embeddings {
            return Err(EngineError::Limit {
                what: "tokens",
                found: tokens.len(),
                limit: c.max_position_embeddings,
            });
        }
        const BLOCK: usize = 16;
        let blocks = tokens.len().div_ceil(BLOCK);
        let mut kv = self.new_kv(blocks, BLOCK)?;
        let n = tokens.len();
        let batch = ForwardBatch {
            tokens: tokens.to_vec(),
            slots: (0..n).collect(),
            meta: AttentionMeta {
                positions: (0..n as u32).collect(),
                span_of: vec![0; n],
                spans: vec![(0..blocks as u32).collect()],
                block_size: BLOCK,
            },
            copies: Vec::new(),
            extra_slots: Vec::new(),
            outputs: if all_positions {
                (0..n).collect()
            } else {
                vec![n - 1]
            },
        };
        Ok(self.forward(&mut kv, &batch))
    }

    /// Runs one step: writes the new tokens' K and V into their slots and returns the
    /// outputs of the requested rows.
    pub fn forward(&self, kv: &mut B::Kv, batch: &ForwardBatch) -> Outputs {
        let out = self.forward_device(kv, batch);
        let (rows, cols, data) = self.backend.to_host(&out);
        Outputs { rows, cols, data }
    }

    /// [`Gemma2::forward`], leaving the outputs where the backend computed them.
    pub fn forward_device(&self, kv: &mut B::Kv, batch: &ForwardBatch) -> B::Act {
        let b = &self.backend;
        let c = &self.config;
        let eps = c.rms_norm_eps;
        if !batch.copies.is_empty() {
            b.copy_blocks(kv, &batch.copies);
        }
        let half = c.head_dim / 2;
        let rows = batch.tokens.len();
        let (mut cos, mut sin) = (vec![0f32; rows * half], vec![0f32; rows * half]);
        for (r, &pos) in batch.meta.positions.iter().enumerate() {
            rope_tables(
                pos,
                c.head_dim,
                c.rope_theta,
                &mut cos[r * half..(r + 1) * half],
                &mut sin[r * half..(r + 1) * half],
            );
        }

        let step = b.prepare_step(StepInputs {
            tokens: &batch.tokens,
            meta: &batch.meta,
            slots: &batch.slots,
            extra_slots: &batch.extra_slots,
            cos: &cos,
            sin: &sin,
            group: c.num_heads / c.num_kv_heads.max(1),
            head_dim: c.head_dim,
        });

        // The embedding and every layer: one recorded graph on the GPU for a decode step of a
        // shape seen before (Backend::run_layers).
        let x = b.run_layers(&step, kv, &mut |kv| {
            let mut x = b.embed_step(&self.embed, &step, self.embed_scale);
            let mut hn = match self.layers.first() {
                Some(l) => b.rms_norm(&x, &l.input_norm, eps),
                None => b.rms_norm(&x, &self.final_norm, eps),
            };
            for (i, l) in self.layers.iter().enumerate() {
                let [q, k, v] = match &l.qkv {
                    Products::Apart([wq, wk, wv]) => {
                        let [mut q, mut k, v] = b.linears(&hn, [wq, wk, wv]);
                        b.rope(&mut q, c.num_heads, c.head_dim, &step);
                        b.rope(&mut k, c.num_kv_heads, c.head_dim, &step);
                        [q, k, v]
                    }
                    Products::Stacked(w) => b.split_qkv_rope(
                        &b.linear(&hn, w),
                        c.num_heads,
                        c.num_kv_heads,
                        c.head_dim,
                        &step,
                    ),
                };
                b.write_kv(kv, i, &k, &v, &step);
                let a = b.attention(kv, i, &q, &step, l.attn);
                let o = b.linear(&a, &l.o);
                hn = b.add_rms_norm_then_norm(&mut x, &o, &l.post_attn_norm, &l.pre_ff_norm, eps);

                let m = match &l.gate_up {
                    Products::Apart([wg, wu]) => {
                        let [g, u] = b.linears(&hn, [wg, wu]);
                        b.gelu_mul(&g, &u)
                    }
                    Products::Stacked(w) => b.gelu_mul_stacked(&b.linear(&hn, w)),
                };
                let d = b.linear(&m, &l.down);
                match self.layers.get(i + 1) {
                    Some(next) => {
                        hn = b.add_rms_norm_then_norm(
                            &mut x,
                            &d,
                            &l.post_ff_norm,
                            &next.input_norm,
                            eps,
                        )
                    }
                    None => b.add_rms_norm(&mut x, &d, &l.post_ff_norm, eps),
                }
            }
            x
        });
        let last = b.gather_rows(&x, &batch.outputs);
        let y = b.rms_norm(&last, &self.final_norm, eps);
        match &self.head {
            TopHead::Lm(head) => {
                let mut logits = b.linear(&y, head.as_ref().unwrap_or(&self.embed));
                if let Some(cap) = c.final_softcap {
                    b.softcap(&mut logits, cap);
                }
                logits
            }
            TopHead::Score(score) => b.linear(&y, score),
        }
    }
}

/// Refuses a token id outside the vocabulary, naming its position.
pub(crate) fn check_vocab(tokens: &[u32], vocab: usize) -> Result<()> {
    match tokens.iter().position(|&t| t as usize >= vocab) {
        Some(position) => Err(EngineError::TokenOutOfVocab {
            token: tokens[position],
            position,
            vocab,
        }),
        None => Ok(()),
    }
}
