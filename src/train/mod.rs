//! The aligned training engine: losses, AdamW with saveable state, data, checkpoints that
//! survive a kill at any moment, and a background job that speaks typed messages.
pub mod config;
pub mod cpu_step;
pub mod data;
pub mod events;
pub mod follow;
pub mod job;
pub mod live;
pub mod loss;
pub mod optim;
pub mod recipe;
pub mod save;
pub mod tokenizer;
pub mod trainer;

pub use config::{InitFrom, LossKind, TrainConfig};
pub use events::{EvalMetrics, StepMetrics, TrainCommand, TrainEvent};
