//! `grm`: the command-line entry point. Each subcommand lives in its own module; this file only
//! parses the command line and dispatches.

mod bench_cluster;
mod bench_cmd;
mod eval_cmd;
mod fd_limit;
mod judge_cmd;
mod label_cmd;
mod model_cmd;
mod plot;
mod progress;
mod records;
mod request_json;
mod response_json;
mod score_cmd;
mod scorer;
mod serve_cmd;
mod spct_cmd;
mod telemetry;

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
    /// Log lines on stderr: human-readable, or one JSON object per line.
    #[arg(
        long,
        global = true,
        env = "GRM_LOG_FORMAT",
        value_enum,
        default_value = "human"
    )]
    log_format: telemetry::LogFormat,
}

#[derive(Subcommand)]
enum Command {
    /// Router, worker(s) and aggregator in one process: the whole service on one machine.
    Serve(serve_cmd::ServeArgs),
    /// The public gRPC API (and OpenRLHF's HTTP /get_reward) over GRM workers.
    Router(serve_cmd::RouterArgs),
    /// One engine serving a GRM (judgements) or a meta RM (scores) to routers and aggregators.
    Worker(serve_cmd::WorkerArgs),
    /// Turns a request's judgements into its answer: meta-RM scores, filtering, voting.
    Aggregator(serve_cmd::AggregatorArgs),
    /// Score one request, against a router or in-process.
    Score(score_cmd::ScoreArgs),
    /// Offline labeling of a JSONL file: resumable, nothing lost.
    Label(label_cmd::LabelArgs),
    /// A GRM's accuracy on preference data: greedy, voting@k and meta-RM@k, with a plot.
    Eval(eval_cmd::EvalArgs),
    /// SPCT training data: rejective-sampling pairs and meta-RM data.
    #[command(subcommand)]
    Spct(spct_cmd::SpctCommand),
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
    // Servers log their requests; the offline commands only warnings (GRM_LOG overrides).
    let quiet = matches!(
        cli.command,
        Command::Score(_)
            | Command::Label(_)
            | Command::Eval(_)
            | Command::Spct(_)
            | Command::Bench(_)
    );
    // The servers export traces when OTEL_* asks for them, each under its role's name.
    let service = match cli.command {
        Command::Serve(_) => Some("grm-serve"),
        Command::Router(_) => Some("grm-router"),
        Command::Worker(_) => Some("grm-worker"),
        Command::Aggregator(_) => Some("grm-aggregator"),
        _ => None,
    };
    let telemetry = telemetry::init(if quiet { "warn" } else { "info" }, cli.log_format, service);
    if service.is_some() {
        fd_limit::raise();
    }
    let result = match cli.command {
        Command::Serve(a) => serve_cmd::serve(a).map(|()| ExitCode::SUCCESS),
        Command::Router(a) => serve_cmd::router(a).map(|()| ExitCode::SUCCESS),
        Command::Worker(a) => serve_cmd::worker(a).map(|()| ExitCode::SUCCESS),
        Command::Aggregator(a) => serve_cmd::aggregator(a).map(|()| ExitCode::SUCCESS),
        Command::Score(a) => score_cmd::run(a).map(|()| ExitCode::SUCCESS),
        Command::Label(a) => label_cmd::run(a).map(|()| ExitCode::SUCCESS),
        Command::Eval(a) => eval_cmd::run(a).map(|()| ExitCode::SUCCESS),
        Command::Spct(c) => spct_cmd::run(c).map(|()| ExitCode::SUCCESS),
        Command::Judge(cmd) => judge_cmd::run(cmd),
        Command::Model(cmd) => model_cmd::run(cmd),
        Command::Bench(cmd) => bench_cmd::run(cmd),
    };
    drop(telemetry);
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
