//! alignscope: look inside GPT-2-style transformers layer by layer, and train them so that
//! every layer can exit through the one shared classifier.
//!
//! The library holds the engine (model, analysis, training); the `alignscope` binary's CLI
//! and TUI are thin clients of it.
pub mod analysis;
pub mod bench;
pub mod cli;
pub mod kernels;
pub mod model;
pub mod ops;
pub mod train;
pub mod tui;
pub mod util;
