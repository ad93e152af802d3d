//! A ScoreResponse as JSON (field names as in the .proto), for `grm score --json` and the
//! JSONL output of `grm label`.

use grm_proto::v1::{sample, ScoreResponse};
use serde_json::{json, Value};

pub fn to_json(r: &ScoreResponse) -> Value {
    let samples: Vec<Value> = r
        .samples
        .iter()
        .map(|s| {
            let mut v = json!({
                "index": s.index,
                "text": s.text,
                "order": s.order,
                "kept": s.kept,
                "generated_tokens": s.generated_tokens,
                "finish_reason": s.finish_reason,
                "worker": s.worker,
            });
            match &s.outcome {
                Some(sample::Outcome::Scores(sc)) => {
                    v["scores"] = json!({ "shown": sc.shown, "original": sc.original })
                }
                Some(sample::Outcome::Invalid(i)) => {
                    v["invalid"] = json!({ "code": i.code, "message": i.message })
                }
                None => {}
            }
            if let Some(m) = s.meta_score {
                v["meta_score"] = json!(m);
            }
            if let Some(c) = s.correct {
                v["correct"] = json!(c);
            }
            v
        })
        .collect();
    let mut v = json!({
        "id": r.id,
        "rewards": r.rewards.iter().map(|x| json!({ "reward": x.reward, "mean_score": x.mean_score, "votes": x.votes })).collect::<Vec<_>>(),
        "best": r.best,
        "tie": r.tie,
        "valid_samples": r.valid_samples,
        "invalid_samples": r.invalid_samples,
        "samples": samples,
        "seed": r.seed,
        "k_meta": r.k_meta,
        "samples_used": r.samples_used,
        "model": r.model,
    });
    if !r.meta_fallback.is_empty() {
        v["meta_fallback"] = json!(r.meta_fallback);
    }
    if let Some(c) = r.correct {
        v["correct"] = json!(c);
    }
    if let Some(u) = &r.usage {
        v["usage"] = json!({
            "prompt_tokens": u.prompt_tokens, "generated_tokens": u.generated_tokens,
            "cached_prompt_tokens": u.cached_prompt_tokens, "meta_tokens": u.meta_tokens,
        });
    }
    if let Some(t) = &r.timings {
        v["timings"] = json!({ "total_ms": t.total_ms, "queue_ms": t.queue_ms, "generate_ms": t.generate_ms, "meta_ms": t.meta_ms });
    }
    if let Some(e) = &r.error {
        v["error"] = json!({ "code": e.code, "message": e.message });
    }
    v
}
