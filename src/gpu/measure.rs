//! The measuring hooks of the recorder, process-wide: the per-kernel GPU profile
//! (`MOESTREAM_PROFILE`) and the kernels left out of recording for an ablation
//! ([`skip_kernels`]). Neither is on unless asked for.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};

use super::kernels::Kernel;

/// Environment variable that turns on the per-kernel GPU profile: every dispatch gets its
/// own timed pass, and the time is added up per kernel (see
/// [`crate::gpu::testing::take_profile`]). Slows the GPU down; for finding where time goes.
pub const PROFILE_ENV: &str = "MOESTREAM_PROFILE";

pub(super) fn profiling() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| std::env::var_os(PROFILE_ENV).is_some_and(|v| !v.is_empty() && v != "0"))
}

/// Kernels whose dispatches are left out of what is recorded ([`skip_kernels`]); the
/// flag says whether any are, so that recording pays one atomic load when none is.
static SKIPPING: AtomicBool = AtomicBool::new(false);
static SKIPPED: Mutex<Vec<&'static str>> = Mutex::new(Vec::new());

/// Leaves every dispatch of the named kernels (names as [`Kernel::name`] gives them, the
/// profile's labels) out of what is recorded from now on, in every model of the process;
/// an empty list records everything again. **The results are wrong while any kernel is
/// skipped**: this is for measuring what a kernel costs inside a real step (the GPU time
/// a step saves without it), not for computing. Returns the names that are no kernel.
pub(super) fn skip_kernels(names: &[&str]) -> Vec<String> {
    let mut set = SKIPPED.lock().unwrap_or_else(|p| p.into_inner());
    set.clear();
    let mut unknown = Vec::new();
    for &n in names {
        match Kernel::ALL.iter().find(|k| k.name() == n) {
            Some(k) => set.push(k.name()),
            None => unknown.push(n.to_string()),
        }
    }
    SKIPPING.store(!set.is_empty(), Ordering::Relaxed);
    unknown
}

pub(super) fn skipped(kernel: Kernel) -> bool {
    SKIPPING.load(Ordering::Relaxed)
        && SKIPPED
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&kernel.name())
}

/// Per kernel: dispatches and GPU nanoseconds, while profiling.
pub(super) static PROFILE: Mutex<BTreeMap<&'static str, (u64, f64)>> = Mutex::new(BTreeMap::new());

/// The per-kernel profile gathered so far (kernel, dispatches, GPU seconds), by time
/// descending, and clears it.
pub fn take_profile() -> Vec<(String, u64, f64)> {
    let mut map = PROFILE.lock().unwrap_or_else(|p| p.into_inner());
    let mut v: Vec<(String, u64, f64)> = map
        .iter()
        .map(|(k, &(n, ns))| (k.to_string(), n, ns * 1e-9))
        .collect();
    map.clear();
    v.sort_by(|a, b| b.2.total_cmp(&a.2));
    v
}
