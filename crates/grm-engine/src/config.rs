//! `config.json` of a Gemma-2 model, in the classic form (transformers 4.x: `rope_theta`,
//! even layers sliding) and the transformers-5 form (`rope_parameters`, `layer_types`).

use crate::error::{EngineError, Result};
use serde::Deserialize;
use serde_json::Value;
use std::path::Path;

/// What the model computes at its top.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Head {
    /// `Gemma2ForCausalLM`: logits over the vocabulary (tied to the embedding unless
    /// `lm_head.weight` is given), softcapped.
    CausalLm,
    /// `Gemma2ForSequenceClassification`: `score.weight` [num_labels, hidden] read at the last
    /// token, not softcapped.
    SequenceClassification { num_labels: usize },
}

/// A Gemma-2 model's hyper-parameters, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    pub head: Head,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f32,
    pub rope_theta: f64,
    pub query_pre_attn_scalar: f64,
    /// `tanh(s / c) * c` on attention scores, when set.
    pub attn_softcap: Option<f32>,
    /// `tanh(l / c) * c` on the final logits, when set (causal LM only).
    pub final_softcap: Option<f32>,
    /// Keys a sliding layer's query at position q sees: q − window + 1 ..= q.
    pub sliding_window: Option<usize>,
    /// Per layer: whether it uses the sliding window.
    pub layer_sliding: Vec<bool>,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
    pub pad_token_id: Option<u32>,
}

/// The fields as written; everything optional so that a missing one gets a precise message.
#[derive(Debug, Deserialize)]
struct RawConfig {
    architectures: Option<Vec<String>>,
    model_type: Option<String>,
    vocab_size: Option<usize>,
    hidden_size: Option<usize>,
    intermediate_size: Option<usize>,
    num_hidden_layers: Option<usize>,
    num_attention_heads: Option<usize>,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    rms_norm_eps: Option<f64>,
    rope_theta: Option<f64>,
    rope_parameters: Option<Value>,
    rope_scaling: Option<Value>,
    query_pre_attn_scalar: Option<f64>,
    attn_logit_softcapping: Option<f64>,
    final_logit_softcapping: Option<f64>,
    sliding_window: Option<usize>,
    layer_types: Option<Vec<String>>,
    max_position_embeddings: Option<usize>,
    tie_word_embeddings: Option<bool>,
    hidden_activation: Option<String>,
    hidden_act: Option<String>,
    attention_bias: Option<bool>,
    use_bidirectional_attention: Option<bool>,
    bos_token_id: Option<Value>,
    eos_token_id: Option<Value>,
    pad_token_id: Option<Value>,
    num_labels: Option<usize>,
    id2label: Option<serde_json::Map<String, Value>>,
}

impl ModelConfig {
    /// Reads `dir/config.json`.
    pub fn load(dir: &Path) -> Result<Self> {
        let path = dir.join("config.json");
        let text = std::fs::read_to_string(&path).map_err(|e| EngineError::io(&path, e))?;
        Self::parse(&text, &path)
    }

    /// Parses the text of a config.json; `path` only names it in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self> {
        let raw: RawConfig = serde_json::from_str(text)
            .map_err(|e| EngineError::config(path, format!("not valid JSON: {e}")))?;
        let err = |m: String| EngineError::config(path, m);
        // Every size must be positive: a zero would make an empty model (and divide by zero
        // when the KV pool is sized from memory).
        let need = |v: Option<usize>, name: &str| match v {
            None => Err(err(format!("field `{name}` is missing"))),
            Some(0) => Err(err(format!("field `{name}` is 0; it must be at least 1"))),
            Some(n) => Ok(n),
        };

        let arch = raw
            .architectures
            .as_ref()
            .and_then(|a| a.first().cloned())
            .or_else(|| raw.model_type.as_ref().map(|m| format!("model_type={m}")))
            .ok_or_else(|| err("field `architectures` is missing".into()))?;
        let head = match arch.as_str() {
            "Gemma2ForCausalLM" => Head::CausalLm,
            "Gemma2ForSequenceClassification" => Head::SequenceClassification {
                num_labels: raw
                    .num_labels
                    .or_else(|| raw.id2label.as_ref().map(|m| m.len()))
                    .unwrap_or(2),
            },
            _ => {
                return Err(EngineError::UnsupportedArchitecture {
                    path: path.into(),
                    found: arch,
                })
            }
        };
        if let Some(m) = &raw.model_type {
            if m != "gemma2" {
                return Err(err(format!("model_type is {m:?}, expected \"gemma2\"")));
            }
        }
        if raw.attention_bias == Some(true) {
            return Err(err(
                "attention_bias = true is not supported (Gemma-2 has none)".into(),
            ));
        }
        if raw.use_bidirectional_attention == Some(true) {
            return Err(err(
                "use_bidirectional_attention = true is not supported (a causal GRM is expected)"
                    .into(),
            ));
        }
        if head == (Head::SequenceClassification { num_labels: 0 }) {
            return Err(err(
                "num_labels is 0; a scoring head needs at least 1".into()
            ));
        }
        let act = raw
            .hidden_activation
            .as_deref()
            .or(raw.hidden_act.as_deref())
            .unwrap_or("gelu_pytorch_tanh");
        if act != "gelu_pytorch_tanh" && act != "gelu_tanh" {
            return Err(err(format!(
                "hidden_activation is {act:?}; only gelu_pytorch_tanh is supported"
            )));
        }

        let hidden_size = need(raw.hidden_size, "hidden_size")?;
        let num_heads = need(raw.num_attention_heads, "num_attention_heads")?;
        let num_layers = need(raw.num_hidden_layers, "num_hidden_layers")?;
        let num_kv_heads = raw.num_key_value_heads.unwrap_or(num_heads);
        let head_dim = raw.head_dim.unwrap_or(hidden_size / num_heads.max(1));
        if num_heads == 0 || num_kv_heads == 0 || num_heads % num_kv_heads != 0 {
            return Err(err(format!(
                "num_attention_heads ({num_heads}) must be a positive multiple of num_key_value_heads ({num_kv_heads})"
            )));
        }
        if head_dim == 0 || head_dim % 2 != 0 {
            return Err(err(format!(
                "head_dim is {head_dim}; it must be even and positive (RoPE)"
            )));
        }

        let rope_theta = match (&raw.rope_parameters, raw.rope_theta) {
            (Some(p), _) => {
                if let Some(t) = p.get("rope_type").and_then(Value::as_str) {
                    if t != "default" {
                        return Err(err(format!(
                            "rope_parameters.rope_type is {t:?}; only \"default\" is supported"
                        )));
                    }
                }
                p.get("rope_theta")
                    .and_then(Value::as_f64)
                    .ok_or_else(|| err("rope_parameters.rope_theta is missing".into()))?
            }
            (None, Some(t)) => t,
            (None, None) => 10000.0,
        };
        if let Some(s) = &raw.rope_scaling {
            if !s.is_null() {
                return Err(err("rope_scaling is not supported for Gemma-2".into()));
            }
        }

        let layer_sliding = match &raw.layer_types {
            Some(types) => {
                if types.len() != num_layers {
                    return Err(err(format!(
                        "layer_types has {} entries, num_hidden_layers is {num_layers}",
                        types.len()
                    )));
                }
                types
                    .iter()
                    .enumerate()
                    .map(|(i, t)| match t.as_str() {
                        "sliding_attention" => Ok(true),
                        "full_attention" => Ok(false),
                        other => Err(err(format!("layer_types[{i}] is {other:?}; expected sliding_attention or full_attention"))),
                    })
                    .collect::<Result<Vec<_>>>()?
            }
            // transformers 4.x: even layers slide.
            None => (0..num_layers).map(|i| i % 2 == 0).collect(),
        };
        let sliding_window = raw.sliding_window.filter(|&w| w > 0);
        if sliding_window.is_none() && layer_sliding.iter().any(|&s| s) && raw.layer_types.is_some()
        {
            return Err(err(
                "layer_types has sliding layers but sliding_window is not set".into(),
            ));
        }

        let cap = |v: Option<f64>| v.filter(|c| *c > 0.0).map(|c| c as f32);
        Ok(ModelConfig {
            head,
            vocab_size: need(raw.vocab_size, "vocab_size")?,
            hidden_size,
            intermediate_size: need(raw.intermediate_size, "intermediate_size")?,
            num_layers,
            num_heads,
            num_kv_heads,
            head_dim,
            rms_norm_eps: raw.rms_norm_eps.unwrap_or(1e-6) as f32,
            rope_theta,
            query_pre_attn_scalar: raw.query_pre_attn_scalar.unwrap_or(head_dim as f64),
            attn_softcap: cap(raw.attn_logit_softcapping),
            final_softcap: cap(raw.final_logit_softcapping),
            sliding_window,
            layer_sliding,
            max_position_embeddings: raw.max_position_embeddings.unwrap_or(8192),
            tie_word_embeddings: raw.tie_word_embeddings.unwrap_or(true),
            bos_token_id: token_ids(&raw.bos_token_id).first().copied(),
            eos_token_ids: token_ids(&raw.eos_token_id),
            pad_token_id: token_ids(&raw.pad_token_id).first().copied(),
        })
    }

    /// Whether layer `i` uses the sliding window (and a window is configured).
    pub fn window_of(&self, layer: usize) -> Option<usize> {
        if self.layer_sliding[layer] {
            self.sliding_window
        } else {
            None
        }
    }

    /// Parameters of the model (embedding counted once when tied).
    pub fn num_parameters(&self) -> usize {
        let h = self.hidden_size;
        let q = self.num_heads * self.head_dim;
        let kv = self.num_kv_heads * self.head_dim;
        let per_layer = h * q + 2 * h * kv + q * h + 3 * h * self.intermediate_size + 4 * h;
        let head = match self.head {
            Head::CausalLm if !self.tie_word_embeddings => self.vocab_size * h,
            Head::CausalLm => 0,
            Head::SequenceClassification { num_labels } => num_labels * h,
        };
        self.vocab_size * h + self.num_layers * per_layer + h + head
    }
}

fn token_ids(v: &Option<Value>) -> Vec<u32> {
    match v {
        Some(Value::Number(n)) => n.as_u64().map(|x| vec![x as u32]).unwrap_or_default(),
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|x| x.as_u64().map(|x| x as u32))
            .collect(),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLASSIC: &str = r#"{
      "architectures": ["Gemma2ForCausalLM"], "model_type": "gemma2",
      "attn_logit_softcapping": 50.0, "bos_token_id": 2, "eos_token_id": [1, 107],
      "final_logit_softcapping": 30.0, "head_dim": 256, "hidden_activation": "gelu_pytorch_tanh",
      "hidden_size": 2304, "intermediate_size": 9216, "max_position_embeddings": 8192,
      "num_attention_heads": 8, "num_hidden_layers": 26, "num_key_value_heads": 4,
      "pad_token_id": 0, "query_pre_attn_scalar": 256, "rms_norm_eps": 1e-06,
      "rope_theta": 10000.0, "sliding_window": 4096, "vocab_size": 256000
    }"#;

    fn parse(text: &str) -> Result<ModelConfig> {
        ModelConfig::parse(text, Path::new("m/config.json"))
    }

    #[test]
    fn classic_form() {
        let c = parse(CLASSIC).unwrap();
        assert_eq!(c.head, Head::CausalLm);
        assert_eq!(c.eos_token_ids, vec![1, 107]);
        assert_eq!(c.window_of(0), Some(4096));
        assert_eq!(c.window_of(1), None);
        assert_eq!(c.attn_softcap, Some(50.0));
        // gemma-2-2b has 2.61B parameters.
        assert_eq!(c.num_parameters() / 10_000_000, 261);
    }

    #[test]
    fn transformers_5_form() {
        let mut v: Value = serde_json::from_str(CLASSIC).unwrap();
        let o = v.as_object_mut().unwrap();
        o.remove("rope_theta");
        o.insert(
            "rope_parameters".into(),
            serde_json::json!({"rope_type": "default", "rope_theta": 5000.0}),
        );
        let types: Vec<&str> = (0..26)
            .map(|i| {
                if i % 3 == 0 {
                    "sliding_attention"
                } else {
                    "full_attention"
                }
            })
            .collect();
        o.insert("layer_types".into(), serde_json::json!(types));
        let c = parse(&v.to_string()).unwrap();
        assert_eq!(c.rope_theta, 5000.0);
        assert!(
            c.layer_sliding[0] && !c.layer_sliding[1] && !c.layer_sliding[2] && c.layer_sliding[3]
        );
    }

    #[test]
    fn zero_sizes_are_refused_by_name() {
        let e = parse(&CLASSIC.replace("\"num_hidden_layers\": 26", "\"num_hidden_layers\": 0"))
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "m/config.json: field `num_hidden_layers` is 0; it must be at least 1"
        );
    }

    #[test]
    fn errors_name_the_field() {
        let e = parse(&CLASSIC.replace("\"hidden_size\": 2304,", "")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "m/config.json: field `hidden_size` is missing"
        );
        let e = parse(&CLASSIC.replace("Gemma2ForCausalLM", "LlamaForCausalLM")).unwrap_err();
        assert!(
            e.to_string()
                .contains("unsupported architecture \"LlamaForCausalLM\""),
            "{e}"
        );
        let e = parse(&CLASSIC.replace("\"num_key_value_heads\": 4", "\"num_key_value_heads\": 3"))
            .unwrap_err();
        assert!(
            e.to_string()
                .contains("multiple of num_key_value_heads (3)"),
            "{e}"
        );
    }

    #[test]
    fn sequence_classification() {
        let c = parse(
            &CLASSIC
                .replace("Gemma2ForCausalLM", "Gemma2ForSequenceClassification")
                .replace("\"vocab_size\"", "\"num_labels\": 1, \"vocab_size\""),
        )
        .unwrap();
        assert_eq!(c.head, Head::SequenceClassification { num_labels: 1 });
    }
}
