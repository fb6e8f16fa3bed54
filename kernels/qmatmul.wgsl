// Prefill mat-mat over an MLX affine-quantized row chunk: y[t, row_base + r] =
// dot(W[r, :], x[t, :]) (+ bias) (+ resid) for n_tokens tokens; y and resid have out_stride
// columns. `w` holds [codes][scales][biases] as in qmatvec.wgsl (see include/quant.wgsl).
//
// A workgroup of 16x16 threads computes a tile of 32 rows x 32 tokens, each thread 2 rows x
// 2 tokens, over K tiles of 32 columns (one block: BITS whole words per row, one group).
// Per K tile, threads 0..127 dequantize the W tile (one octet each: 32 rows x 4 octets)
// into workgroup memory while threads 128..255 store the x tile (8 floats each); the
// loads of both are issued a K tile ahead (include/qtile.wgsl), before the previous
// tile's products (H200, 512-token prefill: 77 -> 66 ms of qmatmul; two tiles ahead was
// slower, 73 ms).
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
const TR: u32 = 32u; // rows per tile
const TT: u32 = 32u; // tokens per tile
const TK: u32 = 32u; // columns per K tile
// [row][k / 4] as vec4s (one load serves 4 columns), rows padded to 9 vec4s: 8
// invocations reading 8 rows at one column hit 8 different bank quads.
var<workgroup> ws: array<array<vec4<f32>, 9>, 32>; // dequantized W
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

@compute @workgroup_size(16, 16)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
        @builtin(local_invocation_index) li: u32) {
    let row0 = wid.x * TR;
    let tok0 = wid.y * TT;
    // The loader role of this thread: W octet (row lr, octet lo) or x octet (token lr).
    let lr = (li & 127u) >> 2u;
    let lo = li & 3u;
    // Outputs: acc0 = row lid.x, acc1 = row lid.x + 16; .x token lid.y, .y token lid.y + 16.
    var acc0 = vec2<f32>(0.0);
    var acc1 = vec2<f32>(0.0);
    // Each K tile's loads are issued before the previous tile's products, so that they are
    // in flight while the products run.
    let wr = row0 + lr;
    let w_live = li < 128u && wr < p.rows;
    let xt = tok0 + lr;
    let x_live = li >= 128u && xt < p.n_tokens;
    var ow = OctetWords(0u, 0u, 0u, 0u);
    var xv0 = vec4<f32>(0.0);
    var xv1 = vec4<f32>(0.0);
    if (w_live) {
        ow = octet_fetch(0u, p.scales_word, p.biases_word, p.cols, wr, 0u, lo);
    }
    if (x_live) {
        xv0 = x[(xt * p.cols + 8u * lo) >> 2u];
        xv1 = x[((xt * p.cols + 8u * lo) >> 2u) + 1u];
    }
    for (var k0 = 0u; k0 < p.cols; k0 += TK) {
        if (li < 128u) {
            var v = Octet(vec4<f32>(0.0), vec4<f32>(0.0));
            if (w_live) {
                v = octet_dequant(ow, p.cols, wr, k0, lo);
            }
            ws[lr][2u * lo] = v.q0;
            ws[lr][2u * lo + 1u] = v.q1;
        } else {
            xs[lr][2u * lo] = xv0;
            xs[lr][2u * lo + 1u] = xv1;
        }
        workgroupBarrier();
        let k1 = k0 + TK;
        if (k1 < p.cols) {
            if (w_live) {
                ow = octet_fetch(0u, p.scales_word, p.biases_word, p.cols, wr, k1, lo);
            }
            if (x_live) {
                xv0 = x[(xt * p.cols + k1 + 8u * lo) >> 2u];
                xv1 = x[((xt * p.cols + k1 + 8u * lo) >> 2u) + 1u];
            }
        }
        for (var kq = 0u; kq < TK / 4u; kq++) {
            let w0 = ws[lid.x][kq];
            let w1 = ws[lid.x + 16u][kq];
            let x0 = xs[lid.y][kq];
            let x1 = xs[lid.y + 16u][kq];
            acc0 += vec2<f32>(dot(w0, x0), dot(w0, x1));
            acc1 += vec2<f32>(dot(w1, x0), dot(w1, x1));
        }
        workgroupBarrier();
    }
    let r = row0 + lid.x;
    let t = tok0 + lid.y;
    store(r, t, acc0.x);
    store(r, t + 16u, acc0.y);
    store(r + 16u, t, acc1.x);
    store(r + 16u, t + 16u, acc1.y);
}
