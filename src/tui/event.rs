//! The one event type the UI loop waits on: keys and resizes from the terminal, and typed
//! messages from the model workers and hub downloads. Training events are polled from the
//! job on ticks.

use super::worker::WorkerReply;
use ratatui::crossterm::event::{self as ct, KeyEvent, KeyEventKind};
use std::sync::mpsc::Sender;
use std::thread;

#[derive(Debug)]
pub enum Event {
    Key(KeyEvent),
    /// Text pasted into the terminal, whole (bracketed paste).
    Paste(String),
    Resize,
    /// A reply from the model worker with this id.
    Worker {
        worker: u64,
        // Boxed: a reply can carry a whole analysis, and the channel holds many keys.
        reply: Box<WorkerReply>,
    },
    /// A hub download (of the base, or of a run's data) made progress.
    Download(crate::hub::DownloadStatus),
    /// The terminal input could not be read: the UI has to stop.
    InputFailed(String),
    /// An export (`w`) finished: the files it wrote, or why it failed.
    Exported(Result<Vec<std::path::PathBuf>, String>),
}

/// Reads terminal events on a thread of its own and forwards them. It ends when the
/// receiver is gone (the UI quit).
pub fn spawn_input_reader(tx: Sender<Event>) {
    thread::Builder::new()
        .name("input".into())
        .spawn(move || {
            loop {
                let ev = match ct::read() {
                    Ok(ev) => ev,
                    Err(e) => {
                        let _ = tx.send(Event::InputFailed(e.to_string()));
                        return;
                    }
                };
                let out = match ev {
                    // Windows reports releases too; only presses (and repeats) act.
                    ct::Event::Key(k) if k.kind != KeyEventKind::Release => Event::Key(k),
                    ct::Event::Resize(..) => Event::Resize,
                    ct::Event::Paste(text) => Event::Paste(text),
                    _ => continue,
                };
                if tx.send(out).is_err() {
                    return;
                }
            }
        })
        .expect("spawn the input thread");
}
