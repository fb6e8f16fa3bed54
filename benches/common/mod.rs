//! Helpers shared by the GPU benchmarks (included with `#[path]`; not a benchmark itself).

use moestream::gpu::kernels::Kernel;
use moestream::gpu::testing::{DeviceBuffer, GpuBench};
use moestream::{DType, Result};

/// Trials per measurement; the median is reported (single trials of mid-sized dispatches
/// varied by up to 2x on the H200 VM before the benches warmed the GPU up).
pub const TRIALS: usize = 5;

/// The median of [`TRIALS`] runs of [`GpuBench::time_rotating_rows`]: seconds per
/// dispatch of `iters` dispatches of `kernel`, cycling through the buffer `sets`.
#[allow(clippy::too_many_arguments)]
pub fn median_time(
    bench: &GpuBench,
    kernel: Kernel,
    wdt: Option<DType>,
    quant: Option<(u32, u32)>,
    rows: u32,
    params: &[u32],
    sets: &[Vec<&DeviceBuffer>],
    groups: (u32, u32),
    iters: u32,
) -> Result<f64> {
    let mut t = Vec::with_capacity(TRIALS);
    for _ in 0..TRIALS {
        t.push(bench.time_rotating_rows(kernel, wdt, quant, rows, params, sets, groups, iters)?);
    }
    t.sort_by(f64::total_cmp);
    Ok(t[TRIALS / 2])
}
