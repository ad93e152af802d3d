//! The records of an input file for the offline commands: JSON lines, or the rows of a Parquet
//! file (by its extension) turned into JSON objects, column name → value (lists as arrays,
//! structs as objects).

use anyhow::{bail, Context, Result};
use parquet::file::reader::{FileReader, SerializedFileReader};
use std::io::{BufRead, BufReader};
use std::path::Path;

/// Each record with its 1-based line (or row) number: its JSON text, or why it is unreadable.
pub fn read_records(path: &Path) -> Result<Vec<(usize, Result<String, String>)>> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    if path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("parquet"))
    {
        let reader = SerializedFileReader::new(file)
            .with_context(|| format!("{} is not a Parquet file", path.display()))?;
        let mut rows = reader
            .get_row_iter(None)
            .with_context(|| format!("reading {}", path.display()))?;
        let mut out = Vec::new();
        loop {
            let n = out.len() + 1;
            // The parquet crate's row API panics on some column types it does not support;
            // that must be an error naming the row, not a crash of the whole run.
            let next = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                rows.next()
                    .map(|row| row.map(|r| without_nulls(r.to_json_value()).to_string()))
            }));
            match next {
                Ok(None) => break,
                Ok(Some(row)) => out.push((n, row.map_err(|e| e.to_string()))),
                Err(_) => bail!(
                    "{} row {n}: the Parquet reader cannot convert this row (an unsupported column type?)",
                    path.display()
                ),
            }
        }
        return Ok(out);
    }
    let mut out = Vec::new();
    for (i, line) in BufReader::new(file).split(b'\n').enumerate() {
        let line = line.with_context(|| format!("reading {}", path.display()))?;
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        out.push((
            i + 1,
            String::from_utf8(line).map_err(|e| format!("not UTF-8: {e}")),
        ));
    }
    Ok(out)
}

/// A Parquet row with its null columns left out: a null means "not given" (a file mixing
/// `query` rows and `conversation` rows has nulls in both columns).
fn without_nulls(v: serde_json::Value) -> serde_json::Value {
    match v {
        serde_json::Value::Object(m) => m.into_iter().filter(|(_, x)| !x.is_null()).collect(),
        other => other,
    }
}

/// Refuses a file whose items repeat an id: answers are matched to items by id, so a repeat
/// would silently replace one item's answer with another's.
pub fn check_unique_ids<'a>(path: &Path, ids: impl IntoIterator<Item = &'a str>) -> Result<()> {
    let mut seen = std::collections::HashSet::new();
    for id in ids {
        if !seen.insert(id) {
            bail!(
                "{}: the id {id:?} appears more than once; ids must be unique",
                path.display()
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use parquet::data_type::{ByteArray, ByteArrayType};
    use parquet::file::properties::WriterProperties;
    use parquet::file::writer::SerializedFileWriter;
    use std::sync::Arc;

    #[test]
    fn parquet_nulls_are_left_out_of_the_record() {
        let path = std::env::temp_dir().join(format!("grm-records-{}.parquet", std::process::id()));
        let schema = "message item { required binary id (UTF8); optional binary query (UTF8); }";
        let schema = Arc::new(parquet::schema::parser::parse_message_type(schema).unwrap());
        let file = std::fs::File::create(&path).unwrap();
        let props = Arc::new(WriterProperties::builder().build());
        let mut w = SerializedFileWriter::new(file, schema, props).unwrap();
        let mut rg = w.next_row_group().unwrap();
        // (values, definition levels): ids "a", "b"; query "q" for "a", null for "b".
        let columns: [(&[&str], Option<&[i16]>); 2] =
            [(&["a", "b"], None), (&["q"], Some(&[1, 0]))];
        for (values, levels) in columns {
            let mut col = rg.next_column().unwrap().unwrap();
            let values: Vec<ByteArray> = values.iter().map(|v| ByteArray::from(*v)).collect();
            col.typed::<ByteArrayType>()
                .write_batch(&values, levels, None)
                .unwrap();
            col.close().unwrap();
        }
        rg.close().unwrap();
        w.close().unwrap();
        let rows = read_records(&path).unwrap();
        std::fs::remove_file(&path).ok();
        let rows: Vec<(usize, String)> = rows.into_iter().map(|(n, r)| (n, r.unwrap())).collect();
        assert_eq!(
            rows,
            [
                (1, r#"{"id":"a","query":"q"}"#.to_string()),
                (2, r#"{"id":"b"}"#.to_string())
            ]
        );
    }
}
