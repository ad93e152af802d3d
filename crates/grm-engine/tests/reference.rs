//! The engine against transformers: logits at every position, greedy continuations, rewards,
//! the tokenizer — on the committed tiny fixtures, whose every Gemma-2 feature is active.

mod common;

use common::*;
use grm_engine::{EngineOptions, Event, SamplingParams, Tokenizer, Work};

#[test]
fn f32_logits_match_float64_reference_at_every_position() {
    let r = reference();
    let m = model("tiny-f32");
    for (i, p) in r.prompts.iter().enumerate() {
        let out = m.run_once(p, true).unwrap();
        assert_eq!((out.rows, out.cols), (p.len(), 262));
        let want = ref_tensor(&format!("logits_f64.{i}"));
        let d = max_diff(&out.data, &want);
        eprintln!("prompt {i} ({} tokens): max |Δlogit| = {d:.2e}", p.len());
        assert!(d < 1e-3, "prompt {i}: max |Δlogit| {d} ≥ 1e-3");
    }
}

#[test]
fn bf16_weights_match_transformers_f32_compute() {
    let r = reference();
    let m = model("tiny-bf16");
    for (i, p) in r.prompts.iter().enumerate() {
        let out = m.run_once(p, true).unwrap();
        let d = max_diff(
            &out.data,
            &ref_tensor(&format!("logits_bf16_f32compute.{i}")),
        );
        eprintln!("bf16 prompt {i}: max |Δlogit| = {d:.2e}");
        assert!(d < 1e-2, "prompt {i}: {d}");
    }
}

#[test]
fn rewards_match() {
    let r = reference();
    let m = model("tiny-seq-cls");
    for (p, want) in r.prompts.iter().zip(&r.rewards) {
        let out = m.run_once(p, false).unwrap();
        assert_eq!(out.cols, 1);
        let d = (f64::from(out.data[0]) - want).abs();
        assert!(d < 1e-4, "reward {} vs {want}", out.data[0]);
    }
}

#[test]
fn greedy_continuations_match_token_for_token() {
    let r = reference();
    let engine = engine(
        "tiny-f32",
        EngineOptions {
            num_blocks: Some(64),
            ..Default::default()
        },
    );
    for (p, want) in r.prompts.iter().zip(&r.greedy) {
        let params = SamplingParams {
            max_new_tokens: want.len(),
            ignore_stop: true,
            stream: false,
            logprobs: None,
            ..Default::default()
        };
        let mut sub = engine
            .submit_blocking(Work::Generate {
                prompt: p.clone(),
                samples: vec![params],
            })
            .unwrap();
        let mut got = None;
        while let Some(ev) = sub.next_blocking() {
            if let Event::Sample { tokens, .. } = ev {
                got = Some(tokens);
            }
        }
        assert_eq!(got.as_ref(), Some(want));
    }
}

#[test]
fn tokenizer_matches() {
    let r = reference();
    let t = Tokenizer::load(&fixtures().join("tiny-f32"), Some(2)).unwrap();
    assert_eq!(
        t.encode(&r.tokenizer_check.text, true).unwrap(),
        r.tokenizer_check.ids
    );
    // Decoding leaves the special tokens out and restores the bytes.
    assert_eq!(
        t.decode(&r.tokenizer_check.ids[1..]).unwrap(),
        "user\nScore: 2+2=4?\nmodel\n"
    );
    assert_eq!(t.token_id("<end_of_turn>"), Some(5));
}

#[test]
fn the_tokenizer_written_by_init_matches_the_fixtures() {
    let r = reference();
    let dir = std::env::temp_dir().join(format!("grm-tok-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let json = grm_engine::init::byte_tokenizer_json();
    std::fs::write(dir.join("tokenizer.json"), json.to_string()).unwrap();
    let t = Tokenizer::load(&dir, Some(2)).unwrap();
    for text in &r.prompts_text {
        let want = Tokenizer::load(&fixtures().join("tiny-f32"), Some(2))
            .unwrap()
            .encode(text, true)
            .unwrap();
        assert_eq!(t.encode(text, true).unwrap(), want);
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
