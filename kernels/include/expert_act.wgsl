// The activation of the expert gate/up kernels (prepended to them; not a kernel itself):
// h = act(g + gate bias, u + up bias) from a row's gate and up sums, by the `act` bits of
// their parameters (gpu::params::EXPERT_BIAS = 1: the biases were added by the caller,
// EXPERT_CLAMPED = 2: gpt-oss's clamped SwiGLU, else SwiGLU).
fn expert_act(g: f32, u: f32, act: u32, alpha: f32, limit: f32) -> f32 {
    if ((act & 2u) != 0u) {
        // (clamp(u, -limit, limit) + 1) * gc * sigmoid(alpha gc), gc = min(g, limit).
        let gc = min(g, limit);
        let uc = clamp(u, -limit, limit);
        return (uc + 1.0) * gc / (1.0 + exp(-alpha * gc));
    }
    return g / (1.0 + exp(-g)) * u;
}
