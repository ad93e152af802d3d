//! How one step's attention is split between the kernels of `kernels/attention.cu` and
//! `attention_mma.cu`, on the host: runs of consecutive rows of one sequence (a prompt chunk) go
//! to a prefill kernel in tiles that share each key block; rows alone in their sequence
//! (decoding) go to the decode kernel. The same plan serves every layer of a step.

use crate::backend::AttentionMeta;

/// Most (query row, head) pairs one prefill block holds: 8 warps × 4 pairs (attention.cu).
pub const PREFILL_PAIRS: usize = 32;

/// The same for the tensor-core prefill: 4 warps × 16 (attention_mma.cu: MMA_PAIRS).
pub const MMA_PREFILL_PAIRS: usize = 64;

/// Keys per split of the decode kernel (attention.cu: SPLIT_KEYS).
pub const DECODE_SPLIT_KEYS: usize = 256;

/// Splits of the decode kernel for a step whose latest decode position is `max_pos`: enough
/// for the longest row's keys (its window on sliding layers).
pub fn decode_splits(max_pos: usize, window: Option<usize>) -> usize {
    let keys = window.map_or(max_pos + 1, |w| (max_pos + 1).min(w));
    keys.div_ceil(DECODE_SPLIT_KEYS).max(1)
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AttentionPlan {
    /// Block tables of every sequence, one after another.
    pub tables: Vec<u32>,
    /// Where each sequence's table starts in `tables`.
    pub table_start: Vec<u32>,
    /// First row and row count of each prefill tile.
    pub tile_row0: Vec<u32>,
    pub tile_rows: Vec<u32>,
    /// Rows for the decode kernel.
    pub decode_rows: Vec<u32>,
    /// The latest position among the decode rows (0 without any).
    pub decode_max_pos: usize,
}

/// Plans a step for `group` query heads per KV head and a prefill kernel whose block holds
/// `pairs` (query row, head) pairs.
pub fn plan(meta: &AttentionMeta, group: usize, pairs: usize) -> AttentionPlan {
    let mut p = AttentionPlan::default();
    for s in &meta.spans {
        p.table_start.push(p.tables.len() as u32);
        p.tables.extend_from_slice(s);
    }
    let tile_max = (pairs / group.max(1)).max(1);
    let rows = meta.positions.len();
    let mut r = 0;
    while r < rows {
        // A run: the same sequence, positions strictly increasing.
        let mut end = r + 1;
        while end < rows
            && meta.span_of[end] == meta.span_of[r]
            && meta.positions[end] > meta.positions[end - 1]
        {
            end += 1;
        }
        if end - r == 1 {
            p.decode_rows.push(r as u32);
            p.decode_max_pos = p.decode_max_pos.max(meta.positions[r] as usize);
        } else {
            let mut t = r;
            while t < end {
                let n = (end - t).min(tile_max);
                p.tile_row0.push(t as u32);
                p.tile_rows.push(n as u32);
                t += n;
            }
        }
        r = end;
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_become_tiles_and_single_rows_decode() {
        // Sequence 0: a 40-token prompt chunk; sequences 1 and 2: one decode token each;
        // sequence 3: a 3-token chunk.
        let mut positions: Vec<u32> = (0..40).collect();
        let mut span_of = vec![0u32; 40];
        positions.extend([17, 17, 5, 6, 7]);
        span_of.extend([1, 2, 3, 3, 3]);
        let meta = AttentionMeta {
            positions,
            span_of,
            spans: vec![vec![0, 1, 2], vec![3, 4], vec![3, 5], vec![6]],
            block_size: 16,
        };
        let p = plan(&meta, 2, PREFILL_PAIRS);
        assert_eq!(p.tables, vec![0, 1, 2, 3, 4, 3, 5, 6]);
        assert_eq!(p.table_start, vec![0, 3, 5, 7]);
        // 16 rows per tile at 2 heads per KV head.
        assert_eq!(p.tile_row0, vec![0, 16, 32, 42]);
        assert_eq!(p.tile_rows, vec![16, 16, 8, 3]);
        assert_eq!(p.decode_rows, vec![40, 41]);
        assert_eq!(p.decode_max_pos, 17);
        // Every row is covered exactly once.
        let mut covered = [0; 45];
        for (&r0, &n) in p.tile_row0.iter().zip(&p.tile_rows) {
            for r in r0..r0 + n {
                covered[r as usize] += 1;
            }
        }
        for &r in &p.decode_rows {
            covered[r as usize] += 1;
        }
        assert!(covered.iter().all(|&c| c == 1));
        // A group of 32 heads: one row per tile.
        assert_eq!(
            plan(&meta, 32, PREFILL_PAIRS).tile_rows.iter().max(),
            Some(&1)
        );
        // The tensor-core kernel's tiles: 32 rows at 2 heads a group, 2 at 32, 21 at 3.
        assert_eq!(plan(&meta, 2, MMA_PREFILL_PAIRS).tile_rows, vec![32, 8, 3]);
        assert_eq!(
            plan(&meta, 32, MMA_PREFILL_PAIRS).tile_rows.iter().max(),
            Some(&2)
        );
        assert_eq!(plan(&meta, 3, MMA_PREFILL_PAIRS).tile_rows, vec![21, 19, 3]);
    }

    #[test]
    fn the_kernels_split_size_is_the_plans() {
        let src = super::super::kernels::FILES
            .iter()
            .find(|f| f.name == "attention.cu")
            .map(|f| f.source)
            .unwrap_or_default();
        assert!(src.contains(&format!("#define SPLIT_KEYS {DECODE_SPLIT_KEYS} ")));
        assert!(src.contains(&format!("#define PAIRS_PER_WARP {} ", PREFILL_PAIRS / 8)));
        let mma = super::super::kernels::FILES
            .iter()
            .find(|f| f.name == "attention_mma.cu")
            .map(|f| f.source)
            .unwrap_or_default();
        assert!(mma.contains(&format!("#define MMA_PAIRS {MMA_PREFILL_PAIRS} ")));
    }

    #[test]
    fn decode_splits_cover_the_longest_rows_keys() {
        assert_eq!(decode_splits(0, None), 1);
        assert_eq!(decode_splits(255, None), 1);
        assert_eq!(decode_splits(256, None), 2);
        assert_eq!(decode_splits(4000, None), 16);
        // A sliding layer sees its window at most.
        assert_eq!(decode_splits(4000, Some(512)), 2);
        assert_eq!(decode_splits(100, Some(4096)), 1);
    }
}
