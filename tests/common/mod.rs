#![allow(dead_code)]
//! Shared helpers for the integration tests: the reference fixture and its numbers.

use alignscope::model::Checkpoint;
use candle_core::Device;
use serde_json::Value;
use std::path::{Path, PathBuf};

pub fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-gpt2")
}

pub fn assets_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("assets")
}

pub fn expected() -> Value {
    let text = std::fs::read_to_string(fixture_dir().join("expected.json")).expect("expected.json");
    serde_json::from_str(&text).expect("valid json")
}

pub fn fixture() -> Checkpoint {
    Checkpoint::load_dir(&fixture_dir(), &Device::Cpu).expect("fixture loads")
}

pub fn f64s(v: &Value) -> Vec<f64> {
    v.as_array().expect("array").iter().map(|x| x.as_f64().expect("number")).collect()
}

pub fn u32s(v: &Value) -> Vec<u32> {
    v.as_array().expect("array").iter().map(|x| x.as_u64().expect("int") as u32).collect()
}

pub fn matrix(v: &Value) -> Vec<Vec<f64>> {
    v.as_array().expect("array").iter().map(f64s).collect()
}

/// Flattens nested arrays of numbers.
pub fn flat(v: &Value) -> Vec<f64> {
    match v {
        Value::Array(a) => a.iter().flat_map(flat).collect(),
        Value::Number(n) => vec![n.as_f64().unwrap()],
        _ => panic!("not numeric"),
    }
}

pub fn assert_close(what: &str, got: &[f64], want: &[f64], tol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let (mut worst, mut at) = (0.0f64, 0);
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let e = (g - w).abs();
        if e > worst || e.is_nan() {
            worst = e;
            at = i;
        }
    }
    assert!(worst <= tol, "{what}: max abs error {worst:e} at {at} (got {}, want {}) exceeds {tol:e}", got[at], want[at]);
}

/// Every entry of a similarity matrix or per-layer array, which must all be defined.
pub fn defined<'a>(values: impl IntoIterator<Item = &'a Option<f64>>) -> Vec<f64> {
    values.into_iter().map(|v| v.expect("a defined value")).collect()
}
