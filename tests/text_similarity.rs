//! The whole-text similarity matrices (streamed over chunks) against the per-prompt
//! matrices and against what transformers computed for the fixture.

mod common;
use alignscope::analysis::corpus::text_similarity;
use alignscope::analysis::eval::read_text;
use alignscope::analysis::inspect::layer_features;
use alignscope::analysis::similarity::{CorpusSimilarity, Features, cka_matrix, cos_matrix, pearson, upper_triangle};
use alignscope::analysis::{encode_prompt, ids_tensor, tokenize_text};
use candle_core::{Device, Tensor};
use common::*;
use std::ops::ControlFlow;

fn tensors(feats: &[Features], rows: std::ops::Range<usize>) -> Vec<Tensor> {
    feats
        .iter()
        .map(|f| {
            let v: Vec<f32> = f.data[rows.start * f.d..rows.end * f.d].iter().map(|&x| x as f32).collect();
            Tensor::from_vec(v, (rows.len(), f.d), &Device::Cpu).unwrap()
        })
        .collect()
}

fn streamed(feats: &[Features], cuts: &[usize]) -> CorpusSimilarity {
    let mut sim = CorpusSimilarity::new(feats.len(), feats[0].d);
    let mut bounds = vec![0];
    bounds.extend_from_slice(cuts);
    bounds.push(feats[0].n);
    for w in bounds.windows(2) {
        sim.add_moments(&tensors(feats, w[0]..w[1])).unwrap();
    }
    // The second pass may see the chunks in another order.
    for w in bounds.windows(2).rev() {
        sim.add_cosines(&tensors(feats, w[0]..w[1])).unwrap();
    }
    assert!(sim.complete());
    sim
}

/// One prompt as one chunk reproduces transformers' numbers for every fixture case.
#[test]
fn one_chunk_matches_the_fixture() {
    let ck = fixture();
    let exp = expected();
    for case in exp["cases"].as_array().unwrap() {
        let ids = encode_prompt(&ck.tokenizer, &ck.model, case["prompt"].as_str().unwrap()).unwrap();
        let feats = layer_features(&ck.model.residuals(&ids_tensor(&ck.model, &ids).unwrap()).unwrap()).unwrap();
        let sim = streamed(&feats, &[]);
        assert_close("cos_centered", &defined(&sim.cos().concat()), &matrix(&case["cos_centered"]).concat(), 1e-5);
        assert_close("cka_linear", &defined(&sim.cka().concat()), &matrix(&case["cka_linear"]).concat(), 1e-5);
    }
}

/// Positions split into uneven chunks give the matrices of all positions at once (the
/// exact f64 per-prompt functions), including layer 0 whose scale differs from the rest.
#[test]
fn chunks_merge_to_the_all_at_once_matrices() {
    let ck = fixture();
    let text = read_text(&assets_dir().join("austen/persuasion.txt")).unwrap();
    let ids = tokenize_text(&ck.tokenizer, &text[..4000], std::path::Path::new("persuasion.txt")).unwrap();
    let ids = &ids[..300];
    let hs = ck.model.residuals(&ids_tensor(&ck.model, &ids[..100]).unwrap()).unwrap();
    let hs2 = ck.model.residuals(&ids_tensor(&ck.model, &ids[100..228]).unwrap()).unwrap();
    // 228 positions from two prompts, as the report's chunks would give them.
    let a = layer_features(&hs).unwrap();
    let b = layer_features(&hs2).unwrap();
    let feats: Vec<Features> =
        a.iter().zip(&b).map(|(x, y)| Features::new(x.n + y.n, x.d, [x.data.clone(), y.data.clone()].concat())).collect();
    let sim = streamed(&feats, &[7, 100, 101, 190]);
    assert_close("centered COS", &defined(&sim.cos().concat()), &defined(&cos_matrix(&feats, true).concat()), 2e-6);
    assert_close("linear CKA", &defined(&sim.cka().concat()), &defined(&cka_matrix(&feats).concat()), 2e-6);
    assert_eq!(sim.positions(), 228);
}

/// The text driver: chunks of `ctx` tokens, every position of every chunk.
#[test]
fn text_similarity_covers_every_position_of_the_chunks() {
    let ck = fixture();
    let text = read_text(&assets_dir().join("austen/persuasion.txt")).unwrap();
    let ids = tokenize_text(&ck.tokenizer, &text[..20000], std::path::Path::new("persuasion.txt")).unwrap();
    let mut calls = 0;
    let r = text_similarity(&ck.model, &ids, 64, Some(5), |done, total| {
        calls += 1;
        assert!(done <= total && total == 10);
        ControlFlow::Continue(())
    })
    .unwrap();
    assert!(calls >= 2);
    assert_eq!((r.layers, r.positions, r.chunks, r.ctx), (4, 320, 5, 64));
    let feats: Vec<Features> = {
        let x = Tensor::from_vec(ids[..320].to_vec(), (5, 64), &Device::Cpu).unwrap();
        ck.model
            .residuals(&x)
            .unwrap()
            .iter()
            .map(|h| {
                let v: Vec<f32> = h.flatten_all().unwrap().to_vec1().unwrap();
                Features::from_f32(320, 64, &v)
            })
            .collect()
    };
    assert_close("centered COS", &defined(&r.cos.concat()), &defined(&cos_matrix(&feats, true).concat()), 2e-6);
    assert_close("linear CKA", &defined(&r.cka.concat()), &defined(&cka_matrix(&feats).concat()), 2e-6);
    for l in 0..=4 {
        assert!((r.cos[l][l].unwrap() - 1.0).abs() < 1e-6 && (r.cka[l][l].unwrap() - 1.0).abs() < 1e-6);
    }
    let cancelled = text_similarity(&ck.model, &ids, 64, Some(5), |_, _| ControlFlow::Break(()));
    assert!(cancelled.is_err());
}

#[test]
fn pearson_and_the_upper_triangle() {
    assert_eq!(upper_triangle(&[vec![1.0, 2.0, 3.0], vec![2.0, 1.0, 4.0], vec![3.0, 4.0, 1.0]]), vec![2.0, 3.0, 4.0]);
    assert!((pearson(&[1.0, 2.0, 3.0], &[2.0, 4.0, 6.5]).unwrap() - 0.9979487157886733).abs() < 1e-12);
    assert_eq!(pearson(&[1.0, 1.0], &[2.0, 3.0]), None);
    assert_eq!(pearson(&[1.0], &[2.0]), None);
}
