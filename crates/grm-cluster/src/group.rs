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
    /// Groups one caller may have forming at once.
    pub max_forming_per_caller: usize,
    /// Bytes of members (their encoded requests) one caller may have held at once.
    pub max_held_bytes_per_caller: usize,
}

impl Default for GroupLimits {
    fn default() -> Self {
        Self {
            max_size: 64,
            default_wait: Duration::from_secs(5),
            max_forming: 4096,
            max_forming_per_caller: 1024,
            max_held_bytes_per_caller: 256 << 20,
        }
    }
}

/// Longest wait a group may ask for.
pub const MAX_WAIT: Duration = Duration::from_secs(600);

/// One call waiting in a group.
pub struct Member {
    pub req: ScoreRequest,
    /// Its encoded size, counted against its caller's held bytes.
    pub bytes: usize,
    pub deadline: Option<Instant>,
    pub arrived: Instant,
    pub answer: oneshot::Sender<Result<ScoreResponse, Status>>,
}

/// What the members of a group share: a member that differs in any of these is refused at
/// join. Responses, ids, `return_samples` and the group's `wait_ms` may differ.
#[derive(PartialEq)]
struct Shape {
    conversation: Vec<grm_proto::v1::Message>,
    criteria: Vec<String>,
    sampling: Option<grm_proto::v1::Sampling>,
    label: Option<grm_proto::v1::Label>,
    model: String,
    hinted: bool,
    size: u32,
}

impl Shape {
    fn of(req: &ScoreRequest) -> Self {
        Self {
            conversation: req.conversation.clone(),
            criteria: req.criteria.clone(),
            sampling: req.sampling.clone(),
            label: req.label,
            model: req.model.clone(),
            hinted: req.hinted,
            size: req.group.as_ref().map_or(0, |g| g.size),
        }
    }

    /// The first field in which `other` differs, by its name in the request.
    fn differs(&self, other: &Shape) -> Option<&'static str> {
        [
            ("group.size", self.size == other.size),
            ("conversation", self.conversation == other.conversation),
            ("criteria", self.criteria == other.criteria),
            ("sampling", self.sampling == other.sampling),
            ("label", self.label == other.label),
            ("model", self.model == other.model),
            ("hinted", self.hinted == other.hinted),
        ]
        .into_iter()
        .find_map(|(name, same)| (!same).then_some(name))
    }
}

/// A group whose members are arriving.
struct Forming {
    /// Which forming of the key this is: a wait ends only its own group.
    generation: u64,
    /// The caller whose group it is (its key is scoped by it).
    caller: String,
    shape: Shape,
    /// Members by their place in the arrival order (a member that left leaves a gap).
    members: Vec<(u64, Member)>,
    expected: usize,
    /// Dropped when the group ends (judged, expired or emptied), which ends its timer.
    _timer: oneshot::Sender<()>,
}

impl Forming {
    fn responses(&self) -> usize {
        self.members
            .iter()
            .map(|(_, m)| m.req.responses.len())
            .sum()
    }

    fn formed(self, key: &str, partial: bool) -> Formed {
        Formed {
            key: key.to_string(),
            expected: self.expected,
            members: self.members.into_iter().map(|(_, m)| m).collect(),
            partial,
        }
    }
}

/// A group ready to be judged.
pub struct Formed {
    /// The scoped key (a digest; see [`scoped_key`]).
    pub key: String,
    pub expected: usize,
    pub members: Vec<Member>,
    /// Fewer responses than `expected` came (its wait ended, or members left).
    pub partial: bool,
}

/// A member's place in its group, for [`Barrier::leave`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket {
    generation: u64,
    seat: u64,
}

/// What joining a group came to.
pub enum Joined {
    /// The first member: the caller starts the group's wait, after which (or once
    /// `timer_ended` resolves, the group having ended first) it calls [`Barrier::expire`].
    First {
        wait: Duration,
        generation: u64,
        ticket: Ticket,
        timer_ended: oneshot::Receiver<()>,
    },
    /// Waiting for more members.
    Waiting(Ticket),
    /// This member completed the group: judge it.
    Complete(Formed),
}

/// What one caller holds in the barrier.
#[derive(Default)]
struct Held {
    forming: usize,
    bytes: usize,
}

#[derive(Default)]
struct State {
    forming: HashMap<String, Forming>,
    held: HashMap<String, Held>,
}

impl State {
    /// Takes a group out, releasing what its caller held.
    fn remove(&mut self, key: &str) -> Option<Forming> {
        let g = self.forming.remove(key)?;
        let bytes: usize = g.members.iter().map(|(_, m)| m.bytes).sum();
        if let Some(h) = self.held.get_mut(&g.caller) {
            h.forming = h.forming.saturating_sub(1);
            h.bytes = h.bytes.saturating_sub(bytes);
            if h.forming == 0 {
                self.held.remove(&g.caller);
            }
        }
        Some(g)
    }
}

#[derive(Default)]
pub struct Barrier {
    state: Mutex<State>,
    counter: std::sync::atomic::AtomicU64,
}

/// Why a member was refused at join, for the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// --max-groups: the router's groups.
    Groups,
    /// --max-groups-per-caller.
    CallerGroups,
    /// --max-group-bytes-per-caller.
    CallerBytes,
    /// It differs from its group.
    Unlike,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Groups => "groups",
            Refusal::CallerGroups => "caller_groups",
            Refusal::CallerBytes => "caller_bytes",
            Refusal::Unlike => "unlike",
        }
    }
}

/// The barrier's key of a group: a digest of the caller's identity and the group's key, so
/// that a key of any length is one short string and one caller's keys never meet another's.
pub fn scoped_key(caller: &str, key: &str) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(&(caller.len() as u64).to_le_bytes());
    ctx.update(caller.as_bytes());
    ctx.update(key.as_bytes());
    crate::auth::to_hex(&ctx.finish().as_ref()[..16])
}

/// Checks a member's `group` field against the limits; returns (key, size, wait).
pub fn check(
    req: &ScoreRequest,
    limits: &GroupLimits,
) -> Result<(String, usize, Duration), Status> {
    let Some(g) = &req.group else {
        return Err(Status::internal("not a group member"));
    };
    // Any length: the barrier keys a group by a digest (prompts used as keys are long);
    // the request's own size limit bounds it.
    if g.key.is_empty() {
        return Err(Status::invalid_argument(
            "group.key is empty; give the group's key (its prompt, uid, ...)",
        ));
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
    /// Adds `caller`'s member to the group `key` (scoped: see [`scoped_key`]) of `expected`
    /// responses. A member with the id and responses of one already there (a retried call)
    /// takes its place;
    /// one whose request differs from the group's (see `Shape`) is refused, naming the field.
    pub fn join(
        &self,
        caller: &str,
        key: &str,
        expected: usize,
        wait: Duration,
        member: Member,
        limits: &GroupLimits,
    ) -> Result<Joined, (Status, Refusal)> {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let shape = Shape::of(&member.req);
        let first = !st.forming.contains_key(key);
        let held = st.held.get(caller).map_or((0, 0), |h| (h.forming, h.bytes));
        if first && st.forming.len() >= limits.max_forming {
            let n = st.forming.len();
            return Err((
                Status::resource_exhausted(format!(
                    "{n} groups are forming on this router, its limit (--max-groups); retry later"
                )),
                Refusal::Groups,
            ));
        }
        if first && held.0 >= limits.max_forming_per_caller {
            return Err((
                Status::resource_exhausted(format!(
                    "this caller has {} groups forming, its limit (--max-groups-per-caller); complete or abandon some first",
                    held.0
                )),
                Refusal::CallerGroups,
            ));
        }
        if held.1 + member.bytes > limits.max_held_bytes_per_caller {
            let msg = format!(
                "this caller's waiting group members hold {} bytes; with this one ({} bytes) that passes its limit of {} (--max-group-bytes-per-caller)",
                held.1, member.bytes, limits.max_held_bytes_per_caller
            );
            return Err((Status::resource_exhausted(msg), Refusal::CallerBytes));
        }
        if let Some(g) = st.forming.get(key) {
            if let Some(field) = g.shape.differs(&shape) {
                return Err((
                    Status::invalid_argument(format!(
                        "this member's {field} differs from its group's (the members already waiting under group.key): a group's members share group.size, conversation, criteria, sampling, label, model and hinted"
                    )),
                    Refusal::Unlike,
                ));
            }
        }
        let seat = self
            .counter
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut timer_ended = None;
        if first {
            let (tx, rx) = oneshot::channel();
            timer_ended = Some(rx);
            st.forming.insert(
                key.to_string(),
                Forming {
                    generation: seat,
                    caller: caller.to_string(),
                    shape,
                    members: Vec::new(),
                    expected,
                    _timer: tx,
                },
            );
            st.held.entry(caller.to_string()).or_default().forming += 1;
        }
        let bytes = member.bytes;
        let g = st.forming.get_mut(key).expect("present");
        let generation = g.generation;
        // A retried call (the same id and responses) replaces the one it retries. The
        // responses too: ranks of a trainer may give their shares of a group the same id.
        let mut freed = 0;
        if !member.req.id.is_empty() {
            if let Some(p) = g.members.iter().position(|(_, m)| {
                m.req.id == member.req.id && m.req.responses == member.req.responses
            }) {
                let (_, old) = g.members.remove(p);
                freed = old.bytes;
                let _ = old.answer.send(Err(Status::aborted(
                    "a later call with the same id took this member's place in its group",
                )));
            }
        }
        g.members.push((seat, member));
        let complete = g.responses() >= g.expected;
        if let Some(h) = st.held.get_mut(caller) {
            h.bytes = (h.bytes + bytes).saturating_sub(freed);
        }
        let ticket = Ticket { generation, seat };
        if complete {
            let g = st.remove(key).expect("present");
            return Ok(Joined::Complete(g.formed(key, false)));
        }
        Ok(match timer_ended {
            Some(timer_ended) => Joined::First {
                wait,
                generation,
                ticket,
                timer_ended,
            },
            None => Joined::Waiting(ticket),
        })
    }

    /// A member whose call ended (cancelled, timed out, its stream broken) leaves its group,
    /// if the group is still forming; a group left empty ends.
    pub fn leave(&self, key: &str, ticket: Ticket) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let Some(g) = st.forming.get_mut(key) else {
            return;
        };
        if g.generation != ticket.generation {
            return;
        }
        let Some(p) = g.members.iter().position(|(s, _)| *s == ticket.seat) else {
            return;
        };
        let (_, gone) = g.members.remove(p);
        let (caller, empty) = (g.caller.clone(), g.members.is_empty());
        if let Some(h) = st.held.get_mut(&caller) {
            h.bytes = h.bytes.saturating_sub(gone.bytes);
        }
        if empty {
            st.remove(key);
        }
    }

    /// Ends the wait of the group `key` of this `generation`: what is there is judged.
    pub fn expire(&self, key: &str, generation: u64) -> Option<Formed> {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        // A group completed and formed again under the same key since is not this wait's.
        if st
            .forming
            .get(key)
            .is_none_or(|g| g.generation != generation)
        {
            return None;
        }
        st.remove(key).map(|g| g.formed(key, true))
    }

    /// Groups forming now.
    pub fn forming(&self) -> usize {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .forming
            .len()
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
    crate::chunking::fnv1a(
        std::iter::once(key.as_bytes()).chain(texts.iter().map(String::as_bytes)),
    )
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
            bytes: 100,
            deadline: None,
            arrived: Instant::now(),
            answer: tx,
        }
    }

    fn ticket(j: Result<Joined, (Status, Refusal)>) -> Ticket {
        match j {
            Ok(Joined::First { ticket, .. } | Joined::Waiting(ticket)) => ticket,
            _ => panic!("waiting"),
        }
    }

    #[test]
    fn a_group_completes_on_its_last_response_and_expires_otherwise() {
        let b = Barrier::default();
        let l = GroupLimits::default();
        let w = Duration::from_secs(1);
        let gen = match b.join("c", "g", 4, w, member("a", &["x"]), &l) {
            Ok(Joined::First { generation, .. }) => generation,
            _ => panic!("first"),
        };
        assert!(matches!(
            b.join("c", "g", 4, w, member("b", &["y", "z"]), &l),
            Ok(Joined::Waiting(_))
        ));
        match b.join("c", "g", 4, w, member("c", &["x"]), &l) {
            Ok(Joined::Complete(f)) => {
                assert_eq!(f.members.len(), 3);
                assert!(!f.partial);
                assert_eq!(canonical(&f.members), vec!["x", "y", "z"]);
            }
            _ => panic!("complete"),
        }
        assert_eq!(b.forming(), 0);
        // A stale wait does not take a new group of the same key.
        let gen2 = match b.join("c", "g", 4, w, member("d", &["q"]), &l) {
            Ok(Joined::First { generation, .. }) => generation,
            _ => panic!("first"),
        };
        assert!(b.expire("g", gen).is_none());
        let f = b.expire("g", gen2).expect("its own wait");
        assert!(f.partial);
        assert_eq!(f.members.len(), 1);
    }

    #[test]
    fn a_member_that_left_or_was_retried_counts_once() {
        let b = Barrier::default();
        let l = GroupLimits::default();
        let w = Duration::from_secs(1);
        // Two members of a group of 4 arrive; their calls break.
        let t1 = ticket(b.join("c", "g", 4, w, member("a", &["x"]), &l));
        let t2 = ticket(b.join("c", "g", 4, w, member("b", &["y"]), &l));
        b.leave("g", t1);
        // Retried: "b" again (same id) takes its own old place, "a" joins anew.
        ticket(b.join("c", "g", 4, w, member("b", &["y"]), &l));
        b.leave("g", t2); // the old "b" is gone already: nothing happens
        ticket(b.join("c", "g", 4, w, member("a", &["x"]), &l));
        assert!(matches!(
            b.join("c", "g", 4, w, member("c", &["z"]), &l),
            Ok(Joined::Waiting(_))
        ));
        match b.join("c", "g", 4, w, member("d", &["q"]), &l) {
            Ok(Joined::Complete(f)) => {
                assert!(!f.partial);
                assert_eq!(canonical(&f.members), vec!["q", "x", "y", "z"]);
            }
            _ => panic!("complete with the four responses"),
        }
        // The same id with other responses (two ranks' shares) is another member.
        ticket(b.join("c", "s", 2, w, member("a", &["x"]), &l));
        assert!(matches!(
            b.join("c", "s", 2, w, member("a", &["y"]), &l),
            Ok(Joined::Complete(f)) if f.members.len() == 2
        ));
        // A group whose only member left is gone, and frees its caller's quota.
        let t = ticket(b.join("c", "h", 4, w, member("a", &["x"]), &l));
        b.leave("h", t);
        assert_eq!(b.forming(), 0);
        assert!(b.state.lock().unwrap().held.is_empty());
    }

    #[test]
    fn an_unlike_member_is_refused_at_join_by_name_and_callers_are_capped() {
        let b = Barrier::default();
        let l = GroupLimits {
            max_forming_per_caller: 2,
            max_held_bytes_per_caller: 350,
            ..GroupLimits::default()
        };
        let w = Duration::from_secs(1);
        ticket(b.join("c", "g", 4, w, member("a", &["x"]), &l));
        let mut other = member("b", &["y"]);
        other.req.conversation.push(grm_proto::v1::Message {
            role: "user".into(),
            content: "another question".into(),
        });
        match b.join("c", "g", 4, w, other, &l) {
            Err((s, Refusal::Unlike)) => {
                assert_eq!(s.code(), tonic::Code::InvalidArgument);
                assert!(s.message().contains("conversation"), "{s:?}");
            }
            _ => panic!("refused"),
        }
        // The rightful member still completes the group later.
        ticket(b.join("c", "h", 4, w, member("a", &["x"]), &l));
        match b.join("c", "i", 4, w, member("a", &["x"]), &l) {
            Err((s, Refusal::CallerGroups)) => {
                assert_eq!(s.code(), tonic::Code::ResourceExhausted)
            }
            _ => panic!("over the caller's groups"),
        }
        // Another caller is not held back by this one's caps...
        ticket(b.join("d", "i", 4, w, member("a", &["x"]), &l));
        // ...and this one's bytes are capped (3 x 100 held, a 4th passes 350).
        ticket(b.join("c", "g", 4, w, member("e", &["z"]), &l));
        assert!(matches!(
            b.join("c", "g", 4, w, member("f", &["w"]), &l),
            Err((_, Refusal::CallerBytes))
        ));
    }

    #[test]
    fn keys_are_scoped_by_caller_and_of_any_length() {
        let long = "x".repeat(10_000);
        let k = scoped_key("caller-a", &long);
        assert_eq!(k.len(), 32);
        assert_ne!(k, scoped_key("caller-b", &long));
        assert_eq!(k, scoped_key("caller-a", &long));
        // The caller and the key are not run together.
        assert_ne!(scoped_key("ab", "c"), scoped_key("a", "bc"));
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
