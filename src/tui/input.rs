//! The input line (a new prompt, another eval file) and its history.

use super::text::TextField;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputPurpose {
    Prompt,
    EvalFile,
}

#[derive(Debug, Clone, PartialEq)]
pub struct InputLine {
    pub purpose: InputPurpose,
    pub field: TextField,
    /// Position in the history while browsing it (`None`: the draft being typed).
    pub history_pos: Option<usize>,
    pub draft: String,
}

impl InputLine {
    pub fn new(purpose: InputPurpose, text: &str) -> Self {
        Self { purpose, field: TextField::new(text), history_pos: None, draft: String::new() }
    }

    /// Applies an editing key; an edit leaves the history (the text is a new draft).
    pub fn edit(&mut self, key: &ratatui::crossterm::event::KeyEvent) {
        if self.field.edit(key) {
            self.history_pos = None;
        }
    }

    /// Inserts pasted text; a prompt keeps its line breaks, a file name does not.
    pub fn paste(&mut self, text: &str) {
        self.field.paste(text, self.purpose == InputPurpose::Prompt);
        self.history_pos = None;
    }

    /// Moves through `history` (oldest first): `delta < 0` to earlier entries; past the
    /// newest entry the draft being typed comes back.
    pub fn browse(&mut self, history: &[String], delta: isize) {
        if history.is_empty() {
            return;
        }
        let next = match (self.history_pos, delta < 0) {
            (None, true) => {
                self.draft = self.field.text.clone();
                Some(history.len() - 1)
            }
            (None, false) => None,
            (Some(0), true) => Some(0),
            (Some(p), true) => Some(p - 1),
            (Some(p), false) if p + 1 < history.len() => Some(p + 1),
            (Some(_), false) => None,
        };
        self.history_pos = next;
        let text = match next {
            Some(p) => history[p].clone(),
            None => self.draft.clone(),
        };
        self.field.set(&text);
    }
}

/// Adds an entry to a history (most recent last, no duplicates, at most 100).
pub fn remember(history: &mut Vec<String>, entry: &str) {
    history.retain(|h| h != entry);
    history.push(entry.to_string());
    if history.len() > 100 {
        history.remove(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn browsing_returns_to_the_draft() {
        let history = vec!["one".to_string(), "two".to_string()];
        let mut line = InputLine::new(InputPurpose::Prompt, "draft");
        line.browse(&history, -1);
        assert_eq!(line.field.text, "two");
        line.browse(&history, -1);
        line.browse(&history, -1);
        assert_eq!(line.field.text, "one");
        line.browse(&history, 1);
        line.browse(&history, 1);
        assert_eq!(line.field.text, "draft");
    }
}
