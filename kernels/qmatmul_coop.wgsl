// Prefill mat-mat over an MLX affine-quantized row chunk on cooperative matrices (tensor
// cores): y[t, row_base + r] = dot(W[r, :], x[t, :]) (+ bias) (+ resid), as qmatmul.wgsl
// computes it, with W and x rounded to f16 and the products summed in f32.
//
// A workgroup of 128 invocations, four subgroups of 32, computes a tile of 64 rows x 64
// tokens; each subgroup a 32 x 32 quarter of it as 2 x 2 accumulators of 16 x 16, over K
// tiles of 64 columns (four 16-deep steps). Per K tile every invocation dequantizes four
// octets of W (octets lo and lo + 4 of rows lr and lr + 32) and converts four octets of x
// into f16 workgroup tiles, the loads issued a K tile ahead as in qmatmul.wgsl. A tile
// wholly inside the chunk (and without bias) adds its residual to its accumulators and
// stores them straight into y; one at the chunk's edge goes out through workgroup memory,
// with the same additions (so a row's result is the same bits in either: split-invariant
// prefill, docs/architecture.md).
// Needs a subgroup size of 32 and `cols` a multiple of 64 (the engine checks).
//
// H100, Qwen3-30B-A3B shape, 512-token prefill, the 144 dense mat-mats: 66.0 ms in
// qmatmul.wgsl (f32) -> 28.2 ms here. On the way (docs/performance.md): scalar f16 stores
// into the tiles cost more than everything else (84 -> 43 ms as vec4<f16> stores), the
// output tile in workgroup memory 15 ms (-> direct stores), the products themselves ~9 ms.
enable f16;
enable wgpu_cooperative_matrix;

struct Params {
    rows: u32,
    cols: u32,
    n_tokens: u32,
    row_base: u32,
    out_stride: u32,
    flags: u32, // bit 0: add bias, bit 1: add residual
    scales_word: u32,
    biases_word: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> w: array<u32>;
@group(0) @binding(2) var<storage, read> x: array<vec4<f32>>; // [tokens, cols]
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read> resid: array<f32>;
@group(0) @binding(5) var<storage, read_write> y: array<f32>;

// Tile sizes: `QMATMUL_COOP_TILE` in src/gpu/kernels/grids.rs.
const TR: u32 = 64u; // rows per tile
const TT: u32 = 64u; // tokens per tile
const TK: u32 = 64u; // columns per K tile
// Row stride of the f16 tiles in halves: 64 columns and 8 of padding (144 bytes, a
// multiple of 16; the tiles are vec4s, so offsets and strides below count vec4s).
const S: u32 = 72u;

var<workgroup> ws: array<vec4<f16>, 1152>; // W tile, [row][k], TR x S
var<workgroup> xs: array<vec4<f16>, 1152>; // x tile, [token][k], TT x S
var<workgroup> cs: array<f32, 1024>; // a 16 x 16 accumulator per subgroup, column-major

// Writes output (row r, token t) if it is inside the chunk, adding bias / residual.
fn store(r: u32, t: u32, acc: f32) {
    if (r >= p.rows || t >= p.n_tokens) {
        return;
    }
    let o = p.row_base + r;
    let oi = t * p.out_stride + o;
    var v = acc;
    if ((p.flags & 1u) != 0u) {
        v += bias[o];
    }
    if ((p.flags & 2u) != 0u) {
        v += resid[oi];
    }
    y[oi] = v;
}

// Eight values of a row (columns 8 lo .. 8 lo + 7 of the K tile) into an f16 tile.
fn put_w(row: u32, lo: u32, a: vec4<f32>, b: vec4<f32>) {
    let i = (row * S + 8u * lo) >> 2u;
    ws[i] = vec4<f16>(a);
    ws[i + 1u] = vec4<f16>(b);
}

fn put_x(tok: u32, lo: u32, a: vec4<f32>, b: vec4<f32>) {
    let i = (tok * S + 8u * lo) >> 2u;
    xs[i] = vec4<f16>(a);
    xs[i + 1u] = vec4<f16>(b);
}

@compute @workgroup_size(128)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let row0 = wid.x * TR;
    let tok0 = wid.y * TT;
    // Loader roles: octets lo and lo + 4 of rows lr and lr + 32 of W, of tokens lr and
    // lr + 32 of x (the first K tile's loads are issued in the loop's first pass).
    let lr = li >> 2u;
    let lo = li & 3u;
    // This subgroup's quarter of the output tile.
    let sg = li >> 5u;
    let qr = (sg & 1u) * 32u;
    let qt = (sg >> 1u) * 32u;

    // A tile wholly inside the chunk, with no bias, whose output rows start 16-byte
    // aligned, goes straight into y (its residual added as `store` adds it).
    // (`&`, not `&&`: a short-circuit is control flow naga does not see as uniform.)
    let direct = (row0 + TR <= p.rows) & (tok0 + TT <= p.n_tokens) & ((p.flags & 1u) == 0u)
        & ((p.out_stride & 3u) == 0u) & ((p.row_base & 3u) == 0u);
    let y0 = (tok0 + qt) * p.out_stride + p.row_base + row0 + qr;
    // Strides as values computed up front (naga's SPIR-V writer wants a cooperative
    // store's stride emitted before the store).
    let ys = p.out_stride;
    let c16 = p.out_stride * 0u + 16u;
    for (var i = li; i < 1024u; i += 128u) {
        cs[i] = 0.0;
    }
    workgroupBarrier();
    var c00 = coopLoad<coop_mat16x16<f32, C>>(&cs[0], 16u);
    var c01 = c00;
    var c10 = c00;
    var c11 = c00;
    let wr0 = row0 + lr;
    let wr1 = wr0 + 32u;
    let live0 = wr0 < p.rows;
    let live1 = wr1 < p.rows;
    let xt0 = tok0 + lr;
    let xt1 = xt0 + 32u;
    let xlive0 = xt0 < p.n_tokens;
    let xlive1 = xt1 < p.n_tokens;
    var ow0 = OctetWords(0u, 0u, 0u, 0u);
    var ow1 = OctetWords(0u, 0u, 0u, 0u);
    var ow2 = OctetWords(0u, 0u, 0u, 0u);
    var ow3 = OctetWords(0u, 0u, 0u, 0u);
    var xa = array<vec4<f32>, 4>();
    var xb = array<vec4<f32>, 4>();
    for (var k0 = 0u; k0 < p.cols; k0 += TK) {
        if (k0 == 0u) {
            if (live0) {
                ow0 = octet_fetch(0u, p.scales_word, p.biases_word, p.cols, wr0, 0u, lo);
                ow2 = octet_fetch(0u, p.scales_word, p.biases_word, p.cols, wr0, 32u, lo);
            }
            if (live1) {
                ow1 = octet_fetch(0u, p.scales_word, p.biases_word, p.cols, wr1, 0u, lo);
                ow3 = octet_fetch(0u, p.scales_word, p.biases_word, p.cols, wr1, 32u, lo);
            }
            for (var h = 0u; h < 2u; h++) {
                let c = 32u * h + 8u * lo;
                if (xlive0) {
                    xa[2u * h] = x[(xt0 * p.cols + c) >> 2u];
                    xa[2u * h + 1u] = x[((xt0 * p.cols + c) >> 2u) + 1u];
                }
                if (xlive1) {
                    xb[2u * h] = x[(xt1 * p.cols + c) >> 2u];
                    xb[2u * h + 1u] = x[((xt1 * p.cols + c) >> 2u) + 1u];
                }
            }
        }
        var v0 = Octet(vec4<f32>(0.0), vec4<f32>(0.0));
        var v1 = Octet(vec4<f32>(0.0), vec4<f32>(0.0));
        var v2 = Octet(vec4<f32>(0.0), vec4<f32>(0.0));
        var v3 = Octet(vec4<f32>(0.0), vec4<f32>(0.0));
        if (live0) {
            v0 = octet_dequant(ow0, p.cols, wr0, k0, lo);
            v2 = octet_dequant(ow2, p.cols, wr0, k0 + 32u, lo);
        }
        if (live1) {
            v1 = octet_dequant(ow1, p.cols, wr1, k0, lo);
            v3 = octet_dequant(ow3, p.cols, wr1, k0 + 32u, lo);
        }
        put_w(lr, lo, v0.q0, v0.q1);
        put_w(lr, lo + 4u, v2.q0, v2.q1);
        put_w(lr + 32u, lo, v1.q0, v1.q1);
        put_w(lr + 32u, lo + 4u, v3.q0, v3.q1);
        put_x(lr, lo, xa[0], xa[1]);
        put_x(lr, lo + 4u, xa[2], xa[3]);
        put_x(lr + 32u, lo, xb[0], xb[1]);
        put_x(lr + 32u, lo + 4u, xb[2], xb[3]);
        workgroupBarrier();
        let k1 = k0 + TK;
        if (k1 < p.cols) {
            if (live0) {
                ow0 = octet_fetch(0u, p.scales_word, p.biases_word, p.cols, wr0, k1, lo);
                ow2 = octet_fetch(0u, p.scales_word, p.biases_word, p.cols, wr0, k1 + 32u, lo);
            }
            if (live1) {
                ow1 = octet_fetch(0u, p.scales_word, p.biases_word, p.cols, wr1, k1, lo);
                ow3 = octet_fetch(0u, p.scales_word, p.biases_word, p.cols, wr1, k1 + 32u, lo);
            }
            for (var h = 0u; h < 2u; h++) {
                let c = k1 + 32u * h + 8u * lo;
                if (xlive0) {
                    xa[2u * h] = x[(xt0 * p.cols + c) >> 2u];
                    xa[2u * h + 1u] = x[((xt0 * p.cols + c) >> 2u) + 1u];
                }
                if (xlive1) {
                    xb[2u * h] = x[(xt1 * p.cols + c) >> 2u];
                    xb[2u * h + 1u] = x[((xt1 * p.cols + c) >> 2u) + 1u];
                }
            }
        }
        for (var kk = 0u; kk < TK; kk += 16u) {
            // A: 16 rows x 16 columns of W, row-major; B: 16 columns x 16 tokens of x,
            // column-major (a token's columns are contiguous).
            // Pointers to vec4s: offsets and strides count vec4s.
            let a0 = coopLoadT<coop_mat16x16<f16, A>>(&ws[(qr * S + kk) >> 2u], S / 4u);
            let a1 = coopLoadT<coop_mat16x16<f16, A>>(&ws[((qr + 16u) * S + kk) >> 2u], S / 4u);
            let b0 = coopLoad<coop_mat16x16<f16, B>>(&xs[(qt * S + kk) >> 2u], S / 4u);
            let b1 = coopLoad<coop_mat16x16<f16, B>>(&xs[((qt + 16u) * S + kk) >> 2u], S / 4u);
            c00 = coopMultiplyAdd(a0, b0, c00);
            c01 = coopMultiplyAdd(a0, b1, c01);
            c10 = coopMultiplyAdd(a1, b0, c10);
            c11 = coopMultiplyAdd(a1, b1, c11);
        }
        workgroupBarrier();
    }
    // C is rows x tokens; stored column-major, a token's rows are contiguous.
    if (direct) {
        let i01 = y0 + 16u * ys;
        let i10 = y0 + 16u;
        let i11 = y0 + 16u * ys + 16u;
        if ((p.flags & 2u) != 0u) {
            // The residual added to the finished sums, as `store` adds it at the edge:
            // the same bits whichever way a tile goes out (split-invariant prefill).
            c00 = c00 + coopLoad<coop_mat16x16<f32, C>>(&resid[y0], ys);
            c01 = c01 + coopLoad<coop_mat16x16<f32, C>>(&resid[i01], ys);
            c10 = c10 + coopLoad<coop_mat16x16<f32, C>>(&resid[i10], ys);
            c11 = c11 + coopLoad<coop_mat16x16<f32, C>>(&resid[i11], ys);
        }
        coopStore(c00, &y[y0], ys);
        coopStore(c01, &y[i01], ys);
        coopStore(c10, &y[i10], ys);
        coopStore(c11, &y[i11], ys);
        return;
    }
    // At the chunk's edge: each accumulator through this subgroup's corner of `cs`.
    let lane = li & 31u;
    let base = sg * 256u;
    for (var q = 0u; q < 4u; q++) {
        workgroupBarrier();
        switch q {
            case 0u: { coopStore(c00, &cs[base], c16); }
            case 1u: { coopStore(c01, &cs[base], c16); }
            case 2u: { coopStore(c10, &cs[base], c16); }
            default: { coopStore(c11, &cs[base], c16); }
        }
        workgroupBarrier();
        let r = row0 + qr + 16u * (q >> 1u);
        let t = tok0 + qt + 16u * (q & 1u);
        for (var e = 0u; e < 8u; e++) {
            let idx = lane * 8u + e;
            store(r + (idx & 15u), t + (idx >> 4u), cs[base + idx]);
        }
    }
}
