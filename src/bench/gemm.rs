//! `alignscope bench --what gemm`: GFLOP/s of each matrix product of a CPU training step
//! of the 12-layer d128 vocab-4096 config (16 × 256 tokens), through the same products the
//! step runs ([`crate::kernels::blas::sgemm`], all threads), next to a 1024³ product (the
//! machine's plain sgemm); with `--compare-torch`, `torch.matmul` on the same shapes in
//! the same run (`scripts/pytorch_gemm_bench.py`).

use crate::kernels::blas::{Operand, sgemm};
use anyhow::Result;
use serde_json::{Value, json};
use std::time::Instant;

/// One product `c[m x n] = op(a)[m x k] op(b)[k x n]`.
struct Product {
    name: &'static str,
    m: usize,
    n: usize,
    k: usize,
    /// Whether `a` / `b` are read transposed, as the training step reads them.
    ta: bool,
    tb: bool,
}

/// The training step's products for `rows` tokens, width `d`, MLP width `inner`,
/// vocabulary `vocab`, `head_rows` rows per chunk of logits.
fn step_products(rows: usize, d: usize, inner: usize, vocab: usize, head_rows: usize) -> Vec<Product> {
    let p = |name, m, n, k, ta, tb| Product { name, m, n, k, ta, tb };
    vec![
        p("sgemm 1024^3", 1024, 1024, 1024, false, false),
        p("c_attn forward", rows, 3 * d, d, false, false),
        p("attn c_proj forward", rows, d, d, false, false),
        p("c_fc forward", rows, inner, d, false, false),
        p("mlp c_proj forward", rows, d, inner, false, false),
        p("c_attn weight grad", d, 3 * d, rows, true, false),
        p("c_attn input grad", rows, d, 3 * d, false, true),
        p("c_fc weight grad", d, inner, rows, true, false),
        p("c_fc input grad", rows, d, inner, false, true),
        p("mlp c_proj weight grad", inner, d, rows, true, false),
        p("mlp c_proj input grad", rows, inner, d, false, true),
        p("head logits", head_rows, vocab, d, false, true),
        p("head feature grad", head_rows, d, vocab, false, false),
        p("head weight grad", vocab, d, head_rows, true, false),
    ]
}

/// Best GFLOP/s of `f` (which does `flop` floating-point operations) over ~0.3 s of runs.
fn best_gflops(flop: f64, mut f: impl FnMut()) -> f64 {
    f();
    let mut best = f64::INFINITY;
    let started = Instant::now();
    let mut runs = 0;
    while runs < 3 || started.elapsed().as_secs_f64() < 0.3 {
        let t = Instant::now();
        f();
        best = best.min(t.elapsed().as_secs_f64());
        runs += 1;
    }
    flop / best / 1e9
}

pub fn run(threads: usize, compare_torch: bool, say: &dyn Fn(&str)) -> Result<Value> {
    let (rows, d, inner, vocab) = (16 * 256, 128, 512, 4096);
    let products = step_products(rows, d, inner, vocab, crate::train::cpu_step::head_chunk_rows(vocab).min(rows));
    say(&format!("matrix products of a training step (12 layers, d {d}, vocab {vocab}, 16 × 256 tokens), {threads} threads, GFLOP/s"));
    let mut out = vec![];
    for p in &products {
        let val = |i: usize| ((i * 37 % 101) as f32 - 50.0) / 50.0;
        // op(a) is m x k: stored k x m when transposed; likewise for b.
        let (lda, ldb) = (if p.ta { p.m } else { p.k }, if p.tb { p.k } else { p.n });
        let a: Vec<f32> = (0..p.m * p.k).map(val).collect();
        let b: Vec<f32> = (0..p.k * p.n).map(|i| val(i + 11)).collect();
        let mut c = vec![0f32; p.m * p.n];
        let oa = Operand { data: &a, ld: lda, trans: p.ta };
        let ob = Operand { data: &b, ld: ldb, trans: p.tb };
        let flop = 2.0 * (p.m * p.n * p.k) as f64;
        let gflops = best_gflops(flop, || sgemm(p.m, p.n, p.k, 1.0, oa, ob, false, &mut c, p.n, true));
        out.push(json!({ "product": p.name, "m": p.m, "n": p.n, "k": p.k, "trans_a": p.ta, "trans_b": p.tb, "gflops": gflops }));
    }
    if compare_torch {
        let shapes: Vec<Value> = out.iter().map(|o| json!([o["m"], o["n"], o["k"], o["trans_a"], o["trans_b"]])).collect();
        let args = ["--threads".to_string(), threads.to_string(), "--shapes".into(), Value::Array(shapes).to_string()];
        let theirs = super::compare::run_script("scripts/pytorch_gemm_bench.py", &args)?;
        for (o, t) in out.iter_mut().zip(theirs["gflops"].as_array().into_iter().flatten()) {
            o["torch_gflops"] = t.clone();
            o["ratio"] = json!(super::compare::ratio(o["gflops"].as_f64(), t.as_f64()));
        }
    }
    for o in &out {
        let torch = match o["torch_gflops"].as_f64() {
            Some(t) => format!("   torch {t:>6.1}   ratio {:.2}", o["ratio"].as_f64().unwrap_or(f64::NAN)),
            None => String::new(),
        };
        say(&format!(
            "  {:<24} {:>5} x {:>5} x {:>5}  alignscope {:>6.1}{torch}",
            o["product"].as_str().unwrap_or("?"),
            o["m"],
            o["n"],
            o["k"],
            o["gflops"].as_f64().unwrap_or(f64::NAN)
        ));
    }
    Ok(Value::Array(out))
}
