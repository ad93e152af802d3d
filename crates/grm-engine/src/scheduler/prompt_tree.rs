//! A request's prompts as a prefix tree (the idea of SGLang's RadixAttention, inside one
//! request): every position of the tree is computed once, by the first prompt that holds it,
//! and every other prompt through that position reads the same KV.
//!
//! The prompts are computed one after another as one stream: prompt j computes only its
//! positions `from[j]..len[j]`; positions before `from[j]` it shares with earlier prompts (or
//! has from the cross-request prefix cache). Sharing is by block: a full block of a shared
//! prefix is one block in every table that holds it. The block where prompt j branches off
//! (shared in part) is its own; its shared part is copied there from a cached block when one
//! holds it already, or written there by the rows that compute it, as they are computed
//! ("extra slots") — so branches can be computed in the same step as their shared prefix.
//!
//! This module is pure: it decides who computes what; the scheduler runs it.

use crate::kv::{BlockId, CopyOp};

/// Length of the common prefix of two token runs.
pub(super) fn lcp(a: &[u32], b: &[u32]) -> usize {
    // Compared 16 at a time (a memcmp each), then one by one in the first piece that differs:
    // admission compares a prompt with every live sample's tokens.
    let whole = a
        .chunks(16)
        .zip(b.chunks(16))
        .take_while(|(x, y)| x == y)
        .count();
    let at = (whole * 16).min(a.len()).min(b.len());
    at + a[at..]
        .iter()
        .zip(&b[at..])
        .take_while(|(x, y)| x == y)
        .count()
}

/// How distinct prompts share their prefixes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreeShape {
    /// Common prefix length of every pair.
    lcp: Vec<Vec<usize>>,
    /// Per prompt: the earlier prompt it shares the longest prefix with, if any, and the
    /// positions it takes from it (at most its length − 1: its last position is computed,
    /// for its logits).
    pub donor: Vec<Option<(usize, usize)>>,
}

impl TreeShape {
    pub fn new(prompts: &[&[u32]]) -> Self {
        let n = prompts.len();
        let mut l = vec![vec![0; n]; n];
        for i in 0..n {
            l[i][i] = prompts[i].len();
            for j in 0..i {
                let v = lcp(prompts[i], prompts[j]);
                l[i][j] = v;
                l[j][i] = v;
            }
        }
        let donor = (0..n)
            .map(|j| {
                // The first of the longest, so ties go to the earliest prompt.
                let (best, shared) =
                    (0..j)
                        .map(|i| (i, l[i][j]))
                        .fold(
                            (None, 0),
                            |(b, s), (i, v)| if v > s { (Some(i), v) } else { (b, s) },
                        );
                best.map(|i| (i, shared.min(prompts[j].len() - 1)))
            })
            .collect();
        Self { lcp: l, donor }
    }

    /// Positions prompt `j` takes from an earlier prompt.
    pub fn shared(&self, j: usize) -> usize {
        self.donor[j].map_or(0, |(_, s)| s)
    }

    /// Blocks the first `m` prompts hold together when nothing is cached.
    pub fn blocks(&self, lens: &[usize], m: usize, block_size: usize) -> usize {
        (0..m)
            .map(|j| lens[j].div_ceil(block_size) - self.shared(j) / block_size)
            .sum()
    }
}

/// Tokens computed for a set of prompts when each position of their prefix tree is computed
/// once: the tree's nodes. (A prompt that is a prefix of another adds its last token again:
/// its logits are computed for it.)
pub fn unique_tokens(prompts: &[&[u32]]) -> usize {
    let mut distinct: Vec<&[u32]> = Vec::new();
    for p in prompts {
        if !distinct.contains(p) {
            distinct.push(p);
        }
    }
    let shape = TreeShape::new(&distinct);
    (0..distinct.len())
        .map(|j| distinct[j].len() - shape.shared(j))
        .sum()
}

/// Who computes what, once the prompts hold blocks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TreeLayout {
    /// Per prompt: the first position computed for it.
    pub from: Vec<usize>,
    /// Shared parts of branch blocks already in the cache, copied before the first step.
    pub copies: Vec<CopyOp>,
    /// Per prompt: (position, slot) pairs — a row it computes is also written to the slot,
    /// the same position in a later prompt's branch block.
    pub extra: Vec<Vec<(usize, usize)>>,
}

/// Lays out a tree of prompts over their block tables. `have[j]`: leading positions of prompt
/// j in whole blocks computed before (the prefix cache's, or a live sequence's outside the
/// tree); `outside[j]`: a block outside the tree whose first slots hold j's positions from
/// `have[j]` up to the number given (a live sequence's, computed before); `tables[j]`: its
/// blocks, shared with its donor where the shape says so. `None` when some position would
/// have no source (a bug in the caller's tables).
pub fn layout(
    prompts: &[&[u32]],
    shape: &TreeShape,
    have: &[usize],
    outside: &[Option<(BlockId, usize)>],
    tables: &[&[BlockId]],
    block_size: usize,
) -> Option<TreeLayout> {
    let n = prompts.len();
    let bs = block_size;
    // A prompt takes positions from its donor, from the cache, and from another prompt's
    // cached block (any prompt's: that one is there already). The last never reaches past
    // the block after its own hits: its walk through the cache would have hit a full one.
    let from: Vec<usize> = (0..n)
        .map(|j| {
            let from_cached = (0..n)
                .filter(|&c| c != j)
                .map(|c| shape.lcp[c][j].min(have[c]))
                .max()
                .unwrap_or(0)
                .min(prompts[j].len() - 1);
            let from_outside = outside.get(j).copied().flatten().map_or(0, |(_, n)| n);
            shape
                .shared(j)
                .max(have[j])
                .max(from_cached)
                .max(from_outside)
        })
        .collect();
    let mut out = TreeLayout {
        from,
        copies: Vec::new(),
        extra: vec![Vec::new(); n],
    };
    for j in 0..n {
        // Positions before `from` in a block of j's own (not its donor's, not a hit).
        let q0 = have[j].max(shape.shared(j) / bs * bs);
        let end = out.from[j];
        if end <= q0 {
            continue;
        }
        let b = q0 / bs;
        let dst = *tables[j].get(b)?;
        // A prompt whose block b came from the cache and holds a part of j's: copy that part.
        let mut best = (0..n)
            .filter(|&c| c != j && have[c] > q0 && shape.lcp[c][j] > q0)
            .map(|c| Some((shape.lcp[c][j].min(end), *tables[c].get(b)?)))
            .collect::<Option<Vec<_>>>()?
            .into_iter()
            .max();
        // Or the live sequence's block that holds j's prefix into this block.
        if let Some((src, m)) = outside.get(j).copied().flatten() {
            if m > q0 && m / bs == b && best.is_none_or(|(k, _)| m.min(end) > k) {
                best = Some((m.min(end), src));
            }
        }
        let mut filled = q0;
        if let Some((m, src)) = best {
            out.copies.push(CopyOp {
                src,
                dst,
                slots: m - q0,
            });
            filled = m;
        }
        // The rest is written by the rows that compute it (always an earlier prompt's).
        for p in filled..end {
            let i = (0..n).find(|&i| {
                i != j && out.from[i] <= p && p < prompts[i].len() && shape.lcp[i][j] > p
            })?;
            out.extra[i].push((p, dst as usize * bs + p % bs));
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trie_nodes(prompts: &[&[u32]]) -> usize {
        let mut nodes = std::collections::HashSet::new();
        for p in prompts {
            for i in 1..=p.len() {
                nodes.insert(p[..i].to_vec());
            }
        }
        nodes.len()
    }

    #[test]
    fn lcp_counts_the_common_prefix_at_every_length() {
        let a: Vec<u32> = (0..70).collect();
        for cut in 0..=70 {
            let mut b = a.clone();
            if cut < 70 {
                b[cut] = 999;
            }
            assert_eq!(lcp(&a, &b), cut);
            assert_eq!(lcp(&a[..cut], &a), cut);
            assert_eq!(lcp(&a, &a[..cut]), cut);
        }
    }

    #[test]
    fn unique_tokens_are_the_trie_nodes() {
        let a: Vec<u32> = (0..40).collect();
        let mut b = a.clone();
        b[25] = 99;
        let mut c = b.clone();
        c[33] = 98;
        let mut d = a.clone();
        d[3] = 97;
        let all = [&a[..], &b, &c, &d, &a, &c];
        assert_eq!(unique_tokens(&all), trie_nodes(&all));
        assert_eq!(unique_tokens(&all), 40 + 15 + 7 + 37);
        let shape = TreeShape::new(&[&a, &b, &c, &d]);
        assert_eq!(
            shape.donor,
            vec![None, Some((0, 25)), Some((1, 33)), Some((0, 3))]
        );
    }

    #[test]
    fn a_branch_block_is_filled_by_copy_from_the_cache_or_by_the_rows_computing_it() {
        // Block size 4. b branches from a at 6 (inside block 1); c from b at 7.
        let a: Vec<u32> = (0..12).collect();
        let mut b = a.clone();
        b[6] = 99;
        let mut c = b.clone();
        c[7] = 98;
        let prompts = [&a[..], &b, &c];
        let shape = TreeShape::new(&prompts);
        // Nothing cached: block 0 shared by all, each has its own block 1.
        let tables: [&[BlockId]; 3] = [&[0, 1, 2], &[0, 3, 4], &[0, 5, 6]];
        let l = layout(&prompts, &shape, &[0, 0, 0], &[None; 3], &tables, 4).unwrap();
        assert_eq!(l.from, vec![0, 6, 7]);
        assert!(l.copies.is_empty());
        // a's rows 4 and 5 are also written into b's and c's block 1; b's row 6 into c's.
        assert_eq!(
            l.extra,
            vec![
                vec![(4, 12), (5, 13), (4, 20), (5, 21)],
                vec![(6, 22)],
                vec![]
            ]
        );
        // a's first two blocks were cached: b copies 2 slots of a's block 1, c takes 2 from
        // a's block and its position 6 from b's row.
        let tables: [&[BlockId]; 3] = [&[7, 8, 2], &[7, 3, 4], &[7, 5, 6]];
        let l = layout(&prompts, &shape, &[8, 4, 4], &[None; 3], &tables, 4).unwrap();
        assert_eq!(l.from, vec![8, 6, 7]);
        assert_eq!(
            l.copies,
            vec![
                CopyOp {
                    src: 8,
                    dst: 3,
                    slots: 2
                },
                CopyOp {
                    src: 8,
                    dst: 5,
                    slots: 2
                },
            ]
        );
        assert_eq!(l.extra, vec![vec![], vec![(6, 22)], vec![]]);
    }
}
