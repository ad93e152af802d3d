//! Prometheus metrics through the Prometheus project's own Rust client (`prometheus-client`):
//! the router's and the aggregator's counters and histograms are registered once; an engine's
//! state is read at each scrape by a collector. A scrape answers OpenMetrics, with exemplars
//! (the trace id of a request on the latency histograms), to a scraper that asks for it
//! (`Accept: application/openmetrics-text`), and Prometheus text 0.0.4 otherwise.
//!
//! Names follow Prometheus conventions: the `grm_` prefix, base units in the name
//! (`_seconds`, `_tokens`), `_total` on counters (added by the client: counters are
//! registered without it).

use grm_engine::EngineStats;
use grm_proto::v1::{sample, ScoreResponse};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::exemplar::HistogramWithExemplars;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// A metric's labels.
type Labels = Vec<(String, String)>;

/// Registers `metric` with its HELP text; prometheus-client ends every registered HELP with a
/// period of its own, so the text's own last period is left to it (one period, not two).
fn register(
    r: &mut Registry,
    name: &str,
    help: &str,
    metric: impl prometheus_client::registry::Metric,
) {
    r.register(name, help.strip_suffix('.').unwrap_or(help), metric);
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The trace id of a request as an exemplar's labels.
fn exemplar(trace_id: Option<String>) -> Option<Labels> {
    trace_id.map(|id| vec![("trace_id".to_string(), id)])
}

const LATENCY_BOUNDS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];
/// The reward margin of the best response over the runner-up, per vote, in score points.
const MARGIN_BOUNDS: &[f64] = &[0.0, 0.5, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0];
const GROUP_SIZE_BOUNDS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0];

/// One scrape's answer.
pub struct Scrape {
    pub content_type: &'static str,
    pub body: String,
}

/// Whether a scraper's `Accept` header asks for OpenMetrics.
pub fn wants_openmetrics(accept: Option<&str>) -> bool {
    accept.is_some_and(|a| a.contains("application/openmetrics-text"))
}

/// Encodes registries as one scrape, in the format asked for.
pub fn encode(registries: &[&Registry], openmetrics: bool) -> Scrape {
    let mut body = String::new();
    for r in registries {
        let done = if openmetrics {
            prometheus_client::encoding::text::encode_registry(&mut body, r)
        } else {
            prometheus_client::encoding::prometheus_text::encode(&mut body, r)
        };
        // Writing to a String cannot fail.
        let _ = done;
    }
    if openmetrics {
        let _ = prometheus_client::encoding::text::encode_eof(&mut body);
        Scrape {
            content_type: "application/openmetrics-text; version=1.0.0; charset=utf-8",
            body,
        }
    } else {
        Scrape {
            content_type: prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
            body,
        }
    }
}

/// The live state a router sets before it is scraped.
pub struct RouterGauges {
    pub in_flight: usize,
    /// Live members as the router sees them: (GRM workers, meta-RM workers, aggregators).
    pub members: (usize, usize, usize),
    /// Groups whose members are arriving.
    pub groups_forming: usize,
}

/// What a router counts of the requests it scores.
pub struct RouterMetrics {
    registry: Registry,
    requests: Family<Labels, Counter>,
    duration: HistogramWithExemplars<Labels>,
    in_flight: Gauge,
    prompt_tokens: Counter,
    cached_prompt_tokens: Counter,
    generated_tokens: Counter,
    voted: Counter,
    invalid: Counter,
    invalid_by_reason: Family<Labels, Counter>,
    meta_filtered: Counter,
    meta_fallbacks: Counter,
    margin: Histogram,
    workers_live: Family<Labels, Gauge>,
    groups: Family<Labels, Counter>,
    group_size: Histogram,
    group_wait: Histogram,
    groups_forming: Gauge,
    groups_forwarded: Counter,
    group_refusals: Family<Labels, Counter>,
    adaptive: Family<Labels, Counter>,
    judgements_saved: Counter,
    openai_requests: Family<Labels, Counter>,
    openai_duration: Family<Labels, Histogram>,
    openai_tokens: Family<Labels, Counter>,
}

/// The /v1 API's endpoints, as the metrics label them.
pub const OPENAI_ENDPOINTS: [&str; 4] = ["chat_completions", "completions", "models", "rewards"];

impl Default for RouterMetrics {
    fn default() -> Self {
        let m = Self {
            registry: Registry::default(),
            requests: Family::default(),
            duration: HistogramWithExemplars::new(LATENCY_BOUNDS.iter().copied()),
            in_flight: Gauge::default(),
            prompt_tokens: Counter::default(),
            cached_prompt_tokens: Counter::default(),
            generated_tokens: Counter::default(),
            voted: Counter::default(),
            invalid: Counter::default(),
            invalid_by_reason: Family::default(),
            meta_filtered: Counter::default(),
            meta_fallbacks: Counter::default(),
            margin: Histogram::new(MARGIN_BOUNDS.iter().copied()),
            workers_live: Family::default(),
            groups: Family::default(),
            group_size: Histogram::new(GROUP_SIZE_BOUNDS.iter().copied()),
            group_wait: Histogram::new(LATENCY_BOUNDS.iter().copied()),
            groups_forming: Gauge::default(),
            groups_forwarded: Counter::default(),
            group_refusals: Family::default(),
            adaptive: Family::default(),
            judgements_saved: Counter::default(),
            openai_requests: Family::default(),
            openai_duration: Family::new_with_constructor(|| {
                Histogram::new(LATENCY_BOUNDS.iter().copied())
            }),
            openai_tokens: Family::default(),
        };
        let mut m = m;
        let r = &mut m.registry;
        register(r, "grm_score_requests", "Scoring requests answered (Score, each ScoreStream item, /get_reward batches), by gRPC status code.", m.requests.clone());
        register(r, "grm_score_request_duration_seconds", "Time to answer a scoring request, from validation to the vote (exemplars: the request's trace id).", m.duration.clone());
        register(
            r,
            "grm_score_requests_in_flight",
            "Scoring requests being served now (the router's queue; bounded by --max-inflight).",
            m.in_flight.clone(),
        );
        register(
            r,
            "grm_prompt_tokens",
            "Prompt tokens of the judgements generated (cached ones included).",
            m.prompt_tokens.clone(),
        );
        register(
            r,
            "grm_cached_prompt_tokens",
            "Prompt tokens served from shared or cached KV blocks.",
            m.cached_prompt_tokens.clone(),
        );
        register(
            r,
            "grm_generated_tokens",
            "Tokens generated in judgements.",
            m.generated_tokens.clone(),
        );
        register(
            r,
            "grm_judgements_voted",
            "Judgements whose scores were counted in a vote.",
            m.voted.clone(),
        );
        register(
            r,
            "grm_judgements_invalid",
            "Judgements that cast no vote (no well-formed scores).",
            m.invalid.clone(),
        );
        register(
            r,
            "grm_judgements_invalid_by_reason",
            "Invalid judgements by reason (counted where samples are returned).",
            m.invalid_by_reason.clone(),
        );
        register(r, "grm_judgements_meta_filtered", "Valid judgements the meta RM left out of the vote (counted where samples are returned).", m.meta_filtered.clone());
        register(r, "grm_meta_fallbacks", "Requests answered by plain voting because the meta RM could not score their judgements.", m.meta_fallbacks.clone());
        register(
            r,
            "grm_vote_margin",
            "Reward of the best response minus the runner-up's, per vote, in score points.",
            m.margin.clone(),
        );
        register(
            r,
            "grm_workers_live",
            "Live members by role, as this router sees them.",
            m.workers_live.clone(),
        );
        register(r, "grm_groups", "Groups of members (trainers' one-sample calls) judged together, by outcome: complete, partial (the wait ended first), refused (--max-groups).", m.groups.clone());
        register(
            r,
            "grm_group_size",
            "Distinct responses judged together per group.",
            m.group_size.clone(),
        );
        register(
            r,
            "grm_group_wait_seconds",
            "From a group's first member to its judgement.",
            m.group_wait.clone(),
        );
        register(
            r,
            "grm_groups_forming",
            "Groups whose members are arriving now.",
            m.groups_forming.clone(),
        );
        register(
            r,
            "grm_group_members_forwarded",
            "Group members sent on to the router that owns their group.",
            m.groups_forwarded.clone(),
        );
        register(r,
            "grm_group_members_refused",
            "Group members refused at join, by reason: groups (--max-groups), caller_groups (--max-groups-per-caller), caller_bytes (--max-group-bytes-per-caller), unlike (differs from its group).",
            m.group_refusals.clone(),
        );
        register(
            r,
            "grm_adaptive_requests",
            "Adaptive-k requests, by whether sampling stopped before k (early) or ran to k (at_k).",
            m.adaptive.clone(),
        );
        register(
            r,
            "grm_judgements_saved",
            "Judgements adaptive sampling did not draw (k minus those drawn).",
            m.judgements_saved.clone(),
        );
        register(
            r,
            "grm_openai_requests",
            "Requests to the /v1 API, by endpoint (chat_completions, completions, models, rewards) and HTTP status.",
            m.openai_requests.clone(),
        );
        register(
            r,
            "grm_openai_request_duration_seconds",
            "Time to answer a /v1 request (a stream: until its last event), by endpoint.",
            m.openai_duration.clone(),
        );
        register(
            r,
            "grm_openai_tokens",
            "Tokens of /v1 generations, by kind: prompt, cached_prompt (of the prompt, not computed), completion.",
            m.openai_tokens.clone(),
        );
        // Every known label value at zero from the start, so that a fresh cluster's dashboard
        // panels show 0, not "No data".
        let zero = |f: &Family<Labels, Counter>, key: &str, values: &[&str]| {
            for v in values {
                let _ = f.get_or_create(&labels(&[(key, v)]));
            }
        };
        zero(&m.groups, "outcome", &["complete", "partial", "refused"]);
        zero(
            &m.group_refusals,
            "reason",
            &["groups", "caller_groups", "caller_bytes", "unlike"],
        );
        zero(&m.adaptive, "stopped", &["early", "at_k"]);
        for e in OPENAI_ENDPOINTS {
            let _ = m
                .openai_requests
                .get_or_create(&labels(&[("endpoint", e), ("code", "200")]));
        }
        zero(
            &m.openai_tokens,
            "kind",
            &["prompt", "cached_prompt", "completion"],
        );
        zero(&m.invalid_by_reason, "reason", &grm_judge::Invalid::CODES);
        m
    }
}

impl RouterMetrics {
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Sets the live gauges, before a scrape.
    pub fn set_gauges(&self, g: &RouterGauges) {
        self.in_flight.set(g.in_flight as i64);
        self.groups_forming.set(g.groups_forming as i64);
        let (grm, meta, agg) = g.members;
        for (role, n) in [("grm", grm), ("meta-rm", meta), ("aggregator", agg)] {
            self.workers_live
                .get_or_create(&labels(&[("role", role)]))
                .set(n as i64);
        }
    }

    /// Counts one scored request: its outcome (`Ok` answer or the status code), its duration
    /// and, when the request is traced, its trace id as the duration's exemplar.
    pub fn record(
        &self,
        outcome: Result<&ScoreResponse, tonic::Code>,
        seconds: f64,
        trace_id: Option<String>,
    ) {
        let code = match outcome {
            Ok(_) => tonic::Code::Ok,
            Err(c) => c,
        };
        self.requests
            .get_or_create(&labels(&[("code", &code_name(code))]))
            .inc();
        self.duration.observe(seconds, exemplar(trace_id), None);
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
    pub fn group_judged(&self, outcome: &str, size: usize, waited: std::time::Duration) {
        self.group_outcome(outcome);
        self.group_size.observe(size as f64);
        self.group_wait.observe(waited.as_secs_f64());
    }

    /// Counts a group outcome (complete, partial, refused).
    pub fn group_outcome(&self, outcome: &str) {
        self.groups
            .get_or_create(&labels(&[("outcome", outcome)]))
            .inc();
    }

    /// Counts a member refused at join (a refused outcome of `grm_groups` too).
    pub fn group_refused(&self, reason: &str) {
        self.group_outcome("refused");
        self.group_refusals
            .get_or_create(&labels(&[("reason", reason)]))
            .inc();
    }

    /// Counts one /v1 request: its endpoint, HTTP status and duration (for a stream, until
    /// its last event).
    pub fn openai(&self, endpoint: &str, status: u16, seconds: f64) {
        let code = status.to_string();
        self.openai_requests
            .get_or_create(&labels(&[("endpoint", endpoint), ("code", &code)]))
            .inc();
        self.openai_duration
            .get_or_create(&labels(&[("endpoint", endpoint)]))
            .observe(seconds);
    }

    /// Counts a /v1 generation's tokens.
    pub fn openai_tokens(&self, prompt: u64, cached: u64, completion: u64) {
        for (kind, n) in [
            ("prompt", prompt),
            ("cached_prompt", cached),
            ("completion", completion),
        ] {
            self.openai_tokens
                .get_or_create(&labels(&[("kind", kind)]))
                .inc_by(n);
        }
    }

    /// Counts a member sent on to the router that owns its group.
    pub fn group_forwarded(&self) {
        self.groups_forwarded.inc();
    }

    /// Counts an adaptive request that drew `used` of its `k` judgements.
    pub fn adaptive(&self, k: usize, used: usize) {
        let outcome = if used < k { "early" } else { "at_k" };
        self.adaptive
            .get_or_create(&labels(&[("stopped", outcome)]))
            .inc();
        self.judgements_saved.inc_by(k.saturating_sub(used) as u64);
    }

    fn record_judged(&self, r: &ScoreResponse) {
        if let Some(u) = &r.usage {
            self.prompt_tokens.inc_by(u.prompt_tokens);
            self.cached_prompt_tokens.inc_by(u.cached_prompt_tokens);
            self.generated_tokens.inc_by(u.generated_tokens);
        }
        self.voted.inc_by(u64::from(r.valid_samples));
        self.invalid.inc_by(u64::from(r.invalid_samples));
        if !r.meta_fallback.is_empty() {
            self.meta_fallbacks.inc();
        }
        let mut filtered = 0;
        for s in &r.samples {
            match &s.outcome {
                Some(sample::Outcome::Invalid(i)) => {
                    self.invalid_by_reason
                        .get_or_create(&labels(&[("reason", &i.code)]))
                        .inc();
                }
                Some(sample::Outcome::Scores(_)) if !s.kept => filtered += 1,
                _ => {}
            }
        }
        self.meta_filtered.inc_by(filtered);
        if r.valid_samples > 0 && r.rewards.len() >= 2 {
            let mut rewards: Vec<f64> = r.rewards.iter().map(|x| f64::from(x.reward)).collect();
            rewards.sort_by(|a, b| b.total_cmp(a));
            let per_vote = f64::from(r.valid_samples);
            self.margin.observe((rewards[0] - rewards[1]) / per_vote);
        }
    }
}

/// Engines' state and counters, read at each scrape, labelled with the worker's role (`grm`,
/// `meta-rm`).
#[derive(Debug)]
pub struct EngineCollector {
    pub engines: Vec<(&'static str, EngineStats)>,
}

/// The registry of engines' metrics for one scrape.
pub fn engine_registry(engines: Vec<(&'static str, EngineStats)>) -> Registry {
    let mut r = Registry::default();
    r.register_collector(Box::new(EngineCollector { engines }));
    r
}

impl Collector for EngineCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        {
            let gauge = ConstGauge::new(0i64);
            let mut family = encoder.encode_descriptor(
                "grm_kv_blocks",
                "KV cache blocks by state (shared: referenced by more than one sequence; cached: in the prefix cache).",
                None,
                gauge.metric_type(),
            )?;
            for (role, s) in &self.engines {
                for (state, n) in [
                    ("total", s.kv.blocks_total),
                    ("used", s.kv.blocks_used),
                    ("shared", s.kv.blocks_shared),
                    ("cached", s.kv.blocks_cached),
                    ("free", s.kv.blocks_free),
                ] {
                    let l = labels(&[("role", role), ("state", state)]);
                    ConstGauge::new(n as i64).encode(family.encode_family(&l)?)?;
                }
            }
        }
        type Get = fn(&EngineStats) -> u64;
        let gauges: [(&str, &str, Get); 3] = [
            (
                "grm_running_sequences",
                "Sequences in the running batch.",
                |s| s.scheduler.running as u64,
            ),
            (
                "grm_waiting_sequences",
                "Sequences waiting for admission.",
                |s| s.scheduler.waiting as u64,
            ),
            (
                "grm_queued_prompt_tokens",
                "Prompt tokens the queued and running work still has to compute.",
                |s| s.scheduler.queued_tokens as u64,
            ),
        ];
        for (name, help, get) in gauges {
            let mut family =
                encoder.encode_descriptor(name, help, None, ConstGauge::new(0i64).metric_type())?;
            for (role, s) in &self.engines {
                ConstGauge::new(get(s) as i64)
                    .encode(family.encode_family(&labels(&[("role", role)]))?)?;
            }
        }
        let counters: [(&str, &str, Get); 6] = [
            (
                "grm_engine_steps",
                "Engine steps (one batched forward pass each).",
                |s| s.scheduler.steps,
            ),
            (
                "grm_engine_prompt_tokens_computed",
                "Prompt tokens computed (not served from cache).",
                |s| s.scheduler.prompt_tokens_computed,
            ),
            ("grm_engine_generated_tokens", "Tokens generated.", |s| {
                s.scheduler.generated_tokens
            }),
            (
                "grm_engine_preemptions",
                "Sequences preempted for lack of KV blocks (recomputed later).",
                |s| s.scheduler.preemptions,
            ),
            (
                "grm_prefix_cache_lookups",
                "Prompt blocks looked up in the prefix cache.",
                |s| s.kv.prefix_lookups,
            ),
            (
                "grm_prefix_cache_hits",
                "Prompt blocks found in the prefix cache.",
                |s| s.kv.prefix_hits,
            ),
        ];
        for (name, help, get) in counters {
            let mut family = encoder.encode_descriptor(
                name,
                help,
                None,
                ConstCounter::new(0u64).metric_type(),
            )?;
            for (role, s) in &self.engines {
                ConstCounter::new(get(s))
                    .encode(family.encode_family(&labels(&[("role", role)]))?)?;
            }
        }
        Ok(())
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
    registry: Registry,
    requests: Family<Labels, Counter>,
    duration: HistogramWithExemplars<Labels>,
    meta_calls: Family<Labels, Counter>,
    meta_texts: Counter,
    meta_fallbacks: Counter,
    workers_live: Family<Labels, Gauge>,
}

impl Default for AggregatorMetrics {
    fn default() -> Self {
        let mut m = Self {
            registry: Registry::default(),
            requests: Family::default(),
            duration: HistogramWithExemplars::new(LATENCY_BOUNDS.iter().copied()),
            meta_calls: Family::default(),
            meta_texts: Counter::default(),
            meta_fallbacks: Counter::default(),
            workers_live: Family::default(),
        };
        let r = &mut m.registry;
        register(
            r,
            "grm_aggregate_requests",
            "Aggregate calls answered, by gRPC status code.",
            m.requests.clone(),
        );
        register(r, "grm_aggregate_duration_seconds", "Time to aggregate one request (meta-RM scoring, filtering, voting; exemplars: the request's trace id).", m.duration.clone());
        register(
            r,
            "grm_meta_rm_calls",
            "Calls to meta-RM workers, by outcome (ok, retried, failed).",
            m.meta_calls.clone(),
        );
        register(
            r,
            "grm_meta_rm_scored_judgements",
            "Judgements scored by the meta RM.",
            m.meta_texts.clone(),
        );
        register(
            r,
            "grm_aggregate_meta_fallbacks",
            "Requests voted over every valid judgement because the meta RM could not score them.",
            m.meta_fallbacks.clone(),
        );
        register(
            r,
            "grm_workers_live",
            "Live members by role, as this node sees them.",
            m.workers_live.clone(),
        );
        // Known outcomes at zero from the start (see RouterMetrics).
        for outcome in ["ok", "retried", "failed"] {
            let _ = m.meta_calls.get_or_create(&labels(&[("outcome", outcome)]));
        }
        m
    }
}

impl AggregatorMetrics {
    /// Counts one Aggregate call.
    pub fn record(&self, code: tonic::Code, seconds: f64, trace_id: Option<String>) {
        self.requests
            .get_or_create(&labels(&[("code", &code_name(code))]))
            .inc();
        self.duration.observe(seconds, exemplar(trace_id), None);
    }

    /// Counts one meta-RM call of `texts` judgements: "ok", "retried" (failed, sent to another
    /// worker) or "failed" (given up, or refused).
    pub fn meta_call(&self, outcome: &str, texts: usize) {
        self.meta_calls
            .get_or_create(&labels(&[("outcome", outcome)]))
            .inc();
        if outcome == "ok" {
            self.meta_texts.inc_by(texts as u64);
        }
    }

    /// Counts one request voted without the meta RM, which failed.
    pub fn meta_fallback(&self) {
        self.meta_fallbacks.inc();
    }

    /// The scrape; `meta_workers`: live meta-RM workers as the aggregator sees them.
    pub fn scrape(&self, meta_workers: usize, openmetrics: bool) -> Scrape {
        self.workers_live
            .get_or_create(&labels(&[("role", "meta-rm")]))
            .set(meta_workers as i64);
        encode(&[&self.registry], openmetrics)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_formats_carry_the_same_series_and_openmetrics_the_exemplars() {
        let m = RouterMetrics::default();
        let ok = ScoreResponse::default();
        m.record(
            Ok(&ok),
            0.3,
            Some("4bf92f3577b34da6a3ce929d0e0e4736".into()),
        );
        m.record(Err(tonic::Code::InvalidArgument), 0.001, None);
        m.set_gauges(&RouterGauges {
            in_flight: 2,
            members: (3, 1, 0),
            groups_forming: 0,
        });
        let text = encode(&[m.registry()], false);
        assert_eq!(
            text.content_type,
            "text/plain; version=0.0.4; charset=utf-8"
        );
        for series in [
            "grm_score_requests_total{code=\"OK\"} 1",
            "grm_score_requests_total{code=\"INVALID_ARGUMENT\"} 1",
            "grm_score_request_duration_seconds_bucket{le=\"0.5\"} 2",
            "grm_score_request_duration_seconds_count 2",
            "grm_score_requests_in_flight 2",
            "grm_workers_live{role=\"grm\"} 3",
        ] {
            assert!(
                text.body.lines().any(|l| l == series),
                "{series} in\n{}",
                text.body
            );
        }
        assert!(
            !text.body.contains("trace_id"),
            "no exemplars in Prometheus text"
        );
        let om = encode(&[m.registry()], true);
        assert!(om.content_type.starts_with("application/openmetrics-text"));
        assert!(om.body.ends_with("# EOF\n"));
        let bucket = om
            .body
            .lines()
            .find(|l| l.starts_with("grm_score_request_duration_seconds_bucket{le=\"0.5\"}"))
            .unwrap();
        assert!(
            bucket.contains("# {trace_id=\"4bf92f3577b34da6a3ce929d0e0e4736\"} 0.3"),
            "{bucket}"
        );
        assert!(wants_openmetrics(Some(
            "application/openmetrics-text;version=1.0.0,text/plain;q=0.5"
        )));
        assert!(!wants_openmetrics(Some("text/plain")) && !wants_openmetrics(None));
    }

    #[test]
    fn engines_are_read_at_scrape_time() {
        let mut s = EngineStats::default();
        s.kv.blocks_total = 64;
        s.scheduler.generated_tokens = 7;
        let r = engine_registry(vec![("grm", s)]);
        let text = encode(&[&r], false).body;
        assert!(
            text.contains("grm_kv_blocks{role=\"grm\",state=\"total\"} 64"),
            "{text}"
        );
        assert!(
            text.contains("grm_engine_generated_tokens_total{role=\"grm\"} 7"),
            "{text}"
        );
    }
}
