//! `grm bench`: throughput and latency figures as JSON, with the machine they ran on.

use crate::model_cmd::thread_pool;
use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use grm_engine::backend::Backend;
use grm_engine::init::{shape, write_random_model, InitOptions};
use grm_engine::weights::DType;
use grm_engine::{CpuBackend, Event, Gemma2, SamplingParams, Scheduler, SchedulerConfig, Work};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

mod llama;

/// Timed windows of the decode measurement.
const DECODE_REPS: usize = 3;

#[derive(Subcommand)]
pub enum BenchCommand {
    /// The engine alone: prefill, decode at several batch sizes, and the GRM workload (one
    /// prompt, k samples) with and without prefix sharing, then with n = 2 and 4 responses in
    /// per-sample orders with and without the prompt tree; optionally transformers beside it.
    Engine(EngineArgs),
    /// A router over 1, then 2, worker processes on this machine: requests/s, p50/p99 latency
    /// of a fixed workload, and the router's own time per request.
    Cluster(ClusterArgs),
}

#[derive(Args)]
pub struct ClusterArgs {
    /// The GRM model directory (default: the embedded model).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// A prompt template (TOML) for the router.
    #[arg(long)]
    pub template: Option<PathBuf>,
    /// Requests in the workload.
    #[arg(long, default_value_t = 200)]
    pub requests: usize,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
    /// Samples per request.
    #[arg(long, default_value_t = 4)]
    pub k: u32,
    /// Responses per request.
    #[arg(long, default_value_t = 2)]
    pub responses: usize,
    #[arg(long, default_value_t = 64)]
    pub max_new_tokens: u32,
    /// Worker counts to measure.
    #[arg(long, value_delimiter = ',', default_value = "1,2")]
    pub workers: Vec<usize>,
    /// KV blocks per worker.
    #[arg(long, default_value_t = 4096)]
    pub kv_blocks: usize,
    /// Workers' compute device: cpu, or cuda:N (several workers then share the GPU's memory).
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Also write the JSON here.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

#[derive(Args)]
pub struct EngineArgs {
    /// A model directory; without it a random model of --shape is written to a temporary
    /// directory.
    #[arg(long)]
    model: Option<PathBuf>,
    /// Shape of the random model (see `grm model init`).
    #[arg(long, default_value = "small-100m")]
    shape: String,
    /// Weight type of the random model: f32, bf16 or f16.
    #[arg(long, default_value = "bf16")]
    dtype: String,
    #[arg(long, env = "GRM_THREADS")]
    threads: Option<usize>,
    /// Compute device: cpu, or cuda:N (where the build has the CUDA backend).
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Prompt tokens (P) of the prefill and GRM measurements.
    #[arg(long, default_value_t = 512)]
    prompt_tokens: usize,
    /// Samples (k) of the GRM workload: one count, or several (`8,32`), each measured.
    #[arg(long, value_delimiter = ',', default_value = "8")]
    samples: Vec<usize>,
    /// Tokens generated per sample (G) in the GRM workload.
    #[arg(long, default_value_t = 128)]
    gen_tokens: usize,
    /// Batch sizes of the decode measurement.
    #[arg(long, value_delimiter = ',', default_value = "1,8,32")]
    decode_batches: Vec<usize>,
    /// Decode steps timed per batch size.
    #[arg(long, default_value_t = 32)]
    decode_steps: usize,
    /// Context (prompt tokens) of each sequence in the decode measurement.
    #[arg(long, default_value_t = 64)]
    decode_context: usize,
    /// Temperature of the GRM workload's samples.
    #[arg(long, default_value_t = 0.5)]
    temperature: f32,
    /// Run the same workloads through a peer in the same run: `transformers` (the GRM
    /// workload), or `llama.cpp` (prefill, decode at batch 1 and the GRM workload shared and
    /// separate, at the model's dtype: built from the PyPI sdist by bench/llama/setup.sh).
    #[arg(long)]
    peer: Option<String>,
    /// Python with torch and transformers for the peer (scripts/setup-python.sh makes one).
    #[arg(long, env = "GRM_PYTHON", default_value = ".venv-ref/bin/python")]
    python: PathBuf,
    /// The transformers peer's modes: `eager`, and `compiled` (a static KV cache and
    /// transformers' compiled decoding, CUDA graphs on a GPU; bench/peer_transformers.py).
    #[arg(long, value_delimiter = ',', default_value = "eager")]
    peer_modes: Vec<String>,
    /// Skip parts: any of roofline, prefill, decode, grm, tree.
    #[arg(long, value_delimiter = ',')]
    skip: Vec<String>,
    /// Repetitions of the GRM workload (the best is kept, as for the peer).
    #[arg(long, default_value_t = 1)]
    grm_reps: usize,
    /// Also write the JSON here.
    #[arg(long)]
    out: Option<PathBuf>,
}

pub fn run(cmd: BenchCommand) -> Result<ExitCode> {
    match cmd {
        BenchCommand::Engine(a) => engine(a)?,
        BenchCommand::Cluster(a) => crate::bench_cluster::run(a)?,
    }
    Ok(ExitCode::SUCCESS)
}

/// What the machine is, for the record.
pub fn machine() -> Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|k| k.parse::<u64>().ok())
        })
        .map(|kb| kb / (1024 * 1024))
        .unwrap_or(0);
    json!({
        "cpu": cpu,
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "memory_gib": mem,
        "os": std::env::consts::OS,
        "arch": std::env::consts::ARCH,
    })
}

fn prompt(len: usize, vocab: usize, salt: usize) -> Vec<u32> {
    // BOS, then a spread of ordinary ids (ids below 6 are the special tokens).
    std::iter::once(2)
        .chain((1..len).map(|i| (6 + (i * 7919 + salt * 104_729) % (vocab - 6)) as u32))
        .collect()
}

/// Sample `i` of the GRM workload: `g` tokens at `temperature`, its own seed, never stopping
/// early (so every run generates the same tokens' worth of work).
fn grm_sample(temperature: f32, g: usize, i: usize) -> SamplingParams {
    SamplingParams {
        temperature,
        seed: i as u64,
        max_new_tokens: g,
        ignore_stop: true,
        stream: false,
        logprobs: None,
        ..Default::default()
    }
}

fn sched<B: Backend>(
    model: Gemma2<B>,
    blocks: usize,
    sharing: bool,
    batch_tokens: usize,
) -> Result<Scheduler<B>> {
    let cfg = SchedulerConfig {
        max_batch_tokens: batch_tokens,
        max_seqs: 512,
        default_stop_tokens: Vec::new(),
    };
    Ok(Scheduler::new(model, blocks, 16, sharing, cfg)?)
}

fn engine(a: EngineArgs) -> Result<()> {
    thread_pool(a.threads)?;
    let tmp;
    let dir: &Path = match &a.model {
        Some(d) => d,
        None => {
            let Some(s) = shape(&a.shape) else {
                bail!("--shape {:?} is not known", a.shape)
            };
            let dtype = match a.dtype.as_str() {
                "f32" => DType::F32,
                "bf16" => DType::BF16,
                "f16" => DType::F16,
                d => bail!("--dtype {d:?} is not one of f32, bf16, f16"),
            };
            tmp = std::env::temp_dir().join(format!(
                "grm-bench-{}-{}-{}",
                s.name,
                a.dtype,
                std::process::id()
            ));
            eprintln!(
                "writing a random {} model ({}) to {}",
                s.name,
                a.dtype,
                tmp.display()
            );
            write_random_model(
                &s,
                &tmp,
                &InitOptions {
                    dtype,
                    ..Default::default()
                },
            )?;
            &tmp
        }
    };
    let loading = || format!("loading {}", dir.display());
    // Every error below still reaches the clean-up after the match.
    let result = (|| match crate::serve_cmd::Device::parse(&a.device)? {
        crate::serve_cmd::Device::Cpu => {
            let model = Gemma2::load(dir, CpuBackend).with_context(loading)?;
            bench_on(&a, dir, model, None)
        }
        #[cfg(feature = "cuda")]
        crate::serve_cmd::Device::Cuda(ordinal) => {
            let options = grm_engine::CudaOptions {
                ordinal,
                memory_fraction: 0.9,
            };
            let roofline = if a.skip.iter().any(|s| s == "roofline") {
                None
            } else {
                let r = grm_engine::CudaBackend::new(options)
                    .with_context(|| format!("--device {}", a.device))?
                    .roofline()?;
                eprintln!(
                    "roofline: copy {:.0} GB/s (read + write), bf16 product {:.0} TFLOP/s ({}³)",
                    r.copy_gb_per_s, r.bf16_tflop_per_s, r.gemm_n
                );
                Some(json!({
                    "copy_gb_per_s": r.copy_gb_per_s, "copy_bytes": r.copy_bytes,
                    "bf16_tflop_per_s": r.bf16_tflop_per_s, "peak_gflop_per_s": r.bf16_tflop_per_s * 1e3,
                    "gemm_n": r.gemm_n,
                }))
            };
            let backend = grm_engine::CudaBackend::new(options)
                .with_context(|| format!("--device {}", a.device))?;
            let model = Gemma2::load(dir, backend).with_context(loading)?;
            bench_on(&a, dir, model, roofline)
        }
        #[cfg(not(feature = "cuda"))]
        crate::serve_cmd::Device::Cuda(_) => Err(anyhow::anyhow!(
            "--device {}: this build has no CUDA backend",
            a.device
        )),
    })();
    // The random model (and the peer's conversions of it) is this run's alone.
    if a.model.is_none() {
        let _ = std::fs::remove_dir_all(dir);
    }
    result
}

/// The measurements, on `model`; `gpu_roofline`, the device's bounds measured beforehand.
/// The model is loaded once and handed from one measurement's scheduler to the next
/// (`Scheduler::into_model`): a 27B model's 54 GB are uploaded once per run.
fn bench_on<B: Backend>(
    a: &EngineArgs,
    dir: &Path,
    mut model: Gemma2<B>,
    gpu_roofline: Option<Value>,
) -> Result<()> {
    let m = &model;
    let vocab = m.config.vocab_size;
    let mut report = json!({
        "machine": machine(),
        "backend": m.backend().name(),
        "threads": rayon::current_num_threads(),
        "model": {
            "dir": dir.display().to_string(),
            "parameters": m.config.num_parameters(),
            "weight_bytes": m.weight_bytes(),
            "shape": if a.model.is_some() { Value::Null } else { json!(a.shape) },
        },
    });
    let kv_token_bytes = m.kv_bytes_per_token();
    let cfg = m.config.clone();
    let weight_bytes = m.weight_bytes();
    let on_cpu = a.device == "cpu";
    if let Some(r) = gpu_roofline {
        report["roofline"] = r;
    }
    if on_cpu {
        let isa = grm_engine::cpu::Isa::current();
        eprintln!(
            "cpu path: {} (detected best: {}; features: {})",
            isa.name(),
            grm_engine::cpu::Isa::detect().name(),
            grm_engine::cpu::isa::cpu_features().join(" ")
        );
        report["cpu"] = json!({
            "isa": isa.name(),
            "isa_detected": grm_engine::cpu::Isa::detect().name(),
            "features": grm_engine::cpu::isa::cpu_features(),
        });
        if !a.skip.iter().any(|s| s == "roofline") {
            report["roofline"] = roofline(isa);
        }
    }

    if !a.skip.iter().any(|s| s == "prefill") {
        let m = &model;
        profile_section(&mut report, None);
        let p = prompt(a.prompt_tokens, vocab, 1);
        m.run_once(&p[..16.min(p.len())], false)?; // warm-up
        let mut times = Vec::new();
        for _ in 0..3 {
            let t = Instant::now();
            m.run_once(&p, false)?;
            times.push(t.elapsed().as_secs_f64());
        }
        profile_section(&mut report, Some("prefill".into()));
        times.sort_by(f64::total_cmp);
        let best = times[0];
        let flops = prefill_flops(&cfg, a.prompt_tokens);
        let gflop_s = flops / best / 1e9;
        report["prefill"] = json!({
            "tokens": a.prompt_tokens, "seconds": best, "tokens_per_s": a.prompt_tokens as f64 / best,
            "gflop": flops / 1e9, "gflop_per_s": gflop_s,
            "of_peak": report["roofline"]["peak_gflop_per_s"].as_f64().map(|p| gflop_s / p),
        });
        eprintln!(
            "prefill: {} tokens in {best:.3} s ({:.0} tok/s, {gflop_s:.1} GFLOP/s{})",
            a.prompt_tokens,
            a.prompt_tokens as f64 / best,
            report["prefill"]["of_peak"]
                .as_f64()
                .map(|f| format!(", {:.1}% of the measured peak", 100.0 * f))
                .unwrap_or_default()
        );
    }

    if !a.skip.iter().any(|s| s == "decode") {
        let mut rows = Vec::new();
        for &b in &a.decode_batches {
            let ctx = a.decode_context;
            let per = (ctx + DECODE_REPS * a.decode_steps + 2).div_ceil(16) + 1;
            let mut s = sched(model, per * b + 1, false, 4096)?;
            for i in 0..b {
                let params = SamplingParams {
                    max_new_tokens: DECODE_REPS * a.decode_steps + 2,
                    ignore_stop: true,
                    stream: false,
                    logprobs: None,
                    ..Default::default()
                };
                s.submit(
                    i as u64,
                    Work::Generate {
                        prompt: prompt(ctx, vocab, i + 2),
                        samples: vec![params],
                    },
                )?;
            }
            // Prefill everything (and the first decode step), then time pure decode steps.
            while s.counters().prompt_tokens_computed < (b * ctx) as u64 {
                s.step();
            }
            s.step();
            profile_section(&mut report, None);
            // DECODE_REPS windows of decode_steps steps, the fastest kept (the peer's figures
            // are its best repetition too): this machine's memory bandwidth wanders.
            let (mut secs, mut tokens) = (f64::MAX, 0);
            for _ in 0..DECODE_REPS {
                let t = Instant::now();
                let before = s.counters().generated_tokens;
                for _ in 0..a.decode_steps {
                    s.step();
                }
                let dt = t.elapsed().as_secs_f64();
                if dt < secs {
                    (secs, tokens) = (dt, s.counters().generated_tokens - before);
                }
            }
            model = s.into_model();
            profile_section(&mut report, Some(format!("decode_batch_{b}")));
            let tps = tokens as f64 / secs;
            // Bytes read per step: every weight once (the tied embedding as the LM head), and
            // each sequence's keys and values at the mean context of the timed steps.
            let mean_ctx = ctx + 1 + DECODE_REPS * a.decode_steps / 2;
            let bytes = weight_bytes as f64 + (b * mean_ctx * kv_token_bytes) as f64;
            let step = secs / a.decode_steps as f64;
            let gb_s = bytes / step / 1e9;
            // The CPU against its read benchmark; a GPU against its device copy.
            let of_read = report["roofline"]["read_gb_per_s"]
                .as_f64()
                .map(|r| gb_s / r);
            let of_copy = (!on_cpu)
                .then(|| report["roofline"]["copy_gb_per_s"].as_f64())
                .flatten()
                .map(|c| gb_s / c);
            eprintln!(
                "decode batch {b} (context {ctx}): {tokens} tokens in {secs:.3} s ({tps:.1} tok/s, {:.2} ms/step, {:.1} MB read per step: {gb_s:.1} GB/s{}{})",
                1e3 * step,
                bytes / 1e6,
                of_read.map(|f| format!(", {:.0}% of the read benchmark", 100.0 * f)).unwrap_or_default(),
                of_copy.map(|f| format!(", {:.0}% of the device copy", 100.0 * f)).unwrap_or_default()
            );
            rows.push(json!({
                "batch": b, "context": ctx, "tokens": tokens, "seconds": secs, "tokens_per_s": tps, "ms_per_step": 1e3 * step,
                "bytes_per_step": bytes, "gb_per_s": gb_s, "of_read_bandwidth": of_read, "of_copy_bandwidth": of_copy,
            }));
        }
        report["decode"] = json!(rows);
    }

    if !a.skip.iter().any(|s| s == "grm") {
        let mut rows = Vec::new();
        for (&k, sharing) in a.samples.iter().flat_map(|k| [(k, true), (k, false)]) {
            let mut best: Option<Value> = None;
            for _ in 0..a.grm_reps.max(1) {
                let (p, g) = (a.prompt_tokens, a.gen_tokens);
                let blocks = k * ((p + g).div_ceil(16) + 1) + 1;
                let mut s = sched(model, blocks, sharing, 512)?;
                profile_section(&mut report, None);
                let prompt = prompt(p, vocab, 7);
                let params = |i: usize| grm_sample(a.temperature, g, i);
                let t = Instant::now();
                if sharing {
                    s.submit(
                        0,
                        Work::Generate {
                            prompt: prompt.clone(),
                            samples: (0..k).map(params).collect(),
                        },
                    )?;
                } else {
                    for i in 0..k {
                        s.submit(
                            i as u64,
                            Work::Generate {
                                prompt: prompt.clone(),
                                samples: vec![params(i)],
                            },
                        )?;
                    }
                }
                let mut first_token = None;
                let mut done = 0;
                while !s.is_idle() {
                    for (_, ev) in s.step() {
                        if let Event::Sample { .. } = ev {
                            done += 1;
                        }
                    }
                    if first_token.is_none() && s.counters().generated_tokens > 0 {
                        first_token = Some(t.elapsed().as_secs_f64());
                    }
                }
                let secs = t.elapsed().as_secs_f64();
                let c = s.counters();
                model = s.into_model();
                profile_section(&mut report, Some(format!("grm_k{k}_shared_{sharing}")));
                let generated = c.generated_tokens as f64;
                let kv_bytes = c.peak_blocks_used * 16 * kv_token_bytes;
                // The least KV the workload can hold: the prompt once and each sample's tokens
                // when shared (P + kG), k whole sequences when not (k(P + G)).
                let ideal_tokens = if sharing { p + k * g } else { k * (p + g) };
                let ideal_bytes = ideal_tokens * kv_token_bytes;
                eprintln!(
                "grm workload P={p} k={k} G={g} sharing={sharing}: {secs:.2} s, {:.1} generated tok/s, KV peak {:.1} MiB ({:.3} of the ideal {:.1} MiB)",
                generated / secs,
                kv_bytes as f64 / (1 << 20) as f64,
                kv_bytes as f64 / ideal_bytes as f64,
                ideal_bytes as f64 / (1 << 20) as f64
            );
                let row = json!({
                    "prefix_sharing": sharing, "prompt_tokens": p, "samples": k, "gen_tokens": g, "completed_samples": done,
                    "seconds_to_all_samples": secs, "seconds_to_first_token": first_token, "generated_tokens_per_s": generated / secs,
                    "prompt_tokens_computed": c.prompt_tokens_computed, "kv_peak_blocks": c.peak_blocks_used,
                    "kv_peak_bytes": kv_bytes, "kv_ideal_bytes": ideal_bytes,
                    "kv_peak_over_ideal": kv_bytes as f64 / ideal_bytes as f64,
                });
                let faster =
                    |b: &Value| secs < b["seconds_to_all_samples"].as_f64().unwrap_or(f64::MAX);
                if best.as_ref().is_none_or(faster) {
                    best = Some(row);
                }
            }
            rows.extend(best);
        }
        report["capacity"] = capacity(&rows, weight_bytes, kv_token_bytes);
        report["grm_workload"] = json!(rows);
        if !a.skip.iter().any(|s| s == "tree") {
            report["grm_tree_workload"] = grm_tree_workload(a, model, vocab, kv_token_bytes)?;
        }
    }
    match a.peer.as_deref() {
        None => {}
        Some("transformers") => report["peer"] = peer_transformers(a, dir)?,
        Some("llama.cpp") => {
            let dtype = match &a.model {
                None => a.dtype.clone(),
                Some(_) => model_dtype(dir)?,
            };
            let peer = llama::run(&llama::Workload {
                model: dir,
                dtype: &dtype,
                threads: rayon::current_num_threads(),
                prompt_tokens: a.prompt_tokens,
                decode_context: 64,
                decode_steps: a.decode_steps,
                samples: a.samples.first().copied().unwrap_or(8),
                gen_tokens: a.gen_tokens,
                reps: a.grm_reps,
            })?;
            report["ratios_grm_over_llama_cpp"] = llama::ratios(&report, &peer);
            report["peer"] = peer;
        }
        Some(p) => bail!("--peer {p:?} is not known (known: transformers, llama.cpp)"),
    }

    let text = serde_json::to_string_pretty(&report)?;
    println!("{text}");
    if let Some(out) = &a.out {
        std::fs::write(out, text + "\n").with_context(|| format!("writing {}", out.display()))?;
    }
    Ok(())
}

/// With `GRM_CUDA_PROFILE=1` (see `grm_engine::cuda::profile`): the time by operation since the
/// last call, on stderr and under the report's "profile" as `name`; `None` only starts anew.
fn profile_section(report: &mut Value, name: Option<String>) {
    #[cfg(feature = "cuda")]
    {
        use grm_engine::cuda::profile;
        if !profile::enabled() {
            return;
        }
        let rows = profile::report();
        profile::reset();
        let Some(name) = name else { return };
        let total: f64 = rows.iter().map(|r| r.1).sum();
        eprintln!("profile of {name}: {:.1} ms by operation", total * 1e3);
        for (op, secs, n) in rows.iter().take(16) {
            eprintln!(
                "  {op:<24} {:>9.2} ms {:>5.1}% {n:>8} calls",
                secs * 1e3,
                100.0 * secs / total.max(1e-12)
            );
        }
        let by_op: Vec<Value> = rows
            .iter()
            .map(|(op, secs, n)| json!({ "op": op, "seconds": secs, "calls": n }))
            .collect();
        report["profile"][name] = json!(by_op);
    }
    #[cfg(not(feature = "cuda"))]
    let _ = (report, name);
}

/// The machine's roofline on the compute threads, measured now: read and copy bandwidth over
/// 1 GiB buffers (far past the caches), and peak FMA throughput on the path in use.
fn roofline(isa: grm_engine::cpu::Isa) -> Value {
    use grm_engine::cpu::roofline::{copy_bandwidth, peak_flops, read_bandwidth};
    let read = read_bandwidth(1 << 30, 5) / 1e9;
    let copy = copy_bandwidth(1 << 29, 5) / 1e9;
    let peak = peak_flops(isa) / 1e9;
    eprintln!(
        "roofline: read {read:.1} GB/s, copy {copy:.1} GB/s (read + write), peak {peak:.0} GFLOP/s ({}, {} threads)",
        isa.name(),
        rayon::current_num_threads()
    );
    json!({
        "read_gb_per_s": read, "copy_gb_per_s": copy, "peak_gflop_per_s": peak,
        "peak_isa": isa.name(), "threads": rayon::current_num_threads(),
    })
}

/// FLOPs of a prefill of `p` tokens (an FMA counts two): the products of every layer for every
/// token, attention over the keys each token sees (its window on sliding layers), and the LM
/// head for the last token.
fn prefill_flops(c: &grm_engine::ModelConfig, p: usize) -> f64 {
    let (h, q, kv) = (
        c.hidden_size,
        c.num_heads * c.head_dim,
        c.num_kv_heads * c.head_dim,
    );
    let per_token = h * (q + 2 * kv) + q * h + 3 * h * c.intermediate_size;
    let mut flops = 2.0 * (p * per_token * c.num_layers) as f64;
    for layer in 0..c.num_layers {
        let keys: usize = (0..p)
            .map(|t| c.window_of(layer).map_or(t + 1, |w| (t + 1).min(w)))
            .sum();
        flops += 4.0 * (keys * c.num_heads * c.head_dim) as f64;
    }
    flops + 2.0 * (c.vocab_size * h) as f64
}

/// The weights' dtype in a model directory (config.json's `dtype` or `torch_dtype`), as
/// llama.cpp's converter names it.
fn model_dtype(dir: &Path) -> Result<String> {
    let text = std::fs::read_to_string(dir.join("config.json"))
        .with_context(|| format!("reading {}/config.json", dir.display()))?;
    let v: Value = serde_json::from_str(&text)?;
    let d = v["dtype"]
        .as_str()
        .or(v["torch_dtype"].as_str())
        .unwrap_or("");
    Ok(match d {
        "float32" => "f32",
        "bfloat16" => "bf16",
        "float16" => "f16",
        d => bail!(
            "{}/config.json: dtype {d:?} is not one of float32, bfloat16, float16",
            dir.display()
        ),
    }
    .to_string())
}

/// The same GRM workload through HF transformers (torch, CPU), same weights, same threads.
fn peer_transformers(a: &EngineArgs, dir: &Path) -> Result<Value> {
    let samples = a
        .samples
        .iter()
        .map(|k| k.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../bench/peer_transformers.py");
    let threads = a.threads.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    });
    let out = std::process::Command::new(&a.python)
        .arg(&script)
        .args(["--model", &dir.display().to_string()])
        .args(["--prompt-tokens", &a.prompt_tokens.to_string()])
        .args(["--samples", &samples])
        .args(["--gen-tokens", &a.gen_tokens.to_string()])
        .args(["--temperature", &a.temperature.to_string()])
        .args(["--threads", &threads.to_string()])
        .args(["--modes", &a.peer_modes.join(",")])
        .args(if a.device.starts_with("cuda") {
            ["--device", "cuda", "--dtype", "bfloat16"]
        } else {
            ["--device", "cpu", "--dtype", "float32"]
        })
        .output()
        .with_context(|| {
            format!(
                "running {} (make it with scripts/setup-python.sh, or pass --python)",
                a.python.display()
            )
        })?;
    if !out.status.success() {
        bail!(
            "the transformers peer failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let v: Value =
        serde_json::from_slice(&out.stdout).context("the transformers peer printed no JSON")?;
    for run in v["runs"].as_array().into_iter().flatten() {
        eprintln!(
            "transformers {} k={}: {:.2} s, {:.1} generated tok/s",
            run["mode"].as_str().unwrap_or("eager"),
            run["samples"],
            run["seconds_to_all_samples"].as_f64().unwrap_or(0.0),
            run["generated_tokens_per_s"].as_f64().unwrap_or(0.0)
        );
    }
    Ok(v)
}

/// The GRM workload as the method sends it: n = 2 and n = 4 responses, each of the k samples
/// seeing them in its own order (header, responses, footer: `grm_engine::workload`). With the
/// tree, one request holds all the prompts; without, one request per distinct prompt (the
/// cross-request prefix cache reuses only what an earlier one finished). Prompt tokens
/// computed are set against the ideal: the distinct tokens of the prompts' prefix tree.
fn grm_tree_workload<B: Backend>(
    a: &EngineArgs,
    mut model: Gemma2<B>,
    vocab: usize,
    kv_token_bytes: usize,
) -> Result<Value> {
    use grm_engine::scheduler::prompt_tree::unique_tokens;
    use grm_engine::workload::{grm_prompts, GrmShape};
    let (p, g) = (a.prompt_tokens, a.gen_tokens);
    let mut rows = Vec::new();
    for (&k, n) in a.samples.iter().flat_map(|k| [(k, 2usize), (k, 4)]) {
        let (footer, per_response) = (p / 16, p / (6 * n));
        let shape = GrmShape {
            header: p - footer - n * per_response,
            responses: vec![per_response; n],
            footer,
            samples: k,
            vocab,
            seed: n as u64,
        };
        let w = grm_prompts(&shape);
        let ideal = unique_tokens(&w.prompts.iter().map(|p| &p[..]).collect::<Vec<_>>());
        for tree in [true, false] {
            let blocks = (k + w.prompts.len()) * ((p + g).div_ceil(16) + 1) + 1;
            let mut s = sched(model, blocks, true, 512)?;
            let params = |i: usize| grm_sample(a.temperature, g, i);
            let t = Instant::now();
            if tree {
                let samples = (0..k).map(|i| (w.sample_prompt[i], params(i))).collect();
                let prompts = w.prompts.clone();
                s.submit(0, Work::GenerateTree { prompts, samples })?;
            } else {
                for (j, prompt) in w.prompts.iter().enumerate() {
                    let samples = (0..k)
                        .filter(|&i| w.sample_prompt[i] == j)
                        .map(params)
                        .collect();
                    let prompt = prompt.clone();
                    s.submit(j as u64, Work::Generate { prompt, samples })?;
                }
            }
            let mut done = 0;
            while !s.is_idle() {
                done += s
                    .step()
                    .iter()
                    .filter(|(_, e)| matches!(e, Event::Sample { .. }))
                    .count();
            }
            let secs = t.elapsed().as_secs_f64();
            let c = s.counters();
            model = s.into_model();
            let kv_bytes = c.peak_blocks_used * 16 * kv_token_bytes;
            eprintln!(
                "grm workload n={n} P={p} k={k} G={g} tree={tree}: {} distinct prompts, {} prompt tokens computed (ideal {ideal}), {secs:.2} s, KV peak {:.1} MiB",
                w.prompts.len(),
                c.prompt_tokens_computed,
                kv_bytes as f64 / (1 << 20) as f64
            );
            rows.push(json!({
                "responses": n, "prompt_tree": tree, "distinct_prompts": w.prompts.len(),
                "prompt_tokens": p, "samples": k, "gen_tokens": g, "completed_samples": done,
                "prompt_tokens_computed": c.prompt_tokens_computed, "prompt_tokens_ideal": ideal,
                "seconds_to_all_samples": secs, "kv_peak_blocks": c.peak_blocks_used,
                "kv_peak_bytes": kv_bytes,
            }));
        }
    }
    Ok(json!(rows))
}

/// GPUs the capacity figures are given for: (name, memory in bytes).
const CAPACITY_GPUS: [(&str, f64); 2] = [("H100 80 GB", 80e9), ("H200 141 GB", 141e9)];

/// Room held back from the KV pool besides the weights: activations, CUDA graphs, cuBLAS's
/// workspace, the CUDA context.
const CAPACITY_RESERVE: f64 = 4.0 * (1u64 << 30) as f64;

/// GRM requests of `prompt` tokens and k samples of g tokens whose KV fits at once on a GPU of
/// `memory` bytes at the serving default (90% of it for the process), after the weights and
/// the reserve: each request holds its prompt once and its samples' tokens (the prompt shared),
/// times the KV peak over that ideal measured by the benchmark.
fn requests_that_fit(
    memory: f64,
    weights: f64,
    kv_token_bytes: f64,
    (prompt, k, g): (usize, usize, usize),
    peak_over_ideal: f64,
) -> usize {
    let room = memory * 0.9 - weights - CAPACITY_RESERVE;
    let per_request = (prompt + k * g) as f64 * kv_token_bytes * peak_over_ideal.max(1.0);
    if room <= 0.0 || per_request <= 0.0 {
        return 0;
    }
    (room / per_request).floor() as usize
}

/// How many k-sample requests of 4,096-token prompts (and of the run's own prompt length) fit
/// at once on an H100 and an H200, from the largest k measured with the prompt shared.
fn capacity(rows: &[Value], weight_bytes: usize, kv_token_bytes: usize) -> Value {
    let shared = rows
        .iter()
        .filter(|r| r["prefix_sharing"] == json!(true))
        .max_by_key(|r| r["samples"].as_u64().unwrap_or(0));
    let Some(r) = shared else {
        return Value::Null;
    };
    let field = |name: &str| r[name].as_u64().unwrap_or(0) as usize;
    let (k, g, p) = (
        field("samples"),
        field("gen_tokens"),
        field("prompt_tokens"),
    );
    let ratio = r["kv_peak_over_ideal"].as_f64().unwrap_or(1.0);
    let gpus: Vec<Value> = CAPACITY_GPUS
        .iter()
        .map(|&(name, memory)| {
            let fit = |prompt| {
                requests_that_fit(memory, weight_bytes as f64, kv_token_bytes as f64, (prompt, k, g), ratio)
            };
            eprintln!(
                "capacity on an {name}: {} requests of k={k}, G={g} with 4,096-token prompts at once ({} with {p}-token prompts)",
                fit(4096),
                fit(p)
            );
            json!({"gpu": name, "memory_bytes": memory, "requests_4096_token_prompts": fit(4096),
                   "requests_run_prompt": fit(p)})
        })
        .collect();
    json!({
        "samples": k, "gen_tokens": g, "run_prompt_tokens": p, "kv_peak_over_ideal": ratio,
        "weight_bytes": weight_bytes, "kv_bytes_per_token": kv_token_bytes,
        "memory_share": 0.9, "reserve_bytes": CAPACITY_RESERVE, "gpus": gpus,
    })
}

#[cfg(test)]
mod capacity_tests {
    use super::*;

    #[test]
    fn requests_that_fit_beside_gemma_2_27b() {
        // gemma-2-27b in bf16: 46 layers, 16 KV heads of 128: 376,832 bytes of K and V a token;
        // 54.4 GB of weights. k = 32 samples of 256 tokens on a 4,096-token prompt: 12,288
        // tokens, 4.63 GB a request at the ideal.
        let kv = (2 * 46 * 16 * 128 * 2) as f64;
        let w = 54.4e9;
        assert_eq!(requests_that_fit(80e9, w, kv, (4096, 32, 256), 1.0), 2);
        assert_eq!(requests_that_fit(141e9, w, kv, (4096, 32, 256), 1.0), 14);
        // A peak over the ideal takes room; one under it is not credited.
        assert_eq!(requests_that_fit(141e9, w, kv, (4096, 32, 256), 2.0), 7);
        assert_eq!(requests_that_fit(141e9, w, kv, (4096, 32, 256), 0.5), 14);
        // Weights past the memory: none.
        assert_eq!(requests_that_fit(40e9, w, kv, (4096, 32, 256), 1.0), 0);
    }

    #[test]
    fn capacity_reads_the_largest_shared_run() {
        let rows = vec![
            json!({"prefix_sharing": true, "samples": 8, "gen_tokens": 256, "prompt_tokens": 1024, "kv_peak_over_ideal": 1.0}),
            json!({"prefix_sharing": false, "samples": 32, "gen_tokens": 256, "prompt_tokens": 1024, "kv_peak_over_ideal": 3.0}),
            json!({"prefix_sharing": true, "samples": 32, "gen_tokens": 256, "prompt_tokens": 1024, "kv_peak_over_ideal": 1.0}),
        ];
        let c = capacity(&rows, 54_400_000_000, 2 * 46 * 16 * 128 * 2);
        assert_eq!(c["samples"], json!(32));
        assert_eq!(c["gpus"][0]["requests_4096_token_prompts"], json!(2));
        assert_eq!(c["gpus"][1]["requests_4096_token_prompts"], json!(14));
        assert_eq!(capacity(&rows[1..2], 1, 1), Value::Null);
    }
}
