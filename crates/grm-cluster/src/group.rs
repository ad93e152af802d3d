//! The group barrier: trainers send one sample (or one rank's share of a group) per call, and a
//! GRM must see a group's responses side by side to compare them. Calls that name the same
//! group key are held until the group is complete (or its wait ends), then judged as one
//! request; each call is answered with its own responses' rewards. This module holds the
//! forming groups and the pure parts: the canonical order, the sub-groups, and each member's
//! answer; the router runs the judging.

use grm_proto::v1::{GroupResult, ResponseReward, ScoreRequest, ScoreResponse};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;
use tonic::Status;

/// The barrier's limits (flags of the router).
#[derive(Debug, Clone, Copy)]
pub struct GroupLimits {
    /// Largest `Group.size`.
    pub max_size: usize,
    /// Wait when a group does not say.
    pub default_wait: Duration,
    /// Groups forming at once; past it, new groups are refused (RESOURCE_EXHAUSTED).
    pub max_forming: usize,
}

impl Default for GroupLimits {
    fn default() -> Self {
        Self {
            max_size: 64,
            default_wait: Duration::from_secs(5),
            max_forming: 4096,
        }
    }
}

/// Longest wait a group may ask for.
pub const MAX_WAIT: Duration = Duration::from_secs(600);

/// One call waiting in a group.
pub struct Member {
    pub req: ScoreRequest,
    pub deadline: Option<Instant>,
    pub arrived: Instant,
    pub answer: oneshot::Sender<Result<ScoreResponse, Status>>,
}

/// A group whose members are arriving.
struct Forming {
    /// Which forming of the key this is: a wait ends only its own group.
    generation: u64,
    members: Vec<Member>,
    responses: usize,
    expected: usize,
}

/// A group ready to be judged.
pub struct Formed {
    pub key: String,
    pub expected: usize,
    pub members: Vec<Member>,
    /// Its wait ended before `expected` responses arrived.
    pub partial: bool,
}

/// What joining a group came to.
pub enum Joined {
    /// The first member: the caller starts the group's wait, after which it calls
    /// [`Barrier::expire`] with this generation.
    First(Duration, u64),
    /// Waiting for more members.
    Waiting,
    /// This member completed the group: judge it.
    Complete(Formed),
}

#[derive(Default)]
pub struct Barrier {
    forming: Mutex<HashMap<String, Forming>>,
    generations: std::sync::atomic::AtomicU64,
}

/// Checks a member's `group` field against the limits; returns (key, size, wait).
pub fn check(
    req: &ScoreRequest,
    limits: &GroupLimits,
) -> Result<(String, usize, Duration), Status> {
    let Some(g) = &req.group else {
        return Err(Status::internal("not a group member"));
    };
    if g.key.is_empty() || g.key.len() > 256 {
        return Err(Status::invalid_argument(format!(
            "group.key is {} bytes; allowed 1..=256",
            g.key.len()
        )));
    }
    let size = g.size as usize;
    if size < 2 || size > limits.max_size {
        return Err(Status::invalid_argument(format!(
            "group.size is {size}; allowed 2..={} (--max-group-size)",
            limits.max_size
        )));
    }
    if req.responses.len() > size {
        return Err(Status::invalid_argument(format!(
            "responses has {} entries, more than group.size ({size})",
            req.responses.len()
        )));
    }
    let wait = match g.wait_ms {
        0 => limits.default_wait,
        ms => Duration::from_millis(u64::from(ms)),
    };
    if wait > MAX_WAIT {
        return Err(Status::invalid_argument(format!(
            "group.wait_ms is {}; allowed 0..={}",
            g.wait_ms,
            MAX_WAIT.as_millis()
        )));
    }
    Ok((g.key.clone(), size, wait))
}

impl Barrier {
    /// Adds a member to the group `key` of `expected` responses.
    pub fn join(
        &self,
        key: &str,
        expected: usize,
        wait: Duration,
        member: Member,
        limits: &GroupLimits,
    ) -> Result<Joined, (Member, Status)> {
        let mut forming = self.forming.lock().unwrap_or_else(|e| e.into_inner());
        let first = !forming.contains_key(key);
        if first && forming.len() >= limits.max_forming {
            let n = forming.len();
            return Err((
                member,
                Status::resource_exhausted(format!(
                    "{n} groups are forming on this router, its limit (--max-groups); retry later"
                )),
            ));
        }
        let g = forming.entry(key.to_string()).or_insert_with(|| Forming {
            generation: self
                .generations
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            members: Vec::new(),
            responses: 0,
            expected,
        });
        let generation = g.generation;
        g.responses += member.req.responses.len();
        g.members.push(member);
        if g.responses >= g.expected {
            let g = forming.remove(key).expect("present");
            return Ok(Joined::Complete(Formed {
                key: key.to_string(),
                expected: g.expected,
                members: g.members,
                partial: false,
            }));
        }
        Ok(if first {
            Joined::First(wait, generation)
        } else {
            Joined::Waiting
        })
    }

    /// Ends the wait of the group `key` of this `generation`: what is there is judged.
    pub fn expire(&self, key: &str, generation: u64) -> Option<Formed> {
        let mut forming = self.forming.lock().unwrap_or_else(|e| e.into_inner());
        // A group completed and formed again under the same key since is not this wait's.
        if forming.get(key).is_none_or(|g| g.generation != generation) {
            return None;
        }
        forming.remove(key).map(|g| Formed {
            key: key.to_string(),
            expected: g.expected,
            members: g.members,
            partial: true,
        })
    }

    /// Groups forming now.
    pub fn forming(&self) -> usize {
        self.forming.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

/// The group's distinct responses in canonical order (sorted by text), so that the same
/// members are judged the same way whatever order they arrived in.
pub fn canonical(members: &[Member]) -> Vec<String> {
    let mut texts: Vec<String> = members
        .iter()
        .flat_map(|m| m.req.responses.iter().cloned())
        .collect();
    texts.sort();
    texts.dedup();
    texts
}

/// Cuts `n` responses into the fewest sub-groups of at most `max`, of sizes that differ by at
/// most one; returns each sub-group's range.
pub fn subgroups(n: usize, max: usize) -> Vec<std::ops::Range<usize>> {
    let max = max.max(1);
    let parts = n.div_ceil(max).max(1);
    let (base, extra) = (n / parts, n % parts);
    let mut out = Vec::with_capacity(parts);
    let mut start = 0;
    for p in 0..parts {
        let len = base + usize::from(p < extra);
        out.push(start..start + len);
        start += len;
    }
    out
}

/// A seed for a group that gave none: the same for the same key and responses.
pub fn derived_seed(key: &str, texts: &[String]) -> u64 {
    // FNV-1a: stable across builds and platforms, unlike std's hasher.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in std::iter::once(key).chain(texts.iter().map(String::as_str)) {
        for b in part.bytes().chain(std::iter::once(0xff)) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

/// One member's answer from its group's judgement: `judged[s]` is sub-group `s`'s answer,
/// `texts` the group's canonical order and `parts` its sub-groups.
pub fn member_answer(
    member: &ScoreRequest,
    texts: &[String],
    parts: &[std::ops::Range<usize>],
    judged: &[ScoreResponse],
    info: GroupResult,
) -> ScoreResponse {
    let position = |t: &String| texts.binary_search(t).unwrap_or(0);
    let sub_of = |pos: usize| parts.iter().position(|r| r.contains(&pos)).unwrap_or(0);
    let reward_at = |pos: usize| -> ResponseReward {
        let s = sub_of(pos);
        judged[s]
            .rewards
            .get(pos - parts[s].start)
            .cloned()
            .unwrap_or_default()
    };
    let positions: Vec<usize> = member.responses.iter().map(position).collect();
    let rewards: Vec<ResponseReward> = positions.iter().map(|&p| reward_at(p)).collect();
    // The member's own best: the highest mean score among its responses (the first on a tie).
    let voted = rewards.iter().any(|r| r.votes > 0);
    let top = rewards
        .iter()
        .map(|r| r.mean_score)
        .fold(f64::NEG_INFINITY, f64::max);
    let best = voted
        .then(|| rewards.iter().position(|r| r.mean_score == top))
        .flatten();
    let tie = voted && rewards.iter().filter(|r| r.mean_score == top).count() > 1;
    let sub = positions.first().map_or(0, |&p| sub_of(p));
    let mut resp = judged[sub].clone();
    resp.id = member.id.clone();
    resp.rewards = rewards;
    resp.best = best.map(|b| b as u32);
    resp.tie = tie;
    resp.correct = None;
    resp.group = Some(GroupResult {
        positions: positions.iter().map(|&p| p as u32).collect(),
        ..info
    });
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use grm_proto::v1::Group;

    fn member(id: &str, responses: &[&str]) -> Member {
        let (tx, _rx) = oneshot::channel();
        Member {
            req: ScoreRequest {
                id: id.into(),
                responses: responses.iter().map(|s| s.to_string()).collect(),
                group: Some(Group {
                    key: "g".into(),
                    size: 4,
                    wait_ms: 0,
                }),
                ..Default::default()
            },
            deadline: None,
            arrived: Instant::now(),
            answer: tx,
        }
    }

    #[test]
    fn a_group_completes_on_its_last_response_and_expires_otherwise() {
        let b = Barrier::default();
        let l = GroupLimits::default();
        let w = Duration::from_secs(1);
        assert!(matches!(
            b.join("g", 4, w, member("a", &["x"]), &l),
            Ok(Joined::First(_, 0))
        ));
        assert!(matches!(
            b.join("g", 4, w, member("b", &["y", "z"]), &l),
            Ok(Joined::Waiting)
        ));
        match b.join("g", 4, w, member("c", &["x"]), &l) {
            Ok(Joined::Complete(f)) => {
                assert_eq!(f.members.len(), 3);
                assert!(!f.partial);
                assert_eq!(canonical(&f.members), vec!["x", "y", "z"]);
            }
            _ => panic!("complete"),
        }
        assert_eq!(b.forming(), 0);
        // A stale wait does not take a new group of the same key.
        assert!(matches!(
            b.join("g", 4, w, member("d", &["q"]), &l),
            Ok(Joined::First(_, 1))
        ));
        assert!(b.expire("g", 0).is_none());
        let f = b.expire("g", 1).expect("its own wait");
        assert!(f.partial);
        assert_eq!(f.members.len(), 1);
    }

    #[test]
    fn subgroups_are_balanced() {
        assert_eq!(subgroups(16, 16), vec![0..16]);
        assert_eq!(subgroups(17, 16), vec![0..9, 9..17]);
        assert_eq!(subgroups(40, 16), vec![0..14, 14..27, 27..40]);
        assert_eq!(subgroups(1, 16), vec![0..1]);
    }

    #[test]
    fn answers_are_each_members_own_whatever_the_arrival_order() {
        let texts = vec!["a".to_string(), "b".into(), "c".into()];
        let parts = subgroups(3, 2);
        let r = |m: f64| ResponseReward {
            reward: (m * 2.0) as u32,
            mean_score: m,
            votes: 2,
        };
        let judged = vec![
            ScoreResponse {
                rewards: vec![r(3.0), r(8.0)],
                ..Default::default()
            },
            ScoreResponse {
                rewards: vec![r(8.0)],
                ..Default::default()
            },
        ];
        let m = member("m", &["c", "a", "b"]).req;
        let a = member_answer(&m, &texts, &parts, &judged, GroupResult::default());
        let means: Vec<f64> = a.rewards.iter().map(|x| x.mean_score).collect();
        assert_eq!(means, vec![8.0, 3.0, 8.0]);
        assert_eq!(a.best, Some(0));
        assert!(a.tie);
        assert_eq!(a.group.unwrap().positions, vec![2, 0, 1]);
        assert_eq!(derived_seed("k", &texts), derived_seed("k", &texts));
        assert_ne!(derived_seed("k", &texts), derived_seed("j", &texts));
    }
}
