// Dequantizing one octet of a quantized row into a workgroup tile (prepended to the
// prefill mat-mat kernels after quant.wgsl; not a kernel itself). The kernel must bind its
// weights as `w: array<u32>`.

// The words the dequantization of octet lo (columns k0 + 8 lo .. k0 + 8 lo + 7, k0 a
// multiple of 32) of row r needs: its first word, the next one if the octet spills into
// it, and its group's scale and bias words, for the matrix of `cols` columns whose codes,
// scales and biases start at words q_word, s_word and b_word. Loaded a K tile ahead of
// the arithmetic (`octet_dequant`), so that the loads are in flight while the previous
// tile's products run.
struct OctetWords {
    w0: u32,
    w1: u32,
    s: u32,
    b: u32,
}

fn octet_fetch(q_word: u32, s_word: u32, b_word: u32, cols: u32, r: u32, k0: u32,
               lo: u32) -> OctetWords {
    let u = (k0 >> 3u) + lo; // octet index in the row
    let wi = q_word + r * (cols * BITS / 32u) + octet_word(u);
    var w1 = 0u;
    if (octet_spills(octet_shift(u))) {
        w1 = w[wi + 1u];
    }
    let e = group_index(r, cols, k0);
    var bw = 0u;
    if (has_biases()) {
        bw = w[scale_word(b_word, e)];
    }
    return OctetWords(w[wi], w1, w[scale_word(s_word, e)], bw);
}

// The 8 weights of the octet whose words `octet_fetch` loaded (same cols, r, k0, lo).
fn octet_dequant(ow: OctetWords, cols: u32, r: u32, k0: u32, lo: u32) -> Octet {
    let e = group_index(r, cols, k0);
    return octet_weights(ow.w0, ow.w1, octet_shift((k0 >> 3u) + lo), ow.s, ow.b, e);
}
