//! Token sampling in llama.cpp's default order: repetition penalty → top-k → top-p → min-p →
//! temperature → draw. Seeded (the same seed gives the same tokens) and allocation-free per
//! call: every buffer is sized for the vocabulary in [`Sampler::new`].

/// Sampling settings; `Default` is llama.cpp's defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct SamplerParams {
    /// Divides the logits; `<= 0` means greedy (the most likely token).
    pub temperature: f32,
    /// Keep the `top_k` most likely tokens; 0 keeps all.
    pub top_k: usize,
    /// Keep the smallest set of most likely tokens whose probability reaches `top_p`; 1 keeps all.
    pub top_p: f32,
    /// Drop tokens less likely than `min_p` times the most likely one; 0 keeps all.
    pub min_p: f32,
    /// Penalise tokens seen in the last `repeat_last_n` tokens (positive logits divided,
    /// negative multiplied); 1 disables.
    pub repeat_penalty: f32,
    /// How many past tokens the penalty looks at; 0 disables.
    pub repeat_last_n: usize,
    /// Seed of the random draw.
    pub seed: u64,
}

impl Default for SamplerParams {
    fn default() -> Self {
        SamplerParams {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            repeat_penalty: 1.0,
            repeat_last_n: 64,
            // llama.cpp's LLAMA_DEFAULT_SEED; here it is an ordinary, fixed seed.
            seed: 0xFFFF_FFFF,
        }
    }
}

/// A sampler for one vocabulary size, holding its random state.
pub struct Sampler {
    params: SamplerParams,
    /// (logit, token) candidates, reused on every call.
    cands: Vec<(f32, u32)>,
    /// `seen[token] == stamp` marks tokens already penalised in this call.
    seen: Vec<u32>,
    stamp: u32,
    rng: SplitMix64,
}

/// SplitMix64: a small, fast, well-distributed generator, enough for sampling.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

fn desc(a: &(f32, u32), b: &(f32, u32)) -> std::cmp::Ordering {
    b.0.total_cmp(&a.0).then(a.1.cmp(&b.1))
}

impl Sampler {
    pub fn new(p: SamplerParams, vocab: usize) -> Self {
        let rng = SplitMix64(p.seed);
        Sampler {
            params: p,
            cands: Vec::with_capacity(vocab),
            seen: vec![0; vocab],
            stamp: 0,
            rng,
        }
    }

    pub fn params(&self) -> &SamplerParams {
        &self.params
    }

    /// Picks the next token. `logits` (one per vocabulary token) is modified in place by the
    /// repetition penalty; `history` is the sequence so far (prompt and generated tokens).
    /// Ids in `history` outside the vocabulary are ignored; `logits` should have one entry per
    /// token of the vocabulary given to `new` (a longer slice is sampled without the penalty).
    pub fn sample(&mut self, logits: &mut [f32], history: &[u32]) -> u32 {
        let p = &self.params;
        if logits.is_empty() {
            return 0;
        }
        if p.repeat_penalty != 1.0 && p.repeat_last_n > 0 && logits.len() <= self.seen.len() {
            self.stamp = self.stamp.wrapping_add(1);
            if self.stamp == 0 {
                self.seen.fill(0);
                self.stamp = 1;
            }
            let window = &history[history.len().saturating_sub(p.repeat_last_n)..];
            for &t in window {
                let t = t as usize;
                if t < logits.len() && self.seen[t] != self.stamp {
                    self.seen[t] = self.stamp;
                    let l = &mut logits[t];
                    *l = if *l <= 0.0 {
                        *l * p.repeat_penalty
                    } else {
                        *l / p.repeat_penalty
                    };
                }
            }
        }
        if p.temperature <= 0.0 {
            return argmax(logits);
        }

        let cands = &mut self.cands;
        if p.top_k > 0 && p.top_k < logits.len() {
            top_k_candidates(logits, p.top_k, cands);
        } else {
            all_candidates(logits, cands);
        }
        if p.top_p < 1.0 {
            cands.sort_unstable_by(desc);
            let max = cands[0].0;
            let total: f64 = cands.iter().map(|c| ((c.0 - max) as f64).exp()).sum();
            let mut cum = 0.0f64;
            let mut keep = cands.len();
            for (i, c) in cands.iter().enumerate() {
                cum += ((c.0 - max) as f64).exp() / total;
                if cum >= p.top_p as f64 {
                    keep = i + 1;
                    break;
                }
            }
            cands.truncate(keep);
        }
        if p.min_p > 0.0 {
            let max = cands.iter().map(|c| c.0).fold(f32::NEG_INFINITY, f32::max);
            let threshold = max + p.min_p.ln();
            let before = cands.len();
            cands.retain(|c| c.0 >= threshold);
            if cands.is_empty() && before > 0 {
                // Keep at least the best token (NaN logits can fail every comparison).
                return argmax(logits);
            }
        }
        // Temperature, then a draw from the softmax of what is left.
        let inv_t = 1.0 / p.temperature;
        let max = cands.iter().map(|c| c.0).fold(f32::NEG_INFINITY, f32::max);
        let total: f64 = cands
            .iter()
            .map(|c| (((c.0 - max) * inv_t) as f64).exp())
            .sum();
        if !(total.is_finite() && total > 0.0) {
            return argmax(logits);
        }
        let mut u = self.rng.next_f64() * total;
        for c in cands.iter() {
            let w = (((c.0 - max) * inv_t) as f64).exp();
            if u < w {
                return c.1;
            }
            u -= w;
        }
        // Rounding left u past the last weight.
        cands.last().map_or(0, |c| c.1)
    }
}

/// Lanes of the vocabulary scans: wide enough for the compiler to keep them in vector registers.
const LANES: usize = 16;

/// The largest logit that is not NaN (−∞ where there is none), and whether any is NaN: one pass
/// over `LANES` running maxima, which vectorizes (a 262144-token vocabulary in tens of µs).
fn max_and_nan(logits: &[f32]) -> (f32, bool) {
    let (mut m, mut nan) = ([f32::NEG_INFINITY; LANES], [false; LANES]);
    let mut chunks = logits.chunks_exact(LANES);
    for c in &mut chunks {
        for j in 0..LANES {
            m[j] = if c[j] > m[j] { c[j] } else { m[j] };
            nan[j] |= c[j].is_nan();
        }
    }
    let rest = chunks.remainder();
    let mut best = rest.iter().fold(f32::NEG_INFINITY, |a, &x| if x > a { x } else { a });
    best = m.iter().fold(best, |a, &x| if x > a { x } else { a });
    (best, nan.iter().any(|&n| n) || rest.iter().any(|x| x.is_nan()))
}

/// The first token with the highest logit, NaNs skipped (all NaN: the last token; none: 0): the
/// token a scan keeping the first strictly greater logit picks, found as the first position of
/// the largest one. (That scan, comparing with the best so far read back through its index,
/// took 3 ns a token: 0.9 ms a step for Gemma 3's vocabulary.)
pub fn argmax(logits: &[f32]) -> u32 {
    let (max, _) = max_and_nan(logits);
    match logits.iter().position(|&l| l == max) {
        Some(i) => i as u32,
        None => logits.len().saturating_sub(1) as u32,
    }
}

/// Every token as a candidate `(logit, token)`, into `cands`.
fn all_candidates(logits: &[f32], cands: &mut Vec<(f32, u32)>) {
    cands.clear();
    cands.extend(logits.iter().enumerate().map(|(i, &l)| (l, i as u32)));
}

/// The `k` (`0 < k < logits.len()`) best candidates by [`desc`], in that order, into `cands`.
/// They are gathered from the logits within a reach of the largest, widened until `k` are in
/// (a large vocabulary holds few near its top): the same set as selecting among all of them,
/// without building and partitioning a candidate per token. With a NaN (which `desc` ranks
/// first) or past the last reach, from all of them.
fn top_k_candidates(logits: &[f32], k: usize, cands: &mut Vec<(f32, u32)>) {
    let (max, nan) = max_and_nan(logits);
    let mut reach = 8.0f32;
    loop {
        let floor = max - reach;
        if nan || !floor.is_finite() || reach > 128.0 {
            all_candidates(logits, cands);
            break;
        }
        cands.clear();
        for (c, chunk) in logits.chunks(LANES).enumerate() {
            if chunk.iter().fold(false, |any, &l| any | (l >= floor)) {
                let first = c * LANES;
                cands.extend(
                    chunk.iter().enumerate().filter(|(_, &l)| l >= floor).map(|(i, &l)| (l, (first + i) as u32)),
                );
            }
        }
        if cands.len() >= k {
            break;
        }
        reach *= 2.0;
    }
    cands.select_nth_unstable_by(k - 1, desc);
    cands.truncate(k);
    cands.sort_unstable_by(desc);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(temperature: f32, top_k: usize, top_p: f32, min_p: f32) -> SamplerParams {
        SamplerParams {
            temperature,
            top_k,
            top_p,
            min_p,
            repeat_penalty: 1.0,
            repeat_last_n: 64,
            seed: 7,
        }
    }

    /// Logits whose softmax is exactly `probs`.
    fn logits_of(probs: &[f32]) -> Vec<f32> {
        probs.iter().map(|p| p.ln()).collect()
    }

    fn histogram(p: SamplerParams, logits: &[f32], n: usize) -> Vec<f64> {
        let mut s = Sampler::new(p, logits.len());
        let mut counts = vec![0usize; logits.len()];
        for _ in 0..n {
            let mut l = logits.to_vec();
            counts[s.sample(&mut l, &[]) as usize] += 1;
        }
        counts.iter().map(|&c| c as f64 / n as f64).collect()
    }

    #[test]
    fn greedy_takes_the_argmax() {
        let mut s = Sampler::new(params(0.0, 40, 0.95, 0.05), 4);
        assert_eq!(s.sample(&mut [0.1, 3.0, 2.9, -1.0], &[]), 1);
        assert_eq!(s.sample(&mut [f32::NAN, 1.0, 2.0, 2.0], &[]), 2);
    }

    /// Random logits with ties, both zeros, infinities and (if `nan`) NaNs: values from a small
    /// set where `ties`, else spread; lengths around the scan lanes.
    fn edge_logits(rng: &mut SplitMix64, n: usize, ties: bool, nan: bool) -> Vec<f32> {
        let special = [0.0f32, -0.0, f32::INFINITY, f32::NEG_INFINITY, f32::NAN];
        (0..n)
            .map(|_| {
                let r = rng.next_u64();
                match r % 23 {
                    0 => special[(r >> 8) as usize % if nan { 5 } else { 4 }],
                    _ if ties => ((r >> 8) % 7) as f32 - 3.0,
                    _ => ((r >> 11) as f64 / (1u64 << 53) as f64 * 60.0 - 30.0) as f32,
                }
            })
            .collect()
    }

    /// The scans' results equal the plain definitions: the first strictly greater logit kept
    /// (argmax), and the candidates partitioned and sorted by `desc` among all of them (top-k).
    #[test]
    fn scans_equal_their_definitions() {
        let reference_argmax = |l: &[f32]| {
            let mut best = 0usize;
            for (i, &x) in l.iter().enumerate() {
                if l[best].is_nan() || x > l[best] {
                    best = i;
                }
            }
            best as u32
        };
        let mut rng = SplitMix64(11);
        let mut cands = Vec::new();
        for n in (1..=40).chain([63, 64, 65, 1000, 5003]) {
            for (ties, nan) in [(false, false), (true, false), (false, true), (true, true)] {
                for _ in 0..4 {
                    let l = edge_logits(&mut rng, n, ties, nan);
                    assert_eq!(argmax(&l), reference_argmax(&l), "{l:?}");
                    for k in [1, 2, 3, 40].into_iter().filter(|&k| k < n).chain((n > 1).then_some(n - 1)) {
                        let mut want: Vec<(f32, u32)> = l.iter().enumerate().map(|(i, &x)| (x, i as u32)).collect();
                        want.sort_unstable_by(desc);
                        want.truncate(k);
                        top_k_candidates(&l, k, &mut cands);
                        let bits = |c: &[(f32, u32)]| c.iter().map(|&(x, i)| (x.to_bits(), i)).collect::<Vec<_>>();
                        assert_eq!(bits(&cands), bits(&want), "n {n} k {k}");
                    }
                }
            }
        }
        // All NaN: the last token; a far tail beyond every reach.
        assert_eq!(argmax(&[f32::NAN; 5]), 4);
        let mut l = vec![-1e6f32; 100];
        l[7] = 0.0;
        top_k_candidates(&l, 3, &mut cands);
        assert_eq!(cands.iter().map(|c| c.1).collect::<Vec<_>>(), [7, 0, 1]);
    }

    #[test]
    fn repeat_penalty_applies_once_per_distinct_token() {
        let mut p = params(0.0, 0, 1.0, 0.0);
        p.repeat_penalty = 2.0;
        p.repeat_last_n = 3;
        let mut s = Sampler::new(p, 4);
        let mut l = vec![4.0, 3.0, -1.0, 1.0];
        // Token 0 appears twice in the window but is divided once; token 3 is out of the window.
        assert_eq!(s.sample(&mut l, &[3, 0, 2, 0]), 1);
        assert_eq!(l, vec![2.0, 3.0, -2.0, 1.0]);
    }

    #[test]
    fn draws_follow_the_softmax() {
        let probs = [0.5, 0.25, 0.15, 0.1];
        let h = histogram(params(1.0, 0, 1.0, 0.0), &logits_of(&probs), 40_000);
        for (got, want) in h.iter().zip(probs) {
            assert!((got - want as f64).abs() < 0.012, "{h:?} vs {probs:?}");
        }
    }

    #[test]
    fn temperature_sharpens() {
        let h = histogram(params(0.5, 0, 1.0, 0.0), &logits_of(&[0.6, 0.4]), 40_000);
        // p ∝ p_i^(1/T): 0.36 / (0.36 + 0.16)
        assert!((h[0] - 0.36 / 0.52).abs() < 0.012, "{h:?}");
    }

    #[test]
    fn top_k_top_p_min_p_cut_the_tail() {
        let probs = [0.5, 0.3, 0.15, 0.05];
        let l = logits_of(&probs);
        let h = histogram(params(1.0, 2, 1.0, 0.0), &l, 20_000);
        assert_eq!((h[2], h[3]), (0.0, 0.0));
        assert!((h[0] - 0.5 / 0.8).abs() < 0.015, "{h:?}");
        let h = histogram(params(1.0, 0, 0.7, 0.0), &l, 20_000);
        assert_eq!((h[2], h[3]), (0.0, 0.0));
        let h = histogram(params(1.0, 0, 1.0, 0.2), &l, 20_000);
        assert_eq!(h[3], 0.0);
        assert!(h[2] > 0.1, "{h:?}");
        let h = histogram(params(1.0, 1, 1.0, 0.0), &l, 1000);
        assert_eq!(h[0], 1.0);
    }

    #[test]
    fn same_seed_same_tokens() {
        let l = logits_of(&[0.3, 0.3, 0.2, 0.2]);
        let run = |seed| {
            let mut s = Sampler::new(
                SamplerParams {
                    seed,
                    top_k: 0,
                    top_p: 1.0,
                    min_p: 0.0,
                    temperature: 1.0,
                    ..Default::default()
                },
                4,
            );
            (0..64)
                .map(|_| s.sample(&mut l.clone(), &[]))
                .collect::<Vec<u32>>()
        };
        assert_eq!(run(42), run(42));
        assert_ne!(run(42), run(43));
    }
}
