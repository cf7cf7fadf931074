//! A one-line text field with a cursor, shared by the input line and the training menu.

use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyModifiers};

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TextField {
    pub text: String,
    /// Byte offset of the cursor, always on a character boundary.
    pub cursor: usize,
}

impl TextField {
    pub fn new(text: &str) -> Self {
        Self { text: text.to_string(), cursor: text.len() }
    }

    pub fn set(&mut self, text: &str) {
        self.text = text.to_string();
        self.cursor = self.text.len();
    }

    pub fn left(&mut self) {
        if let Some((i, _)) = self.text[..self.cursor].char_indices().next_back() {
            self.cursor = i;
        }
    }

    pub fn right(&mut self) {
        if let Some(c) = self.text[self.cursor..].chars().next() {
            self.cursor += c.len_utf8();
        }
    }

    /// Applies an editing key; false when the key is not an edit.
    pub fn edit(&mut self, key: &KeyEvent) -> bool {
        let ctrl = key.modifiers.contains(KeyModifiers::CONTROL);
        match key.code {
            KeyCode::Char('u') if ctrl => {
                self.text.drain(..self.cursor);
                self.cursor = 0;
            }
            KeyCode::Char('a') if ctrl => self.cursor = 0,
            KeyCode::Char('e') if ctrl => self.cursor = self.text.len(),
            // A line break inside the prompt (the shipped models learned hard-wrapped text).
            KeyCode::Enter if key.modifiers.contains(KeyModifiers::ALT) => {
                self.text.insert(self.cursor, '\n');
                self.cursor += 1;
            }
            KeyCode::Char(c) if !ctrl && !key.modifiers.contains(KeyModifiers::ALT) => {
                self.text.insert(self.cursor, c);
                self.cursor += c.len_utf8();
            }
            KeyCode::Backspace => {
                let end = self.cursor;
                self.left();
                self.text.drain(self.cursor..end);
            }
            KeyCode::Delete => {
                let start = self.cursor;
                self.right();
                self.text.drain(start..self.cursor);
                self.cursor = start;
            }
            KeyCode::Left => self.left(),
            KeyCode::Right => self.right(),
            KeyCode::Home => self.cursor = 0,
            KeyCode::End => self.cursor = self.text.len(),
            _ => return false,
        }
        true
    }

    /// Inserts pasted text at the cursor. Line breaks stay line breaks where the field
    /// takes them (`multiline`: the prompt), else become spaces; other control characters
    /// are dropped. Each line break of a paste used to arrive as Enter and ran the line.
    pub fn paste(&mut self, pasted: &str, multiline: bool) {
        let text = pasted.replace("\r\n", "\n").replace('\r', "\n");
        let clean: String = text
            .chars()
            .filter_map(|c| match c {
                '\n' if multiline => Some('\n'),
                '\n' | '\t' => Some(' '),
                c if c.is_control() => None,
                c => Some(c),
            })
            .collect();
        self.text.insert_str(self.cursor, &clean);
        self.cursor += clean.len();
    }

    /// The part of the text that fits in `width` columns with the cursor visible, and the
    /// cursor's column in it.
    pub fn window(&self, width: usize) -> (String, usize) {
        let chars: Vec<char> = self.text.chars().collect();
        let cur = self.text[..self.cursor].chars().count();
        let width = width.max(1);
        let start = if cur >= width { cur + 1 - width } else { 0 };
        // Line breaks show as ⏎ (one column), so the field stays one line.
        let shown: String = chars[start..].iter().take(width).map(|&c| if c == '\n' { '⏎' } else { c }).collect();
        (shown, cur - start)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_paste_is_text_with_its_line_breaks() {
        let mut t = TextField::new("ab");
        t.left();
        t.paste("Hello there,\r\nquite so.\x07", true);
        assert_eq!(t.text, "aHello there,\nquite so.b");
        assert_eq!(t.cursor, t.text.len() - 1);
        let mut one_line = TextField::new("");
        one_line.paste("a\tb\nc", false);
        assert_eq!(one_line.text, "a b c");
    }

    fn key(code: KeyCode) -> KeyEvent {
        KeyEvent::new(code, KeyModifiers::NONE)
    }

    #[test]
    fn alt_enter_inserts_a_line_break_shown_as_a_symbol() {
        let mut t = TextField::new("ab");
        t.edit(&key(KeyCode::Left));
        assert!(t.edit(&KeyEvent::new(KeyCode::Enter, KeyModifiers::ALT)));
        assert_eq!(t.text, "a\nb");
        assert_eq!(t.window(10), ("a⏎b".to_string(), 2));
    }

    #[test]
    fn edits_at_the_cursor_across_multibyte_characters() {
        let mut t = TextField::new("añb");
        t.edit(&key(KeyCode::Left));
        t.edit(&key(KeyCode::Backspace));
        assert_eq!(t.text, "ab");
        t.edit(&key(KeyCode::Char('é')));
        assert_eq!(t.text, "aéb");
        t.edit(&key(KeyCode::Home));
        t.edit(&key(KeyCode::Delete));
        assert_eq!((t.text.as_str(), t.cursor), ("éb", 0));
    }

    #[test]
    fn window_keeps_the_cursor_visible() {
        let t = TextField::new("abcdefghij");
        assert_eq!(t.window(4), ("hij".to_string(), 3));
    }
}
