// Causal depthwise convolution of width k over n tokens, then SiLU: the short convolution of
// a Gated DeltaNet layer (Qwen3.5-MoE / Qwen3-Next linear attention) over its q/k/v
// channels, for a decode step (n = 1) or a whole prefill in one dispatch.
//
// Token t's input of channel c is u[t * stride + offset + c] (so the channels may sit inside
// the rows of a fused projection). The conv state holds the k - 1 inputs before token 0,
// oldest first: state_in[s * channels + c] (zeros with `fresh`). With x = those rows
// followed by the inputs,
//   y[t * channels + c] = silu(sum_{j < k} w[c * k + j] * x[t + j][c])
// (summed in order of j, tap k - 1 on the current token, as PyTorch's conv1d), and
// state (a separate buffer) receives the last k - 1 rows of x. k <= KMAX.
//
// One invocation per (channel, chunk of TCHUNK tokens); grid (channels / 64, n / TCHUNK)
// rounded up (`kernels::conv1d_silu_groups`). Only the first chunk's tokens (t < TCHUNK,
// and TCHUNK >= k - 1) read the state, so that chunk's invocation of a channel also writes
// the channel's new state, after its reads: no other invocation touches that channel's
// state, and the dispatch needs no second pass. Its writes in order s = 0.. read
// x[n + s], which is either an input or state row n + s > s, not yet overwritten.
struct Params {
    n_tokens: u32,
    channels: u32,
    k: u32,
    stride: u32, // floats per token of u
    offset: u32, // of channel 0 in a token's row of u
    fresh: u32, // 1: the state before token 0 is zero (state_in is not read)
    pad1: u32,
    pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> u: array<f32>;
@group(0) @binding(2) var<storage, read> w: array<f32>;
@group(0) @binding(3) var<storage, read_write> state: array<f32>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;
// The conv state before the tokens (the session's committed copy); the new state goes to
// `state`, so a pass whose results are dropped leaves the committed state as it was.
@group(0) @binding(5) var<storage, read> state_in: array<f32>;

const WG: u32 = 64u;
const TCHUNK: u32 = 16u;
const KMAX: u32 = 8u;

// Row s of x (the state, then the inputs) for channel c.
fn x_at(s: u32, c: u32) -> f32 {
    let h = p.k - 1u;
    if (s < h) {
        return select(state_in[s * p.channels + c], 0.0, p.fresh != 0u);
    }
    return u[(s - h) * p.stride + p.offset + c];
}

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let c = wid.x * WG + lid;
    let k = p.k;
    if (c >= p.channels || k == 0u || k > KMAX) {
        return;
    }
    var wk: array<f32, KMAX>;
    for (var j = 0u; j < k; j++) {
        wk[j] = w[c * k + j];
    }
    let t0 = wid.y * TCHUNK;
    let t1 = min(t0 + TCHUNK, p.n_tokens);
    for (var t = t0; t < t1; t++) {
        var acc = 0.0;
        for (var j = 0u; j < k; j++) {
            acc += wk[j] * x_at(t + j, c);
        }
        y[t * p.channels + c] = acc / (1.0 + exp(-acc));
    }
    if (wid.y == 0u) {
        for (var s = 0u; s + 1u < k; s++) {
            state[s * p.channels + c] = x_at(p.n_tokens + s, c);
        }
    }
}
