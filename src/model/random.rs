//! Small models of random weights, for examples, tests and fuzzing: a llama or qwen2 of two
//! layers, 64 wide, with a byte-level BPE vocabulary (the 256 bytes, one merge, BOS and EOS).
//! They load and run like any model, in milliseconds; what they write is noise.

use super::ModelError;
use crate::gguf::{GgufWriter, QuantType, Value};
use std::path::Path;
use tomoe_quant::quantize_row;

const D: usize = 64;
const N_HEAD: usize = 4;
const N_HEAD_KV: usize = 2;
const HEAD_DIM: usize = 16;
const FF: usize = 128;
const N_LAYER: usize = 2;
/// The vocabulary: 256 byte tokens, the merge "ab", BOS (257) and EOS (258).
pub const N_VOCAB: usize = 259;

/// Deterministic values in `[-scale, scale)` from `seed` (xorshift).
pub fn values(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}

/// GPT-2's byte-to-character map: printable bytes stand for themselves, the others are shifted
/// past 255, so that every byte is a visible token.
fn byte_token(b: u8) -> String {
    let printable = |c: u8| matches!(c, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
    if printable(b) {
        char::from(b).to_string()
    } else {
        let n = (0..b).filter(|&c| !printable(c)).count() as u32;
        char::from_u32(256 + n).expect("below 0x200").to_string()
    }
}

/// Writes (atomically) a random model of `arch` ("llama", or "qwen2" with Q/K/V biases and an
/// untied output) with its matrices in `ty`, the same file for the same `seed`. `extra` adds
/// metadata, or replaces a key written here (e.g. `tokenizer.chat_template`).
pub fn write_model(
    path: &Path,
    arch: &str,
    ty: QuantType,
    seed: u64,
    extra: &[(&str, Value)],
) -> Result<(), ModelError> {
    if !matches!(arch, "llama" | "qwen2") {
        return Err(ModelError::Unsupported(format!(
            "random models are llama or qwen2, not {arch:?}"
        )));
    }
    let mut w = GgufWriter::new();
    let meta = |k: &str| format!("{arch}.{k}");
    w.add_metadata("general.architecture", Value::String(arch.into()));
    w.add_metadata("general.name", Value::String(format!("random {arch}")));
    for (k, v) in [
        ("block_count", N_LAYER),
        ("context_length", 256),
        ("embedding_length", D),
        ("feed_forward_length", FF),
        ("attention.head_count", N_HEAD),
        ("attention.head_count_kv", N_HEAD_KV),
        ("rope.dimension_count", HEAD_DIM),
    ] {
        w.add_metadata(meta(k), Value::U32(v as u32));
    }
    w.add_metadata(meta("attention.layer_norm_rms_epsilon"), Value::F32(1e-6));
    w.add_metadata(meta("rope.freq_base"), Value::F32(10000.0));
    let mut tokens: Vec<String> = (0..=255u8).map(byte_token).collect();
    tokens.extend(["ab", "<s>", "</s>"].map(String::from));
    let types: Vec<i32> = (0..N_VOCAB).map(|i| if i < 257 { 1 } else { 3 }).collect();
    w.add_metadata("tokenizer.ggml.model", Value::String("gpt2".into()));
    w.add_metadata("tokenizer.ggml.pre", Value::String("default".into()));
    w.add_metadata("tokenizer.ggml.tokens", Value::from(tokens));
    w.add_metadata("tokenizer.ggml.token_type", Value::from(types));
    w.add_metadata("tokenizer.ggml.merges", Value::from(vec!["a b"]));
    w.add_metadata("tokenizer.ggml.bos_token_id", Value::U32(257));
    w.add_metadata("tokenizer.ggml.eos_token_id", Value::U32(258));

    let mut seed = seed;
    let mut tensor = |w: &mut GgufWriter, name: &str, dims: Vec<u64>, ty: QuantType, scale: f32| {
        seed += 1;
        let n = dims.iter().product::<u64>() as usize;
        let vals = values(n, seed, scale);
        let bytes = match ty {
            QuantType::F32 => vals.iter().flat_map(|v| v.to_le_bytes()).collect(),
            _ => {
                let row = dims[0] as usize;
                let rb = ty
                    .row_bytes(row)
                    .ok_or_else(|| ModelError::Unsupported(format!("{} cannot hold rows of {row}", ty.name())))?;
                let mut out = vec![0u8; rb * (n / row)];
                for (src, dst) in vals.chunks_exact(row).zip(out.chunks_exact_mut(rb)) {
                    quantize_row(ty, src, dst);
                }
                out
            }
        };
        w.add_tensor(name, dims, ty, bytes).map_err(ModelError::from)
    };
    let (qd, kvd) = ((N_HEAD * HEAD_DIM) as u64, (N_HEAD_KV * HEAD_DIM) as u64);
    let (d, ff, nv) = (D as u64, FF as u64, N_VOCAB as u64);
    tensor(&mut w, "token_embd.weight", vec![d, nv], ty, 1.0)?;
    tensor(&mut w, "output_norm.weight", vec![d], QuantType::F32, 1.0)?;
    if arch == "qwen2" {
        tensor(&mut w, "output.weight", vec![d, nv], ty, 0.3)?;
    }
    for l in 0..N_LAYER {
        let b = |s: &str| format!("blk.{l}.{s}");
        tensor(&mut w, &b("attn_norm.weight"), vec![d], QuantType::F32, 1.0)?;
        tensor(&mut w, &b("attn_q.weight"), vec![d, qd], ty, 0.3)?;
        tensor(&mut w, &b("attn_k.weight"), vec![d, kvd], ty, 0.3)?;
        tensor(&mut w, &b("attn_v.weight"), vec![d, kvd], ty, 0.3)?;
        if arch == "qwen2" {
            tensor(&mut w, &b("attn_q.bias"), vec![qd], QuantType::F32, 0.5)?;
            tensor(&mut w, &b("attn_k.bias"), vec![kvd], QuantType::F32, 0.5)?;
            tensor(&mut w, &b("attn_v.bias"), vec![kvd], QuantType::F32, 0.5)?;
        }
        tensor(&mut w, &b("attn_output.weight"), vec![qd, d], ty, 0.3)?;
        tensor(&mut w, &b("ffn_norm.weight"), vec![d], QuantType::F32, 1.0)?;
        tensor(&mut w, &b("ffn_gate.weight"), vec![d, ff], ty, 0.3)?;
        tensor(&mut w, &b("ffn_up.weight"), vec![d, ff], ty, 0.3)?;
        tensor(&mut w, &b("ffn_down.weight"), vec![ff, d], ty, 0.3)?;
    }
    for (k, v) in extra {
        w.add_metadata(*k, v.clone());
    }
    Ok(w.write_atomic(path)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_file_and_bad_requests_are_errors() {
        let dir = std::env::temp_dir().join(format!("tomoe-random-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (a, b) = (dir.join("a.gguf"), dir.join("b.gguf"));
        write_model(&a, "qwen2", QuantType::Q4_0, 3, &[]).unwrap();
        write_model(&b, "qwen2", QuantType::Q4_0, 3, &[]).unwrap();
        assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
        let f = crate::gguf::GgufFile::open(&a).unwrap();
        assert_eq!(f.tensor("blk.1.attn_q.bias").unwrap().info.dims, [64]);
        let err = write_model(&b, "gemma3", QuantType::Q8_0, 3, &[]).unwrap_err();
        assert!(err.to_string().contains("llama or qwen2"), "{err}");
        // Q4_K blocks are 256 wide, the rows 64.
        let err = write_model(&b, "llama", QuantType::Q4_K, 3, &[]).unwrap_err();
        assert!(err.to_string().contains("cannot hold rows of 64"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
