//! MoE routing in the CPU reference: router logits to the chosen experts and their
//! weights, for each family's router (`RouterKind`).

use super::ops::{softmax_in_place, softmax_rows};

/// Qwen3-MoE routing: for each token (row of `logits`, `n x n_experts`), softmax over all
/// experts in f32, take the `k` most probable (descending; ties go to the lower expert
/// index first), and weight them by their probabilities, divided by the sum of the `k`
/// selected ones if `norm_topk_prob`. Returns `n x k` expert ids and `n x k` weights, in
/// rank order.
///
/// # Panics
/// If `k` is zero or larger than `n_experts`, or `logits.len()` is not a multiple of
/// `n_experts`.
pub fn router_topk(
    logits: &[f32],
    n_experts: usize,
    k: usize,
    norm_topk_prob: bool,
) -> (Vec<u32>, Vec<f32>) {
    assert!(
        k > 0 && k <= n_experts,
        "router_topk: k = {k} must be in 1..={n_experts}"
    );
    let probs = softmax_rows(logits, n_experts);
    let n = probs.len() / n_experts;
    let mut ids = Vec::with_capacity(n * k);
    let mut weights = Vec::with_capacity(n * k);
    let mut order: Vec<usize> = Vec::with_capacity(n_experts);
    for row in probs.chunks_exact(n_experts) {
        order.clear();
        order.extend(0..n_experts);
        // Stable sort, descending by probability: equal probabilities keep index order.
        order.sort_by(|&a, &b| row[b].total_cmp(&row[a]));
        let top = &order[..k];
        let mut w: Vec<f32> = top.iter().map(|&e| row[e]).collect();
        if norm_topk_prob {
            let sum: f32 = w.iter().sum();
            for x in &mut w {
                *x /= sum;
            }
        }
        ids.extend(top.iter().map(|&e| e as u32));
        weights.extend(w);
    }
    (ids, weights)
}

/// gpt-oss routing: for each token (row of `logits`), the `k` largest logits (descending;
/// ties to the lower expert index), weighted by a softmax over those `k` only (in f32,
/// subtracting their maximum). Returns `n x k` expert ids and weights, in rank order.
///
/// # Panics
/// If `k` is zero or larger than `n_experts`, or `logits.len()` is not a multiple of
/// `n_experts`.
pub fn router_topk_softmax(logits: &[f32], n_experts: usize, k: usize) -> (Vec<u32>, Vec<f32>) {
    assert!(
        k > 0 && k <= n_experts && logits.len() % n_experts == 0,
        "router_topk_softmax: k = {k} must be in 1..={n_experts}"
    );
    let n = logits.len() / n_experts;
    let mut ids = Vec::with_capacity(n * k);
    let mut weights = Vec::with_capacity(n * k);
    let mut order: Vec<usize> = Vec::with_capacity(n_experts);
    for row in logits.chunks_exact(n_experts) {
        order.clear();
        order.extend(0..n_experts);
        order.sort_by(|&a, &b| row[b].total_cmp(&row[a]));
        let mut w: Vec<f32> = order[..k].iter().map(|&e| row[e]).collect();
        softmax_in_place(&mut w);
        ids.extend(order[..k].iter().map(|&e| e as u32));
        weights.extend(w);
    }
    (ids, weights)
}

/// GLM-4.5 / DeepSeek-V3 routing: for each token (row of `logits`), the scores
/// `s = sigmoid(logit)` (as `1 / (1 + exp(-logit))`) and the selection scores
/// `s + correction`; the experts are split into `groups` equal groups, a group scored by
/// the sum of its two best selection scores, the `topk_groups` best groups kept (ties to
/// the lower group); the `k` best selection scores among the kept experts chosen
/// (descending, ties to the lower index), weighted by their `s`, divided by their sum
/// (+ 1e-20, summed in rank order) if `norm`, times `scale`. Returns `n x k` ids and
/// weights in rank order.
///
/// # Panics
/// If `k` is zero or larger than `n_experts`, `groups` does not divide `n_experts`,
/// `topk_groups` is not in `1..=groups`, or the lengths disagree.
#[allow(clippy::too_many_arguments)]
pub fn router_sigmoid_groups(
    logits: &[f32],
    correction: &[f32],
    n_experts: usize,
    k: usize,
    (groups, topk_groups): (usize, usize),
    norm: bool,
    scale: f32,
) -> (Vec<u32>, Vec<f32>) {
    assert!(
        k > 0 && k <= n_experts && logits.len() % n_experts == 0,
        "router_sigmoid_groups: k = {k} must be in 1..={n_experts}"
    );
    assert!(groups > 0 && n_experts % groups == 0 && (1..=groups).contains(&topk_groups));
    assert_eq!(correction.len(), n_experts);
    let gsize = n_experts / groups;
    let mut ids = Vec::new();
    let mut weights = Vec::new();
    for row in logits.chunks_exact(n_experts) {
        let s: Vec<f32> = row.iter().map(|&v| 1.0 / (1.0 + (-v).exp())).collect();
        let mut choice: Vec<f32> = s.iter().zip(correction).map(|(a, b)| a + b).collect();
        if groups > 1 {
            let score: Vec<f32> = choice
                .chunks_exact(gsize)
                .map(|g| {
                    let mut v = g.to_vec();
                    v.sort_by(|a, b| b.total_cmp(a));
                    v[0] + v.get(1).copied().unwrap_or(0.0)
                })
                .collect();
            let mut order: Vec<usize> = (0..groups).collect();
            order.sort_by(|&a, &b| score[b].total_cmp(&score[a]));
            for &g in &order[topk_groups..] {
                for v in &mut choice[g * gsize..(g + 1) * gsize] {
                    *v = f32::NEG_INFINITY;
                }
            }
        }
        let mut order: Vec<usize> = (0..n_experts).collect();
        order.sort_by(|&a, &b| choice[b].total_cmp(&choice[a]));
        let top = &order[..k];
        let mut w: Vec<f32> = top.iter().map(|&e| s[e]).collect();
        if norm {
            let sum: f32 = w.iter().sum::<f32>() + 1e-20;
            for x in &mut w {
                *x /= sum;
            }
        }
        ids.extend(top.iter().map(|&e| e as u32));
        weights.extend(w.iter().map(|x| x * scale));
    }
    (ids, weights)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: &[f32], b: &[f32], tol: f32) -> bool {
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() <= tol)
    }

    #[test]
    fn router_topk_norm_and_ties() {
        // Experts 1 and 2 tie at the top; the lower index ranks first.
        let logits = [0.0, 2.0, 2.0, 1.0];
        let (ids, w) = router_topk(&logits, 4, 2, true);
        assert_eq!(ids, vec![1, 2]);
        assert!(close(&w, &[0.5, 0.5], 1e-7));
        let (ids, w) = router_topk(&logits, 4, 3, false);
        assert_eq!(ids, vec![1, 2, 3]);
        let z = 1.0 + 2.0 * 2f32.exp() + 1f32.exp();
        assert!(close(
            &w,
            &[2f32.exp() / z, 2f32.exp() / z, 1f32.exp() / z],
            1e-6
        ));
        // All equal: indices in order, raw probabilities 1/4.
        let (ids, w) = router_topk(&[5.0; 4], 4, 2, false);
        assert_eq!(ids, vec![0, 1]);
        assert_eq!(w, vec![0.25, 0.25]);
    }

    #[test]
    fn router_topk_rows_are_independent() {
        let logits = [3.0, 0.0, 1.0, /* row 2 */ -1.0, 0.5, 4.0];
        let (ids, w) = router_topk(&logits, 3, 1, true);
        assert_eq!(ids, vec![0, 2]);
        assert_eq!(w, vec![1.0, 1.0]);
    }
}
