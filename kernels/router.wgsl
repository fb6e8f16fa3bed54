// MoE router: per token, softmax over all experts in f32, top-k (ties to the lower index),
// weighted as `routing` says (include/top_k.wgsl: probabilities, renormalized, or a
// softmax over the k logits). One workgroup per token;
// n_experts <= 1024. An expert slot left empty (NaN logits) holds id u32::MAX. Token t's
// logits start at logits[t * logit_stride] (n_experts, or one more where the router's
// mat-vec also computes the shared expert's gate, Qwen3.5). With `shared_expert` the token
// has top_k + 1 choices, the last its shared expert (id n_experts, include/top_k.wgsl);
// ids and weights hold each token's choices at t * (top_k + shared_expert).
struct Params {
    n_experts: u32,
    top_k: u32,
    routing: u32, // 0 probabilities, 1 renormalized, 2 softmax over the k, 3/4 sigmoid groups (include/top_k.wgsl)
    n_tokens: u32,
    logit_stride: u32,
    shared_expert: u32, // 1 gated, 2 ungated
    groups: u32,
    topk_groups: u32,
    scale: f32,
    pad0: u32,
    pad1: u32,
    pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> logits: array<f32>;
@group(0) @binding(2) var<storage, read_write> ids: array<u32>;
@group(0) @binding(3) var<storage, read_write> weights: array<f32>;
@group(0) @binding(4) var<storage, read> corr: array<f32>; // correction bias (routing 3, 4)

@compute @workgroup_size(128)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let t = wid.x + wid.y * nwg.x;
    if (t >= p.n_tokens) {
        return;
    }
    route_top_k(t * p.logit_stride, p.n_experts, p.top_k, p.routing, p.shared_expert,
                Groups(p.groups, p.topk_groups, p.scale), lid);
    let choices = p.top_k + min(p.shared_expert, 1u);
    for (var k = lid; k < choices; k += TK_WG) {
        ids[t * choices + k] = tk_id[k];
        weights[t * choices + k] = tk_w[k];
    }
}
