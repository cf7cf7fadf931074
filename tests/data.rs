//! Training and evaluation data beyond text files: parquet read as pyarrow reads it (the
//! fixtures and their reference rows come from scripts/make_data_fixtures.py), JSON lines,
//! WikiText's rows joined into articles, folders named by split, and the errors.

mod common;

use alignscope::corpus::formats::{jsonl_rows, parquet_rows, read_documents};
use alignscope::corpus::{Role, select};
use common::fixture_dir;
use std::path::{Path, PathBuf};
use std::process::Command;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn wikitext_dir() -> PathBuf {
    fixtures().join("wikitext-mini/wikitext-103-raw-v1")
}

/// The rows pyarrow read back from a parquet file, as JSON values.
fn pyarrow_rows(name: &str) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(fixtures().join("data/pyarrow-rows").join(name)).unwrap();
    text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[test]
fn parquet_text_columns_read_as_pyarrow_reads_them() {
    for split in ["train", "validation", "test"] {
        let name = format!("{split}-00000-of-00001");
        let ours = parquet_rows(&wikitext_dir().join(format!("{name}.parquet"))).unwrap();
        let theirs: Vec<Option<String>> =
            pyarrow_rows(&format!("{name}.jsonl")).iter().map(|r| r["text"].as_str().map(String::from)).collect();
        assert_eq!(ours, theirs, "{split}: rows across row groups, dictionary-encoded, snappy");
    }
    // Three columns: the one named text is read, nulls stay nulls.
    let ours = parquet_rows(&fixtures().join("data/rows.parquet")).unwrap();
    let theirs: Vec<Option<String>> = pyarrow_rows("rows.jsonl").iter().map(|r| r["text"].as_str().map(String::from)).collect();
    assert_eq!(ours, theirs);
    assert_eq!(ours.iter().filter(|r| r.is_none()).count(), 1);
    // The same rows as JSON lines give the same documents (the null row is skipped).
    let jsonl = jsonl_rows(&fixtures().join("data/pyarrow-rows/rows.jsonl")).unwrap();
    assert_eq!(jsonl, ours);
    let docs = read_documents(&fixtures().join("data/rows.parquet")).unwrap();
    assert_eq!(docs.len(), 8);
    assert_eq!(docs, read_documents(&fixtures().join("data/pyarrow-rows/rows.jsonl")).unwrap());
}

#[test]
fn wikitext_rows_become_one_document_per_article() {
    let rows = parquet_rows(&wikitext_dir().join("train-00000-of-00001.parquet")).unwrap();
    let docs = read_documents(&wikitext_dir().join("train-00000-of-00001.parquet")).unwrap();
    let titles = rows.iter().flatten().filter(|r| alignscope::corpus::formats::is_article_title(r)).count();
    assert_eq!(titles, 6);
    assert_eq!(docs.len(), 6, "one document per ' = Title = ' article");
    for (i, d) in docs.iter().enumerate() {
        let title = format!(" = Emma , chapter {} = \n", i + 1);
        assert!(d.trim_start_matches('\n').starts_with(&title), "document {i} opens with its title: {:?}", &d[..40.min(d.len())]);
        assert!(d.contains(" = = Later = = \n"), "sections stay inside their article");
    }
    // Nothing is lost: the articles hold every row, empty rows as blank lines.
    let joined: String = rows.iter().flatten().map(|r| if r.is_empty() { "\n".to_string() } else { r.clone() }).collect();
    assert_eq!(docs.concat(), joined);
}

#[test]
fn folders_named_by_split_and_bad_files() {
    let dir = wikitext_dir();
    let train = select(std::slice::from_ref(&dir), Role::Train).unwrap();
    assert_eq!(train.files, [dir.join("train-00000-of-00001.parquet")]);
    assert_eq!(train.held_out, std::slice::from_ref(&dir));
    assert!(train.notes[0].ends_with("its train split (1 of 3 files) for training"), "{:?}", train.notes);
    let eval = select(std::slice::from_ref(&dir), Role::Eval).unwrap();
    assert_eq!(eval.files, [dir.join("validation-00000-of-00001.parquet")]);
    // A folder without split names gives all its files.
    let austen = Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/austen");
    assert_eq!(select(std::slice::from_ref(&austen), Role::Eval).unwrap().files.len(), 6);

    let e = read_documents(&fixtures().join("data/zstd.parquet")).unwrap_err().to_string();
    assert!(e.contains("zstd.parquet is compressed with zstd") && e.contains("snappy"), "{e}");
    let tmp = tempfile::tempdir().unwrap();
    let bad = tmp.path().join("bad.jsonl");
    std::fs::write(&bad, "{\"text\": \"fine\"}\n{\"body\": \"no text\"}\n").unwrap();
    let e = read_documents(&bad).unwrap_err().to_string();
    assert!(e.contains("bad.jsonl line 2: no \"text\" field"), "{e}");
    std::fs::write(&bad, "{\"text\": \"fine\"}\nnot json\n").unwrap();
    assert!(read_documents(&bad).unwrap_err().to_string().contains("line 2: not valid JSON"));
    let not_parquet = tmp.path().join("x.parquet");
    std::fs::write(&not_parquet, "plain text").unwrap();
    assert!(read_documents(&not_parquet).unwrap_err().to_string().contains("is not a valid parquet file"));
}

#[test]
fn train_on_json_lines_and_evaluate_a_split_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let bin = env!("CARGO_BIN_EXE_alignscope");
    let fixture = fixture_dir().to_string_lossy().into_owned();
    let jsonl = fixtures().join("data/pyarrow-rows/rows.jsonl");
    let out = Command::new(bin)
        .args(["train", "--ckpt", &fixture, "--data", &jsonl.to_string_lossy(), "--steps", "2", "--batch", "2", "--ctx", "32", "--out"])
        .arg(tmp.path().join("j"))
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(tmp.path().join("j/model.safetensors").is_file());

    let out = Command::new(bin)
        .args(["eval", "--ckpt", &fixture, "--json", "--data"])
        .arg(wikitext_dir())
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("its validation split (1 of 3 files) as held-out data"), "{err}");
    // The validation split's two articles, joined by end-of-text: as many tokens as the
    // tokenizer gives them.
    let tok = tokenizers::Tokenizer::from_file(fixture_dir().join("tokenizer.json")).unwrap();
    let docs = read_documents(&wikitext_dir().join("validation-00000-of-00001.parquet")).unwrap();
    assert_eq!(docs.len(), 2);
    let n: usize = docs.iter().map(|d| tok.encode(d.as_str(), false).unwrap().len()).sum::<usize>() + 1;
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let ctx = report["ctx"].as_u64().unwrap() as usize;
    assert_eq!(report["chunks"].as_u64().unwrap() as usize, n / ctx);
}
