//! llama.cpp as the peer of `grm bench engine`, in the same run: the same model converted by
//! llama.cpp's own converter at the same dtype, the same workloads, the same threads.
//!
//! `bench/llama/setup.sh` builds (or finds) llama.cpp from the PyPI sdist of
//! llama-cpp-python with native tuning; `bench/llama/spm_tokenizer.py` writes the
//! SentencePiece tokenizer.model the converter needs, with the ids of the model's
//! tokenizer.json. Then: `llama-bench` for prefill (pp P) and decode at batch 1 (tg N at depth
//! C), `llama-batched-bench` for the GRM workload (P prompt tokens, k sequences of G tokens),
//! prompt shared (`-pps`) and not.
//!
//! What stays unequal: llama.cpp samples nothing (batched-bench feeds random tokens; grm samples
//! at the workload's temperature and keeps each sample's state); its KV cache is f16 and its
//! attention is flash attention where it chooses (`-fa auto`), both recorded from its output;
//! grm keeps the KV in f32 and computes attention exactly per row. llama-bench's decode runs
//! from an empty graph cache after warm-up, as grm's does after one step.

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;

pub struct Workload<'a> {
    pub model: &'a Path,
    /// f32, bf16 or f16: the converter's --outtype.
    pub dtype: &'a str,
    pub threads: usize,
    pub prompt_tokens: usize,
    pub decode_context: usize,
    pub decode_steps: usize,
    pub samples: usize,
    pub gen_tokens: usize,
    /// Runs of each batched-bench workload (the fastest kept, as grm keeps its fastest).
    pub reps: usize,
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Runs a command, returning its stdout; on failure, the tail of its stderr in the error.
fn exec(cmd: &mut Command, what: &str) -> Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("starting {what} ({cmd:?})"))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = err.lines().rev().take(25).collect();
        bail!(
            "{what} failed ({}):\n{}",
            out.status,
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The last line of `text` that parses as JSON.
fn last_json(text: &str, what: &str) -> Result<Value> {
    text.lines()
        .rev()
        .find_map(|l| serde_json::from_str::<Value>(l.trim()).ok())
        .with_context(|| format!("{what} printed no JSON:\n{text}"))
}

pub fn run(w: &Workload<'_>) -> Result<Value> {
    let root = repo_root();
    eprintln!("llama.cpp: bench/llama/setup.sh (builds llama.cpp the first time: minutes)");
    let paths = last_json(
        &exec(
            Command::new("bash")
                .arg(root.join("bench/llama/setup.sh"))
                .current_dir(&root),
            "bench/llama/setup.sh",
        )?,
        "bench/llama/setup.sh",
    )?;
    let p = |k: &str| -> Result<PathBuf> {
        Ok(PathBuf::from(
            paths[k]
                .as_str()
                .with_context(|| format!("setup.sh: no {k}"))?,
        ))
    };
    let (python, converter) = (p("python")?, p("converter")?);
    let (batched, bench) = (p("batched_bench")?, p("bench")?);

    // The model in llama.cpp's format, converted by its own converter.
    let gguf = w.model.join(format!("llama-cpp-{}.gguf", w.dtype));
    if !gguf.exists() {
        if !w.model.join("tokenizer.model").exists() {
            exec(
                Command::new(&python).arg(p("spm_tokenizer")?).arg(w.model),
                "bench/llama/spm_tokenizer.py",
            )?;
        }
        eprintln!("llama.cpp: converting {} ({})", w.model.display(), w.dtype);
        exec(
            Command::new(&python)
                .arg(&converter)
                .arg(w.model)
                .args(["--outtype", w.dtype, "--outfile"])
                .arg(&gguf),
            "convert_hf_to_gguf.py",
        )?;
    }
    let t = w.threads.to_string();

    // Prefill and decode at batch 1: llama-bench, 3 repetitions after its warm-up.
    eprintln!(
        "llama.cpp: llama-bench pp{} and tg{} at depth {}",
        w.prompt_tokens, w.decode_steps, w.decode_context
    );
    let bench_json = |args: &[String]| -> Result<Value> {
        let out = exec(
            Command::new(&bench)
                .arg("-m")
                .arg(&gguf)
                .args(["-t", &t, "-r", "3", "-o", "json"])
                .args(args),
            "llama-bench",
        )?;
        let v: Value = serde_json::from_str(&out).context("llama-bench -o json")?;
        v.as_array()
            .and_then(|a| a.first())
            .cloned()
            .context("llama-bench printed no result")
    };
    let prefill = bench_json(&[
        "-p".into(),
        w.prompt_tokens.to_string(),
        "-n".into(),
        "0".into(),
    ])?;
    let decode = bench_json(&[
        "-p".into(),
        "0".into(),
        "-n".into(),
        w.decode_steps.to_string(),
        "-d".into(),
        w.decode_context.to_string(),
    ])?;
    eprintln!(
        "llama.cpp: prefill {:.0} tok/s, decode batch 1 {:.1} tok/s (fastest of 3; KV {}, flash attention {})",
        best_ts(&prefill).unwrap_or(0.0),
        best_ts(&decode).unwrap_or(0.0),
        decode["type_k"],
        decode["flash_attn"]
    );

    // The GRM workload: P prompt tokens, k sequences of G tokens, prompt shared or not.
    let ctx = w.samples * (w.prompt_tokens + w.gen_tokens) + 16;
    let mut grm = Vec::new();
    for shared in [true, false] {
        let mut best: Option<Value> = None;
        for _ in 0..w.reps.max(1) {
            let mut cmd = Command::new(&batched);
            cmd.arg("-m")
                .arg(&gguf)
                .args([
                    "-t",
                    &t,
                    "-tb",
                    &t,
                    "-c",
                    &ctx.to_string(),
                    "-b",
                    "2048",
                    "-ub",
                    "512",
                ])
                .args(["-npp", &w.prompt_tokens.to_string()])
                .args(["-ntg", &w.gen_tokens.to_string()])
                .args(["-npl", &w.samples.to_string()])
                .args(["--output-format", "jsonl"]);
            if shared {
                cmd.arg("-pps");
            }
            let v = last_json(
                &exec(&mut cmd, "llama-batched-bench")?,
                "llama-batched-bench",
            )?;
            eprintln!(
                "llama.cpp: GRM workload P={} k={} G={} shared={shared}: {:.2} s",
                w.prompt_tokens,
                w.samples,
                w.gen_tokens,
                v["t"].as_f64().unwrap_or(0.0)
            );
            let faster = |b: &Value| {
                v["t"].as_f64().unwrap_or(f64::MAX) < b["t"].as_f64().unwrap_or(f64::MAX)
            };
            if best.as_ref().is_none_or(faster) {
                best = Some(v);
            }
        }
        grm.push(json!({ "prefix_sharing": shared, "batched_bench": best }));
    }
    Ok(json!({
        "name": "llama.cpp",
        "llama_cpp_python": paths["llama_cpp_python"],
        "gguf": gguf.display().to_string(),
        "dtype": w.dtype,
        "threads": w.threads,
        "build": prefill["build_commit"],
        "cpu_info": prefill["cpu_info"],
        "kv_type": [decode["type_k"], decode["type_v"]],
        "flash_attn": decode["flash_attn"],
        "prefill": prefill,
        "decode_batch_1": decode,
        "grm_workload": grm,
        "unequal": "llama.cpp samples nothing (random tokens in batched-bench), keeps its KV in its own type (kv_type) and may use flash attention (flash_attn); grm samples every token at the workload's temperature and keeps its KV in f32",
    }))
}

/// llama-bench's fastest repetition (tokens/s), as grm reports its fastest.
fn best_ts(v: &Value) -> Option<f64> {
    v["samples_ts"]
        .as_array()
        .and_then(|a| a.iter().filter_map(Value::as_f64).reduce(f64::max))
        .or(v["avg_ts"].as_f64())
}

/// grm ÷ llama.cpp for each figure (> 1: grm faster): throughputs divided, times inverted.
pub fn ratios(report: &Value, peer: &Value) -> Value {
    let div = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => json!(a / b),
        _ => Value::Null,
    };
    let grm_rows = report["grm_workload"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let grm_time = |shared: bool| {
        grm_rows
            .iter()
            .find(|r| r["prefix_sharing"] == shared)
            .and_then(|r| r["seconds_to_all_samples"].as_f64())
    };
    let peer_time = |shared: bool| {
        peer["grm_workload"]
            .as_array()
            .and_then(|a| a.iter().find(|r| r["prefix_sharing"] == shared))
            .and_then(|r| r["batched_bench"]["t"].as_f64())
    };
    let decode1 = report["decode"]
        .as_array()
        .and_then(|a| a.iter().find(|r| r["batch"] == 1))
        .and_then(|r| r["tokens_per_s"].as_f64());
    let v = json!({
        "prefill": div(report["prefill"]["tokens_per_s"].as_f64(), best_ts(&peer["prefill"])),
        "decode_batch_1": div(decode1, best_ts(&peer["decode_batch_1"])),
        "grm_shared": div(peer_time(true), grm_time(true)),
        "grm_separate": div(peer_time(false), grm_time(false)),
    });
    eprintln!("grm ÷ llama.cpp (> 1: grm faster): {v}");
    v
}
