//! Quantized mat-vec throughput against the device's copy bandwidth, measured in the same
//! run.
//!
//! ```text
//! cargo bench --bench qmatvec            # all shapes, 4-bit group 64
//! cargo bench --bench qmatvec -- --all-bits
//! ```
//! For each shape it prints the weight bytes (codes + scales + biases) read per mat-vec,
//! the time per mat-vec, the GB/s of weight bytes read, and that as a fraction of the copy
//! kernel's GB/s (bytes read + written). Weights are rotated over enough copies to exceed
//! the GPU's caches, so the reads come from memory. Times are GPU time from timestamp
//! queries when the adapter has them, else wall-clock time.

use moestream::gpu::kernels::{self, Kernel};
use moestream::gpu::testing::{DeviceBuffer, GpuBench};
use moestream::{AffineQuant, DType, Result, WeightFormat};

/// Bytes of weights cycled through, to defeat caches (H200 L2 is 60 MB).
const ROTATE_BYTES: u64 = 768 << 20;

fn random_bytes(n: usize, seed: u64) -> Vec<u8> {
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
fn matrix_bytes(q: AffineQuant, rows: usize, cols: usize, seed: u64) -> Vec<u8> {
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

fn parts_words(q: AffineQuant, rows: usize, cols: usize) -> (u32, u32) {
    let f = WeightFormat::Affine(q);
    // Scales start after the 16-byte aligned codes; biases after the aligned scales.
    let codes = rows * cols * q.bits as usize / 8;
    let so = codes.div_ceil(16) * 16;
    let sb = rows * (cols / q.group_size as usize) * q.scale_dtype.size();
    let bo = so + sb.div_ceil(16) * 16;
    debug_assert_eq!(bo + sb, f.stored_bytes(rows, cols));
    ((so / 4) as u32, (bo / 4) as u32)
}

fn copy_bandwidth(bench: &GpuBench) -> Result<f64> {
    let bytes = (256u64 << 20).min(bench.adapter().max_binding_bytes & !0xffff);
    let src = bench.upload(&random_bytes(bytes as usize, 1));
    let dst = bench.zeros(bytes);
    let words = (bytes / 16) as u32;
    let t = bench.time(
        Kernel::Copy,
        None,
        None,
        &[words],
        &[&src, &dst],
        kernels::copy_groups(words),
        50,
    )?;
    Ok(2.0 * bytes as f64 / t / 1e9)
}

fn qmatvec(bench: &GpuBench, q: AffineQuant, rows: usize, cols: usize, copy: f64) -> Result<()> {
    let bytes = WeightFormat::Affine(q).stored_bytes(rows, cols) as u64;
    let copies = (ROTATE_BYTES / bytes).clamp(1, 512) as usize;
    let weights: Vec<DeviceBuffer> = (0..copies)
        .map(|i| bench.upload(&matrix_bytes(q, rows, cols, 100 + i as u64)))
        .collect();
    let x = bench.upload(&vec![0u8; cols * 4]);
    let dummy = bench.zeros(16);
    let (sw, bw) = parts_words(q, rows, cols);
    // Serialized: every dispatch writes the same output, so each waits for the previous
    // one (the latency of one mat-vec). Overlapped: each weight copy has its own output,
    // so independent dispatches can run concurrently (the kernel's throughput).
    let shared_y = bench.zeros((rows * 4) as u64);
    let own_y: Vec<DeviceBuffer> = (0..copies)
        .map(|_| bench.zeros((rows * 4) as u64))
        .collect();
    let mut times = Vec::new();
    for overlapped in [false, true] {
        let sets: Vec<Vec<&DeviceBuffer>> = weights
            .iter()
            .zip(&own_y)
            .map(|(w, y)| {
                vec![
                    w,
                    &x,
                    &dummy,
                    &dummy,
                    if overlapped { y } else { &shared_y },
                ]
            })
            .collect();
        times.push(bench.time_rotating(
            Kernel::QMatVec,
            Some(q.scale_dtype),
            Some((q.bits, q.group_size)),
            &[rows as u32, cols as u32, 0, 0, 0, sw, bw],
            &sets,
            kernels::qmatvec_groups(rows as u32),
            (4 * copies as u32).max(200),
        )?);
    }
    let gbs = |t: f64| bytes as f64 / t / 1e9;
    println!(
        "qmatvec  {}-bit g{:<3} {:>5}x{:<5} {:>6.2} MB  serialized {:>7.2} us {:>7.1} GB/s {:.3} of copy | overlapped {:>7.2} us {:>7.1} GB/s {:.3} of copy",
        q.bits,
        q.group_size,
        rows,
        cols,
        bytes as f64 / 1e6,
        times[0] * 1e6,
        gbs(times[0]),
        gbs(times[0]) / copy,
        times[1] * 1e6,
        gbs(times[1]),
        gbs(times[1]) / copy
    );
    Ok(())
}

/// K experts' gate+up (or down) through cache slots for one token, as decode does.
fn experts(
    bench: &GpuBench,
    q: AffineQuant,
    hidden: usize,
    inter: usize,
    k: usize,
    copy: f64,
) -> Result<()> {
    let f = WeightFormat::Affine(q);
    let gate = f.stored_bytes(inter, hidden);
    let down = f.stored_bytes(hidden, inter);
    let blob = (2 * gate.div_ceil(16) * 16 + down).div_ceil(256) * 256;
    let slots = ((ROTATE_BYTES as usize / blob).max(2 * k))
        .min((bench.adapter().max_binding_bytes as usize) / blob);
    let mut page = Vec::with_capacity(slots * blob);
    for s in 0..slots {
        let mut b = matrix_bytes(q, inter, hidden, 7 * s as u64);
        b.resize(gate.div_ceil(16) * 16, 0);
        let mut u = matrix_bytes(q, inter, hidden, 7 * s as u64 + 1);
        u.resize(gate.div_ceil(16) * 16, 0);
        b.extend_from_slice(&u);
        b.extend_from_slice(&matrix_bytes(q, hidden, inter, 7 * s as u64 + 2));
        b.resize(blob, 0);
        page.extend_from_slice(&b);
    }
    let page = bench.upload(&page);
    let x = bench.upload(&vec![0u8; hidden * 4]);
    let h = bench.zeros((k * inter * 4) as u64);
    let o = bench.zeros((k * hidden * 4) as u64);
    let w = bench.upload(&vec![0u8; k * 4]);
    // Rotate the chosen slots so consecutive dispatches read different experts.
    let assigns: Vec<DeviceBuffer> = (0..slots / k)
        .map(|r| {
            let pairs: Vec<u32> = (0..k).flat_map(|j| [0u32, (r * k + j) as u32]).collect();
            bench.upload(bytemuck::cast_slice(&pairs))
        })
        .collect();
    let slot_words = (blob / 4) as u32;
    let g_off = 0usize;
    let u_off = gate.div_ceil(16) * 16;
    let d_off = 2 * u_off;
    let offs = |base: usize, rows: usize, cols: usize| {
        let (sw, bw) = parts_words(q, rows, cols);
        [
            (base / 4) as u32,
            (base / 4) as u32 + sw,
            (base / 4) as u32 + bw,
        ]
    };
    let [gq, gs, gb] = offs(g_off, inter, hidden);
    let [uq, us, ub] = offs(u_off, inter, hidden);
    let [dq, ds, db] = offs(d_off, hidden, inter);
    let quant = Some((q.bits, q.group_size));
    let sets: Vec<Vec<&DeviceBuffer>> = assigns.iter().map(|a| vec![&page, &x, a, &h]).collect();
    let t = bench.time_rotating(
        Kernel::MoeGateUpQ,
        Some(q.scale_dtype),
        quant,
        &[
            hidden as u32,
            inter as u32,
            0,
            k as u32,
            slot_words,
            gq,
            gs,
            gb,
            uq,
            us,
            ub,
        ],
        &sets,
        kernels::moe_gate_up_q_groups(inter as u32, k as u32),
        200,
    )?;
    let bytes = (k * 2 * gate) as f64;
    println!(
        "gate_up  {}-bit g{:<3} {k} experts {:>5}x{:<5} {:>6.2} MB {:>9.2} us {:>8.1} GB/s  {:.3} of copy",
        q.bits,
        q.group_size,
        inter,
        hidden,
        bytes / 1e6,
        t * 1e6,
        bytes / t / 1e9,
        bytes / t / 1e9 / copy
    );
    let sets: Vec<Vec<&DeviceBuffer>> =
        assigns.iter().map(|a| vec![&page, &h, a, &w, &o]).collect();
    let t = bench.time_rotating(
        Kernel::MoeDownQ,
        Some(q.scale_dtype),
        quant,
        &[
            hidden as u32,
            inter as u32,
            0,
            k as u32,
            slot_words,
            dq,
            ds,
            db,
        ],
        &sets,
        kernels::moe_down_q_groups(hidden as u32, k as u32),
        200,
    )?;
    let bytes = (k * down) as f64;
    println!(
        "down     {}-bit g{:<3} {k} experts {:>5}x{:<5} {:>6.2} MB {:>9.2} us {:>8.1} GB/s  {:.3} of copy",
        q.bits,
        q.group_size,
        hidden,
        inter,
        bytes / 1e6,
        t * 1e6,
        bytes / t / 1e9,
        bytes / t / 1e9 / copy
    );
    Ok(())
}

fn main() -> Result<()> {
    let all_bits = std::env::args().any(|a| a == "--all-bits");
    let bench = GpuBench::new()?;
    let a = bench.adapter();
    println!(
        "adapter: {} ({}, {}), timing: {}",
        a.name,
        a.backend,
        a.device_type,
        if bench.has_timestamps() {
            "GPU timestamps"
        } else {
            "wall clock"
        }
    );
    let copy = copy_bandwidth(&bench)?;
    println!("copy kernel: {copy:.1} GB/s (bytes read + written)");
    let q4 = AffineQuant::new(4, 64, DType::BF16)?;
    for (rows, cols) in [(2048, 768), (768, 2048), (4096, 1024), (1024, 4096)] {
        qmatvec(&bench, q4, rows, cols, copy)?;
    }
    experts(&bench, q4, 2048, 768, 8, copy)?;
    experts(&bench, q4, 4096, 1024, 10, copy)?;
    if all_bits {
        for bits in [2, 3, 5, 6, 8] {
            let q = AffineQuant::new(bits, 64, DType::BF16)?;
            qmatvec(&bench, q, 768, 2048, copy)?;
        }
    }
    Ok(())
}
