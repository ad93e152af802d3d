//! The aggregator role: a request's k judgements in, its answer out. Extraction, meta-RM
//! scores (from the meta-RM workers), top-k_meta filtering and voting are grm-judge's; this
//! layer fetches the meta scores and writes the ScoreResponse.

use crate::metrics::AggregatorMetrics;
use crate::pool::{Pool, MAX_MESSAGE_BYTES};
use crate::validation::parse_input;
use grm_judge::judgement::JudgementOutcome;
use grm_judge::{aggregate, default_k_meta, Judgement as JJudgement, Template};
use grm_proto::v1::aggregator_service_server::AggregatorService;
use grm_proto::v1::worker_service_client::WorkerServiceClient;
use grm_proto::v1::{
    sample, AggregateRequest, InvalidJudgement, ResponseReward, Sample, ScoreResponse,
    ScoreTextsRequest, Scores, Timings, Usage,
};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tonic::{Request, Response, Status};
use tracing::{warn, Instrument};

/// How long a request that the router meta-filters waits for a meta-RM worker to appear in
/// this aggregator's membership (a watch that lags the router's, a member re-registering
/// after its lease lapsed) before it is voted without one.
pub const META_MEMBERSHIP_WAIT: Duration = Duration::from_secs(3);

#[derive(Clone)]
pub struct Aggregator {
    template: Arc<Template>,
    meta: Option<Arc<Pool>>,
    /// Texts per meta-RM call.
    meta_batch: usize,
    metrics: Arc<AggregatorMetrics>,
}

impl Aggregator {
    /// `meta`: the meta-RM workers, if the cluster has any.
    pub fn new(template: Arc<Template>, meta: Option<Arc<Pool>>) -> Self {
        Self {
            template,
            meta,
            meta_batch: 16,
            metrics: Arc::default(),
        }
    }

    /// Its Prometheus scrape (`/metrics` on `grm aggregator --metrics-listen`).
    pub fn scrape(&self, openmetrics: bool) -> crate::metrics::Scrape {
        let live = self.meta.as_ref().map_or(0, |p| p.peers().len());
        self.metrics.scrape(live, openmetrics)
    }

    pub fn meta_pool(&self) -> Option<&Arc<Pool>> {
        self.meta.as_ref()
    }

    /// Whether any meta-RM worker is live in this aggregator's view.
    pub fn has_meta(&self) -> bool {
        self.meta.as_ref().is_some_and(|p| !p.peers().is_empty())
    }

    /// Waits up to [`META_MEMBERSHIP_WAIT`] for a meta-RM worker to join this aggregator's
    /// view; whether one did.
    async fn await_meta(&self) -> bool {
        match &self.meta {
            Some(p) => p.await_member(META_MEMBERSHIP_WAIT).await,
            None => false,
        }
    }

    /// Aggregates one request.
    pub async fn aggregate(&self, req: AggregateRequest) -> Result<ScoreResponse, Status> {
        let id = req.request.as_ref().map_or("", |r| r.id.as_str());
        let span = tracing::info_span!("grm.aggregate", request_id = %id);
        self.aggregate_in(req).instrument(span).await
    }

    async fn aggregate_in(&self, req: AggregateRequest) -> Result<ScoreResponse, Status> {
        let request = req
            .request
            .ok_or_else(|| Status::invalid_argument("request is missing"))?;
        let (input, label) = parse_input(&request)?;
        let n = input.responses.len();
        let k = req.judgements.len();
        if k == 0 {
            return Err(Status::invalid_argument("judgements is empty"));
        }
        let asked = request
            .sampling
            .as_ref()
            .and_then(|s| s.k_meta)
            .map(|m| m as usize);
        // A k_meta in the request is the router's decision (it saw a meta-RM worker, or the
        // caller asked and the router checked): this aggregator's view of the membership may
        // lag the router's, so it waits a moment for a meta-RM worker before it gives up.
        let has_meta = match asked {
            Some(m) if m < k && !self.has_meta() => self.await_meta().await,
            _ => self.has_meta(),
        };
        let mut meta_fallback = String::new();
        let k_meta = match (asked, has_meta) {
            (Some(m), true) => Some(m),
            (None, true) => Some(default_k_meta(k)),
            (Some(m), false) if m < k => {
                warn!(request = request.id, "no meta-RM worker in this aggregator's membership; voting over every valid judgement");
                self.metrics.meta_fallback();
                meta_fallback = format!(
                    "sampling.k_meta is {m}, and no meta-RM worker was in this aggregator's membership within {} ms; plain voting over every valid judgement",
                    META_MEMBERSHIP_WAIT.as_millis()
                );
                None
            }
            (_, false) => None,
        };
        let mut judgements: Vec<JJudgement> = Vec::with_capacity(k);
        for (i, j) in req.judgements.iter().enumerate() {
            let order: Vec<usize> = j.order.iter().map(|&o| o as usize).collect();
            let mut sorted = order.clone();
            sorted.sort_unstable();
            if sorted != (0..n).collect::<Vec<_>>() {
                return Err(Status::invalid_argument(format!(
                    "judgements[{i}].order is not a permutation of 0..{n}"
                )));
            }
            judgements.push(JJudgement {
                text: j.text.clone(),
                order,
                // Known already (adaptive sampling scores each wave once): not scored again.
                meta_score: j.meta_score.filter(|_| k_meta.is_some()),
            });
        }
        let mut meta_tokens = 0;
        let mut meta_ms = 0.0;
        let mut k_meta = k_meta;
        if k_meta.is_some() {
            let t = Instant::now();
            match self
                .meta_scores(&request.id, &input, &mut judgements, n)
                .await
            {
                Ok(tokens) => meta_tokens = tokens,
                // The k judgements are generated and paid for: a meta RM that cannot score
                // them costs the filter, not the answer. Plain voting, and the answer says so.
                Err(s) => {
                    warn!(request = request.id, error = %s, "meta-RM scoring failed; voting over every valid judgement");
                    self.metrics.meta_fallback();
                    for j in &mut judgements {
                        j.meta_score = None;
                    }
                    k_meta = None;
                    meta_fallback = format!(
                        "the meta RM could not score the judgements ({}: {}); plain voting over every valid judgement",
                        crate::metrics::code_name(s.code()),
                        s.message()
                    );
                }
            }
            meta_ms = t.elapsed().as_secs_f64() * 1e3;
        }
        let agg = aggregate(&judgements, n, k_meta, req.seed, label.as_ref())
            .map_err(|e| Status::internal(e.to_string()))?;
        let v = &agg.vote;
        let invalid = agg
            .samples
            .iter()
            .filter(|s| s.outcome.original().is_none())
            .count();
        let samples = if request.return_samples {
            agg.samples
                .iter()
                .zip(&req.judgements)
                .zip(&judgements)
                .map(|((verdict, j), jj)| Sample {
                    index: j.index,
                    text: j.text.clone(),
                    order: j.order.clone(),
                    outcome: Some(match &verdict.outcome {
                        JudgementOutcome::Valid { shown, original } => {
                            sample::Outcome::Scores(Scores {
                                shown: shown.iter().map(|&s| u32::from(s)).collect(),
                                original: original.iter().map(|&s| u32::from(s)).collect(),
                            })
                        }
                        JudgementOutcome::Invalid(r) => {
                            sample::Outcome::Invalid(InvalidJudgement {
                                code: r.code().into(),
                                message: r.to_string(),
                            })
                        }
                    }),
                    meta_score: jj.meta_score,
                    kept: verdict.kept,
                    correct: verdict.correct,
                    generated_tokens: j.generated_tokens,
                    finish_reason: j.finish_reason.clone(),
                    worker: j.worker.clone(),
                })
                .collect()
        } else {
            Vec::new()
        };
        let mut usage = req.usage.unwrap_or_default();
        usage.meta_tokens += meta_tokens;
        usage.generated_tokens = req
            .judgements
            .iter()
            .map(|j| u64::from(j.generated_tokens))
            .sum();
        let mut timings = req.timings.unwrap_or_default();
        timings.meta_ms += meta_ms;
        Ok(ScoreResponse {
            id: request.id.clone(),
            rewards: (0..n)
                .map(|i| ResponseReward {
                    reward: v.rewards[i],
                    mean_score: v.means[i],
                    votes: v.votes,
                })
                .collect(),
            best: v.best.map(|b| b as u32),
            tie: v.tie,
            valid_samples: v.votes,
            invalid_samples: invalid as u32,
            correct: agg.correct,
            samples,
            usage: Some(usage),
            timings: Some(timings),
            seed: req.seed,
            k_meta: k_meta.unwrap_or(0) as u32,
            model: request.model.clone(),
            error: None,
            meta_fallback,
            group: None,
            samples_used: k as u32,
        })
    }

    /// Asks the meta-RM workers for a score of every valid judgement; returns tokens read.
    async fn meta_scores(
        &self,
        request_id: &str,
        input: &grm_judge::JudgeInput,
        js: &mut [JJudgement],
        n: usize,
    ) -> Result<u64, Status> {
        let pool = self
            .meta
            .as_ref()
            .ok_or_else(|| Status::failed_precondition("no meta-RM worker"))?;
        let wanted: Vec<usize> = (0..js.len())
            .filter(|&i| {
                js[i].meta_score.is_none() && grm_judge::extract_scores(&js[i].text, n).is_ok()
            })
            .collect();
        let marked: Vec<grm_judge::Marked> = wanted
            .iter()
            .map(|&i| {
                self.template
                    .meta_input_marked(input, &js[i].order, &js[i].text)
            })
            .collect();
        let mut tokens = 0;
        let calls = marked.chunks(self.meta_batch).zip(wanted.chunks(self.meta_batch)).map(|(batch, idx)| {
            // One span per meta-RM call, parent of the meta-RM worker's span.
            let span = tracing::info_span!("grm.meta_rm", texts = batch.len());
            async move {
            let mut tried = Vec::new();
            let mut last = String::new();
            for _ in 0..3 {
                let Some(peer) = pool.least_loaded(&tried).or_else(|| pool.least_loaded(&[])) else {
                    return Err(Status::unavailable("no meta-RM worker is live"));
                };
                let _g = peer.hold(batch.len());
                let mut client = WorkerServiceClient::new(peer.channel.clone()).max_decoding_message_size(MAX_MESSAGE_BYTES);
                let mut r = Request::new(ScoreTextsRequest {
                    request_id: request_id.to_string(),
                    texts: batch.iter().map(|m| m.text.clone()).collect(),
                    client_text: batch.iter().map(|m| grm_proto::v1::ClientText { bounds: m.bounds() }).collect(),
                });
                crate::trace_context::inject(&tracing::Span::current(), r.metadata_mut());
                r.set_timeout(Duration::from_secs(120));
                match client.score_texts(r).await {
                    Ok(resp) => {
                        self.metrics.meta_call("ok", batch.len());
                        return Ok((idx, resp.into_inner()));
                    }
                    Err(s) if s.code() == tonic::Code::InvalidArgument => {
                        self.metrics.meta_call("failed", batch.len());
                        return Err(s);
                    }
                    Err(s) => {
                        self.metrics.meta_call("retried", batch.len());
                        warn!(worker = peer.addr, error = %s, "meta-RM call failed; trying another worker");
                        peer.mark_down(Duration::from_secs(5));
                        tried.push(peer.addr.clone());
                        last = s.to_string();
                    }
                }
            }
            self.metrics.meta_call("failed", batch.len());
            Err(Status::unavailable(format!("meta-RM scoring failed on every worker tried: {last}")))
            }
            .instrument(span)
        });
        for (idx, resp) in futures::future::try_join_all(calls).await? {
            if resp.scores.len() != idx.len() {
                return Err(Status::internal(
                    "a meta-RM worker returned the wrong number of scores",
                ));
            }
            for (&i, &s) in idx.iter().zip(&resp.scores) {
                js[i].meta_score = Some(s);
            }
            tokens += resp.tokens;
        }
        Ok(tokens)
    }
}

#[tonic::async_trait]
impl AggregatorService for Aggregator {
    async fn aggregate(
        &self,
        request: Request<AggregateRequest>,
    ) -> Result<Response<ScoreResponse>, Status> {
        let span = crate::trace_context::continue_from(
            request.metadata(),
            tracing::info_span!("grm.rpc.Aggregate", trace_id = tracing::field::Empty),
        );
        let start = Instant::now();
        let trace_id = crate::trace_context::trace_id(&span);
        let r = Aggregator::aggregate(self, request.into_inner())
            .instrument(span)
            .await;
        self.metrics.record(
            r.as_ref().map_or_else(Status::code, |_| tonic::Code::Ok),
            start.elapsed().as_secs_f64(),
            trace_id,
        );
        let r = r?;
        tracing::info!(
            id = r.id,
            votes = r.valid_samples,
            k_meta = r.k_meta,
            "aggregated"
        );
        Ok(Response::new(r))
    }
}

/// Zeroed usage and timings, for building an AggregateRequest.
pub fn usage(prompt_tokens: u64, cached: u64) -> Usage {
    Usage {
        prompt_tokens,
        cached_prompt_tokens: cached,
        ..Default::default()
    }
}

pub fn timings(queue_ms: f64, generate_ms: f64) -> Timings {
    Timings {
        queue_ms,
        generate_ms,
        ..Default::default()
    }
}
