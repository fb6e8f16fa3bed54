// Prefill mat-mat: y[t, row_base + r] = dot(W[r, :], x[t, :]) (+ bias) (+ resid) for
// n_tokens tokens. W is a row chunk [rows, cols] in f32/f16/bf16; y and resid have
// out_stride columns. 16x16 output tiles, 16-wide K tiles staged in workgroup memory.
struct Params {
    rows: u32,
    cols: u32,
    n_tokens: u32,
    row_base: u32,
    out_stride: u32,
    flags: u32, // bit 0: add bias, bit 1: add residual
    pad0: u32,
    pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> w: array<u32>;
@group(0) @binding(2) var<storage, read> x: array<f32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read> resid: array<f32>;
@group(0) @binding(5) var<storage, read_write> y: array<f32>;

const TILE: u32 = 16u;
var<workgroup> wt: array<array<f32, 17>, 16>; // [row][k]
var<workgroup> xt: array<array<f32, 17>, 16>; // [token][k]

fn wload(i: u32) -> f32 {
    if (WDT == 0u) {
        return bitcast<f32>(w[i]);
    }
    return decode_half(w[i >> 1u], (i & 1u) == 1u);
}

@compute @workgroup_size(16, 16)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let row0 = wid.x * TILE;
    let tok0 = wid.y * TILE;
    // lid.x indexes rows for the output and k for loads; lid.y indexes tokens / rows.
    let r = row0 + lid.x;
    let t = tok0 + lid.y;
    var acc = 0.0;
    for (var k0 = 0u; k0 < p.cols; k0 += TILE) {
        let k = k0 + lid.x;
        // Load the W tile: thread (x=k, y=row) loads W[row0 + y, k].
        let wr = row0 + lid.y;
        var wv = 0.0;
        if (wr < p.rows && k < p.cols) {
            wv = wload(wr * p.cols + k);
        }
        wt[lid.y][lid.x] = wv;
        var xv = 0.0;
        if (t < p.n_tokens && k < p.cols) {
            xv = x[t * p.cols + k];
        }
        xt[lid.y][lid.x] = xv;
        workgroupBarrier();
        for (var kk = 0u; kk < TILE; kk++) {
            acc += wt[lid.x][kk] * xt[lid.y][kk];
        }
        workgroupBarrier();
    }
    if (r < p.rows && t < p.n_tokens) {
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
}
