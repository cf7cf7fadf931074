//! Every key binding, in one table. The footer hints, the help screen and the README key
//! table are all generated from [`BINDINGS`], so they never drift from what the keys do.

use super::view::View;
use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyModifiers};

/// What a key asks for. The app's `update` matches on these, and only these.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Quit,
    ToggleHelp,
    LayerPrev,
    LayerNext,
    LayerFirst,
    LayerLast,
    PositionPrev,
    PositionNext,
    NextView,
    PrevView,
    ShowView(View),
    EditPrompt,
    CycleMetric,
    ToggleDifference,
    ToggleAllLayers,
    ToggleEarlyExit,
    ToggleSpeculative,
    ToggleLookup,
    ToggleInt8,
    RaiseSetting,
    LowerSetting,
    CycleExitMeasure,
    ToggleSampling,
    NewSeed,
    Regenerate,
    EditEvalFile,
    RerunEval,
    OpenTrainMenu,
    StopTraining,
    ReloadTrained,
    Export,
    // The input line.
    Submit,
    Cancel,
    HistoryPrev,
    HistoryNext,
    // The training menu.
    FieldPrev,
    FieldNext,
    ChoicePrev,
    ChoiceNext,
    // The help screen.
    ScrollUp,
    ScrollDown,
}

/// Where a binding is active.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Every view (no input line or menu open).
    Global,
    View(View),
    /// The input line (prompt or eval file); other keys edit the text.
    Input,
    /// The training menu; other keys edit the selected field.
    TrainMenu,
    Help,
}

impl Scope {
    pub fn title(&self) -> &'static str {
        match self {
            Scope::Global => "Everywhere",
            Scope::View(v) => v.title(),
            Scope::Input => "Input line",
            Scope::TrainMenu => "Training menu",
            Scope::Help => "Help",
        }
    }
}

/// One key: a code and the modifiers it needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Key {
    pub code: KeyCode,
    pub mods: KeyModifiers,
}

const fn k(code: KeyCode) -> Key {
    Key { code, mods: KeyModifiers::NONE }
}
const fn c(ch: char) -> Key {
    k(KeyCode::Char(ch))
}

#[derive(Debug, Clone, Copy)]
pub struct Binding {
    pub scope: Scope,
    pub keys: &'static [Key],
    /// How the keys are written in the footer and help ("←/h").
    pub label: &'static str,
    pub action: Action,
    /// The long description (help screen, key table).
    pub help: &'static str,
    /// The footer's short word, or "" to leave it out of the footer.
    pub hint: &'static str,
}

const fn b(scope: Scope, keys: &'static [Key], label: &'static str, action: Action, help: &'static str, hint: &'static str) -> Binding {
    Binding { scope, keys, label, action, help, hint }
}

use Action as A;
use Scope as S;

pub const BINDINGS: &[Binding] = &[
    b(S::Global, &[k(KeyCode::Left), c('h')], "←/h", A::LayerPrev, "previous layer (every view follows)", "layer"),
    b(S::Global, &[k(KeyCode::Right), c('l')], "→/l", A::LayerNext, "next layer", ""),
    b(S::Global, &[k(KeyCode::Home)], "Home", A::LayerFirst, "layer 0 (the embeddings)", ""),
    b(S::Global, &[k(KeyCode::End)], "End", A::LayerLast, "last layer", ""),
    b(S::Global, &[k(KeyCode::Up), c('k')], "↑/k", A::PositionPrev, "previous token position", "pos"),
    b(S::Global, &[k(KeyCode::Down), c('j')], "↓/j", A::PositionNext, "next token position", ""),
    b(S::Global, &[k(KeyCode::Tab)], "Tab", A::NextView, "next view", "view"),
    b(S::Global, &[k(KeyCode::BackTab)], "S-Tab", A::PrevView, "previous view", ""),
    b(S::Global, &[c('1')], "1", A::ShowView(View::Similarity), "Similarity view", ""),
    b(S::Global, &[c('2')], "2", A::ShowView(View::Predictions), "Predictions view", ""),
    b(S::Global, &[c('3')], "3", A::ShowView(View::Generation), "Depth-wise generation view", ""),
    b(S::Global, &[c('4')], "4", A::ShowView(View::Metrics), "Layer metrics view", ""),
    b(S::Global, &[c('5')], "5", A::ShowView(View::Training), "Training view", ""),
    b(S::Global, &[c('i'), c('/')], "i,/", A::EditPrompt, "type a new prompt", "prompt"),
    b(S::Global, &[c('t'), k(KeyCode::F(2))], "t,F2", A::OpenTrainMenu, "training menu: fine-tune, continue or follow a run", "train"),
    b(S::Global, &[c('x')], "x", A::StopTraining, "stop the run, in-process or followed (saves first)", ""),
    b(S::Global, &[c('r')], "r", A::ReloadTrained, "load the last saved training checkpoint", ""),
    b(S::Global, &[c('w')], "w", A::Export, "save the view as SVG + PNG and CSV/JSON (alignscope-exports/)", ""),
    b(S::Global, &[c('?')], "?", A::ToggleHelp, "this help", "help"),
    b(S::Global, &[c('q'), k(KeyCode::Esc)], "q,Esc", A::Quit, "quit (a PyTorch run started here trains on: q asks once)", "quit"),
    b(S::View(View::Similarity), &[c('m')], "m", A::CycleMetric, "cycle centered COS / raw COS / linear CKA", "metric"),
    b(
        S::View(View::Similarity),
        &[c('d')],
        "d",
        A::ToggleDifference,
        "the difference A−B: show/hide (wide), in place of B (narrow)",
        "diff",
    ),
    b(S::View(View::Generation), &[c('a')], "a", A::ToggleAllLayers, "current exit layer / all layers at once", "all"),
    b(
        S::View(View::Generation),
        &[c('e')],
        "e",
        A::ToggleEarlyExit,
        "early exit: tokens coloured by their exit layer; tok/s, speedup",
        "early",
    ),
    b(S::View(View::Generation), &[c('v')], "v", A::ToggleSpeculative, "speculative decoding from this layer: acceptance, speedup", "spec"),
    b(S::View(View::Generation), &[c('p')], "p", A::ToggleLookup, "speculative: drafts from the text's repeats too (greedy)", ""),
    b(S::View(View::Generation), &[c('8')], "8", A::ToggleInt8, "speculative: the model's 8-bit copy drafts, not this layer (greedy)", ""),
    b(
        S::View(View::Generation),
        &[c('+'), c('=')],
        "+",
        A::RaiseSetting,
        "raise the early-exit threshold / one more draft per verification",
        "",
    ),
    b(S::View(View::Generation), &[c('-')], "-", A::LowerSetting, "lower the early-exit threshold / one draft fewer", ""),
    b(S::View(View::Generation), &[c('c')], "c", A::CycleExitMeasure, "early-exit measure: max-prob / saturation", ""),
    b(S::View(View::Generation), &[c('s')], "s", A::ToggleSampling, "greedy / top-p sampling", "sampling"),
    b(S::View(View::Generation), &[c('n')], "n", A::NewSeed, "new sampling seed", ""),
    b(S::View(View::Generation), &[c('g')], "g", A::Regenerate, "generate again", ""),
    b(S::View(View::Metrics), &[c('f')], "f", A::EditEvalFile, "evaluate on another text file", "file"),
    b(S::View(View::Metrics), &[c('e')], "e", A::RerunEval, "run the evaluation again", ""),
    b(S::View(View::Training), &[c('t'), k(KeyCode::F(2))], "t", A::OpenTrainMenu, "open the training menu", "menu"),
    b(S::View(View::Training), &[c('x')], "x", A::StopTraining, "stop the run (saves first)", "stop"),
    b(S::View(View::Training), &[c('r')], "r", A::ReloadTrained, "load the saved checkpoint into the explorer", "reload"),
    b(S::Input, &[k(KeyCode::Enter)], "Enter", A::Submit, "run it", "run"),
    b(S::Input, &[k(KeyCode::Esc)], "Esc", A::Cancel, "cancel", "cancel"),
    b(S::Input, &[k(KeyCode::Up)], "↑", A::HistoryPrev, "earlier entry in the history", "history"),
    b(S::Input, &[k(KeyCode::Down)], "↓", A::HistoryNext, "later entry in the history", ""),
    b(S::TrainMenu, &[k(KeyCode::Up), k(KeyCode::BackTab)], "↑,S-Tab", A::FieldPrev, "previous field", "field"),
    b(S::TrainMenu, &[k(KeyCode::Down), k(KeyCode::Tab)], "↓,Tab", A::FieldNext, "next field", ""),
    b(S::TrainMenu, &[k(KeyCode::Left)], "←", A::ChoicePrev, "previous choice (run, saved run, engine)", "choice"),
    b(S::TrainMenu, &[k(KeyCode::Right)], "→", A::ChoiceNext, "next choice", ""),
    b(S::TrainMenu, &[k(KeyCode::Enter)], "Enter", A::Submit, "start training, or follow the run", "start"),
    b(S::TrainMenu, &[k(KeyCode::Esc)], "Esc", A::Cancel, "close the menu", "close"),
    b(S::Help, &[k(KeyCode::Up), c('k')], "↑/k", A::ScrollUp, "scroll up", "scroll"),
    b(S::Help, &[k(KeyCode::Down), c('j')], "↓/j", A::ScrollDown, "scroll down", ""),
    b(S::Help, &[c('?'), k(KeyCode::Esc), c('q')], "?,Esc", A::ToggleHelp, "close help", "close"),
];

fn matches(key: &Key, ev: &KeyEvent) -> bool {
    if key.code != ev.code {
        return false;
    }
    // Shift is part of the character for printable keys ('?', 'S'); ignore it there.
    let relevant = ev.modifiers - KeyModifiers::SHIFT;
    let wanted = key.mods - KeyModifiers::SHIFT;
    relevant == wanted
}

/// The scopes searched for a key, most specific first.
pub fn scopes_for(mode_scope: Option<Scope>, view: View) -> Vec<Scope> {
    match mode_scope {
        Some(s) => vec![s],
        None => vec![Scope::View(view), Scope::Global],
    }
}

/// The action bound to `ev` in the first of `scopes` that binds it.
pub fn lookup(scopes: &[Scope], ev: &KeyEvent) -> Option<Action> {
    scopes.iter().find_map(|s| BINDINGS.iter().find(|b| b.scope == *s && b.keys.iter().any(|k| matches(k, ev))).map(|b| b.action))
}

/// The bindings shown in the footer for these scopes, in order, without repeated actions.
pub fn footer_hints(scopes: &[Scope]) -> Vec<(&'static str, &'static str)> {
    let mut out: Vec<(&str, &str)> = Vec::new();
    let mut seen: Vec<Action> = Vec::new();
    for s in scopes {
        for b in BINDINGS.iter().filter(|b| b.scope == *s && !b.hint.is_empty()) {
            if seen.contains(&b.action) {
                continue;
            }
            seen.push(b.action);
            out.push((footer_label(b), b.hint));
        }
    }
    out
}

/// Paired bindings (←/→, ↑/↓) read better as one footer entry.
fn footer_label(b: &Binding) -> &'static str {
    match b.action {
        A::LayerPrev => "←→",
        A::PositionPrev => "↑↓",
        A::FieldPrev => "↑↓",
        A::ChoicePrev => "←→",
        A::ScrollUp => "↑↓",
        A::HistoryPrev => "↑↓",
        A::NextView => "Tab/1-5",
        _ => b.label,
    }
}

/// Every scope, in the order the help screen lists them.
pub fn all_scopes() -> Vec<Scope> {
    let mut v = vec![Scope::Global];
    v.extend(View::ALL.iter().map(|&view| Scope::View(view)));
    v.extend([Scope::Input, Scope::TrainMenu, Scope::Help]);
    v.retain(|s| BINDINGS.iter().any(|b| b.scope == *s));
    v
}

/// The key table as Markdown (for the README): one section per scope.
pub fn key_table_markdown() -> String {
    let mut s = String::new();
    for scope in all_scopes() {
        s += &format!("**{}**\n\n| Key | Action |\n| --- | --- |\n", scope.title());
        for b in BINDINGS.iter().filter(|b| b.scope == scope) {
            s += &format!("| `{}` | {} |\n", b.label.replace('|', "\\|"), b.help);
        }
        s += "\n";
    }
    s += "In the input line and the training menu, other keys edit the text (←/→, Home/End, Backspace, Delete, Ctrl-U; Alt-Enter inserts a line break). A paste is inserted as text, line breaks included, never run as keys (the explorer turns on the terminal's bracketed paste). Ctrl-C quits from anywhere.\n";
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_key_is_bound_twice_in_one_scope() {
        for (i, a) in BINDINGS.iter().enumerate() {
            for b in &BINDINGS[i + 1..] {
                if a.scope == b.scope {
                    for ka in a.keys {
                        assert!(!b.keys.contains(ka), "{:?} bound twice in {:?}", ka, a.scope);
                    }
                }
            }
        }
    }
}
