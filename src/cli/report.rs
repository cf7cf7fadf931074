//! `alignscope report` (the paper's figures as files) and `alignscope embed` (sentence
//! embeddings of the encoder coherence uses).

use crate::analysis::embedder::{EmbedderChoice, SentenceEncoder};
use crate::analysis::eval::read_text;
use crate::analysis::generate::Sampling;
use crate::analysis::quality::PromptSetOptions;
use crate::model::device::parse_device;
use crate::paths::{DEFAULT_CKPT, DEFAULT_EVAL_TEXT, resolve_asset};
use crate::report::{ReportOptions, build, curves::read_exit_sweep, write};
use anyhow::{Result, bail};
use clap::Args;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct ReportArgs {
    /// Checkpoint A: a folder, a name under checkpoints/, a hub id, or a built recipe (gpt2-aligned)
    #[arg(long, default_value = DEFAULT_CKPT)]
    pub ckpt: String,
    /// Checkpoint B, drawn on the same axes (and A − B)
    #[arg(long)]
    pub compare: Option<String>,
    /// UTF-8 text the report is computed over
    #[arg(long, default_value = DEFAULT_EVAL_TEXT)]
    pub data: PathBuf,
    /// Folder to write report.md, report.json and the figures (SVG and PNG) into
    #[arg(long)]
    pub out: PathBuf,
    /// Tokens per chunk (default: 256, or the model's context if shorter)
    #[arg(long)]
    pub ctx: Option<usize>,
    /// Use at most this many chunks of the text (default: all of it)
    #[arg(long)]
    pub max_chunks: Option<usize>,
    /// Prompts drawn evenly from the text for the generation metrics
    #[arg(long, default_value_t = 16)]
    pub prompts: usize,
    /// Tokens per prompt
    #[arg(long, default_value_t = 32)]
    pub prompt_tokens: usize,
    /// Tokens generated per prompt and exit layer
    #[arg(long, default_value_t = 32)]
    pub max_new_tokens: usize,
    /// Nucleus sampling with this p for the generations (default: greedy)
    #[arg(long)]
    pub top_p: Option<f64>,
    /// Sampling temperature, with --top-p [default: 1]
    #[arg(long)]
    pub temperature: Option<f64>,
    /// Sampling seed, with --top-p [default: 0]
    #[arg(long)]
    pub seed: Option<u64>,
    /// Sentence encoder for coherence: a sentence-transformers BERT (folder, name or hub
    /// id), or `self` (default: all-MiniLM-L6-v2 when it is here, else self)
    #[arg(long)]
    pub embedder: Option<String>,
    /// Early-exit sweep to draw (the JSON of `alignscope exits --json`; repeatable)
    #[arg(long)]
    pub exits: Vec<PathBuf>,
    /// PNG size as a multiple of the SVG's (2 for print; smaller files with less)
    #[arg(long, default_value_t = crate::report::plot::PNG_SCALE)]
    pub png_scale: f64,
    /// Device: auto, cpu, cuda or cuda:N
    #[arg(long, default_value = "auto")]
    pub device: String,
}

fn progress_bar() -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(1), ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template("{bar:30.cyan/blue} {percent:>3}% {elapsed_precise} (ETA {eta}) {msg}")
            .expect("a valid template")
            .progress_chars("█▉▊▋▌▍▎▏ "),
    );
    bar
}

pub fn report(a: ReportArgs) -> Result<()> {
    // Cheap checks first, so bad input fails before any model loads.
    if a.prompts == 0 {
        bail!("--prompts must be at least 1")
    }
    if a.prompt_tokens == 0 {
        bail!("--prompt-tokens must be at least 1")
    }
    if a.max_new_tokens == 0 {
        bail!("--max-new-tokens must be at least 1")
    }
    if a.max_chunks == Some(0) {
        bail!("--max-chunks must be at least 1")
    }
    if !(a.png_scale >= 0.5 && a.png_scale <= 8.0) {
        bail!("--png-scale must be between 0.5 and 8, got {}", a.png_scale)
    }
    super::check_sampling_settings(a.top_p.is_some(), a.temperature, a.seed)?;
    let sampling = match a.top_p {
        Some(p) => Sampling::top_p(p, a.temperature, a.seed),
        None => Sampling::Greedy,
    };
    sampling.validate()?;
    if a.out.is_file() {
        bail!("--out {} is a file, not a folder", a.out.display())
    }
    let data = resolve_asset(&a.data);
    let (docs, _) = super::held_out_documents(&a.data)?;
    let exit_sweeps = a.exits.iter().map(|p| read_exit_sweep(p)).collect::<Result<Vec<_>>>()?.concat();
    let device = parse_device(&a.device)?;
    let mut models = vec![crate::train::recipe::open(&a.ckpt, &device)?];
    if let Some(b) = &a.compare {
        models.push(crate::train::recipe::open(b, &device)?);
    }
    for m in &models {
        let n = m.model.config.n_positions;
        if a.prompt_tokens.saturating_add(a.max_new_tokens) > n {
            bail!(
                "--prompt-tokens {} and --max-new-tokens {} do not fit in {}'s context of {n} tokens: a prompt is refused, not truncated",
                a.prompt_tokens,
                a.max_new_tokens,
                m.name
            )
        }
    }
    let ctx = a.ctx.unwrap_or_else(|| models.iter().map(|m| m.model.config.default_ctx()).min().expect("one model"));
    let choice = EmbedderChoice::from_arg(a.embedder.as_deref());
    let encoder = SentenceEncoder::open(&choice, &models[0].name, &models[0].model, &models[0].tokenizer, &device)?;
    let embedder = encoder.info(&choice);
    let command = std::iter::once("alignscope".to_string())
        .chain(std::env::args().skip(1).map(|s| if s.contains(' ') { format!("{s:?}") } else { s }))
        .collect::<Vec<_>>()
        .join(" ");
    let opts = ReportOptions {
        data: data.clone(),
        ctx,
        max_chunks: a.max_chunks,
        prompts: PromptSetOptions { prompts: a.prompts, prompt_tokens: a.prompt_tokens, max_new_tokens: a.max_new_tokens, sampling },
        exit_sweeps,
        command,
    };
    let bar = progress_bar();
    let mut report = build(&models, &docs, &opts, &encoder, embedder.clone(), &mut |done, total, what| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
        bar.set_message(what.to_string());
    })?;
    bar.set_message("drawing the figures".to_string());
    let files = write(&mut report, &a.out, a.png_scale)?;
    bar.finish_and_clear();
    super::out(&super::embedder_line(&embedder));
    for m in &report.models {
        super::out(&format!(
            "{} {}: COS–CKA agreement r = {}; 95% of the best accuracy at layer {}",
            m.role,
            m.checkpoint,
            crate::util::fmt_opt(m.agreement.pearson, 0, 3),
            m.depth_95.map(|d| d.to_string()).unwrap_or_else(|| "n/a".into())
        ));
    }
    super::out(&format!(
        "wrote {} files to {}: report.md, report.json, {} figures (SVG and PNG)",
        files.len(),
        a.out.display(),
        report.figures.len()
    ));
    Ok(())
}

#[derive(Args, Debug)]
pub struct EmbedArgs {
    /// Sentence encoder: a sentence-transformers BERT (folder, name or hub id)
    #[arg(long, default_value = crate::analysis::embedder::DEFAULT_EMBEDDER)]
    pub embedder: String,
    /// A text to embed (repeatable)
    #[arg(long)]
    pub text: Vec<String>,
    /// A file of texts to embed, one per line
    #[arg(long)]
    pub file: Option<PathBuf>,
    /// Device: auto, cpu, cuda or cuda:N
    #[arg(long, default_value = "auto")]
    pub device: String,
}

/// Prints one JSON object: the encoder and one embedding per text.
pub fn embed(a: EmbedArgs) -> Result<()> {
    let mut texts = a.text.clone();
    if let Some(f) = &a.file {
        texts.extend(read_text(f)?.lines().map(String::from));
    }
    if texts.is_empty() {
        bail!("nothing to embed: give --text or --file")
    }
    if a.embedder == "self" {
        bail!("--embedder self needs a checkpoint; `embed` runs sentence encoders only")
    }
    let device = parse_device(&a.device)?;
    let dir = crate::model::checkpoint::resolve(&a.embedder)
        .map_err(|e| anyhow::anyhow!("embedder {:?}: {}", a.embedder, crate::util::one_line(&e)))?;
    let enc = crate::analysis::embedder::BertEncoder::load_dir(&dir, &a.embedder, &device)?;
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let mut embeddings = vec![];
    // Batches of 32 keep padding waste and memory small.
    for batch in refs.chunks(32) {
        embeddings.extend(enc.embed(batch)?);
    }
    let v = serde_json::json!({
        "embedder": a.embedder,
        "dir": crate::paths::display_path(&dir),
        "max_seq_length": enc.max_len,
        "pooling": format!("{:?}", enc.pooling).to_lowercase(),
        "dim": embeddings.first().map(|e| e.len()).unwrap_or(0),
        "embeddings": embeddings,
    });
    super::out(&v.to_string());
    Ok(())
}
