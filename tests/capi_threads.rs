//! One model shared by four contexts on four threads gives exactly the tokens of four sequential
//! runs (seeded sampling, different prompts and seeds per context).

mod capi_support;
mod common;

use capi_support::*;

const PROMPTS: [&str; 4] = [
    "<|im_start|>user\nName a colour.<|im_end|>\n<|im_start|>assistant\n",
    "<|im_start|>user\nWrite a short poem about the sea.<|im_end|>\n<|im_start|>assistant\n",
    "Once upon a time",
    "It is a truth universally acknowledged, that",
];
const N_TOKENS: u32 = 24;

fn run(model: &CModel, i: usize) -> Vec<u32> {
    let ctx = CContext::new(model, 256, 1, 1000 + i as u64);
    let mut p = tomoe::capi::tomoe_sampling_default_params();
    p.temperature = 0.9;
    ctx.set_sampling(&p);
    let (got, _) = ctx.generate(PROMPTS[i], N_TOKENS);
    // Two turns per context, so each thread also exercises continuing and clearing.
    let (more, _) = ctx.generate("\nAnd then?", 8);
    ctx.clear();
    let (again, _) = ctx.generate(PROMPTS[i], 4);
    [got.tokens, more.tokens, again.tokens].concat()
}

#[test]
fn four_contexts_on_four_threads_match_sequential_runs() {
    let model = CModel::load(&common::model_path(common::RealModel::SmolLm2));
    let sequential: Vec<Vec<u32>> = (0..4).map(|i| run(&model, i)).collect();
    assert!(sequential.iter().all(|t| t.len() > 4), "{sequential:?}");
    assert!(
        sequential[0] != sequential[1],
        "different prompts and seeds give different tokens"
    );

    let parallel: Vec<Vec<u32>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|i| {
                s.spawn({
                    let model = &model;
                    move || run(model, i)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(parallel, sequential);
}
