//! Helpers shared by the GPU benchmarks (included with `#[path]`; not a benchmark itself).
// Each benchmark uses some of them.
#![allow(dead_code)]

use moestream::gpu::kernels::Kernel;
use moestream::gpu::testing::{DeviceBuffer, GpuBench};
use moestream::{
    format::{AffineQuant, DType, WeightFormat},
    Result,
};

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

/// The copy kernel's streaming bandwidth in GB/s (bytes read + written): the best of
/// [`GpuBench::copy_bandwidths`]' sizes, each printed.
pub fn copy_bandwidth(bench: &GpuBench) -> Result<f64> {
    let mut best: f64 = 0.0;
    for (bytes, bps) in bench.copy_bandwidths()? {
        println!("copy kernel, {} MB: {:.1} GB/s", bytes >> 20, bps / 1e9);
        best = best.max(bps / 1e9);
    }
    Ok(best)
}

/// `n` pseudo-random bytes (a GPU that compresses memory must not see zeros).
pub fn random_bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut state = seed;
    let mut out = Vec::with_capacity(n + 8);
    while out.len() < n {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        out.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    out.truncate(n);
    out
}

/// A quantized `[rows, cols]` matrix laid out as the engine stores it, with small finite
/// scales and biases.
pub fn matrix_bytes(q: AffineQuant, rows: usize, cols: usize, seed: u64) -> Vec<u8> {
    let f = WeightFormat::Affine(q);
    let mut b = random_bytes(f.stored_bytes(rows, cols), seed);
    // Overwrite scales and biases (everything after the codes) with 0.01 in bf16/f16/f32.
    let codes = rows * cols * q.bits as usize / 8;
    let v = q.scale_dtype.encode(&[0.01]);
    for chunk in b[codes..].chunks_mut(v.len()) {
        let n = chunk.len();
        chunk.copy_from_slice(&v[..n]);
    }
    b
}

/// Word offsets of the scales and of the biases in [`matrix_bytes`]' layout.
pub fn parts_words(q: AffineQuant, rows: usize, cols: usize) -> (u32, u32) {
    let f = WeightFormat::Affine(q);
    // Scales start after the 16-byte aligned codes; biases after the aligned scales.
    let codes = rows * cols * q.bits as usize / 8;
    let so = codes.div_ceil(16) * 16;
    let sb = rows * (cols / q.group_size as usize) * q.scale_dtype.size();
    let bo = so + sb.div_ceil(16) * 16;
    debug_assert_eq!(bo + sb, f.stored_bytes(rows, cols));
    ((so / 4) as u32, (bo / 4) as u32)
}

/// Drops `files` from the OS page cache (`posix_fadvise(DONTNEED)` on Linux; elsewhere
/// nothing), so the next reads come from storage.
pub fn evict(files: &[std::path::PathBuf]) {
    #[cfg(target_os = "linux")]
    for f in files {
        use std::os::unix::io::AsRawFd;
        if let Ok(file) = std::fs::File::open(f) {
            let _ = file.sync_all();
            // SAFETY: a plain advisory call on an open descriptor.
            unsafe {
                libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED);
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = files;
}

/// CPU time (user + system) this process has used so far, where the OS reports it: what
/// a step costs the host (spinning readback waits, recording, I/O threads) beside its
/// wall time.
#[allow(dead_code)]
pub fn process_cpu_time() -> Option<std::time::Duration> {
    #[cfg(unix)]
    {
        // SAFETY: getrusage writes one rusage struct into the zeroed one we pass.
        let mut u: libc::rusage = unsafe { std::mem::zeroed() };
        if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) } != 0 {
            return None;
        }
        let tv = |t: libc::timeval| {
            std::time::Duration::from_secs(t.tv_sec as u64)
                + std::time::Duration::from_micros(t.tv_usec as u64)
        };
        Some(tv(u.ru_utime) + tv(u.ru_stime))
    }
    #[cfg(not(unix))]
    {
        None
    }
}

/// GB/s of a sequential read of `files` in 16 MiB chunks (direct I/O if `direct`, where
/// the OS has it), stopping after `limit` bytes: the storage's raw rate, the baseline of
/// the streaming benchmarks.
#[allow(dead_code)]
pub fn sequential_read(files: &[std::path::PathBuf], direct: bool, limit: u64) -> f64 {
    let chunk = 16 << 20;
    let mut buf = moestream::store::AlignedBuf::new(chunk);
    let mut total = 0u64;
    let t0 = std::time::Instant::now();
    'files: for f in files {
        let mut opts = std::fs::OpenOptions::new();
        opts.read(true);
        #[cfg(target_os = "linux")]
        if direct {
            use std::os::unix::fs::OpenOptionsExt;
            opts.custom_flags(libc::O_DIRECT);
        }
        let Ok(file) = opts.open(f) else { continue };
        let mut off = 0u64;
        loop {
            use std::os::unix::fs::FileExt;
            match file.read_at(&mut buf, off) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    off += n as u64;
                    total += n as u64;
                    if total >= limit {
                        break 'files;
                    }
                }
            }
        }
    }
    let _ = direct;
    total as f64 / t0.elapsed().as_secs_f64() / 1e9
}

/// The layer files (`*.experts`) of the pack in `pack_dir`, in name order: what the
/// streaming benchmarks read raw as their baseline (or drop from the page cache).
#[allow(dead_code)]
pub fn pack_files(pack_dir: &std::path::Path) -> moestream::Result<Vec<std::path::PathBuf>> {
    let mut files: Vec<std::path::PathBuf> = std::fs::read_dir(pack_dir)
        .map_err(|cause| moestream::Error::Io {
            path: pack_dir.to_path_buf(),
            cause,
        })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "experts"))
        .collect();
    files.sort();
    Ok(files)
}

/// GB/s of reading `files` in 16 MiB chunks with `threads` reads in flight (chunk i by
/// thread i mod `threads`; direct I/O if `direct`), stopping after about `limit` bytes: the
/// storage's rate with a queue of requests, which a device with parallel channels (NVMe,
/// a virtual disk) reaches and one sequential stream may not. The streaming baselines take
/// the better of this and [`sequential_read`].
#[allow(dead_code)]
pub fn parallel_read(
    files: &[std::path::PathBuf],
    direct: bool,
    limit: u64,
    threads: usize,
) -> f64 {
    use std::os::unix::fs::FileExt;
    let chunk: u64 = 16 << 20;
    let mut opened = Vec::new();
    for f in files {
        let mut opts = std::fs::OpenOptions::new();
        opts.read(true);
        #[cfg(target_os = "linux")]
        if direct {
            use std::os::unix::fs::OpenOptionsExt;
            opts.custom_flags(libc::O_DIRECT);
        }
        if let (Ok(file), Ok(meta)) = (opts.open(f), std::fs::metadata(f)) {
            opened.push((file, meta.len()));
        }
    }
    let _ = direct;
    // Every chunk (file, offset) up to the limit, dealt out round-robin.
    let mut chunks = Vec::new();
    let mut planned = 0u64;
    'plan: for (i, (_, len)) in opened.iter().enumerate() {
        let mut off = 0;
        while off < *len {
            chunks.push((i, off));
            planned += chunk.min(len - off);
            off += chunk;
            if planned >= limit {
                break 'plan;
            }
        }
    }
    let threads = threads.max(1);
    let t0 = std::time::Instant::now();
    let total: u64 = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let (opened, chunks) = (&opened, &chunks);
                scope.spawn(move || {
                    let mut buf = moestream::store::AlignedBuf::new(chunk as usize);
                    let mut n = 0u64;
                    for &(f, off) in chunks.iter().skip(t).step_by(threads) {
                        if let Ok(k) = opened[f].0.read_at(&mut buf, off) {
                            n += k as u64;
                        }
                    }
                    n
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or(0)).sum()
    });
    total as f64 / t0.elapsed().as_secs_f64() / 1e9
}
