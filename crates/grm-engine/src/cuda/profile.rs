//! Where a step's time goes, by operation, when `GRM_CUDA_PROFILE=1`: after every launch,
//! cuBLAS call, allocation and copy the context is synchronised and the time since the last
//! one is charged to it, so each figure is the host's work for the operation plus the GPU's.
//! Synchronising serialises the host and the GPU, so the run itself is slower; the shares are
//! what it is for. Off (the default), it costs one relaxed load per operation.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

struct Profile {
    last: Instant,
    by_op: BTreeMap<String, (Duration, u64)>,
}

static ON: AtomicBool = AtomicBool::new(false);
static STATE: OnceLock<Mutex<Profile>> = OnceLock::new();

fn state() -> &'static Mutex<Profile> {
    STATE.get_or_init(|| {
        Mutex::new(Profile {
            last: Instant::now(),
            by_op: BTreeMap::new(),
        })
    })
}

/// Turns the profile on when the environment asks for it (the backend calls this at start).
pub fn init_from_env() {
    if std::env::var("GRM_CUDA_PROFILE").is_ok_and(|v| v == "1") {
        ON.store(true, Ordering::Relaxed);
        reset();
    }
}

pub fn enabled() -> bool {
    ON.load(Ordering::Relaxed)
}

/// Charges the time since the last operation to `what`, once the GPU has finished it.
pub(super) fn mark(what: &str) {
    if !enabled() {
        return;
    }
    let _ = cudarc::driver::result::ctx::synchronize();
    let now = Instant::now();
    let mut p = match state().lock() {
        Ok(p) => p,
        Err(e) => e.into_inner(),
    };
    let dt = now - p.last;
    p.last = now;
    let e = p.by_op.entry(what.to_string()).or_default();
    e.0 += dt;
    e.1 += 1;
}

/// Forgets what was recorded, and starts the clock now.
pub fn reset() {
    let mut p = match state().lock() {
        Ok(p) => p,
        Err(e) => e.into_inner(),
    };
    p.by_op.clear();
    p.last = Instant::now();
}

/// Seconds and counts by operation, most time first.
pub fn report() -> Vec<(String, f64, u64)> {
    let p = match state().lock() {
        Ok(p) => p,
        Err(e) => e.into_inner(),
    };
    let mut rows: Vec<_> = p
        .by_op
        .iter()
        .map(|(k, (d, n))| (k.clone(), d.as_secs_f64(), *n))
        .collect();
    rows.sort_by(|a, b| b.1.total_cmp(&a.1));
    rows
}
