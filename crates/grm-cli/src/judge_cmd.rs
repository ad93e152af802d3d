//! `grm judge`: the method without a model.

use crate::request_json::RequestJson;
use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use grm_judge::{extract_scores, PromptOptions, Template};
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Subcommand)]
pub enum JudgeCommand {
    /// Read a judgement on stdin and print its scores as JSON: {"scores":[..]} (exit 0), or
    /// {"invalid":"<reason>"} (exit 1) when it casts no vote.
    Parse {
        /// Number of responses the judgement scores.
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1024))]
        responses: u32,
    },
    /// Read a request as JSON on stdin and print the exact prompt the model sees for one sample.
    Prompt(PromptArgs),
}

#[derive(Args)]
pub struct PromptArgs {
    /// Which sample's prompt (its shuffled order depends on it).
    #[arg(long, default_value_t = 0)]
    sample: u32,
    /// Seed of the shuffles (default: the request's sampling.seed, else 0).
    #[arg(long)]
    seed: Option<u64>,
    /// Show every sample the original order.
    #[arg(long)]
    no_shuffle: bool,
    /// Hinted sampling: the original index (0-based) of the best response to name.
    #[arg(long)]
    hint: Option<usize>,
    /// A prompt template to use instead of the shipped one (TOML).
    #[arg(long, env = "GRM_TEMPLATE")]
    template: Option<PathBuf>,
    /// Print {"prompt": .., "order": [..]} instead of the bare text.
    #[arg(long)]
    json: bool,
    /// Batch mode: JSONL requests on stdin; for each, one JSON line per sample (0..k, k from
    /// the request's sampling.k, default 1) on stdout: {"id", "sample", "prompt", "order"}.
    #[arg(long, conflicts_with_all = ["json", "sample", "hint"])]
    jsonl: bool,
    /// Meta-RM inputs too, in batch mode: each request's `judgements` (one text per sample)
    /// rendered with the template's meta form, as "meta".
    #[arg(long, requires = "jsonl")]
    meta: bool,
}

pub fn run(cmd: JudgeCommand) -> Result<ExitCode> {
    match cmd {
        JudgeCommand::Parse { responses } => parse(responses as usize),
        JudgeCommand::Prompt(args) => prompt(args),
    }
}

fn parse(n: usize) -> Result<ExitCode> {
    let mut bytes = Vec::new();
    std::io::stdin()
        .read_to_end(&mut bytes)
        .context("reading the judgement from stdin")?;
    // Stray invalid bytes cannot form a score; the box is judged on the text around them.
    let text = String::from_utf8_lossy(&bytes);
    let (json, code) = match extract_scores(&text, n) {
        Ok(scores) => (serde_json::json!({ "scores": scores }), 0),
        Err(reason) => (serde_json::json!({ "invalid": reason.to_string() }), 1),
    };
    println!("{json}");
    Ok(ExitCode::from(code))
}

/// Loads the template from a path, or the shipped one.
pub fn load_template(path: Option<&PathBuf>) -> Result<Template> {
    match path {
        None => Ok(Template::default()),
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("reading the template {}", p.display()))?;
            Template::from_toml(&text).with_context(|| format!("in the template {}", p.display()))
        }
    }
}

fn prompt(args: PromptArgs) -> Result<ExitCode> {
    let template = load_template(args.template.as_ref())?;
    if args.jsonl {
        return prompts_jsonl(&template, &args);
    }
    let mut text = String::new();
    std::io::stdin()
        .read_to_string(&mut text)
        .context("reading the request from stdin (UTF-8 JSON)")?;
    let request = RequestJson::parse(&text)?;
    let input = request.judge_input()?;
    if let Some(best) = args.hint {
        anyhow::ensure!(
            best < input.responses.len(),
            "--hint is {best} but there are {} responses (allowed 0..{})",
            input.responses.len(),
            input.responses.len()
        );
    }
    let opts = PromptOptions {
        seed: args.seed.or(request.sampling.seed).unwrap_or(0),
        shuffle: !(args.no_shuffle || request.sampling.no_shuffle),
        hint_best: args.hint,
    };
    let p = template.sample_prompt(&input, args.sample, opts);
    let mut out = std::io::stdout().lock();
    if args.json {
        writeln!(
            out,
            "{}",
            serde_json::json!({ "prompt": p.text, "order": p.order })
        )?;
    } else {
        out.write_all(p.text.as_bytes())?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `grm judge prompt --jsonl`: every sample's prompt of every request, so that training
/// scripts render prompts exactly as the servers do.
fn prompts_jsonl(template: &Template, args: &PromptArgs) -> Result<ExitCode> {
    let stdin = std::io::stdin();
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for (i, line) in std::io::BufRead::lines(stdin.lock()).enumerate() {
        let line = line.context("reading stdin (UTF-8 JSONL)")?;
        if line.trim().is_empty() {
            continue;
        }
        let at = || format!("stdin line {}", i + 1);
        let value: serde_json::Value = serde_json::from_str(&line).with_context(at)?;
        // `judgements` (for --meta) is not part of a request: take it out before parsing.
        let judgements: Vec<String> = value
            .get("judgements")
            .and_then(|j| serde_json::from_value(j.clone()).ok())
            .unwrap_or_default();
        let mut v = value;
        if let Some(o) = v.as_object_mut() {
            o.remove("judgements");
        }
        let request = RequestJson::parse(&v.to_string()).with_context(at)?;
        let input = request.judge_input().with_context(at)?;
        let opts = PromptOptions {
            seed: args.seed.or(request.sampling.seed).unwrap_or(0),
            shuffle: !(args.no_shuffle || request.sampling.no_shuffle),
            hint_best: None,
        };
        for s in 0..request.sampling.k.unwrap_or(1).max(1) {
            let p = template.sample_prompt(&input, s, opts);
            let mut row = serde_json::json!({ "id": request.id, "sample": s, "prompt": p.text, "order": p.order });
            if args.meta {
                if let Some(j) = judgements.get(s as usize) {
                    row["meta"] = serde_json::json!(template.meta_input(&input, &p.order, j));
                }
            }
            writeln!(out, "{row}")?;
        }
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}
