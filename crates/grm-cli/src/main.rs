//! `grm`: the command-line entry point. Each subcommand lives in its own module; this file only
//! parses the command line and dispatches.

mod bench_cmd;
mod judge_cmd;
mod model_cmd;
mod request_json;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "grm",
    version,
    about = "GRM Cluster: generative reward models with inference-time scaling"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The method without a model: build prompts, parse judgements.
    #[command(subcommand)]
    Judge(judge_cmd::JudgeCommand),
    /// Inspect and exercise the engine on a model directory (JSON on stdout).
    #[command(subcommand)]
    Model(model_cmd::ModelCommand),
    /// Throughput and latency figures as JSON.
    #[command(subcommand)]
    Bench(bench_cmd::BenchCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Judge(cmd) => judge_cmd::run(cmd),
        Command::Model(cmd) => model_cmd::run(cmd),
        Command::Bench(cmd) => bench_cmd::run(cmd),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
