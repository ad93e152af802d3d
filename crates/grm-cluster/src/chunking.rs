//! How a request's k samples are split into chunks and placed on workers.
//!
//! The policy (documented in the README, configurable with `--chunk-samples` and
//! `--affinity-slack`):
//! 1. A request's prompts (one per response order) share a long header and often their first
//!    responses: the samples are put in the order of their prompts' text (a trie walked depth
//!    first), so that samples whose prompts share the longest prefixes are next to each other.
//! 2. That list is cut into chunks of at most `max_samples` samples, between prompts: the
//!    samples of one prompt go in one chunk unless they are more than a chunk holds. A chunk
//!    carries every distinct prompt of its samples, and the worker computes their shared
//!    prefixes once, and what chunks on one worker share once too (a prompt in two chunks
//!    would cost its last position twice: its logits are computed for each).
//! 3. Workers are ranked per request by rendezvous hashing of the request's conversation, so
//!    requests about the same query (a GRPO group) prefer the same worker and reuse its
//!    cached prefix.
//! 4. Chunks are placed one by one: on the highest-ranked worker unless its load exceeds the
//!    least-loaded worker's by more than `affinity_slack` samples' worth; then on the
//!    least-loaded one (ties by rank). A request with a large k thus spreads over the workers,
//!    and a small one stays with its affinity worker.
//!
//! Loads and sizes are in tokens of work, so that a sample counts for its prompt's length:
//! a chunk costs its prompt (prefilled once) plus max_new_tokens per sample; a worker's load
//! is the larger of what this router has placed on it and what the worker itself reports
//! (every router's work, see `pool`).

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkPolicy {
    /// Most samples in one chunk.
    pub max_samples: usize,
    /// Extra load the affinity worker may carry before a chunk goes to the least-loaded one.
    pub affinity_slack: usize,
}

impl Default for ChunkPolicy {
    fn default() -> Self {
        Self {
            max_samples: 8,
            affinity_slack: 4,
        }
    }
}

/// Samples sent to one worker together, with the distinct prompts they continue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    /// Indices into the request's distinct prompts, in text order.
    pub prompts: Vec<usize>,
    /// Sample indices (0..k), in their prompts' order.
    pub samples: Vec<u32>,
}

/// Orders samples by their prompts' text (`prompts[prompt_of[s]]` is sample s's) and cuts
/// them into chunks of at most `max_samples`, between prompts where a prompt's samples fit.
pub fn chunks<T: AsRef<str>>(
    prompts: &[T],
    prompt_of: &[usize],
    policy: ChunkPolicy,
) -> Vec<Chunk> {
    let max = policy.max_samples.max(1);
    let mut order: Vec<u32> = (0..prompt_of.len() as u32).collect();
    order.sort_by(|&a, &b| {
        let (pa, pb) = (prompt_of[a as usize], prompt_of[b as usize]);
        prompts[pa]
            .as_ref()
            .cmp(prompts[pb].as_ref())
            .then(a.cmp(&b))
    });
    // Runs of samples of one prompt, each at most a chunk.
    let mut runs: Vec<&[u32]> = Vec::new();
    for same in order.chunk_by(|&a, &b| prompt_of[a as usize] == prompt_of[b as usize]) {
        runs.extend(same.chunks(max));
    }
    let mut parts: Vec<Vec<u32>> = Vec::new();
    for run in runs {
        match parts.last_mut() {
            Some(part) if part.len() + run.len() <= max => part.extend_from_slice(run),
            _ => parts.push(run.to_vec()),
        }
    }
    parts
        .iter()
        .map(|part| {
            let mut used: Vec<usize> = Vec::new();
            for &s in part {
                let p = prompt_of[s as usize];
                if !used.contains(&p) {
                    used.push(p);
                }
            }
            Chunk {
                prompts: used,
                samples: part.to_vec(),
            }
        })
        .collect()
}

/// The distinct bytes of texts that share prefixes (the nodes of their trie): what a worker
/// computes for them, as an estimate before tokenizing.
pub fn distinct_bytes<T: AsRef<str>>(texts: &[T]) -> usize {
    let mut sorted: Vec<&str> = texts.iter().map(AsRef::as_ref).collect();
    sorted.sort_unstable();
    sorted.dedup();
    let mut total = 0;
    for (i, t) in sorted.iter().enumerate() {
        let shared = i.checked_sub(1).map_or(0, |j| {
            t.bytes()
                .zip(sorted[j].bytes())
                .take_while(|(a, b)| a == b)
                .count()
        });
        total += t.len() - shared;
    }
    total
}

/// Workers (by index into `ids`) in rendezvous order for `key`: highest hash first.
pub fn rank(key: u64, ids: &[String]) -> Vec<usize> {
    let key = key.to_le_bytes();
    let mut scored: Vec<(u64, usize)> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| (stable_hash([&key[..], id.as_bytes()]), i))
        .collect();
    scored.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    scored.into_iter().map(|(_, i)| i).collect()
}

/// The work of a chunk, in tokens: its prompt (estimated from its length, prefilled once) and
/// what its samples may generate.
pub fn chunk_tokens(prompt_bytes: usize, samples: usize, max_new_tokens: u32) -> usize {
    prompt_bytes / PROMPT_BYTES_PER_TOKEN + samples * max_new_tokens as usize
}

/// A rough bytes-per-token of prompts (the router has no tokenizer); only relative sizes
/// matter for placement.
pub const PROMPT_BYTES_PER_TOKEN: usize = 4;

/// Places chunks of the given sizes on workers whose current loads are `loads` (indexed like
/// `ranked`'s entries; both in tokens), following rule 4 above with `slack` tokens of
/// slack. Returns a worker index per chunk.
pub fn place(sizes: &[usize], ranked: &[usize], loads: &[usize], slack: usize) -> Vec<usize> {
    let mut load = loads.to_vec();
    let mut out = Vec::with_capacity(sizes.len());
    let Some(&preferred) = ranked.first() else {
        return out;
    };
    for &size in sizes {
        let min = ranked.iter().map(|&w| load[w]).min().unwrap_or(0);
        let w = if load[preferred] <= min + slack {
            preferred
        } else {
            *ranked
                .iter()
                .find(|&&w| load[w] == min)
                .unwrap_or(&preferred)
        };
        load[w] += size;
        out.push(w);
    }
    out
}

/// The affinity key of a conversation: what a GRPO group's requests have in common.
pub fn affinity_key(parts: &[&str]) -> u64 {
    stable_hash(parts.iter().map(|p| p.as_bytes()))
}

/// FNV-1a over `parts`, each followed by a separator byte that UTF-8 text never holds: the
/// same on every build and platform (std's hasher is not promised to be).
pub fn fnv1a<'a>(parts: impl IntoIterator<Item = &'a [u8]>) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for &b in part.iter().chain(std::iter::once(&0xff)) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

/// [`fnv1a`], its bits mixed (MurmurHash3's 64-bit finalizer): stable across builds and
/// platforms, so that routers built apart agree on which router owns a group and which worker
/// a prompt prefers; and mixed, because FNV-1a alone leaves the last bytes (a member id's
/// port) to its low bits, and a rendezvous ranking by it picked one of three workers for 58%
/// of keys.
pub fn stable_hash<'a>(parts: impl IntoIterator<Item = &'a [u8]>) -> u64 {
    let mut h = fnv1a(parts);
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_are_pinned_so_routers_built_apart_agree() {
        // Values computed independently (FNV-1a 64 with a 0xff after each part, then
        // MurmurHash3's fmix64): a change here moves every group to another router, and every
        // prompt to another worker, while a rollout runs old and new builds side by side.
        let key = affinity_key(&["What is 2 + 2?"]);
        assert_eq!(key, 0x7c24_b077_ddfe_ec2c);
        let ids: Vec<String> = ["r-a:1", "r-b:1", "r-c:1"].map(String::from).to_vec();
        assert_eq!(rank(key, &ids), vec![0, 1, 2]);
        assert_eq!(fnv1a([&b"k"[..], &b"a"[..]]), 0x35f3_71d5_0501_8a6f);
        assert_eq!(stable_hash([&b"k"[..], &b"a"[..]]), 0x7862_b6e7_fce8_3655);
    }

    #[test]
    fn rendezvous_ranking_spreads_keys_evenly_over_members_that_differ_by_a_port() {
        // FNV-1a alone sent 1,759 of these 3,000 keys to the first member.
        let ids: Vec<String> = ["127.0.0.1:41441", "127.0.0.1:40123", "127.0.0.1:40125"]
            .map(String::from)
            .to_vec();
        let mut top = [0usize; 3];
        for i in 0..3000 {
            top[rank(affinity_key(&[&format!("prompt {i}")]), &ids)[0]] += 1;
        }
        assert!(top.iter().all(|&n| (900..=1100).contains(&n)), "{top:?}");
    }

    #[test]
    fn samples_go_in_their_prompts_order_and_chunks_carry_their_prompts() {
        // Prompts 0 and 2 share "header A"; prompt 1 is the odd one out.
        let prompts = ["header A then 1", "header B", "header A then 2"];
        let c = chunks(
            &prompts,
            &[0, 1, 2, 0, 1, 2],
            ChunkPolicy {
                max_samples: 4,
                affinity_slack: 0,
            },
        );
        assert_eq!(
            c,
            vec![
                Chunk {
                    prompts: vec![0, 2],
                    samples: vec![0, 3, 2, 5]
                },
                Chunk {
                    prompts: vec![1],
                    samples: vec![1, 4]
                },
            ]
        );
        assert_eq!(
            distinct_bytes(&prompts),
            "header A then 1".len() + 1 + "B".len()
        );
    }

    #[test]
    fn a_prompts_samples_share_a_chunk_unless_they_are_more_than_one_holds() {
        let prompts = ["a", "b", "c"];
        // Three samples of each: 3 + 3 fit in 7, the third prompt's go to a chunk of their own
        // (cut at 7 samples, b's would be split).
        let c = chunks(
            &prompts,
            &[0, 1, 2, 0, 1, 2, 0, 1, 2],
            ChunkPolicy {
                max_samples: 7,
                affinity_slack: 0,
            },
        );
        let samples: Vec<Vec<u32>> = c.iter().map(|c| c.samples.clone()).collect();
        assert_eq!(samples, vec![vec![0, 3, 6, 1, 4, 7], vec![2, 5, 8]]);
        // Ten samples of one prompt and one of another, 4 a chunk: the ten are cut.
        let mut of = vec![0; 10];
        of.push(1);
        let c = chunks(
            &prompts,
            &of,
            ChunkPolicy {
                max_samples: 4,
                affinity_slack: 0,
            },
        );
        let sizes: Vec<usize> = c.iter().map(|c| c.samples.len()).collect();
        assert_eq!(sizes, vec![4, 4, 3]);
        assert_eq!(c[2].prompts, vec![0, 1]);
    }

    #[test]
    fn rendezvous_is_stable_and_spreads() {
        let ids: Vec<String> = (0..4).map(|i| format!("w{i}")).collect();
        assert_eq!(rank(7, &ids), rank(7, &ids));
        let firsts: std::collections::HashSet<usize> = (0..64).map(|k| rank(k, &ids)[0]).collect();
        assert_eq!(firsts.len(), 4);
        // Removing a worker that is not first keeps the first.
        let r = rank(7, &ids);
        let kept: Vec<String> = ids
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != r[1])
            .map(|(_, s)| s.clone())
            .collect();
        assert_eq!(kept[rank(7, &kept)[0]], ids[r[0]]);
    }

    #[test]
    fn small_requests_stay_large_ones_spread() {
        let p = 4;
        // Two idle workers, worker 1 preferred.
        assert_eq!(place(&[4], &[1, 0], &[0, 0], p), vec![1]);
        assert_eq!(place(&[8, 8], &[1, 0], &[0, 0], p), vec![1, 0]);
        assert_eq!(place(&[8, 8, 8, 8], &[1, 0], &[0, 0], p), vec![1, 0, 1, 0]);
        // A busy preferred worker is skipped.
        assert_eq!(place(&[2], &[1, 0], &[0, 10], p), vec![0]);
    }

    #[test]
    fn a_long_prompt_weighs_more_than_a_short_one() {
        let short = chunk_tokens(400, 2, 32);
        let long = chunk_tokens(40_000, 2, 32);
        assert_eq!(short, 100 + 64);
        assert_eq!(long, 10_000 + 64);
        // With the slack of 4 samples of 32 tokens, a worker holding one long chunk is passed
        // over, though it runs as few samples as the other.
        assert_eq!(place(&[short], &[1, 0], &[short, long], 4 * 32), vec![0]);
    }
}
