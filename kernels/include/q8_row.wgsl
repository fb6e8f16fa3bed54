// Writing a row in the 8+8-bit layout of include/interleave.wgsl (prepended to the kernels
// that write one, rmsnorm, moe_combine_norm and qmatvec; not a kernel itself). The kernel
// declares `yq`, the row's words (read_write storage of u32), and `WG`, its workgroup size
// (a multiple of 4), and calls with 4 consecutive invocations per 32-value block, 8 values
// (an octet) each. The arrays take WG floats each: 512 bytes in qmatvec's workgroups of
// 64, not the 2 KB of a 256-invocation kernel's.
var<workgroup> q8_max: array<f32, WG>;
var<workgroup> q8_sum: array<f32, WG>;

// Octet t (values 8t .. 8t + 7: va, vb) of the row of nb blocks whose words start at
// `base`; invocation `lid` of the workgroup, whose group of 4 (lid & ~3) holds the 4
// octets of one block. Octets past the row (t >= 4 nb) take part in the block's
// reductions but write nothing. Call from uniform control flow.
fn put_q8_octet(va: vec4<f32>, vb: vec4<f32>, t: u32, nb: u32, base: u32, lid: u32) {
    let m = max(abs(va), abs(vb));
    q8_max[lid] = max(max(m.x, m.y), max(m.z, m.w));
    workgroupBarrier();
    let g = lid & ~3u;
    let amax = max(max(q8_max[g], q8_max[g + 1u]), max(q8_max[g + 2u], q8_max[g + 3u]));
    // hi = round(v * 127 / amax); lo = round(v / tq - 254 hi), tq = amax / (127 * 254).
    let k = select(0.0, 127.0 / amax, amax > 0.0);
    let lim = vec4<f32>(127.0);
    let ha = clamp(round(va * k), -lim, lim);
    let hb = clamp(round(vb * k), -lim, lim);
    let la = clamp(round(va * (254.0 * k) - 254.0 * ha), -lim, lim);
    let lb = clamp(round(vb * (254.0 * k) - 254.0 * hb), -lim, lim);
    // The block's sum of the values it stands for: 254 sum(hi) + sum(lo), exact in f32.
    q8_sum[lid] = dot(254.0 * (ha + hb) + (la + lb), vec4<f32>(1.0));
    workgroupBarrier();
    let sum = ((q8_sum[g] + q8_sum[g + 1u]) + (q8_sum[g + 2u] + q8_sum[g + 3u]))
        * (amax / (127.0 * 254.0));
    if (t < 4u * nb) {
        let b = t >> 2u;
        let e = t & 3u;
        let hi = vec4<i32>(ha);
        let hj = vec4<i32>(hb);
        let lo = vec4<i32>(la);
        let lj = vec4<i32>(lb);
        // Word 2e packs values 8e + 0, 2, 4, 6 and word 2e + 1 values 8e + 1, 3, 5, 7.
        let wh = base + 4u * ((e >> 1u) * nb + b) + 2u * (e & 1u);
        let wl = base + 4u * ((2u + (e >> 1u)) * nb + b) + 2u * (e & 1u);
        yq[wh] = pack4xI8(vec4<i32>(hi.x, hi.z, hj.x, hj.z));
        yq[wh + 1u] = pack4xI8(vec4<i32>(hi.y, hi.w, hj.y, hj.w));
        yq[wl] = pack4xI8(vec4<i32>(lo.x, lo.z, lj.x, lj.z));
        yq[wl + 1u] = pack4xI8(vec4<i32>(lo.y, lo.w, lj.y, lj.w));
        if (e == 0u) {
            yq[base + 16u * nb + 2u * b] = bitcast<u32>(amax / (127.0 * 254.0));
            yq[base + 16u * nb + 2u * b + 1u] = bitcast<u32>(sum);
        }
    }
    workgroupBarrier(); // the arrays are read before a next call writes them
}
