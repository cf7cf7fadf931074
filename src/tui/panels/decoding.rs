//! The generation view's decoding modes, per checkpoint side by side: the continuation as
//! it streams, each token coloured by the layer it left at (early exit) or marked as an
//! accepted draft, a rejected draft and the full model's replacement (speculative), with
//! live tokens/s, acceptance and the speedup over full-depth decoding.

use super::{column_frame, column_title, message, prompt_tail_span, spinner};
use crate::analysis::early_exit::ExitMeasure;
use crate::analysis::generate::StopReason;
use crate::tui::app::{App, GenMethod};
use crate::tui::column::DecodeOutput;
use crate::tui::theme::Theme;
use crate::tui::worker::{DecodeMethod, PieceKind};
use ratatui::Frame;
use ratatui::layout::Rect;
use ratatui::style::{Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Paragraph, Wrap};

/// The mode in words, for the column title.
fn mode_text(app: &App, method: Option<DecodeMethod>) -> String {
    let s = &app.decoding;
    match (s.method, method) {
        (_, Some(DecodeMethod::EarlyExit { threshold, measure })) => {
            // p: the largest probability (max-prob); cos: saturation.
            match measure {
                ExitMeasure::MaxProb => format!("early exit p≥{threshold:.2}"),
                ExitMeasure::Saturation => format!("early exit cos≥{threshold:.3}"),
            }
        }
        (_, Some(DecodeMethod::Speculative { draft_layer, draft_len, lookup, int8 })) => {
            let from = if int8 { "8-bit".to_string() } else { format!("L{draft_layer}") };
            format!("speculative {from}×{draft_len}{}", if lookup { " +repeats" } else { "" })
        }
        (GenMethod::Speculative, None) => "speculative".to_string(),
        _ => "early exit".to_string(),
    }
}

pub fn render_column(app: &App, i: usize, theme: &Theme, frame: &mut Frame, area: Rect) {
    let c = &app.columns[i];
    let n_layer = c.n_layer();
    let method = app.decoding.decode_method(c.layer_at(app.layer), n_layer);
    let mut title = column_title(app, i, theme);
    let mode = mode_text(app, method);
    let full = format!("{mode} · {} ", app.decoding.label());
    let room = area.width.saturating_sub(2) as usize;
    if title.width() + full.chars().count() <= room || c.info.is_none() {
        title.spans.push(Span::styled(full, theme.title()));
    } else {
        // Narrow (two columns at 80 wide): the threshold or the draft length matters more
        // than the layer count and the sampling, so those go first.
        title.spans.truncate(2);
        let mut text = format!(" · {mode} ");
        if title.width() + text.chars().count() > room {
            // Narrower still: "early exit cos≥0.970" → "exit cos≥0.970", "speculative L7×4" → "spec. L7×4".
            text = text.replacen("early exit", "exit", 1).replacen("speculative", "spec.", 1);
        }
        title.spans.push(Span::styled(text, theme.title()));
    }
    let Some(inner) = column_frame(app, i, title, theme, frame, area) else { return };
    if method.is_none() {
        message(frame, inner, "Speculative decoding drafts from an earlier layer: it needs at least 2 layers.", theme.dim());
        return;
    }
    let mut lines: Vec<Line> = Vec::new();
    let mut spans = vec![prompt_tail_span(&app.prompt, inner.width, theme)];
    let decoded = c.decoded.as_ref().filter(|d| Some(d.method) == method);
    match decoded {
        Some(d) => {
            for p in &d.pieces {
                let style = match &p.kind {
                    PieceKind::Exit(l) => theme.layer_color(*l, n_layer + 1),
                    PieceKind::Accepted => theme.ok(),
                    PieceKind::Corrected { rejected } => {
                        let shown = rejected.replace('\n', "⏎");
                        spans.push(Span::styled(format!("‹{shown}›"), theme.error().add_modifier(Modifier::CROSSED_OUT)));
                        theme.emphasis()
                    }
                    PieceKind::Full => theme.title(),
                };
                push_text(&mut lines, &mut spans, &p.text, style, theme);
            }
            if d.stop.is_none() {
                spans.push(Span::styled("▌", theme.busy()));
            }
        }
        None if c.generating || app.gen_due.is_some() => spans.push(Span::styled(format!(" {}", spinner(app.ticks)), theme.busy())),
        None => {}
    }
    lines.push(Line::from(spans));
    if let Some(d) = decoded {
        lines.push(Line::raw(""));
        lines.push(Line::styled(stats(d, n_layer), theme.dim()));
        lines.push(legend(d, n_layer, theme));
    }
    frame.render_widget(Paragraph::new(lines).wrap(Wrap { trim: false }), inner);
}

/// Appends `text` in `style`, breaking the line at newlines (shown as ⏎). A run of
/// newlines, also over several tokens, breaks the line once, so that a model that emits
/// many newlines does not push its text off screen.
fn push_text<'a>(lines: &mut Vec<Line<'a>>, spans: &mut Vec<Span<'a>>, text: &str, style: Style, theme: &Theme) {
    let mut rest = text;
    while let Some(i) = rest.find('\n') {
        let run = rest[i..].chars().take_while(|&c| c == '\n').count();
        let marks = Span::styled("⏎".repeat(run), theme.dim());
        match lines.last_mut() {
            // Only newlines since the last break: extend that break.
            Some(last) if i == 0 && spans.is_empty() => last.spans.push(marks),
            _ => {
                spans.push(Span::styled(rest[..i].to_string(), style));
                spans.push(marks);
                lines.push(Line::from(std::mem::take(spans)));
            }
        }
        rest = &rest[i + run..];
    }
    if !rest.is_empty() {
        spans.push(Span::styled(rest.to_string(), style));
    }
}

/// Tokens, speed and the speedups, in one line.
pub fn stats(d: &DecodeOutput, n_layer: usize) -> String {
    let mut parts = vec![format!("{} tokens", d.tokens)];
    parts.push(d.tokens_per_second().map_or("… tok/s".into(), |v| format!("{v:.0} tok/s")));
    match d.method {
        DecodeMethod::EarlyExit { .. } => {
            let layer = d.layer_speedup.or_else(|| d.running_layer_speedup(n_layer));
            parts.push(layer.map_or("layer speedup n/a".into(), |v| format!("layer speedup {v:.2}x")));
        }
        DecodeMethod::Speculative { .. } => {
            let acc = d.acceptance().map_or("acceptance n/a".into(), |v| format!("acceptance {:.0}%", 100.0 * v));
            parts.push(format!("{acc} ({}/{})", d.drafts.accepted, d.drafts.drafted));
            // Pipelined, the verifier takes the rows as they arrive, about one a pass:
            // tokens per pass says nothing there.
            if let Some(p) = d.forward_passes.filter(|&p| p > 0 && !d.pipelined) {
                parts.push(format!("{:.1} tokens/pass", d.tokens as f64 / p as f64));
            }
        }
    }
    if d.pipelined {
        parts.push(
            match d.method {
                DecodeMethod::EarlyExit { .. } => "checks on a 2nd thread",
                DecodeMethod::Speculative { .. } => "pipelined",
            }
            .into(),
        );
    }
    match (d.stop, d.speedup()) {
        (Some(_), Some(s)) => parts.push(format!("wall {s:.2}x vs full depth")),
        (Some(_), None) if d.tokens > 0 => parts.push("timing full depth…".into()),
        _ => {}
    }
    if let Some(stop) = d.stop {
        parts.push(
            match stop {
                StopReason::MaxTokens => "token limit",
                StopReason::EndOfText => "end of text",
                StopReason::ContextFull => "context full",
                StopReason::Cancelled => "cancelled",
            }
            .into(),
        );
    }
    parts.join(" · ")
}

/// What the colours and marks mean.
fn legend<'a>(d: &DecodeOutput, n_layer: usize, theme: &Theme) -> Line<'a> {
    match d.method {
        DecodeMethod::EarlyExit { .. } => {
            let mut spans = vec![Span::styled("exit layer ", theme.dim())];
            for l in 1..=n_layer {
                spans.push(Span::styled(format!("{l} "), theme.layer_color(l, n_layer + 1)));
            }
            Line::from(spans)
        }
        DecodeMethod::Speculative { .. } => Line::from(vec![
            Span::styled("accepted draft", theme.ok()),
            Span::styled(" · ", theme.dim()),
            Span::styled("‹rejected›", theme.error().add_modifier(Modifier::CROSSED_OUT)),
            Span::styled("replacement", theme.emphasis()),
            Span::styled(" · ", theme.dim()),
            Span::styled("full model", theme.title()),
        ]),
    }
}
