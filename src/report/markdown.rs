//! `report.md`: the figures and the tables, readable on GitHub.

use super::{ModelReport, Report};
use std::fmt::Write;

fn opt(v: Option<f64>, digits: usize) -> String {
    match v {
        Some(x) if x.is_finite() => format!("{x:.digits$}"),
        _ => "n/a".into(),
    }
}

fn pct(v: f64) -> String {
    if v.is_finite() { format!("{:.1}%", 100.0 * v) } else { "n/a".into() }
}

fn ppl(v: f64) -> String {
    if !v.is_finite() {
        "n/a".into()
    } else if v >= 1000.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

/// Text for a table cell: pipes escaped, line breaks shown as `\n`.
fn cell(s: &str) -> String {
    s.replace('\\', "\\\\").replace('|', "\\|").replace('\n', "\\n").replace('\r', "")
}

fn name(m: &ModelReport) -> String {
    crate::paths::short_name(&m.checkpoint)
}

pub fn render(r: &Report) -> String {
    let mut s = String::new();
    let names: Vec<String> = r.models.iter().map(|m| format!("{} `{}`", m.role, m.checkpoint)).collect();
    let _ = writeln!(s, "# alignscope report: {}\n", names.join(" vs "));
    let _ = writeln!(s, "Made by alignscope {} with `{}`.\n", r.alignscope_version, r.command);
    let m0 = &r.models[0];
    let _ = writeln!(
        s,
        "- text: `{}`, {} tokens; {} of {} tokens: similarity over {} positions, {} predictions per layer",
        r.data,
        r.text_tokens,
        crate::util::count_of(r.chunks, "chunk"),
        r.ctx,
        m0.similarity.positions,
        m0.eval_tokens
    );
    let sampling = match r.prompt_set.sampling {
        crate::analysis::generate::Sampling::Greedy => "greedy".to_string(),
        crate::analysis::generate::Sampling::TopP { p, temperature, seed } => format!("top-p {p}, temperature {temperature}, seed {seed}"),
    };
    let _ = writeln!(
        s,
        "- generations: {} prompt{} of {} tokens drawn evenly from the text, {} new tokens each ({sampling}), at every exit layer",
        r.prompts.len(),
        if r.prompts.len() == 1 { "" } else { "s" },
        r.prompt_set.prompt_tokens,
        r.prompt_set.max_new_tokens
    );
    let _ = match &r.embedder.note {
        Some(note) => writeln!(s, "- coherence: **self-embedding** `{}` — {note}", r.embedder.name),
        None => {
            writeln!(s, "- coherence: cosine of `{}` sentence embeddings of prompt and continuation ({})", r.embedder.name, r.embedder.kind)
        }
    };
    let _ = writeln!(s, "- every number is in `report.json` (per-layer arrays indexed by layer 0..L; undefined values are null)\n");

    let fig = |s: &mut String, stem: &str| {
        if let Some(f) = r.figures.iter().find(|f| f.name == stem) {
            let _ = writeln!(s, "![{}]({})\n", f.title, f.png);
            let _ = writeln!(s, "([SVG]({}))\n", f.svg);
        }
    };

    let _ = writeln!(s, "## Similarity between layers\n");
    let _ = writeln!(
        s,
        "Centered COS (per-position cosine after removing each layer's mean, averaged over positions) and linear CKA, \
         layer × layer over every position of the evaluated chunks; layer 0 is the token + position embedding.\n"
    );
    fig(&mut s, "similarity_cos");
    fig(&mut s, "similarity_cka");
    let _ = writeln!(s, "COS against CKA over the off-diagonal layer pairs:\n");
    let _ = writeln!(s, "| checkpoint | layer pairs | Pearson r (COS, CKA) | mean COS | mean CKA |");
    let _ = writeln!(s, "| --- | ---: | ---: | ---: | ---: |");
    for m in &r.models {
        use crate::analysis::similarity::{mean_defined, upper_triangle};
        let mean = |m: &[Vec<Option<f64>>]| mean_defined(upper_triangle(m));
        let _ = writeln!(
            s,
            "| {} {} | {} | {} | {} | {} |",
            m.role,
            name(m),
            m.agreement.pairs,
            opt(m.agreement.pearson, 3),
            opt(mean(&m.similarity.cos), 3),
            opt(mean(&m.similarity.cka), 3)
        );
    }
    let _ = writeln!(s);
    fig(&mut s, "agreement");

    let _ = writeln!(s, "## Per-layer quality\n");
    let _ = writeln!(
        s,
        "Every layer read through the one shared classifier `lm_head(ln_f(h^l))`. Diversity is \
         ∏ over n = 2..4 of unique / total n-grams of a continuation; coherence is the cosine between the \
         sentence embeddings of prompt and continuation; both are means over the prompts where they are defined.\n"
    );
    fig(&mut s, "quality");
    let roles: Vec<&ModelReport> = r.models.iter().collect();
    let mut header = String::from("| layer |");
    let mut align = String::from("| ---: |");
    for col in ["acc", "ppl", "COS last", "CKA last", "diversity", "coherence"] {
        for m in &roles {
            let _ = write!(header, " {col} {} |", m.role);
            align.push_str(" ---: |");
        }
    }
    let _ = writeln!(s, "{header}\n{align}");
    let layers = roles.iter().map(|m| m.layers).max().unwrap_or(0);
    for l in 0..=layers {
        let mut row = format!("| {l} |");
        let get = |m: &ModelReport, f: &dyn Fn(&ModelReport) -> String| if l <= m.layers { f(m) } else { String::new() };
        for f in [
            &(|m: &ModelReport| pct(m.per_layer.acc[l])) as &dyn Fn(&ModelReport) -> String,
            &|m: &ModelReport| ppl(m.per_layer.ppl[l]),
            &|m: &ModelReport| opt(m.per_layer.cos_last[l], 3),
            &|m: &ModelReport| opt(m.per_layer.cka_last[l], 3),
            &|m: &ModelReport| opt(m.per_layer.diversity[l], 3),
            &|m: &ModelReport| opt(m.per_layer.coherence[l], 3),
        ] {
            for m in &roles {
                let _ = write!(row, " {} |", get(m, f));
            }
        }
        let _ = writeln!(s, "{row}");
    }
    let _ = writeln!(s);
    for m in &r.models {
        let _ = writeln!(
            s,
            "- {} {}: the shallowest layer reaching 95% of the best accuracy is {}.",
            m.role,
            name(m),
            m.depth_95.map(|d| d.to_string()).unwrap_or_else(|| "n/a".into())
        );
    }
    let _ = writeln!(s);

    let _ = writeln!(s, "## Early exit\n");
    if r.models.iter().any(|m| m.exits.is_some()) {
        fig(&mut s, "early_exit");
        let _ = writeln!(s, "| checkpoint | threshold | accuracy | layer speedup | wall-clock speedup |");
        let _ = writeln!(s, "| --- | ---: | ---: | ---: | ---: |");
        for m in &r.models {
            if let Some(c) = &m.exits {
                for p in &c.points {
                    let _ = writeln!(
                        s,
                        "| {} {} | {} | {} | {:.2}× | {} |",
                        m.role,
                        name(m),
                        opt(p.threshold, 2),
                        pct(p.accuracy),
                        p.speedup,
                        p.wall_speedup.map(|w| format!("{w:.2}×")).unwrap_or_else(|| "n/a".into())
                    );
                }
                if let Some(f) = c.full_accuracy {
                    let _ = writeln!(s, "| {} {} | full model | {} | 1.00× | 1.00× |", m.role, name(m), pct(f));
                }
            }
        }
        let piped: Vec<String> = r.models.iter().filter(|m| m.exits.as_ref().is_some_and(|c| c.pipelined)).map(name).collect();
        if !piped.is_empty() {
            let _ = writeln!(
                s,
                "\nWall clock of {}: generation with the max-prob checks on a second thread (`alignscope exits --pipelined`).",
                piped.join(" and ")
            );
        }
        let _ = writeln!(s);
    } else {
        let _ = writeln!(s, "No exit sweep was given (`--exits FILE`, the JSON of `alignscope exits --json`).\n");
    }

    let _ = writeln!(s, "## Training\n");
    if r.models.iter().any(|m| m.training.is_some()) {
        fig(&mut s, "training");
        for m in &r.models {
            match &m.training {
                Some(t) => {
                    let last = t.evals.last();
                    let _ = writeln!(
                        s,
                        "- {} {}: {} steps{}.",
                        m.role,
                        name(m),
                        t.steps.len(),
                        last.map(|e| format!(
                            "; last held-out evaluation at step {}: CE {} at layer 1, {} at layer {}",
                            e.step,
                            opt(e.ce.get(1).copied().flatten(), 3),
                            opt(e.ce.last().copied().flatten(), 3),
                            e.ce.len() - 1
                        ))
                        .unwrap_or_default()
                    );
                }
                None => {
                    let _ = writeln!(s, "- {} {}: no metrics.jsonl.", m.role, name(m));
                }
            }
        }
        let _ = writeln!(s);
    } else {
        let _ = writeln!(s, "No checkpoint has a training history (metrics.jsonl).\n");
    }

    let _ = writeln!(s, "## Generations\n");
    if let Some(prompt) = r.prompts.first() {
        let _ = writeln!(s, "Prompt 1 of {}: `{}`\n", r.prompts.len(), cell(prompt));
        let mut header = String::from("| layer |");
        let mut align = String::from("| ---: |");
        for m in &r.models {
            let _ = write!(header, " {} {} |", m.role, name(m));
            align.push_str(" --- |");
        }
        let _ = writeln!(s, "{header}\n{align}");
        for l in 1..=layers {
            let mut row = format!("| {l} |");
            for m in &r.models {
                let text = m.generations.get(l - 1).and_then(|g| g.samples.first()).map(|x| cell(&x.text)).unwrap_or_default();
                let _ = write!(row, " {text} |");
            }
            let _ = writeln!(s, "{row}");
        }
        let _ = writeln!(s, "\nThe other prompts' generations are in `report.json`.");
    }
    s
}
