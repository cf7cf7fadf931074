//! `alignscope report`: the paper's figures for a checkpoint (or a pair), as files —
//! similarity heatmaps over a text (Figures 1–3), COS-vs-CKA agreement, per-layer quality
//! (Figure 8), the early-exit curve when a sweep is given, and the training curves —
//! with `report.md`, `report.json` and every figure as SVG and PNG.
//!
//! A client of the library like the command line and the explorer (which reuses
//! [`plot`] to export what it shows).

pub mod curves;
pub mod figures;
pub mod markdown;
pub mod plot;

use crate::analysis::corpus::{TextSimilarity, text_similarity};
use crate::analysis::decode;
use crate::analysis::embedder::{EmbedderInfo, SentenceEncoder};
use crate::analysis::eval::{EvalOptions, EvalReport, evaluate};
use crate::analysis::quality::{LayerQuality, PromptSetOptions, layer_quality, prompt_set};
use crate::analysis::similarity::{defined_pairs, pearson};
use crate::model::Checkpoint;
use anyhow::{Result, anyhow, bail};
use curves::{ExitCurve, TrainingCurves};
use serde::Serialize;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

/// What the report computes over.
#[derive(Debug, Clone)]
pub struct ReportOptions {
    pub data: PathBuf,
    pub ctx: usize,
    pub max_chunks: Option<usize>,
    pub prompts: PromptSetOptions,
    /// Exit sweeps (JSON of `alignscope exits`), matched to checkpoints by name.
    pub exit_sweeps: Vec<ExitCurve>,
    /// The command line, for the record.
    pub command: String,
}

/// COS-vs-CKA agreement over the off-diagonal entries of the two matrices.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Agreement {
    /// Pearson correlation of the off-diagonal COS and CKA entries; null if undefined.
    pub pearson: Option<f64>,
    /// Number of layer pairs `(i, j)`, `i < j`, where both are defined.
    pub pairs: usize,
}

/// Per-layer numbers, every array indexed by layer 0..L; undefined entries are null.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PerLayer {
    /// Shared-classifier cross-entropy (nats), perplexity and top-1 accuracy.
    pub ce: Vec<f64>,
    pub ppl: Vec<f64>,
    pub acc: Vec<f64>,
    /// Centered COS and linear CKA with the last layer (the last column of the matrices).
    pub cos_last: Vec<Option<f64>>,
    pub cka_last: Vec<Option<f64>>,
    /// Generation quality at each exit layer (layer 0 is not an exit: null).
    pub diversity: Vec<Option<f64>>,
    pub coherence: Vec<Option<f64>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ModelReport {
    /// "A" or "B".
    pub role: String,
    pub checkpoint: String,
    pub layers: usize,
    /// Predicted tokens per layer in the evaluation.
    pub eval_tokens: usize,
    pub similarity: TextSimilarity,
    pub agreement: Agreement,
    pub per_layer: PerLayer,
    /// The shallowest layer whose accuracy reaches 95% of the best layer's.
    pub depth_95: Option<usize>,
    pub generations: Vec<LayerQuality>,
    pub training: Option<TrainingCurves>,
    pub exits: Option<ExitCurve>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Difference {
    /// A − B, entry by entry (null where either is undefined).
    pub cos: Vec<Vec<Option<f64>>>,
    pub cka: Vec<Vec<Option<f64>>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct FigureFiles {
    pub name: String,
    pub title: String,
    pub svg: String,
    pub png: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub alignscope_version: String,
    pub command: String,
    pub data: String,
    /// Tokens of the text (A's tokenizer).
    pub text_tokens: usize,
    pub ctx: usize,
    pub chunks: usize,
    pub embedder: EmbedderInfo,
    pub prompt_set: PromptSetOptions,
    /// The prompts, as text (each checkpoint tokenizes them with its own tokenizer).
    pub prompts: Vec<String>,
    pub models: Vec<ModelReport>,
    /// A − B, when both have the same number of layers.
    pub difference: Option<Difference>,
    pub figures: Vec<FigureFiles>,
}

/// Units of work, for a progress bar: `(done, total, what)`.
pub type Progress<'a> = dyn FnMut(usize, usize, &str) + 'a;

fn with_layer_zero<T: Copy>(v: Vec<T>, zero: T) -> Vec<T> {
    std::iter::once(zero).chain(v).collect()
}

/// Computes the report for `models` (A, then optionally B) over the held-out documents
/// `docs` (joined by each model's end-of-text token, as `eval` reads them).
pub fn build(
    models: &[Checkpoint],
    docs: &[String],
    opts: &ReportOptions,
    encoder: &SentenceEncoder,
    embedder: EmbedderInfo,
    progress: &mut Progress,
) -> Result<Report> {
    if models.is_empty() || models.len() > 2 {
        bail!("a report covers one or two checkpoints")
    }
    let shown = opts.data.display().to_string();
    let ids: Vec<Vec<u32>> = models
        .iter()
        .map(|ck| crate::corpus::tokens::held_out_ids(&ck.tokenizer, ck.eos_id(), docs, &shown, None))
        .collect::<Result<_>>()?;
    for (ck, ids) in models.iter().zip(&ids) {
        if ids.len() < 2 {
            bail!("{} has fewer than 2 tokens under {}'s tokenizer: nothing to evaluate", opts.data.display(), ck.name)
        }
    }
    // The prompt set is drawn from A's tokens and kept as text.
    let prompts: Vec<String> =
        prompt_set(&ids[0], opts.prompts.prompts, opts.prompts.prompt_tokens).iter().map(|p| decode(&models[0].tokenizer, p)).collect();
    if prompts.is_empty() {
        bail!("{} is too short for a prompt of {} tokens (--prompt-tokens)", opts.data.display(), opts.prompts.prompt_tokens)
    }
    let chunks_of = |n: usize| crate::analysis::eval::chunk_ranges(n, opts.ctx, opts.max_chunks).len();
    let work: Vec<usize> = models.iter().zip(&ids).map(|(ck, ids)| 3 * chunks_of(ids.len()) + ck.model.n_layer() * prompts.len()).collect();
    let total: usize = work.iter().sum();
    let mut base = 0;
    let mut reports = vec![];
    for (i, (ck, ids)) in models.iter().zip(&ids).enumerate() {
        let role = if i == 0 { "A" } else { "B" };
        let name = ck.name.clone();
        let mut at = |done: usize, what: &str| progress(base + done, total, &format!("{role} {name}: {what}"));
        let similarity = text_similarity(&ck.model, ids, opts.ctx, opts.max_chunks, |d, _| {
            at(d, "similarity");
            ControlFlow::Continue(())
        })?;
        let n_chunks = similarity.chunks;
        let eval: EvalReport = evaluate(&ck.model, ids, &EvalOptions { ctx: opts.ctx, max_chunks: opts.max_chunks }, |d, _| {
            at(2 * n_chunks + d, "per-layer evaluation");
            ControlFlow::Continue(())
        })?;
        let prompt_ids: Vec<Vec<u32>> = prompts
            .iter()
            .map(|p| {
                let e = ck.tokenizer.encode(p.as_str(), false).map_err(|e| anyhow!("cannot tokenize a prompt: {e}"))?;
                let mut v = e.get_ids().to_vec();
                // A prompt must leave room for its continuation in the context. The command
                // refuses a prompt length that does not fit; only B's tokenizer, splitting
                // A's prompt into more tokens, can still reach this.
                let room = ck.model.config.n_positions.saturating_sub(opts.prompts.max_new_tokens).max(1);
                if v.len() > room {
                    v.drain(..v.len() - room);
                }
                Ok(v)
            })
            .collect::<Result<_>>()?;
        let generations = layer_quality(&ck.model, &ck.tokenizer, &prompt_ids, &opts.prompts, ck.eos_id(), encoder, |d, _| {
            at(3 * n_chunks + d, "generation at every exit layer");
            ControlFlow::Continue(())
        })?;
        let l = ck.model.n_layer();
        let cos_last: Vec<Option<f64>> = similarity.cos.iter().map(|row| row[l]).collect();
        let cka_last: Vec<Option<f64>> = similarity.cka.iter().map(|row| row[l]).collect();
        let (xs, ys): (Vec<f64>, Vec<f64>) = defined_pairs(&similarity.cos, &similarity.cka).into_iter().unzip();
        let agreement = Agreement { pearson: pearson(&xs, &ys), pairs: xs.len() };
        let per_layer = PerLayer {
            ce: eval.ce.clone(),
            ppl: eval.ppl.clone(),
            acc: eval.acc.clone(),
            cos_last,
            cka_last,
            diversity: with_layer_zero(generations.iter().map(|g| g.diversity).collect(), None),
            coherence: with_layer_zero(generations.iter().map(|g| g.coherence).collect(), None),
        };
        let short = crate::paths::short_name(&ck.name);
        let exits = opts.exit_sweeps.iter().find(|c| crate::paths::short_name(&c.checkpoint) == short).cloned();
        reports.push(ModelReport {
            role: role.to_string(),
            checkpoint: ck.name.clone(),
            layers: l,
            eval_tokens: eval.tokens,
            similarity,
            agreement,
            per_layer,
            depth_95: eval.min_depth_reaching(0.95),
            generations,
            training: curves::read_training(&ck.dir)?,
            exits,
        });
        base += work[i];
    }
    let difference = match reports.as_slice() {
        [a, b] if a.layers == b.layers => {
            let sub = |x: &[Vec<Option<f64>>], y: &[Vec<Option<f64>>]| -> Vec<Vec<Option<f64>>> {
                x.iter().zip(y).map(|(r, s)| r.iter().zip(s).map(|(p, q)| Some((*p)? - (*q)?)).collect()).collect()
            };
            Some(Difference { cos: sub(&a.similarity.cos, &b.similarity.cos), cka: sub(&a.similarity.cka, &b.similarity.cka) })
        }
        _ => None,
    };
    Ok(Report {
        alignscope_version: env!("CARGO_PKG_VERSION").to_string(),
        command: opts.command.clone(),
        data: crate::paths::display_path(&opts.data),
        text_tokens: ids[0].len(),
        ctx: reports[0].similarity.ctx,
        chunks: reports[0].similarity.chunks,
        embedder,
        prompt_set: opts.prompts.clone(),
        prompts,
        models: reports,
        difference,
        figures: vec![],
    })
}

/// Writes the report into `out`: figures, report.json and report.md. Everything is made
/// in a hidden sibling folder first and moved in only when all of it is written, so a
/// failure leaves `out` as it was.
pub fn write(report: &mut Report, out: &Path, png_scale: f64) -> Result<Vec<PathBuf>> {
    if out.is_file() {
        bail!("--out {} is a file, not a folder", out.display())
    }
    std::fs::create_dir_all(out).map_err(|e| anyhow!("cannot create {}: {e}", out.display()))?;
    let name = out.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "report".into());
    let stage = out.with_file_name(format!(".{name}.writing"));
    if stage.exists() {
        std::fs::remove_dir_all(&stage).map_err(|e| anyhow!("cannot clear {}: {e}", stage.display()))?;
    }
    std::fs::create_dir_all(&stage).map_err(|e| anyhow!("cannot create {}: {e}", stage.display()))?;
    let result = (|| -> Result<Vec<String>> {
        let mut files = vec![];
        report.figures.clear();
        for (fname, fig) in figures::report_figures(report) {
            plot::write_figure(&fig, &stage.join(&fname), png_scale)?;
            report.figures.push(FigureFiles {
                name: fname.clone(),
                title: fig.title.clone(),
                svg: format!("{fname}.svg"),
                png: format!("{fname}.png"),
            });
            files.push(format!("{fname}.svg"));
            files.push(format!("{fname}.png"));
        }
        std::fs::write(stage.join("report.json"), serde_json::to_string_pretty(report)?)?;
        std::fs::write(stage.join("report.md"), markdown::render(report))?;
        files.push("report.json".into());
        files.push("report.md".into());
        Ok(files)
    })();
    let files = match result {
        Ok(f) => f,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&stage);
            return Err(e);
        }
    };
    let mut written = vec![];
    for f in &files {
        let dest = out.join(f);
        std::fs::rename(stage.join(f), &dest).map_err(|e| anyhow!("cannot move {f} into {}: {e}", out.display()))?;
        written.push(dest);
    }
    // A figure an earlier report in this folder had and this one has not (no exit sweep
    // this time) goes, so the folder holds one report; other files are not the report's.
    for stem in figures::FIGURE_STEMS {
        for f in [format!("{stem}.svg"), format!("{stem}.png")] {
            if !files.contains(&f) {
                let _ = std::fs::remove_file(out.join(&f));
            }
        }
    }
    let _ = std::fs::remove_dir_all(&stage);
    Ok(written)
}
