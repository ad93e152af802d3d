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
