//! OpenRLHF's remote reward-model protocol, `POST /get_reward`: `{"query": [...], "prompts":
//! [...], "labels": [...]}`, each query its prompt followed by the policy's response, in the
//! policy's chat markup. OpenRLHF posts one sample per call; with `?group_size=N` each entry
//! is a member of the group of N keyed by a digest of its prompt (or label), under the
//! caller's `?group_prefix=` and identity, judged together with the members other calls bring
//! (the router's group barrier). Without it, the entries of one call
//! that share a prompt are judged together.
//!
//! The answer is `{"rewards", "scores", "extra_logs"}`: `rewards` = (mean score − 1) / 9 in
//! [0, 1]; `scores` the same (so OpenRLHF's dynamic filtering range, (0, 1) by default, works),
//! or the 1..10 mean with `?scores=mean`; `extra_logs` per entry under `grm/`. An entry none
//! of whose judgements voted gets the mean reward of its whole group's scored responses, every
//! member's (neutral for a group baseline; 0.5 when none scored) and `grm/unscored` = 1.

use crate::chat_markup;
use crate::http_server::json_error as error;
use crate::router::{Caller, Router};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::StreamExt;
use grm_proto::v1::{Group, Message, Sampling, ScoreRequest, ScoreResponse};
use prost::Message as _;
use serde::Deserialize;
use serde_json::json;
use std::time::{Duration, Instant};

/// Score calls one `/get_reward` request keeps in flight at once.
const BATCHES_IN_FLIGHT: usize = 32;

/// Longest `?timeout_s`, and the time limit of a call that gives none.
const MAX_TIMEOUT: Duration = Duration::from_secs(3600);
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);

#[derive(Deserialize)]
pub struct RewardBody {
    query: Vec<String>,
    #[serde(default)]
    prompts: Vec<String>,
    #[serde(default)]
    labels: Option<Vec<serde_json::Value>>,
}

#[derive(Deserialize, Default)]
pub struct RewardParams {
    k: Option<u32>,
    k_meta: Option<u32>,
    seed: Option<u64>,
    /// Each entry is a member of a group of this many responses.
    group_size: Option<u32>,
    /// What keys a group: `prompt` (default) or `label`.
    group_key: Option<String>,
    /// Prefixed to every group key, so that two runs sharing a router with the same
    /// prompts never merge their groups (a run's name or id).
    group_prefix: Option<String>,
    group_wait_ms: Option<u32>,
    /// `unit` (default): scores in [0, 1] like rewards; `mean`: the 1..10 mean.
    scores: Option<String>,
    /// `labels`: each label is a reference answer, added to the user's query.
    reference: Option<String>,
    /// Server-side time limit of the call, in seconds.
    timeout_s: Option<f64>,
}

/// Each entry's mean score, with the unscored ones (`means[i]` None: no judgement voted)
/// given the mean of their whole group's scored responses — every member's, from the barrier
/// (`group_means`), else this call's entries of the group (`members`) — neutral for a group
/// baseline; 5.5 (reward 0.5) when none scored. Returns the scores and the unscored flags.
fn fill_unscored(
    means: &[Option<f64>],
    group_means: &[Option<f64>],
    members: &[Vec<usize>],
) -> (Vec<f64>, Vec<u32>) {
    let n = means.len();
    let mut filled = vec![0f64; n];
    let mut unscored = vec![0u32; n];
    for idx in members {
        let scored: Vec<f64> = idx.iter().filter_map(|&i| means[i]).collect();
        let of_call =
            (!scored.is_empty()).then(|| scored.iter().sum::<f64>() / scored.len() as f64);
        for &i in idx {
            let neutral = group_means[i].or(of_call).unwrap_or(5.5);
            filled[i] = means[i].unwrap_or(neutral);
            unscored[i] = u32::from(means[i].is_none());
        }
    }
    (filled, unscored)
}

/// Longest `?group_prefix`.
const MAX_PREFIX_BYTES: usize = 256;

/// A group member's key: a digest of its prompt (or label), so that a prompt of any length
/// keys a group in a few bytes, under the caller's `group_prefix`.
fn group_key(prefix: Option<&str>, by_label: bool, text: &str) -> String {
    let hex = crate::auth::short_digest(text.as_bytes(), 16);
    let kind = if by_label { "label" } else { "prompt" };
    match prefix {
        Some(p) => format!("{p}/{kind}:{hex}"),
        None => format!("{kind}:{hex}"),
    }
}

/// An id for the member of one call's group `g`, unique across calls and routers: a retried
/// gRPC call reuses its id to take its own place in a group, and two OpenRLHF samples are
/// two members even when they answered alike.
fn member_id(g: usize) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    static PROCESS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    // Without an OS random source the process could not have started its TLS either.
    let process = *PROCESS.get_or_init(|| getrandom::u64().expect("the OS random source"));
    format!(
        "get_reward-{process:016x}-{}-{g}",
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Defaults of `/get_reward` calls.
#[derive(Debug, Clone, Copy)]
pub struct Defaults {
    pub k: u32,
    pub max_new_tokens: u32,
}

fn bad(msg: String) -> Response {
    error(StatusCode::BAD_REQUEST, msg)
}

fn label_text(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// One request to judge and the entries whose responses it holds.
struct Batch {
    req: ScoreRequest,
    entries: Vec<usize>,
}

pub async fn get_reward(
    router: &Router,
    defaults: Defaults,
    p: RewardParams,
    body: &[u8],
    authorization: Option<String>,
) -> Response {
    let de = &mut serde_json::Deserializer::from_slice(body);
    let b: RewardBody = match serde_path_to_error::deserialize(de) {
        Ok(b) => b,
        Err(e) => {
            let path = e.path().to_string();
            return bad(format!("body field `{path}`: {}", e.inner()));
        }
    };
    let n = b.query.len();
    if n == 0 {
        return bad("query is empty: give at least one prompt + response".into());
    }
    if b.prompts.len() != n {
        return bad(format!(
            "prompts has {} entries but query has {n}; give one prompt per query",
            b.prompts.len()
        ));
    }
    let labels: Vec<String> = match &b.labels {
        None => Vec::new(),
        Some(l) if l.len() == n || l.is_empty() => l.iter().map(label_text).collect(),
        Some(l) => return bad(format!("labels has {} entries but query has {n}", l.len())),
    };
    let by_label = match p.group_key.as_deref() {
        None | Some("prompt") => false,
        Some("label") if !labels.is_empty() => true,
        Some("label") => return bad("group_key=label needs labels".into()),
        Some(o) => return bad(format!("group_key is {o:?}; allowed: prompt, label")),
    };
    let mean_scale = match p.scores.as_deref() {
        None | Some("unit") => false,
        Some("mean") => true,
        Some(o) => return bad(format!("scores is {o:?}; allowed: unit, mean")),
    };
    let reference = match p.reference.as_deref() {
        None => false,
        Some("labels") if !labels.is_empty() => true,
        Some("labels") => return bad("reference=labels needs labels".into()),
        Some(o) => return bad(format!("reference is {o:?}; allowed: labels")),
    };
    let timeout = match p.timeout_s {
        None => DEFAULT_TIMEOUT,
        Some(t) if t > 0.0 && t.is_finite() && t <= MAX_TIMEOUT.as_secs_f64() => {
            Duration::from_secs_f64(t)
        }
        Some(t) => {
            return bad(format!(
                "timeout_s is {t}; allowed (0, {}]",
                MAX_TIMEOUT.as_secs()
            ))
        }
    };
    let deadline = Instant::now() + timeout;
    // Each entry: its conversation (from the prompt's markup) and its response.
    let mut responses = Vec::with_capacity(n);
    for (i, (q, pr)) in b.query.iter().zip(&b.prompts).enumerate() {
        match chat_markup::response_of(q, pr) {
            Some(r) => responses.push(r.to_string()),
            None => {
                return bad(format!(
                    "query[{i}] does not start with prompts[{i}], \
                     nor holds the policy's turn after it"
                ));
            }
        }
    }
    let k = p.k.unwrap_or(defaults.k);
    let sampling = Sampling {
        k,
        k_meta: p.k_meta,
        max_new_tokens: defaults.max_new_tokens,
        seed: p.seed,
        ..Default::default()
    };
    let conversation_of = |i: usize| -> Vec<Message> {
        let mut c = chat_markup::conversation(&b.prompts[i]);
        if reference {
            if let Some(last) = c.last_mut() {
                last.content = format!("{}\n\n(Reference answer: {})", last.content, labels[i]);
            }
        }
        c
    };
    if let Some(prefix) = &p.group_prefix {
        if prefix.len() > MAX_PREFIX_BYTES {
            return bad(format!(
                "group_prefix is {} bytes; allowed 0..={MAX_PREFIX_BYTES}",
                prefix.len()
            ));
        }
    }
    // Entries of one call that share a key go together, in order of first appearance.
    let key_of = |i: usize| -> &str {
        if by_label {
            &labels[i]
        } else {
            &b.prompts[i]
        }
    };
    let mut keys: Vec<&str> = Vec::new();
    let mut members: Vec<Vec<usize>> = Vec::new();
    for i in 0..n {
        match keys.iter().position(|k| *k == key_of(i)) {
            Some(g) => members[g].push(i),
            None => {
                keys.push(key_of(i));
                members.push(vec![i]);
            }
        }
    }
    let max = router.limits().max_responses.max(1);
    let mut batches: Vec<Batch> = Vec::new();
    for (g, idx) in members.iter().enumerate() {
        let base = ScoreRequest {
            conversation: conversation_of(idx[0]),
            sampling: Some(sampling.clone()),
            ..Default::default()
        };
        match p.group_size {
            // A member of a group that other calls complete.
            Some(size) => batches.push(Batch {
                req: ScoreRequest {
                    responses: idx.iter().map(|&i| responses[i].clone()).collect(),
                    id: member_id(g),
                    group: Some(Group {
                        key: group_key(p.group_prefix.as_deref(), by_label, keys[g]),
                        size,
                        wait_ms: p.group_wait_ms.unwrap_or(0),
                    }),
                    ..base
                },
                entries: idx.clone(),
            }),
            // The call's own entries, cut at --max-responses.
            None => {
                for (c, part) in idx.chunks(max).enumerate() {
                    batches.push(Batch {
                        req: ScoreRequest {
                            id: format!("get_reward-{g}.{c}"),
                            responses: part.iter().map(|&i| responses[i].clone()).collect(),
                            ..base.clone()
                        },
                        entries: part.to_vec(),
                    });
                }
            }
        }
    }
    let caller = Caller {
        authorization,
        forwarded: false,
    };
    let requests: Vec<ScoreRequest> = batches.iter().map(|b| b.req.clone()).collect();
    let router_ = router.clone();
    let calls = requests.into_iter().map(move |req| {
        let (router, caller) = (router_.clone(), caller.clone());
        async move {
            let len = req.encoded_len();
            router.score(req, len, Some(deadline), &caller).await
        }
    });
    // A bounded number at a time: one large call must not take every --max-inflight permit.
    let results: Vec<Result<ScoreResponse, tonic::Status>> = futures::stream::iter(calls)
        .buffered(BATCHES_IN_FLIGHT)
        .collect()
        .await;
    let mut means = vec![None::<f64>; n];
    // An entry's whole group's mean score (over its scored responses, every member's), when
    // the barrier judged it with other calls' members.
    let mut group_means = vec![None::<f64>; n];
    let (mut votes, mut group_size) = (vec![0u32; n], vec![0u32; n]);
    for (batch, r) in batches.iter().zip(results) {
        let resp = match r {
            Ok(r) => r,
            Err(st) => {
                let code = match st.code() {
                    tonic::Code::InvalidArgument => StatusCode::BAD_REQUEST,
                    tonic::Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
                    tonic::Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
                    tonic::Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
                    tonic::Code::Unauthenticated => StatusCode::UNAUTHORIZED,
                    _ => StatusCode::INTERNAL_SERVER_ERROR,
                };
                return error(code, st.message().to_string());
            }
        };
        if resp.rewards.len() != batch.entries.len() {
            return error(
                StatusCode::BAD_GATEWAY,
                format!(
                    "the cluster answered {} rewards for {} responses",
                    resp.rewards.len(),
                    batch.entries.len()
                ),
            );
        }
        let size = resp
            .group
            .as_ref()
            .map_or(batch.entries.len() as u32, |g| g.size);
        // Scores are 1..10: a mean of 0 is a response nothing voted on.
        let group_mean = resp.group.as_ref().and_then(|g| {
            let scored: Vec<f64> = g.mean_scores.iter().copied().filter(|&m| m > 0.0).collect();
            (!scored.is_empty()).then(|| scored.iter().sum::<f64>() / scored.len() as f64)
        });
        for (&i, rr) in batch.entries.iter().zip(&resp.rewards) {
            group_means[i] = group_mean;
            votes[i] = rr.votes;
            group_size[i] = size;
            means[i] = (rr.votes > 0).then_some(rr.mean_score);
        }
    }
    let (filled, unscored) = fill_unscored(&means, &group_means, &members);
    let rewards: Vec<f64> = filled.iter().map(|m| (m - 1.0) / 9.0).collect();
    let scores: Vec<f64> = if mean_scale {
        filled.clone()
    } else {
        rewards.clone()
    };
    Json(json!({
        "rewards": rewards,
        "scores": scores,
        "extra_logs": {
            "grm/mean_score": filled,
            "grm/votes": votes,
            "grm/unscored": unscored,
            "grm/group_size": group_size,
            "grm/k": vec![k; n],
        },
    }))
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unscored_entry_gets_its_whole_groups_mean_on_a_one_sample_call() {
        // OpenRLHF's one-sample call: its entry went unscored, while the group's other
        // members (other calls) scored 8 and 4: it gets 6, not the neutral 5.5 of its call.
        let (filled, unscored) = fill_unscored(&[None], &[Some(6.0)], &[vec![0]]);
        assert_eq!((filled, unscored), (vec![6.0], vec![1]));
        // Without a barrier's answer, the call's own scored entries of the group; with none,
        // 5.5; a scored entry keeps its own mean.
        let (filled, unscored) = fill_unscored(
            &[Some(8.0), None, Some(2.0), None],
            &[None; 4],
            &[vec![0, 1], vec![2], vec![3]],
        );
        assert_eq!(filled, vec![8.0, 8.0, 2.0, 5.5]);
        assert_eq!(unscored, vec![0, 1, 0, 1]);
    }
}
