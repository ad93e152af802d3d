//! `grm spct`: SPCT's training data, drawn from a GRM through the cluster.
//!
//! * `rft` — rejective fine-tuning data: N_RFT judgements per labelled item; the correct ones
//!   (DESIGN.md §1) are kept, and items whose judgements are all correct are dropped as too
//!   easy. With `--hinted`, one judgement per item is drawn from a prompt that names the best
//!   response (the paper's hinted sampling) and kept if correct. Each kept judgement becomes a
//!   (prompt, completion) pair for supervised fine-tuning; the prompt is the one the model
//!   will see at inference: the sample's order of the responses, without the hint.
//! * `meta-data` — the meta RM's training data: each sampled judgement as the meta RM reads it
//!   (the template's `meta` form), labelled 1 when correct and 0 otherwise.

use crate::label_cmd::seed_of;
use crate::progress::Progress;
use crate::request_json::RequestJson;
use crate::scorer::{Scorer, ScorerFlags};
use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use grm_judge::{reject, JudgeInput, Rejection};
use grm_proto::v1::{sample, ScoreRequest};
use serde_json::json;
use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use tokio::sync::mpsc;

#[derive(Subcommand, Debug)]
pub enum SpctCommand {
    /// Rejective-sampling data for fine-tuning: (prompt, completion) pairs of correct judgements.
    Rft(RftArgs),
    /// Sampled judgements with their correctness labels: the meta RM's training data.
    MetaData(MetaDataArgs),
}

#[derive(Args, Debug)]
pub struct Common {
    /// Labelled items, JSONL (the request form with a `label`).
    #[arg(long)]
    pub input: PathBuf,
    /// Output JSONL.
    #[arg(long)]
    pub output: PathBuf,
    #[arg(long, default_value_t = 0.5)]
    pub temperature: f32,
    #[arg(long)]
    pub max_new_tokens: Option<u32>,
    #[command(flatten)]
    pub scorer: ScorerFlags,
}

#[derive(Args, Debug)]
pub struct RftArgs {
    /// Judgements drawn per item (N_RFT).
    #[arg(long, default_value_t = 3)]
    pub n_rft: u32,
    /// Hinted sampling: one judgement per item, from a prompt naming the best response (items
    /// without label.best, i.e. single responses, are skipped).
    #[arg(long)]
    pub hinted: bool,
    #[command(flatten)]
    pub common: Common,
}

#[derive(Args, Debug)]
pub struct MetaDataArgs {
    /// Judgements drawn per item.
    #[arg(long, default_value_t = 8)]
    pub k: u32,
    #[command(flatten)]
    pub common: Common,
}

struct Item {
    input: JudgeInput,
    request: ScoreRequest,
}

fn read(c: &Common, k: u32, hinted: bool) -> Result<Vec<Item>> {
    let mut items = Vec::new();
    for (n, text) in crate::records::read_records(&c.input)? {
        let at = || format!("{} line {n}", c.input.display());
        let mut r = RequestJson::parse(&text.map_err(anyhow::Error::msg).with_context(at)?)
            .with_context(at)?;
        if r.label.is_none() {
            bail!(
                "{}: `label` is missing (SPCT data needs labelled items)",
                at()
            );
        }
        let id = r.id.clone().unwrap_or_else(|| format!("line-{n}"));
        r.id = Some(id.clone());
        r.sampling.k = Some(k);
        r.sampling.temperature = Some(c.temperature);
        r.sampling.max_new_tokens = c.max_new_tokens.or(r.sampling.max_new_tokens);
        r.sampling.seed = r.sampling.seed.or(Some(seed_of(&id)));
        // Every judgement is wanted: no meta-RM filtering.
        r.sampling.k_meta = Some(k);
        let input = r.judge_input().with_context(at)?;
        // Hinted sampling names the best response: items without one (n = 1) are skipped.
        if hinted && !matches!(r.label, Some(grm_judge::Label::Best(_))) {
            continue;
        }
        let mut request = r.to_proto().with_context(at)?;
        request.hinted = hinted;
        items.push(Item { input, request });
    }
    Ok(items)
}

/// Runs every item's request; calls `each` with the item and its answer.
fn run_all(
    c: &Common,
    items: Vec<Item>,
    mut each: impl FnMut(&Item, &grm_proto::v1::ScoreResponse) -> Result<()>,
) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let total = items.len();
    crate::records::check_unique_ids(&c.input, items.iter().map(|it| it.request.id.as_str()))?;
    let by_id: HashMap<String, Item> = items
        .into_iter()
        .map(|it| (it.request.id.clone(), it))
        .collect();
    let reqs: Vec<ScoreRequest> = by_id.values().map(|it| it.request.clone()).collect();
    rt.block_on(async {
        let scorer = Scorer::connect(&c.scorer).await?;
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(async move {
            for r in reqs {
                if tx.send(r).await.is_err() {
                    break;
                }
            }
        });
        let mut answers = scorer.score_all(rx, c.scorer.concurrency);
        let mut progress = Progress::new("items", Some(total));
        let mut got = 0;
        while let Some(r) = answers.recv().await {
            if let Some(e) = &r.error {
                bail!("item {} failed: {}", r.id, e.message);
            }
            let item = by_id.get(&r.id).context("an answer for an unknown item")?;
            each(item, &r)?;
            progress.add(1);
            got += 1;
            if got == total {
                break;
            }
        }
        progress.finish();
        if got < total {
            bail!("the scorer stopped after {got} of {total} answers (did the router shut down?)");
        }
        Ok(())
    })
}

pub fn run(cmd: SpctCommand) -> Result<()> {
    match cmd {
        SpctCommand::Rft(a) => rft(a),
        SpctCommand::MetaData(a) => meta_data(a),
    }
}

fn rft(a: RftArgs) -> Result<()> {
    let c = &a.common;
    let template = crate::judge_cmd::load_template(c.scorer.template.as_ref())?;
    let k = if a.hinted { 1 } else { a.n_rft.max(1) };
    let items = read(c, k, a.hinted)?;
    let mut out = std::fs::File::create(&c.output)
        .with_context(|| format!("creating {}", c.output.display()))?;
    let (mut pairs, mut kept_items, mut too_easy, mut none_correct) =
        (0usize, 0usize, 0usize, 0usize);
    run_all(c, items, |item, r| {
        let correct: Vec<bool> = r.samples.iter().map(|s| s.correct == Some(true)).collect();
        let keep: Vec<usize> = if a.hinted {
            (0..correct.len()).filter(|&i| correct[i]).collect()
        } else {
            match reject(&correct) {
                Rejection::Keep(v) => v,
                Rejection::AllCorrect => {
                    too_easy += 1;
                    Vec::new()
                }
                Rejection::NoneCorrect => {
                    none_correct += 1;
                    Vec::new()
                }
            }
        };
        if a.hinted && keep.is_empty() {
            none_correct += 1;
        }
        if !keep.is_empty() {
            kept_items += 1;
        }
        for i in keep {
            let s = &r.samples[i];
            let order: Vec<usize> = s.order.iter().map(|&o| o as usize).collect();
            let line = json!({
                "id": r.id,
                "sample": s.index,
                "prompt": template.chat_prompt(&item.input, &order, None),
                "completion": format!("{}<end_of_turn>", s.text),
                "order": s.order,
                "hinted": a.hinted,
            });
            writeln!(out, "{line}")?;
            pairs += 1;
        }
        Ok(())
    })?;
    out.flush()?;
    eprintln!(
        "{}",
        json!({ "pairs": pairs, "items_kept": kept_items, "items_all_correct_dropped": too_easy, "items_none_correct": none_correct, "output": c.output.display().to_string() })
    );
    Ok(())
}

fn meta_data(a: MetaDataArgs) -> Result<()> {
    let c = &a.common;
    let template = crate::judge_cmd::load_template(c.scorer.template.as_ref())?;
    let items = read(c, a.k.max(1), false)?;
    let mut out = std::fs::File::create(&c.output)
        .with_context(|| format!("creating {}", c.output.display()))?;
    let (mut rows, mut positive) = (0usize, 0usize);
    run_all(c, items, |item, r| {
        for s in &r.samples {
            let order: Vec<usize> = s.order.iter().map(|&o| o as usize).collect();
            let correct = s.correct == Some(true);
            let line = json!({
                "id": r.id,
                "sample": s.index,
                "text": template.meta_input(&item.input, &order, &s.text),
                "label": u8::from(correct),
                "order": s.order,
                "valid": matches!(s.outcome, Some(sample::Outcome::Scores(_))),
            });
            writeln!(out, "{line}")?;
            rows += 1;
            positive += usize::from(correct);
        }
        Ok(())
    })?;
    out.flush()?;
    eprintln!(
        "{}",
        json!({ "rows": rows, "correct": positive, "output": c.output.display().to_string() })
    );
    Ok(())
}
