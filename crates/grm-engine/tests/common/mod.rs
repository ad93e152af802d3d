//! Access to the committed fixtures (made by scripts/fixtures/make_tiny_gemma2.py).
#![allow(dead_code)]

use grm_engine::{CpuBackend, Engine, EngineOptions, Gemma2};
use serde::Deserialize;
use std::path::{Path, PathBuf};

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

#[derive(Deserialize)]
pub struct Reference {
    pub prompts: Vec<Vec<u32>>,
    pub prompts_text: Vec<String>,
    pub greedy: Vec<Vec<u32>>,
    pub rewards: Vec<f64>,
    pub tokenizer_check: TokenizerCheck,
}

#[derive(Deserialize)]
pub struct TokenizerCheck {
    pub text: String,
    pub ids: Vec<u32>,
}

pub fn reference() -> Reference {
    let text = std::fs::read_to_string(fixtures().join("reference.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// A reference tensor as f64 values, whatever its stored type.
pub fn ref_tensor(name: &str) -> Vec<f64> {
    let bytes = std::fs::read(fixtures().join("reference.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let t = st
        .tensor(name)
        .unwrap_or_else(|_| panic!("no reference tensor {name}"));
    match t.dtype() {
        safetensors::Dtype::F64 => t
            .data()
            .chunks_exact(8)
            .map(|b| f64::from_le_bytes(b.try_into().unwrap()))
            .collect(),
        safetensors::Dtype::F32 => t
            .data()
            .chunks_exact(4)
            .map(|b| f64::from(f32::from_le_bytes(b.try_into().unwrap())))
            .collect(),
        d => panic!("unexpected dtype {d:?}"),
    }
}

pub fn model(name: &str) -> Gemma2<CpuBackend> {
    Gemma2::load(&fixtures().join(name), CpuBackend).unwrap()
}

pub fn engine(name: &str, opts: EngineOptions) -> Engine {
    Engine::start(model(name), opts).unwrap()
}

/// Largest absolute difference.
pub fn max_diff(a: &[f32], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (f64::from(*x) - y).abs())
        .fold(0.0, f64::max)
}
