//! Adaptive k on the router: a request's judgements are sampled in waves, and sampling stops
//! once grm-judge's stopping rule holds (`grm_judge::adaptive`). Without a meta RM judgements
//! are weighed in index order as they arrive — the rule sees samples 0..j only once all of
//! them are in, and is tried at every j — and once it holds at some j the rest of the wave is
//! cancelled (the workers free the blocks at once) and judgements past j that finished early
//! are dropped; with a meta RM, each wave's judgements are meta-scored once at its end and the
//! rule is tried there. Samples keep their indices, seeds and orders, so the judgements used
//! are exactly samples 0..j of a fixed-k request with the same seed, and j does not depend on
//! which sample finished first: the same seed gives the same rewards run to run.

use crate::dispatch::{self, Generated, Outcome, Work};
use crate::router::Router;
use crate::validation::Valid;
use grm_judge::adaptive::{settled, Plan, Rule, Seen};
use grm_proto::v1::{AggregateRequest, Judgement, ScoreRequest};
use std::sync::Mutex;
use std::time::Instant;
use tonic::Status;

/// How a judgement counts for the stopping rule: its scores in the original order (None when
/// invalid).
fn seen_of(text: &str, order: &[usize], n: usize) -> Seen {
    Seen {
        ballot: grm_judge::extract_scores(text, n)
            .ok()
            .map(|shown| grm_judge::to_original(order, &shown)),
        meta: None,
    }
}

impl Router {
    /// Samples `work`'s judgements in waves until `rule` holds or all k are drawn. Returns the
    /// outcome (judgements not drawn are None) and each judgement's meta score when known.
    pub(crate) async fn sample_adaptive(
        &self,
        v: &Valid,
        req: &ScoreRequest,
        work: Work<'_>,
        orders: &[Vec<usize>],
        rule: Rule,
        first_wave: usize,
    ) -> Result<(Outcome, Vec<Option<f32>>), Status> {
        let me = &self.inner;
        let (n, k) = (v.input.responses.len(), v.k);
        let meta = me.local.has_meta();
        let k_meta = meta.then(|| v.k_meta.unwrap_or_else(|| grm_judge::default_k_meta(k)));
        let mut plan = Plan {
            n,
            k,
            k_meta,
            seed: v.seed,
        };
        // Enough to keep every worker busy with a full chunk, at least 4.
        let wave = match first_wave {
            0 => (me.grm.peers().len().max(1) * me.opts.dispatch.policy.max_samples).max(4),
            w => w,
        }
        .min(k);
        let start = Instant::now();
        let mut total = Outcome {
            judgements: vec![None; k],
            ..Default::default()
        };
        let mut metas: Vec<Option<f32>> = vec![None; k];
        // The judgements weighed so far, by sample index; and where the rule first held.
        let seen: Mutex<Vec<Option<Seen>>> = Mutex::new(vec![None; k]);
        let settled_at: Mutex<Option<usize>> = Mutex::new(None);
        // The longest run of samples from 0 that the rule has been tried on.
        let tried = Mutex::new(0usize);
        let mut from = 0;
        while from < k {
            let to = (from + wave).min(k);
            // The wave's samples, with their own prompts (indices local to the wave).
            let mut used: Vec<usize> = Vec::new();
            let prompt_of: Vec<usize> = (from..to)
                .map(|s| {
                    let p = work.prompt_of[s];
                    used.iter().position(|&u| u == p).unwrap_or_else(|| {
                        used.push(p);
                        used.len() - 1
                    })
                })
                .collect();
            let prompts: Vec<dispatch::Prompt> =
                used.iter().map(|&p| work.prompts[p].clone()).collect();
            let seeds = work.seeds[from..to].to_vec();
            // Without a meta RM, weigh the judgements in index order as they arrive.
            let weigh = |local: usize, g: &Generated| -> bool {
                let s = from + local;
                let mut all = seen.lock().unwrap_or_else(|e| e.into_inner());
                all[s] = Some(seen_of(&g.text, &orders[s], n));
                if plan.k_meta.is_some() {
                    return false;
                }
                let mut at = settled_at.lock().unwrap_or_else(|e| e.into_inner());
                if at.is_some() {
                    return true;
                }
                let run: Vec<Seen> = all.iter().map_while(Clone::clone).collect();
                let mut tried = tried.lock().unwrap_or_else(|e| e.into_inner());
                for j in (*tried + 1)..=run.len() {
                    *tried = j;
                    if settled(rule, &run[..j], &plan) {
                        *at = Some(j);
                        return true;
                    }
                }
                false
            };
            let wave_work = Work {
                request_id: work.request_id,
                prompts: &prompts,
                prompt_of: &prompt_of,
                seeds: &seeds,
                sampling: work.sampling,
                affinity: work.affinity,
                deadline: work.deadline,
                on_judgement: Some(&weigh),
                generation: None,
            };
            let out = dispatch::generate(&me.grm, wave_work, &me.opts.dispatch).await?;
            if from == 0 {
                total.queue_ms = out.queue_ms;
            }
            total.prompt_tokens += out.prompt_tokens;
            total.cached_prompt_tokens += out.cached_prompt_tokens;
            total.retries += out.retries;
            for (local, g) in out.judgements.into_iter().enumerate() {
                total.judgements[from + local] = g;
            }
            if plan.k_meta.is_some() {
                if let Err(why) = self
                    .meta_score_wave(v, req, &total, orders, &mut metas)
                    .await
                {
                    // The meta RM cannot score: go on (and answer) with plain voting.
                    tracing::warn!(request = v.id, error = %why, "meta-RM scoring failed during adaptive sampling; plain voting");
                    plan.k_meta = None;
                }
            }
            let mut all = seen.lock().unwrap_or_else(|e| e.into_inner());
            for (s, m) in metas.iter().enumerate() {
                if let Some(x) = all[s].as_mut() {
                    x.meta = *m;
                }
            }
            let now: Vec<Seen> = all.iter().map_while(Clone::clone).collect();
            drop(all);
            let stop = settled_at.lock().unwrap_or_else(|e| e.into_inner()).take();
            if let Some(j) = stop {
                // Samples 0..j settled it: those past j that finished early are not used.
                for s in j..k {
                    total.judgements[s] = None;
                    metas[s] = None;
                }
                break;
            }
            if settled(rule, &now, &plan) {
                break;
            }
            from = to;
        }
        total.generate_ms = start.elapsed().as_secs_f64() * 1e3;
        let used = total.judgements.iter().filter(|j| j.is_some()).count();
        me.metrics.adaptive(k, used);
        Ok((total, metas))
    }

    /// Meta scores of the judgements drawn so far that have none yet, through the aggregator
    /// (which scores only those).
    async fn meta_score_wave(
        &self,
        v: &Valid,
        req: &ScoreRequest,
        total: &Outcome,
        orders: &[Vec<usize>],
        metas: &mut [Option<f32>],
    ) -> Result<(), String> {
        let mut request = req.clone();
        request.return_samples = true;
        request.label = None;
        let s = request.sampling.get_or_insert_with(Default::default);
        s.seed = Some(v.seed);
        s.k_meta = Some(v.k_meta.unwrap_or_else(|| grm_judge::default_k_meta(v.k)) as u32);
        let judgements: Vec<Judgement> = total
            .judgements
            .iter()
            .enumerate()
            .filter_map(|(i, g)| {
                let g = g.as_ref()?;
                Some(Judgement {
                    index: i as u32,
                    text: g.text.clone(),
                    order: orders[i].iter().map(|&o| o as u32).collect(),
                    generated_tokens: g.generated_tokens,
                    finish_reason: g.finish_reason.clone(),
                    worker: g.worker.clone(),
                    meta_score: metas[i],
                })
            })
            .collect();
        let agg = AggregateRequest {
            request: Some(request),
            judgements,
            seed: v.seed,
            ..Default::default()
        };
        let r = self.aggregate(agg, None).await.map_err(|s| s.to_string())?;
        if !r.meta_fallback.is_empty() {
            return Err(r.meta_fallback);
        }
        for sample in r.samples {
            if let Some(m) = metas.get_mut(sample.index as usize) {
                *m = sample.meta_score.or(*m);
            }
        }
        Ok(())
    }
}
