//! Sampling speed against llama.cpp's sampler chain in the same run, on the logits the real
//! models give (a prompt, then 15 greedy steps): llama.cpp's defaults (top-k 40, top-p 0.95,
//! min-p 0.05, temperature 0.8, a seeded draw) and greedy, µs per sampled token. llama.cpp's
//! time includes filling its candidate array from the logits, as its common sampler does for
//! every token. Run as BENCHMARKS.md says: `cargo bench --bench sampler`.

#[cfg(target_arch = "x86_64")]
#[path = "../tests/common/mod.rs"]
mod common;

#[cfg(target_arch = "x86_64")]
fn main() {
    use common::RealModel;
    use llama_cpp_sys_2 as sys;
    use std::sync::Arc;
    use std::time::Instant;
    use tomoe::chat::{argmax, Sampler, SamplerParams};
    use tomoe::engine::{Context, ContextParams, Model};

    /// llama.cpp's chain for `p` (greedy where the temperature is 0).
    fn llama_chain(p: &SamplerParams) -> *mut sys::llama_sampler {
        // SAFETY: plain constructors of llama.cpp's samplers; the chain owns what is added.
        unsafe {
            let chain = sys::llama_sampler_chain_init(sys::llama_sampler_chain_default_params());
            if p.temperature <= 0.0 {
                sys::llama_sampler_chain_add(chain, sys::llama_sampler_init_greedy());
            } else {
                sys::llama_sampler_chain_add(chain, sys::llama_sampler_init_top_k(p.top_k as i32));
                sys::llama_sampler_chain_add(chain, sys::llama_sampler_init_top_p(p.top_p, 1));
                sys::llama_sampler_chain_add(chain, sys::llama_sampler_init_min_p(p.min_p, 1));
                sys::llama_sampler_chain_add(chain, sys::llama_sampler_init_temp(p.temperature));
                sys::llama_sampler_chain_add(chain, sys::llama_sampler_init_dist(p.seed as u32));
            }
            chain
        }
    }

    println!("model    vocab    sampler    tomoe µs / llama.cpp µs = ratio");
    for (name, model) in [("smollm2", RealModel::SmolLm2), ("gemma3", RealModel::Gemma3)] {
        let path = common::model_path(model);
        let model = Arc::new(Model::load(&path).unwrap());
        let params = ContextParams { n_ctx: 256, n_threads: 2, n_batch: 64 };
        let mut ctx = Context::new(model.clone(), params).unwrap();
        let prompt = model.tokenizer().encode("Once upon a time, in a small village by the sea, there lived", true, true);
        let mut steps = vec![ctx.eval(&prompt).unwrap().to_vec()];
        for _ in 0..15 {
            let id = argmax(steps.last().unwrap());
            steps.push(ctx.eval(&[id]).unwrap().to_vec());
        }
        let vocab = steps[0].len();
        for (label, p) in [
            ("defaults", SamplerParams::default()),
            ("greedy", SamplerParams { temperature: 0.0, ..Default::default() }),
        ] {
            let mut ours = Sampler::new(p.clone(), vocab);
            let chain = llama_chain(&p);
            let mut cur: Vec<sys::llama_token_data> = Vec::with_capacity(vocab);
            let mut scratch = vec![0f32; vocab];
            let (mut t_ours, mut t_llama) = (Vec::new(), Vec::new());
            for _round in 0..30 {
                for logits in &steps {
                    scratch.copy_from_slice(logits);
                    let t = Instant::now();
                    std::hint::black_box(ours.sample(&mut scratch, &[]));
                    t_ours.push(t.elapsed().as_secs_f64());
                    let t = Instant::now();
                    cur.clear();
                    cur.extend(logits.iter().enumerate().map(|(i, &l)| sys::llama_token_data { id: i as i32, logit: l, p: 0.0 }));
                    let mut arr = sys::llama_token_data_array { data: cur.as_mut_ptr(), size: cur.len(), selected: -1, sorted: false };
                    // SAFETY: `arr` views `cur`, alive and unmoved for the call; the chain is live.
                    unsafe { sys::llama_sampler_apply(chain, &mut arr) };
                    // SAFETY: the chain's last sampler selected an index within `arr`.
                    std::hint::black_box(unsafe { (*arr.data.add(arr.selected as usize)).id });
                    t_llama.push(t.elapsed().as_secs_f64());
                }
            }
            // SAFETY: the chain is not used after this.
            unsafe { sys::llama_sampler_free(chain) };
            let median = |t: &mut Vec<f64>| {
                t.sort_by(f64::total_cmp);
                t[t.len() / 2] * 1e6
            };
            let (o, l) = (median(&mut t_ours), median(&mut t_llama));
            println!("{name:8} {vocab:6}   {label:9}  {o:8.1} / {l:8.1} = {:5.2}", o / l);
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn main() {
    eprintln!("the sampler benchmark compares against llama.cpp, which is linked on x86-64 only");
}
