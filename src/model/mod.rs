//! The GPT-2 model, its configuration, checkpoints and devices.
pub mod bert;
pub mod checkpoint;
pub mod config;
pub mod decoder;
pub mod device;
pub mod gpt2;

pub use checkpoint::Checkpoint;
pub use config::{DEFAULT_CTX, Gpt2Config};
pub use gpt2::{Gpt2, KvCache};
