//! A synthetic GRM request as token ids, for benches and tests: a header (instruction,
//! criteria, conversation), n responses, a footer, where every sample sees the responses in
//! its own seeded order — the shape of the prompts the method sends (DESIGN.md §1).

/// What the request looks like.
#[derive(Debug, Clone)]
pub struct GrmShape {
    /// Tokens before the first response (the first is BOS).
    pub header: usize,
    /// Tokens of each response; their count is n.
    pub responses: Vec<usize>,
    /// Tokens after the last response.
    pub footer: usize,
    /// Samples (k).
    pub samples: usize,
    pub vocab: usize,
    pub seed: u64,
}

/// The request's distinct prompts and, for each sample, the index of its prompt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrmPrompts {
    pub prompts: Vec<Vec<u32>>,
    pub sample_prompt: Vec<usize>,
    /// Each sample's order of the responses.
    pub orders: Vec<Vec<usize>>,
}

/// SplitMix64: a fixed, seedable stream.
fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Builds the prompts. Token ids are ordinary ones (6 and up), fixed by the seed.
pub fn grm_prompts(shape: &GrmShape) -> GrmPrompts {
    let mut rng = shape.seed ^ 0x6a09_e667_f3bc_c908;
    let spread = shape.vocab.saturating_sub(6).max(1) as u64;
    let mut text = |n: usize| -> Vec<u32> {
        (0..n)
            .map(|_| 6 + (splitmix(&mut rng) % spread) as u32)
            .collect()
    };
    let mut header = text(shape.header);
    if let Some(first) = header.first_mut() {
        *first = 2;
    }
    let responses: Vec<Vec<u32>> = shape.responses.iter().map(|&n| text(n)).collect();
    let footer = text(shape.footer);
    let mut out = GrmPrompts {
        prompts: Vec::new(),
        sample_prompt: Vec::new(),
        orders: Vec::new(),
    };
    for s in 0..shape.samples {
        // Fisher–Yates with the sample's own stream.
        let mut order: Vec<usize> = (0..responses.len()).collect();
        let mut st = shape.seed.wrapping_mul(31).wrapping_add(s as u64);
        for i in (1..order.len()).rev() {
            let j = (splitmix(&mut st) % (i as u64 + 1)) as usize;
            order.swap(i, j);
        }
        let mut p = header.clone();
        for &r in &order {
            p.extend_from_slice(&responses[r]);
        }
        p.extend_from_slice(&footer);
        let index = match out.prompts.iter().position(|q| *q == p) {
            Some(i) => i,
            None => {
                out.prompts.push(p);
                out.prompts.len() - 1
            }
        };
        out.sample_prompt.push(index);
        out.orders.push(order);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_see_their_own_orders_of_the_same_parts() {
        let shape = GrmShape {
            header: 30,
            responses: vec![10, 12, 9],
            footer: 7,
            samples: 16,
            vocab: 262,
            seed: 5,
        };
        let w = grm_prompts(&shape);
        assert_eq!(w, grm_prompts(&shape), "fixed by the seed");
        assert_eq!(w.sample_prompt.len(), 16);
        assert!(w.prompts.len() > 1 && w.prompts.len() <= 6);
        for p in &w.prompts {
            assert_eq!(p.len(), 30 + 31 + 7);
            assert_eq!(p[0], 2);
            assert_eq!(p[..30], w.prompts[0][..30]);
            assert!(p[1..].iter().all(|&t| (6..262).contains(&t)));
        }
    }
}
