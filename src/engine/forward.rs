//! The forward pass of one batch of consecutive tokens: embeddings, the transformer blocks of
//! every supported architecture (their differences are options in the config and weights), and
//! the logits. One token takes the matrix-vector path with fused parallel regions; several
//! tokens take the matrix-matrix path (weights read once per batch).

use super::kv_cache::{Cached, KvCache, KvType, KEY_BLOCK};
use super::moe::{self, MoeScratch};
use super::ops::{rms_norm, rms_norm_inplace, rope, rope_table};
use super::parallel::{for_each_chunk_range, join2, matvec_fused, matvec_fused_then, MatJob};
use crate::model::tomoe::TomoeMlp;
use super::{ExpertReads, Model};
use crate::model::{Activation, Attention, DenseMlp, LayerWeights, Mlp, ModelConfig, Weights};
use rayon::prelude::*;
use tomoe_quant::kernels::prefetch_floats;
use tomoe_quant::{dequantize_row, matmul, vecmath, GateActivation, MatRef, QuantType, QuantizedInput};

/// Quantized copies of one activation, one per activation format its consumers need
/// (e.g. Q8_K for Q4_K weights and Q8_0 for Q8_0 weights), each made once per input.
pub struct Inputs {
    slots: Vec<(Option<QuantType>, QuantizedInput)>,
}

impl Inputs {
    fn new() -> Inputs {
        Inputs { slots: (0..4).map(|_| (None, QuantizedInput::new())).collect() }
    }

    /// Quantizes `x` (`x.len() / cols` vectors) once per distinct activation format of `tys`.
    fn prepare(&mut self, tys: &[QuantType], x: &[f32], cols: usize) {
        for s in self.slots.iter_mut() {
            s.0 = None;
        }
        for &ty in tys {
            let vdt = ty.vec_dot_type();
            if self.slots.iter().any(|s| s.0 == Some(vdt)) {
                continue;
            }
            let slot = self.slots.iter_mut().find(|s| s.0.is_none()).expect("at most 4 formats per input");
            slot.1.quantize(ty, x, cols);
            slot.0 = Some(vdt);
        }
    }

    fn get(&self, ty: QuantType) -> &QuantizedInput {
        let vdt = ty.vec_dot_type();
        &self.slots.iter().find(|s| s.0 == Some(vdt)).expect("input prepared for this format").1
    }
}

/// Buffers of the forward pass for up to `nb` tokens, allocated once per context.
pub struct Scratch {
    nb: usize,
    x: Vec<f32>,
    xn: Vec<f32>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    /// Attention output, head-major: [head][token][head_dim].
    att_heads: Vec<f32>,
    /// Attention output, token-major (the input of the output projection).
    att: Vec<f32>,
    proj: Vec<f32>,
    gate: Vec<f32>,
    up: Vec<f32>,
    /// One row of attention scores per head for a single token (the context rounded up to 32:
    /// see `attention`; a batch's rows are per thread).
    scores: Vec<f32>,
    /// cos/sin tables per token, for the global and the sliding-window RoPE bases.
    rope_cos: [Vec<f32>; 2],
    rope_sin: [Vec<f32>; 2],
    /// One token's cos/sin gathered at a pruned layer's kept pairs.
    rope_cos_l: Vec<f32>,
    rope_sin_l: Vec<f32>,
    /// Per token, the dynamic V mask of the current ToMoE layer.
    vmask: Vec<f32>,
    /// A token's embedding row read from the file (`Model::embedding_row`).
    embd_row: Vec<u8>,
    moe: MoeScratch,
    /// Per layer and expert: tokens routed there since the context was created.
    pub expert_counts: Vec<Vec<u64>>,
    inputs: Inputs,
    pub logits: Vec<f32>,
}

impl Scratch {
    pub fn new(c: &ModelConfig, nb: usize, n_ctx: usize) -> Scratch {
        let pairs = c.n_rot / 2;
        Scratch {
            nb,
            x: vec![0.0; nb * c.d_model],
            xn: vec![0.0; nb * c.d_model],
            q: vec![0.0; nb * c.q_dim()],
            k: vec![0.0; nb * c.kv_dim()],
            v: vec![0.0; nb * c.kv_dim()],
            att_heads: vec![0.0; nb * c.q_dim()],
            att: vec![0.0; nb * c.q_dim()],
            proj: vec![0.0; nb * c.d_model],
            gate: vec![0.0; nb * c.n_ff],
            up: vec![0.0; nb * c.n_ff],
            scores: vec![0.0; c.n_head * n_ctx.next_multiple_of(32)],
            rope_cos: [vec![0.0; nb * pairs], vec![0.0; nb * pairs]],
            rope_sin: [vec![0.0; nb * pairs], vec![0.0; nb * pairs]],
            rope_cos_l: vec![0.0; pairs],
            rope_sin_l: vec![0.0; pairs],
            vmask: vec![0.0; nb * c.head_dim],
            embd_row: Vec::new(),
            moe: MoeScratch::default(),
            expert_counts: vec![vec![0; c.tomoe.as_ref().map_or(0, |t| t.n_expert)]; c.n_layer],
            inputs: Inputs::new(),
            logits: vec![0.0; c.n_vocab],
        }
    }
}

/// Queries whose attention a head computes together (see `attention`).
const ATTN_GROUP: usize = 4;

/// Which logits a batch produces.
pub enum Logits<'o> {
    None,
    /// The last token's, into `Scratch::logits`.
    Last,
    /// Every token's, row-major into the given slice (`n * n_vocab`).
    All(&'o mut [f32]),
}

/// Runs `tokens` (at most `nb`, already checked against the vocabulary and the context) at
/// positions `pos0..`, storing their keys and values in `kv`.
pub fn forward(model: &Model, kv: &mut KvCache, s: &mut Scratch, tokens: &[u32], pos0: usize, logits: Logits) {
    let (c, w) = (model.config(), model.weights());
    let n = tokens.len();
    debug_assert!(n > 0 && n <= s.nb && pos0 + n <= kv.n_ctx());
    embed(model, s, tokens);
    rope_tables(c, w, s, pos0, n);
    for (il, l) in w.layers.iter().enumerate() {
        attention_block(c, l, il, kv, s, pos0, n);
        mlp_block(c, l, model.expert_reads(il), il, s, n);
    }
    output_logits(c, w, s, n, logits);
}

/// The tokens' embeddings into `s.x` (scaled where the architecture scales them).
fn embed(model: &Model, s: &mut Scratch, tokens: &[u32]) {
    let (c, w) = (model.config(), model.weights());
    let d = c.d_model;
    for (t, &tok) in tokens.iter().enumerate() {
        let xt = &mut s.x[t * d..(t + 1) * d];
        dequantize_row(w.token_embd.ty(), model.embedding_row(tok, &mut s.embd_row), xt);
        if let Some(scale) = c.embed_scale {
            xt.iter_mut().for_each(|v| *v *= scale);
        }
    }
}

/// Whether the sliding-window layers rotate with a RoPE base of their own (a second table).
fn swa_rope_table(c: &ModelConfig) -> bool {
    c.swa_layers.iter().any(|&b| b) && c.rope_base_swa != c.rope_base
}

/// The cos/sin tables of positions `pos0..pos0 + n`, per RoPE base in use.
fn rope_tables(c: &ModelConfig, w: &Weights, s: &mut Scratch, pos0: usize, n: usize) {
    let pairs = c.n_rot / 2;
    let n_bases = if swa_rope_table(c) { 2 } else { 1 };
    for (b, base) in [c.rope_base, c.rope_base_swa].into_iter().enumerate().take(n_bases) {
        for t in 0..n {
            let r = t * pairs..(t + 1) * pairs;
            let (cos, sin) = (&mut s.rope_cos[b][r.clone()], &mut s.rope_sin[b][r]);
            rope_table(cos, sin, pos0 + t, base, c.rope_freq_scale, w.rope_freqs.as_deref());
        }
    }
}

/// Layer `il`'s attention block: `x += post_norm(W_o · attention(norm(x)))`, the tokens' keys
/// and values stored in the cache.
fn attention_block(
    c: &ModelConfig,
    l: &LayerWeights,
    il: usize,
    kv: &mut KvCache,
    s: &mut Scratch,
    pos0: usize,
    n: usize,
) {
    let (d, a) = (c.d_model, &l.attn);
    let shape = AttnShape::of(c, a, il);
    norm_rows(&mut s.xn[..n * d], &s.x[..n * d], &l.attn_norm, c.rms_eps);
    let head_ty = a.vmask.as_ref().map_or(a.wv.ty(), |vm| vm.w_a.ty());
    s.inputs.prepare(&[a.wq.ty(), a.wk.ty(), a.wv.ty(), head_ty], &s.xn[..n * d], d);
    if n == 1 {
        attention_one(c, l, il, kv, s, pos0, shape);
    } else {
        attention_batch(c, a, il, kv, s, pos0, n, shape);
    }
    project(&a.wo, s.inputs.get(a.wo.ty()), &mut s.proj[..n * d], n);
    residual(&mut s.x[..n * d], &mut s.proj[..n * d], l.post_attn_norm.as_deref(), d, c.rms_eps);
}

/// One token's attention, up to its output quantized in `s.inputs` for `W_o`: the projections
/// (and a ToMoE layer's V mask) in one parallel region, then two independent serial chains (V;
/// Q and K) on two threads, then attention over the heads on the decoding team.
fn attention_one(
    c: &ModelConfig,
    l: &LayerWeights,
    il: usize,
    kv: &mut KvCache,
    s: &mut Scratch,
    pos0: usize,
    shape: AttnShape,
) {
    let a = &l.attn;
    let (qd, kvd, hd, pairs) = (c.q_dim(), c.kv_dim(), c.head_dim, c.n_rot / 2);
    let (qd_l, kvd_k) = (c.n_head * shape.kd, c.n_head_kv * shape.kd);
    let (q, k, v) = (&mut s.q[..qd_l], &mut s.k[..kvd_k], &mut s.v[..kvd]);
    let (xq, xk, xv) = (s.inputs.get(a.wq.ty()), s.inputs.get(a.wk.ty()), s.inputs.get(a.wv.ty()));
    match &a.vmask {
        Some(vm) => {
            // The V-mask head's input layer beside Q, K and V (one parallel region), and the
            // mask, which zeroes the V rows it drops, computed in the region as soon as the input
            // layer is done (the other threads go on with Q, K and V). V is read whole: most of
            // its groups of 16 keep enough rows to be streamed whole anyway, and a region of its
            // own after the mask cost more than the rows it skipped (BENCHMARKS.md).
            let h = &mut s.moe.vmask_in;
            h.resize(vm.hidden, 0.0);
            // The head's small tables, for its serial step in this region.
            for t in [&vm.w_dec[..], &vm.b, &vm.ln_w, &vm.ln_b] {
                prefetch_floats(t);
            }
            let (mask, vm_scratch) = (&mut s.vmask[..hd], &mut s.moe.vmask);
            matvec_fused_then(
                &mut [
                    MatJob { w: &vm.w_a, x: s.inputs.get(vm.w_a.ty()), y: &mut h[..] },
                    MatJob { w: &a.wq, x: xq, y: q },
                    MatJob { w: &a.wk, x: xk, y: k },
                    MatJob { w: &a.wv, x: xv, y: v },
                ],
                |w_a_h1| moe::v_mask(vm, w_a_h1, mask, vm_scratch),
            );
        }
        None => matvec_fused(&mut [
            MatJob { w: &a.wq, x: xq, y: q },
            MatJob { w: &a.wk, x: xk, y: k },
            MatJob { w: &a.wv, x: xv, y: v },
        ]),
    }
    // The V chain: V's bias and mask (a ToMoE layer's), V's store. The Q/K chain: their biases,
    // norms and rotations, K's store.
    let f16_keys = kv.types().0 == KvType::F16;
    let (mut keys, mut values) = kv.stores(il);
    let (q, k, v) = (&mut s.q[..qd_l], &mut s.k[..kvd_k], &mut s.v[..kvd]);
    let mask = &s.vmask[..hd];
    let rope = (&s.rope_cos[shape.rope][..pairs], &s.rope_sin[shape.rope][..pairs]);
    let rope_l = (&mut s.rope_cos_l[..], &mut s.rope_sin_l[..]);
    join2(
        || {
            let mask = a.vmask.as_ref().map(|_| mask);
            finish_v(a, v, mask, hd);
            values.store(pos0, v, mask);
        },
        || {
            finish_qk(c, a, q, k, rope, rope_l);
            keys.store(pos0, k);
            if f16_keys {
                // ggml converts the queries to f16 for its f16 product with the keys.
                vecmath::round_f16(q);
            }
        },
    );
    attention(c, kv, il, &s.q[..qd_l], &mut s.att_heads[..qd], &mut s.scores, 1, pos0, shape);
    output_mask(c, a, &mut s.att_heads[..qd], &s.vmask, 1);
    s.inputs.prepare(&[a.wo.ty()], &s.att_heads[..qd], qd);
    if let Mlp::Tomoe(m) = &l.mlp {
        // The MLP block's router, for its serial route after W_o's parallel region.
        prefetch_floats(&m.router);
    }
}

/// A batch's attention, up to its output quantized in `s.inputs` for `W_o`: matrix-matrix
/// projections, each token's biases, masks, norms and rotations in parallel, attention over
/// (head, queries) pieces.
#[allow(clippy::too_many_arguments)]
fn attention_batch(
    c: &ModelConfig,
    a: &Attention,
    il: usize,
    kv: &mut KvCache,
    s: &mut Scratch,
    pos0: usize,
    n: usize,
    shape: AttnShape,
) {
    let (qd, kvd, hd, pairs) = (c.q_dim(), c.kv_dim(), c.head_dim, c.n_rot / 2);
    let (qd_l, kvd_k) = (c.n_head * shape.kd, c.n_head_kv * shape.kd);
    if let Some(vm) = &a.vmask {
        // The V-mask head's input layer for every token, then each token's mask.
        let hid = vm.hidden;
        let h = &mut s.moe.vmask_in;
        h.resize(n * hid, 0.0);
        matmul(&vm.w_a, s.inputs.get(vm.w_a.ty()), &mut h[..n * hid]);
        for t in 0..n {
            moe::v_mask(vm, &h[t * hid..(t + 1) * hid], &mut s.vmask[t * hd..(t + 1) * hd], &mut s.moe.vmask);
        }
    }
    matmul(&a.wq, s.inputs.get(a.wq.ty()), &mut s.q[..n * qd_l]);
    matmul(&a.wk, s.inputs.get(a.wk.ty()), &mut s.k[..n * kvd_k]);
    matmul(&a.wv, s.inputs.get(a.wv.ty()), &mut s.v[..n * kvd]);
    let (q, k, v) = (&mut s.q[..n * qd_l], &mut s.k[..n * kvd_k], &mut s.v[..n * kvd]);
    let (masks, cos, sin) = (&s.vmask, &s.rope_cos[shape.rope], &s.rope_sin[shape.rope]);
    let f16_keys = kv.types().0 == KvType::F16;
    q.par_chunks_mut(qd_l).zip(k.par_chunks_mut(kvd_k)).zip(v.par_chunks_mut(kvd)).enumerate().for_each_init(
        || (vec![0f32; pairs], vec![0f32; pairs]),
        |(cos_l, sin_l), (t, ((qt, kt), vt))| {
            finish_v(a, vt, a.vmask.as_ref().map(|_| &masks[t * hd..(t + 1) * hd]), hd);
            let r = t * pairs..(t + 1) * pairs;
            finish_qk(c, a, qt, kt, (&cos[r.clone()], &sin[r]), (cos_l, sin_l));
            if f16_keys {
                vecmath::round_f16(qt);
            }
        },
    );
    kv.store(il, pos0, &s.k[..n * kvd_k], &s.v[..n * kvd], a.vmask.as_ref().map(|_| &s.vmask[..n * hd]));
    attention(c, kv, il, &s.q[..n * qd_l], &mut s.att_heads[..n * qd], &mut s.scores, n, pos0, shape);
    output_mask(c, a, &mut s.att_heads[..n * qd], &s.vmask, n);
    // Head-major to token-major, the input of the output projection.
    let heads = &s.att_heads;
    s.att[..n * qd].par_chunks_mut(qd).enumerate().for_each(|(t, row)| {
        for (h, out) in row.chunks_exact_mut(hd).enumerate() {
            out.copy_from_slice(&heads[(h * n + t) * hd..(h * n + t + 1) * hd]);
        }
    });
    s.inputs.prepare(&[a.wo.ty()], &s.att[..n * qd], qd);
}

/// One token's values: the bias, then each head times the token's V `mask` (ToMoE).
fn finish_v(a: &Attention, vt: &mut [f32], mask: Option<&[f32]>, hd: usize) {
    add_bias(vt, a.bv.as_deref());
    if let Some(mt) = mask {
        vt.chunks_exact_mut(hd).for_each(|h| h.iter_mut().zip(mt).for_each(|(v, m)| *v *= m));
    }
}

/// One token's queries and keys: the biases, then per head the Q/K norm, RoPE at the token's
/// `(cos, sin)` row and Gemma's query scale. A pruned head's stored pairs rotate at their
/// original pairs' frequencies, gathered into `rope_l`.
fn finish_qk(
    c: &ModelConfig,
    a: &Attention,
    qt: &mut [f32],
    kt: &mut [f32],
    (mut cos, mut sin): (&[f32], &[f32]),
    (cos_l, sin_l): (&mut [f32], &mut [f32]),
) {
    let kd = a.qk_width(c.head_dim);
    add_bias(qt, a.bq.as_deref());
    add_bias(kt, a.bk.as_deref());
    if let Some(p) = &a.pruned_qk {
        for (k, &i) in p.qk_pairs.iter().enumerate() {
            cos_l[k] = cos[i];
            sin_l[k] = sin[i];
        }
        (cos, sin) = (&cos_l[..p.qk_pairs.len()], &sin_l[..p.qk_pairs.len()]);
    }
    for h in qt.chunks_exact_mut(kd) {
        if let Some(nw) = &a.q_norm {
            rms_norm_inplace(h, nw, c.rms_eps);
        }
        rope(h, cos, sin, c.rope_style);
        if c.scale_q {
            h.iter_mut().for_each(|v| *v *= c.attn_scale);
        }
    }
    for h in kt.chunks_exact_mut(kd) {
        if let Some(nw) = &a.k_norm {
            rms_norm_inplace(h, nw, c.rms_eps);
        }
        rope(h, cos, sin, c.rope_style);
    }
}

/// A ToMoE layer whose file sets `output_mask`: each head's output times its query token's V
/// mask. `heads`: head-major outputs of `n` tokens; `masks`: token-major.
fn output_mask(c: &ModelConfig, a: &Attention, heads: &mut [f32], masks: &[f32], n: usize) {
    if a.vmask.is_none() || !c.tomoe.as_ref().is_some_and(|tc| tc.output_mask) {
        return;
    }
    let hd = c.head_dim;
    for (h_t, o) in heads.chunks_exact_mut(hd).enumerate() {
        let t = h_t % n;
        o.iter_mut().zip(&masks[t * hd..(t + 1) * hd]).for_each(|(v, m)| *v *= m);
    }
}

/// Layer `il`'s MLP block: `x += post_norm(mlp(norm(x)))`; a ToMoE layer's experts read as
/// `reads` says.
fn mlp_block(c: &ModelConfig, l: &LayerWeights, reads: Option<&ExpertReads>, il: usize, s: &mut Scratch, n: usize) {
    let d = c.d_model;
    norm_rows(&mut s.xn[..n * d], &s.x[..n * d], &l.ffn_norm, c.rms_eps);
    match &l.mlp {
        Mlp::Dense(m) if n == 1 => dense_one(c, m, s),
        Mlp::Dense(m) => dense_batch(c, m, s, n),
        Mlp::Stacked(x) => moe::mlp_llama_experts(x, &s.xn[..n * d], &mut s.proj[..n * d], &mut s.moe),
        Mlp::Tomoe(m) if n == 1 => tomoe_one(c, m, reads, il, s),
        Mlp::Tomoe(m) => tomoe_batch(c, m, reads, il, s, n),
    }
    if let Mlp::Tomoe(TomoeMlp { expert_bias: Some(b), .. }) = &l.mlp {
        for (y, &e) in s.proj[..n * d].chunks_exact_mut(d).zip(&s.moe.choice) {
            y.iter_mut().zip(&b[e * d..(e + 1) * d]).for_each(|(y, b)| *y += b);
        }
    }
    residual(&mut s.x[..n * d], &mut s.proj[..n * d], l.post_ffn_norm.as_deref(), d, c.rms_eps);
}

/// The gated activation of the architecture: `act(gate) · up` into `gate`.
fn glu(c: &ModelConfig) -> fn(&mut [f32], &[f32]) {
    match c.activation {
        Activation::Silu => vecmath::swiglu,
        Activation::GeluTanh => vecmath::geglu,
    }
}

/// One token's dense MLP: gate and up in one parallel region, the GLU, down.
fn dense_one(c: &ModelConfig, m: &DenseMlp, s: &mut Scratch) {
    let (d, ff) = (c.d_model, c.n_ff);
    s.inputs.prepare(&[m.gate.ty(), m.up.ty()], &s.xn[..d], d);
    matvec_fused(&mut [
        MatJob { w: &m.gate, x: s.inputs.get(m.gate.ty()), y: &mut s.gate[..ff] },
        MatJob { w: &m.up, x: s.inputs.get(m.up.ty()), y: &mut s.up[..ff] },
    ]);
    glu(c)(&mut s.gate[..ff], &s.up[..ff]);
    s.inputs.prepare(&[m.down.ty()], &s.gate[..ff], ff);
    matvec_fused(&mut [MatJob { w: &m.down, x: s.inputs.get(m.down.ty()), y: &mut s.proj[..d] }]);
}

/// A batch's dense MLP: matrix-matrix products, the GLU row-parallel.
fn dense_batch(c: &ModelConfig, m: &DenseMlp, s: &mut Scratch, n: usize) {
    let (d, ff) = (c.d_model, c.n_ff);
    s.inputs.prepare(&[m.gate.ty(), m.up.ty()], &s.xn[..n * d], d);
    matmul(&m.gate, s.inputs.get(m.gate.ty()), &mut s.gate[..n * ff]);
    matmul(&m.up, s.inputs.get(m.up.ty()), &mut s.up[..n * ff]);
    let glu = glu(c);
    // Element-wise: rows in parallel give the same values.
    s.gate[..n * ff].par_chunks_mut(ff).zip(s.up[..n * ff].par_chunks(ff)).for_each(|(g, u)| glu(g, u));
    s.inputs.prepare(&[m.down.ty()], &s.gate[..n * ff], ff);
    matmul(&m.down, s.inputs.get(m.down.ty()), &mut s.proj[..n * d]);
}

/// The expert of each of the `n` tokens into `s.moe.choice`, counted in `s.expert_counts`.
fn route(c: &ModelConfig, m: &TomoeMlp, il: usize, s: &mut Scratch, n: usize) {
    moe::route(m, &s.xn[..n * c.d_model], c.d_model, &mut s.moe.choice);
    for &e in &s.moe.choice {
        s.expert_counts[il][e] += 1;
    }
}

/// One token's ToMoE MLP: its expert's rows only (see `moe::mlp_one`).
fn tomoe_one(c: &ModelConfig, m: &TomoeMlp, reads: Option<&ExpertReads>, il: usize, s: &mut Scratch) {
    let d = c.d_model;
    route(c, m, il, s, 1);
    let act = match c.activation {
        Activation::Silu => GateActivation::Silu,
        Activation::GeluTanh => GateActivation::GeluTanh,
    };
    s.inputs.prepare(&[m.gate.ty(), m.up.ty()], &s.xn[..d], d);
    let (xg, xu) = (s.inputs.get(m.gate.ty()), s.inputs.get(m.up.ty()));
    moe::mlp_one(m, reads, act, s.moe.choice[0], xg, xu, &mut s.proj[..d], &mut s.moe);
}

/// A batch's ToMoE MLP: the tokens grouped by expert (see `moe::mlp_batch`).
fn tomoe_batch(c: &ModelConfig, m: &TomoeMlp, reads: Option<&ExpertReads>, il: usize, s: &mut Scratch, n: usize) {
    let d = c.d_model;
    route(c, m, il, s, n);
    let gelu = c.activation == Activation::GeluTanh;
    moe::mlp_batch(m, reads, gelu, &s.xn[..n * d], &mut s.proj[..n * d], &mut s.moe);
}

/// The logits `logits` asks for: the final norm, the output projection, the soft cap where the
/// architecture has one.
fn output_logits(c: &ModelConfig, w: &Weights, s: &mut Scratch, n: usize, logits: Logits) {
    let d = c.d_model;
    let (first, out): (usize, &mut [f32]) = match logits {
        Logits::None => return,
        Logits::Last => (n - 1, &mut s.logits[..]),
        Logits::All(out) => (0, out),
    };
    let m = n - first;
    for t in first..n {
        let r = (t - first) * d..(t - first + 1) * d;
        rms_norm(&mut s.xn[r], &s.x[t * d..(t + 1) * d], &w.output_norm, c.rms_eps);
    }
    s.inputs.prepare(&[w.output.ty()], &s.xn[..m * d], d);
    project(&w.output, s.inputs.get(w.output.ty()), &mut out[..m * c.n_vocab], m);
    if let Some(cap) = c.final_logit_softcap {
        out[..m * c.n_vocab].iter_mut().for_each(|v| *v = cap * (*v / cap).tanh());
    }
}

fn add_bias(x: &mut [f32], b: Option<&[f32]>) {
    if let Some(b) = b {
        x.iter_mut().zip(b).for_each(|(v, bi)| *v += bi);
    }
}

/// y = W·x for `n` input vectors: matrix-vector (parallel over rows) or matrix-matrix.
fn project(w: &MatRef, x: &QuantizedInput, y: &mut [f32], n: usize) {
    if n == 1 {
        matvec_fused(&mut [MatJob { w, x, y }]);
    } else {
        matmul(w, x, y);
    }
}

/// x += norm(proj) (Gemma's post-norms) or x += proj, token-parallel for a batch.
fn residual(x: &mut [f32], proj: &mut [f32], post_norm: Option<&[f32]>, d: usize, eps: f32) {
    let row = |x: &mut [f32], p: &mut [f32]| {
        if let Some(nw) = post_norm {
            rms_norm_inplace(p, nw, eps);
        }
        x.iter_mut().zip(p.iter()).for_each(|(a, b)| *a += b);
    };
    if x.len() > d {
        x.par_chunks_mut(d).zip(proj.par_chunks_mut(d)).for_each(|(x, p)| row(x, p));
    } else {
        row(x, proj);
    }
}

/// out = rms_norm(x) · w, row by row (rows of `w.len()`), token-parallel for a batch.
fn norm_rows(out: &mut [f32], x: &[f32], w: &[f32], eps: f32) {
    let d = w.len();
    if out.len() > d {
        out.par_chunks_mut(d).zip(x.par_chunks(d)).for_each(|(o, x)| rms_norm(o, x, w, eps));
    } else {
        rms_norm(out, x, w, eps);
    }
}

/// The per-layer shape of attention: the query/key head width (pruned in ToMoE layers), the
/// RoPE table (0: the global base, 1: the sliding-window base), the scale of the scores, the
/// sliding window.
#[derive(Copy, Clone)]
struct AttnShape {
    kd: usize,
    rope: usize,
    kq_scale: f32,
    window: Option<usize>,
}

impl AttnShape {
    fn of(c: &ModelConfig, a: &Attention, il: usize) -> AttnShape {
        let kd = a.qk_width(c.head_dim);
        let kq_scale = match (&c.tomoe, c.scale_q) {
            (_, true) => 1.0,
            (Some(tc), _) if tc.scale_pruned => 1.0 / (kd as f32).sqrt(),
            _ => c.attn_scale,
        };
        let rope = usize::from(c.swa_layers[il] && swa_rope_table(c));
        let window = if c.swa_layers[il] { c.sliding_window } else { None };
        AttnShape { kd, rope, kq_scale, window }
    }
}

/// Causal (optionally sliding-window) attention of `n` queries at positions `pos0..` over the
/// cache: one token in parallel over heads (on the decoding team, with `scores`), a batch in
/// parallel over (head, 64 queries). `q` is token-major (already RoPE'd); `out` is head-major:
/// [head][token][head_dim].
///
/// Rounds as llama.cpp's graph does (f32 cache, no flash attention; see `tomoe_quant::vecmath`):
/// scores by ggml's f32 dot, scaled, then softmax over a row that starts at position 0 in 8-lane
/// groups (positions outside the causal window are -inf, i.e. exactly 0 after the exp); each
/// output is a dot product of the probabilities with one dimension's cached values over the
/// positions rounded up to 32 (zero weights past the query), in the order of ggml's vector dot
/// for one query and of its matrix kernel for a batch.
///
/// An f16 cache rounds as llama.cpp's graph with that cache (no flash attention): the queries
/// (rounded to f16 by the caller) and the probabilities converted to f16, each score and output
/// in the order of ggml's f16 vector dot for one query and of tinyBLAS's f16 kernel for a batch
/// (`vecmath::dot16_transposed_f16` and the `_f16` value sums).
#[allow(clippy::too_many_arguments)]
fn attention(
    c: &ModelConfig,
    kv: &KvCache,
    il: usize,
    q: &[f32],
    out: &mut [f32],
    scores: &mut [f32],
    n: usize,
    pos0: usize,
    shape: AttnShape,
) {
    let AttnShape { kd, kq_scale, window, .. } = shape;
    let hd = c.head_dim;
    let (qd, kvd_k) = (c.n_head * kd, c.n_head_kv * kd);
    let group = c.n_head / c.n_head_kv;
    let row_len = kv.n_ctx().next_multiple_of(32);
    let block_stride = kv.value_block_stride();
    let (keys, values) = kv.layer(il);
    let compact = kv.compact_values(il);
    let f16_values = matches!(values, Cached::F16(_));
    // llama.cpp sums one query's values in its vector-dot order, a batch's in its matrix order.
    let gemm_order = n > 1;
    let lo_of = |p: usize| match window {
        Some(w) => (p + 1).saturating_sub(w),
        None => 0,
    };
    // Queries `ts` of head `h` into `out_h` (their rows), with `sc` for ATTN_GROUP score rows.
    // The cached keys come in blocks of 16 positions, one per SIMD lane (see
    // `vecmath::dot16_transposed`): the head's keys of block `b` are `16 · kd` values at
    // `(b · kvd_k + kh) · 16`. Queries go in groups whose probability rows have the same length
    // (the same block of 32 positions), so a batch's value sums read the cached values once per
    // group. `compact_values`: whether to sum a compact layer's values here (decoding sums them
    // after, for the heads of a KV group together).
    let attend = |h: usize, ts: std::ops::Range<usize>, out_h: &mut [f32], sc: &mut [f32], compact_values: bool| {
        let (kh, vh) = ((h / group) * kd, (h / group) * hd);
        let query = |t: usize| &q[t * qd + h * kd..t * qd + (h + 1) * kd];
        let out_row = |t: usize| (t - ts.start) * hd..(t - ts.start + 1) * hd;
        let mut t0 = ts.start;
        while t0 < ts.end {
            let len = (pos0 + t0 + 1).next_multiple_of(32);
            let t1 = (t0 + ATTN_GROUP).min(ts.end).min(len - pos0);
            for t in t0..t1 {
                sc[(t - t0) * row_len..][..len].fill(f32::NEG_INFINITY);
            }
            let mut s16 = [0f32; 16];
            for block in lo_of(pos0 + t0) / KEY_BLOCK..=(pos0 + t1 - 1) / KEY_BLOCK {
                let at = (block * kvd_k + kh) * KEY_BLOCK;
                for t in t0..t1 {
                    let (p, j0) = (pos0 + t, KEY_BLOCK * block);
                    let keep = lo_of(p).max(j0)..(p + 1).min(j0 + KEY_BLOCK);
                    if keep.is_empty() {
                        continue;
                    }
                    match keys {
                        Cached::F32(k) => vecmath::dot16_transposed(&k[at..][..KEY_BLOCK * kd], query(t), &mut s16),
                        Cached::F16(k) => {
                            let kb = &k[at..][..KEY_BLOCK * kd];
                            vecmath::dot16_transposed_f16(kb, query(t), gemm_order, &mut s16)
                        }
                    }
                    let row = &mut sc[(t - t0) * row_len..];
                    for j in keep {
                        row[j] = s16[j - j0] * kq_scale;
                    }
                }
            }
            for t in t0..t1 {
                let p = pos0 + t;
                let lo = lo_of(p);
                let row = &mut sc[(t - t0) * row_len..][..len];
                let max = row[lo..=p].iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let inv = (1.0 / vecmath::exp_sub_sum(row, max)) as f32;
                row.iter_mut().for_each(|v| *v *= inv);
                if f16_values {
                    // ggml converts the probabilities to f16 for its f16 product with the values.
                    vecmath::round_f16(row);
                }
                if compact.is_none() && !gemm_order {
                    let o = &mut out_h[out_row(t)];
                    match values {
                        Cached::F32(v) => vecmath::dot_chunks32_rows(&v[vh * 32..], 32, block_stride, row, false, o),
                        Cached::F16(v) => vecmath::dot_chunks32_rows_f16(&v[vh * 32..], 32, block_stride, row, o),
                    }
                }
            }
            if let Some(cv) = compact.as_ref().filter(|_| compact_values) {
                // Each position adds its kept values only (the others were masked to zero), read
                // once for the group's queries, each query over its own positions.
                let mut queries = [(0usize, &[][..]); ATTN_GROUP];
                for t in t0..t1 {
                    let (p, lo) = (pos0 + t, lo_of(pos0 + t));
                    queries[t - t0] = (lo, &sc[(t - t0) * row_len..][lo..=p]);
                }
                let o = &mut out_h[out_row(t0).start..out_row(t1 - 1).end];
                o.fill(0.0);
                cv.weighted_sums(&queries[..t1 - t0], h / group, o);
            } else if compact.is_none() && gemm_order {
                let (nq, o) = (t1 - t0, &mut out_h[out_row(t0).start..out_row(t1 - 1).end]);
                let bs = block_stride;
                match values {
                    Cached::F32(v) => {
                        vecmath::dot_chunks32_rows_gemm(&v[vh * 32..], 32, bs, hd, sc, row_len, nq, len, o, hd)
                    }
                    Cached::F16(v) => {
                        vecmath::dot_chunks32_rows_gemm_f16(&v[vh * 32..], 32, bs, hd, sc, row_len, nq, len, o, hd)
                    }
                }
            }
            t0 = t1;
        }
    };
    if n == 1 {
        // One token: a run of heads per thread of the decoding team. A compact layer's heads of
        // one KV group then sum its kept values together, reading each position's once for up to
        // ATTN_GROUP heads (the same bits as one head at a time).
        for_each_chunk_range(out, hd, scores, row_len, c.n_head, |heads, out_p, sc_p| {
            for (i, h) in heads.clone().enumerate() {
                let (o, sc) = (&mut out_p[i * hd..(i + 1) * hd], &mut sc_p[i * row_len..(i + 1) * row_len]);
                attend(h, 0..1, o, sc, false);
            }
            let Some(cv) = &compact else { return };
            let (p, lo) = (pos0, lo_of(pos0));
            let mut queries = [(0usize, &[][..]); ATTN_GROUP];
            let mut h0 = heads.start;
            while h0 < heads.end {
                let g = h0 / group;
                let h1 = (h0 + ATTN_GROUP).min((g + 1) * group).min(heads.end);
                for h in h0..h1 {
                    queries[h - h0] = (lo, &sc_p[(h - heads.start) * row_len..][lo..=p]);
                }
                let o = &mut out_p[(h0 - heads.start) * hd..(h1 - heads.start) * hd];
                o.fill(0.0);
                cv.weighted_sums(&queries[..h1 - h0], g, o);
                h0 = h1;
            }
        });
        return;
    }
    // A batch: (head, 64 queries) pieces in parallel, which balance the threads whatever the
    // number of heads.
    const PIECE: usize = 64;
    out[..c.n_head * n * hd].par_chunks_mut(n * hd).enumerate().for_each(|(h, out_h)| {
        out_h.par_chunks_mut(PIECE * hd).enumerate().for_each(|(i, o)| {
            let ts = i * PIECE..((i + 1) * PIECE).min(n);
            let mut sc = SCORES.take();
            sc.resize(ATTN_GROUP * row_len, 0.0);
            attend(h, ts, o, &mut sc, true);
            SCORES.set(sc);
        })
    });
}

thread_local! {
    /// Each thread's score rows of a batch, reused from call to call.
    static SCORES: std::cell::Cell<Vec<f32>> = const { std::cell::Cell::new(Vec::new()) };
}
