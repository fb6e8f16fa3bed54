// Dequantizing one octet of a quantized row into a workgroup tile (prepended to the
// prefill mat-mat kernels after quant.wgsl; not a kernel itself). The kernel must bind its
// weights as `w: array<u32>`.

// The 8 weights of octet lo (columns k0 + 8 lo .. k0 + 8 lo + 7, k0 a multiple of 32) of
// row r of the matrix of `cols` columns whose codes, scales and biases start at words
// q_word, s_word and b_word.
fn tile_octet(q_word: u32, s_word: u32, b_word: u32, cols: u32, r: u32, k0: u32,
              lo: u32) -> Octet {
    let u = (k0 >> 3u) + lo; // octet index in the row
    let wi = q_word + r * (cols * BITS / 32u) + octet_word(u);
    let shift = octet_shift(u);
    var w1 = 0u;
    if (octet_spills(shift)) {
        w1 = w[wi + 1u];
    }
    let q = octet_codes(w[wi], w1, shift);
    let e = r * (cols / GROUP) + k0 / GROUP;
    let s = scale_value(w[scale_word(s_word, e)], e);
    let b = scale_value(w[scale_word(b_word, e)], e);
    return Octet(s * q.q0 + b, s * q.q1 + b);
}
