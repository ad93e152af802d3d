//! Which decode steps the GPU replays from a CUDA graph, and the cache of those graphs, on the
//! host (no CUDA here, so it is tested on the CPU).
//!
//! A decode step launches a dozen kernels and cuBLAS calls per layer, each a few microseconds
//! of host time: on the 9b shape the host, not the GPU, sets the pace (bench/README.md). A step
//! whose rows all decode is recorded once per shape as a CUDA graph, its inputs (tokens,
//! positions, block tables, RoPE rows, slots) read from buffers that stay where they are, and
//! later steps of that shape copy their inputs into those buffers and replay the graph: one
//! launch for every layer.
//!
//! The shape is what the recorded launches fix: the rows, the decode kernel's key splits on
//! each kind of layer (they set its grid), and the RoPE row width. Positions, block tables and
//! tokens may differ from step to step; the kernels read them from the device.

use super::plan::{decode_splits, AttentionPlan};
use std::collections::HashMap;

/// Most rows of a step recorded as a graph; a larger step runs eagerly (its launches are few
/// against its work, and its graph's activations would be large: the graphs' memory lies
/// outside the KV budget, in the 10% of the GPU the process leaves to activations).
pub const MAX_GRAPH_ROWS: usize = 256;

/// Graphs kept at once; the least recently used goes first.
pub const MAX_GRAPHS: usize = 32;

/// A shape of decode step that one graph replays.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct GraphKey {
    pub rows: usize,
    /// The decode kernel's splits on full-attention layers, and on sliding layers.
    pub splits: usize,
    pub sliding_splits: usize,
    /// Half the head size: the RoPE rows' width.
    pub half: usize,
}

/// The key of a step, where it can be replayed: every row decodes (no prompt chunk, no extra
/// KV slots), and there are at most [`MAX_GRAPH_ROWS`].
pub fn key(
    plan: &AttentionPlan,
    rows: usize,
    extra_slots: usize,
    window: Option<usize>,
    half: usize,
) -> Option<GraphKey> {
    let decode_only =
        rows > 0 && plan.tile_row0.is_empty() && plan.decode_rows.len() == rows && extra_slots == 0;
    (decode_only && rows <= MAX_GRAPH_ROWS).then(|| GraphKey {
        rows,
        splits: decode_splits(plan.decode_max_pos, None),
        sliding_splits: decode_splits(plan.decode_max_pos, window),
        half,
    })
}

/// What a step of a known shape does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Use {
    /// Runs eagerly: the shape's first sighting (a shape seen once may not come again, and
    /// recording costs more than one step), or a shape whose recording failed.
    Eager,
    /// Runs in the shape's buffers and is recorded, then replayed.
    Record,
    /// Copies its inputs into the shape's buffers and replays the graph.
    Replay,
}

struct Slot<E> {
    seen: u32,
    last: u64,
    failed: bool,
    recorded: bool,
    value: Option<E>,
}

/// Graphs and their input buffers (`E`), by shape.
pub struct GraphCache<E> {
    slots: HashMap<GraphKey, Slot<E>>,
    clock: u64,
    limit: usize,
}

impl<E> Default for GraphCache<E> {
    fn default() -> Self {
        Self::with_limit(MAX_GRAPHS)
    }
}

impl<E> GraphCache<E> {
    pub fn with_limit(limit: usize) -> Self {
        Self {
            slots: HashMap::new(),
            clock: 0,
            limit: limit.max(1),
        }
    }

    /// A step of `key` arrives: what it does, and where it does not run eagerly, the shape's
    /// value (made by `make` the first time).
    pub fn arrive(
        &mut self,
        key: GraphKey,
        make: impl FnOnce() -> Option<E>,
    ) -> (Use, Option<&mut E>) {
        self.clock += 1;
        if !self.slots.contains_key(&key) && self.slots.len() >= self.limit {
            if let Some(old) = self
                .slots
                .iter()
                .min_by_key(|(_, s)| s.last)
                .map(|(k, _)| *k)
            {
                self.slots.remove(&old);
            }
        }
        let slot = self.slots.entry(key).or_insert(Slot {
            seen: 0,
            last: 0,
            failed: false,
            recorded: false,
            value: None,
        });
        slot.seen += 1;
        slot.last = self.clock;
        if slot.failed || slot.seen < 2 {
            return (Use::Eager, None);
        }
        if slot.value.is_none() {
            slot.value = make();
        }
        match slot.value.as_mut() {
            None => (Use::Eager, None),
            Some(v) if slot.recorded => (Use::Replay, Some(v)),
            Some(v) => (Use::Record, Some(v)),
        }
    }

    /// The shape's value, as `arrive` left it.
    pub fn get(&mut self, key: &GraphKey) -> Option<&mut E> {
        self.slots.get_mut(key).and_then(|s| s.value.as_mut())
    }

    /// The shape was recorded: later steps replay it.
    pub fn recorded(&mut self, key: &GraphKey) {
        if let Some(s) = self.slots.get_mut(key) {
            s.recorded = true;
        }
    }

    /// The shape's buffers must be made again (a larger block table): its graph read the old
    /// ones, so it is recorded again.
    pub fn forget(&mut self, key: &GraphKey) {
        if let Some(s) = self.slots.get_mut(key) {
            s.value = None;
            s.recorded = false;
        }
    }

    /// Recording the shape failed: it runs eagerly from now on.
    pub fn fail(&mut self, key: &GraphKey) {
        if let Some(s) = self.slots.get_mut(key) {
            s.failed = true;
            s.value = None;
            s.recorded = false;
        }
    }

    pub fn len(&self) -> usize {
        self.slots.values().filter(|s| s.value.is_some()).count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::AttentionMeta;
    use crate::cuda::plan::{plan, PREFILL_PAIRS};

    fn meta(positions: Vec<u32>, span_of: Vec<u32>, seqs: usize) -> AttentionMeta {
        AttentionMeta {
            positions,
            span_of,
            spans: vec![vec![0, 1, 2]; seqs],
            block_size: 16,
        }
    }

    #[test]
    fn only_steps_whose_rows_all_decode_have_a_key() {
        // Three samples decoding at positions 20, 300 and 7.
        let m = meta(vec![20, 300, 7], vec![0, 1, 2], 3);
        let p = plan(&m, 2, PREFILL_PAIRS);
        let k = key(&p, 3, 0, Some(64), 32).unwrap();
        assert_eq!(
            k,
            GraphKey {
                rows: 3,
                splits: 2,
                sliding_splits: 1,
                half: 32
            }
        );
        // A step of the same rows and splits at other positions has the same key.
        let m2 = meta(vec![400, 21, 8], vec![0, 1, 2], 3);
        assert_eq!(
            key(&plan(&m2, 2, PREFILL_PAIRS), 3, 0, Some(64), 32),
            Some(k)
        );
        // Past 512 keys the full layers split in three: another graph.
        let m3 = meta(vec![600, 21, 8], vec![0, 1, 2], 3);
        assert_eq!(
            key(&plan(&m3, 2, PREFILL_PAIRS), 3, 0, Some(64), 32).map(|k| k.splits),
            Some(3)
        );
        // A prompt chunk, an extra KV slot, no rows, or too many rows: eager.
        let chunk = meta(vec![5, 6, 7, 30], vec![0, 0, 0, 1], 2);
        assert_eq!(key(&plan(&chunk, 2, PREFILL_PAIRS), 4, 0, None, 32), None);
        assert_eq!(key(&p, 3, 1, Some(64), 32), None);
        assert_eq!(key(&AttentionPlan::default(), 0, 0, None, 32), None);
        let n = MAX_GRAPH_ROWS + 1;
        let many = meta(vec![9; n], (0..n as u32).collect(), n);
        assert_eq!(key(&plan(&many, 2, PREFILL_PAIRS), n, 0, None, 32), None);
    }

    fn k(rows: usize) -> GraphKey {
        GraphKey {
            rows,
            splits: 1,
            sliding_splits: 1,
            half: 4,
        }
    }

    #[test]
    fn a_shape_is_recorded_at_its_second_step_then_replayed() {
        let mut c: GraphCache<u32> = GraphCache::with_limit(2);
        let mut made = 0;
        let mut make = || {
            made += 1;
            Some(made)
        };
        assert_eq!(c.arrive(k(1), &mut make).0, Use::Eager);
        let (u, v) = c.arrive(k(1), &mut make);
        assert_eq!((u, v.copied()), (Use::Record, Some(1)));
        // Until recording is confirmed, the next step records again, in the same buffers.
        assert_eq!(c.arrive(k(1), &mut make).0, Use::Record);
        c.recorded(&k(1));
        let (u, v) = c.arrive(k(1), &mut make);
        assert_eq!((u, v.copied()), (Use::Replay, Some(1)));
        // New buffers (a longer block table) are recorded again.
        c.forget(&k(1));
        let (u, v) = c.arrive(k(1), &mut make);
        assert_eq!((u, v.copied()), (Use::Record, Some(2)));
        // A failed recording runs eagerly for good.
        c.fail(&k(1));
        assert_eq!(c.arrive(k(1), &mut make).0, Use::Eager);
        assert_eq!(made, 2);
        // Buffers that cannot be made: eager.
        c.arrive(k(9), || None);
        assert_eq!(c.arrive(k(9), || None).0, Use::Eager);
    }

    #[test]
    fn the_least_recently_used_shape_goes_first() {
        let mut c: GraphCache<usize> = GraphCache::with_limit(2);
        for rows in [1, 2] {
            c.arrive(k(rows), || Some(rows));
            c.arrive(k(rows), || Some(rows));
        }
        assert_eq!(c.len(), 2);
        c.arrive(k(1), || Some(1)); // 1 is now more recent than 2
        c.arrive(k(3), || Some(3)); // evicts 2
        assert!(c.get(&k(2)).is_none());
        assert_eq!(c.get(&k(1)).copied(), Some(1));
        // 3 was seen once: no buffers yet, but it holds a place.
        assert!(c.get(&k(3)).is_none());
        assert_eq!(c.arrive(k(3), || Some(3)).0, Use::Record);
    }
}
