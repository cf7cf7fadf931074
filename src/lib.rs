//! alignscope: look inside GPT-2-style transformers layer by layer, and train them so that
//! every layer can exit through the one shared classifier.
//!
//! The library is the engine, in layers that only point down: `paths`, `util`, `hugepages` and `hub`
//! (policy, process helpers, the Hugging Face hub client) → `corpus` (text data) and
//! `kernels` → `ops` → `model` → `analysis` → `train`. The command line (`cli`), the
//! explorer (`tui`), the figures (`report`) and the benchmarks (`bench`) are its clients.
pub mod hub;
pub mod hugepages;
pub mod paths;
pub mod util;

pub mod corpus;
pub mod kernels;
pub mod ops;

pub mod model;

pub mod analysis;

pub mod train;

pub mod bench;
pub mod cli;
pub mod report;
pub mod tui;
