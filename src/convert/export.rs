//! Writing a converted model: the ToMoE GGUF of docs/FORMAT.md, or (`--llama-cpp-compat`) a plain
//! llama MoE GGUF that llama.cpp runs. Files are written atomically (temp file in the same folder,
//! fsync, rename), so a failed export leaves nothing half-written.

use super::converted::{runs, ConvertedModel};
use super::dense::{Arch, DenseModel};
use super::gguf_in::adjacent_of_half;
use super::{ConvertError, Result};
use crate::gguf::{GgufWriter, QuantType, Value};
use crate::model::tomoe_schema as schema;
use candle_core::Tensor;
use std::path::Path;

/// The `--outtype` choices.
pub fn parse_outtype(s: &str) -> Result<QuantType> {
    match s {
        "f32" | "f16" | "q8_0" | "q4_0" | "q4_1" | "q4_k" | "q6_k" => QuantType::from_name(s)
            .ok_or_else(|| ConvertError::InvalidArg(format!("--outtype {s}"))),
        _ => Err(ConvertError::InvalidArg(format!(
            "--outtype {s}: expected f32, f16, q8_0, q4_0, q4_1, q4_k or q6_k"
        ))),
    }
}

/// The type a matrix with rows of `cols` values is stored in: `want`, or llama.cpp's fallback when the
/// row length is not a multiple of the block size.
pub fn storage_type(want: QuantType, cols: usize) -> QuantType {
    let fits = |t: QuantType| cols.is_multiple_of(t.block_size());
    if fits(want) {
        return want;
    }
    let fallback = match want {
        QuantType::Q4_K | QuantType::Q2_K | QuantType::Q3_K => QuantType::Q5_0,
        QuantType::Q5_K => QuantType::Q5_1,
        QuantType::Q6_K => QuantType::Q8_0,
        _ => QuantType::F16,
    };
    if fits(fallback) {
        fallback
    } else {
        QuantType::F16
    }
}

/// Quantizes a row-major [rows, cols] F32 matrix row by row.
fn quantize(ty: QuantType, data: &[f32], cols: usize) -> Result<Vec<u8>> {
    let rb = ty
        .row_bytes(cols)
        .ok_or_else(|| ConvertError::InvalidArg(format!("{} rows of {cols} values", ty.name())))?;
    let rows = data.len() / cols;
    let mut out = vec![0u8; rows * rb];
    for (src, dst) in data.chunks_exact(cols).zip(out.chunks_exact_mut(rb)) {
        tomoe_quant::quantize_row(ty, src, dst);
    }
    Ok(out)
}

fn f32_data(t: &Tensor) -> Result<Vec<f32>> {
    Ok(t.flatten_all()?.to_vec1::<f32>()?)
}

/// Adds a 2-D HF-layout matrix [rows, cols] as ggml dims [cols, rows] in `want` (with fallback).
fn add_matrix(w: &mut GgufWriter, name: &str, t: &Tensor, want: QuantType) -> Result<()> {
    let (rows, cols) = t.dims2()?;
    let ty = storage_type(want, cols);
    w.add_tensor(
        name,
        vec![cols as u64, rows as u64],
        ty,
        quantize(ty, &f32_data(t)?, cols)?,
    )?;
    Ok(())
}

/// Adds an F32 tensor with ggml dims = reversed shape.
fn add_f32(w: &mut GgufWriter, name: &str, t: &Tensor) -> Result<()> {
    let dims: Vec<u64> = t.dims().iter().rev().map(|&d| d as u64).collect();
    let bytes = f32_data(t)?.iter().flat_map(|v| v.to_le_bytes()).collect();
    w.add_tensor(name, dims, QuantType::F32, bytes)?;
    Ok(())
}

fn rows_of(t: &Tensor, rows: &[usize]) -> Result<Tensor> {
    let idx: Vec<u32> = rows.iter().map(|&r| r as u32).collect();
    Ok(t.index_select(&Tensor::from_vec(idx, rows.len(), t.device())?, 0)?)
}

fn u32_array(v: impl IntoIterator<Item = usize>) -> Value {
    Value::from(v.into_iter().map(|x| x as u32).collect::<Vec<u32>>())
}

/// Metadata shared by both file kinds: the base hyperparameters under `arch`, tokenizer, name.
fn base_metadata(
    w: &mut GgufWriter,
    model: &DenseModel,
    arch: &str,
    ff_len: usize,
    n_experts: usize,
    name_suffix: &str,
) {
    let c = &model.config;
    w.add_metadata("general.architecture", Value::String(arch.into()));
    w.add_metadata(
        "general.name",
        Value::String(format!("{}{name_suffix}", model.name)),
    );
    let u = |v: usize| Value::U32(v as u32);
    w.add_metadata(format!("{arch}.block_count"), u(c.n_layers));
    w.add_metadata(format!("{arch}.context_length"), u(c.context_length));
    w.add_metadata(format!("{arch}.embedding_length"), u(c.d));
    w.add_metadata(format!("{arch}.feed_forward_length"), u(ff_len));
    w.add_metadata(format!("{arch}.attention.head_count"), u(c.n_heads));
    w.add_metadata(format!("{arch}.attention.head_count_kv"), u(c.n_kv_heads));
    w.add_metadata(format!("{arch}.attention.key_length"), u(c.head_dim));
    w.add_metadata(format!("{arch}.attention.value_length"), u(c.head_dim));
    w.add_metadata(
        format!("{arch}.attention.layer_norm_rms_epsilon"),
        Value::F32(c.rms_eps),
    );
    w.add_metadata(format!("{arch}.rope.freq_base"), Value::F32(c.rope_theta));
    w.add_metadata(format!("{arch}.rope.dimension_count"), u(c.head_dim));
    w.add_metadata(format!("{arch}.vocab_size"), u(c.vocab));
    w.add_metadata(schema::arch_key(arch, schema::EXPERT_COUNT), u(n_experts));
    w.add_metadata(schema::arch_key(arch, schema::EXPERT_USED_COUNT), u(1));
    if let Some(g) = &c.gemma3 {
        // Read back by the runtime as `model::gemma3` reads a dense Gemma 3 file.
        if let Some(win) = g.sliding_window {
            w.add_metadata(format!("{arch}.attention.sliding_window"), u(win));
            w.add_metadata(
                format!("{arch}.attention.sliding_window_pattern"),
                Value::from(g.swa_layers.clone()),
            );
        }
        w.add_metadata(format!("{arch}.rope.freq_base_swa"), Value::F32(g.rope_theta_local));
        if let Some(cap) = g.final_logit_softcap {
            w.add_metadata(format!("{arch}.final_logit_softcapping"), Value::F32(cap));
        }
    }
    for (k, v) in &model.tokenizer_meta {
        w.add_metadata(k.clone(), v.clone());
    }
}

fn global_tensors(w: &mut GgufWriter, model: &DenseModel, outtype: QuantType) -> Result<()> {
    add_matrix(w, "token_embd.weight", &model.embed, outtype)?;
    add_f32(w, "output_norm.weight", &model.output_norm)?;
    if let Some(o) = &model.output {
        add_matrix(w, "output.weight", o, outtype)?;
    }
    Ok(())
}

/// Q/K rows of every head for the kept dims, in the file's pairing; returns (rows, qk_index).
fn qk_rows(
    model: &DenseModel,
    keep_half_layout: &[usize],
    heads: usize,
) -> (Vec<usize>, Vec<usize>) {
    let hd = model.config.head_dim;
    let half = hd / 2;
    let (order, index): (Vec<usize>, Vec<usize>) = match model.config.arch {
        // Rotate-half is the stored layout: dims as kept.
        Arch::Qwen2 | Arch::Gemma3 => (keep_half_layout.to_vec(), keep_half_layout.to_vec()),
        // llama.cpp's adjacent pairs: HF dim j is adjacent dim 2(j mod half) + j/half.
        Arch::Llama => {
            let mut adj: Vec<usize> = keep_half_layout
                .iter()
                .map(|&j| 2 * (j % half) + j / half)
                .collect();
            adj.sort_unstable();
            let hf_of_adj = |g: usize| (g % 2) * half + g / 2;
            (adj.iter().map(|&g| hf_of_adj(g)).collect(), adj)
        }
    };
    let rows = (0..heads)
        .flat_map(|h| order.iter().map(move |&j| h * hd + j))
        .collect();
    (rows, index)
}

/// The ToMoE GGUF (docs/FORMAT.md).
pub fn build_tomoe(
    model: &DenseModel,
    cm: &ConvertedModel,
    outtype: QuantType,
) -> Result<GgufWriter> {
    let c = &model.config;
    let arch = match c.arch {
        Arch::Llama => schema::ARCH_LLAMA,
        Arch::Qwen2 => schema::ARCH_QWEN2,
        Arch::Gemma3 => schema::ARCH_GEMMA3,
    };
    if c.arch.has_qk_and_post_norms() && cm.layers.iter().any(|l| l.qk_keep.len() != c.head_dim) {
        return Err(ConvertError::Unsupported(
            "pruned Q/K dims with Q/K norms (a norm needs the whole head)".into(),
        ));
    }
    let n_experts = cm.layers.first().map_or(1, |l| l.experts.len());
    let mut w = GgufWriter::new();
    base_metadata(
        &mut w,
        model,
        arch,
        c.m,
        n_experts,
        &format!(" (ToMoE {} p={})", cm.method.name(), cm.target_p),
    );
    w.add_metadata(
        schema::FORMAT_VERSION_KEY,
        Value::U32(schema::FORMAT_VERSION),
    );
    w.add_metadata(
        schema::BASE_ARCHITECTURE,
        Value::String(c.arch.gguf_name().into()),
    );
    w.add_metadata(schema::METHOD, Value::String(cm.method.name().into()));
    let pairing = schema::rope_pairing(arch).expect("a ToMoE architecture");
    w.add_metadata(schema::ROPE_PAIRING, Value::String(pairing.into()));
    w.add_metadata(schema::OUTPUT_MASK, Value::Bool(cm.output_mask));
    w.add_metadata(schema::SCALE_PRUNED, Value::Bool(cm.scale_pruned));
    w.add_metadata(
        schema::VMASK_HIDDEN_SIZE,
        Value::U32(super::hyper::VMASK_HIDDEN as u32),
    );
    w.add_metadata(
        schema::VMASK_LAYER_NORM_EPSILON,
        Value::F32(super::hyper::LN_EPS as f32),
    );
    let offsets: Vec<f32> = cm
        .layers
        .iter()
        .map(|l| l.vmask.as_ref().map_or(0.0, |v| v.offset))
        .collect();
    w.add_metadata(schema::VMASK_OFFSET, Value::from(offsets));
    w.add_metadata(
        schema::VMASK_TOP_K,
        u32_array(
            cm.layers
                .iter()
                .map(|l| l.vmask.as_ref().map_or(0, |v| v.top_k)),
        ),
    );
    w.add_metadata(
        schema::TARGET_ACTIVE_FRACTION,
        Value::F32(cm.target_p as f32),
    );
    w.add_metadata(schema::ACTIVE_FRACTION, Value::F32(cm.measured_p as f32));
    global_tensors(&mut w, model, outtype)?;
    for (l, (lw, cl)) in model.layers.iter().zip(&cm.layers).enumerate() {
        if cl.experts.len() != n_experts {
            return Err(ConvertError::InvalidArg(format!(
                "layer {l} has {} experts, layer 0 has {n_experts}",
                cl.experts.len()
            )));
        }
        let p = format!("blk.{l}");
        let name = |suffix: &str| schema::layer_tensor(l, suffix);
        add_f32(&mut w, &format!("{p}.attn_norm.weight"), &lw.attn_norm)?;
        let full_qk = cl.qk_keep.len() == c.head_dim;
        let (qr, qk_index) = qk_rows(model, &cl.qk_keep, c.n_heads);
        let (kr, _) = qk_rows(model, &cl.qk_keep, c.n_kv_heads);
        if !full_qk {
            w.add_metadata(schema::qk_index(l), u32_array(qk_index));
        }
        add_matrix(
            &mut w,
            &format!("{p}.attn_q.weight"),
            &rows_of(&lw.wq, &qr)?,
            outtype,
        )?;
        add_matrix(
            &mut w,
            &format!("{p}.attn_k.weight"),
            &rows_of(&lw.wk, &kr)?,
            outtype,
        )?;
        if let (Some(bq), Some(bk)) = (&lw.bq, &lw.bk) {
            add_f32(&mut w, &format!("{p}.attn_q.bias"), &rows_of(bq, &qr)?)?;
            add_f32(&mut w, &format!("{p}.attn_k.bias"), &rows_of(bk, &kr)?)?;
        }
        add_matrix(&mut w, &format!("{p}.attn_v.weight"), &lw.wv, outtype)?;
        if let Some(bv) = &lw.bv {
            add_f32(&mut w, &format!("{p}.attn_v.bias"), bv)?;
        }
        add_matrix(&mut w, &format!("{p}.attn_output.weight"), &lw.wo, outtype)?;
        let norms = [
            ("attn_q_norm.weight", &lw.q_norm),
            ("attn_k_norm.weight", &lw.k_norm),
            ("post_attention_norm.weight", &lw.post_attn_norm),
            ("post_ffw_norm.weight", &lw.post_ffn_norm),
        ];
        for (suffix, t) in norms {
            if let Some(t) = t {
                add_f32(&mut w, &format!("{p}.{suffix}"), t)?;
            }
        }
        if let Some(vm) = &cl.vmask {
            // Read for every token like the other weights: stored at 8 bits in quantized files
            // (a lower-bit format would move the mask's cut-offs), in the float type otherwise.
            let head_ty = match outtype {
                QuantType::F32 | QuantType::F16 => outtype,
                _ => QuantType::Q8_0,
            };
            add_matrix(&mut w, &name(schema::VMASK_IN_WEIGHT), &vm.w_a, head_ty)?;
            add_f32(&mut w, &name(schema::VMASK_IN_BIAS), &vm.b_state)?;
            add_f32(&mut w, &name(schema::VMASK_NORM_WEIGHT), &vm.ln_w)?;
            add_f32(&mut w, &name(schema::VMASK_NORM_BIAS), &vm.ln_b)?;
            add_f32(&mut w, &name(schema::VMASK_OUT_WEIGHT), &vm.w_dec)?;
        }
        add_f32(&mut w, &format!("{p}.ffn_norm.weight"), &lw.ffn_norm)?;
        add_f32(&mut w, &name(schema::ROUTER), &cl.router)?;
        if let Some(b) = &cl.expert_bias {
            add_f32(&mut w, &name(schema::EXPERT_BIAS), b)?;
        }
        if cl.union.is_empty() {
            return Err(ConvertError::InvalidArg(format!(
                "layer {l} kept no MLP neuron; GGUF tensors cannot be empty"
            )));
        }
        add_matrix(
            &mut w,
            &format!("{p}.ffn_gate.weight"),
            &rows_of(&lw.w_gate, &cl.union)?,
            outtype,
        )?;
        add_matrix(
            &mut w,
            &format!("{p}.ffn_up.weight"),
            &rows_of(&lw.w_up, &cl.union)?,
            outtype,
        )?;
        let down_t = lw.w_down.t()?.contiguous()?;
        add_matrix(
            &mut w,
            &name(schema::FFN_DOWN_T),
            &rows_of(&down_t, &cl.union)?,
            outtype,
        )?;
        let mut flat = Vec::new();
        let mut offs = vec![0usize];
        for e in &cl.experts {
            let r = runs(e);
            flat.extend(r.iter().flat_map(|&(s, n)| [s, n]));
            offs.push(offs.last().copied().unwrap_or(0) + r.len());
        }
        w.add_metadata(schema::expert_runs(l), u32_array(flat));
        w.add_metadata(schema::expert_offsets(l), u32_array(offs));
    }
    Ok(w)
}

/// A plain llama MoE file for llama.cpp: attention untouched, experts copied and zero-padded.
pub fn build_llama_compat(
    model: &DenseModel,
    cm: &ConvertedModel,
    outtype: QuantType,
) -> Result<GgufWriter> {
    let c = &model.config;
    if c.arch != Arch::Llama {
        return Err(ConvertError::Unsupported(
            "--llama-cpp-compat needs a llama model (qwen2 and gemma3 have no plain MoE form in llama.cpp)"
                .into(),
        ));
    }
    if cm
        .layers
        .iter()
        .any(|l| l.qk_keep.len() != c.head_dim || l.vmask.is_some() || l.expert_bias.is_some())
    {
        return Err(ConvertError::InvalidArg(
            "--llama-cpp-compat needs an MLP-only conversion (attention untouched) without expert biases, which llama.cpp's llama MoE lacks".into(),
        ));
    }
    let n_experts = cm.layers.first().map_or(1, |l| l.experts.len());
    let largest = cm
        .layers
        .iter()
        .flat_map(|l| l.experts.iter().map(Vec::len))
        .max()
        .unwrap_or(0)
        .max(1);
    // Rows of ffn_down_exps have `w` values: round up to the block size of the type they will use.
    let down_ty = storage_type(outtype, largest.div_ceil(256) * 256);
    let bs = down_ty.block_size();
    let width = largest.div_ceil(bs) * bs;
    let mut w = GgufWriter::new();
    base_metadata(
        &mut w,
        model,
        "llama",
        width,
        n_experts,
        &format!(" (ToMoE MLP-only p={}, llama.cpp MoE)", cm.target_p),
    );
    global_tensors(&mut w, model, outtype)?;
    let hd = c.head_dim;
    let within = adjacent_of_half(hd); // hf row of each adjacent row is the inverse map
    let mut adj_to_hf = vec![0usize; hd];
    for (hf, &adj) in within.iter().enumerate() {
        adj_to_hf[adj] = hf;
    }
    let permuted = |t: &Tensor, heads: usize| -> Result<Tensor> {
        let rows: Vec<usize> = (0..heads * hd)
            .map(|r| (r / hd) * hd + adj_to_hf[r % hd])
            .collect();
        rows_of(t, &rows)
    };
    for (l, (lw, cl)) in model.layers.iter().zip(&cm.layers).enumerate() {
        let p = format!("blk.{l}");
        add_f32(&mut w, &format!("{p}.attn_norm.weight"), &lw.attn_norm)?;
        add_matrix(
            &mut w,
            &format!("{p}.attn_q.weight"),
            &permuted(&lw.wq, c.n_heads)?,
            outtype,
        )?;
        add_matrix(
            &mut w,
            &format!("{p}.attn_k.weight"),
            &permuted(&lw.wk, c.n_kv_heads)?,
            outtype,
        )?;
        add_matrix(&mut w, &format!("{p}.attn_v.weight"), &lw.wv, outtype)?;
        add_matrix(&mut w, &format!("{p}.attn_output.weight"), &lw.wo, outtype)?;
        add_f32(&mut w, &format!("{p}.ffn_norm.weight"), &lw.ffn_norm)?;
        add_f32(&mut w, &format!("{p}.ffn_gate_inp.weight"), &cl.router)?;
        let gate = f32_data(&lw.w_gate)?;
        let up = f32_data(&lw.w_up)?;
        let down = f32_data(&lw.w_down)?; // [d, m]
        let (d, m) = (c.d, c.m);
        let mut g_all = vec![0f32; n_experts * width * d];
        let mut u_all = vec![0f32; n_experts * width * d];
        let mut d_all = vec![0f32; n_experts * d * width];
        for (e, rows) in cl.experts.iter().enumerate() {
            for (k, &r) in rows.iter().enumerate() {
                let n = cl.union[r];
                let dst = (e * width + k) * d;
                g_all[dst..dst + d].copy_from_slice(&gate[n * d..(n + 1) * d]);
                u_all[dst..dst + d].copy_from_slice(&up[n * d..(n + 1) * d]);
                for o in 0..d {
                    d_all[(e * d + o) * width + k] = down[o * m + n];
                }
            }
        }
        let gu_ty = storage_type(outtype, d);
        let dims_gu = vec![d as u64, width as u64, n_experts as u64];
        w.add_tensor(
            format!("{p}.ffn_gate_exps.weight"),
            dims_gu.clone(),
            gu_ty,
            quantize(gu_ty, &g_all, d)?,
        )?;
        w.add_tensor(
            format!("{p}.ffn_up_exps.weight"),
            dims_gu,
            gu_ty,
            quantize(gu_ty, &u_all, d)?,
        )?;
        let dty = storage_type(outtype, width);
        w.add_tensor(
            format!("{p}.ffn_down_exps.weight"),
            vec![width as u64, d as u64, n_experts as u64],
            dty,
            quantize(dty, &d_all, width)?,
        )?;
    }
    Ok(w)
}

/// Checks the output folder before a long run (so a typo fails in seconds, not after training).
pub fn check_output_path(path: &Path) -> Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    let probe = dir.join(format!(".tomoe-convert-probe-{}", std::process::id()));
    std::fs::write(&probe, b"").map_err(super::io_err(&dir))?;
    std::fs::remove_file(&probe).map_err(super::io_err(&probe))?;
    Ok(())
}

/// Writes the file atomically.
pub fn export(
    model: &DenseModel,
    cm: &ConvertedModel,
    outtype: QuantType,
    llama_cpp_compat: bool,
    path: &Path,
) -> Result<()> {
    let w = if llama_cpp_compat {
        build_llama_compat(model, cm, outtype)?
    } else {
        build_tomoe(model, cm, outtype)?
    };
    w.write_atomic(path)?;
    Ok(())
}
