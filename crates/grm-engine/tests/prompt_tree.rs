//! One request's prompts as a prefix tree: every shared prefix is computed once, the samples'
//! tokens are those of each prompt run alone, and every block comes back — checked against
//! plain runs of the same work and an independent count of the tree's nodes.

mod common;

use common::*;
use grm_engine::workload::{grm_prompts, GrmShape};
use grm_engine::{
    Event, FinishReason, RequestId, SamplingParams, Scheduler, SchedulerConfig, Work,
};
use std::collections::{HashMap, HashSet};

type Sched = Scheduler<grm_engine::CpuBackend>;

fn scheduler(blocks: usize, block_size: usize, batch_tokens: usize, caching: bool) -> Sched {
    let cfg = SchedulerConfig {
        max_batch_tokens: batch_tokens,
        max_seqs: 256,
        default_stop_tokens: vec![1, 5],
    };
    Scheduler::new(model("tiny-f32"), blocks, block_size, caching, cfg).unwrap()
}

fn params(seed: u64, max_new: usize) -> SamplingParams {
    SamplingParams {
        temperature: 2.0,
        seed,
        max_new_tokens: max_new,
        ignore_stop: true,
        stream: false,
        logprobs: None,
        ..Default::default()
    }
}

/// The tree's nodes, counted the plain way: distinct non-empty prefixes.
fn trie_nodes(prompts: &[Vec<u32>]) -> usize {
    let mut nodes = HashSet::new();
    for p in prompts {
        for i in 1..=p.len() {
            nodes.insert(&p[..i]);
        }
    }
    nodes.len()
}

/// What a request produced.
#[derive(Default, Debug)]
struct Outcome {
    samples: HashMap<usize, Vec<u32>>,
    /// Per prompt index: (prompt_tokens, cached).
    prefilled: HashMap<usize, (usize, usize)>,
    started: usize,
}

fn drain(s: &mut Sched) -> HashMap<RequestId, Outcome> {
    let mut out: HashMap<RequestId, Outcome> = HashMap::new();
    let mut steps = 0;
    while !s.is_idle() {
        for (id, ev) in s.step() {
            let o = out.entry(id).or_default();
            match ev {
                Event::Started => o.started += 1,
                Event::Prefilled {
                    prompt_tokens,
                    cached,
                    prompt,
                } => {
                    assert!(o
                        .prefilled
                        .insert(prompt, (prompt_tokens, cached))
                        .is_none());
                }
                Event::Sample {
                    sample,
                    tokens,
                    finish,
                } => {
                    assert_eq!(finish, FinishReason::Length);
                    assert!(o.samples.insert(sample, tokens).is_none());
                }
                _ => {}
            }
        }
        steps += 1;
        assert!(steps < 100_000, "the scheduler does not make progress");
    }
    out
}

/// Each sample's tokens when each prompt runs alone, with nothing shared or cached.
fn alone(prompts: &[Vec<u32>], samples: &[(usize, SamplingParams)]) -> HashMap<usize, Vec<u32>> {
    let mut want = HashMap::new();
    for (p, prompt) in prompts.iter().enumerate() {
        let mine: Vec<usize> = (0..samples.len()).filter(|&i| samples[i].0 == p).collect();
        if mine.is_empty() {
            continue;
        }
        let mut s = scheduler(512, 16, 512, false);
        let work = Work::Generate {
            prompt: prompt.clone(),
            samples: mine.iter().map(|&i| samples[i].1.clone()).collect(),
        };
        s.submit(0, work).unwrap();
        let got = drain(&mut s).remove(&0).unwrap().samples;
        for (j, &i) in mine.iter().enumerate() {
            want.insert(i, got[&j].clone());
        }
    }
    want
}

fn assert_all_blocks_back(s: &Sched, total: usize) {
    let kv = s.kv_stats();
    assert_eq!(kv.blocks_used, 0, "{kv:?}");
    assert_eq!(kv.blocks_free + kv.blocks_evictable, total, "{kv:?}");
    assert_eq!(s.counters().requests, 0);
}

#[test]
fn a_trees_prompt_tokens_are_its_nodes_and_its_samples_those_of_each_prompt_alone() {
    // Block size 4. Aligned: every branch point (after the header, after each response) is a
    // multiple of 4; unaligned: none is.
    let layouts = [(16, vec![8, 8, 8, 8], 6), (17, vec![7, 9, 6, 11], 5)];
    let mut cases = 0;
    for (header, lens, footer) in &layouts {
        for n in 1..=4 {
            for k in [1, 2, 5, 32] {
                // A budget that takes the whole tree in one step, and one that spreads it.
                for batch in [512, 24] {
                    let shape = GrmShape {
                        header: *header,
                        responses: lens[..n].to_vec(),
                        footer: *footer,
                        samples: k,
                        vocab: 262,
                        seed: (n * 100 + k) as u64,
                    };
                    let w = grm_prompts(&shape);
                    // One prompt per sample: repeated prompts are part of the test.
                    let prompts: Vec<Vec<u32>> = w
                        .sample_prompt
                        .iter()
                        .map(|&p| w.prompts[p].clone())
                        .collect();
                    let samples: Vec<(usize, SamplingParams)> =
                        (0..k).map(|i| (i, params(i as u64 * 7 + 1, 4))).collect();
                    let want = alone(&prompts, &samples);

                    let mut s = scheduler(2048, 4, batch, true);
                    let before = s.counters().prompt_tokens_computed;
                    s.submit(
                        9,
                        Work::GenerateTree {
                            prompts: prompts.clone(),
                            samples,
                        },
                    )
                    .unwrap();
                    let got = drain(&mut s).remove(&9).unwrap();
                    let what = format!("header {header}, n {n}, k {k}, batch {batch}");
                    let nodes = trie_nodes(&prompts);
                    let computed = s.counters().prompt_tokens_computed - before;
                    assert_eq!(computed as usize, nodes, "{what}");
                    assert_eq!(
                        grm_engine::scheduler::prompt_tree::unique_tokens(
                            &prompts.iter().map(|p| &p[..]).collect::<Vec<_>>()
                        ),
                        nodes
                    );
                    assert_eq!(
                        got.samples, want,
                        "{what}: tokens differ from the plain runs"
                    );
                    assert_eq!(got.started, 1);
                    // Prefilled once per prompt; what was not cached for them adds up to
                    // what was computed.
                    assert_eq!(got.prefilled.len(), k, "{what}");
                    let fresh: usize = got.prefilled.values().map(|(t, c)| t - c).sum();
                    assert_eq!(fresh, nodes, "{what}");
                    for (p, (t, _)) in &got.prefilled {
                        assert_eq!(*t, prompts[*p].len());
                    }
                    assert_all_blocks_back(&s, 2048);
                    cases += 1;
                }
            }
        }
    }
    assert_eq!(cases, 64);
}

/// The shared prefix of every prompt is stored once: with n = 4 and 8 distinct prompts, the
/// blocks in use at the peak are far fewer than 8 separate prompts would need.
#[test]
fn a_trees_shared_blocks_are_stored_once() {
    let shape = GrmShape {
        header: 64,
        responses: vec![12, 12, 12, 12],
        footer: 8,
        samples: 8,
        vocab: 262,
        seed: 3,
    };
    let w = grm_prompts(&shape);
    let samples: Vec<(usize, SamplingParams)> = (0..8)
        .map(|i| (w.sample_prompt[i], params(i as u64, 1)))
        .collect();
    let mut s = scheduler(1024, 4, 512, true);
    s.submit(
        1,
        Work::GenerateTree {
            prompts: w.prompts.clone(),
            samples,
        },
    )
    .unwrap();
    s.step(); // the whole tree in one step
    let nodes = trie_nodes(&w.prompts);
    let c = s.counters();
    assert_eq!(c.prompt_tokens_computed as usize, nodes);
    // The header's 16 full blocks are one set for all prompts, and so is every shared block
    // after it: about a block per 4 of the tree's nodes, plus a partial one per prompt.
    let separate: usize = w.prompts.iter().map(|p| p.len().div_ceil(4)).sum();
    assert!(c.peak_blocks_shared >= 16, "{c:?}");
    assert!(c.peak_blocks_used <= nodes / 4 + w.prompts.len(), "{c:?}");
    assert!(3 * c.peak_blocks_used < 2 * separate, "{c:?} vs {separate}");
    drain(&mut s);
    assert_all_blocks_back(&s, 1024);
}

/// A branch block whose shared part another prompt has from the prefix cache is copied from
/// there, not computed: the first request leaves prompt A's blocks cached; the tree [A, B],
/// with B branching off A inside a block, computes A's uncached tail and B's own part only.
#[test]
fn a_cached_part_of_a_branch_block_is_copied_not_recomputed() {
    let a: Vec<u32> = std::iter::once(2)
        .chain((1..40).map(|i| 6 + i * 5 % 250))
        .collect();
    let mut b = a.clone();
    for (i, t) in b.iter_mut().enumerate().skip(18) {
        *t = 6 + (i as u32 * 11) % 250;
    }
    assert_eq!(a.iter().zip(&b).take_while(|(x, y)| x == y).count(), 18);
    for order in [[0usize, 1], [1, 0]] {
        let mut s = scheduler(256, 4, 512, true);
        s.submit(
            1,
            Work::Generate {
                prompt: a.clone(),
                samples: vec![params(1, 3)],
            },
        )
        .unwrap();
        drain(&mut s);
        let prompts: Vec<Vec<u32>> = order.iter().map(|&i| [&a, &b][i].clone()).collect();
        let samples: Vec<(usize, SamplingParams)> =
            (0..4).map(|i| (i % 2, params(10 + i as u64, 5))).collect();
        let want = alone(&prompts, &samples);
        let before = s.counters().prompt_tokens_computed;
        s.submit(
            2,
            Work::GenerateTree {
                prompts: prompts.clone(),
                samples,
            },
        )
        .unwrap();
        let got = drain(&mut s).remove(&2).unwrap();
        assert_eq!(got.samples, want, "order {order:?}");
        // A: 36 of its 40 tokens cached (9 blocks; the last is computed for its logits).
        // B: 16 cached, 2 shared with A, 22 computed.
        let computed = s.counters().prompt_tokens_computed - before;
        assert_eq!(computed, 4 + 22, "order {order:?}");
        let ia = order.iter().position(|&i| i == 0).unwrap();
        assert_eq!(got.prefilled[&ia], (40, 36));
        assert_eq!(got.prefilled[&(1 - ia)], (40, 18));
        assert_all_blocks_back(&s, 256);
    }
}

/// Too few blocks: trees and samples are preempted and computed again, a tree too large for
/// the whole pool is admitted in groups, and still every sample's tokens are those of its
/// prompt alone and every block comes back.
#[test]
fn under_block_pressure_trees_keep_their_outputs_and_return_their_blocks() {
    let mut work = Vec::new();
    for r in 0..4u64 {
        let shape = GrmShape {
            header: 21,
            responses: vec![9, 7, 10],
            footer: 4,
            samples: 6,
            vocab: 262,
            seed: r,
        };
        let w = grm_prompts(&shape);
        let samples: Vec<(usize, SamplingParams)> = (0..6)
            .map(|i| (w.sample_prompt[i], params(r * 10 + i as u64, 12)))
            .collect();
        work.push((w.prompts, samples));
    }
    // 40 blocks of 4: one prompt with its sample needs 16; one tree of up to 6 prompts needs
    // more than the pool holds.
    for (blocks, batch) in [(40, 512), (40, 16), (70, 32)] {
        let mut s = scheduler(blocks, 4, batch, true);
        for (r, (prompts, samples)) in work.iter().enumerate() {
            let work = Work::GenerateTree {
                prompts: prompts.clone(),
                samples: samples.clone(),
            };
            s.submit(r as u64, work).unwrap();
        }
        let mut got = drain(&mut s);
        assert!(
            s.counters().preemptions > 0,
            "{blocks} blocks: the test must preempt"
        );
        for (r, (prompts, samples)) in work.iter().enumerate() {
            let o = got.remove(&(r as u64)).unwrap();
            assert_eq!(
                o.samples,
                alone(prompts, samples),
                "{blocks} blocks, request {r}"
            );
            assert_eq!(o.prefilled.len(), prompts.len());
            assert_eq!(o.started, 1);
        }
        assert_all_blocks_back(&s, blocks);
    }
}

#[test]
fn cancelling_trees_at_any_step_returns_every_block() {
    let shape = GrmShape {
        header: 33,
        responses: vec![11, 6, 9, 8],
        footer: 3,
        samples: 12,
        vocab: 262,
        seed: 11,
    };
    let w = grm_prompts(&shape);
    let samples: Vec<(usize, SamplingParams)> = (0..12)
        .map(|i| (w.sample_prompt[i], params(i as u64, 20)))
        .collect();
    for cancel_after in 0..12 {
        let mut s = scheduler(300, 4, 20, true);
        for r in 0..3 {
            let work = Work::GenerateTree {
                prompts: w.prompts.clone(),
                samples: samples.clone(),
            };
            s.submit(r, work).unwrap();
        }
        for _ in 0..cancel_after {
            s.step();
        }
        assert!(s.cancel(1));
        assert!(!s.has_request(1));
        if cancel_after % 2 == 0 {
            assert!(s.cancel(0) && s.cancel(2));
        }
        drain(&mut s);
        assert_all_blocks_back(&s, 300);
    }
}

#[test]
fn a_tree_is_refused_with_a_reason() {
    let mut s = scheduler(64, 4, 64, true);
    let p = vec![2u32, 7, 8, 9];
    let refuse = |s: &mut Sched, prompts: Vec<Vec<u32>>, samples: Vec<(usize, SamplingParams)>| {
        s.submit(1, Work::GenerateTree { prompts, samples })
            .unwrap_err()
            .to_string()
    };
    let e = refuse(&mut s, vec![p.clone()], vec![(1, params(0, 2))]);
    assert!(
        e.contains("sample 0 continues prompt 1, but there are 1 prompts"),
        "{e}"
    );
    let e = refuse(&mut s, vec![p.clone(), p.clone()], vec![(0, params(0, 2))]);
    assert!(e.contains("prompt 1 has no sample"), "{e}");
    let e = refuse(
        &mut s,
        vec![p.clone(), vec![]],
        vec![(0, params(0, 2)), (1, params(0, 2))],
    );
    assert!(e.contains("prompt 1 is empty"), "{e}");
    let e = refuse(
        &mut s,
        vec![p.clone(), vec![2, 999]],
        vec![(0, params(0, 2)), (1, params(0, 2))],
    );
    assert!(e.contains("prompt 1: token id 999"), "{e}");
    let e = refuse(&mut s, vec![], vec![(0, params(0, 2))]);
    assert!(e.contains("at least one prompt"), "{e}");
    assert!(s.is_idle());
}

/// Through the engine thread: `Prefilled` per prompt index, then the samples.
#[test]
fn the_engine_thread_serves_a_tree() {
    use grm_engine::{Engine, EngineOptions};
    let engine = Engine::start(
        model("tiny-f32"),
        EngineOptions {
            num_blocks: Some(256),
            block_size: 8,
            ..Default::default()
        },
    )
    .unwrap();
    let shape = GrmShape {
        header: 40,
        responses: vec![10, 10],
        footer: 5,
        samples: 4,
        vocab: 262,
        seed: 1,
    };
    let w = grm_prompts(&shape);
    assert_eq!(w.prompts.len(), 2, "both orders appear");
    let samples: Vec<(usize, SamplingParams)> = (0..4)
        .map(|i| (w.sample_prompt[i], params(i as u64, 6)))
        .collect();
    let mut sub = engine
        .submit_blocking(Work::GenerateTree {
            prompts: w.prompts.clone(),
            samples: samples.clone(),
        })
        .unwrap();
    let mut events = Vec::new();
    while let Some(ev) = sub.next_blocking() {
        events.push(ev);
    }
    assert_eq!(events[0], Event::Started);
    let mut prefilled: Vec<usize> = events
        .iter()
        .filter_map(|e| match e {
            Event::Prefilled { prompt, .. } => Some(*prompt),
            _ => None,
        })
        .collect();
    prefilled.sort();
    assert_eq!(prefilled, vec![0, 1]);
    let mut got = HashMap::new();
    for e in &events {
        if let Event::Sample { sample, tokens, .. } = e {
            got.insert(*sample, tokens.clone());
        }
    }
    assert_eq!(got, alone(&w.prompts, &samples));
}

/// A prompt that is a prefix of another: before it, it is the other's first part; after it,
/// all but its last token are shared (that one is computed again, for its logits).
#[test]
fn a_prompt_that_is_a_prefix_of_another() {
    let long: Vec<u32> = std::iter::once(2)
        .chain((1..40).map(|i| 6 + i * 7 % 250))
        .collect();
    for short_len in [20, 23] {
        let short = long[..short_len].to_vec();
        for (prompts, extra) in [
            (vec![short.clone(), long.clone()], 0),
            (vec![long.clone(), short.clone()], 1),
        ] {
            let samples: Vec<(usize, SamplingParams)> =
                (0..4).map(|i| (i % 2, params(i as u64, 5))).collect();
            let want = alone(&prompts, &samples);
            let mut s = scheduler(256, 4, 512, true);
            s.submit(
                1,
                Work::GenerateTree {
                    prompts: prompts.clone(),
                    samples,
                },
            )
            .unwrap();
            let got = drain(&mut s).remove(&1).unwrap();
            assert_eq!(got.samples, want, "{short_len}, {extra}");
            let computed = s.counters().prompt_tokens_computed as usize;
            assert_eq!(
                computed,
                trie_nodes(&prompts) + extra,
                "{short_len}, {extra}"
            );
            assert_all_blocks_back(&s, 256);
        }
    }
}

/// A request cut into chunks of whole prompts, as the router cuts one: each chunk's work
/// (its distinct prompts and its samples) and its samples' indices in the request.
/// `samples[i]`: sample i's prompt (an index into `prompts`) and its sampling.
fn chunked(
    prompts: &[Vec<u32>],
    samples: &[(usize, SamplingParams)],
    per_chunk: usize,
) -> Vec<(Work, Vec<usize>)> {
    // Per chunk: its prompts, its samples (by its prompts), their indices in the request.
    type Chunk = (Vec<Vec<u32>>, Vec<(usize, SamplingParams)>, Vec<usize>);
    let mut chunks: Vec<Chunk> = Vec::new();
    for (p, prompt) in prompts.iter().enumerate() {
        let mine: Vec<usize> = (0..samples.len()).filter(|&i| samples[i].0 == p).collect();
        if mine.is_empty() {
            continue;
        }
        if chunks
            .last()
            .is_none_or(|(_, _, ids)| ids.len() + mine.len() > per_chunk)
        {
            chunks.push(Default::default());
        }
        let Some((ps, ss, ids)) = chunks.last_mut() else {
            unreachable!()
        };
        ps.push(prompt.clone());
        ss.extend(mine.iter().map(|&i| (ps.len() - 1, samples[i].1.clone())));
        ids.extend(mine);
    }
    chunks
        .into_iter()
        .map(|(prompts, samples, ids)| (Work::GenerateTree { prompts, samples }, ids))
        .collect()
}

/// Each chunk's samples are those of their prompts alone (`want`, by index in the request).
fn assert_chunk_samples(
    got: &HashMap<RequestId, Outcome>,
    chunks: &[(Work, Vec<usize>)],
    want: &HashMap<usize, Vec<u32>>,
    what: &str,
) {
    for (c, (_, ids)) in chunks.iter().enumerate() {
        for (local, i) in ids.iter().enumerate() {
            assert_eq!(
                got[&(c as u64)].samples[&local],
                want[i],
                "{what}: sample {i}"
            );
        }
    }
}

/// The chunks of one request run at once on one engine compute each position of the
/// request's prompts once, as one tree would: a chunk takes what another chunk's samples hold
/// (full blocks shared, the block it branches in copied) and waits for what another chunk is
/// computing. With and without the prefix cache, at any step budget that lets a chunk in while
/// others decode, and when the later chunks come while the first decodes; the samples are
/// those of each prompt alone.
#[test]
fn the_chunks_of_a_request_compute_their_common_prefixes_once() {
    let layouts = [(16, vec![8, 8, 8, 8], 6), (17, vec![7, 9, 6, 11], 5)];
    let mut cases = 0;
    for (header, lens, footer) in &layouts {
        for (n, k) in [(2, 8), (3, 16), (4, 32)] {
            let shape = GrmShape {
                header: *header,
                responses: lens[..n].to_vec(),
                footer: *footer,
                samples: k,
                vocab: 262,
                seed: (n * 10 + k) as u64,
            };
            let w = grm_prompts(&shape);
            let used: Vec<Vec<u32>> = (0..w.prompts.len())
                .filter(|p| w.sample_prompt.contains(p))
                .map(|p| w.prompts[p].clone())
                .collect();
            let nodes = trie_nodes(&used);
            let all: Vec<(usize, SamplingParams)> = (0..k)
                .map(|i| (w.sample_prompt[i], params(i as u64 * 3 + 1, 24)))
                .collect();
            let want = alone(&w.prompts, &all);
            let chunks = chunked(&w.prompts, &all, 4);
            assert!(chunks.len() >= 2);
            for caching in [false, true] {
                for batch in [512, 48, 7] {
                    for late in [0, 3] {
                        let what = format!(
                            "header {header}, n {n}, k {k}, caching {caching}, batch {batch}, late {late}"
                        );
                        let mut s = scheduler(2048, 4, batch, caching);
                        let mut got: HashMap<RequestId, Outcome> = HashMap::new();
                        for (c, (work, _)) in chunks.iter().enumerate() {
                            s.submit(c as u64, work.clone()).unwrap();
                            // The first chunk alone for a few steps: the others come while
                            // it decodes.
                            if c == 0 && late > 0 {
                                for _ in 0..late {
                                    for (id, ev) in s.step() {
                                        let o = got.entry(id).or_default();
                                        if let Event::Prefilled {
                                            prompt_tokens,
                                            cached,
                                            prompt,
                                        } = ev
                                        {
                                            o.prefilled.insert(prompt, (prompt_tokens, cached));
                                        }
                                    }
                                }
                            }
                        }
                        for (id, o) in drain(&mut s) {
                            let e = got.entry(id).or_default();
                            e.samples.extend(o.samples);
                            e.prefilled.extend(o.prefilled);
                        }
                        let computed = s.counters().prompt_tokens_computed as usize;
                        // A budget below the live samples' count (7 against 32) admits no
                        // chunk while the first ones decode: their samples may end first, and
                        // what they held is then computed again (its partial blocks only,
                        // with the cache).
                        if batch > 7 {
                            assert_eq!(computed, nodes, "{what}");
                        } else {
                            assert!(computed >= nodes, "{what}");
                        }
                        let fresh: usize = got
                            .values()
                            .flat_map(|o| o.prefilled.values())
                            .map(|(t, c)| t - c)
                            .sum();
                        assert_eq!(fresh, computed, "{what}: the usage's uncached tokens");
                        assert_chunk_samples(&got, &chunks, &want, &what);
                        assert_all_blocks_back(&s, 2048);
                        cases += 1;
                    }
                }
            }
        }
    }
    assert_eq!(cases, 72);
}

/// Chunks of one request sharing across requests under block pressure: preempted, computed
/// again, sharing with whoever holds the prefix then; every sample as its prompt's alone and
/// every block back (a step whose copies overlap panics in `drain`).
#[test]
fn chunks_sharing_a_prefix_under_block_pressure_keep_their_outputs() {
    let shape = GrmShape {
        header: 21,
        responses: vec![9, 7, 10],
        footer: 4,
        samples: 12,
        vocab: 262,
        seed: 5,
    };
    let w = grm_prompts(&shape);
    let all: Vec<(usize, SamplingParams)> = (0..12)
        .map(|i| (w.sample_prompt[i], params(40 + i as u64, 12)))
        .collect();
    let want = alone(&w.prompts, &all);
    let chunks = chunked(&w.prompts, &all, 3);
    for (blocks, batch) in [(40, 512), (40, 16), (60, 32), (90, 8)] {
        let mut s = scheduler(blocks, 4, batch, blocks > 50);
        for (c, (work, _)) in chunks.iter().enumerate() {
            s.submit(c as u64, work.clone()).unwrap();
        }
        let got = drain(&mut s);
        if blocks == 40 {
            assert!(s.counters().preemptions > 0, "the test must preempt");
        }
        assert_chunk_samples(
            &got,
            &chunks,
            &want,
            &format!("{blocks} blocks, batch {batch}"),
        );
        assert_all_blocks_back(&s, blocks);
    }
}
