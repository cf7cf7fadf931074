//! The README's key table is the keymap's own (help screen, footer and README are all
//! generated from one list, so they cannot drift).

#[test]
fn readme_key_table_is_current() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let table = alignscope::tui::key_table_markdown();
    assert!(readme.contains(&table), "README.md's key table is stale; it should read:\n{table}");
}
