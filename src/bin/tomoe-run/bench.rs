//! `tomoe-run bench`: llama-bench's tests and output formats.
//!
//! Each thread count of `-t` runs a `ppN` test for each N > 0 of `-p` (one batch of N prompt
//! tokens from an empty context) and a `tgN` test for each N > 0 of `-n` (N single-token decodes
//! from an empty context, each fed the previous one's greedy token). Every test runs once
//! untimed (warm-up), then `-r` times; tokens/s is reported as the mean ± the sample standard
//! deviation over the repetitions. `-o md` (default) prints llama-bench's table plus our columns
//! for decoding (GB/s of weights read and MiB read per token, with a MoE model's experts weighted
//! by how that test routed its tokens), then the decoding copies' size and, for a MoE model, the
//! expert usage; `-o json`, `-o jsonl` and `-o csv` print llama-bench-like records (the extra
//! lines go to stderr there).

use crate::{context, load, LoadArgs, ModelArgs, Res};
use clap::{Args, ValueEnum};
use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;
use tomoe::chat::argmax;
use tomoe::engine::{peak_resident_bytes, CacheTypes, Context, ContextParams, KvType, Model};

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    /// llama-bench's markdown table.
    Md,
    /// One JSON array of objects, one per test.
    Json,
    /// One JSON object per line.
    Jsonl,
    /// A header line and one line per test.
    Csv,
}

#[derive(Args)]
pub struct BenchArgs {
    /// The GGUF model.
    #[arg(short = 'm', long)]
    model: PathBuf,
    /// Prompt lengths, comma-separated: a ppN test for each N > 0.
    #[arg(short = 'p', long = "n-prompt", value_delimiter = ',', default_value = "512", value_parser = count)]
    n_prompt: Vec<usize>,
    /// Generation lengths, comma-separated: a tgN test for each N > 0.
    #[arg(short = 'n', long = "n-gen", value_delimiter = ',', default_value = "128", value_parser = count)]
    n_gen: Vec<usize>,
    /// Thread counts, comma-separated: every test runs at each (default: one per physical core).
    #[arg(short = 't', long, value_delimiter = ',', value_parser = positive)]
    threads: Vec<usize>,
    /// Timed repetitions of each test (after one untimed warm-up run).
    #[arg(short = 'r', long, default_value_t = 5, value_parser = positive)]
    repetitions: usize,
    /// Context length in tokens (default and minimum: the largest test's).
    #[arg(short = 'c', long = "ctx-size", value_parser = positive)]
    ctx_size: Option<usize>,
    /// Tokens per batch in prompt processing.
    #[arg(short = 'b', long = "batch-size", default_value_t = 512, value_parser = positive)]
    batch_size: usize,
    /// KV cache type of the keys: f32 or f16 (llama-bench's -ctk).
    #[arg(long = "cache-type-k", alias = "ctk", value_name = "TYPE", default_value_t = CacheTypes::default().k)]
    cache_type_k: KvType,
    /// KV cache type of the values: f32 or f16 (llama-bench's -ctv).
    #[arg(long = "cache-type-v", alias = "ctv", value_name = "TYPE", default_value_t = CacheTypes::default().v)]
    cache_type_v: KvType,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Md)]
    output: Output,
    #[command(flatten)]
    load: LoadArgs,
}

fn count(s: &str) -> Result<usize, String> {
    s.trim()
        .parse()
        .map_err(|_| format!("`{s}` is not a token count (a non-negative integer)"))
}

fn positive(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(format!("`{s}` is not a positive integer")),
    }
}

/// What every record says about the model and the run.
struct Info {
    filename: String,
    model_type: String,
    size: u64,
    n_params: u64,
    backend: String,
    kernels: &'static str,
    n_batch: usize,
    n_ctx: usize,
    type_k: KvType,
    type_v: KvType,
}

/// One test's measurements: exactly one of `n_prompt` and `n_gen` is positive.
struct Row {
    threads: usize,
    n_prompt: usize,
    n_gen: usize,
    samples_ns: Vec<u64>,
    /// Weight bytes one decoded token read (tg tests).
    bytes_per_token: Option<u64>,
}

impl Row {
    fn name(&self) -> String {
        if self.n_prompt > 0 {
            format!("pp{}", self.n_prompt)
        } else {
            format!("tg{}", self.n_gen)
        }
    }
    fn samples_ts(&self) -> Vec<f64> {
        let n = (self.n_prompt + self.n_gen) as f64;
        self.samples_ns.iter().map(|&ns| n * 1e9 / ns.max(1) as f64).collect()
    }
    /// (mean, sample standard deviation) of tokens/s.
    fn ts(&self) -> (f64, f64) {
        mean_sd(&self.samples_ts())
    }
    fn gb_per_s(&self) -> Option<f64> {
        self.bytes_per_token.map(|b| self.ts().0 * b as f64 / 1e9)
    }
    fn mib_per_token(&self) -> Option<f64> {
        self.bytes_per_token.map(|b| b as f64 / 1048576.0)
    }
}

/// Mean and sample standard deviation (n − 1; 0 for one value), as llama-bench reports.
fn mean_sd(v: &[f64]) -> (f64, f64) {
    if v.is_empty() {
        return (0.0, 0.0);
    }
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    if v.len() == 1 {
        return (mean, 0.0);
    }
    let ss: f64 = v.iter().map(|x| (x - mean) * (x - mean)).sum();
    (mean, (ss / (n - 1.0)).sqrt())
}

pub fn run(a: BenchArgs) -> Res<()> {
    let pp: Vec<usize> = a.n_prompt.iter().copied().filter(|&n| n > 0).collect();
    let tg: Vec<usize> = a.n_gen.iter().copied().filter(|&n| n > 0).collect();
    if pp.is_empty() && tg.is_empty() {
        return Err("nothing to run: every -p and -n value is 0".into());
    }
    let threads = if a.threads.is_empty() {
        vec![ContextParams::default().n_threads]
    } else {
        a.threads.clone()
    };
    let model = load(&a.model, &a.load)?;
    let largest = pp.iter().chain(&tg).copied().max().unwrap_or(1);
    let n_ctx = a.ctx_size.unwrap_or(0).max(largest);
    let n_vocab = model.config().n_vocab as u32;
    // Deterministic pseudo-random tokens: the speed does not depend on the text.
    let prompt: Vec<u32> = (0..pp.iter().copied().max().unwrap_or(1) as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 7) % n_vocab)
        .collect();
    let info = describe(&model, &a, n_ctx);
    let mut out = std::io::stdout().lock();
    let mut printer = Printer::new(a.output, &info);
    printer.header(&mut out)?;
    // Tokens routed to each expert over the whole run (all contexts), per layer.
    let mut usage: Vec<Vec<u64>> = Vec::new();
    // The KV cache's bytes and types (the same in every context).
    let mut kv = None;
    for &t in &threads {
        let args = ModelArgs {
            threads: Some(t),
            ctx_size: n_ctx,
            batch_size: a.batch_size,
            cache_type_k: a.cache_type_k,
            cache_type_v: a.cache_type_v,
        };
        let mut ctx = context(&model, &args)?;
        kv = Some((ctx.kv_bytes(), ctx.cache_types()));
        for &n in &pp {
            let samples = measure(a.repetitions, || {
                ctx.clear();
                let start = Instant::now();
                ctx.eval(&prompt[..n])?;
                Ok(start.elapsed().as_nanos() as u64)
            })?;
            let row = Row {
                threads: t,
                n_prompt: n,
                n_gen: 0,
                samples_ns: samples,
                bytes_per_token: None,
            };
            printer.row(&mut out, &row)?;
        }
        for &n in &tg {
            let before = ctx.expert_counts().to_vec();
            let samples = measure(a.repetitions, || decode(&mut ctx, prompt[0], n))?;
            // Bytes one token reads, with the experts weighted by how this test routed its tokens.
            let used = diff(ctx.expert_counts(), &before);
            let bytes = model.weights().bytes_per_token(&used);
            let row = Row {
                threads: t,
                n_prompt: 0,
                n_gen: n,
                samples_ns: samples,
                bytes_per_token: Some(bytes),
            };
            printer.row(&mut out, &row)?;
        }
        add(&mut usage, ctx.expert_counts());
    }
    printer.footer(&mut out)?;
    // The lines after the table: on stdout with the table, on stderr beside machine formats.
    let mut extra: Box<dyn Write> = if a.output == Output::Md {
        Box::new(out)
    } else {
        drop(out);
        Box::new(std::io::stderr().lock())
    };
    summary(&mut extra, &model, &info, &usage, kv)?;
    Ok(())
}

/// One untimed warm-up run of `test`, then `reps` timed ones; their nanoseconds.
fn measure(reps: usize, mut test: impl FnMut() -> Res<u64>) -> Res<Vec<u64>> {
    test()?;
    (0..reps).map(|_| test()).collect()
}

/// `n` single-token decodes from an empty context, starting at `first`, each fed the previous
/// one's greedy token; nanoseconds.
fn decode(ctx: &mut Context, first: u32, n: usize) -> Res<u64> {
    ctx.clear();
    let start = Instant::now();
    let mut id = first;
    for _ in 0..n {
        id = argmax(ctx.eval(&[id])?);
    }
    Ok(start.elapsed().as_nanos() as u64)
}

fn diff(after: &[Vec<u64>], before: &[Vec<u64>]) -> Vec<Vec<u64>> {
    after
        .iter()
        .enumerate()
        .map(|(il, l)| {
            l.iter()
                .enumerate()
                .map(|(e, &k)| k.saturating_sub(before.get(il).and_then(|b| b.get(e)).copied().unwrap_or(0)))
                .collect()
        })
        .collect()
}

fn add(total: &mut Vec<Vec<u64>>, counts: &[Vec<u64>]) {
    if total.len() < counts.len() {
        total.resize(counts.len(), Vec::new());
    }
    for (t, l) in total.iter_mut().zip(counts) {
        if t.len() < l.len() {
            t.resize(l.len(), 0);
        }
        t.iter_mut().zip(l).for_each(|(t, &k)| *t += k);
    }
}

/// The model's description as llama-bench gives it ("llama 135M Q4_1"), sizes, backend.
fn describe(model: &Model, a: &BenchArgs, n_ctx: usize) -> Info {
    let tensors = model.gguf().tensors();
    let size: u64 = tensors.iter().map(|t| t.n_bytes).sum();
    let n_params: u64 = tensors.iter().map(|t| t.n_elements()).sum();
    let arch = model
        .gguf()
        .get("general.architecture")
        .and_then(|v| v.as_str())
        .unwrap_or(model.config().arch.name());
    let ftype = model
        .gguf()
        .get("general.file_type")
        .and_then(|v| v.as_u64())
        .and_then(ftype_name)
        .map(str::to_string)
        .unwrap_or_else(|| dominant_type(model));
    let mut model_type = format!("{arch} {} {ftype}", size_label(n_params));
    if model.config().tomoe.is_some() {
        model_type.push_str(" ToMoE");
    }
    let kernels = tomoe_quant::kernel_name();
    Info {
        filename: a.model.to_string_lossy().into_owned(),
        model_type,
        size,
        n_params,
        backend: format!("CPU {kernels}"),
        kernels,
        n_batch: a.batch_size.min(n_ctx),
        n_ctx,
        type_k: a.cache_type_k,
        type_v: a.cache_type_v,
    }
}

/// llama.cpp's names of `general.file_type` (those of the formats tomoe reads).
fn ftype_name(ftype: u64) -> Option<&'static str> {
    Some(match ftype {
        0 => "all F32",
        1 => "F16",
        2 => "Q4_0",
        3 => "Q4_1",
        7 => "Q8_0",
        8 => "Q5_0",
        9 => "Q5_1",
        10 => "Q2_K - Medium",
        11 => "Q3_K - Small",
        12 => "Q3_K - Medium",
        13 => "Q3_K - Large",
        14 => "Q4_K - Small",
        15 => "Q4_K - Medium",
        16 => "Q5_K - Small",
        17 => "Q5_K - Medium",
        18 => "Q6_K",
        32 => "BF16",
        _ => return None,
    })
}

/// Without `general.file_type`: the format of most of the matrices' elements.
fn dominant_type(model: &Model) -> String {
    let mut by_type: Vec<(tomoe_quant::QuantType, u64)> = Vec::new();
    for t in model.gguf().tensors().iter().filter(|t| t.dims.len() >= 2) {
        match by_type.iter_mut().find(|(ty, _)| *ty == t.ty) {
            Some((_, n)) => *n += t.n_elements(),
            None => by_type.push((t.ty, t.n_elements())),
        }
    }
    by_type
        .iter()
        .max_by_key(|(_, n)| *n)
        .map_or_else(|| "?".to_string(), |(ty, _)| ty.name().to_uppercase())
}

/// "135M", "1.5B", "27B": the parameter count rounded as model names give it.
fn size_label(n_params: u64) -> String {
    let n = n_params as f64;
    if n < 1e9 {
        format!("{:.0}M", n / 1e6)
    } else {
        let b = format!("{:.1}", n / 1e9);
        format!("{}B", b.strip_suffix(".0").unwrap_or(&b))
    }
}

/// The decoding copies' size, the peak memory and, for a MoE model, how its tokens were routed.
fn summary(
    out: &mut dyn Write,
    model: &Model,
    info: &Info,
    usage: &[Vec<u64>],
    kv: Option<(usize, CacheTypes)>,
) -> Res<()> {
    writeln!(
        out,
        "\n{}: {:.2} MiB of weights; {:.2} MiB of copies for decoding; context {} tokens",
        info.filename,
        info.size as f64 / 1048576.0,
        model.copies_bytes() as f64 / 1048576.0,
        info.n_ctx
    )?;
    if let Some((bytes, types)) = kv {
        writeln!(
            out,
            "KV cache: {:.2} MiB (keys {}, values {}) per context",
            bytes as f64 / 1048576.0,
            types.k,
            types.v
        )?;
    }
    if usage.iter().any(|l| !l.is_empty()) {
        let n_expert = usage.iter().map(Vec::len).max().unwrap_or(0);
        let mut total = vec![0u64; n_expert];
        for l in usage {
            l.iter().enumerate().for_each(|(e, &k)| total[e] += k);
        }
        let all: u64 = total.iter().sum::<u64>().max(1);
        let shares: Vec<String> = total
            .iter()
            .map(|&k| format!("{:.1}%", 100.0 * k as f64 / all as f64))
            .collect();
        writeln!(out, "expert usage (tokens routed, all layers): [{}]", shares.join(", "))?;
        for (il, l) in usage.iter().enumerate() {
            let n: u64 = l.iter().sum::<u64>().max(1);
            let row: Vec<String> = l
                .iter()
                .map(|&k| format!("{:>3.0}", 100.0 * k as f64 / n as f64))
                .collect();
            writeln!(out, "  layer {il:>2} %: {}", row.join(" "))?;
        }
    }
    if let Some(peak) = peak_resident_bytes() {
        writeln!(out, "peak resident memory: {:.1} MiB", peak as f64 / 1048576.0)?;
    }
    writeln!(out, "build: tomoe {}", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}

/// A field of a JSON or CSV record.
enum Val {
    Str(String),
    Int(u64),
    Float(f64),
    /// JSON null, an empty CSV field.
    None,
    /// JSON only.
    Ints(Vec<u64>),
    /// JSON only.
    Floats(Vec<f64>),
}

/// llama-bench's fields (those that apply) and ours.
fn fields(info: &Info, r: &Row) -> Vec<(&'static str, Val)> {
    let ns: Vec<f64> = r.samples_ns.iter().map(|&n| n as f64).collect();
    let (avg_ns, sd_ns) = mean_sd(&ns);
    let (avg_ts, sd_ts) = r.ts();
    let opt = |x: Option<f64>| x.map_or(Val::None, Val::Float);
    vec![
        ("build_version", Val::Str(env!("CARGO_PKG_VERSION").into())),
        ("model_filename", Val::Str(info.filename.clone())),
        ("model_type", Val::Str(info.model_type.clone())),
        ("model_size", Val::Int(info.size)),
        ("model_n_params", Val::Int(info.n_params)),
        ("backends", Val::Str("CPU".into())),
        ("kernels", Val::Str(info.kernels.into())),
        ("n_batch", Val::Int(info.n_batch as u64)),
        ("n_ctx", Val::Int(info.n_ctx as u64)),
        ("type_k", Val::Str(info.type_k.name().into())),
        ("type_v", Val::Str(info.type_v.name().into())),
        ("n_threads", Val::Int(r.threads as u64)),
        ("n_prompt", Val::Int(r.n_prompt as u64)),
        ("n_gen", Val::Int(r.n_gen as u64)),
        ("avg_ns", Val::Int(avg_ns.round() as u64)),
        ("stddev_ns", Val::Int(sd_ns.round() as u64)),
        ("avg_ts", Val::Float(avg_ts)),
        ("stddev_ts", Val::Float(sd_ts)),
        ("samples_ns", Val::Ints(r.samples_ns.clone())),
        ("samples_ts", Val::Floats(r.samples_ts())),
        ("gb_per_s", opt(r.gb_per_s())),
        ("mib_per_token", opt(r.mib_per_token())),
    ]
}

/// A JSON string literal.
fn json_str(s: &str) -> String {
    let mut o = String::with_capacity(s.len() + 2);
    o.push('"');
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            '\n' => o.push_str("\\n"),
            '\r' => o.push_str("\\r"),
            '\t' => o.push_str("\\t"),
            c if (c as u32) < 0x20 => o.push_str(&format!("\\u{:04x}", c as u32)),
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

/// A JSON number (Rust prints f64 without an exponent); null if not finite.
fn json_f64(x: f64) -> String {
    if x.is_finite() {
        format!("{x}")
    } else {
        "null".into()
    }
}

fn json_val(v: &Val) -> String {
    match v {
        Val::Str(s) => json_str(s),
        Val::Int(n) => n.to_string(),
        Val::Float(x) => json_f64(*x),
        Val::None => "null".into(),
        Val::Ints(v) => format!("[{}]", v.iter().map(u64::to_string).collect::<Vec<_>>().join(", ")),
        Val::Floats(v) => format!("[{}]", v.iter().map(|&x| json_f64(x)).collect::<Vec<_>>().join(", ")),
    }
}

/// A CSV field, quoted (with doubled quotes) where it holds a comma, quote or line break.
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// Markdown column: header, width, right-aligned.
struct Col {
    name: &'static str,
    width: usize,
    right: bool,
}

struct Printer<'a> {
    format: Output,
    info: &'a Info,
    cols: Vec<Col>,
    rows: usize,
}

impl<'a> Printer<'a> {
    fn new(format: Output, info: &'a Info) -> Self {
        let col = |name, width, right| Col { name, width, right };
        let cols = vec![
            col("model", info.model_type.chars().count().max(30), false),
            col("size", 10, true),
            col("params", 10, true),
            col("backend", info.backend.chars().count().max(10), false),
            col("threads", 7, true),
            col("test", 15, true),
            col("t/s", 20, true),
            col("GB/s", 8, true),
            col("MiB/token", 9, true),
        ];
        Printer {
            format,
            info,
            cols,
            rows: 0,
        }
    }

    fn md_line(&self, out: &mut impl Write, cells: &[String]) -> std::io::Result<()> {
        write!(out, "|")?;
        for (c, v) in self.cols.iter().zip(cells) {
            if c.right {
                write!(out, " {v:>w$} |", w = c.width)?;
            } else {
                write!(out, " {v:<w$} |", w = c.width)?;
            }
        }
        writeln!(out)
    }

    fn header(&mut self, out: &mut impl Write) -> std::io::Result<()> {
        match self.format {
            Output::Md => {
                let names: Vec<String> = self.cols.iter().map(|c| c.name.to_string()).collect();
                self.md_line(out, &names)?;
                let rules: Vec<String> = self
                    .cols
                    .iter()
                    .map(|c| {
                        if c.right {
                            format!("{}:", "-".repeat(c.width - 1))
                        } else {
                            "-".repeat(c.width)
                        }
                    })
                    .collect();
                self.md_line(out, &rules)?;
            }
            Output::Json => writeln!(out, "[")?,
            Output::Jsonl => {}
            Output::Csv => {
                let dummy = Row {
                    threads: 0,
                    n_prompt: 0,
                    n_gen: 0,
                    samples_ns: Vec::new(),
                    bytes_per_token: None,
                };
                let names: Vec<&str> = fields(self.info, &dummy)
                    .into_iter()
                    .filter(|(_, v)| !matches!(v, Val::Ints(_) | Val::Floats(_)))
                    .map(|(k, _)| k)
                    .collect();
                writeln!(out, "{}", names.join(","))?;
            }
        }
        out.flush()
    }

    fn row(&mut self, out: &mut impl Write, r: &Row) -> std::io::Result<()> {
        match self.format {
            Output::Md => {
                let i = self.info;
                let (avg, sd) = r.ts();
                let size = if i.size < 1 << 30 {
                    format!("{:.2} MiB", i.size as f64 / 1048576.0)
                } else {
                    format!("{:.2} GiB", i.size as f64 / 1073741824.0)
                };
                let params = if i.n_params < 1_000_000_000 {
                    format!("{:.2} M", i.n_params as f64 / 1e6)
                } else {
                    format!("{:.2} B", i.n_params as f64 / 1e9)
                };
                let cells = [
                    i.model_type.clone(),
                    size,
                    params,
                    i.backend.clone(),
                    r.threads.to_string(),
                    r.name(),
                    format!("{avg:.2} ± {sd:.2}"),
                    r.gb_per_s().map_or("-".into(), |g| format!("{g:.2}")),
                    r.mib_per_token().map_or("-".into(), |m| format!("{m:.2}")),
                ];
                self.md_line(out, &cells)?;
            }
            Output::Json | Output::Jsonl => {
                let f = fields(self.info, r);
                if self.format == Output::Json {
                    if self.rows > 0 {
                        writeln!(out, ",")?;
                    }
                    writeln!(out, "  {{")?;
                    for (k, (name, v)) in f.iter().enumerate() {
                        let sep = if k + 1 < f.len() { "," } else { "" };
                        writeln!(out, "    {}: {}{sep}", json_str(name), json_val(v))?;
                    }
                    write!(out, "  }}")?;
                } else {
                    let items: Vec<String> = f
                        .iter()
                        .map(|(name, v)| format!("{}: {}", json_str(name), json_val(v)))
                        .collect();
                    writeln!(out, "{{{}}}", items.join(", "))?;
                }
            }
            Output::Csv => {
                let values: Vec<String> = fields(self.info, r)
                    .into_iter()
                    .filter_map(|(_, v)| match v {
                        Val::Str(s) => Some(csv_field(&s)),
                        Val::Int(n) => Some(n.to_string()),
                        Val::Float(x) => Some(if x.is_finite() { format!("{x}") } else { String::new() }),
                        Val::None => Some(String::new()),
                        Val::Ints(_) | Val::Floats(_) => None,
                    })
                    .collect();
                writeln!(out, "{}", values.join(","))?;
            }
        }
        self.rows += 1;
        out.flush()
    }

    fn footer(&mut self, out: &mut impl Write) -> std::io::Result<()> {
        if self.format == Output::Json {
            if self.rows > 0 {
                writeln!(out)?;
            }
            writeln!(out, "]")?;
        }
        out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_strings_are_escaped() {
        assert_eq!(json_str(r#"a"b\c"#), r#""a\"b\\c""#);
        assert_eq!(json_str("x\ny\u{1}"), r#""x\ny\u0001""#);
    }

    #[test]
    fn csv_fields_are_quoted_when_needed() {
        assert_eq!(csv_field("plain"), "plain");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
    }

    #[test]
    fn mean_and_sample_sd() {
        assert_eq!(mean_sd(&[4.0]), (4.0, 0.0));
        let (m, sd) = mean_sd(&[2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0]);
        assert_eq!(m, 5.0);
        assert!((sd - (32.0f64 / 7.0).sqrt()).abs() < 1e-12);
    }

    #[test]
    fn size_labels() {
        assert_eq!(size_label(134_515_008), "135M");
        assert_eq!(size_label(1_543_714_304), "1.5B");
        assert_eq!(size_label(7_000_000_000), "7B");
    }
}
