//! `cargo fuzz run extract`: score extraction must never panic, and whatever it accepts must
//! be n scores in 1..=10 that the text really ends its last box with.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&n, text)) = data.split_first() else {
        return;
    };
    let n = usize::from(n % 8) + 1;
    let text = String::from_utf8_lossy(text);
    if let Ok(scores) = grm_judge::extract_scores(&text, n) {
        assert_eq!(scores.len(), n);
        assert!(scores.iter().all(|s| (1..=10).contains(s)));
    }
});
