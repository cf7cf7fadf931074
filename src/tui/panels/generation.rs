//! Depth-wise generation: the continuation produced when the model exits at the current
//! layer, streamed token by token for each checkpoint; or, in all-layers mode, the
//! continuations from every exit layer at once; or the decoding modes (early exit,
//! speculative: [`super::decoding`]).

use super::{clip, column_frame, column_title, columns, message, prompt_tail_span, show_token, spinner};
use crate::analysis::generate::StopReason;
use crate::tui::app::{App, GenMethod};
use crate::tui::column::LayerOutput;
use crate::tui::theme::Theme;
use ratatui::Frame;
use ratatui::layout::Rect;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Paragraph, Wrap};

pub fn render(app: &App, theme: &Theme, frame: &mut Frame, area: Rect) {
    for (i, r) in columns(area, app.columns.len()).into_iter().enumerate() {
        render_column(app, i, theme, frame, r);
    }
}

fn stop_text(o: &LayerOutput) -> String {
    let why = match o.stop {
        None => return format!("{} tokens…", o.tokens),
        Some(StopReason::MaxTokens) => "token limit",
        Some(StopReason::EndOfText) => "end of text",
        Some(StopReason::ContextFull) => "context full",
        Some(StopReason::Cancelled) => "cancelled",
    };
    format!("{} tokens · {why}", o.tokens)
}

fn render_column(app: &App, i: usize, theme: &Theme, frame: &mut Frame, area: Rect) {
    if app.decoding.method != GenMethod::ExitLayer {
        return super::decoding::render_column(app, i, theme, frame, area);
    }
    let c = &app.columns[i];
    let mut title = column_title(app, i, theme);
    let mode = if app.decoding.all_layers { "all layers".to_string() } else { format!("exit L{}", c.layer_at(app.layer)) };
    title.spans.push(Span::styled(format!("{mode} · {} ", app.decoding.label()), theme.title()));
    let Some(inner) = column_frame(app, i, title, theme, frame, area) else { return };
    if app.decoding.all_layers {
        render_all_layers(app, i, theme, frame, inner);
        return;
    }
    let layer = c.layer_at(app.layer);
    if layer == 0 {
        message(frame, inner, "Layer 0 is the embeddings: generation exits after a block, from layer 1 on (→).", theme.dim());
        return;
    }
    // The prompt's last line, then the continuation as it streams, with its own line breaks.
    let mut lines: Vec<Line> = Vec::new();
    let mut spans = vec![prompt_tail_span(&app.prompt, inner.width, theme)];
    let mut footer = String::new();
    match c.outputs.get(&layer) {
        Some(o) => {
            // Line breaks are shown (⏎, one per newline) and break the line once per run,
            // so that a model that emits many newlines does not push its text off screen.
            let mut rest = o.text.as_str();
            while let Some(i) = rest.find('\n') {
                spans.push(Span::styled(rest[..i].to_string(), theme.title()));
                let run = rest[i..].chars().take_while(|&c| c == '\n').count();
                spans.push(Span::styled("⏎".repeat(run), theme.dim()));
                lines.push(Line::from(std::mem::take(&mut spans)));
                rest = &rest[i + run..];
            }
            spans.push(Span::styled(rest.to_string(), theme.title()));
            if o.stop.is_none() {
                spans.push(Span::styled("▌", theme.busy()));
            }
            footer = stop_text(o);
        }
        None if c.generating || app.gen_due.is_some() => spans.push(Span::styled(format!(" {}", spinner(app.ticks)), theme.busy())),
        None => {}
    }
    lines.push(Line::from(spans));
    if !footer.is_empty() {
        lines.push(Line::raw(""));
        lines.push(Line::styled(footer, theme.dim()));
    }
    frame.render_widget(Paragraph::new(lines).wrap(Wrap { trim: false }), inner);
}

fn render_all_layers(app: &App, i: usize, theme: &Theme, frame: &mut Frame, inner: Rect) {
    let c = &app.columns[i];
    let n = c.n_layer();
    let current = c.layer_at(app.layer).max(1);
    let rows = (inner.height as usize).max(1);
    let first = super::predictions::window_start(current - 1, n, rows);
    let width = inner.width as usize;
    let mut lines = Vec::new();
    for l in (first + 1)..=(first + rows).min(n) {
        let label_style = if l == current { theme.selected() } else { theme.dim() };
        let mut spans = vec![Span::styled(format!("{l:>2}"), label_style), Span::raw(" ")];
        match c.outputs.get(&l) {
            Some(o) => {
                let mut text = show_token(&o.text).replace('␣', " ");
                if o.stop.is_none() {
                    text.push('▌');
                }
                let style = if l == current { theme.title() } else { ratatui::style::Style::new() };
                spans.push(Span::styled(clip(&text, width.saturating_sub(3)), style));
            }
            None if c.generating => spans.push(Span::styled("…", theme.dim())),
            None => {}
        }
        lines.push(Line::from(spans));
    }
    frame.render_widget(Paragraph::new(lines), inner);
}
