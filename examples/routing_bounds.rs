//! How much of a dense model's per-token MLP sparsity survives each way of routing, with a
//! perfect router: perplexity of the dense model when every token keeps only k MLP neurons
//! (attention dense, k = the MLP budget of active fraction p), chosen by an oracle that sees the
//! neurons' outputs: the token's own top k, the top k by the gate alone, the best whole groups of
//! co-firing neurons, or the best of E expert masks clustered from calibration tokens.
//! docs/CONVERSION.md ("How much routing could gain") reads the results.
//!
//!     cargo run --release --features convert --example routing_bounds -- \
//!         -m MODEL.gguf --calib tests/data/austen/emma.txt -f tests/data/austen/persuasion.txt

use candle_core::{Device, Tensor};
use clap::Parser;
use std::path::PathBuf;
use tomoe::convert::baselines::mlp_budget;
use tomoe::convert::data::perplexity_chunks;
use tomoe::convert::eval::{perplexity, Subject};
use tomoe::convert::oracles::{best_expert_labels, contributions, expert_biases, neuron_groups, token_experts, Selection};
use tomoe::convert::{gguf_in, tokenize, ConvertError};

#[derive(Parser)]
#[command(about = "Perplexity of per-token MLP neuron choices made by oracles, at the budget of p")]
struct Cli {
    /// Dense model (GGUF).
    #[arg(short = 'm', long)]
    model: PathBuf,
    /// Text the neuron groups and expert masks are clustered from.
    #[arg(long)]
    calib: PathBuf,
    /// Windows of --ctx tokens of --calib to cluster from.
    #[arg(long = "calib-windows", default_value_t = 8)]
    calib_windows: usize,
    /// Text to score (perplexity as llama-perplexity: second half of each window).
    #[arg(short = 'f', long)]
    file: PathBuf,
    #[arg(short = 'c', long, default_value_t = 512)]
    ctx: usize,
    /// At most N windows of --file.
    #[arg(long, default_value_t = 8)]
    chunks: usize,
    /// Active fractions (attention dense, the rest of the budget in MLP neurons).
    #[arg(long, value_delimiter = ',', default_value = "0.5,0.7")]
    p: Vec<f64>,
    /// Sizes of the co-firing neuron groups.
    #[arg(long, value_delimiter = ',', default_value = "4,16")]
    groups: Vec<usize>,
    /// Numbers of token-clustered expert masks.
    #[arg(long, value_delimiter = ',', default_value = "8,64,256")]
    experts: Vec<usize>,
}

fn main() -> Result<(), ConvertError> {
    let a = Cli::parse();
    let model = gguf_in::load_gguf(&a.model, &Device::Cpu)?;
    let tok = tokenize::tokenizer_from_meta(&model.tokenizer_meta)?;
    let read = |p: &PathBuf| {
        std::fs::read_to_string(p).map_err(|source| ConvertError::Io { path: p.clone(), source })
    };
    let bos = if tok.adds_bos() { tok.bos() } else { None };
    let calib = tok.encode(&read(&a.calib)?, true, false);
    let windows = perplexity_chunks(&calib, a.ctx, bos, a.calib_windows);
    let eval = tok.encode(&read(&a.file)?, true, false);
    let windows: Vec<&[u32]> = windows.iter().map(|w| w.as_slice()).collect();
    let (h2s, contrib): (Vec<Tensor>, Vec<Tensor>) = contributions(&model, &windows)?.into_iter().unzip();
    let ppl = |k, sel: &Selection| perplexity(&model, Subject::Oracle(k, sel), &eval, a.ctx, bos, a.chunks);
    let (dense, _) = perplexity(&model, Subject::Dense, &eval, a.ctx, bos, a.chunks)?;
    println!("dense: PPL {dense:.2} ({} windows of {})", a.chunks, a.ctx);
    println!("| p | k of {} | selection | PPL | × dense |", model.config.m);
    println!("|---|---|---|---|---|");
    let row = |p: f64, k: usize, what: &str, v: f64| println!("| {p} | {k} | {what} | {v:.2} | {:.2} |", v / dense);
    let groups: Vec<(usize, Selection)> = a
        .groups
        .iter()
        .map(|&g| Ok((g, Selection::Groups(contrib.iter().map(|c| neuron_groups(c, g)).collect::<Result<_, _>>()?))))
        .collect::<Result<_, ConvertError>>()?;
    for &p in &a.p {
        let k = mlp_budget(&model, p)?;
        row(p, k, "own top k", ppl(k, &Selection::Neurons)?.0);
        row(p, k, "own top k by the gate alone", ppl(k, &Selection::GateOnly)?.0);
        for (g, sel) in &groups {
            row(p, k, &format!("best groups of {g} co-firing neurons"), ppl(k, sel)?.0);
        }
        for &e in &a.experts {
            let masks: Vec<Vec<Vec<usize>>> = contrib.iter().map(|c| token_experts(c, e, k)).collect::<Result<_, _>>()?;
            let biases = (0..masks.len())
                .map(|l| {
                    let labels = best_expert_labels(&contrib[l].sqr()?, &masks[l])?;
                    expert_biases(model.config.arch.gelu_mlp(), &model.layers[l], &h2s[l], &masks[l], &labels)
                })
                .collect::<Result<Vec<_>, ConvertError>>()?;
            row(p, k, &format!("best of {e} token-clustered experts"), ppl(k, &Selection::BestOf(masks.clone()))?.0);
            row(p, k, &format!("best of {e} token-clustered experts, biased"), ppl(k, &Selection::BestOfBiased(masks, biases))?.0);
        }
    }
    Ok(())
}
