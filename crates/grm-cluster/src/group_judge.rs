//! How a router serves a group's members (see `group`): a member joins the barrier of the
//! router that owns its group (forwarded there when it reached another one), waits, and is
//! answered when its group is judged; a group is judged once its last response arrives or its
//! wait ends, in sub-groups of at most --max-responses distinct responses.

use crate::chunking;
use crate::group::{self, Formed, Joined, Member};
use crate::pool::MAX_MESSAGE_BYTES;
use crate::router::{Caller, Router};
use grm_proto::v1::reward_service_client::RewardServiceClient;
use grm_proto::v1::{GroupResult, ScoreRequest, ScoreResponse};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;
use tonic::{Request, Status};
use tracing::{info, warn};

/// Metadata on a member forwarded by another router: serve it here.
pub const FORWARDED: &str = "grm-forwarded";

/// The method a member is forwarded with (its proof is made for it).
pub const FORWARDED_METHOD: &str = "/grm.v1.RewardService/Score";

/// Takes a member out of its forming group when its call ends unanswered.
struct Leave {
    router: Router,
    key: String,
    ticket: group::Ticket,
}

impl Drop for Leave {
    fn drop(&mut self) {
        self.router.inner.barrier.leave(&self.key, self.ticket);
    }
}

impl Router {
    /// Serves one member of a group: joins (or forwards to) the group's router and waits for
    /// the group's judgement.
    pub(crate) async fn score_member(
        &self,
        req: ScoreRequest,
        encoded_len: usize,
        deadline: Option<Instant>,
        caller: &Caller,
    ) -> Result<ScoreResponse, Status> {
        let me = &self.inner;
        let (key, expected, wait) = group::check(&req, &me.opts.groups)?;
        // The member alone must be a valid request (shape, limits), whatever its group.
        crate::validation::validate(&req, encoded_len, &me.opts.limits)?;
        // The barrier's key: the caller's and the group's, digested. Routers agree on its
        // owner, since the same caller sends the same credentials to each.
        let identity = caller.identity();
        let scoped = group::scoped_key(&identity, &key);
        if !caller.forwarded {
            if let Some(owner) = self.owner_of(&scoped) {
                match self.forward(&owner, req.clone(), deadline, caller).await {
                    Ok(r) => return Ok(r),
                    // The owner is away: gather the group here instead (members that reach
                    // the owner once it is back form a group of their own).
                    Err(s) if s.code() == tonic::Code::Unavailable => {
                        warn!(owner = owner.addr, key = scoped, error = %s, "the group's router is unavailable; forming the group here");
                    }
                    Err(s) => return Err(s),
                }
            }
        }
        let (tx, rx) = oneshot::channel();
        let member = Member {
            req,
            bytes: encoded_len,
            deadline,
            arrived: Instant::now(),
            answer: tx,
        };
        let ticket =
            match me
                .barrier
                .join(&identity, &scoped, expected, wait, member, &me.opts.groups)
            {
                Err((s, why)) => {
                    me.metrics.group_refused(why.as_str());
                    return Err(s);
                }
                Ok(Joined::Complete(formed)) => {
                    let router = self.clone();
                    tokio::spawn(async move { router.judge_group(formed).await });
                    None
                }
                Ok(Joined::First {
                    wait,
                    generation,
                    ticket,
                    timer_ended,
                }) => {
                    let (router, scoped) = (self.clone(), scoped.clone());
                    tokio::spawn(async move {
                        tokio::select! {
                            _ = tokio::time::sleep(wait) => {}
                            // The group ended first (judged or emptied): no timer left behind.
                            _ = timer_ended => return,
                        }
                        if let Some(formed) = router.inner.barrier.expire(&scoped, generation) {
                            router.judge_group(formed).await;
                        }
                    });
                    Some(ticket)
                }
                Ok(Joined::Waiting(ticket)) => Some(ticket),
            };
        // A call that ends before its group is judged (cancelled, past its deadline, its
        // stream broken) takes its member out: a member that is gone does not count.
        let _leave = ticket.map(|t| Leave {
            router: self.clone(),
            key: scoped.clone(),
            ticket: t,
        });
        let answer = async {
            rx.await
                .unwrap_or_else(|_| Err(Status::internal("the group was dropped unjudged")))
        };
        match deadline {
            Some(d) => tokio::time::timeout_at(d.into(), answer)
                .await
                .map_err(|_| {
                    // The digest, not the key: a key may be a whole prompt.
                    Status::deadline_exceeded(format!(
                        "the deadline passed while group {scoped} formed or was judged"
                    ))
                })?,
            None => answer.await,
        }
    }

    /// The router that owns `key`, when it is another one: rendezvous hashing over the live
    /// routers in etcd, so every router agrees without talking.
    fn owner_of(&self, key: &str) -> Option<std::sync::Arc<crate::pool::Peer>> {
        let me = &self.inner;
        let routers = me.routers.as_ref()?.peers();
        if routers.is_empty() || me.opts.self_id.is_empty() {
            return None;
        }
        let ids: Vec<String> = routers.iter().map(|p| p.id.clone()).collect();
        let top = *chunking::rank(chunking::affinity_key(&[key]), &ids).first()?;
        (routers[top].id != me.opts.self_id).then(|| std::sync::Arc::clone(&routers[top]))
    }

    /// Sends a member to the router that owns its group, as the caller sent it.
    async fn forward(
        &self,
        owner: &crate::pool::Peer,
        req: ScoreRequest,
        deadline: Option<Instant>,
        caller: &Caller,
    ) -> Result<ScoreResponse, Status> {
        self.inner.metrics.group_forwarded();
        let mut client = RewardServiceClient::new(owner.channel.clone())
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        let mut r = Request::new(req);
        crate::trace_context::inject(&tracing::Span::current(), r.metadata_mut());
        // The mark says what the call is; the channel's proof for it says who sent it.
        r.metadata_mut()
            .insert(FORWARDED, tonic::metadata::MetadataValue::from_static("1"));
        if let Some(v) = caller.authorization.as_deref().and_then(|a| a.parse().ok()) {
            r.metadata_mut().insert("authorization", v);
        }
        if let Some(d) = deadline {
            r.set_timeout(
                d.saturating_duration_since(Instant::now())
                    .max(Duration::from_millis(1)),
            );
        }
        client.score(r).await.map(tonic::Response::into_inner)
    }

    /// Judges a formed group and answers each of its members.
    pub(crate) async fn judge_group(&self, formed: Formed) {
        let me = &self.inner;
        let Formed {
            key,
            expected,
            members,
            partial,
        } = formed;
        // Members whose callers went away are left out.
        let members: Vec<Member> = members
            .into_iter()
            .filter(|m| !m.answer.is_closed())
            .collect();
        let Some(first) = members.first().map(|m| m.req.clone()) else {
            return;
        };
        // The members are alike (checked at join): the first one's request is the group's.
        let texts = group::canonical(&members);
        let parts = group::subgroups(texts.len(), me.opts.limits.max_responses);
        let responses: usize = members.iter().map(|m| m.req.responses.len()).sum();
        let now = Instant::now();
        let waited = members.first().map_or(Duration::ZERO, |m| now - m.arrived);
        me.metrics.group_judged(
            if partial { "partial" } else { "complete" },
            texts.len(),
            waited,
        );
        let deadline = members.iter().map(|m| m.deadline).max().flatten();
        let sampling = first.sampling.clone().unwrap_or_default();
        let seed = sampling
            .seed
            .unwrap_or_else(|| group::derived_seed(&key, &texts));
        let return_samples = members.iter().any(|m| m.req.return_samples);
        let judgements = parts.iter().enumerate().map(|(i, range)| {
            let mut req = ScoreRequest {
                id: if parts.len() == 1 {
                    key.clone()
                } else {
                    format!("{key}#{i}")
                },
                conversation: first.conversation.clone(),
                responses: texts[range.clone()].to_vec(),
                criteria: first.criteria.clone(),
                sampling: Some(grm_proto::v1::Sampling {
                    seed: Some(seed),
                    ..sampling.clone()
                }),
                return_samples,
                model: first.model.clone(),
                ..Default::default()
            };
            if req.responses.len() == 1 {
                // One distinct response: rated alone, not shuffled.
                req.sampling.get_or_insert_with(Default::default).no_shuffle = true;
            }
            let router = self.clone();
            async move {
                // Members without a deadline wait for a place no longer than a group may
                // wait for its members.
                let by = deadline.unwrap_or_else(|| Instant::now() + group::MAX_WAIT);
                let _permit = router.permit_by(by).await?;
                let len = prost::Message::encoded_len(&req);
                let r = router.judge(req, len, deadline).await?;
                router.inner.metrics.record_group_usage(&r);
                Ok::<_, Status>(r)
            }
        });
        let judged = match futures::future::try_join_all(judgements).await {
            Ok(j) => j,
            Err(s) => {
                for m in members {
                    let _ = m.answer.send(Err(s.clone()));
                }
                return;
            }
        };
        let mean_scores: Vec<f64> = parts
            .iter()
            .zip(&judged)
            .flat_map(|(_, r)| r.rewards.iter().map(|x| x.mean_score))
            .collect();
        info!(
            key,
            size = texts.len(),
            members = members.len(),
            expected,
            partial,
            subgroups = parts.len(),
            "group judged"
        );
        let n_members = members.len() as u32;
        for m in members {
            let info = GroupResult {
                size: texts.len() as u32,
                responses: responses as u32,
                members: n_members,
                partial,
                subgroups: parts.len() as u32,
                wait_ms: (now - m.arrived).as_secs_f64() * 1e3,
                mean_scores: mean_scores.clone(),
                positions: Vec::new(),
            };
            let answer = group::member_answer(&m.req, &texts, &parts, &judged, info);
            let _ = m.answer.send(Ok(answer));
        }
    }
}
