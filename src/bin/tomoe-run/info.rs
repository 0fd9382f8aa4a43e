//! `tomoe-run info`.

use crate::Res;
use std::io::Write;
use std::path::Path;
use tomoe::gguf::{GgufFile, Value};
use tomoe::model::{Mlp, ModelFile};

/// The experts of a ToMoE or llama.cpp MoE model: per layer, union width and expert sizes, and
/// the parameters a token uses.
fn moe_info(out: &mut impl Write, model: &ModelFile) -> Res<()> {
    let c = model.config();
    let w = model.weights();
    if let Some(tc) = &c.tomoe {
        writeln!(
            out,
            "ToMoE: {} experts per layer, one per token; V mask {}, scale 1/sqrt({})",
            tc.n_expert,
            if tc.output_mask {
                "also on the attention output"
            } else {
                "on V"
            },
            if tc.scale_pruned { "kept dims" } else { "head dim" }
        )?;
        writeln!(
            out,
            "  layer  union  expert rows (min/mean/max)  q/k dims per head  V mask"
        )?;
        let (mut block, mut dense) = (0f64, 0f64);
        let (d, hd) = (c.d_model as f64, c.head_dim as f64);
        let heads = (c.n_head + c.n_head_kv) as f64;
        for (il, l) in w.layers.iter().enumerate() {
            let (Some(m), Some(qk)) = (l.mlp.tomoe(), &l.attn.pruned_qk) else { continue };
            let sizes: Vec<usize> = m.expert_rows.iter().map(Vec::len).collect();
            let mean = sizes.iter().sum::<usize>() as f64 / sizes.len().max(1) as f64;
            writeln!(
                out,
                "  {il:>5}  {:>5}  {:>5} / {:>7.1} / {:<5}         {:>3} of {:<3}     {}",
                m.union,
                sizes.iter().min().unwrap_or(&0),
                mean,
                sizes.iter().max().unwrap_or(&0),
                qk.dq,
                c.head_dim,
                if l.attn.vmask.is_some() { "dynamic" } else { "none" }
            )?;
            // Attention q,k at the kept dims and v,o counted whole (the V mask is per token);
            // MLP: three rows per neuron of the mean expert.
            block += d * heads * qk.dq as f64 + d * heads * hd + 3.0 * d * mean;
            dense += 2.0 * d * heads * hd + 3.0 * d * c.n_ff as f64;
        }
        writeln!(
            out,
            "block parameters per token (mean expert, V unmasked): {:.1} M of {:.1} M dense ({:.3})",
            block / 1e6,
            dense / 1e6,
            block / dense
        )?;
        if let Some(p) = tc.active_fraction {
            writeln!(
                out,
                "active fraction measured by the converter on held-out text (with the V mask): {p:.4}"
            )?;
        }
    } else if let Some(n) = c.n_expert {
        writeln!(
            out,
            "MoE (llama.cpp layout): {n} experts per layer, {} used per token",
            c.n_expert_used
        )?;
        if let Some(x) = w.layers.iter().find_map(|l| match &l.mlp {
            Mlp::Stacked(x) => Some(x),
            _ => None,
        }) {
            writeln!(out, "  expert width {} neurons (dense {})", x.width, c.n_ff)?;
        }
    }
    Ok(())
}

pub fn run(path: &Path) -> Res<()> {
    let mut out = std::io::stdout().lock();
    let f = GgufFile::open(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    writeln!(
        out,
        "file: {}  (GGUF v{}, alignment {})",
        path.display(),
        f.version(),
        f.alignment()
    )?;
    writeln!(out, "metadata ({} keys):", f.metadata().len())?;
    for (k, v) in f.metadata() {
        writeln!(out, "  {k} = {}", show_value(v))?;
    }
    let total: u64 = f.tensors().iter().map(|t| t.n_bytes).sum();
    writeln!(
        out,
        "tensors ({}, {:.1} MiB):",
        f.tensors().len(),
        total as f64 / 1048576.0
    )?;
    for t in f.tensors() {
        let dims: Vec<String> = t.dims.iter().map(|d| d.to_string()).collect();
        writeln!(
            out,
            "  {:<40} {:>6} [{}]  {} bytes",
            t.name,
            t.ty.name(),
            dims.join(", "),
            t.n_bytes
        )?;
    }
    match ModelFile::from_gguf(f) {
        Err(e) => writeln!(out, "model: cannot be run by tomoe: {e}")?,
        Ok(model) => {
            let c = model.config();
            writeln!(
                out,
                "model: {} layers, d={}, ffn={}, heads {}/{} (kv), head dim {}, vocab {}, context {}",
                c.n_layer, c.d_model, c.n_ff, c.n_head, c.n_head_kv, c.head_dim, c.n_vocab, c.context_length
            )?;
            moe_info(&mut out, &model)?;
        }
    }
    Ok(())
}

fn show_value(v: &Value) -> String {
    match v {
        Value::String(s) => {
            let s: String = s.chars().take(80).collect::<String>().replace('\n', "\\n");
            format!("{s:?}")
        }
        Value::Array(a) => {
            let head: Vec<String> = a.values().take(5).map(|v| show_value(&v)).collect();
            format!(
                "[{}{}] ({} items)",
                head.join(", "),
                if a.len() > 5 { ", ..." } else { "" },
                a.len()
            )
        }
        Value::U8(x) => x.to_string(),
        Value::I8(x) => x.to_string(),
        Value::U16(x) => x.to_string(),
        Value::I16(x) => x.to_string(),
        Value::U32(x) => x.to_string(),
        Value::I32(x) => x.to_string(),
        Value::U64(x) => x.to_string(),
        Value::I64(x) => x.to_string(),
        Value::F32(x) => x.to_string(),
        Value::F64(x) => x.to_string(),
        Value::Bool(x) => x.to_string(),
    }
}
