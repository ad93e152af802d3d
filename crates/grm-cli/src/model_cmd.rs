//! `grm model`: inspect and exercise the engine on a model directory, JSON on stdout — the
//! commands that check the engine against references (DESIGN.md §5).

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use grm_engine::init::{shape, write_random_model, InitOptions, SHAPES};
use grm_engine::weights::DType;
use grm_engine::{
    CpuBackend, Event, FinishReason, Gemma2, Head, SamplingParams, Scheduler, SchedulerConfig,
    Tokenizer, Work,
};
use serde_json::json;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Subcommand)]
pub enum ModelCommand {
    /// Logits of the last position (or of every position) for a list of token ids.
    Logits {
        #[command(flatten)]
        model: ModelArg,
        #[command(flatten)]
        tokens: TokensArg,
        /// Logits at every position, not only the last.
        #[arg(long)]
        all_positions: bool,
    },
    /// Continues a list of token ids with k samples sharing the prompt's KV blocks.
    Generate(GenerateArgs),
    /// The scalar reward of a sequence-classification model (e.g. a meta RM).
    Reward {
        #[command(flatten)]
        model: ModelArg,
        #[command(flatten)]
        tokens: TokensArg,
    },
    /// Token ids of the text on stdin.
    Tokenize {
        #[command(flatten)]
        model: ModelArg,
        /// Do not put BOS first.
        #[arg(long)]
        no_bos: bool,
    },
    /// Writes a random-weight model with a real or documented shape.
    Init(InitArgs),
    /// The model's configuration and size.
    Info {
        #[command(flatten)]
        model: ModelArg,
    },
}

#[derive(Args)]
pub struct ModelArg {
    /// A HuggingFace model directory (config.json, safetensors, tokenizer.json).
    #[arg(long, env = "GRM_MODEL")]
    model: PathBuf,
    /// Compute threads (default: one per core).
    #[arg(long, env = "GRM_THREADS")]
    threads: Option<usize>,
}

#[derive(Args)]
pub struct TokensArg {
    /// Comma-separated token ids, e.g. 2,17,9.
    #[arg(long)]
    tokens: String,
}

#[derive(Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    model: ModelArg,
    #[command(flatten)]
    tokens: TokensArg,
    #[arg(long, default_value_t = 32)]
    max_new_tokens: usize,
    /// Number of samples (k), all continuing the one prompt.
    #[arg(long, default_value_t = 1)]
    samples: usize,
    /// 0 is greedy.
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    /// 0 keeps every token.
    #[arg(long, default_value_t = 0)]
    top_k: usize,
    /// Sample i draws from seed + i.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Generate max-new-tokens tokens even past a stop token.
    #[arg(long)]
    no_stop: bool,
    /// Tokens per KV block.
    #[arg(long, default_value_t = 16)]
    block_size: usize,
    /// KV blocks in the pool (default: enough for every sample without sharing).
    #[arg(long)]
    kv_blocks: Option<usize>,
    /// Do not share the prompt: each sample prefills it itself (for comparison).
    #[arg(long)]
    no_sharing: bool,
}

#[derive(Args)]
pub struct InitArgs {
    /// One of: gemma-2-2b, gemma-2-9b, gemma-2-27b, small-100m, tiny.
    #[arg(long)]
    shape: String,
    /// Directory to write (created).
    #[arg(long)]
    out: PathBuf,
    /// f32, bf16 or f16.
    #[arg(long, default_value = "bf16")]
    dtype: String,
    /// A sequence-classification model (scalar head), e.g. a meta RM.
    #[arg(long)]
    seq_cls: bool,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Largest safetensors shard, in MiB.
    #[arg(long, default_value_t = 4096)]
    shard_mib: usize,
}

pub fn run(cmd: ModelCommand) -> Result<ExitCode> {
    match cmd {
        ModelCommand::Logits {
            model,
            tokens,
            all_positions,
        } => {
            let m = load(&model)?;
            let tokens = parse_tokens(&tokens.tokens)?;
            if !matches!(m.config.head, Head::CausalLm) {
                bail!(
                    "{} has a scoring head; use `grm model reward`",
                    model.model.display()
                );
            }
            let out = m.run_once(&tokens, all_positions)?;
            let rows: Vec<&[f32]> = (0..out.rows).map(|r| out.row(r)).collect();
            println!("{}", json!({ "logits": rows }));
        }
        ModelCommand::Reward { model, tokens } => {
            let m = load(&model)?;
            if !matches!(m.config.head, Head::SequenceClassification { .. }) {
                bail!(
                    "{} is a causal LM, not a sequence-classification model",
                    model.model.display()
                );
            }
            let out = m.run_once(&parse_tokens(&tokens.tokens)?, false)?;
            println!("{}", json!({ "reward": out.data[0], "scores": out.data }));
        }
        ModelCommand::Tokenize { model, no_bos } => {
            let config = grm_engine::ModelConfig::load(&model.model)?;
            let t = Tokenizer::load(&model.model, config.bos_token_id)?;
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .context("reading text (UTF-8) from stdin")?;
            println!("{}", json!({ "tokens": t.encode(&text, !no_bos)? }));
        }
        ModelCommand::Generate(args) => generate(args)?,
        ModelCommand::Init(args) => init(args)?,
        ModelCommand::Info { model } => {
            let c = grm_engine::ModelConfig::load(&model.model)?;
            println!(
                "{}",
                json!({
                    "head": format!("{:?}", c.head), "parameters": c.num_parameters(), "vocab_size": c.vocab_size,
                    "hidden_size": c.hidden_size, "layers": c.num_layers, "heads": c.num_heads, "kv_heads": c.num_kv_heads,
                    "head_dim": c.head_dim, "sliding_window": c.sliding_window, "max_position_embeddings": c.max_position_embeddings,
                })
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn thread_pool(threads: Option<usize>) -> Result<()> {
    if let Some(t) = threads {
        rayon::ThreadPoolBuilder::new()
            .num_threads(t)
            .build_global()
            .context("setting up compute threads")?;
    }
    Ok(())
}

fn load(m: &ModelArg) -> Result<Gemma2<CpuBackend>> {
    thread_pool(m.threads)?;
    Gemma2::load(&m.model, CpuBackend)
        .with_context(|| format!("loading the model in {}", m.model.display()))
}

/// "2,17,9" → [2, 17, 9], naming the entry that is not a token id.
pub fn parse_tokens(s: &str) -> Result<Vec<u32>> {
    let tokens = s
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .enumerate()
        .map(|(i, t)| {
            t.parse::<u32>()
                .with_context(|| format!("--tokens entry {} is {t:?}, not a token id", i + 1))
        })
        .collect::<Result<Vec<_>>>()?;
    if tokens.is_empty() {
        bail!("--tokens is empty: give at least one token id");
    }
    Ok(tokens)
}

fn generate(a: GenerateArgs) -> Result<()> {
    let m = load(&a.model)?;
    let prompt = parse_tokens(&a.tokens.tokens)?;
    if a.samples == 0 {
        bail!("--samples is 0: give at least 1");
    }
    let stop = m.config.eos_token_ids.clone();
    let block_size = a.block_size.max(1);
    let per_seq = (prompt.len() + a.max_new_tokens).div_ceil(block_size) + 1;
    let blocks = a.kv_blocks.unwrap_or(per_seq * a.samples + 1);
    let cfg = SchedulerConfig {
        max_batch_tokens: 512,
        max_seqs: 256,
        default_stop_tokens: stop,
    };
    let mut sched = Scheduler::new(m, blocks, block_size, !a.no_sharing, cfg)?;
    let params = |i: usize| SamplingParams {
        temperature: a.temperature,
        top_p: a.top_p,
        top_k: a.top_k,
        seed: a.seed.wrapping_add(i as u64),
        max_new_tokens: a.max_new_tokens,
        stop_tokens: Vec::new(),
        ignore_stop: a.no_stop,
        stream: false,
        logprobs: None,
    };
    if a.no_sharing {
        for i in 0..a.samples {
            sched.submit(
                i as u64,
                Work::Generate {
                    prompt: prompt.clone(),
                    samples: vec![params(i)],
                },
            )?;
        }
    } else {
        sched.submit(
            0,
            Work::Generate {
                prompt: prompt.clone(),
                samples: (0..a.samples).map(params).collect(),
            },
        )?;
    }
    let mut samples: Vec<Option<(Vec<u32>, FinishReason)>> = vec![None; a.samples];
    while !sched.is_idle() {
        for (id, ev) in sched.step() {
            if let Event::Sample {
                sample,
                tokens,
                finish,
            } = ev
            {
                let index = if a.no_sharing { id as usize } else { sample };
                samples[index] = Some((tokens, finish));
            }
        }
    }
    let c = sched.counters();
    let kv = sched.kv_stats();
    let out: Vec<_> = samples
        .into_iter()
        .map(|s| {
            let (tokens, finish) = s.expect("every sample finishes");
            json!({ "tokens": tokens, "finish_reason": finish })
        })
        .collect();
    println!(
        "{}",
        json!({
            "samples": out,
            "kv": {
                "block_size": block_size,
                "blocks_total": kv.blocks_total,
                "blocks_used": c.peak_blocks_used,
                "blocks_shared": c.peak_blocks_shared,
                "prompt_full_blocks": prompt.len() / block_size,
            }
        })
    );
    Ok(())
}

fn init(a: InitArgs) -> Result<()> {
    let Some(s) = shape(&a.shape) else {
        let names: Vec<&str> = SHAPES.iter().map(|s| s.name).collect();
        bail!(
            "--shape {:?} is not known (known: {})",
            a.shape,
            names.join(", ")
        );
    };
    let dtype = match a.dtype.as_str() {
        "f32" | "float32" => DType::F32,
        "bf16" | "bfloat16" => DType::BF16,
        "f16" | "float16" => DType::F16,
        other => bail!("--dtype {other:?} is not one of f32, bf16, f16"),
    };
    let opts = InitOptions {
        dtype,
        seq_cls: a.seq_cls,
        seed: a.seed,
        shard_bytes: a.shard_mib.max(1) << 20,
    };
    write_random_model(&s, &a.out, &opts)?;
    let c = grm_engine::ModelConfig::load(&a.out)?;
    eprintln!(
        "wrote {} ({} parameters, {}) to {}",
        s.name,
        c.num_parameters(),
        dtype.name(),
        display(&a.out)
    );
    Ok(())
}

fn display(p: &Path) -> String {
    p.display().to_string()
}
