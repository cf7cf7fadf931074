//! Figures as files: a figure is data (panels of heatmaps, lines or scatter points) drawn
//! by plotters to SVG and to PNG. The PNG's text is drawn with a font compiled into the
//! binary (DejaVu Sans, assets/fonts/), so figures come out the same on a machine with no
//! system fonts.

use anyhow::{Result, anyhow};
use plotters::chart::SeriesAnno;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::colors::colormaps::ViridisRGB;
use std::path::{Path, PathBuf};

/// The font every figure uses, registered with plotters as "sans-serif".
static FONT: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans.ttf");
const FAMILY: &str = "sans-serif";

fn register_font() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // The font is compiled in, so it always parses; a failure here is a build defect.
        if plotters::style::register_font(FAMILY, FontStyle::Normal, FONT).is_err() {
            panic!("the embedded DejaVu Sans font does not parse");
        }
    });
}

/// How a heatmap maps values to colour.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ColorScale {
    /// Viridis from `min` to `max`.
    Sequential { min: f64, max: f64 },
    /// Blue (negative) – white (0) – red (positive), symmetric around 0 up to `max_abs`.
    Diverging { max_abs: f64 },
}

/// A line or a set of points: `(x, y)`, where an undefined `y` breaks the line.
#[derive(Debug, Clone)]
pub struct Series {
    pub label: String,
    pub color: RGBColor,
    pub points: Vec<(f64, Option<f64>)>,
    pub markers: bool,
    pub line: bool,
    pub dashed: bool,
}

impl Series {
    pub fn line(label: impl Into<String>, color: RGBColor, points: Vec<(f64, Option<f64>)>) -> Self {
        Self { label: label.into(), color, points, markers: true, line: true, dashed: false }
    }

    pub fn points(label: impl Into<String>, color: RGBColor, points: Vec<(f64, Option<f64>)>) -> Self {
        Self { label: label.into(), color, points, markers: true, line: false, dashed: false }
    }

    /// A plain line without markers (for long curves such as training steps).
    pub fn curve(label: impl Into<String>, color: RGBColor, points: Vec<(f64, Option<f64>)>) -> Self {
        Self { label: label.into(), color, points, markers: false, line: true, dashed: false }
    }
}

#[derive(Debug, Clone)]
pub enum Panel {
    /// A square matrix, row 0 at the top, with a colour bar; undefined entries are grey.
    Heatmap { title: String, matrix: Vec<Vec<Option<f64>>>, scale: ColorScale, axis: String, bar: String },
    /// Curves over a shared x axis.
    Lines {
        title: String,
        x_label: String,
        y_label: String,
        log_y: bool,
        /// Ticks at integers only (layers).
        integer_x: bool,
        series: Vec<Series>,
        /// Where the legend goes, if there is one.
        legend: Option<SeriesLabelPosition>,
        /// An extra line `y = x` (for agreement scatters).
        diagonal: bool,
    },
    /// A panel with only a message (e.g. "no data").
    Note { title: String, text: String },
    /// A labelled grid of short texts on coloured cells (the logit lens: rows are layers,
    /// columns positions, each cell a token coloured by its probability).
    Grid {
        title: String,
        rows: Vec<String>,
        cols: Vec<String>,
        cells: Vec<Vec<Option<GridCell>>>,
        row_label: String,
        col_label: String,
        bar: String,
    },
    /// Lines of text (generations), each with a colour.
    Text { title: String, lines: Vec<(String, RGBColor)> },
}

impl Panel {
    /// The `A − B` heatmap of two layer × layer matrices of `metric`, on a diverging scale
    /// symmetric around 0 (rounded up to the hundredth).
    pub fn difference(diff: Vec<Vec<Option<f64>>>, metric: &str) -> Panel {
        let max_abs = diff.iter().flatten().flatten().map(|x| x.abs()).fold(0.0, f64::max);
        Panel::Heatmap {
            title: "A − B".into(),
            matrix: diff,
            scale: ColorScale::Diverging { max_abs: (max_abs * 100.0).ceil() / 100.0 },
            axis: "layer".into(),
            bar: format!("Δ {metric}"),
        }
    }
}

/// One cell of a [`Panel::Grid`]: its text, the value its colour shows (0..1) and whether
/// it is marked (the lens top-1 equals the actual next token).
#[derive(Debug, Clone, PartialEq)]
pub struct GridCell {
    pub text: String,
    pub value: f64,
    pub marked: bool,
}

#[derive(Debug, Clone)]
pub struct Figure {
    pub title: String,
    pub panels: Vec<Panel>,
    pub columns: usize,
    /// One panel's size in SVG pixels.
    pub panel_size: (u32, u32),
}

/// The files a figure was written to.
#[derive(Debug, Clone)]
pub struct Written {
    pub svg: PathBuf,
    pub png: PathBuf,
}

/// The PNG is drawn at this multiple of the SVG size by default, so that it is sharp in
/// print.
pub const PNG_SCALE: f64 = 2.0;

/// Writes `stem.svg` and `stem.png`, the PNG at `png_scale` times the SVG's size.
pub fn write_figure(fig: &Figure, stem: &Path, png_scale: f64) -> Result<Written> {
    register_font();
    let svg = stem.with_extension("svg");
    let png = stem.with_extension("png");
    let (w, h) = fig_size(fig);
    {
        let root = SVGBackend::new(&svg, (w, h)).into_drawing_area();
        draw_figure(&root, fig, 1.0).map_err(|e| anyhow!("cannot draw {}: {e}", svg.display()))?;
        root.present().map_err(|e| anyhow!("cannot write {}: {e}", svg.display()))?;
    }
    {
        let size = ((w as f64 * png_scale) as u32, (h as f64 * png_scale) as u32);
        let root = BitMapBackend::new(&png, size).into_drawing_area();
        draw_figure(&root, fig, png_scale).map_err(|e| anyhow!("cannot draw {}: {e}", png.display()))?;
        root.present().map_err(|e| anyhow!("cannot write {}: {e}", png.display()))?;
    }
    Ok(Written { svg, png })
}

const TITLE_H: u32 = 36;

fn fig_size(fig: &Figure) -> (u32, u32) {
    let cols = fig.columns.max(1).min(fig.panels.len().max(1));
    let rows = fig.panels.len().div_ceil(cols).max(1);
    // Wide enough for the title (DejaVu Sans at 17 px averages under 10 px a character).
    let title_w = fig.title.chars().count() as u32 * 10 + 40;
    ((fig.panel_size.0 * cols as u32).max(title_w), fig.panel_size.1 * rows as u32 + TITLE_H)
}

type DrawResult<T, DB> = std::result::Result<T, DrawingAreaErrorKind<<DB as DrawingBackend>::ErrorType>>;

fn font(size: f64, s: f64) -> FontDesc<'static> {
    (FAMILY, size * s).into_font()
}

fn draw_figure<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, fig: &Figure, s: f64) -> DrawResult<(), DB> {
    root.fill(&WHITE)?;
    let (top, body) = root.split_vertically((TITLE_H as f64 * s) as u32);
    let (tw, th) = top.dim_in_pixel();
    top.draw(&Text::new(
        fig.title.clone(),
        ((tw / 2) as i32, (th / 2) as i32),
        font(17.0, s).color(&BLACK).pos(plotters::style::text_anchor::Pos::new(
            plotters::style::text_anchor::HPos::Center,
            plotters::style::text_anchor::VPos::Center,
        )),
    ))?;
    let cols = fig.columns.max(1).min(fig.panels.len().max(1));
    let rows = fig.panels.len().div_ceil(cols).max(1);
    let areas = body.split_evenly((rows, cols));
    for (panel, area) in fig.panels.iter().zip(areas.iter()) {
        match panel {
            Panel::Heatmap { title, matrix, scale, axis, bar } => heatmap(area, title, matrix, *scale, axis, bar, s)?,
            Panel::Lines { .. } => lines(area, panel, s)?,
            Panel::Note { title, text } => note(area, title, text, s)?,
            Panel::Grid { title, rows, cols, cells, row_label, col_label, bar } => {
                grid(area, title, rows, cols, cells, (row_label, col_label, bar), s)?
            }
            Panel::Text { title, lines } => text_lines(area, title, lines, s)?,
        }
    }
    Ok(())
}

fn note<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, title: &str, text: &str, s: f64) -> DrawResult<(), DB> {
    let area = area.titled(title, font(14.0, s))?;
    let (w, h) = area.dim_in_pixel();
    area.draw(&Text::new(
        text.to_string(),
        ((w / 2) as i32, (h / 2) as i32),
        font(12.0, s).color(&RGBColor(90, 90, 90)).pos(plotters::style::text_anchor::Pos::new(
            plotters::style::text_anchor::HPos::Center,
            plotters::style::text_anchor::VPos::Center,
        )),
    ))?;
    Ok(())
}

fn centered(size: f64, s: f64, color: RGBColor) -> TextStyle<'static> {
    font(size, s)
        .color(&color)
        .pos(plotters::style::text_anchor::Pos::new(plotters::style::text_anchor::HPos::Center, plotters::style::text_anchor::VPos::Center))
}

/// At most `n` characters, with an ellipsis when cut.
fn clip_chars(t: &str, n: usize) -> String {
    if t.chars().count() <= n { t.to_string() } else { t.chars().take(n.saturating_sub(1)).chain(std::iter::once('…')).collect() }
}

fn grid<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    title: &str,
    rows: &[String],
    cols: &[String],
    cells: &[Vec<Option<GridCell>>],
    labels: (&str, &str, &str),
    s: f64,
) -> DrawResult<(), DB> {
    let area = area.titled(title, font(14.0, s))?;
    let (w, h) = area.dim_in_pixel();
    let (left, top, bar_w, bottom) = ((48.0 * s) as i32, (40.0 * s) as i32, (70.0 * s) as i32, (30.0 * s) as i32);
    let gw = (w as i32 - left - bar_w).max(1);
    let gh = (h as i32 - top - bottom).max(1);
    let (nr, nc) = (rows.len().max(1) as i32, cols.len().max(1) as i32);
    let (cw, ch) = (gw / nc, gh / nr);
    let chars = ((cw as f64 / (7.0 * s)).floor() as usize).max(2);
    let size = (11.0f64).min(ch as f64 / s * 0.55);
    let scale = ColorScale::Sequential { min: 0.0, max: 1.0 };
    for (r, row) in cells.iter().enumerate() {
        for (c, cell) in row.iter().enumerate() {
            let (x0, y0) = (left + c as i32 * cw, top + r as i32 * ch);
            let Some(cell) = cell else { continue };
            let fill = color_of(scale, cell.value);
            area.draw(&Rectangle::new([(x0, y0), (x0 + cw, y0 + ch)], fill.filled()))?;
            if cell.marked {
                area.draw(&Rectangle::new(
                    [(x0 + 1, y0 + 1), (x0 + cw - 1, y0 + ch - 1)],
                    RGBColor(220, 30, 30).stroke_width((2.0 * s) as u32),
                ))?;
            }
            // Light text on the dark end of viridis, dark text on the light end.
            let ink = if cell.value < 0.55 { WHITE } else { BLACK };
            area.draw(&Text::new(clip_chars(&cell.text, chars), (x0 + cw / 2, y0 + ch / 2), centered(size, s, ink)))?;
        }
    }
    let label = RGBColor(40, 40, 40);
    for (r, name) in rows.iter().enumerate() {
        area.draw(&Text::new(name.clone(), (left - (14.0 * s) as i32, top + r as i32 * ch + ch / 2), centered(11.0, s, label)))?;
    }
    for (c, name) in cols.iter().enumerate() {
        area.draw(&Text::new(
            clip_chars(name, chars),
            (left + c as i32 * cw + cw / 2, top - (12.0 * s) as i32),
            centered(size.max(8.0), s, label),
        ))?;
    }
    area.draw(&Text::new(labels.1.to_string(), (left + gw / 2, h as i32 - bottom / 2), centered(12.0, s, label)))?;
    area.draw(&Text::new(labels.0.to_string(), ((24.0 * s) as i32, top - (12.0 * s) as i32), centered(11.0, s, label)))?;
    // The colour bar of probabilities.
    let bx = left + gw + (16.0 * s) as i32;
    let bwid = (16.0 * s) as i32;
    let steps = 100;
    for i in 0..steps {
        let y1 = top + gh - (gh * i / steps);
        let y0 = top + gh - (gh * (i + 1) / steps);
        area.draw(&Rectangle::new([(bx, y0), (bx + bwid, y1)], color_of(scale, (i as f64 + 0.5) / steps as f64).filled()))?;
    }
    area.draw(&Rectangle::new([(bx, top), (bx + bwid, top + gh)], BLACK.stroke_width(1)))?;
    for t in [0.0, 0.5, 1.0] {
        let y = top + gh - (gh as f64 * t) as i32;
        area.draw(&Text::new(format!("{t:.1}"), (bx + bwid + (14.0 * s) as i32, y), centered(10.0, s, label)))?;
    }
    area.draw(&Text::new(labels.2.to_string(), (bx + bwid / 2, top - (12.0 * s) as i32), centered(10.0, s, label)))?;
    Ok(())
}

fn text_lines<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, title: &str, lines: &[(String, RGBColor)], s: f64) -> DrawResult<(), DB> {
    let area = area.titled(title, font(14.0, s))?;
    let (w, h) = area.dim_in_pixel();
    let line_h = (17.0 * s) as i32;
    let chars = ((w as f64 - 20.0 * s) / (6.6 * s)).max(10.0) as usize;
    let mut y = (8.0 * s) as i32;
    for (text, color) in lines {
        if y + line_h > h as i32 {
            break;
        }
        area.draw(&Text::new(clip_chars(text, chars), ((10.0 * s) as i32, y), font(11.0, s).color(color)))?;
        y += line_h;
    }
    Ok(())
}

/// Blue – white – red through a few anchors of ColorBrewer's RdBu, for signed differences.
fn diverging(t: f64) -> RGBColor {
    const ANCHORS: [(f64, (f64, f64, f64)); 5] = [
        (0.0, (33.0, 102.0, 172.0)),
        (0.25, (103.0, 169.0, 207.0)),
        (0.5, (247.0, 247.0, 247.0)),
        (0.75, (239.0, 138.0, 98.0)),
        (1.0, (178.0, 24.0, 43.0)),
    ];
    let t = t.clamp(0.0, 1.0);
    let i = ANCHORS.iter().rposition(|a| a.0 <= t).unwrap_or(0).min(ANCHORS.len() - 2);
    let (t0, c0) = ANCHORS[i];
    let (t1, c1) = ANCHORS[i + 1];
    let f = (t - t0) / (t1 - t0);
    let mix = |a: f64, b: f64| (a + (b - a) * f).round() as u8;
    RGBColor(mix(c0.0, c1.0), mix(c0.1, c1.1), mix(c0.2, c1.2))
}

fn color_of(scale: ColorScale, v: f64) -> RGBColor {
    if !v.is_finite() {
        return RGBColor(200, 200, 200);
    }
    match scale {
        ColorScale::Sequential { min, max } => {
            let v = v.clamp(min, max);
            ViridisRGB::get_color_normalized(v, min, max)
        }
        ColorScale::Diverging { max_abs } => {
            let m = if max_abs > 0.0 { max_abs } else { 1.0 };
            diverging(0.5 + 0.5 * (v / m))
        }
    }
}

fn scale_range(scale: ColorScale) -> (f64, f64) {
    match scale {
        ColorScale::Sequential { min, max } => (min, max),
        ColorScale::Diverging { max_abs } => {
            let m = if max_abs > 0.0 { max_abs } else { 1.0 };
            (-m, m)
        }
    }
}

/// Every `step`-th layer is labelled so that labels never collide.
fn label_step(k: usize) -> usize {
    k.div_ceil(13).max(1)
}

fn heatmap<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    title: &str,
    m: &[Vec<Option<f64>>],
    scale: ColorScale,
    axis: &str,
    bar: &str,
    s: f64,
) -> DrawResult<(), DB> {
    let k = m.len();
    let (w, _) = area.dim_in_pixel();
    let bar_w = (78.0 * s) as u32;
    let (left, right) = area.split_horizontally(w.saturating_sub(bar_w));
    let step = label_step(k);
    let mut chart = ChartBuilder::on(&left)
        .caption(title, font(14.0, s))
        .margin((8.0 * s) as u32)
        .x_label_area_size((34.0 * s) as u32)
        .y_label_area_size((40.0 * s) as u32)
        .build_cartesian_2d((0..k as i32 - 1).into_segmented(), (0..k as i32 - 1).into_segmented())?;
    let kk = k as i32;
    let fmt_x = move |v: &SegmentValue<i32>| match v {
        SegmentValue::CenterOf(i) if (*i as usize).is_multiple_of(step) => i.to_string(),
        _ => String::new(),
    };
    let fmt_y = move |v: &SegmentValue<i32>| match v {
        SegmentValue::CenterOf(i) if ((kk - 1 - *i) as usize).is_multiple_of(step) => (kk - 1 - i).to_string(),
        _ => String::new(),
    };
    chart
        .configure_mesh()
        .disable_mesh()
        .x_labels(k + 1)
        .y_labels(k + 1)
        .x_label_formatter(&fmt_x)
        .y_label_formatter(&fmt_y)
        .x_desc(axis)
        .y_desc(axis)
        .label_style(font(11.0, s))
        .axis_desc_style(font(12.0, s))
        .draw()?;
    chart.draw_series((0..k).flat_map(|i| {
        (0..k).map(move |j| {
            // Row i is drawn i rows from the top.
            let y = (k - 1 - i) as i32;
            Rectangle::new(
                [(SegmentValue::Exact(j as i32), SegmentValue::Exact(y)), (SegmentValue::Exact(j as i32 + 1), SegmentValue::Exact(y + 1))],
                color_of(scale, m[i][j].unwrap_or(f64::NAN)).filled(),
            )
        })
    }))?;
    // The colour bar.
    let (lo, hi) = scale_range(scale);
    let mut bar_chart = ChartBuilder::on(&right)
        .margin_top((34.0 * s) as u32)
        .margin_bottom((42.0 * s) as u32)
        .margin_right((4.0 * s) as u32)
        .y_label_area_size((44.0 * s) as u32)
        .build_cartesian_2d(0f64..1f64, lo..hi)?;
    bar_chart
        .configure_mesh()
        .disable_mesh()
        .disable_x_axis()
        .y_labels(6)
        .y_desc(bar)
        .label_style(font(10.0, s))
        .axis_desc_style(font(11.0, s))
        // `+ 0.0` turns -0.00 into 0.00.
        .y_label_formatter(&|v: &f64| format!("{:.2}", (v * 100.0).round() / 100.0 + 0.0))
        .draw()?;
    let steps = 120;
    bar_chart.draw_series((0..steps).map(|i| {
        let a = lo + (hi - lo) * i as f64 / steps as f64;
        let b = lo + (hi - lo) * (i + 1) as f64 / steps as f64;
        Rectangle::new([(0.0, a), (1.0, b)], color_of(scale, (a + b) / 2.0).filled())
    }))?;
    bar_chart.draw_series(std::iter::once(Rectangle::new([(0.0, lo), (1.0, hi)], BLACK.stroke_width(1))))?;
    Ok(())
}

/// A range that holds every value with a little room, for linear or log axes.
fn value_range(values: impl Iterator<Item = f64>, log: bool) -> (f64, f64) {
    let v: Vec<f64> = values.filter(|x| x.is_finite() && (!log || *x > 0.0)).collect();
    if v.is_empty() {
        return if log { (1.0, 10.0) } else { (0.0, 1.0) };
    }
    let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if log {
        let (l, h) = (lo.log10(), hi.log10());
        let pad = ((h - l) * 0.06).max(0.02);
        (10f64.powf(l - pad), 10f64.powf(h + pad))
    } else {
        let pad = ((hi - lo) * 0.06).max(if hi == lo { hi.abs().max(1.0) * 0.05 } else { 0.0 });
        (lo - pad, hi + pad)
    }
}

/// Splits points into runs of defined values (an undefined value breaks the line).
fn runs(points: &[(f64, Option<f64>)]) -> Vec<Vec<(f64, f64)>> {
    let mut out = vec![];
    let mut cur = vec![];
    for &(x, y) in points {
        match y {
            Some(y) if y.is_finite() => cur.push((x, y)),
            _ => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
            }
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

fn fmt_tick(v: f64) -> String {
    let a = v.abs();
    if a == 0.0 {
        "0".into()
    } else if a >= 10000.0 {
        format!("{:.0}k", v / 1000.0)
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}").trim_end_matches(".0").to_string()
    } else if a >= 1.0 {
        format!("{v:.2}").trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        format!("{v:.3}").trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

fn lines<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, panel: &Panel, s: f64) -> DrawResult<(), DB> {
    let Panel::Lines { title, x_label, y_label, log_y, integer_x, series, legend, diagonal } = panel else { unreachable!() };
    let all = || series.iter().flat_map(|se| se.points.iter());
    let (x0, x1) = value_range(all().map(|p| p.0), false);
    let (x0, x1) = if *integer_x {
        let lo = all().map(|p| p.0).fold(f64::INFINITY, f64::min);
        let hi = all().map(|p| p.0).fold(f64::NEG_INFINITY, f64::max);
        if lo.is_finite() { (lo - 0.4, hi + 0.4) } else { (x0, x1) }
    } else {
        (x0, x1)
    };
    let (mut y0, mut y1) = value_range(all().filter_map(|p| p.1), *log_y);
    if *diagonal {
        let (a, b) = (x0.min(y0), x1.max(y1));
        (y0, y1) = (a, b);
    }
    let mut builder = ChartBuilder::on(area);
    builder
        .caption(title, font(14.0, s))
        .margin((10.0 * s) as u32)
        .margin_right((16.0 * s) as u32)
        .x_label_area_size((38.0 * s) as u32)
        .y_label_area_size((54.0 * s) as u32);
    let mesh_style = |c: RGBColor| c.mix(0.25);
    if *log_y {
        let mut chart = builder.build_cartesian_2d(x0..x1, (y0..y1).log_scale())?;
        let mut mesh = chart.configure_mesh();
        mesh.light_line_style(WHITE.mix(0.0))
            .bold_line_style(mesh_style(RGBColor(150, 150, 150)))
            .x_desc(x_label.as_str())
            .y_desc(y_label.as_str())
            .label_style(font(11.0, s))
            .axis_desc_style(font(12.0, s))
            .y_label_formatter(&|v: &f64| fmt_tick(*v))
            .x_label_formatter(&|v: &f64| fmt_tick(*v));
        if *integer_x {
            mesh.x_labels(((x1 - x0).round() as usize + 1).min(14));
        }
        mesh.draw()?;
        draw_series_on(&mut chart, series, s)?;
        if let Some(pos) = legend {
            draw_legend(&mut chart, pos, s)?;
        }
    } else {
        let mut chart = builder.build_cartesian_2d(x0..x1, y0..y1)?;
        let mut mesh = chart.configure_mesh();
        mesh.light_line_style(WHITE.mix(0.0))
            .bold_line_style(mesh_style(RGBColor(150, 150, 150)))
            .x_desc(x_label.as_str())
            .y_desc(y_label.as_str())
            .label_style(font(11.0, s))
            .axis_desc_style(font(12.0, s))
            .y_label_formatter(&|v: &f64| fmt_tick(*v))
            .x_label_formatter(&|v: &f64| fmt_tick(*v));
        if *integer_x {
            mesh.x_labels(((x1 - x0).round() as usize + 1).min(14));
        }
        mesh.draw()?;
        if *diagonal {
            chart
                .draw_series(std::iter::once(PathElement::new(vec![(y0, y0), (y1, y1)], RGBColor(120, 120, 120).stroke_width(s as u32))))?;
        }
        draw_series_on(&mut chart, series, s)?;
        if let Some(pos) = legend {
            draw_legend(&mut chart, pos, s)?;
        }
    }
    Ok(())
}

fn draw_series_on<'a, DB, X, Y>(chart: &mut ChartContext<'a, DB, Cartesian2d<X, Y>>, series: &[Series], s: f64) -> DrawResult<(), DB>
where
    DB: DrawingBackend + 'a,
    X: Ranged<ValueType = f64>,
    Y: Ranged<ValueType = f64>,
{
    let stroke = (2.0 * s).round().max(1.0) as u32;
    let radius = (3.0 * s).round() as i32;
    for se in series {
        let color = se.color;
        let mut labelled = false;
        let label = |anno: &mut SeriesAnno<'a, DB>, line: bool| {
            let lw = (18.0 * s) as i32;
            anno.label(se.label.clone());
            if line {
                anno.legend(move |(x, y)| PathElement::new(vec![(x, y), (x + lw, y)], color.stroke_width(stroke)));
            } else {
                anno.legend(move |(x, y)| Circle::new((x + lw / 2, y), radius, color.filled()));
            }
        };
        for run in runs(&se.points) {
            if se.line {
                let style = color.stroke_width(stroke);
                let anno = if se.dashed {
                    chart.draw_series(DashedLineSeries::new(run.clone(), (6.0 * s) as u32, (4.0 * s) as u32, style))?
                } else {
                    chart.draw_series(LineSeries::new(run.clone(), style))?
                };
                if !labelled && !se.label.is_empty() {
                    label(anno, true);
                    labelled = true;
                }
            }
            if se.markers {
                let anno = chart.draw_series(run.iter().map(|&p| Circle::new(p, radius, color.filled())))?;
                if !labelled && !se.label.is_empty() {
                    label(anno, se.line);
                    labelled = true;
                }
            }
        }
    }
    Ok(())
}

fn draw_legend<'a, DB, X, Y>(chart: &mut ChartContext<'a, DB, Cartesian2d<X, Y>>, pos: &SeriesLabelPosition, s: f64) -> DrawResult<(), DB>
where
    DB: DrawingBackend + 'a,
    X: Ranged<ValueType = f64>,
    Y: Ranged<ValueType = f64>,
{
    let pos = match pos {
        SeriesLabelPosition::UpperLeft => SeriesLabelPosition::UpperLeft,
        SeriesLabelPosition::UpperMiddle => SeriesLabelPosition::UpperMiddle,
        SeriesLabelPosition::UpperRight => SeriesLabelPosition::UpperRight,
        SeriesLabelPosition::MiddleLeft => SeriesLabelPosition::MiddleLeft,
        SeriesLabelPosition::MiddleMiddle => SeriesLabelPosition::MiddleMiddle,
        SeriesLabelPosition::MiddleRight => SeriesLabelPosition::MiddleRight,
        SeriesLabelPosition::LowerLeft => SeriesLabelPosition::LowerLeft,
        SeriesLabelPosition::LowerMiddle => SeriesLabelPosition::LowerMiddle,
        SeriesLabelPosition::LowerRight => SeriesLabelPosition::LowerRight,
        SeriesLabelPosition::Coordinate(x, y) => SeriesLabelPosition::Coordinate(*x, *y),
    };
    chart
        .configure_series_labels()
        .position(pos)
        .margin((6.0 * s) as u32)
        .legend_area_size((24.0 * s) as i32)
        .label_font(font(11.0, s))
        .background_style(WHITE.mix(0.85))
        .border_style(RGBColor(160, 160, 160))
        .draw()?;
    Ok(())
}

/// Colours of the compared checkpoints: A blue, B orange (matplotlib's first two).
pub const COLOR_A: RGBColor = RGBColor(31, 119, 180);
pub const COLOR_B: RGBColor = RGBColor(255, 127, 14);

/// A colour per layer, shallow dark to deep bright (viridis).
pub fn layer_color(l: usize, n_layer: usize) -> RGBColor {
    ViridisRGB::get_color_normalized(l as f64, 0.0, n_layer.max(1) as f64 * 1.05)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_break_at_undefined_values() {
        let r = runs(&[(0.0, None), (1.0, Some(1.0)), (2.0, Some(2.0)), (3.0, None), (4.0, Some(f64::NAN)), (5.0, Some(5.0))]);
        assert_eq!(r, vec![vec![(1.0, 1.0), (2.0, 2.0)], vec![(5.0, 5.0)]]);
    }

    #[test]
    fn diverging_scale_is_white_at_zero_and_saturates() {
        assert_eq!(color_of(ColorScale::Diverging { max_abs: 0.5 }, 0.0), RGBColor(247, 247, 247));
        assert_eq!(color_of(ColorScale::Diverging { max_abs: 0.5 }, 2.0), RGBColor(178, 24, 43));
        assert_eq!(color_of(ColorScale::Diverging { max_abs: 0.5 }, -0.5), RGBColor(33, 102, 172));
        assert_eq!(fmt_tick(0.25), "0.25");
        assert_eq!(fmt_tick(120.0), "120");
        assert_eq!(fmt_tick(2.5), "2.5");
    }
}
