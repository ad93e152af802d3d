//! Each instruction-set path of the CPU kernels (`cpu::isa`) against the transformers fixtures,
//! on this machine: every path this CPU can run is forced through `CpuBackend::with_isa`, so
//! the AVX2 and portable paths are checked on an AVX-512 machine too. A path this CPU cannot run
//! is named as skipped.
//!
//! Per path: f32 logits at every position within 1e-3 of the float64 reference, bf16 weights
//! within 1e-2 of transformers' f32 compute, rewards within 1e-4, greedy continuations token for
//! token, and batch invariance (a prompt's logits alone equal its rows in a batch with another
//! sequence, bit for bit). Between paths: AVX2 equals portable bit for bit; AVX-512 sums the
//! products in 16 lanes, so its bits may differ from theirs (within the same tolerances).

mod common;

use common::*;
use grm_engine::backend::AttentionMeta;
use grm_engine::cpu::Isa;
use grm_engine::{CpuBackend, ForwardBatch, Gemma2, SamplingParams, Scheduler, SchedulerConfig};
use grm_engine::{Event, Work};

fn paths() -> Vec<Isa> {
    for isa in Isa::ALL {
        if !isa.available() {
            eprintln!("skipped {}: this CPU cannot run it", isa.name());
        }
    }
    Isa::ALL.into_iter().filter(|i| i.available()).collect()
}

fn model_on(name: &str, isa: Isa) -> Gemma2<CpuBackend> {
    Gemma2::load(
        &fixtures().join(name),
        CpuBackend::with_isa(isa).expect("available"),
    )
    .unwrap()
}

#[test]
fn every_path_matches_the_reference_logits_and_rewards() {
    let r = reference();
    for isa in paths() {
        let f32m = model_on("tiny-f32", isa);
        let bf16m = model_on("tiny-bf16", isa);
        let seq = model_on("tiny-seq-cls", isa);
        for (i, p) in r.prompts.iter().enumerate() {
            let out = f32m.run_once(p, true).unwrap();
            let d = max_diff(&out.data, &ref_tensor(&format!("logits_f64.{i}")));
            eprintln!("{} prompt {i}: f32 max |Δlogit| = {d:.2e}", isa.name());
            assert!(d < 1e-3, "{}: prompt {i}: {d}", isa.name());
            let out = bf16m.run_once(p, true).unwrap();
            let d = max_diff(
                &out.data,
                &ref_tensor(&format!("logits_bf16_f32compute.{i}")),
            );
            eprintln!("{} prompt {i}: bf16 max |Δlogit| = {d:.2e}", isa.name());
            assert!(d < 1e-2, "{}: bf16 prompt {i}: {d}", isa.name());
            let reward = seq.run_once(p, false).unwrap().data[0];
            let d = (f64::from(reward) - r.rewards[i]).abs();
            assert!(
                d < 1e-4,
                "{}: reward {reward} vs {}",
                isa.name(),
                r.rewards[i]
            );
        }
    }
}

#[test]
fn every_path_continues_greedily_as_transformers() {
    let r = reference();
    for isa in paths() {
        let cfg = SchedulerConfig {
            max_batch_tokens: 512,
            max_seqs: 64,
            default_stop_tokens: Vec::new(),
        };
        let mut s = Scheduler::new(model_on("tiny-f32", isa), 64, 16, true, cfg).unwrap();
        for (i, (p, want)) in r.prompts.iter().zip(&r.greedy).enumerate() {
            let params = SamplingParams {
                max_new_tokens: want.len(),
                ignore_stop: true,
                stream: false,
                logprobs: None,
                ..Default::default()
            };
            s.submit(
                i as u64,
                Work::Generate {
                    prompt: p.clone(),
                    samples: vec![params],
                },
            )
            .unwrap();
        }
        let mut got = vec![None; r.prompts.len()];
        while !s.is_idle() {
            for (id, ev) in s.step() {
                if let Event::Sample { tokens, .. } = ev {
                    got[id as usize] = Some(tokens);
                }
            }
        }
        for (i, want) in r.greedy.iter().enumerate() {
            assert_eq!(got[i].as_ref(), Some(want), "{}: prompt {i}", isa.name());
        }
    }
}

/// One step computing `prompts` together, each in blocks of its own; all positions' logits.
fn batch_logits(m: &Gemma2<CpuBackend>, prompts: &[&[u32]]) -> Vec<Vec<f32>> {
    const BS: usize = 16;
    let mut batch = ForwardBatch::default();
    let mut next_block = 0u32;
    let mut meta = AttentionMeta {
        block_size: BS,
        ..Default::default()
    };
    for (s, p) in prompts.iter().enumerate() {
        let blocks = p.len().div_ceil(BS) as u32;
        let table: Vec<u32> = (next_block..next_block + blocks).collect();
        for (i, &t) in p.iter().enumerate() {
            batch.tokens.push(t);
            batch.slots.push(table[i / BS] as usize * BS + i % BS);
            meta.positions.push(i as u32);
            meta.span_of.push(s as u32);
        }
        meta.spans.push(table);
        next_block += blocks;
    }
    batch.outputs = (0..batch.tokens.len()).collect();
    batch.meta = meta;
    let mut kv = m.new_kv(next_block as usize, BS).unwrap();
    let out = m.forward(&mut kv, &batch);
    let mut rows = Vec::new();
    let mut at = 0;
    for p in prompts {
        rows.push(out.data[at * out.cols..(at + p.len()) * out.cols].to_vec());
        at += p.len();
    }
    rows
}

#[test]
fn every_path_is_batch_invariant_and_avx2_equals_portable() {
    let r = reference();
    let (a, b) = (&r.prompts[0][..], &r.prompts[r.prompts.len() - 1][..]);
    let mut by_path = Vec::new();
    for isa in paths() {
        let m = model_on("tiny-f32", isa);
        let alone = batch_logits(&m, &[a]).remove(0);
        let together = batch_logits(&m, &[b, a]).remove(1);
        assert!(
            alone
                .iter()
                .map(|v| v.to_bits())
                .eq(together.iter().map(|v| v.to_bits())),
            "{}: a prompt's logits change with the batch",
            isa.name()
        );
        by_path.push((isa, alone));
    }
    let get = |i: Isa| by_path.iter().find(|(j, _)| *j == i).map(|(_, v)| v);
    if let (Some(p), Some(v)) = (get(Isa::Portable), get(Isa::Avx2)) {
        assert!(
            p.iter()
                .map(|x| x.to_bits())
                .eq(v.iter().map(|x| x.to_bits())),
            "avx2 differs from portable"
        );
    }
    if let (Some(p), Some(v)) = (get(Isa::Portable), get(Isa::Avx512)) {
        let d = p
            .iter()
            .zip(v)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        eprintln!("avx512 vs portable: max |Δlogit| = {d:.2e} (16-lane sums)");
        assert!(d < 1e-3);
    }
}
