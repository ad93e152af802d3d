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
        let rows = reader
            .get_row_iter(None)
            .with_context(|| format!("reading {}", path.display()))?;
        return Ok(rows
            .enumerate()
            .map(|(i, row)| {
                (
                    i + 1,
                    row.map(|r| r.to_json_value().to_string())
                        .map_err(|e| e.to_string()),
                )
            })
            .collect());
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
