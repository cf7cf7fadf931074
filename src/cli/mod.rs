//! The command line: headless subcommands (inspect, generate, eval, train, tokenizer,
//! bench) and, with no subcommand, the explorer TUI. A thin client of the library.

pub mod decode;
pub mod report;
pub mod train;

use crate::analysis::early_exit::ExitMeasure;
use crate::analysis::embedder::{EmbedderChoice, EmbedderInfo, SentenceEncoder};
use crate::analysis::eval::{EvalOptions, EvalReport, evaluate};
use crate::analysis::generate::{GenerateOptions, Generation, Sampling, generate};
use crate::analysis::inspect::{LensAt, analyze};
use crate::analysis::quality::{coherences, diversity};
use crate::analysis::{TextStream, decode, encode_prompt};
use crate::corpus::{Role, read_documents, select};
use crate::model::Checkpoint;
use crate::model::device::parse_device;
use crate::paths::{DEFAULT_CKPT, DEFAULT_EVAL_TEXT};
use crate::util::fmt_opt;
use anyhow::{Result, bail};
use clap::{Args, Parser, Subcommand};
use serde_json::json;
use std::io::Write;
use std::ops::ControlFlow;
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(
    name = "alignscope",
    version,
    about = "Look inside GPT-2 layer by layer, and train every layer to exit through the shared classifier."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub explore: ExploreArgs,
}

/// Options of the explorer (no subcommand).
#[derive(Args, Debug, Clone)]
pub struct ExploreArgs {
    /// Checkpoint to explore: a folder, a name under checkpoints/, a hub id (gpt2, ...), or
    /// a recipe name (gpt2-aligned: its training is offered when it is not built yet)
    #[arg(long, global = false)]
    pub ckpt: Option<String>,
    /// Second checkpoint shown side by side (default: austen-standard beside the default;
    /// with --ckpt, its -standard/-aligned twin if built, else the base it was trained from)
    #[arg(long)]
    pub compare: Option<String>,
    /// Show a single checkpoint even when the default pair is available
    #[arg(long, conflicts_with = "compare")]
    pub single: bool,
    /// Device: auto, cpu, cuda or cuda:N
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Text for the layer-metrics view (held-out evaluation)
    #[arg(long)]
    pub eval_data: Option<PathBuf>,
    /// Initial prompt
    #[arg(long)]
    pub prompt: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Per-layer view of one prompt: COS / CKA matrices and the logit lens
    Inspect(InspectArgs),
    /// Generate from any exit layer (or all of them)
    Generate(GenerateArgs),
    /// Per-layer loss, perplexity, accuracy and similarity to the last layer over a text
    Eval(EvalArgs),
    /// Early-exit sweep over a text: accuracy, agreement with the last layer, mean exit layer,
    /// layer and wall-clock speedup per threshold (the paper's Table 1)
    Exits(decode::ExitsArgs),
    /// Train or fine-tune (aligned, standard or ce-reg loss), or resume a run
    Train(train::TrainArgs),
    /// Tokenizer tools
    Tokenizer {
        #[command(subcommand)]
        command: train::TokenizerCommand,
    },
    /// Speed benchmarks (forward + analysis, decode, training)
    Bench(crate::bench::BenchArgs),
    /// The paper's figures for a checkpoint or a pair, as files (report.md, report.json, SVG, PNG)
    Report(report::ReportArgs),
    /// Sentence embeddings of texts, as the coherence metric computes them (JSON)
    Embed(report::EmbedArgs),
    /// The device --device picks, and what it is (GPU name, compute capability, memory)
    Device(DeviceArgs),
}

#[derive(Args, Debug)]
pub struct DeviceArgs {
    /// Device: auto, cpu, cuda or cuda:N
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Print one JSON object instead of text
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct CommonArgs {
    /// Checkpoint: a folder, a name under checkpoints/, a hub id (gpt2, ...), or a built
    /// recipe (gpt2-aligned; one not built yet answers with the command that builds it)
    #[arg(long, default_value = DEFAULT_CKPT)]
    pub ckpt: String,
    /// Device: auto, cpu, cuda or cuda:N
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Print one JSON object instead of text
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct InspectArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Text to look inside
    #[arg(long)]
    pub prompt: String,
    /// Tokens the lens lists per layer, most probable first
    #[arg(long, default_value_t = 5)]
    pub top_k: usize,
    /// Token position for the lens (default: the last token)
    #[arg(long)]
    pub position: Option<usize>,
}

#[derive(Args, Debug)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Text to continue
    #[arg(long)]
    pub prompt: String,
    /// Exit layer 1..L, or `all` (default: L, the full model)
    #[arg(long)]
    pub exit_layer: Option<String>,
    /// Most tokens to generate (fewer at end-of-text or when the context is full)
    #[arg(long, default_value_t = 32)]
    pub max_new_tokens: usize,
    /// Greedy decoding (the default unless --top-p or --sample is given)
    #[arg(long, conflicts_with_all = ["top_p", "sample"])]
    pub greedy: bool,
    /// Nucleus sampling with this p
    #[arg(long)]
    pub top_p: Option<f64>,
    /// Nucleus sampling with p = 0.95
    #[arg(long)]
    pub sample: bool,
    /// Sampling temperature, with --top-p or --sample [default: 1]
    #[arg(long)]
    pub temperature: Option<f64>,
    /// Sampling seed, with --top-p or --sample [default: 0]
    #[arg(long)]
    pub seed: Option<u64>,
    /// Per-token early exit: leave at the first layer whose exit measure reaches this
    #[arg(long)]
    pub early_exit: Option<f64>,
    /// Early exit measure: max-prob (the shared classifier's largest probability, a head per
    /// layer) or saturation (cosine of the residual with the previous layer's, free)
    #[arg(long, value_parser = exit_measure_parser())]
    pub exit_measure: Option<ExitMeasure>,
    /// Lossless self-speculative decoding: draft with blocks 1..E and the shared head, verify
    /// with the full model; E in 1..L-1, or auto (calibrated on this prompt), or int8 (the
    /// model's own 8-bit copy drafts; greedy, on two threads as with --pipelined)
    #[arg(long)]
    pub speculative: Option<String>,
    /// Speculative decoding: most tokens drafted per verification (default 4, or calibrated)
    #[arg(long)]
    pub draft: Option<usize>,
    /// Speculative decoding: stop drafting when the draft's largest probability is below this
    /// (default 0: always draft --draft tokens, or calibrated)
    #[arg(long)]
    pub draft_confidence: Option<f64>,
    /// Two threads (greedy only). With --speculative: drafting and verification overlap
    /// (--draft then bounds how far the drafts run ahead of the verified tokens, default 8;
    /// 16 with int8).
    /// With --early-exit (max-prob): the checks run on the second thread while the blocks
    /// run on
    #[arg(long)]
    pub pipelined: bool,
    /// Speculative decoding (greedy): where the last 2 or more tokens occurred before in the
    /// prompt or the output, draft the token that followed them then instead of the draft
    /// layer's (prompt lookup); the output stays the full model's
    #[arg(long)]
    pub lookup: bool,
    /// Keep generating past end-of-text
    #[arg(long)]
    pub ignore_eos: bool,
    /// Sentence encoder for coherence: a sentence-transformers BERT (folder, name or hub
    /// id), or `self` (default: all-MiniLM-L6-v2 when it is here, else self). Text streamed
    /// to a terminal shows diversity and coherence only when this is given
    #[arg(long)]
    pub embedder: Option<String>,
}

#[derive(Args, Debug)]
pub struct EvalArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Data to evaluate on: a text, .jsonl or .parquet file, a folder (one named by split
    /// gives its validation split), or hf://datasets/OWNER/NAME/PATH
    #[arg(long, default_value = DEFAULT_EVAL_TEXT)]
    pub data: PathBuf,
    /// Tokens per chunk (default: 256, or the model's context if shorter)
    #[arg(long)]
    pub ctx: Option<usize>,
    /// Evaluate at most this many chunks (from the start of the text)
    #[arg(long)]
    pub max_chunks: Option<usize>,
    /// Also write the JSON report to this file (the text table still goes to stdout)
    #[arg(long)]
    pub save: Option<PathBuf>,
    /// Also generate from a prompt set drawn from the text at every exit layer and report
    /// diversity and coherence per layer
    #[arg(long)]
    pub quality: bool,
    /// --quality: prompts drawn evenly from the text (32 tokens each)
    #[arg(long, default_value_t = 16, requires = "quality")]
    pub prompts: usize,
    /// --quality: tokens generated per prompt and layer (greedy)
    #[arg(long, default_value_t = 32, requires = "quality")]
    pub max_new_tokens: usize,
    /// --quality: sentence encoder for coherence (a sentence-transformers BERT folder, name
    /// or hub id, or `self`; default: all-MiniLM-L6-v2 when it is here, else self)
    #[arg(long, requires = "quality")]
    pub embedder: Option<String>,
}

/// Runs the command line; errors come back to `main`, which prints one line.
pub fn run() -> Result<()> {
    // A negative number is read as an option's value (`--weight-decay -1` is then refused
    // by the option's own check, by name), not as an unknown option.
    let negatives = |c: clap::Command| c.mut_args(|a| if a.get_action().takes_values() { a.allow_negative_numbers(true) } else { a });
    let command = negatives(<Cli as clap::CommandFactory>::command()).mut_subcommands(negatives);
    let matches = command.try_get_matches().unwrap_or_else(|e| usage_error(e));
    let mut cli = <Cli as clap::FromArgMatches>::from_arg_matches(&matches).unwrap_or_else(|e| usage_error(e));
    if let Some(command) = &mut cli.command {
        apply_explorer_options(&matches, &cli.explore, command)?;
        refuse_settings_on_resume(&matches, command)?;
    }
    crate::hub::set_progress_sink(print_download);
    let ran = match cli.command {
        None => crate::tui::run(cli.explore),
        Some(Command::Inspect(a)) => inspect(a),
        Some(Command::Generate(a)) => generate_cmd(a),
        Some(Command::Eval(a)) => eval_cmd(a),
        Some(Command::Exits(a)) => decode::exits_cmd(a),
        Some(Command::Train(a)) => train::train(a),
        Some(Command::Tokenizer { command }) => train::tokenizer(command),
        Some(Command::Bench(a)) => crate::bench::run(a),
        Some(Command::Report(a)) => report::report(a),
        Some(Command::Embed(a)) => report::embed(a),
        Some(Command::Device(a)) => device_cmd(a),
    };
    ran.and(output_written())
}

/// Help and version as clap prints them; a mistake on the command line as one `error:`
/// line (clap's message and tip joined) and exit status 2, clap's, without the usage block
/// after it (`--help` shows it).
fn usage_error(e: clap::Error) -> ! {
    use clap::error::ErrorKind;
    if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand) {
        e.exit()
    }
    let text = e.render().to_string();
    let said: Vec<&str> = text
        .lines()
        .map(str::trim)
        .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more information"))
        .filter(|l| !l.is_empty())
        .collect();
    eprintln!("{}; see --help", said.join(" "));
    std::process::exit(2)
}

/// `train --resume` continues a run with the settings it saved (`training_state.json`);
/// only `--steps` (and the device and how progress is shown) may change. Any other setting
/// given with it is refused by name, not silently dropped.
fn refuse_settings_on_resume(matches: &clap::ArgMatches, command: &Command) -> Result<()> {
    use clap::parser::ValueSource;
    let Command::Train(t) = command else { return Ok(()) };
    let (Some(run), Some((_, sub))) = (&t.resume, matches.subcommand()) else { return Ok(()) };
    // What a resume may be told: the run to continue, how far, where, and how to show it.
    // Every other option is a setting of the run (one added later is covered without a
    // list); --ckpt and --init conflict with --resume in clap already.
    const MAY_CHANGE: [&str; 6] = ["resume", "steps", "device", "tf32", "log_lines", "json"];
    let train = <train::TrainArgs as clap::Args>::augment_args(clap::Command::new("train"));
    let given = train
        .get_arguments()
        .map(|arg| arg.get_id().as_str())
        .find(|id| !MAY_CHANGE.contains(id) && sub.value_source(id) == Some(ValueSource::CommandLine));
    if let Some(id) = given {
        bail!(
            "--resume {run} continues the run with its saved settings: --{} cannot change them (only --steps can; start a new run with --ckpt {run} --out NEW to change them)",
            id.replace('_', "-")
        )
    }
    Ok(())
}

/// Options written before a subcommand belong to the explorer. Each carries over to a
/// subcommand that takes the same option with the same meaning (`--ckpt` to inspect,
/// generate, eval, exits and report; `--compare` to exits and report; `--device` to every subcommand with
/// one); anything else, or a value given both before and after the subcommand, is
/// refused: never silently ignored. (`train --ckpt` is the base of a fine-tune, not the
/// checkpoint to explore, so it is refused there.)
fn apply_explorer_options(matches: &clap::ArgMatches, explore: &ExploreArgs, command: &mut Command) -> Result<()> {
    use clap::parser::ValueSource;
    let given = |id: &str| matches.value_source(id) == Some(ValueSource::CommandLine);
    let (name, sub) = matches.subcommand().expect("a subcommand was parsed");
    let sub_given = |id: &str| sub.value_source(id) == Some(ValueSource::CommandLine);
    // Where each option lands in the subcommand, if it takes it.
    let (ckpt, compare, device): (Option<&mut String>, Option<&mut Option<String>>, Option<&mut String>) = match command {
        Command::Inspect(a) => (Some(&mut a.common.ckpt), None, Some(&mut a.common.device)),
        Command::Generate(a) => (Some(&mut a.common.ckpt), None, Some(&mut a.common.device)),
        Command::Eval(a) => (Some(&mut a.common.ckpt), None, Some(&mut a.common.device)),
        Command::Exits(a) => (Some(&mut a.common.ckpt), Some(&mut a.compare), Some(&mut a.common.device)),
        Command::Report(a) => (Some(&mut a.ckpt), Some(&mut a.compare), Some(&mut a.device)),
        Command::Embed(a) => (None, None, Some(&mut a.device)),
        Command::Train(a) => (None, None, Some(&mut a.device)),
        Command::Bench(a) => (None, None, Some(&mut a.device)),
        Command::Device(a) => (None, None, Some(&mut a.device)),
        Command::Tokenizer { .. } => (None, None, None),
    };
    let explorer_only = |flag: &str| -> anyhow::Error {
        anyhow::anyhow!(
            "{flag} before `{name}` is an option of the explorer (alignscope with no subcommand); `{name}` does not take it there: write `alignscope {name} [OPTIONS]` (see alignscope {name} --help)"
        )
    };
    for (id, flag) in [("single", "--single"), ("eval_data", "--eval-data"), ("prompt", "--prompt")] {
        if given(id) {
            return Err(explorer_only(flag));
        }
    }
    // One option: carried over, or refused when the subcommand lacks it or has it already.
    let carry = |id: &str, flag: &str, before: &str, slot: Option<&mut String>| -> Result<()> {
        if !given(id) {
            return Ok(());
        }
        let Some(slot) = slot else { return Err(explorer_only(flag)) };
        if sub_given(id) && slot != before {
            bail!("{flag} given twice: {before} before `{name}` and {slot} after it; give it once")
        }
        *slot = before.to_string();
        Ok(())
    };
    carry("ckpt", "--ckpt", explore.ckpt.as_deref().unwrap_or_default(), ckpt)?;
    carry("device", "--device", &explore.device, device)?;
    match compare {
        Some(slot) if given("compare") => {
            let mut value = slot.clone().unwrap_or_default();
            carry("compare", "--compare", explore.compare.as_deref().unwrap_or_default(), Some(&mut value))?;
            *slot = Some(value);
        }
        _ => carry("compare", "--compare", "", None)?,
    }
    Ok(())
}

fn device_cmd(a: DeviceArgs) -> Result<()> {
    let device = parse_device(&a.device)?;
    let detail = crate::model::device::describe_device(&device);
    if a.json {
        out(&json!({"device": crate::model::device::device_name(&device), "detail": detail, "cuda_built": cfg!(feature = "cuda")})
            .to_string());
    } else {
        out(&detail);
    }
    Ok(())
}

/// Download progress on stderr: a live line on a terminal, else one line per file.
fn print_download(s: &crate::hub::DownloadStatus) {
    let mut err = std::io::stderr().lock();
    if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        let _ = write!(err, "\r\x1b[2K{}", s.line());
        if s.finished {
            let _ = writeln!(err);
        }
    } else if s.finished || s.starting {
        let _ = writeln!(err, "{}", s.line());
    }
}

fn open(common: &CommonArgs) -> Result<Checkpoint> {
    let device = parse_device(&common.device)?;
    crate::train::recipe::open(&common.ckpt, &device)
}

/// The first error met writing the command's output, reported when it ends: output that
/// could not be written (a full disk, a closed terminal) fails the command instead of
/// leaving exit 0. A closed pipe (`| head`) ends the process quietly, as SIGPIPE does.
static STDOUT_ERROR: std::sync::Mutex<Option<std::io::Error>> = std::sync::Mutex::new(None);

/// A line of the command's output on stdout.
fn out(s: &str) {
    write_out(format_args!("{s}\n"));
}

/// Output on stdout, as written (streamed text is flushed as it grows).
fn write_out(args: std::fmt::Arguments) {
    let mut o = std::io::stdout().lock();
    if let Err(e) = o.write_fmt(args).and_then(|()| o.flush()) {
        let mut first = STDOUT_ERROR.lock().unwrap_or_else(|p| p.into_inner());
        first.get_or_insert(e);
    }
}

/// Err when any of the command's output could not be written.
fn output_written() -> Result<()> {
    let flushed = std::io::stdout().lock().flush();
    let first = STDOUT_ERROR.lock().unwrap_or_else(|p| p.into_inner()).take();
    match first.map_or(flushed, Err) {
        Ok(()) => Ok(()),
        Err(e) => bail!("cannot write the output to standard output: {e}"),
    }
}

/// Writes a JSON report to `path` (`--save`) whole or not at all. An existing file is
/// replaced only when it holds JSON (an earlier report) and is none of `inputs`: a path
/// typed by mistake must not destroy a text or the data being evaluated.
fn save_json(path: &std::path::Path, value: &serde_json::Value, inputs: &[&std::path::Path]) -> Result<()> {
    let shown = path.display();
    if path.is_dir() {
        bail!("--save {shown} is a folder: give a file name")
    }
    if path.exists() {
        let same = |i: &&std::path::Path| matches!((path.canonicalize(), i.canonicalize()), (Ok(a), Ok(b)) if a == b);
        if inputs.iter().any(same) {
            bail!("--save {shown} is the data this command reads: not overwritten")
        }
        let report = std::fs::read(path).ok().is_some_and(|b| serde_json::from_slice::<serde_json::Value>(&b).is_ok());
        if !report {
            bail!("--save {shown} exists and is not a JSON report: not overwritten (remove it or pick another path)")
        }
    }
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    let written = std::fs::write(&tmp, serde_json::to_string_pretty(value)?).and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        bail!("cannot write --save {shown}: {e}")
    }
    Ok(())
}

fn inspect(a: InspectArgs) -> Result<()> {
    if a.top_k == 0 {
        bail!("--top-k must be at least 1 (the lens shows that many tokens per layer)")
    }
    let ck = open(&a.common)?;
    let ids = encode_prompt(&ck.tokenizer, &ck.model, &a.prompt)?;
    let at = match a.position {
        Some(p) => LensAt::Position(p),
        None => LensAt::Last,
    };
    let r = analyze(&ck.model, &ck.tokenizer, &ids, a.top_k, at)?;
    if a.common.json {
        let lens: Vec<_> = r.lens.iter().enumerate().map(|(l, v)| json!({"layer": l, "top": v[0]})).collect();
        out(&json!({
            "layers": r.layers,
            "input_ids": r.input_ids,
            "tokens": r.tokens,
            "position": r.lens_positions[0],
            "cos": r.cos,
            "cos_raw": r.cos_raw,
            "cka": r.cka,
            "adjacent_cos": crate::analysis::similarity::adjacent_cos(&r.cos),
            "norm_ratio": r.steps.norm_ratio,
            "cos_update": r.steps.cos_update,
            "lens": lens,
        })
        .to_string());
        return Ok(());
    }
    let pos = r.lens_positions[0];
    out(&format!("{} · {} layers · {} tokens", ck.name, r.layers, ids.len()));
    out(&format!("lens at position {pos} ({:?}):", r.tokens[pos]));
    for (l, v) in r.lens.iter().enumerate() {
        let tops: Vec<String> = v[0].iter().map(|t| format!("{:?} {:.3}", t.token, t.prob)).collect();
        out(&format!("  layer {l:>2}: {}", tops.join("  ")));
    }
    for (title, m) in [("COS (centered)", &r.cos), ("COS (raw)", &r.cos_raw), ("linear CKA", &r.cka)] {
        out(&format!("{title}:"));
        out(&format_matrix(m));
    }
    // Per residual step l -> l+1, as the JSON's adjacent_cos, norm_ratio and cos_update.
    out("residual steps l -> l+1:");
    let mut header = String::from("                     ");
    (0..r.layers).for_each(|l| header += &format!("{:>7}", format!("{l}>{}", l + 1)));
    out(&header);
    let rows = [
        ("COS(h^l, h^l+1)", crate::analysis::similarity::adjacent_cos(&r.cos)),
        ("|h^l| / |step|", r.steps.norm_ratio.clone()),
        ("cos(h^l, step)", r.steps.cos_update.clone()),
    ];
    for (name, values) in rows {
        out(&format!("  {name:<19}{}", values.iter().map(|v| fmt_opt(v.map(no_negative_zero), 7, 3)).collect::<String>()));
    }
    if ids.len() < 2 {
        out("(centered COS and CKA are undefined for a one-token prompt: its centered features are all zero)");
    }
    Ok(())
}

/// A layer × layer matrix as text (undefined entries as n/a), a column of 7 per entry so
/// a negative one keeps a space before it.
pub fn format_matrix(m: &[Vec<Option<f64>>]) -> String {
    let mut s = String::from("      ");
    for j in 0..m.len() {
        s += &format!("{j:>7}");
    }
    for (i, row) in m.iter().enumerate() {
        s += &format!("\n  {i:>2}  ");
        for v in row {
            s += &fmt_opt(v.map(no_negative_zero), 7, 3);
        }
    }
    s
}

/// A value that prints as -0.000 at three decimals prints as 0.000.
fn no_negative_zero(v: f64) -> f64 {
    if v < 0.0 && v > -0.0005 { 0.0 } else { v }
}

fn sampling_of(a: &GenerateArgs) -> Sampling {
    let p = match (a.top_p, a.sample) {
        (Some(p), _) => p,
        (None, true) => 0.95,
        (None, false) => return Sampling::Greedy,
    };
    Sampling::top_p(p, a.temperature, a.seed)
}

/// Refuses a sampling setting given without sampling: greedy decoding would ignore it.
pub fn check_sampling_settings(sampling: bool, temperature: Option<f64>, seed: Option<u64>) -> Result<()> {
    if !sampling && (temperature.is_some() || seed.is_some()) {
        let what = if temperature.is_some() { "--temperature" } else { "--seed" };
        bail!("{what} applies to sampling, and decoding is greedy without --top-p or --sample")
    }
    Ok(())
}

fn generate_cmd(a: GenerateArgs) -> Result<()> {
    decode::check_generate_flags(&a)?;
    let ck = open(&a.common)?;
    let ids = encode_prompt(&ck.tokenizer, &ck.model, &a.prompt)?;
    let sampling = sampling_of(&a);
    sampling.validate()?;
    let n_layer = ck.model.n_layer();
    let eos = if a.ignore_eos { None } else { ck.eos_id() };
    if a.early_exit.is_some() {
        return decode::early_exit_cmd(&a, &ck, &ids, sampling, eos);
    }
    if a.speculative.is_some() {
        return decode::speculative_cmd(&a, &ck, &ids, sampling, eos);
    }
    let layers: Vec<usize> = match a.exit_layer.as_deref() {
        None => vec![n_layer],
        Some("all") => (1..=n_layer).collect(),
        Some(s) => match s.parse::<usize>() {
            Ok(l) if (1..=n_layer).contains(&l) => vec![l],
            Ok(l) => bail!("exit layer {l} is out of range: choose 1..={n_layer} or all"),
            Err(_) => bail!("--exit-layer must be a layer number 1..={n_layer} or all, got {s:?}"),
        },
    };
    let stream = !a.common.json && layers.len() == 1 && std::io::IsTerminal::is_terminal(&std::io::stdout());
    let mut results = Vec::new();
    // Each generation's wall time (the prompt's pass included), for its tokens per second.
    let mut seconds = Vec::new();
    for &l in &layers {
        let opts = GenerateOptions { exit_layer: l, max_new_tokens: a.max_new_tokens, sampling, eos };
        let start = std::time::Instant::now();
        let g: Generation = if stream {
            // Stream text as it is produced: print the decoded growth of the continuation.
            write_out(format_args!("{}", a.prompt));
            let mut stream = TextStream::new(&ck.tokenizer);
            let g = generate(&ck.model, &ids, &opts, |t| {
                if let Some(new) = stream.push_new(t) {
                    write_out(format_args!("{new}"));
                }
                ControlFlow::Continue(())
            })?;
            out("");
            g
        } else {
            generate(&ck.model, &ids, &opts, |_| ControlFlow::Continue(()))?
        };
        seconds.push(start.elapsed().as_secs_f64());
        results.push(g);
    }
    if stream && a.embedder.is_none() {
        // On a terminal the streamed text is the whole output unless an encoder is named:
        // coherence embeds the prompt and the continuation (with the self-embedding, a
        // forward pass over the whole text), a cost per generated token not asked for.
        return Ok(());
    }
    let choice = EmbedderChoice::from_arg(a.embedder.as_deref());
    let encoder = SentenceEncoder::open(&choice, &ck.name, &ck.model, &ck.tokenizer, ck.model.device())?;
    let embedder = encoder.info(&choice);
    let texts: Vec<String> = results.iter().map(|g| decode(&ck.tokenizer, &g.ids)).collect();
    let coh = coherences(&encoder, &a.prompt, &texts.iter().map(String::as_str).collect::<Vec<_>>())?;
    let objs: Vec<_> = results
        .iter()
        .zip(texts)
        .zip(coh)
        .zip(&seconds)
        .map(|(((g, text), coherence), &secs)| {
            json!({
                "exit_layer": g.exit_layer,
                "ids": g.ids,
                "text": text,
                "stop": g.stop,
                "diversity": diversity(&g.ids),
                "coherence": coherence,
                "seconds": secs,
                "tok_per_s": (!g.ids.is_empty() && secs > 0.0).then(|| g.ids.len() as f64 / secs),
            })
        })
        .collect();
    if a.common.json {
        let mut head = json!({"prompt": a.prompt, "input_ids": ids, "sampling": sampling, "embedder": embedder});
        if a.exit_layer.as_deref() == Some("all") {
            head["generations"] = json!(objs);
        } else {
            let mut one = objs.into_iter().next().expect("one layer");
            for (k, v) in head.as_object().unwrap() {
                one[k] = v.clone();
            }
            head = one;
        }
        out(&head.to_string());
    } else {
        for (g, o) in results.iter().zip(&objs) {
            out(&format!(
                "── exit layer {} (diversity {}, coherence {}, {} tok/s)",
                g.exit_layer,
                fmt_opt(o["diversity"].as_f64(), 0, 3),
                fmt_opt(o["coherence"].as_f64(), 0, 3),
                fmt_opt(o["tok_per_s"].as_f64(), 0, 0)
            ));
            if !stream {
                out(&format!("{}{}", a.prompt, o["text"].as_str().unwrap()));
            }
        }
        out(&embedder_line(&embedder));
    }
    Ok(())
}

/// The documents of held-out data (a text, .jsonl or .parquet file, a folder — its
/// validation split where it has one — or a hub dataset), read the same way by every pass
/// over a text (eval, exits, report), with the name to show for them.
pub(crate) fn held_out_documents(data: &std::path::Path) -> Result<(Vec<String>, String)> {
    let data = crate::paths::resolve_asset(data);
    let selection = select(std::slice::from_ref(&data), Role::Eval)?;
    for note in &selection.notes {
        eprintln!("{note}");
    }
    let docs = read_documents(&selection.files)?;
    let shown = match selection.files.as_slice() {
        [one] if selection.notes.is_empty() => one.display().to_string(),
        _ => data.display().to_string(),
    };
    Ok((docs, shown))
}

fn eval_cmd(a: EvalArgs) -> Result<()> {
    if a.max_chunks == Some(0) {
        bail!("--max-chunks must be at least 1 (it is how many chunks of the text to evaluate)")
    }
    // The data is read before the model loads: bad data fails fast.
    let (docs, shown) = held_out_documents(&a.data)?;
    if a.quality && (a.prompts == 0 || a.max_new_tokens == 0) {
        bail!("--prompts and --max-new-tokens must be at least 1")
    }
    let ck = open(&a.common)?;
    let ctx = a.ctx.unwrap_or(ck.model.config.default_ctx());
    let max_tokens = a.max_chunks.map(|m| m.saturating_mul(ctx).saturating_add(1));
    let ids = crate::corpus::tokens::held_out_ids(&ck.tokenizer, ck.eos_id(), &docs, &shown, max_tokens)?;
    let opts = EvalOptions { ctx, max_chunks: a.max_chunks };
    let show = !a.common.json && std::io::IsTerminal::is_terminal(&std::io::stderr());
    let r = evaluate(&ck.model, &ids, &opts, |done, total| {
        if show {
            eprint!("\revaluating {done}/{total} chunks");
        }
        ControlFlow::Continue(())
    })?;
    if show {
        eprintln!();
    }
    let quality = if a.quality { Some(eval_quality(&a, &ck, &ids, show)?) } else { None };
    let mut value = serde_json::to_value(&r)?;
    if let Some(q) = &quality {
        value["quality"] = q.clone();
    }
    if let Some(path) = &a.save {
        save_json(path, &value, &[a.data.as_path()])?;
    }
    if a.common.json {
        out(&value.to_string());
    } else {
        out(&format_eval(&ck.name, &shown, &r));
        if let Some(q) = &quality {
            out(&format_quality(q));
        }
    }
    Ok(())
}

/// `eval --quality`: generations from a prompt set at every exit layer, as JSON.
fn eval_quality(a: &EvalArgs, ck: &Checkpoint, ids: &[u32], show: bool) -> Result<serde_json::Value> {
    use crate::analysis::quality::{PromptSetOptions, layer_quality, prompt_set};
    let opts = PromptSetOptions { prompts: a.prompts, prompt_tokens: 32, max_new_tokens: a.max_new_tokens, sampling: Sampling::Greedy };
    let room = ck.model.config.n_positions.saturating_sub(a.max_new_tokens).max(1);
    let prompts = prompt_set(ids, opts.prompts, opts.prompt_tokens.min(room));
    if prompts.is_empty() {
        bail!("the text is too short for a prompt of {} tokens", opts.prompt_tokens.min(room))
    }
    let choice = EmbedderChoice::from_arg(a.embedder.as_deref());
    let encoder = SentenceEncoder::open(&choice, &ck.name, &ck.model, &ck.tokenizer, ck.model.device())?;
    let q = layer_quality(&ck.model, &ck.tokenizer, &prompts, &opts, ck.eos_id(), &encoder, |done, total| {
        if show {
            eprint!("\rgenerating {done}/{total}");
        }
        ControlFlow::Continue(())
    })?;
    if show {
        eprintln!();
    }
    let per_layer = |f: &dyn Fn(&crate::analysis::quality::LayerQuality) -> Option<f64>| -> Vec<Option<f64>> {
        std::iter::once(None).chain(q.iter().map(f)).collect()
    };
    Ok(json!({
        "embedder": encoder.info(&choice),
        "prompt_set": opts,
        "prompts": prompts.len(),
        "diversity": per_layer(&|l| l.diversity),
        "coherence": per_layer(&|l| l.coherence),
    }))
}

fn format_quality(q: &serde_json::Value) -> String {
    let mut s =
        format!("generations: {} prompts × {} new tokens (greedy) at every exit layer\n", q["prompts"], q["prompt_set"]["max_new_tokens"]);
    s += "layer  diversity  coherence\n";
    let (d, c) = (q["diversity"].as_array().cloned().unwrap_or_default(), q["coherence"].as_array().cloned().unwrap_or_default());
    for (l, (d, c)) in d.iter().zip(&c).enumerate().skip(1) {
        s += &format!("{l:>5} {} {}\n", fmt_opt(d.as_f64(), 10, 4), fmt_opt(c.as_f64(), 10, 4));
    }
    let e: EmbedderInfo =
        serde_json::from_value(q["embedder"].clone()).unwrap_or(EmbedderInfo { name: "?".into(), kind: "?".into(), note: None });
    s += &embedder_line(&e);
    s
}

/// The line that says which sentence encoder measured coherence.
pub fn embedder_line(e: &EmbedderInfo) -> String {
    match &e.note {
        Some(note) => format!("coherence: self-embedding ({note})"),
        None if e.kind == "self-embedding" => format!("coherence: self-embedding of {}", e.name.trim_start_matches("self:")),
        None => format!("coherence: sentence encoder {}", e.name),
    }
}

pub fn format_eval(name: &str, data: &str, r: &EvalReport) -> String {
    let mut s = format!("{name} on {data}: {} of {} tokens, {} predictions\n", crate::util::count_of(r.chunks, "chunk"), r.ctx, r.tokens);
    s += "layer        CE         ppl     acc   COS_last  CKA_last\n";
    for l in 0..=r.layers {
        s += &format!(
            "{l:>5} {:>9.4} {:>11.2} {:>7.4} {} {}\n",
            r.ce[l],
            r.ppl[l],
            r.acc[l],
            fmt_opt(r.cos_last[l], 10, 4),
            fmt_opt(r.cka_last[l], 9, 4)
        );
    }
    if let Some(d) = r.min_depth_reaching(0.95) {
        s += &format!("shallowest layer reaching 95% of the best accuracy: {d}");
    }
    s
}

/// Parses an early-exit measure by its name; the engine's enum knows nothing of clap, and
/// help lists the names.
pub(crate) fn exit_measure_parser() -> impl clap::builder::TypedValueParser<Value = ExitMeasure> {
    use clap::builder::TypedValueParser;
    clap::builder::PossibleValuesParser::new(ExitMeasure::ALL.map(ExitMeasure::name))
        .map(|name| ExitMeasure::from_name(&name).expect("clap admits only the measures' own names"))
}
