//! Quantized mat-vec throughput against the device's copy bandwidth, measured in the same
//! run.
//!
//! ```text
//! cargo bench --bench qmatvec            # all shapes, 4-bit group 64
//! cargo bench --bench qmatvec -- --all-bits
//! cargo bench --bench qmatvec -- --shape 4x2048x768   # one mat-vec, 4/2/1 rows per team
//! cargo bench --bench qmatvec -- --expert-rows        # 8 experts, 4/2/1 rows per team
//! cargo bench --bench qmatvec -- --teams               # expert batches, teams of 8-32
//! cargo bench --bench qmatvec -- --batch 2048x768x128  # one expert batch (HIDDENxINTERxK)
//! ```
//! For each shape it prints the weight bytes (codes + scales + biases) read per mat-vec,
//! the time per mat-vec and the GB/s of weight bytes read, against two baselines measured
//! in the same run with the plain copy kernel (`kernels/copy.wgsl`), whose GB/s count bytes
//! read + written:
//! - `of copy`: the best of copies of 64, 128 and 256 MB, the device's streaming
//!   bandwidth;
//! - `of same-size copy`: a copy moving the same bytes (half read, half written), timed the
//!   same way, i.e. what the device does with a dispatch of that size. Small dispatches
//!   cannot reach streaming bandwidth (launch, ramp-up and drain dominate); this ratio says
//!   how close the kernel comes to what a dispatch of that size can do.
//!
//! The expert batches (K experts through cache slots) print gate/up, down, and the two as
//! one FFN (`ffn`: their bytes over their summed times, against the sum of the two
//! same-size copies).
//!
//! Serialized: consecutive dispatches write the same output, so each waits for the
//! previous one (a decode step's dependent chain). Overlapped: independent outputs.
//! Every timed run follows untimed dispatches of the same kernel submitted just before it,
//! so it runs at the clocks of steady work (without that, mid-sized dispatches varied up
//! to 2x between runs on the H200).
//! Weights are rotated over enough copies to exceed the GPU's caches, so the reads come
//! from memory. Times are GPU time from timestamp queries when the adapter has them, else
//! wall-clock time. Each shape runs in the kernel variant the engine picks for the adapter
//! (subgroups and shader-f16 where offered) and in the portable variant.

#[path = "common/mod.rs"]
mod common;

use common::{copy_bandwidth, matrix_bytes, median_time, parts_words, random_bytes};
use moestream::gpu::kernels::Variant;
use moestream::gpu::kernels::{self, Kernel};
use moestream::gpu::params::{
    CopyParams, MoeDownQParams, MoeGateUpQParams, QMatVecParams, LINEAR_X_INTERLEAVED, LINEAR_X_Q8,
};
use moestream::gpu::testing::{DeviceBuffer, GpuBench};
use moestream::{
    format::{AffineQuant, DType, WeightFormat},
    Result,
};

/// Whether x is read as the engine's decode steps read it by default for `bits`: 8+8-bit
/// blocks for 2- to 6-bit weights on adapters with integer dot products, else interleaved f32
/// (`kernels/include/interleave.wgsl`).
fn q8_x(bench: &GpuBench, bits: u32) -> bool {
    kernels::reads_q8_activations(bits) && bench.adapter().integer_dot_products
}

/// qmatvec flags for x as decode reads it ([`q8_x`]).
fn x_flags(bench: &GpuBench, bits: u32) -> u32 {
    if q8_x(bench, bits) {
        LINEAR_X_Q8
    } else {
        LINEAR_X_INTERLEAVED
    }
}

/// Bytes of weights cycled through, to defeat caches (H200 L2 is 60 MB).
const ROTATE_BYTES: u64 = 768 << 20;

/// Whether the adapter is a CPU (lavapipe): its timings mean nothing, so the bench only
/// checks that every shape runs, with few copies and dispatches. (With the GPU's 768 MB of
/// copies and thousands of dispatches queued without waiting, lavapipe's memory grew past
/// 24 GB before the first shape finished.)
fn on_cpu(bench: &GpuBench) -> bool {
    bench.adapter().device_type == "Cpu"
}

/// [`ROTATE_BYTES`], or 16 MB on a CPU adapter.
fn rotate_bytes(bench: &GpuBench) -> u64 {
    if on_cpu(bench) {
        16 << 20
    } else {
        ROTATE_BYTES
    }
}

/// Timed dispatches per trial: `n`, or 4 on a CPU adapter.
fn timed_iters(bench: &GpuBench, n: u32) -> u32 {
    if on_cpu(bench) {
        4
    } else {
        n
    }
}

/// Seconds per copy dispatch moving `traffic` bytes (half read, half written), rotating
/// over sources larger than the caches: (serialized, overlapped) as for the mat-vecs.
fn copy_same_size(bench: &GpuBench, traffic: u64) -> Result<(f64, f64)> {
    let half = (traffic / 2).div_ceil(16) * 16;
    let copies = (rotate_bytes(bench) / half).clamp(1, 512) as usize;
    let srcs: Vec<DeviceBuffer> = (0..copies)
        .map(|i| bench.upload(&random_bytes(half as usize, 1000 + i as u64)))
        .collect();
    let shared = bench.zeros(half);
    let own: Vec<DeviceBuffer> = (0..copies).map(|_| bench.zeros(half)).collect();
    let words = (half / 16) as u32;
    let mut out = [0.0; 2];
    for (i, overlapped) in [false, true].into_iter().enumerate() {
        let sets: Vec<Vec<&DeviceBuffer>> = srcs
            .iter()
            .zip(&own)
            .map(|(s, d)| vec![s, if overlapped { d } else { &shared }])
            .collect();
        out[i] = median_time(
            bench,
            Kernel::Copy,
            None,
            None,
            0,
            CopyParams {
                n: words,
                ..Default::default()
            }
            .words(),
            &sets,
            kernels::copy_groups(words),
            timed_iters(bench, (4 * copies as u32).max(200)),
        )?;
    }
    Ok((out[0], out[1]))
}

/// One result line: bytes read per dispatch, and (serialized, overlapped) seconds of the
/// kernel and of the same-size copy.
fn report(what: &str, bytes: u64, t: (f64, f64), c: (f64, f64), copy: f64) {
    let gbs = |t: f64| bytes as f64 / t / 1e9;
    println!(
        "{what:<44} {:>6.2} MB | serialized {:>7.2} us {:>7.1} GB/s {:.3} of copy {:.2} of same-size copy ({:.2} us) | overlapped {:>7.2} us {:>7.1} GB/s {:.3} of copy {:.2} of same-size copy ({:.2} us)",
        bytes as f64 / 1e6,
        t.0 * 1e6,
        gbs(t.0),
        gbs(t.0) / copy,
        c.0 / t.0,
        c.0 * 1e6,
        t.1 * 1e6,
        gbs(t.1),
        gbs(t.1) / copy,
        c.1 / t.1,
        c.1 * 1e6,
    );
}

/// One mat-vec shape, with `rows_per_team` rows per team (the engine's choice for the
/// shape when `None`).
fn qmatvec(
    bench: &GpuBench,
    q: AffineQuant,
    rows: usize,
    cols: usize,
    copy: f64,
    rows_per_team: Option<u32>,
    team: Option<u32>,
) -> Result<()> {
    let rpt = rows_per_team.unwrap_or(kernels::qmatvec_rows_per_team(rows as u32));
    let bytes = WeightFormat::Affine(q).stored_bytes(rows, cols) as u64;
    let copies = (rotate_bytes(bench) / bytes).clamp(1, 512) as usize;
    let weights: Vec<DeviceBuffer> = (0..copies)
        .map(|i| bench.upload(&matrix_bytes(q, rows, cols, 100 + i as u64)))
        .collect();
    let x = bench.upload(&vec![0u8; cols * 4]);
    let dummy = bench.zeros(16);
    let (sw, bw) = parts_words(q, rows, cols);
    let team = team.unwrap_or_else(|| bench.qmatvec_team(rows, cols));
    // Serialized: every dispatch writes the same output, so each waits for the previous
    // one (the latency of one mat-vec). Overlapped: each weight copy has its own output,
    // so independent dispatches can run concurrently (the kernel's throughput).
    let shared_y = bench.zeros((rows * 4) as u64);
    let own_y: Vec<DeviceBuffer> = (0..copies)
        .map(|_| bench.zeros((rows * 4) as u64))
        .collect();
    let mut times = [0.0; 2];
    for (i, overlapped) in [false, true].into_iter().enumerate() {
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
                    w, // again, as words
                    // The normalized-row output (unused): y again.
                    if overlapped { y } else { &shared_y },
                ]
            })
            .collect();
        times[i] = median_time(
            bench,
            Kernel::QMatVec,
            Some(q.scale_dtype),
            Some((q.bits, q.group_size)),
            rpt,
            QMatVecParams {
                rows: rows as u32,
                cols: cols as u32,
                row_base: 0,
                flags: x_flags(bench, q.bits),
                x_offset: 0,
                scales_word: sw,
                biases_word: bw,
                team,
                ..Default::default()
            }
            .words(),
            &sets,
            kernels::qmatvec_groups(rows as u32, team, rpt),
            timed_iters(bench, (4 * copies as u32).max(200)),
        )?;
    }
    let c = copy_same_size(bench, bytes)?;
    report(
        &format!(
            "qmatvec {}-bit g{} {rows}x{cols} (team {team}, {rpt} rows)",
            q.bits, q.group_size
        ),
        bytes,
        (times[0], times[1]),
        c,
        copy,
    );
    Ok(())
}

/// K experts' gate+up and down through cache slots for one token, as decode does, with
/// `rows_per_team` rows per team (default: the engine's `expert_rows_per_team`) and teams
/// of `teams` invocations for gate/up and down (default: the engine's).
fn experts(
    bench: &GpuBench,
    q: AffineQuant,
    (hidden, inter, k): (usize, usize, usize),
    copy: f64,
    rows_per_team: Option<u32>,
    teams: Option<(u32, u32)>,
) -> Result<()> {
    let rpt_gu = rows_per_team.unwrap_or(kernels::expert_rows_per_team(inter as u32));
    let rpt_d = rows_per_team.unwrap_or(kernels::expert_rows_per_team(hidden as u32));
    let f = WeightFormat::Affine(q);
    let gate = f.stored_bytes(inter, hidden);
    let down = f.stored_bytes(hidden, inter);
    let blob = (2 * gate.div_ceil(16) * 16 + down).div_ceil(256) * 256;
    let slots = ((rotate_bytes(bench) as usize / blob).max(2 * k))
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
    let w = bench.upload(&vec![0u8; k * 4]);
    // Rotate the chosen slots so consecutive dispatches read different experts (where the
    // largest binding holds fewer than k slots, e.g. on lavapipe, a dispatch reads some
    // slots twice).
    let assigns: Vec<DeviceBuffer> = (0..(slots / k).max(1))
        .map(|r| {
            let pairs: Vec<u32> = (0..k)
                .flat_map(|j| [0u32, ((r * k + j) % slots) as u32])
                .collect();
            bench.upload(bytemuck::cast_slice(&pairs))
        })
        .collect();
    let slot_words = (blob / 4) as u32;
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
    let [gq, gs, gb] = offs(0, inter, hidden);
    let [uq, us, ub] = offs(u_off, inter, hidden);
    let [dq, ds, db] = offs(d_off, hidden, inter);
    let quant = Some((q.bits, q.group_size));
    let iters = timed_iters(bench, 200);
    // Serialized: one shared output; overlapped: one output per rotation.
    let h_shared = bench.zeros((k * inter * 4) as u64);
    let o_shared = bench.zeros((k * hidden * 4) as u64);
    let h_own: Vec<DeviceBuffer> = assigns
        .iter()
        .map(|_| bench.zeros((k * inter * 4) as u64))
        .collect();
    let o_own: Vec<DeviceBuffer> = assigns
        .iter()
        .map(|_| bench.zeros((k * hidden * 4) as u64))
        .collect();
    let team = teams.map_or_else(|| bench.expert_team(inter, hidden, k, rpt_gu), |t| t.0);
    // h in the quad 8+8-bit layout where decode uses it (2- to 6-bit downs with 8+8-bit x).
    let quad_h = q8_x(bench, q.bits) && kernels::writes_quad_h(team, rpt_gu);
    let mut t = [0.0; 2];
    for (i, overlapped) in [false, true].into_iter().enumerate() {
        let sets: Vec<Vec<&DeviceBuffer>> = assigns
            .iter()
            .zip(&h_own)
            .map(|(a, h)| vec![&page, &x, a, if overlapped { h } else { &h_shared }, &page])
            .collect();
        t[i] = median_time(
            bench,
            Kernel::MoeGateUpQ,
            Some(q.scale_dtype),
            quant,
            rpt_gu,
            MoeGateUpQParams {
                hidden: hidden as u32,
                inter: inter as u32,
                assign_base: 0,
                n_assign: k as u32,
                slot_words,
                gate_q: gq,
                gate_s: gs,
                gate_b: gb,
                up_q: uq,
                up_s: us,
                up_b: ub,
                team,
                // x as decode reads it (8+8-bit for 2 to 6 bits, else interleaved), h
                // interleaved or in quads.
                flags: if q8_x(bench, q.bits) {
                    MoeGateUpQParams::X_Q8
                } else {
                    MoeGateUpQParams::X_INTERLEAVED
                } | MoeGateUpQParams::H_INTERLEAVED
                    | if quad_h {
                        MoeGateUpQParams::H_QUAD_Q8
                    } else {
                        0
                    },
                ..Default::default()
            }
            .words(),
            &sets,
            kernels::moe_gate_up_q_groups(inter as u32, k as u32, team, rpt_gu),
            iters,
        )?;
    }
    let bytes = (k * 2 * gate) as u64;
    let c = copy_same_size(bench, bytes)?;
    report(
        &format!(
            "gate_up {}-bit g{} {k} x {inter}x{hidden} (team {team}, {rpt_gu} rows)",
            q.bits, q.group_size
        ),
        bytes,
        (t[0], t[1]),
        c,
        copy,
    );
    let gate_up = (bytes, t, c);
    let team = teams.map_or_else(|| bench.expert_team(hidden, inter, k, rpt_d), |t| t.1);
    for (i, overlapped) in [false, true].into_iter().enumerate() {
        let sets: Vec<Vec<&DeviceBuffer>> = assigns
            .iter()
            .zip(&o_own)
            .map(|(a, o)| {
                vec![
                    &page,
                    &h_shared,
                    a,
                    &w,
                    if overlapped { o } else { &o_shared },
                    &page,
                ]
            })
            .collect();
        t[i] = median_time(
            bench,
            Kernel::MoeDownQ,
            Some(q.scale_dtype),
            quant,
            rpt_d,
            MoeDownQParams {
                hidden: hidden as u32,
                inter: inter as u32,
                assign_base: 0,
                n_assign: k as u32,
                slot_words,
                down_q: dq,
                down_s: ds,
                down_b: db,
                team,
                // h in quads or interleaved, as in decode
                flags: if quad_h {
                    MoeDownQParams::H_QUAD_Q8
                } else {
                    MoeDownQParams::H_INTERLEAVED
                },
                ..Default::default()
            }
            .words(),
            &sets,
            kernels::moe_down_q_groups(hidden as u32, k as u32, team, rpt_d),
            iters,
        )?;
    }
    let bytes = (k * down) as u64;
    let c = copy_same_size(bench, bytes)?;
    report(
        &format!(
            "down {}-bit g{} {k} x {hidden}x{inter} (team {team}, {rpt_d} rows{})",
            q.bits,
            q.group_size,
            if quad_h { ", quad h" } else { "" }
        ),
        bytes,
        (t[0], t[1]),
        c,
        copy,
    );
    // The expert FFN as a whole (gate/up then down; its same-size copy: the two copies').
    let (gu_bytes, gu_t, gu_c) = gate_up;
    report(
        &format!(
            "ffn {}-bit g{} {k} experts (gate_up + down)",
            q.bits, q.group_size
        ),
        gu_bytes + bytes,
        (gu_t[0] + t[0], gu_t[1] + t[1]),
        (gu_c.0 + c.0, gu_c.1 + c.1),
        copy,
    );
    Ok(())
}

fn run(bench: &GpuBench, all_bits: bool, large: bool) -> Result<()> {
    let a = bench.adapter();
    println!(
        "adapter: {} ({}, {}), kernels: {} (subgroup size {:?}), integer dot products: {}, timing: {}",
        a.name,
        a.backend,
        a.device_type,
        a.variant.name(),
        a.subgroup_size,
        a.integer_dot_products,
        if bench.has_timestamps() {
            "GPU timestamps"
        } else {
            "wall clock"
        }
    );
    let copy = copy_bandwidth(bench)?;
    println!("copy kernel: {copy:.1} GB/s (bytes read + written, the best of the sizes above)");
    let q4 = AffineQuant::new(4, 64, DType::BF16)?;
    for (rows, cols) in [(2048, 768), (768, 2048), (4096, 1024), (1024, 4096)] {
        qmatvec(bench, q4, rows, cols, copy, None, None)?;
    }
    // Qwen3-30B-A3B's attention: the fused q/k/v projection (32 + 2 x 4 heads of 128 over
    // 2048) and o_proj, ~12 us each inside a decode step (`decode -- --ablate`).
    for (rows, cols) in [(5120, 2048), (2048, 4096)] {
        qmatvec(bench, q4, rows, cols, copy, None, None)?;
    }
    // Its router (8-bit, 128 experts).
    qmatvec(
        bench,
        AffineQuant::new(8, 64, DType::BF16)?,
        128,
        2048,
        copy,
        None,
        None,
    )?;
    // Qwen3-30B-A3B's experts: a decode token's 8, and larger batches (several tokens'
    // experts in one dispatch) to show where the kernels reach streaming bandwidth.
    for k in [8, 32, 128] {
        experts(bench, q4, (2048, 768, k), copy, None, None)?;
    }
    experts(bench, q4, (4096, 1024, 10), copy, None, None)?;
    if large {
        // Large matrices: the kernel's streaming throughput (lm_head-sized).
        qmatvec(bench, q4, 65536, 4096, copy, None, None)?;
        qmatvec(
            bench,
            AffineQuant::new(8, 64, DType::BF16)?,
            32768,
            4096,
            copy,
            None,
            None,
        )?;
    }
    if all_bits {
        for bits in [2, 3, 5, 6, 8] {
            let q = AffineQuant::new(bits, 64, DType::BF16)?;
            qmatvec(bench, q, 768, 2048, copy, None, None)?;
            if large {
                qmatvec(bench, q, 32768, 4096, copy, None, None)?;
            }
        }
    }
    Ok(())
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    // `--shape BITSxROWSxCOLS` (repeatable): only these mat-vecs, in the engine's variant,
    // each with 4, 2 and 1 rows per team.
    let shapes: Vec<(u32, usize, usize)> = args
        .windows(2)
        .filter(|w| w[0] == "--shape")
        .filter_map(|w| {
            let v: Vec<usize> = w[1].split('x').filter_map(|t| t.parse().ok()).collect();
            (v.len() == 3).then(|| (v[0] as u32, v[1], v[2]))
        })
        .collect();
    if !shapes.is_empty() {
        let bench = GpuBench::new()?;
        let copy = copy_bandwidth(&bench)?;
        // Each shape with 4, 2 and 1 rows per team, and with the variant's team for its
        // rows, parts of a subgroup and the whole workgroup as a team.
        for (bits, rows, cols) in shapes {
            let own = bench.team(cols);
            let mut teams = vec![own];
            if bench.adapter().variant.subgroups {
                // Parts of a subgroup, and the whole workgroup.
                teams.extend([8, 16, 64].into_iter().filter(|&t| t != own));
            } else if teams[0] != 64 {
                teams.push(64);
            }
            for &team in &teams {
                for rpt in [4, 2, 1] {
                    qmatvec(
                        &bench,
                        AffineQuant::new(bits, 64, DType::BF16)?,
                        rows,
                        cols,
                        copy,
                        Some(rpt),
                        Some(team),
                    )?;
                }
            }
        }
        return Ok(());
    }
    // `--batch HIDDENxINTERxK` (repeatable): only these expert batches, as the engine runs
    // them.
    let batches: Vec<(usize, usize, usize)> = args
        .windows(2)
        .filter(|w| w[0] == "--batch")
        .filter_map(|w| {
            let v: Vec<usize> = w[1].split('x').filter_map(|t| t.parse().ok()).collect();
            (v.len() == 3).then(|| (v[0], v[1], v[2]))
        })
        .collect();
    if !batches.is_empty() {
        let bench = GpuBench::new()?;
        let copy = copy_bandwidth(&bench)?;
        let q4 = AffineQuant::new(4, 64, DType::BF16)?;
        for shape in batches {
            experts(&bench, q4, shape, copy, None, None)?;
        }
        return Ok(());
    }
    // `--teams`: the experts of Qwen3-30B-A3B (8, 32 and 128) and Qwen3.5-397B-A17B (10)
    // with the engine's teams and with pairs of teams (gate/up, down) from a subgroup of 32
    // down to 4 invocations (`kernels::expert_team` picks), the last also with 2 rows per
    // team for the down projection.
    if args.iter().any(|a| a == "--teams") {
        let bench = GpuBench::new()?;
        let copy = copy_bandwidth(&bench)?;
        let q4 = AffineQuant::new(4, 64, DType::BF16)?;
        for shape in [
            (2048, 768, 8),
            (2048, 768, 32),
            (2048, 768, 128),
            (4096, 1024, 10),
        ] {
            experts(&bench, q4, shape, copy, None, None)?;
            for teams in [(32, 32), (16, 8), (8, 8), (16, 4), (8, 4)] {
                experts(&bench, q4, shape, copy, None, Some(teams))?;
            }
            experts(&bench, q4, shape, copy, Some(2), Some((16, 8)))?;
        }
        return Ok(());
    }
    // `--expert-rows`: the 8 experts of Qwen3-30B-A3B with 4, 2 and 1 rows per team.
    if args.iter().any(|a| a == "--expert-rows") {
        let bench = GpuBench::new()?;
        let copy = copy_bandwidth(&bench)?;
        let q4 = AffineQuant::new(4, 64, DType::BF16)?;
        for rpt in [4, 2, 1] {
            experts(&bench, q4, (2048, 768, 8), copy, Some(rpt), None)?;
        }
        return Ok(());
    }
    let all_bits = args.iter().any(|a| a == "--all-bits");
    let large = args.iter().any(|a| a == "--large");
    let bench = GpuBench::new()?;
    run(&bench, all_bits, large)?;
    if bench.adapter().variant != Variant::PORTABLE && !args.iter().any(|a| a == "--no-portable") {
        drop(bench);
        println!();
        run(&GpuBench::with_variant(Variant::PORTABLE)?, all_bits, large)?;
    }
    Ok(())
}
