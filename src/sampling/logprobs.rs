//! The log-probabilities reported with generated tokens: a log-softmax of the raw logits
//! and the most likely alternatives.

/// Largest [`GenerateOptions::logprobs`](crate::GenerateOptions::logprobs) (OpenAI's
/// limit on `top_logprobs`).
pub const MAX_LOGPROBS: usize = 20;

/// A token and its log-probability under the model: the natural logarithm of its softmax
/// probability over the raw logits (before temperature, penalties and logit bias, as
/// OpenAI reports them).
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct TokenLogprob {
    /// Token id.
    pub id: u32,
    /// `ln p(id)`, at most 0; minus infinity for a token the model rules out.
    pub logprob: f32,
}

/// The log-probability of token `id` under `logits` (log-softmax, NaN counting as minus
/// infinity) and the `n` most likely tokens, most likely first (ties to the lower id).
pub(crate) fn token_logprobs(logits: &[f32], id: u32, n: usize) -> (f32, Vec<TokenLogprob>) {
    let clean = |x: f32| if x.is_nan() { f32::NEG_INFINITY } else { x };
    let max = logits
        .iter()
        .map(|&x| clean(x))
        .fold(f32::NEG_INFINITY, f32::max);
    let lse = if max.is_infinite() {
        f64::from(max)
    } else {
        let m = f64::from(max);
        let sum: f64 = logits
            .iter()
            .map(|&x| (f64::from(clean(x)) - m).exp())
            .sum();
        m + sum.ln()
    };
    let logprob = |x: f32| {
        let x = clean(x);
        if x == f32::INFINITY {
            // An infinite logit takes all the mass (shared with any other).
            let k = logits.iter().filter(|&&y| y == f32::INFINITY).count();
            return -(k as f32).ln();
        }
        let v = f64::from(x) - lse;
        if v.is_nan() {
            f32::NEG_INFINITY
        } else {
            v as f32
        }
    };
    let chosen = logits
        .get(id as usize)
        .map_or(f32::NEG_INFINITY, |&x| logprob(x));
    // The n best in one pass: a short sorted list, ties kept in id order.
    let mut top: Vec<(u32, f32)> = Vec::with_capacity(n + 1);
    if n > 0 {
        for (i, &x) in logits.iter().enumerate() {
            let x = clean(x);
            if top.len() == n && top.last().is_some_and(|&(_, y)| x <= y) {
                continue;
            }
            let at = top.partition_point(|&(_, y)| y >= x);
            top.insert(at, (i as u32, x));
            top.truncate(n);
        }
    }
    let top = top
        .into_iter()
        .map(|(id, x)| TokenLogprob {
            id,
            logprob: logprob(x),
        })
        .collect();
    (chosen, top)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_logprobs_are_a_log_softmax_of_the_raw_logits() {
        let logits = [1.0f32, 3.0, f32::NAN, 3.0, -2.0, 0.5];
        let (lp, top) = token_logprobs(&logits, 4, 4);
        let lse = logits
            .iter()
            .filter(|x| !x.is_nan())
            .map(|&x| f64::from(x).exp())
            .sum::<f64>()
            .ln();
        assert!((f64::from(lp) - (-2.0 - lse)).abs() < 1e-6, "{lp}");
        let ids: Vec<u32> = top.iter().map(|t| t.id).collect();
        assert_eq!(ids, [1, 3, 0, 5]);
        assert!((f64::from(top[0].logprob) - (3.0 - lse)).abs() < 1e-6);
        assert_eq!(token_logprobs(&logits, 2, 0), (f32::NEG_INFINITY, vec![]));
        let total: f64 = token_logprobs(&logits, 0, 6)
            .1
            .iter()
            .map(|t| f64::from(t.logprob).exp())
            .sum();
        assert!((total - 1.0).abs() < 1e-6, "{total}");
        assert_eq!(token_logprobs(&[f32::INFINITY, 0.0], 0, 0).0, 0.0);
    }
}
