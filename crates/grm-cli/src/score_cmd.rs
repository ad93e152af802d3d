//! `grm score`: one request from the command line, against a running router or in-process on
//! a model directory. Text or JSON in; a readable table or JSON out.

use crate::request_json::RequestJson;
use crate::response_json::to_json;
use crate::scorer::{Scorer, ScorerFlags};
use anyhow::{bail, Context, Result};
use clap::Args;
use grm_proto::v1::{sample, ScoreRequest, ScoreResponse};
use std::io::Read;
use std::time::Duration;

#[derive(Args, Debug)]
pub struct ScoreArgs {
    /// The user's query (otherwise a JSON request is read on stdin).
    #[arg(long)]
    pub query: Option<String>,
    /// A response (repeat for each).
    #[arg(long = "response")]
    pub responses: Vec<String>,
    /// Judgements sampled (k).
    #[arg(long)]
    pub k: Option<u32>,
    /// Judgements kept by the meta RM.
    #[arg(long)]
    pub k_meta: Option<u32>,
    #[arg(long)]
    pub temperature: Option<f32>,
    #[arg(long)]
    pub seed: Option<u64>,
    #[arg(long)]
    pub max_new_tokens: Option<u32>,
    /// Print the judgements too.
    #[arg(long)]
    pub samples: bool,
    /// Print the answer as JSON.
    #[arg(long)]
    pub json: bool,
    /// Adaptive k: stop sampling once the rule holds (exact or confident); --k is the ceiling.
    #[arg(long)]
    pub adaptive: Option<String>,
    /// The confident rule's confidence, in (0, 1).
    #[arg(long, default_value_t = 0.99)]
    pub confidence: f32,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 600.0)]
    pub timeout_s: f64,
    #[command(flatten)]
    pub scorer: ScorerFlags,
}

fn request(a: &ScoreArgs) -> Result<ScoreRequest> {
    let mut r = match &a.query {
        Some(q) => {
            if a.responses.is_empty() {
                bail!("--query needs at least one --response");
            }
            RequestJson {
                query: Some(q.clone()),
                responses: a.responses.clone(),
                ..Default::default()
            }
        }
        None => {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .context("reading a JSON request (UTF-8) from stdin")?;
            RequestJson::parse(&text)?
        }
    };
    let s = &mut r.sampling;
    s.k = a.k.or(s.k);
    s.k_meta = a.k_meta.or(s.k_meta);
    s.temperature = a.temperature.or(s.temperature);
    s.seed = a.seed.or(s.seed);
    s.max_new_tokens = a.max_new_tokens.or(s.max_new_tokens);
    let mut req = r.to_proto()?;
    if let Some(rule) = &a.adaptive {
        req.sampling.get_or_insert_with(Default::default).adaptive =
            Some(grm_proto::v1::Adaptive {
                rule: rule.clone(),
                confidence: a.confidence,
                first_wave: 0,
            });
    }
    Ok(req)
}

pub fn run(a: ScoreArgs) -> Result<()> {
    let req = request(&a)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let resp = rt.block_on(async {
        let scorer = Scorer::connect(&a.scorer).await?;
        tokio::time::timeout(Duration::from_secs_f64(a.timeout_s), scorer.score(req))
            .await
            .map_err(|_| anyhow::anyhow!("no answer within --timeout-s {}", a.timeout_s))
    })?;
    if let Some(e) = &resp.error {
        bail!(
            "{}: {}",
            tonic::Code::from_i32(e.code).description(),
            e.message
        );
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&to_json(&resp))?);
    } else {
        print_table(&resp, a.samples);
    }
    Ok(())
}

fn print_table(r: &ScoreResponse, samples: bool) {
    println!(
        "{:<10} {:>7} {:>6} {:>6}",
        "response", "reward", "mean", "votes"
    );
    for (i, x) in r.rewards.iter().enumerate() {
        let mark = if r.best == Some(i as u32) {
            " (best)"
        } else {
            ""
        };
        println!(
            "{:<10} {:>7} {:>6.2} {:>6}",
            format!("{i}{mark}"),
            x.reward,
            x.mean_score,
            x.votes
        );
    }
    // With a meta RM only the top k_meta valid judgements vote.
    let kept = if r.k_meta > 0 {
        format!(" (top k_meta = {} by the meta RM)", r.k_meta)
    } else {
        String::new()
    };
    println!(
        "best: {}   tie: {}   votes from {} judgements{kept}; {} invalid   seed: {}",
        r.best.map_or("none".into(), |b| b.to_string()),
        if r.tie { "yes" } else { "no" },
        r.valid_samples,
        r.invalid_samples,
        r.seed
    );
    if let Some(t) = &r.timings {
        println!("time: {:.0} ms", t.total_ms);
    }
    if samples {
        for s in &r.samples {
            let verdict = match &s.outcome {
                Some(sample::Outcome::Scores(sc)) => {
                    format!("scores {:?} (original order {:?})", sc.shown, sc.original)
                }
                Some(sample::Outcome::Invalid(i)) => format!("invalid: {}", i.message),
                None => String::new(),
            };
            let meta = s
                .meta_score
                .map_or(String::new(), |m| format!("  meta {m:.3}"));
            println!(
                "\n--- sample {}  order {:?}  {}{}{}",
                s.index,
                s.order,
                verdict,
                meta,
                if s.kept { "  kept" } else { "" }
            );
            println!("{}", s.text.trim_end());
        }
    }
}
