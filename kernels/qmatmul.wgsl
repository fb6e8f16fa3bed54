// Prefill mat-mat over an MLX affine-quantized row chunk: y[t, row_base + r] =
// dot(W[r, :], x[t, :]) (+ bias) (+ resid) for n_tokens tokens; y and resid have out_stride
// columns. `w` holds [codes][scales][biases] as in qmatvec.wgsl (see include/quant.wgsl).
//
// A workgroup of 16x8 threads computes a tile of 64 rows x 32 tokens, each thread 4 rows x
// 4 tokens (rows lid.x + 16 i, tokens lid.y + 8 j), over K tiles of 32 columns (one block:
// BITS whole words per row, one group). Per K tile, every thread dequantizes two octets
// of the W tile (64 rows x 4 octets) into workgroup memory and stores one octet of the x
// tile; the loads of both are issued a K tile ahead (include/qtile.wgsl), before the
// previous tile's products (H200, 512-token prefill: 77 -> 66 ms of qmatmul; two tiles
// ahead was slower, 73 ms). Each product step loads 8 vec4s from workgroup memory for 16
// dot products (a 32x32 tile of 2x2 per thread loaded 4 for 4, so that workgroup memory
// bandwidth bounded it at ~14 TFLOP/s).
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

// Tile sizes: `QMATMUL_ROWS` / `QMATMUL_TOKENS` in src/gpu/kernels.rs.
const TR: u32 = 64u; // rows per tile
const TT: u32 = 32u; // tokens per tile
const TK: u32 = 32u; // columns per K tile
// [row][k / 4] as vec4s (one load serves 4 columns), rows padded to 9 vec4s: 8
// invocations reading 8 rows at one column hit 8 different bank quads.
var<workgroup> ws: array<array<vec4<f32>, 9>, 64>; // dequantized W
var<workgroup> xs: array<array<vec4<f32>, 9>, 32>; // [token][k / 4]

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

@compute @workgroup_size(16, 8)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
        @builtin(local_invocation_index) li: u32) {
    let row0 = wid.x * TR;
    let tok0 = wid.y * TT;
    // Loader roles: W octets (row lr, octet lo) and (row lr + 32, octet lo); x octet lo of
    // token lr.
    let lr = li >> 2u;
    let lo = li & 3u;
    // Outputs: acc<i> holds row lid.x + 16 i; its components tokens lid.y + 8 j.
    var acc0 = vec4<f32>(0.0);
    var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0);
    var acc3 = vec4<f32>(0.0);
    // Each K tile's loads are issued before the previous tile's products, so that they are
    // in flight while the products run.
    let wr0 = row0 + lr;
    let wr1 = wr0 + 32u;
    let live0 = wr0 < p.rows;
    let live1 = wr1 < p.rows;
    let xt = tok0 + lr;
    let x_live = xt < p.n_tokens;
    var ow0 = OctetWords(0u, 0u, 0u, 0u);
    var ow1 = OctetWords(0u, 0u, 0u, 0u);
    var xv0 = vec4<f32>(0.0);
    var xv1 = vec4<f32>(0.0);
    if (live0) {
        ow0 = octet_fetch(0u, p.scales_word, p.biases_word, p.cols, wr0, 0u, lo);
    }
    if (live1) {
        ow1 = octet_fetch(0u, p.scales_word, p.biases_word, p.cols, wr1, 0u, lo);
    }
    if (x_live) {
        xv0 = x[(xt * p.cols + 8u * lo) >> 2u];
        xv1 = x[((xt * p.cols + 8u * lo) >> 2u) + 1u];
    }
    for (var k0 = 0u; k0 < p.cols; k0 += TK) {
        var v0 = Octet(vec4<f32>(0.0), vec4<f32>(0.0));
        var v1 = Octet(vec4<f32>(0.0), vec4<f32>(0.0));
        if (live0) {
            v0 = octet_dequant(ow0, p.cols, wr0, k0, lo);
        }
        if (live1) {
            v1 = octet_dequant(ow1, p.cols, wr1, k0, lo);
        }
        ws[lr][2u * lo] = v0.q0;
        ws[lr][2u * lo + 1u] = v0.q1;
        ws[lr + 32u][2u * lo] = v1.q0;
        ws[lr + 32u][2u * lo + 1u] = v1.q1;
        xs[lr][2u * lo] = xv0;
        xs[lr][2u * lo + 1u] = xv1;
        workgroupBarrier();
        let k1 = k0 + TK;
        if (k1 < p.cols) {
            if (live0) {
                ow0 = octet_fetch(0u, p.scales_word, p.biases_word, p.cols, wr0, k1, lo);
            }
            if (live1) {
                ow1 = octet_fetch(0u, p.scales_word, p.biases_word, p.cols, wr1, k1, lo);
            }
            if (x_live) {
                xv0 = x[(xt * p.cols + k1 + 8u * lo) >> 2u];
                xv1 = x[((xt * p.cols + k1 + 8u * lo) >> 2u) + 1u];
            }
        }
        // A thread whose tokens are all past the tile's last skips the products
        // (its sums are never stored); the others run them unchanged, so every stored
        // sum is the same bits whatever the tile's fill (split-invariant prefill).
        if (tok0 + lid.y < p.n_tokens) {
            for (var kq = 0u; kq < TK / 4u; kq++) {
                let x0 = xs[lid.y][kq];
                let x1 = xs[lid.y + 8u][kq];
                let x2 = xs[lid.y + 16u][kq];
                let x3 = xs[lid.y + 24u][kq];
                let w0 = ws[lid.x][kq];
                let w1 = ws[lid.x + 16u][kq];
                let w2 = ws[lid.x + 32u][kq];
                let w3 = ws[lid.x + 48u][kq];
                acc0 += vec4<f32>(dot(w0, x0), dot(w0, x1), dot(w0, x2), dot(w0, x3));
                acc1 += vec4<f32>(dot(w1, x0), dot(w1, x1), dot(w1, x2), dot(w1, x3));
                acc2 += vec4<f32>(dot(w2, x0), dot(w2, x1), dot(w2, x2), dot(w2, x3));
                acc3 += vec4<f32>(dot(w3, x0), dot(w3, x1), dot(w3, x2), dot(w3, x3));
            }
        }
        workgroupBarrier();
    }
    let accs = array<vec4<f32>, 4>(acc0, acc1, acc2, acc3);
    for (var i = 0u; i < 4u; i++) {
        for (var j = 0u; j < 4u; j++) {
            store(row0 + lid.x + 16u * i, tok0 + lid.y + 8u * j, accs[i][j]);
        }
    }
}
