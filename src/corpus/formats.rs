//! Reading documents out of data files: plain text, JSON lines and parquet.
//!
//! Where the document boundaries are (each document is followed by end-of-text in
//! training):
//! - a text file (`.txt`, or any file that is neither `.jsonl` nor `.parquet`) is one
//!   document;
//! - in `.jsonl` (a `text` field per line) and `.parquet` (a `text` column, or the only
//!   string column) each row is a document; empty and null rows are skipped;
//! - except in line-per-row corpora such as WikiText, whose rows are the lines of
//!   Wikipedia articles (blank lines are empty rows, articles open with a ` = Title = `
//!   row): there the rows are joined back into text, an empty row being a blank line, and
//!   each article — from its title row to the next one — is a document. A file is read
//!   this way when its first rows hold such a title and every non-empty row ends with a
//!   line break.

use anyhow::{Context, Result, anyhow, bail};
use std::path::Path;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Text,
    JsonLines,
    Parquet,
}

impl Format {
    pub fn of(path: &Path) -> Format {
        match path.extension().and_then(|e| e.to_str()).map(|e| e.to_ascii_lowercase()).as_deref() {
            Some("jsonl") => Format::JsonLines,
            Some("parquet") => Format::Parquet,
            _ => Format::Text,
        }
    }
}

/// Extensions of the files a data folder contributes.
pub const DATA_EXTENSIONS: [&str; 3] = ["txt", "jsonl", "parquet"];

/// The documents of one data file (see the module docs for the boundaries).
pub fn read_documents(path: &Path) -> Result<Vec<String>> {
    match Format::of(path) {
        Format::Text => Ok(vec![super::read_text(path)?]),
        Format::JsonLines => Ok(documents_from_rows(jsonl_rows(path)?)),
        Format::Parquet => Ok(documents_from_rows(parquet_rows(path)?)),
    }
}

/// A top-level WikiText heading row: ` = Title = ` (sections are ` = = Section = = `).
pub fn is_article_title(row: &str) -> bool {
    let t = row.trim_end_matches(['\n', '\r']);
    t.len() > 6 && t.starts_with(" = ") && t.ends_with(" = ") && !t.starts_with(" = = ")
}

/// Whether the rows are the lines of longer texts, WikiText's way (see the module docs).
fn rows_are_lines(rows: &[Option<String>]) -> bool {
    let head = &rows[..rows.len().min(1000)];
    let mut titled = false;
    for r in head.iter().flatten() {
        if r.is_empty() {
            continue;
        }
        if !r.ends_with('\n') {
            return false;
        }
        titled |= is_article_title(r);
    }
    titled
}

/// Rows to documents: one per non-empty row, or one per article for line-per-row corpora.
pub fn documents_from_rows(rows: Vec<Option<String>>) -> Vec<String> {
    if !rows_are_lines(&rows) {
        return rows.into_iter().flatten().filter(|r| !r.trim().is_empty()).collect();
    }
    let mut docs = Vec::new();
    let mut current = String::new();
    for row in rows.into_iter().map(Option::unwrap_or_default) {
        if is_article_title(&row) && !current.trim().is_empty() {
            docs.push(std::mem::take(&mut current));
        }
        if row.is_empty() {
            current.push('\n');
        } else {
            current.push_str(&row);
            if !row.ends_with('\n') {
                current.push('\n');
            }
        }
    }
    if !current.trim().is_empty() {
        docs.push(current);
    }
    docs
}

/// The `text` field of every line of a JSON-lines file (`None` for a null text).
pub fn jsonl_rows(path: &Path) -> Result<Vec<Option<String>>> {
    let text = super::read_text(path)?;
    let mut rows = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value =
            serde_json::from_str(line).map_err(|e| anyhow!("{} line {}: not valid JSON ({e})", path.display(), i + 1))?;
        match v.get("text") {
            Some(serde_json::Value::String(s)) => rows.push(Some(s.clone())),
            Some(serde_json::Value::Null) => rows.push(None),
            Some(_) => bail!("{} line {}: the \"text\" field is not a string", path.display(), i + 1),
            None => bail!("{} line {}: no \"text\" field (each line must be a JSON object with a \"text\" string)", path.display(), i + 1),
        }
    }
    Ok(rows)
}

/// The text column of a parquet file, row by row (`None` for a null).
pub fn parquet_rows(path: &Path) -> Result<Vec<Option<String>>> {
    use parquet::basic::{ConvertedType, LogicalType, Type as Physical};
    use parquet::column::reader::ColumnReader;
    use parquet::file::reader::{FileReader, SerializedFileReader};

    let file = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let reader = SerializedFileReader::new(file).map_err(|e| anyhow!("{} is not a valid parquet file: {e}", path.display()))?;
    let meta = reader.metadata();
    let schema = meta.file_metadata().schema_descr();
    let strings: Vec<(usize, String)> = (0..schema.num_columns())
        .map(|i| (i, schema.column(i)))
        .filter(|(_, c)| {
            c.physical_type() == Physical::BYTE_ARRAY
                && c.max_rep_level() == 0
                && c.path().parts().len() == 1
                && (matches!(c.logical_type_ref(), Some(LogicalType::String)) || c.converted_type() == ConvertedType::UTF8)
        })
        .map(|(i, c)| (i, c.name().to_string()))
        .collect();
    let column = match strings.iter().find(|(_, n)| n == "text") {
        Some((i, _)) => *i,
        None if strings.len() == 1 => strings[0].0,
        None => {
            let names: Vec<String> = (0..schema.num_columns()).map(|i| schema.column(i).name().to_string()).collect();
            bail!("{} has no \"text\" column (its columns: {})", path.display(), names.join(", "))
        }
    };
    let nullable = schema.column(column).max_def_level() > 0;
    let mut rows = Vec::with_capacity(meta.file_metadata().num_rows().max(0) as usize);
    let codec_hint = |e: parquet::errors::ParquetError| {
        let m = e.to_string();
        match m.split_once("Disabled feature at compile time: ").map(|(_, codec)| codec) {
            Some(codec) => anyhow!(
                "{} is compressed with {codec}, which alignscope does not read (it reads uncompressed and snappy parquet, as pyarrow and Hugging Face datasets write by default)",
                path.display()
            ),
            None => anyhow!("cannot read {}: {m}", path.display()),
        }
    };
    for g in 0..reader.num_row_groups() {
        let group = reader.get_row_group(g).map_err(codec_hint)?;
        let ColumnReader::ByteArrayColumnReader(mut col) = group.get_column_reader(column).map_err(codec_hint)? else {
            bail!("{}: the text column is not a string column", path.display())
        };
        let mut values = Vec::new();
        let mut defs = Vec::new();
        loop {
            values.clear();
            defs.clear();
            let (records, _, _) = col.read_records(4096, nullable.then_some(&mut defs), None, &mut values).map_err(codec_hint)?;
            if records == 0 {
                break;
            }
            let mut next = values.iter();
            for r in 0..records {
                if nullable && defs.get(r) == Some(&0) {
                    rows.push(None);
                    continue;
                }
                let v = next.next().ok_or_else(|| anyhow!("{}: fewer values than rows in row group {g}", path.display()))?;
                let s = std::str::from_utf8(v.data()).map_err(|_| anyhow!("{}: row {} is not valid UTF-8", path.display(), rows.len()))?;
                rows.push(Some(s.to_string()));
            }
        }
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(v: &[&str]) -> Vec<Option<String>> {
        v.iter().map(|s| Some(s.to_string())).collect()
    }

    #[test]
    fn plain_rows_are_documents() {
        let docs = documents_from_rows(vec![Some("one".into()), None, Some("".into()), Some("two".into())]);
        assert_eq!(docs, ["one", "two"]);
    }

    #[test]
    fn wikitext_rows_are_joined_into_articles() {
        let r = rows(&["", " = A = \n", "", " a1 \n", "", " = = S = = \n", " a2 \n", "", " = B = \n", "", " b1 \n"]);
        let docs = documents_from_rows(r);
        assert_eq!(docs, ["\n = A = \n\n a1 \n\n = = S = = \n a2 \n\n", " = B = \n\n b1 \n"]);
        assert!(is_article_title(" = Valkyria Chronicles III = \n"));
        assert!(!is_article_title(" = = Gameplay = = \n"));
        assert!(!is_article_title(" a = b = \n"));
    }

    #[test]
    fn rows_without_line_breaks_are_not_lines() {
        let docs = documents_from_rows(rows(&[" = A = ", "text"]));
        assert_eq!(docs, [" = A = ", "text"]);
    }
}
