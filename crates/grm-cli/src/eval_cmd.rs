//! `grm eval`: a GRM's accuracy on preference data, per k, as JSON and a plot.
//!
//! Formats, one JSON object per line, recognised by their fields:
//! * pairs (RewardBench): `{"prompt", "chosen", "rejected", "subset"?}`;
//! * best-of-N (RMB-style): `{"prompt", "chosen", "rejected": [...], "subset"?}` or
//!   `{"query", "responses": [...], "best": i}`;
//! * single responses (ReaLMistake-style): `{"prompt", "response", "correct": bool}`, scored by
//!   ROC-AUC of the mean score.
//!
//! For each item, k_max judgements are drawn once (temperature `--temperature`, the responses
//! in a seeded order, meta-RM scores when the cluster has a meta RM) and one greedy judgement;
//! voting@k and meta-RM@k (k_meta = k/2) are then estimated by subsampling (grm_judge::eval).

use crate::label_cmd::seed_of;
use crate::plot::{Chart, Series};
use crate::progress::Progress;
use crate::response_json::to_json;
use crate::scorer::{Scorer, ScorerFlags};
use anyhow::{bail, Context, Result};
use clap::Args;
use grm_judge::eval::{credit, item_credit, item_mean_score, roc_auc, subsets, Drawn};
use grm_judge::rng::SplitMix64;
use grm_proto::v1::{label, sample, Label, Message, Sampling, ScoreRequest, ScoreResponse};
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::PathBuf;
use tokio::sync::mpsc;

#[derive(Args, Debug)]
pub struct EvalArgs {
    /// Preference data, JSONL or Parquet (RewardBench's columns).
    #[arg(long)]
    pub input: PathBuf,
    /// Judgements drawn per item.
    #[arg(long, default_value_t = 32)]
    pub k_max: u32,
    /// The k reported (each <= k_max).
    #[arg(long, value_delimiter = ',', default_value = "1,2,4,8,16,32")]
    pub ks: Vec<usize>,
    /// Subsets per k in the estimator.
    #[arg(long, default_value_t = 64)]
    pub draws: usize,
    #[arg(long, default_value_t = 0.5)]
    pub temperature: f32,
    #[arg(long)]
    pub max_new_tokens: Option<u32>,
    /// Write the report here (JSON).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Write the plot here (SVG).
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// Also keep every drawn judgement here (JSONL of ScoreResponses).
    #[arg(long)]
    pub judgements: Option<PathBuf>,
    /// Only the first N items.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Adaptive rules to weigh beside fixed k (k_max is their ceiling): `exact`,
    /// `confident:0.99`, ... (comma-separated). Each is run on the k_max judgements drawn, in
    /// --draws random orders per item, as the router would sample them.
    #[arg(long, value_delimiter = ',')]
    pub adaptive: Vec<String>,
    /// The adaptive rules' wave (with the meta RM, the rule is weighed at the end of each).
    #[arg(long, default_value_t = 4)]
    pub first_wave: usize,
    /// Random orders per item in which the adaptive rules are run.
    #[arg(long, default_value_t = 16)]
    pub adaptive_draws: usize,
    /// Read the judgements from a file an earlier run kept (--judgements) instead of drawing
    /// them again.
    #[arg(long)]
    pub from_judgements: Option<PathBuf>,
    /// Write the plot of accuracy against generated tokens per item here (SVG).
    #[arg(long)]
    pub plot_tokens: Option<PathBuf>,
    #[command(flatten)]
    pub scorer: ScorerFlags,
}

#[derive(Deserialize)]
struct Line {
    id: Option<String>,
    prompt: Option<String>,
    query: Option<String>,
    chosen: Option<String>,
    rejected: Option<Value>,
    responses: Option<Vec<String>>,
    best: Option<usize>,
    response: Option<String>,
    correct: Option<bool>,
    subset: Option<String>,
}

/// One evaluation item.
#[derive(Debug, Clone)]
pub struct Item {
    pub id: String,
    pub subset: String,
    pub query: String,
    pub responses: Vec<String>,
    /// Index of the best response (pairs, best-of-N), or None for single responses.
    pub best: Option<usize>,
    pub correct: Option<bool>,
}

/// Reads one line of any of the three formats; the chosen response is put at a seeded
/// position so that position carries no information.
pub fn parse_item(text: &str, n: usize) -> Result<Item> {
    let l: Line = serde_json::from_str(text).context("not a JSON object of a known format")?;
    let id = l.id.unwrap_or_else(|| format!("line-{n}"));
    let query = l
        .prompt
        .or(l.query)
        .context("`prompt` (or `query`) is missing")?;
    let subset = l.subset.unwrap_or_else(|| "all".into());
    if let (Some(response), Some(correct)) = (l.response.clone(), l.correct) {
        return Ok(Item {
            id,
            subset,
            query,
            responses: vec![response],
            best: None,
            correct: Some(correct),
        });
    }
    let (mut responses, chosen_at) = match (l.chosen, l.rejected, l.responses, l.best) {
        (Some(c), Some(Value::String(r)), _, _) => (vec![c, r], 0),
        (Some(c), Some(Value::Array(rs)), _, _) => {
            let mut v = vec![c];
            for (i, r) in rs.into_iter().enumerate() {
                v.push(
                    r.as_str()
                        .with_context(|| format!("rejected[{i}] is not a string"))?
                        .to_string(),
                );
            }
            (v, 0)
        }
        (None, None, Some(rs), Some(b)) if b < rs.len() => (rs, b),
        _ => bail!("expected chosen + rejected, responses + best, or response + correct"),
    };
    if responses.len() < 2 {
        bail!("a preference item needs at least 2 responses");
    }
    // Move the chosen response to a seeded position.
    let chosen = responses.remove(chosen_at);
    let pos = SplitMix64::new(seed_of(&id)).below(responses.len() as u64 + 1) as usize;
    responses.insert(pos, chosen);
    Ok(Item {
        id,
        subset,
        query,
        responses,
        best: Some(pos),
        correct: None,
    })
}

fn request(
    item: &Item,
    suffix: &str,
    k: u32,
    temperature: f32,
    max_new_tokens: Option<u32>,
) -> ScoreRequest {
    ScoreRequest {
        id: format!("{}{suffix}", item.id),
        conversation: vec![Message {
            role: "user".into(),
            content: item.query.clone(),
        }],
        responses: item.responses.clone(),
        sampling: Some(Sampling {
            k,
            // Ask the meta RM to score every judgement (none is filtered here; the estimator
            // filters subsets itself). Without a meta RM this is plain voting.
            k_meta: Some(k),
            temperature: Some(temperature),
            max_new_tokens: max_new_tokens.unwrap_or(0),
            seed: Some(seed_of(&item.id)),
            ..Default::default()
        }),
        label: item.best.map(|b| Label {
            kind: Some(label::Kind::Best(b as u32)),
        }),
        return_samples: true,
        ..Default::default()
    }
}

/// The judgements of an answer, in the original order of the responses.
pub fn drawn(r: &ScoreResponse) -> Drawn {
    let mut d = Drawn::default();
    for s in &r.samples {
        d.ballots.push(match &s.outcome {
            Some(sample::Outcome::Scores(sc)) => {
                Some(sc.original.iter().map(|&v| v as u8).collect())
            }
            _ => None,
        });
        d.meta.push(s.meta_score);
        d.tokens.push(s.generated_tokens);
    }
    d
}

/// An adaptive rule as `--adaptive` names it.
fn parse_rule(spec: &str) -> Result<(String, grm_judge::adaptive::Rule)> {
    use grm_judge::adaptive::Rule;
    match spec.split_once(':') {
        None if spec == "exact" => Ok((spec.into(), Rule::Exact)),
        None if spec == "confident" => Ok((
            "confident:0.99".into(),
            Rule::Confident { confidence: 0.99 },
        )),
        Some(("confident", c)) => match c.parse::<f64>() {
            Ok(c) if c > 0.0 && c < 1.0 => Ok((spec.into(), Rule::Confident { confidence: c })),
            _ => bail!("--adaptive {spec}: the confidence must lie in (0, 1)"),
        },
        _ => bail!("--adaptive {spec}: expected exact or confident:C"),
    }
}

/// Fixed k and each adaptive rule: accuracy (or ROC-AUC), judgements and generated tokens per
/// item, with and without the meta RM.
pub fn adaptive_report(
    items: &[(&Item, Drawn, Drawn)],
    ks: &[usize],
    rules: &[(String, grm_judge::adaptive::Rule)],
    wave: usize,
    draws: usize,
) -> Value {
    use grm_judge::eval::{adaptive_used, permutation, subset_rewards};
    let single = items.iter().all(|(i, _, _)| i.best.is_none());
    let has_meta = items.iter().all(|(_, d, _)| d.has_meta()) && !items.is_empty();
    let n_items = items.len().max(1) as f64;
    let tokens_per_judgement = {
        let (t, c) = items.iter().fold((0u64, 0usize), |(t, c), (_, d, _)| {
            (
                t + d.tokens.iter().map(|&x| u64::from(x)).sum::<u64>(),
                c + d.tokens.len(),
            )
        });
        t as f64 / c.max(1) as f64
    };
    let fixed: Vec<Value> = ks
        .iter()
        .map(|&k| json!({ "k": k, "tokens": tokens_per_judgement * k as f64 }))
        .collect();
    let mut out = Vec::new();
    for (name, rule) in rules {
        for meta in [false, true] {
            if meta && !has_meta {
                continue;
            }
            let (mut value, mut used_total, mut tokens_total) = (0.0, 0.0, 0.0);
            let mut scores: Vec<Vec<f64>> = vec![Vec::new(); draws.max(1)];
            for (it, d, _) in items {
                let n = it.responses.len();
                let k = d.k();
                let k_meta = meta.then(|| grm_judge::default_k_meta(k));
                let seed = seed_of(&it.id);
                let (mut v, mut u, mut t) = (0.0, 0.0, 0.0);
                for draw in 0..draws.max(1) {
                    let order = permutation(k, seed, draw);
                    let m = adaptive_used(d, n, *rule, k_meta, wave, &order, seed);
                    let used = &order[..m];
                    u += m as f64;
                    t += used
                        .iter()
                        .map(|&i| f64::from(d.tokens.get(i).copied().unwrap_or(0)))
                        .sum::<f64>();
                    if single {
                        scores[draw].push(item_mean_score(d, used, k_meta));
                    } else {
                        v += credit(&subset_rewards(d, used, n, k_meta), it.best.unwrap_or(0));
                    }
                }
                let runs = draws.max(1) as f64;
                value += v / runs;
                used_total += u / runs;
                tokens_total += t / runs;
            }
            if single {
                let positive: Vec<bool> = items
                    .iter()
                    .map(|(i, _, _)| i.correct == Some(true))
                    .collect();
                value =
                    scores.iter().map(|s| roc_auc(s, &positive)).sum::<f64>() / scores.len() as f64;
            } else {
                value /= n_items;
            }
            out.push(json!({
                "rule": name,
                "meta_rm": meta,
                "value": value,
                "judgements": used_total / n_items,
                "tokens": tokens_total / n_items,
            }));
        }
    }
    json!({
        "tokens_per_judgement": tokens_per_judgement,
        "fixed": fixed,
        "rules": out,
        "wave": wave,
    })
}

/// Accuracy (or ROC-AUC) per method and k for a set of items.
pub fn score_items(items: &[(&Item, Drawn, Drawn)], ks: &[usize], draws: usize) -> Value {
    let single = items.iter().all(|(i, _, _)| i.best.is_none());
    let has_meta = items.iter().all(|(_, d, _)| d.has_meta()) && !items.is_empty();
    // Per k, in the order asked: [{"k": .., "value": ..}].
    let mut voting: Vec<Value> = Vec::new();
    let mut meta: Vec<Value> = Vec::new();
    let greedy;
    if single {
        let positive: Vec<bool> = items
            .iter()
            .map(|(i, _, _)| i.correct == Some(true))
            .collect();
        let g: Vec<f64> = items
            .iter()
            .map(|(_, _, g)| item_mean_score(g, &(0..g.k()).collect::<Vec<_>>(), None))
            .collect();
        greedy = roc_auc(&g, &positive);
        for &k in ks {
            for (use_meta, out) in [(false, &mut voting), (true, &mut meta)] {
                if use_meta && !has_meta {
                    continue;
                }
                // The estimator: average the AUC over draws, each draw one subset per item.
                let per_item: Vec<Vec<Vec<usize>>> = items
                    .iter()
                    .map(|(i, d, _)| subsets(d.k(), k, draws, seed_of(&i.id)))
                    .collect();
                let rounds = per_item.iter().map(Vec::len).max().unwrap_or(1);
                let mut total = 0.0;
                for j in 0..rounds {
                    let scores: Vec<f64> = items
                        .iter()
                        .zip(&per_item)
                        .map(|((_, d, _), sets)| {
                            item_mean_score(
                                d,
                                &sets[j % sets.len()],
                                use_meta.then(|| grm_judge::default_k_meta(k)),
                            )
                        })
                        .collect();
                    total += roc_auc(&scores, &positive);
                }
                out.push(json!({ "k": k, "value": total / rounds as f64 }));
            }
        }
    } else {
        let n_items = items.len().max(1) as f64;
        greedy = items
            .iter()
            .map(|(i, _, g)| {
                credit(
                    &grm_judge::eval::subset_rewards(
                        g,
                        &(0..g.k()).collect::<Vec<_>>(),
                        i.responses.len(),
                        None,
                    ),
                    i.best.unwrap_or(0),
                )
            })
            .sum::<f64>()
            / n_items;
        for &k in ks {
            let v: f64 = items
                .iter()
                .map(|(i, d, _)| {
                    item_credit(
                        d,
                        i.responses.len(),
                        i.best.unwrap_or(0),
                        k,
                        false,
                        draws,
                        seed_of(&i.id),
                    )
                })
                .sum();
            voting.push(json!({ "k": k, "value": v / n_items }));
            if has_meta {
                let m: f64 = items
                    .iter()
                    .map(|(i, d, _)| {
                        item_credit(
                            d,
                            i.responses.len(),
                            i.best.unwrap_or(0),
                            k,
                            true,
                            draws,
                            seed_of(&i.id),
                        )
                    })
                    .sum();
                meta.push(json!({ "k": k, "value": m / n_items }));
            }
        }
    }
    let judgements: usize = items.iter().map(|(_, d, _)| d.k()).sum();
    let valid: usize = items
        .iter()
        .map(|(_, d, _)| d.ballots.iter().filter(|b| b.is_some()).count())
        .sum();
    let greedy_valid = items
        .iter()
        .filter(|(_, _, g)| g.ballots.iter().any(Option::is_some))
        .count();
    json!({
        "items": items.len(),
        "metric": if single { "roc_auc" } else { "accuracy" },
        "greedy": greedy,
        "voting": Value::Array(voting),
        "meta_rm": if has_meta { Value::Array(meta) } else { Value::Null },
        "valid_judgements": if judgements > 0 { valid as f64 / judgements as f64 } else { 0.0 },
        "greedy_parse_rate": greedy_valid as f64 / items.len().max(1) as f64,
    })
}

pub fn run(a: EvalArgs) -> Result<()> {
    let mut items = Vec::new();
    for (n, text) in crate::records::read_records(&a.input)? {
        let at = || format!("{} line {n}", a.input.display());
        let text = text.map_err(anyhow::Error::msg).with_context(at)?;
        items.push(parse_item(&text, n).with_context(at)?);
        if a.limit.is_some_and(|l| items.len() >= l) {
            break;
        }
    }
    if items.is_empty() {
        bail!("{} has no items", a.input.display());
    }
    crate::records::check_unique_ids(&a.input, items.iter().map(|it| it.id.as_str()))?;
    let ks: Vec<usize> =
        a.ks.iter()
            .copied()
            .filter(|&k| k >= 1 && k <= a.k_max as usize)
            .collect();
    // A bad --adaptive is refused before anything is drawn.
    for spec in &a.adaptive {
        parse_rule(spec)?;
    }
    let answers: HashMap<String, Drawn> = match &a.from_judgements {
        Some(p) => read_judgements(p)?,
        None => draw(&a, &items)?
            .iter()
            .map(|(id, r)| (id.clone(), drawn(r)))
            .collect(),
    };
    let answer = |id: String| {
        answers
            .get(&id)
            .cloned()
            .with_context(|| format!("no answer for {id}"))
    };
    eval_rows(&a, &items, &answer, &ks)
}

/// The judgements an earlier run kept (one ScoreResponse as JSON per line), by request id.
fn read_judgements(path: &std::path::Path) -> Result<HashMap<String, Drawn>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut out = HashMap::new();
    for (n, line) in text.lines().enumerate() {
        let v: Value = serde_json::from_str(line)
            .with_context(|| format!("{} line {}", path.display(), n + 1))?;
        let mut d = Drawn::default();
        for s in v["samples"].as_array().into_iter().flatten() {
            d.ballots.push(
                s["scores"]["original"]
                    .as_array()
                    .map(|a| a.iter().map(|x| x.as_u64().unwrap_or(0) as u8).collect()),
            );
            d.meta.push(s["meta_score"].as_f64().map(|m| m as f32));
            d.tokens
                .push(s["generated_tokens"].as_u64().unwrap_or(0) as u32);
        }
        out.insert(v["id"].as_str().unwrap_or_default().to_string(), d);
    }
    Ok(out)
}

/// Draws each item's k_max judgements and its greedy one, through the scorer.
fn draw(a: &EvalArgs, items: &[Item]) -> Result<HashMap<String, ScoreResponse>> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let answers: HashMap<String, ScoreResponse> = rt.block_on(async {
        let scorer = Scorer::connect(&a.scorer).await?;
        let (tx, rx) = mpsc::channel(64);
        let reqs: Vec<ScoreRequest> = items
            .iter()
            .flat_map(|it| {
                [
                    request(it, "#draw", a.k_max, a.temperature, a.max_new_tokens),
                    request(it, "#greedy", 1, 0.0, a.max_new_tokens),
                ]
            })
            .collect();
        let total = reqs.len();
        tokio::spawn(async move {
            for r in reqs {
                if tx.send(r).await.is_err() {
                    break;
                }
            }
        });
        let mut rx = scorer.score_all(rx, a.scorer.concurrency);
        let mut out = HashMap::new();
        let mut progress = Progress::new("requests", Some(total));
        let mut keep = match &a.judgements {
            Some(p) => Some(
                std::fs::File::create(p).with_context(|| format!("creating {}", p.display()))?,
            ),
            None => None,
        };
        while let Some(r) = rx.recv().await {
            if let Some(e) = &r.error {
                bail!("request {} failed: {}", r.id, e.message);
            }
            if let Some(f) = keep.as_mut() {
                writeln!(f, "{}", to_json(&r))?;
            }
            out.insert(r.id.clone(), r);
            progress.add(1);
            if out.len() == total {
                break;
            }
        }
        progress.finish();
        if out.len() < total {
            bail!(
                "the scorer stopped after {} of {total} answers (did the router shut down?)",
                out.len()
            );
        }
        Ok::<_, anyhow::Error>(out)
    })?;
    Ok(answers)
}

/// The report, the summary and the plots, from each item's drawn judgements.
fn eval_rows(
    a: &EvalArgs,
    items: &[Item],
    answer: &dyn Fn(String) -> Result<Drawn>,
    ks: &[usize],
) -> Result<()> {
    let rows: Vec<(&Item, Drawn, Drawn)> = items
        .iter()
        .map(|it| {
            Ok((
                it,
                answer(format!("{}#draw", it.id))?,
                answer(format!("{}#greedy", it.id))?,
            ))
        })
        .collect::<Result<_>>()?;
    let mut by_subset: BTreeMap<&str, Vec<(&Item, Drawn, Drawn)>> = BTreeMap::new();
    for (it, d, g) in &rows {
        by_subset
            .entry(it.subset.as_str())
            .or_default()
            .push((it, d.clone(), g.clone()));
    }
    let rules: Vec<(String, grm_judge::adaptive::Rule)> = a
        .adaptive
        .iter()
        .map(|s| parse_rule(s))
        .collect::<Result<_>>()?;
    let mut overall = score_items(&rows, ks, a.draws);
    if !rules.is_empty() {
        overall["adaptive"] = adaptive_report(&rows, ks, &rules, a.first_wave, a.adaptive_draws);
    }
    let subsets: BTreeMap<&str, Value> = by_subset
        .iter()
        .map(|(s, r)| (*s, score_items(r, ks, a.draws)))
        .collect();
    let report = json!({
        "input": a.input.display().to_string(),
        "k_max": a.k_max,
        "temperature": a.temperature,
        "estimator": format!(
            "k_max judgements drawn once per item; voting@k and meta-RM@k (k_meta = k/2) averaged over {} subsets of size k drawn without replacement (the whole set at k = k_max); a tie for the best reward earns 1/t (random tie-break, as in the paper); greedy = one judgement at temperature 0",
            a.draws
        ),
        "overall": overall,
        "subsets": subsets,
    });
    let text = serde_json::to_string_pretty(&report)?;
    println!("{text}");
    if let Some(out) = &a.out {
        std::fs::write(out, text + "\n").with_context(|| format!("writing {}", out.display()))?;
    }
    print_summary(&overall);
    if let Some(p) = &a.plot {
        let series = |name: &str, color: &'static str, key: &str| Series {
            name: name.into(),
            color,
            points: points(&overall[key])
                .into_iter()
                .map(|(k, v)| (k as f64, v))
                .collect(),
            line: true,
        };
        let mut list = vec![series("voting@k", "#1f6fb4", "voting")];
        if overall["meta_rm"].is_array() {
            list.push(series("meta-RM@k", "#e0701b", "meta_rm"));
        }
        let metric = overall["metric"].as_str().unwrap_or("accuracy");
        let chart = Chart {
            x_label: "k (judgements sampled per item, log scale)".into(),
            x_ticks: ks.iter().map(|&k| (k as f64, k.to_string())).collect(),
            title: format!(
                "{} of {} items: {}",
                if metric == "roc_auc" {
                    "ROC-AUC"
                } else {
                    "Accuracy"
                },
                rows.len(),
                a.input
                    .file_name()
                    .map_or(String::new(), |f| f.to_string_lossy().into_owned())
            ),
            y_label: if metric == "roc_auc" {
                "ROC-AUC".into()
            } else {
                "accuracy".into()
            },
            series: list,
            baseline: overall["greedy"]
                .as_f64()
                .map(|g| ("greedy".to_string(), g)),
        };
        std::fs::write(p, chart.svg()).with_context(|| format!("writing {}", p.display()))?;
        eprintln!("plot: {}", p.display());
    }
    if let (Some(p), true) = (&a.plot_tokens, overall["adaptive"].is_object()) {
        std::fs::write(p, tokens_chart(&overall, rows.len(), &a.input).svg())
            .with_context(|| format!("writing {}", p.display()))?;
        eprintln!("plot: {}", p.display());
    }
    Ok(())
}

/// (k, value) pairs of a per-k list.
pub fn points(v: &Value) -> Vec<(usize, f64)> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|p| Some((p["k"].as_u64()? as usize, p["value"].as_f64()?)))
                .collect()
        })
        .unwrap_or_default()
}

fn print_summary(o: &Value) {
    eprintln!(
        "\n{} over {} items; greedy {:.1}%",
        o["metric"].as_str().unwrap_or(""),
        o["items"],
        o["greedy"].as_f64().unwrap_or(0.0) * 100.0
    );
    for r in o["adaptive"]["rules"].as_array().into_iter().flatten() {
        eprintln!(
            "adaptive {}{}: {:.1}% with {:.1} judgements, {:.0} tokens per item",
            r["rule"].as_str().unwrap_or(""),
            if r["meta_rm"].as_bool() == Some(true) {
                " + meta-RM"
            } else {
                ""
            },
            r["value"].as_f64().unwrap_or(0.0) * 100.0,
            r["judgements"].as_f64().unwrap_or(0.0),
            r["tokens"].as_f64().unwrap_or(0.0)
        );
    }
    for (name, key) in [("voting ", "voting"), ("meta-RM", "meta_rm")] {
        let p = points(&o[key]);
        if !p.is_empty() {
            let line: Vec<String> = p
                .iter()
                .map(|(k, v)| format!("@{k} {:.1}%", v * 100.0))
                .collect();
            eprintln!("{name}  {}", line.join("  "));
        }
    }
}

/// Accuracy against generated tokens per item: fixed k as lines, adaptive rules as points.
fn tokens_chart(o: &Value, items: usize, input: &std::path::Path) -> Chart {
    let per = o["adaptive"]["tokens_per_judgement"]
        .as_f64()
        .unwrap_or(1.0);
    let line = |name: &str, color: &'static str, key: &str| Series {
        name: name.into(),
        color,
        points: points(&o[key])
            .into_iter()
            .map(|(k, v)| (k as f64 * per, v))
            .collect(),
        line: true,
    };
    let mut series = vec![line("voting@k", "#1f6fb4", "voting")];
    if o["meta_rm"].is_array() {
        series.push(line("meta-RM@k", "#e0701b", "meta_rm"));
    }
    let colors = [
        "#2ca02c", "#9467bd", "#d62728", "#8c564b", "#17becf", "#bcbd22", "#e377c2", "#7f7f7f",
    ];
    for (i, r) in o["adaptive"]["rules"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        let name = format!(
            "{}{}",
            r["rule"].as_str().unwrap_or(""),
            if r["meta_rm"].as_bool() == Some(true) {
                " + meta"
            } else {
                ""
            }
        );
        series.push(Series {
            name,
            color: colors[i % colors.len()],
            points: vec![(
                r["tokens"].as_f64().unwrap_or(0.0),
                r["value"].as_f64().unwrap_or(0.0),
            )],
            line: false,
        });
    }
    let metric = o["metric"].as_str().unwrap_or("accuracy");
    let ticks = points(&o["voting"])
        .into_iter()
        .map(|(k, _)| (k as f64 * per, format!("{:.0}", k as f64 * per)))
        .collect();
    Chart {
        title: format!(
            "{} against tokens, {items} items: {}",
            if metric == "roc_auc" {
                "ROC-AUC"
            } else {
                "Accuracy"
            },
            input
                .file_name()
                .map_or(String::new(), |f| f.to_string_lossy().into_owned())
        ),
        y_label: if metric == "roc_auc" {
            "ROC-AUC".into()
        } else {
            "accuracy".into()
        },
        x_label: "generated tokens per item (log scale; fixed k at the ticks)".into(),
        x_ticks: ticks,
        series,
        baseline: o["greedy"].as_f64().map(|g| ("greedy".to_string(), g)),
    }
}
