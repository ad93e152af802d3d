//! Prometheus metrics in the text exposition format (version 0.0.4), written here rather than
//! through a metrics crate: the families are few and fixed, and each node renders them from
//! state it already keeps (the router's counters below, an engine's `EngineStats`).
//!
//! Names follow Prometheus conventions: the `grm_` prefix, base units in the name
//! (`_seconds`, `_tokens`), `_total` on counters.

use grm_engine::EngineStats;
use grm_proto::v1::{sample, ScoreResponse};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// The text of one scrape.
#[derive(Default)]
pub struct Exposition(String);

impl Exposition {
    /// Starts a family: its help text and type (`counter`, `gauge`, `histogram`).
    pub fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.0.push_str(name);
        if !labels.is_empty() {
            self.0.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.0.push(',');
                }
                let v = v
                    .replace('\\', "\\\\")
                    .replace('"', "\\\"")
                    .replace('\n', "\\n");
                let _ = write!(self.0, "{k}=\"{v}\"");
            }
            self.0.push('}');
        }
        let _ = writeln!(self.0, " {value}");
    }

    /// A family of one unlabelled sample.
    pub fn single(&mut self, name: &str, kind: &str, help: &str, value: f64) {
        self.family(name, kind, help);
        self.sample(name, &[], value);
    }

    pub fn finish(self) -> String {
        self.0
    }
}

/// A histogram with fixed upper bounds.
pub struct Histogram {
    bounds: &'static [f64],
    /// Observations at or below each bound (not cumulative; summed when rendered).
    counts: Vec<AtomicU64>,
    /// Sum of the observations, as f64 bits.
    sum: Mutex<f64>,
    count: AtomicU64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            counts: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            sum: Mutex::new(0.0),
            count: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, v: f64) {
        if let Some(i) = self.bounds.iter().position(|&b| v <= b) {
            self.counts[i].fetch_add(1, Ordering::Relaxed);
        }
        *self.sum.lock().unwrap_or_else(|e| e.into_inner()) += v;
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    fn render(&self, out: &mut Exposition, name: &str, help: &str) {
        out.family(name, "histogram", help);
        let mut cumulative = 0;
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            cumulative += c.load(Ordering::Relaxed);
            out.sample(
                &format!("{name}_bucket"),
                &[("le", &b.to_string())],
                cumulative as f64,
            );
        }
        let count = self.count.load(Ordering::Relaxed) as f64;
        out.sample(&format!("{name}_bucket"), &[("le", "+Inf")], count);
        let sum = *self.sum.lock().unwrap_or_else(|e| e.into_inner());
        out.sample(&format!("{name}_sum"), &[], sum);
        out.sample(&format!("{name}_count"), &[], count);
    }
}

const LATENCY_BOUNDS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];
/// The reward margin of the best response over the runner-up, per vote, in score points.
const MARGIN_BOUNDS: &[f64] = &[0.0, 0.5, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0];

/// What a router counts of the requests it scores.
pub struct RouterMetrics {
    /// Scored requests by gRPC status code name ("OK", "INVALID_ARGUMENT", ...).
    requests: Mutex<BTreeMap<String, u64>>,
    duration: Histogram,
    prompt_tokens: AtomicU64,
    cached_prompt_tokens: AtomicU64,
    generated_tokens: AtomicU64,
    voted: AtomicU64,
    invalid: AtomicU64,
    /// Invalid judgements by reason, where the answer carried its samples.
    invalid_by_reason: Mutex<BTreeMap<String, u64>>,
    meta_filtered: AtomicU64,
    meta_fallbacks: AtomicU64,
    margin: Histogram,
    /// Groups judged or refused, by outcome (complete, partial, refused).
    groups: Mutex<BTreeMap<&'static str, u64>>,
    group_size: Histogram,
    group_wait: Histogram,
    groups_forwarded: AtomicU64,
    /// Adaptive requests by whether they stopped before k, and the judgements they saved.
    adaptive: Mutex<BTreeMap<&'static str, u64>>,
    judgements_saved: AtomicU64,
}

const GROUP_SIZE_BOUNDS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0];

impl Default for RouterMetrics {
    fn default() -> Self {
        Self {
            requests: Mutex::default(),
            duration: Histogram::new(LATENCY_BOUNDS),
            prompt_tokens: AtomicU64::default(),
            cached_prompt_tokens: AtomicU64::default(),
            generated_tokens: AtomicU64::default(),
            voted: AtomicU64::default(),
            invalid: AtomicU64::default(),
            invalid_by_reason: Mutex::default(),
            meta_filtered: AtomicU64::default(),
            meta_fallbacks: AtomicU64::default(),
            margin: Histogram::new(MARGIN_BOUNDS),
            groups: Mutex::default(),
            group_size: Histogram::new(GROUP_SIZE_BOUNDS),
            group_wait: Histogram::new(LATENCY_BOUNDS),
            groups_forwarded: AtomicU64::default(),
            adaptive: Mutex::default(),
            judgements_saved: AtomicU64::default(),
        }
    }
}

/// The live state a router adds to its counters when scraped.
pub struct RouterGauges {
    pub in_flight: usize,
    /// Live members as the router sees them: (GRM workers, meta-RM workers, aggregators).
    pub members: (usize, usize, usize),
    /// Groups whose members are arriving.
    pub groups_forming: usize,
}

impl RouterMetrics {
    /// Counts one scored request: its outcome (`Ok` answer or the status code) and duration.
    pub fn record(&self, outcome: Result<&ScoreResponse, tonic::Code>, seconds: f64) {
        let code = match outcome {
            Ok(_) => tonic::Code::Ok,
            Err(c) => c,
        };
        *self
            .requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(code_name(code))
            .or_default() += 1;
        self.duration.observe(seconds);
        let Ok(r) = outcome else { return };
        // A group member's tokens and judgements are its group's, counted once when the
        // group was judged (record_group_usage).
        if r.group.is_none() {
            self.record_judged(r);
        }
    }

    /// Counts a group's (sub-group's) judgement.
    pub fn record_group_usage(&self, r: &ScoreResponse) {
        self.record_judged(r);
    }

    /// Counts a group that was judged: its outcome, distinct responses and the wait.
    pub fn group_judged(&self, outcome: &'static str, size: usize, waited: std::time::Duration) {
        self.group_outcome(outcome);
        self.group_size.observe(size as f64);
        self.group_wait.observe(waited.as_secs_f64());
    }

    /// Counts a group outcome (complete, partial, refused).
    pub fn group_outcome(&self, outcome: &'static str) {
        *self
            .groups
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(outcome)
            .or_default() += 1;
    }

    /// Counts an adaptive request that drew `used` of its `k` judgements.
    pub fn adaptive(&self, k: usize, used: usize) {
        let outcome = if used < k { "early" } else { "at_k" };
        *self
            .adaptive
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(outcome)
            .or_default() += 1;
        self.judgements_saved
            .fetch_add(k.saturating_sub(used) as u64, Ordering::Relaxed);
    }

    /// Counts a member sent on to the router that owns its group.
    pub fn group_forwarded(&self) {
        self.groups_forwarded.fetch_add(1, Ordering::Relaxed);
    }

    fn record_judged(&self, r: &ScoreResponse) {
        if let Some(u) = &r.usage {
            self.prompt_tokens
                .fetch_add(u.prompt_tokens, Ordering::Relaxed);
            self.cached_prompt_tokens
                .fetch_add(u.cached_prompt_tokens, Ordering::Relaxed);
            self.generated_tokens
                .fetch_add(u.generated_tokens, Ordering::Relaxed);
        }
        self.voted
            .fetch_add(u64::from(r.valid_samples), Ordering::Relaxed);
        self.invalid
            .fetch_add(u64::from(r.invalid_samples), Ordering::Relaxed);
        if !r.meta_fallback.is_empty() {
            self.meta_fallbacks.fetch_add(1, Ordering::Relaxed);
        }
        let mut by_reason = self
            .invalid_by_reason
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let mut filtered = 0;
        for s in &r.samples {
            match &s.outcome {
                Some(sample::Outcome::Invalid(i)) => {
                    *by_reason.entry(i.code.clone()).or_default() += 1
                }
                Some(sample::Outcome::Scores(_)) if !s.kept => filtered += 1,
                _ => {}
            }
        }
        self.meta_filtered.fetch_add(filtered, Ordering::Relaxed);
        if r.valid_samples > 0 && r.rewards.len() >= 2 {
            let mut rewards: Vec<f64> = r.rewards.iter().map(|x| f64::from(x.reward)).collect();
            rewards.sort_by(|a, b| b.total_cmp(a));
            let per_vote = f64::from(r.valid_samples);
            self.margin.observe((rewards[0] - rewards[1]) / per_vote);
        }
    }

    pub fn render(&self, out: &mut Exposition, g: &RouterGauges) {
        out.family(
            "grm_score_requests_total",
            "counter",
            "Scoring requests answered (Score, each ScoreStream item, /get_reward batches), by gRPC status code.",
        );
        for (code, n) in self
            .requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            out.sample("grm_score_requests_total", &[("code", code)], *n as f64);
        }
        self.duration.render(
            out,
            "grm_score_request_duration_seconds",
            "Time to answer a scoring request, from validation to the vote.",
        );
        out.single(
            "grm_score_requests_in_flight",
            "gauge",
            "Scoring requests being served now (the router's queue; bounded by --max-inflight).",
            g.in_flight as f64,
        );
        let counters = [
            ("grm_prompt_tokens_total", "Prompt tokens of the judgements generated (cached ones included).", &self.prompt_tokens),
            ("grm_cached_prompt_tokens_total", "Prompt tokens served from shared or cached KV blocks.", &self.cached_prompt_tokens),
            ("grm_generated_tokens_total", "Tokens generated in judgements.", &self.generated_tokens),
            ("grm_judgements_voted_total", "Judgements whose scores were counted in a vote.", &self.voted),
            ("grm_judgements_invalid_total", "Judgements that cast no vote (no well-formed scores).", &self.invalid),
            ("grm_judgements_meta_filtered_total", "Valid judgements the meta RM left out of the vote (counted where samples are returned).", &self.meta_filtered),
            ("grm_meta_fallbacks_total", "Requests answered by plain voting because the meta RM could not score their judgements.", &self.meta_fallbacks),
        ];
        for (name, help, v) in counters {
            out.single(name, "counter", help, v.load(Ordering::Relaxed) as f64);
        }
        out.family(
            "grm_judgements_invalid_by_reason_total",
            "counter",
            "Invalid judgements by reason (counted where samples are returned).",
        );
        for (reason, n) in self
            .invalid_by_reason
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            out.sample(
                "grm_judgements_invalid_by_reason_total",
                &[("reason", reason)],
                *n as f64,
            );
        }
        self.margin.render(
            out,
            "grm_vote_margin",
            "Reward of the best response minus the runner-up's, per vote, in score points.",
        );
        out.family(
            "grm_workers_live",
            "gauge",
            "Live members by role, as this router sees them.",
        );
        let (grm, meta, agg) = g.members;
        for (role, n) in [("grm", grm), ("meta-rm", meta), ("aggregator", agg)] {
            out.sample("grm_workers_live", &[("role", role)], n as f64);
        }
        out.family(
            "grm_groups_total",
            "counter",
            "Groups of members (trainers' one-sample calls) judged together, by outcome: complete, partial (the wait ended first), refused (--max-groups).",
        );
        for (outcome, n) in self.groups.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            out.sample("grm_groups_total", &[("outcome", outcome)], *n as f64);
        }
        self.group_size.render(
            out,
            "grm_group_size",
            "Distinct responses judged together per group.",
        );
        self.group_wait.render(
            out,
            "grm_group_wait_seconds",
            "From a group's first member to its judgement.",
        );
        out.single(
            "grm_groups_forming",
            "gauge",
            "Groups whose members are arriving now.",
            g.groups_forming as f64,
        );
        out.family(
            "grm_adaptive_requests_total",
            "counter",
            "Adaptive-k requests, by whether sampling stopped before k (early) or ran to k (at_k).",
        );
        for (outcome, n) in self.adaptive.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            out.sample("grm_adaptive_requests_total", &[("stopped", outcome)], *n as f64);
        }
        out.single(
            "grm_judgements_saved_total",
            "counter",
            "Judgements adaptive sampling did not draw (k minus those drawn).",
            self.judgements_saved.load(Ordering::Relaxed) as f64,
        );
        out.single(
            "grm_group_members_forwarded_total",
            "counter",
            "Group members sent on to the router that owns their group.",
            self.groups_forwarded.load(Ordering::Relaxed) as f64,
        );
    }
}

/// An engine's state and counters, labelled with the worker's role (`grm`, `meta-rm`).
pub fn render_engine(out: &mut Exposition, engines: &[(&str, EngineStats)]) {
    let kv = |s: &EngineStats| {
        [
            ("total", s.kv.blocks_total),
            ("used", s.kv.blocks_used),
            ("shared", s.kv.blocks_shared),
            ("cached", s.kv.blocks_cached),
            ("free", s.kv.blocks_free),
        ]
    };
    out.family("grm_kv_blocks", "gauge", "KV cache blocks by state (shared: referenced by more than one sequence; cached: in the prefix cache).");
    for (role, s) in engines {
        for (state, n) in kv(s) {
            out.sample(
                "grm_kv_blocks",
                &[("role", role), ("state", state)],
                n as f64,
            );
        }
    }
    type Get = fn(&EngineStats) -> f64;
    let families: [(&str, &str, &str, Get); 9] = [
        (
            "grm_running_sequences",
            "gauge",
            "Sequences in the running batch.",
            |s| s.scheduler.running as f64,
        ),
        (
            "grm_waiting_sequences",
            "gauge",
            "Sequences waiting for admission.",
            |s| s.scheduler.waiting as f64,
        ),
        (
            "grm_queued_prompt_tokens",
            "gauge",
            "Prompt tokens the queued and running work still has to compute.",
            |s| s.scheduler.queued_tokens as f64,
        ),
        (
            "grm_engine_steps_total",
            "counter",
            "Engine steps (one batched forward pass each).",
            |s| s.scheduler.steps as f64,
        ),
        (
            "grm_engine_prompt_tokens_computed_total",
            "counter",
            "Prompt tokens computed (not served from cache).",
            |s| s.scheduler.prompt_tokens_computed as f64,
        ),
        (
            "grm_engine_generated_tokens_total",
            "counter",
            "Tokens generated.",
            |s| s.scheduler.generated_tokens as f64,
        ),
        (
            "grm_engine_preemptions_total",
            "counter",
            "Sequences preempted for lack of KV blocks (recomputed later).",
            |s| s.scheduler.preemptions as f64,
        ),
        (
            "grm_prefix_cache_lookups_total",
            "counter",
            "Prompt blocks looked up in the prefix cache.",
            |s| s.kv.prefix_lookups as f64,
        ),
        (
            "grm_prefix_cache_hits_total",
            "counter",
            "Prompt blocks found in the prefix cache.",
            |s| s.kv.prefix_hits as f64,
        ),
    ];
    for (name, kind, help, get) in families {
        out.family(name, kind, help);
        for (role, s) in engines {
            out.sample(name, &[("role", role)], get(s));
        }
    }
}

/// The gRPC name of a status code, as Prometheus label values usually carry it.
pub fn code_name(c: tonic::Code) -> String {
    use tonic::Code::*;
    match c {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
    .to_string()
}

/// What an aggregator counts: the Aggregate calls it answers, and its meta-RM calls.
pub struct AggregatorMetrics {
    /// Aggregate calls by gRPC status code name.
    requests: Mutex<BTreeMap<String, u64>>,
    duration: Histogram,
    /// Meta-RM calls by outcome ("ok", "retried", "failed").
    meta_calls: Mutex<BTreeMap<&'static str, u64>>,
    meta_texts: AtomicU64,
    /// Requests voted without the meta RM because it could not score them.
    meta_fallbacks: AtomicU64,
}

impl Default for AggregatorMetrics {
    fn default() -> Self {
        Self {
            requests: Mutex::default(),
            duration: Histogram::new(LATENCY_BOUNDS),
            meta_calls: Mutex::default(),
            meta_texts: AtomicU64::default(),
            meta_fallbacks: AtomicU64::default(),
        }
    }
}

impl AggregatorMetrics {
    /// Counts one Aggregate call.
    pub fn record(&self, code: tonic::Code, seconds: f64) {
        *self
            .requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(code_name(code))
            .or_default() += 1;
        self.duration.observe(seconds);
    }

    /// Counts one meta-RM call of `texts` judgements: "ok", "retried" (failed, sent to another
    /// worker) or "failed" (given up, or refused).
    pub fn meta_call(&self, outcome: &'static str, texts: usize) {
        *self
            .meta_calls
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(outcome)
            .or_default() += 1;
        if outcome == "ok" {
            self.meta_texts.fetch_add(texts as u64, Ordering::Relaxed);
        }
    }

    /// Counts one request voted without the meta RM, which failed.
    pub fn meta_fallback(&self) {
        self.meta_fallbacks.fetch_add(1, Ordering::Relaxed);
    }

    /// The scrape; `meta_workers`: live meta-RM workers as the aggregator sees them.
    pub fn render(&self, meta_workers: usize) -> String {
        let mut out = Exposition::default();
        out.family(
            "grm_aggregate_requests_total",
            "counter",
            "Aggregate calls answered, by gRPC status code.",
        );
        for (code, n) in self
            .requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            out.sample("grm_aggregate_requests_total", &[("code", code)], *n as f64);
        }
        self.duration.render(
            &mut out,
            "grm_aggregate_duration_seconds",
            "Time to aggregate one request (meta-RM scoring, filtering, voting).",
        );
        out.family(
            "grm_meta_rm_calls_total",
            "counter",
            "Calls to meta-RM workers, by outcome (ok, retried, failed).",
        );
        for (outcome, n) in self
            .meta_calls
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            out.sample(
                "grm_meta_rm_calls_total",
                &[("outcome", outcome)],
                *n as f64,
            );
        }
        out.single(
            "grm_meta_rm_scored_judgements_total",
            "counter",
            "Judgements scored by the meta RM.",
            self.meta_texts.load(Ordering::Relaxed) as f64,
        );
        out.single(
            "grm_aggregate_meta_fallbacks_total",
            "counter",
            "Requests voted over every valid judgement because the meta RM could not score them.",
            self.meta_fallbacks.load(Ordering::Relaxed) as f64,
        );
        out.family(
            "grm_workers_live",
            "gauge",
            "Live members by role, as this node sees them.",
        );
        out.sample(
            "grm_workers_live",
            &[("role", "meta-rm")],
            meta_workers as f64,
        );
        out.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_render_cumulative_buckets_sum_and_count() {
        let h = Histogram::new(&[1.0, 2.0]);
        for v in [0.5, 1.5, 1.5, 7.0] {
            h.observe(v);
        }
        let mut out = Exposition::default();
        h.render(&mut out, "x_seconds", "x");
        assert_eq!(
            out.finish(),
            "# HELP x_seconds x\n# TYPE x_seconds histogram\n\
             x_seconds_bucket{le=\"1\"} 1\nx_seconds_bucket{le=\"2\"} 3\n\
             x_seconds_bucket{le=\"+Inf\"} 4\nx_seconds_sum 10.5\nx_seconds_count 4\n"
        );
    }

    #[test]
    fn label_values_are_escaped() {
        let mut out = Exposition::default();
        out.sample("m", &[("a", "q\"b\\c\nd")], 1.0);
        assert_eq!(out.finish(), "m{a=\"q\\\"b\\\\c\\nd\"} 1\n");
    }
}
