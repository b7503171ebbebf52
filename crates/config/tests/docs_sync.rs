//! Keeps the settings table in docs/configuration.md equal to the one the loader generates.
//!
//! The table between `<!-- settings:start -->` and `<!-- settings:end -->` is the output of
//! [`herald_config::settings_reference_markdown`]. When a setting is added or changed, this test
//! fails and prints the current table, ready to paste between the markers.

use std::{fs, path::PathBuf};

/// The marker line that opens the generated table.
const START: &str = "<!-- settings:start -->";
/// The marker line that closes the generated table.
const END: &str = "<!-- settings:end -->";

/// docs/configuration.md, found from this crate's directory so the test runs from anywhere.
fn configuration_md() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/configuration.md")
}

/// The text between the markers, or a message saying why there is none.
fn generated_section(doc: &str) -> Result<&str, String> {
    let (_, after_start) = doc
        .split_once(START)
        .ok_or_else(|| format!("docs/configuration.md has no `{START}` marker"))?;
    let (section, _) = after_start
        .split_once(END)
        .ok_or_else(|| format!("docs/configuration.md has no `{END}` after `{START}`"))?;
    Ok(section)
}

#[test]
fn settings_table_in_the_docs_matches_the_generated_one() {
    let path = configuration_md();
    let doc =
        fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let documented = generated_section(&doc).unwrap_or_else(|e| panic!("{e}"));
    let expected = herald_config::settings_reference_markdown();
    assert!(
        documented.trim() == expected.trim(),
        "the settings table in {} is out of date; replace the text between {START} and {END} \
         with:\n\n{}\n",
        path.display(),
        expected.trim()
    );
}

#[test]
fn markers_are_found_in_order() {
    assert_eq!(
        generated_section("a\n<!-- settings:start -->\n| x |\n<!-- settings:end -->\nb"),
        Ok("\n| x |\n")
    );
    assert!(generated_section("<!-- settings:end --><!-- settings:start -->").is_err());
    assert!(generated_section("no markers").is_err());
}
