//! Random-weight Gemma-2 models with real or documented shapes, written as HuggingFace model
//! directories (config.json, safetensors, a byte-level tokenizer.json): for benchmarks and
//! demos where real weights cannot be downloaded.

use crate::error::{EngineError, Result};
use crate::weights::DType;
use rayon::prelude::*;
use serde_json::json;
use std::io::Write;
use std::path::Path;

/// The hyper-parameters of a named shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    pub name: &'static str,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub query_pre_attn_scalar: usize,
    pub sliding_window: usize,
    pub max_position_embeddings: usize,
}

/// gemma-2-2b/9b/27b as published; `small-100m` (112M parameters: 10 layers of width 768, a
/// 32768-token vocabulary, window 256) for CPU benchmarks; `tiny` (the size of the test
/// fixtures) for quick demos.
pub const SHAPES: &[Shape] = &[
    Shape {
        name: "gemma-2-2b",
        vocab_size: 256_000,
        hidden_size: 2304,
        intermediate_size: 9216,
        num_layers: 26,
        num_heads: 8,
        num_kv_heads: 4,
        head_dim: 256,
        query_pre_attn_scalar: 256,
        sliding_window: 4096,
        max_position_embeddings: 8192,
    },
    Shape {
        name: "gemma-2-9b",
        vocab_size: 256_000,
        hidden_size: 3584,
        intermediate_size: 14336,
        num_layers: 42,
        num_heads: 16,
        num_kv_heads: 8,
        head_dim: 256,
        query_pre_attn_scalar: 256,
        sliding_window: 4096,
        max_position_embeddings: 8192,
    },
    Shape {
        name: "gemma-2-27b",
        vocab_size: 256_000,
        hidden_size: 4608,
        intermediate_size: 36864,
        num_layers: 46,
        num_heads: 32,
        num_kv_heads: 16,
        head_dim: 128,
        query_pre_attn_scalar: 144,
        sliding_window: 4096,
        max_position_embeddings: 8192,
    },
    Shape {
        name: "small-100m",
        vocab_size: 32_768,
        hidden_size: 768,
        intermediate_size: 3072,
        num_layers: 10,
        num_heads: 12,
        num_kv_heads: 4,
        head_dim: 64,
        query_pre_attn_scalar: 64,
        sliding_window: 256,
        max_position_embeddings: 4096,
    },
    Shape {
        name: "tiny",
        vocab_size: 262,
        hidden_size: 64,
        intermediate_size: 96,
        num_layers: 4,
        num_heads: 4,
        num_kv_heads: 2,
        head_dim: 24,
        query_pre_attn_scalar: 20,
        sliding_window: 8,
        max_position_embeddings: 2048,
    },
];

pub fn shape(name: &str) -> Option<Shape> {
    SHAPES.iter().copied().find(|s| s.name == name)
}

/// How to write the model.
#[derive(Debug, Clone)]
pub struct InitOptions {
    pub dtype: DType,
    /// Write a `Gemma2ForSequenceClassification` (a scalar `score` head) instead.
    pub seq_cls: bool,
    pub seed: u64,
    /// Largest safetensors file; bigger models are sharded with an index.
    pub shard_bytes: usize,
}

impl Default for InitOptions {
    fn default() -> Self {
        Self {
            dtype: DType::BF16,
            seq_cls: false,
            seed: 0,
            shard_bytes: 4 << 30,
        }
    }
}

/// The special tokens of the byte-level tokenizer, at Gemma's ids 0..=3 and then the turn
/// markers; bytes follow from id 6.
pub const SPECIAL_TOKENS: [&str; 6] = [
    "<pad>",
    "<eos>",
    "<bos>",
    "<unk>",
    "<start_of_turn>",
    "<end_of_turn>",
];

/// Writes `config.json`, the weights and `tokenizer.json` into `dir`.
pub fn write_random_model(shape: &Shape, dir: &Path, opts: &InitOptions) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| EngineError::io(dir, e))?;
    write_json(&dir.join("config.json"), &config_json(shape, opts))?;
    write_json(&dir.join("tokenizer.json"), &byte_tokenizer_json())?;
    let tensors = tensor_list(shape, opts.seq_cls);
    // Group tensors into shards of at most shard_bytes.
    let mut shards: Vec<Vec<(String, Vec<usize>)>> = vec![Vec::new()];
    let mut size = 0;
    for (name, dims) in tensors {
        let bytes = dims.iter().product::<usize>() * opts.dtype.size();
        if size > 0 && size + bytes > opts.shard_bytes {
            shards.push(Vec::new());
            size = 0;
        }
        size += bytes;
        shards.last_mut().expect("a shard").push((name, dims));
    }
    if shards.len() == 1 {
        write_safetensors(&dir.join("model.safetensors"), &shards[0], opts)?;
    } else {
        let mut map = serde_json::Map::new();
        let n = shards.len();
        for (i, shard) in shards.iter().enumerate() {
            let file = format!("model-{:05}-of-{n:05}.safetensors", i + 1);
            write_safetensors(&dir.join(&file), shard, opts)?;
            for (name, _) in shard {
                map.insert(name.clone(), json!(file));
            }
        }
        write_json(
            &dir.join("model.safetensors.index.json"),
            &json!({ "metadata": {}, "weight_map": map }),
        )?;
    }
    Ok(())
}

fn write_json(path: &Path, v: &serde_json::Value) -> Result<()> {
    let text = serde_json::to_string_pretty(v).map_err(|e| EngineError::Invalid(e.to_string()))?;
    std::fs::write(path, text + "\n").map_err(|e| EngineError::io(path, e))
}

fn config_json(s: &Shape, opts: &InitOptions) -> serde_json::Value {
    let arch = if opts.seq_cls {
        "Gemma2ForSequenceClassification"
    } else {
        "Gemma2ForCausalLM"
    };
    let layer_types: Vec<&str> = (0..s.num_layers)
        .map(|i| {
            if i % 2 == 0 {
                "sliding_attention"
            } else {
                "full_attention"
            }
        })
        .collect();
    let mut c = json!({
        "architectures": [arch],
        "model_type": "gemma2",
        "vocab_size": s.vocab_size,
        "hidden_size": s.hidden_size,
        "intermediate_size": s.intermediate_size,
        "num_hidden_layers": s.num_layers,
        "num_attention_heads": s.num_heads,
        "num_key_value_heads": s.num_kv_heads,
        "head_dim": s.head_dim,
        "query_pre_attn_scalar": s.query_pre_attn_scalar,
        "sliding_window": s.sliding_window,
        "layer_types": layer_types,
        "attn_logit_softcapping": 50.0,
        "final_logit_softcapping": 30.0,
        "rope_parameters": { "rope_type": "default", "rope_theta": 10000.0 },
        "rms_norm_eps": 1e-6,
        "max_position_embeddings": s.max_position_embeddings,
        "hidden_activation": "gelu_pytorch_tanh",
        "tie_word_embeddings": true,
        "attention_bias": false,
        "bos_token_id": 2,
        "eos_token_id": [1, 5],
        "pad_token_id": 0,
        "dtype": match opts.dtype { DType::F32 => "float32", DType::BF16 => "bfloat16", DType::F16 => "float16" },
    });
    if opts.seq_cls {
        c["num_labels"] = json!(1);
        c["id2label"] = json!({ "0": "LABEL_0" });
        c["label2id"] = json!({ "LABEL_0": 0 });
    }
    c
}

/// Tensor names and shapes in HF's naming.
fn tensor_list(s: &Shape, seq_cls: bool) -> Vec<(String, Vec<usize>)> {
    let (h, q, kv) = (
        s.hidden_size,
        s.num_heads * s.head_dim,
        s.num_kv_heads * s.head_dim,
    );
    let mut t = vec![(
        "model.embed_tokens.weight".to_string(),
        vec![s.vocab_size, h],
    )];
    for i in 0..s.num_layers {
        let p = format!("model.layers.{i}");
        for (name, dims) in [
            ("input_layernorm.weight", vec![h]),
            ("self_attn.q_proj.weight", vec![q, h]),
            ("self_attn.k_proj.weight", vec![kv, h]),
            ("self_attn.v_proj.weight", vec![kv, h]),
            ("self_attn.o_proj.weight", vec![h, q]),
            ("post_attention_layernorm.weight", vec![h]),
            ("pre_feedforward_layernorm.weight", vec![h]),
            ("mlp.gate_proj.weight", vec![s.intermediate_size, h]),
            ("mlp.up_proj.weight", vec![s.intermediate_size, h]),
            ("mlp.down_proj.weight", vec![h, s.intermediate_size]),
            ("post_feedforward_layernorm.weight", vec![h]),
        ] {
            t.push((format!("{p}.{name}"), dims));
        }
    }
    t.push(("model.norm.weight".to_string(), vec![h]));
    if seq_cls {
        t.push(("score.weight".to_string(), vec![1, h]));
    }
    t
}

/// Writes one safetensors file, generating each tensor as it goes.
fn write_safetensors(
    path: &Path,
    tensors: &[(String, Vec<usize>)],
    opts: &InitOptions,
) -> Result<()> {
    let dt = opts.dtype;
    let mut header = serde_json::Map::new();
    let mut offset = 0usize;
    for (name, dims) in tensors {
        let bytes = dims.iter().product::<usize>() * dt.size();
        header.insert(
            name.clone(),
            json!({ "dtype": match dt { DType::F32 => "F32", DType::BF16 => "BF16", DType::F16 => "F16" }, "shape": dims, "data_offsets": [offset, offset + bytes] }),
        );
        offset += bytes;
    }
    let mut head = serde_json::to_vec(&header).map_err(|e| EngineError::Invalid(e.to_string()))?;
    // The data starts 8-byte aligned, as safetensors writers do.
    while (head.len() + 8) % 8 != 0 {
        head.push(b' ');
    }
    let file = std::fs::File::create(path).map_err(|e| EngineError::io(path, e))?;
    let mut w = std::io::BufWriter::with_capacity(1 << 22, file);
    let io = |e| EngineError::io(path, e);
    w.write_all(&(head.len() as u64).to_le_bytes())
        .map_err(io)?;
    w.write_all(&head).map_err(io)?;
    for (name, dims) in tensors {
        let n: usize = dims.iter().product();
        let is_norm = name.ends_with("norm.weight");
        w.write_all(&random_tensor(name, n, dt, is_norm, opts.seed))
            .map_err(io)?;
    }
    w.flush().map_err(io)
}

/// Deterministic values per (seed, tensor name): uniform with standard deviation 0.02 for
/// matrices (the usual initialiser scale), small offsets around 0 for norms (weight 1 + w).
fn random_tensor(name: &str, n: usize, dt: DType, is_norm: bool, seed: u64) -> Vec<u8> {
    let tensor_seed = name.bytes().fold(seed ^ 0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    let amp = if is_norm { 0.1 } else { 0.02 * 3f32.sqrt() };
    const CHUNK: usize = 1 << 16;
    let mut out = vec![0u8; n * dt.size()];
    out.par_chunks_mut(CHUNK * dt.size())
        .enumerate()
        .for_each(|(c, bytes)| {
            let mut state = tensor_seed ^ (c as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            for v in bytes.chunks_exact_mut(dt.size()) {
                // xorshift64*: fast, and good enough for random weights.
                state ^= state >> 12;
                state ^= state << 25;
                state ^= state >> 27;
                let r = state.wrapping_mul(0x2545_F491_4F6C_DD1D);
                let x = ((r >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * amp;
                match dt {
                    DType::F32 => v.copy_from_slice(&x.to_le_bytes()),
                    DType::BF16 => {
                        v.copy_from_slice(&half::bf16::from_f32(x).to_bits().to_le_bytes())
                    }
                    DType::F16 => {
                        v.copy_from_slice(&half::f16::from_f32(x).to_bits().to_le_bytes())
                    }
                }
            }
        });
    out
}

/// GPT-2's byte ↔ printable-character table, as the ByteLevel pre-tokenizer uses it.
fn byte_chars() -> Vec<char> {
    let printable =
        |b: u32| (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
    let mut extra = 0;
    (0..256u32)
        .map(|b| {
            if printable(b) {
                char::from_u32(b).expect("latin-1")
            } else {
                extra += 1;
                char::from_u32(255 + extra).expect("latin extended")
            }
        })
        .collect()
}

/// A byte-level tokenizer.json: the special tokens at ids 0..=5, then one token per byte.
pub fn byte_tokenizer_json() -> serde_json::Value {
    let mut vocab = serde_json::Map::new();
    let mut added = Vec::new();
    for (i, t) in SPECIAL_TOKENS.iter().enumerate() {
        vocab.insert(t.to_string(), json!(i));
        added.push(json!({ "id": i, "content": t, "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true }));
    }
    for (b, c) in byte_chars().into_iter().enumerate() {
        vocab.insert(c.to_string(), json!(SPECIAL_TOKENS.len() + b));
    }
    json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": { "type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false },
        "post_processor": null,
        "decoder": { "type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true },
        "model": {
            "type": "BPE", "dropout": null, "unk_token": "<unk>", "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
            "vocab": vocab, "merges": []
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_have_the_published_sizes() {
        let params = |n: &str| {
            let s = shape(n).unwrap();
            let text = config_json(&s, &InitOptions::default()).to_string();
            crate::config::ModelConfig::parse(&text, Path::new("config.json"))
                .unwrap()
                .num_parameters()
        };
        assert_eq!(params("gemma-2-2b") / 100_000_000, 26);
        assert_eq!(params("gemma-2-9b") / 1_000_000_000, 9);
        assert_eq!(params("gemma-2-27b") / 1_000_000_000, 27);
        assert_eq!(params("small-100m") / 1_000_000, 111);
    }

    #[test]
    fn written_models_load_and_run_and_the_tokenizer_round_trips() {
        let dir = std::env::temp_dir().join(format!("grm-init-test-{}", std::process::id()));
        let opts = InitOptions {
            shard_bytes: 60_000,
            ..Default::default()
        };
        write_random_model(&shape("tiny").unwrap(), &dir, &opts).unwrap();
        assert!(
            dir.join("model.safetensors.index.json").exists(),
            "small shards force an index"
        );
        let m = crate::Gemma2::load(&dir, crate::CpuBackend).unwrap();
        let out = m.run_once(&[2, 10, 20, 30], false).unwrap();
        assert!(out.data.iter().all(|v| v.is_finite()));
        let t = crate::Tokenizer::load(&dir, Some(2)).unwrap();
        let text = "héllo <end_of_turn> wörld\n\t";
        let ids = t.encode(text, true).unwrap();
        assert_eq!(ids[0], 2);
        assert!(ids.contains(&5));
        assert_eq!(t.decode(&ids).unwrap(), "héllo  wörld\n\t");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
