//! Writing a load generator's report into a shared Markdown file (BENCHMARKS.md) between its
//! own markers, so that each generator replaces only its block and leaves the others alone.

use anyhow::Context;
use std::path::Path;

/// Writes `markdown` into `path` between `<!-- NAME:start -->` and `<!-- NAME:end -->`,
/// replacing an earlier block of that name, or appending one.
pub fn write_block(path: &Path, name: &str, markdown: &str) -> anyhow::Result<()> {
    let (start, end) = (
        format!("<!-- {name}:start -->"),
        format!("<!-- {name}:end -->\n"),
    );
    let old = std::fs::read_to_string(path).unwrap_or_default();
    let block = format!("{start}\n{}\n{end}", markdown.trim_end_matches('\n'));
    let new = match (old.find(&start), old.find(end.trim_end())) {
        (Some(a), Some(b)) if b > a => {
            format!(
                "{}{block}{}",
                &old[..a],
                old.get(b + end.len()..).unwrap_or("")
            )
        }
        _ => format!("{old}\n{block}"),
    };
    std::fs::write(path, new).with_context(|| format!("writing {}", path.display()))
}
