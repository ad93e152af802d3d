//! `grm label`: offline labeling of a JSONL file, nothing lost.
//!
//! Each input line is a request (`request_json`; `id` recommended, else `line-N`). Each answer
//! is appended to the output as one JSON line and flushed at once; a rerun skips ids already
//! there (and cuts a line a kill left half-written); a line that cannot be read, or a request
//! the cluster refuses, goes to the errors file with its line number and the run goes on; the
//! first Ctrl-C stops taking new items and waits for those in flight, a second stops at once
//! — between whole lines. The retries are by hand: a refused item goes back into the open
//! ScoreStream after its backoff, which a generic retry crate (wrapping one call) cannot do.

use crate::progress::Progress;
use crate::request_json::RequestJson;
use crate::response_json::to_json;
use crate::scorer::{Scorer, ScorerFlags};
use anyhow::{bail, Context, Result};
use clap::Args;
use grm_proto::v1::{sample, ScoreRequest};
use serde_json::json;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::OpenOptions;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use tokio::sync::mpsc;

#[derive(Args, Debug)]
pub struct LabelArgs {
    /// Input JSONL (or .parquet): one request per line ({"id", "query" or "conversation", "responses", ...}).
    #[arg(long)]
    pub input: PathBuf,
    /// Output JSONL: one answer (the full ScoreResponse) per line, appended.
    #[arg(long)]
    pub output: PathBuf,
    /// Lines that could not be read or scored (default: OUTPUT.errors.jsonl).
    #[arg(long)]
    pub errors: Option<PathBuf>,
    /// Judgements per item, for items that do not say.
    #[arg(long)]
    pub k: Option<u32>,
    /// Judgements kept by the meta RM, for items that do not say.
    #[arg(long)]
    pub k_meta: Option<u32>,
    #[arg(long)]
    pub temperature: Option<f32>,
    #[arg(long)]
    pub max_new_tokens: Option<u32>,
    /// Leave the judgements' texts out of the output (rewards and votes only).
    #[arg(long)]
    pub no_samples: bool,
    #[command(flatten)]
    pub scorer: ScorerFlags,
}

/// Ids already in the output; a half-written last line (from a kill) is cut off.
pub fn done_ids(path: &Path) -> Result<HashSet<String>> {
    let mut ids = HashSet::new();
    let Ok(mut f) = OpenOptions::new().read(true).write(true).open(path) else {
        return Ok(ids);
    };
    let mut text = Vec::new();
    f.read_to_end(&mut text)?;
    let keep = text.iter().rposition(|&b| b == b'\n').map_or(0, |p| p + 1);
    if keep < text.len() {
        eprintln!(
            "{}: cutting a half-written last line ({} bytes)",
            path.display(),
            text.len() - keep
        );
        f.set_len(keep as u64)?;
        f.seek(SeekFrom::End(0))?;
    }
    for line in text[..keep].split(|&b| b == b'\n') {
        if let Ok(v) = serde_json::from_slice::<serde_json::Value>(line) {
            if let Some(id) = v["id"].as_str() {
                ids.insert(id.to_string());
            }
        }
    }
    Ok(ids)
}

/// A stable seed for an item without one, so that a rerun redoes it the same way: FNV-1a,
/// fixed forever (std's hasher may change between Rust releases).
pub fn seed_of(id: &str) -> u64 {
    id.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Appends one JSON line in a single write, then flushes: a kill leaves at most one
/// half-written last line, never a line spliced from two.
fn append_line(f: &mut std::fs::File, v: &serde_json::Value) -> Result<()> {
    let mut line = serde_json::to_vec(v)?;
    line.push(b'\n');
    f.write_all(&line)?;
    f.flush()?;
    Ok(())
}

/// Failures worth another try: the cluster was busy, restarting or slow.
fn retryable(code: i32) -> bool {
    [
        tonic::Code::Unavailable,
        tonic::Code::ResourceExhausted,
        tonic::Code::DeadlineExceeded,
    ]
    .iter()
    .any(|&c| c as i32 == code)
}

/// Tries per item before a retryable failure goes to the errors file.
const ATTEMPTS: u32 = 4;

/// Reads the input: (line number, the request) or (line number, why it is unreadable).
pub fn read_items(
    path: &Path,
    defaults: &impl Fn(&mut RequestJson),
) -> Result<Vec<(usize, Result<ScoreRequest, String>)>> {
    Ok(crate::records::read_records(path)?
        .into_iter()
        .map(|(n, text)| {
            let item = text
                .and_then(|t| RequestJson::parse(&t).map_err(|e| format!("{e:#}")))
                .and_then(|mut r| {
                    if r.id.as_deref().is_none_or(str::is_empty) {
                        r.id = Some(format!("line-{n}"));
                    }
                    defaults(&mut r);
                    r.to_proto().map_err(|e| format!("{e:#}"))
                });
            (n, item)
        })
        .collect())
}

pub fn run(a: LabelArgs) -> Result<()> {
    let errors_path = a
        .errors
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("{}.errors.jsonl", a.output.display())));
    let done = done_ids(&a.output)?;
    let defaults = |r: &mut RequestJson| {
        let id = r.id.clone().unwrap_or_default();
        let s = &mut r.sampling;
        s.k = s.k.or(a.k);
        s.k_meta = s.k_meta.or(a.k_meta);
        s.temperature = s.temperature.or(a.temperature);
        s.max_new_tokens = s.max_new_tokens.or(a.max_new_tokens);
        s.seed = s.seed.or(Some(seed_of(&id)));
    };
    let items = read_items(&a.input, &defaults)?;
    let mut out = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&a.output)
        .with_context(|| format!("opening {}", a.output.display()))?;
    // Rewritten by every run: each run re-derives every failure (failed items are retried,
    // as they are not in the output).
    let mut errors = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(&errors_path)
        .with_context(|| format!("opening {}", errors_path.display()))?;
    let mut line_of: HashMap<String, usize> = HashMap::new();
    let (mut todo, mut skipped, mut malformed) = (Vec::new(), 0usize, 0usize);
    let mut seen = HashSet::new();
    for (n, item) in items {
        match item {
            Err(e) => {
                malformed += 1;
                append_line(&mut errors, &json!({ "line": n, "error": e }))?;
            }
            Ok(r) if done.contains(&r.id) => skipped += 1,
            Ok(r) => {
                if !seen.insert(r.id.clone()) {
                    malformed += 1;
                    append_line(
                        &mut errors,
                        &json!({ "line": n, "id": r.id, "error": "duplicate id: an earlier line has it" }),
                    )?;
                    continue;
                }
                line_of.insert(r.id.clone(), n);
                todo.push(r);
            }
        }
    }
    if malformed > 0 {
        eprintln!(
            "{malformed} input line(s) could not be read; see {}",
            errors_path.display()
        );
    }
    if skipped > 0 {
        eprintln!(
            "{skipped} item(s) already in {}: skipped",
            a.output.display()
        );
    }
    let total = todo.len();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let no_samples = a.no_samples;
    let summary = rt.block_on(async move {
        let scorer = Scorer::connect(&a.scorer).await?;
        let (tx, rx) = mpsc::channel(a.scorer.concurrency.max(1));
        // Dropped on Ctrl-C, so that the answers' channel closes once the items in flight end.
        let mut retry_tx = Some(tx.clone());
        let by_id: HashMap<String, ScoreRequest> =
            todo.iter().map(|r| (r.id.clone(), r.clone())).collect();
        let mut attempts: HashMap<String, u32> = HashMap::new();
        // One listener for the whole run, so that no Ctrl-C falls between two waits.
        let mut interrupt =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
        let feeder = tokio::spawn(async move {
            for r in todo {
                if tx.send(r).await.is_err() {
                    break;
                }
            }
        });
        let mut answers = scorer.score_all(rx, a.scorer.concurrency);
        let mut progress = Progress::new("items", Some(total));
        let (mut written, mut failed) = (0usize, 0usize);
        let mut invalid: BTreeMap<String, usize> = BTreeMap::new();
        let mut judgements = 0usize;
        let mut stopping = false;
        let mut retried = 0usize;
        loop {
            let r = tokio::select! {
                r = answers.recv() => r,
                _ = interrupt.recv() => {
                    if stopping {
                        eprintln!("\nstopped; rerun the same command to finish the rest");
                        break;
                    }
                    stopping = true;
                    feeder.abort();
                    retry_tx = None;
                    eprintln!("\nstopping: finishing the items in flight (Ctrl-C again to stop now)");
                    continue;
                }
            };
            let Some(mut r) = r else { break };
            if let Some(e) = &r.error {
                if r.id.is_empty() {
                    bail!("the connection to the cluster failed: {} (rerun to resume)", e.message);
                }
                let tries = attempts.entry(r.id.clone()).or_insert(1);
                if retryable(e.code) && *tries < ATTEMPTS {
                    if let (Some(req), Some(tx)) = (by_id.get(&r.id), &retry_tx) {
                        // Back off 1, 2, 4 s: a restarting worker or a full router recovers.
                        let delay = std::time::Duration::from_secs(1 << (*tries - 1));
                        *tries += 1;
                        retried += 1;
                        let (req, tx) = (req.clone(), tx.clone());
                        tokio::spawn(async move {
                            tokio::time::sleep(delay).await;
                            let _ = tx.send(req).await;
                        });
                        continue;
                    }
                }
                failed += 1;
                append_line(
                    &mut errors,
                    &json!({ "line": line_of.get(&r.id), "id": r.id, "attempts": *tries, "error": { "code": e.code, "message": e.message } }),
                )?;
            } else {
                for s in &r.samples {
                    judgements += 1;
                    if let Some(sample::Outcome::Invalid(i)) = &s.outcome {
                        *invalid.entry(i.code.clone()).or_default() += 1;
                    }
                }
                if no_samples {
                    r.samples.clear();
                }
                append_line(&mut out, &to_json(&r))?;
                written += 1;
            }
            progress.add(1);
            if written + failed == total {
                break;
            }
        }
        progress.finish();
        Ok::<_, anyhow::Error>(json!({
            "items": total + skipped,
            "written": written,
            "skipped_already_done": skipped,
            "failed": failed,
            "retried": retried,
            "malformed_lines": malformed,
            "judgements": judgements,
            "invalid_judgements": invalid,
            "items_per_s": progress.rate(),
            "output": a.output.display().to_string(),
            "errors": errors_path.display().to_string(),
            "unfinished": total - written - failed,
        }))
    })?;
    eprintln!("{}", serde_json::to_string_pretty(&summary)?);
    // Items neither written nor reported (Ctrl-C, or a router that stopped and ended the
    // stream) are done by a rerun; say so, and exit non-zero so that scripts notice.
    let unfinished = summary["unfinished"].as_u64().unwrap_or(0);
    if unfinished > 0 {
        bail!("{unfinished} item(s) unfinished; rerun the same command to finish them");
    }
    Ok(())
}
