//! Training the hypernetwork by distillation from the frozen dense model:
//! loss = 2·KD + λ·R_param + α·R_union + β·L_balance, AdamW, checkpoints, resume.
//!
//! Reproducibility: every random draw of step `s` (data window, Gumbel noise) comes from generators
//! seeded by (seed, s) alone, and the optimizer state is checkpointed, so a resumed run is
//! bit-identical to an uninterrupted one on the same machine and thread count.

use super::baselines::{mlp_budget, neuron_importance};
use super::data::Calibration;
use super::dense::DenseModel;
use super::forward::{forward, MaskSource, NoMasks};
use super::hyper::{
    expand_half, gumbel_noise, logistic_noise, st_gumbel_sigmoid, st_gumbel_softmax, HyperNet,
};
use super::{io_err, ConvertError, Result};
use candle_core::{DType, Tensor, Var, D};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TrainParams {
    /// Target active fraction of block parameters, in (0, 1].
    pub p: f64,
    pub experts: usize,
    pub steps: u64,
    pub seq_len: usize,
    pub lr: f64,
    pub seed: u64,
    pub lambda: f64,
    pub alpha: f64,
    pub beta: f64,
    pub kd_weight: f64,
    /// Temperature of the Gumbel-sigmoid masks.
    pub tau: f64,
    /// Temperature of the Gumbel-softmax router.
    pub router_temp: f64,
    pub weight_decay: f64,
    /// Convert only the MLP (attention untouched), as `--llama-cpp-compat` needs.
    #[serde(default)]
    pub mlp_only: bool,
    /// Where the masks start.
    #[serde(default = "MaskInit::before_it_was_a_setting")]
    pub init: MaskInit,
}

/// The masks' starting point.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MaskInit {
    /// Every mask (noisily) on and random routers, as the reference code starts: the budget is then
    /// cut from wherever the parameter regulariser pushes hardest (attention dims weigh 4× an MLP
    /// neuron on SmolLM2), which short runs cannot undo.
    AllOn,
    /// Static pruning's neurons in every expert, uniform routing, attention on
    /// (`HyperNet::init_from_importance`).
    Importance,
}

impl MaskInit {
    /// Checkpoints written before the setting existed started all on.
    fn before_it_was_a_setting() -> MaskInit {
        MaskInit::AllOn
    }

    pub fn parse(s: &str) -> Result<MaskInit> {
        match s {
            "all-on" => Ok(MaskInit::AllOn),
            "importance" => Ok(MaskInit::Importance),
            _ => Err(ConvertError::InvalidArg(format!(
                "--init {s}: expected importance or all-on"
            ))),
        }
    }
}

impl Default for TrainParams {
    fn default() -> Self {
        TrainParams {
            p: 0.5,
            experts: 8,
            steps: 400,
            seq_len: 512,
            lr: 1e-3,
            seed: 0,
            lambda: 16.0,
            alpha: 3.0,
            beta: 1.0,
            kd_weight: 2.0,
            tau: 0.4,
            router_temp: 0.4,
            weight_decay: 0.05,
            mlp_only: false,
            init: MaskInit::Importance,
        }
    }
}

impl TrainParams {
    pub fn validate(&self) -> Result<()> {
        if !(self.p > 0.0 && self.p <= 1.0) {
            return Err(ConvertError::InvalidArg(format!(
                "--p {} must be in (0, 1]",
                self.p
            )));
        }
        if self.experts == 0 || self.experts > 256 {
            return Err(ConvertError::InvalidArg(format!(
                "--experts {} must be in 1..=256",
                self.experts
            )));
        }
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            return Err(ConvertError::InvalidArg(format!(
                "--lr {} must be positive",
                self.lr
            )));
        }
        if self.seq_len < 2 {
            return Err(ConvertError::InvalidArg(format!(
                "--seq-len {} must be at least 2",
                self.seq_len
            )));
        }
        Ok(())
    }
}

/// The loss and its terms of one step (values after the step's forward pass).
#[derive(Clone, Copy, Debug, Default)]
pub struct StepStats {
    pub loss: f32,
    pub kd: f32,
    pub r_param: f32,
    pub r_union: f32,
    pub balance: f32,
    /// Active block-parameter ratio of the sampled masks (largest expert / largest V mask per layer).
    pub ratio: f32,
}

/// Seconds spent per phase of a step, summed over the steps since the last report; kept only when
/// `TOMOE_TRAIN_PROFILE` is set (the throughput section of docs/CONVERSION.md is measured with it).
#[derive(Clone, Copy, Debug, Default)]
struct PhaseTimes {
    teacher: f64,
    student: f64,
    loss: f64,
    backward: f64,
    update: f64,
}

static PHASES: std::sync::Mutex<Option<PhaseTimes>> = std::sync::Mutex::new(None);

fn profiling() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("TOMOE_TRAIN_PROFILE").is_some())
}

/// Adds the time since `*t` to one phase and restarts `*t`.
fn phase(t: &mut std::time::Instant, f: fn(&mut PhaseTimes) -> &mut f64) {
    if profiling() {
        let now = std::time::Instant::now();
        let mut g = PHASES.lock().unwrap_or_else(|e| e.into_inner());
        *f(g.get_or_insert_with(PhaseTimes::default)) += (now - *t).as_secs_f64();
        *t = now;
    }
}

/// Candle runs elementwise ops of 64k+ elements on its own pool, whose threads spin at a barrier
/// for each op; beside rayon's matmul threads on a small (or shared) CPU that spinning took most
/// of a training step's CPU time. One candle thread runs them inline; the big elementwise passes
/// of a step are this module's rayon ops. The variable is read when that pool first starts (the
/// converter's first large elementwise op), so this has to run before any; an explicit setting
/// is kept.
pub fn prefer_inline_elementwise() {
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        // Set before training starts its threads; rayon's and candle's idle threads never touch
        // the environment.
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
}

/// The student's masks for one step: sampled once per step for static parts, per token for the rest.
struct StudentMasks<'a> {
    hn: &'a HyperNet,
    emb: Vec<Tensor>,
    expert_masks: Vec<Tensor>,
    qk_masks: Vec<Tensor>,
    rng: ChaCha8Rng,
    params: &'a TrainParams,
    noisy: bool,
    v_masks: Vec<Tensor>,
    balance_terms: Vec<Tensor>,
}

impl MaskSource for StudentMasks<'_> {
    fn attn_masks(&mut self, l: usize, h1: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        if self.params.mlp_only {
            let (t, hd) = (h1.dim(0)?, self.hn.head_dim);
            let ones = Tensor::ones((t, hd), candle_core::DType::F32, h1.device())?;
            self.v_masks.push(ones);
            return Ok((None, None));
        }
        let z = self.hn.v_logits(&self.emb, l, h1)?;
        let noise = if self.noisy {
            Some(logistic_noise(&mut self.rng, z.dims(), z.device())?)
        } else {
            None
        };
        let v = st_gumbel_sigmoid(&z, noise.as_ref(), self.params.tau)?;
        self.v_masks.push(v.clone());
        Ok((Some(self.qk_masks[l].clone()), Some(v)))
    }

    fn mlp_mask(&mut self, l: usize, h2: &Tensor) -> Result<Option<Tensor>> {
        let logits = self.hn.router_logits(l, h2)?;
        let noise = if self.noisy {
            Some(gumbel_noise(&mut self.rng, logits.dims(), logits.device())?)
        } else {
            None
        };
        let (route, _, choice) =
            st_gumbel_softmax(&logits, noise.as_ref(), self.params.router_temp)?;
        // Balance: f_e (share of tokens routed to e, no gradient) · P_e (mean noiseless router prob).
        let e = self.hn.n_experts;
        let mut counts = vec![0f32; e];
        for &c in &choice {
            counts[c as usize] += 1.0;
        }
        let t = choice.len() as f32;
        let f = Tensor::from_vec(
            counts.into_iter().map(|c| c / t).collect::<Vec<_>>(),
            e,
            h2.device(),
        )?;
        let p_mean = super::forward::softmax_last(&logits)?.mean(0)?;
        self.balance_terms.push((f * p_mean)?.sum_all()?);
        Ok(Some(route.matmul(&self.expert_masks[l])?))
    }
}

/// Soft cross-entropy of the student against the teacher distribution, mean over positions.
fn kd_loss(student: &Tensor, teacher: &Tensor) -> Result<Tensor> {
    if student.device().is_cpu() && student.dtype() == DType::F32 && teacher.dtype() == DType::F32 {
        let (s, t) = (student.contiguous()?, teacher.contiguous()?);
        return Ok(s.apply_op2(&t, KdLoss)?);
    }
    kd_loss_composed(student, teacher)
}

/// [`kd_loss`] from candle's ops (other devices, and the reference of the fused op's test).
fn kd_loss_composed(student: &Tensor, teacher: &Tensor) -> Result<Tensor> {
    let pt = candle_nn::ops::softmax_last_dim(teacher)?;
    let ls = candle_nn::ops::log_softmax(student, D::Minus1)?;
    Ok((pt * ls)?.sum(D::Minus1)?.mean_all()?.neg()?)
}

/// The F32 slice of a contiguous CPU tensor's storage.
fn f32_slice<'a>(
    s: &'a candle_core::CpuStorage,
    l: &candle_core::Layout,
) -> candle_core::Result<&'a [f32]> {
    match (s, l.contiguous_offsets()) {
        (candle_core::CpuStorage::F32(v), Some((a, b))) => Ok(&v[a..b]),
        _ => candle_core::bail!("kd-loss: expected contiguous F32 CPU tensors"),
    }
}

/// Max and log-sum-exp of a row (f64 sum: a row is the whole vocabulary).
fn row_max_lse(r: &[f32]) -> (f32, f32) {
    let mx = r.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    let sum: f64 = r.iter().map(|&v| (v - mx).exp() as f64).sum();
    (mx, mx + sum.ln() as f32)
}

/// The fused KD loss over [T, V] student and teacher logits: `mean_t Σ_v p_t,v (lse_s,t - s_t,v)`,
/// one parallel pass over rows; backward gives the student's gradient `(softmax(s) - p_t) / T` in
/// one more (the teacher gets none). Candle's composed log-softmax and its backward make about a
/// dozen single-threaded full-vocabulary passes and as many [T, V] temporaries.
struct KdLoss;

impl candle_core::CustomOp2 for KdLoss {
    fn name(&self) -> &'static str {
        "kd-loss"
    }

    fn cpu_fwd(
        &self,
        ss: &candle_core::CpuStorage,
        sl: &candle_core::Layout,
        ts: &candle_core::CpuStorage,
        tl: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        use rayon::prelude::*;
        let (s, t) = (f32_slice(ss, sl)?, f32_slice(ts, tl)?);
        let (rows, v) = sl.shape().dims2()?;
        if tl.shape().dims2()? != (rows, v) {
            candle_core::bail!("kd-loss: student {:?} vs teacher {:?}", sl.dims(), tl.dims());
        }
        // Per-row values collected in order and summed serially: rayon's own reduction order
        // follows work stealing, which would make training differ between identical runs.
        let per_row: Vec<f64> = s
            .par_chunks(v)
            .zip(t.par_chunks(v))
            .map(|(s, t)| {
                let (_, lse_s) = row_max_lse(s);
                let (_, lse_t) = row_max_lse(t);
                // Σ p_t (lse_s - s), with Σ p_t = 1.
                let cross: f64 = s
                    .iter()
                    .zip(t)
                    .map(|(&s, &t)| ((t - lse_t).exp() * s) as f64)
                    .sum();
                lse_s as f64 - cross
            })
            .collect();
        let mean = (per_row.iter().sum::<f64>() / rows.max(1) as f64) as f32;
        Ok((candle_core::CpuStorage::F32(vec![mean]), candle_core::Shape::from(())))
    }

    fn bwd(
        &self,
        s: &Tensor,
        t: &Tensor,
        _: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let g = grad.to_dtype(DType::F32)?.to_scalar::<f32>()?;
        Ok((Some(s.apply_op2_no_bwd(t, &KdGrad { g })?), None))
    }
}

/// `g · (softmax(s) - softmax(t)) / T` per row.
struct KdGrad {
    g: f32,
}

impl candle_core::CustomOp2 for KdGrad {
    fn name(&self) -> &'static str {
        "kd-grad"
    }

    fn cpu_fwd(
        &self,
        ss: &candle_core::CpuStorage,
        sl: &candle_core::Layout,
        ts: &candle_core::CpuStorage,
        tl: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        use rayon::prelude::*;
        let (s, t) = (f32_slice(ss, sl)?, f32_slice(ts, tl)?);
        let (rows, v) = sl.shape().dims2()?;
        let k = self.g / rows.max(1) as f32;
        let mut out = vec![0f32; s.len()];
        out.par_chunks_mut(v)
            .zip(s.par_chunks(v).zip(t.par_chunks(v)))
            .for_each(|(o, (s, t))| {
                let (_, lse_s) = row_max_lse(s);
                let (_, lse_t) = row_max_lse(t);
                for ((o, &s), &t) in o.iter_mut().zip(s).zip(t) {
                    *o = k * ((s - lse_s).exp() - (t - lse_t).exp());
                }
            });
        Ok((candle_core::CpuStorage::F32(out), sl.shape().clone()))
    }
}

/// The hypernetwork's masks for a forward pass of the frozen model: the sampled (training) or
/// noiseless version, plus everything the regularisers need.
pub struct StepOutcome {
    pub loss: Tensor,
    pub stats: StepStats,
}

/// One forward pass of teacher and student and the loss (no parameter update).
pub fn compute_loss(
    model: &DenseModel,
    hn: &HyperNet,
    tokens: &[u32],
    tp: &TrainParams,
    step: u64,
    noisy: bool,
) -> Result<StepOutcome> {
    let c = &model.config;
    let dev = model.embed.device();
    let mut clock = std::time::Instant::now();
    let teacher = forward(model, tokens, &mut NoMasks)?.detach();
    phase(&mut clock, |p| &mut p.teacher);
    let mut rng = ChaCha8Rng::seed_from_u64(
        tp.seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ step.rotate_left(32) ^ 0x5eed,
    );
    let emb = hn.embeddings()?;
    let mut expert_masks = Vec::with_capacity(c.n_layers);
    let mut qk_masks = Vec::with_capacity(c.n_layers);
    for l in 0..c.n_layers {
        let z = hn.mlp_logits(&emb, l)?;
        let n = if noisy {
            Some(logistic_noise(&mut rng, z.dims(), dev)?)
        } else {
            None
        };
        expert_masks.push(st_gumbel_sigmoid(&z, n.as_ref(), tp.tau)?);
        // Q/K norms need whole heads (Gemma): those keep every Q/K dim, as `decode` does.
        if tp.mlp_only || c.arch.has_qk_and_post_norms() {
            qk_masks.push(Tensor::ones(c.head_dim, candle_core::DType::F32, dev)?);
            continue;
        }
        let zq = hn.qk_half_logits(&emb, l)?;
        let n = if noisy {
            Some(logistic_noise(&mut rng, zq.dims(), dev)?)
        } else {
            None
        };
        qk_masks.push(expand_half(&st_gumbel_sigmoid(&zq, n.as_ref(), tp.tau)?)?);
    }
    let mut sm = StudentMasks {
        hn,
        emb,
        expert_masks,
        qk_masks,
        rng,
        params: tp,
        noisy,
        v_masks: Vec::new(),
        balance_terms: Vec::new(),
    };
    let student = forward(model, tokens, &mut sm)?;
    phase(&mut clock, |p| &mut p.student);
    let kd = kd_loss(&student, &teacher)?;

    // R_param: active block parameters (largest expert, largest per-token V mask) over dense.
    let dh = (c.d * (c.n_heads + c.n_kv_heads)) as f64;
    let mut active: Option<Tensor> = None;
    let mut union_terms = Vec::with_capacity(c.n_layers);
    for l in 0..c.n_layers {
        let qk = (sm.qk_masks[l].sum_all()? * dh)?;
        let v = (sm.v_masks[l].sum(1)?.max(0)? * dh)?;
        let mlp = (sm.expert_masks[l].sum(1)?.max(0)? * (3 * c.d) as f64)?;
        let layer = ((qk + v)? + mlp)?;
        active = Some(match active {
            Some(a) => (a + layer)?,
            None => layer,
        });
        // U = 1 - Π_e (1 - M_e): a neuron is in the union if any expert keeps it.
        let masks = &sm.expert_masks[l];
        let mut none = masks.get(0)?.affine(-1.0, 1.0)?;
        for e in 1..hn.n_experts {
            none = (none * masks.get(e)?.affine(-1.0, 1.0)?)?;
        }
        let u_mean = none.affine(-1.0, 1.0)?.mean_all()?;
        union_terms.push(((u_mean + 0.001)?.recip()? * 1.001)?.log()?);
    }
    let r = (active.expect("at least one layer") / c.dense_block_params())?;
    let r_val = r.to_scalar::<f32>()? as f64;
    const C: f64 = 0.001;
    let r_param = if r_val >= tp.p {
        ((r.clone() + C)? / (tp.p + C))?.log()?
    } else {
        ((r.clone() + C)?.recip()? * (tp.p + C))?.log()?
    };
    let r_union = (Tensor::stack(&union_terms, 0)?.mean_all())?;
    let balance = Tensor::stack(&sm.balance_terms, 0)?.mean_all()?;
    let loss = ((((kd.clone() * tp.kd_weight)? + (r_param.clone() * tp.lambda)?)?
        + (r_union.clone() * tp.alpha)?)?
        + (balance.clone() * tp.beta)?)?;
    let stats = StepStats {
        loss: loss.to_scalar()?,
        kd: kd.to_scalar()?,
        r_param: r_param.to_scalar()?,
        r_union: r_union.to_scalar()?,
        balance: balance.to_scalar()?,
        ratio: r_val as f32,
    };
    phase(&mut clock, |p| &mut p.loss);
    Ok(StepOutcome { loss, stats })
}

/// AdamW (decoupled weight decay, bias-corrected moments) over the hypernetwork's parameters.
pub struct AdamW {
    m: Vec<Tensor>,
    v: Vec<Tensor>,
    t: u64,
    lr: f64,
    wd: f64,
}

const BETA1: f64 = 0.9;
const BETA2: f64 = 0.999;
const ADAM_EPS: f64 = 1e-8;

impl AdamW {
    pub fn new(vars: &[(String, Var)], lr: f64, wd: f64) -> Result<AdamW> {
        let z = |v: &Var| v.as_tensor().zeros_like();
        Ok(AdamW {
            m: vars
                .iter()
                .map(|(_, v)| z(v))
                .collect::<candle_core::Result<_>>()?,
            v: vars
                .iter()
                .map(|(_, v)| z(v))
                .collect::<candle_core::Result<_>>()?,
            t: 0,
            lr,
            wd,
        })
    }

    pub fn step(&mut self, vars: &[(String, Var)], loss: &Tensor) -> Result<()> {
        let mut clock = std::time::Instant::now();
        let grads = loss.backward()?;
        phase(&mut clock, |p| &mut p.backward);
        self.t += 1;
        let bc1 = 1.0 - BETA1.powi(self.t as i32);
        let bc2 = 1.0 - BETA2.powi(self.t as i32);
        for (i, (_, var)) in vars.iter().enumerate() {
            let Some(g) = grads.get(var.as_tensor()) else {
                continue;
            };
            self.m[i] = ((&self.m[i] * BETA1)? + (g * (1.0 - BETA1))?)?;
            self.v[i] = ((&self.v[i] * BETA2)? + (g.sqr()? * (1.0 - BETA2))?)?;
            let update = ((&self.m[i] / bc1)? / ((&self.v[i] / bc2)?.sqrt()? + ADAM_EPS)?)?;
            let theta = var.as_tensor();
            let new = ((theta * (1.0 - self.lr * self.wd))? - (update * self.lr)?)?;
            var.set(&new)?;
        }
        phase(&mut clock, |p| &mut p.update);
        Ok(())
    }
}

/// A checkpoint: parameters, optimizer moments, and the step and settings they belong to.
#[derive(serde::Serialize, serde::Deserialize)]
struct CheckpointMeta {
    step: u64,
    adam_t: u64,
    params: TrainParams,
    model_fingerprint: String,
}

fn fingerprint(model: &DenseModel) -> String {
    let c = &model.config;
    format!(
        "{:?} L{} d{} m{} H{} Hkv{} hd{} V{}",
        c.arch, c.n_layers, c.d, c.m, c.n_heads, c.n_kv_heads, c.head_dim, c.vocab
    )
}

fn meta_path(path: &Path) -> PathBuf {
    path.with_extension("json")
}

/// Writes `<path>` (safetensors: p.*, m.*, v.*) and `<path>.json` atomically (temp file, rename).
pub fn save_checkpoint(
    path: &Path,
    model: &DenseModel,
    hn: &HyperNet,
    opt: &AdamW,
    tp: &TrainParams,
    step: u64,
) -> Result<()> {
    let mut map: HashMap<String, Tensor> = HashMap::new();
    for (i, (name, t)) in hn.snapshot().into_iter().enumerate() {
        map.insert(format!("m.{name}"), opt.m[i].clone());
        map.insert(format!("v.{name}"), opt.v[i].clone());
        map.insert(format!("p.{name}"), t);
    }
    let tmp = path.with_extension("safetensors.tmp");
    candle_core::safetensors::save(&map, &tmp).map_err(|e| ConvertError::Checkpoint {
        path: tmp.clone(),
        msg: e.to_string(),
    })?;
    std::fs::rename(&tmp, path).map_err(io_err(path))?;
    let meta = CheckpointMeta {
        step,
        adam_t: opt.t,
        params: tp.clone(),
        model_fingerprint: fingerprint(model),
    };
    let mp = meta_path(path);
    let tmp = mp.with_extension("json.tmp");
    std::fs::write(
        &tmp,
        serde_json::to_string_pretty(&meta).map_err(|e| ConvertError::Checkpoint {
            path: mp.clone(),
            msg: e.to_string(),
        })?,
    )
    .map_err(io_err(&tmp))?;
    std::fs::rename(&tmp, &mp).map_err(io_err(&mp))?;
    Ok(())
}

/// Loads a checkpoint into `hn`/`opt`; returns the number of steps already done. The settings and the
/// model must match the ones of the run being resumed (except `steps`, which may be extended).
pub fn load_checkpoint(
    path: &Path,
    model: &DenseModel,
    hn: &HyperNet,
    opt: &mut AdamW,
    tp: &TrainParams,
) -> Result<u64> {
    let ck = |msg: String| ConvertError::Checkpoint {
        path: path.into(),
        msg,
    };
    let mp = meta_path(path);
    let meta: CheckpointMeta =
        serde_json::from_str(&std::fs::read_to_string(&mp).map_err(io_err(&mp))?)
            .map_err(|e| ck(e.to_string()))?;
    if meta.model_fingerprint != fingerprint(model) {
        return Err(ck(format!(
            "made for model `{}`, not `{}`",
            meta.model_fingerprint,
            fingerprint(model)
        )));
    }
    let same = TrainParams {
        steps: tp.steps,
        ..meta.params.clone()
    };
    if &same != tp {
        return Err(ck(format!(
            "settings differ from this run: checkpoint {:?}",
            meta.params
        )));
    }
    let map = candle_core::safetensors::load(path, model.embed.device())
        .map_err(|e| ck(e.to_string()))?;
    hn.restore(&|n| map.get(&format!("p.{n}")).cloned())
        .map_err(&ck)?;
    for (i, (name, var)) in hn.vars().iter().enumerate() {
        let get = |k: String| {
            map.get(&k)
                .filter(|t| t.dims() == var.dims())
                .cloned()
                .ok_or_else(|| ck(format!("missing or mis-shaped `{k}`")))
        };
        opt.m[i] = get(format!("m.{name}"))?;
        opt.v[i] = get(format!("v.{name}"))?;
    }
    opt.t = meta.adam_t;
    Ok(meta.step)
}

/// Where and how often to checkpoint, and whether to resume.
#[derive(Clone, Debug, Default)]
pub struct CheckpointPlan {
    pub path: Option<PathBuf>,
    pub every: u64,
    pub resume: bool,
}

/// Trains the hypernetwork for `tp.steps` steps (continuing from a checkpoint if asked).
/// `on_step` receives each step's statistics (the CLI draws its progress bar from them).
/// Training runs on the device of `model`'s tensors (CPU or CUDA): the hypernetwork, the optimizer
/// state and a resumed checkpoint are put there, and the random draws are made on the host, so a
/// seed draws the same data windows and noise on every device.
pub fn train(
    model: &DenseModel,
    calib: &Calibration,
    tp: &TrainParams,
    plan: &CheckpointPlan,
    on_step: &mut dyn FnMut(u64, &StepStats),
) -> Result<HyperNet> {
    Ok(train_until(model, calib, tp, plan, None, on_step)?.0)
}

/// [`train`] that also stops after the first step ending past `deadline` (a time budget): the
/// steps then done (`< tp.steps`) are returned beside the hypernetwork, and a checkpoint is written
/// there when the plan checkpoints, so `--resume` can finish the run later.
pub fn train_until(
    model: &DenseModel,
    calib: &Calibration,
    tp: &TrainParams,
    plan: &CheckpointPlan,
    deadline: Option<std::time::Instant>,
    on_step: &mut dyn FnMut(u64, &StepStats),
) -> Result<(HyperNet, u64)> {
    tp.validate()?;
    if model.embed.device().is_cpu() {
        prefer_inline_elementwise();
    }
    if calib.train.len() < tp.seq_len {
        return Err(ConvertError::Data(format!(
            "{} training tokens < --seq-len {}",
            calib.train.len(),
            tp.seq_len
        )));
    }
    let dev = model.embed.device();
    let hn = HyperNet::new(&model.config, tp.experts, tp.seed, dev)?;
    let resuming = plan.resume && plan.path.as_ref().is_some_and(|p| p.is_file());
    if tp.init == MaskInit::Importance && !resuming {
        let importance = neuron_importance(model, &calib.leading_windows(tp.seq_len, 16))?;
        // Below attention's share of the budget the MLP can keep no neuron with attention dense;
        // start from one and let training take the rest from attention.
        let k = mlp_budget(model, tp.p).unwrap_or(1);
        hn.init_from_importance(&importance, k)?;
    }
    let mut opt = AdamW::new(hn.vars(), tp.lr, tp.weight_decay)?;
    let mut start = 0;
    if plan.resume {
        let path = plan
            .path
            .as_ref()
            .ok_or_else(|| ConvertError::InvalidArg("--resume needs a checkpoint path".into()))?;
        if path.is_file() {
            start = load_checkpoint(path, model, &hn, &mut opt, tp)?;
        }
    }
    let mut done = start;
    for step in start..tp.steps {
        if step > start && deadline.is_some_and(|d| std::time::Instant::now() >= d) {
            if let Some(path) = &plan.path {
                // The step before wrote one when `step` is a multiple of the period.
                if plan.every > 0 && step % plan.every != 0 {
                    save_checkpoint(path, model, &hn, &opt, tp, step)?;
                }
            }
            break;
        }
        let tokens = calib.window(tp.seed, step, tp.seq_len);
        let out = compute_loss(model, &hn, tokens, tp, step, true)?;
        if !out.stats.loss.is_finite() {
            return Err(ConvertError::InvalidArg(format!(
                "loss became {} at step {step}; try a lower --lr",
                out.stats.loss
            )));
        }
        opt.step(hn.vars(), &out.loss)?;
        if profiling() {
            if let Some(p) = PHASES.lock().unwrap_or_else(|e| e.into_inner()).take() {
                eprintln!(
                    "step {step} phases (s): teacher {:.2} student {:.2} loss {:.2} backward {:.2} update {:.2}",
                    p.teacher, p.student, p.loss, p.backward, p.update
                );
            }
        }
        on_step(step, &out.stats);
        if let Some(path) = &plan.path {
            if plan.every > 0 && ((step + 1) % plan.every == 0 || step + 1 == tp.steps) {
                save_checkpoint(path, model, &hn, &opt, tp, step + 1)?;
            }
        }
        done = step + 1;
    }
    Ok((hn, done))
}

#[cfg(test)]
mod tests {
    use super::{kd_loss, kd_loss_composed};
    use candle_core::{Device, Tensor, Var};

    /// The fused KD loss matches candle's composed one in value and student gradient, and gives
    /// the teacher no gradient.
    #[test]
    fn fused_kd_loss_matches_the_composed_one() {
        let dev = Device::Cpu;
        let s = Var::from_tensor(&(Tensor::randn(0f32, 3.0, (5, 300), &dev).unwrap())).unwrap();
        let t = Tensor::randn(0f32, 3.0, (5, 300), &dev).unwrap();
        let fused = kd_loss(s.as_tensor(), &t).unwrap();
        let reference = kd_loss_composed(s.as_tensor(), &t).unwrap();
        let (a, b) = (fused.to_scalar::<f32>().unwrap(), reference.to_scalar::<f32>().unwrap());
        assert!((a - b).abs() < 1e-4 * b.abs().max(1.0), "{a} vs {b}");
        let ga = (fused * 3.0).unwrap().backward().unwrap();
        let gb = (reference * 3.0).unwrap().backward().unwrap();
        let (ga, gb) = (ga.get(s.as_tensor()).unwrap(), gb.get(s.as_tensor()).unwrap());
        let diff = (ga - gb).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        let scale = gb.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(scale > 1e-3 && diff < 1e-5, "gradient differs by {diff} (scale {scale})");
    }
}
