//! Every input saved for the fuzz targets — the seeds, and each input a fuzzer ever crashed on —
//! run through the same functions in plain `cargo test`, so a fixed crash stays fixed.

use std::path::Path;

use holdfast_server::fuzz_targets;

fn run_saved_inputs(target: &str, run: fn(&[u8])) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz");
    let mut ran = 0;
    for kind in ["seeds", "regressions"] {
        let Ok(entries) = std::fs::read_dir(root.join(kind).join(target)) else {
            continue;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            run(&std::fs::read(&path).unwrap());
            ran += 1;
        }
    }
    assert!(ran > 0, "no saved inputs for {target}");
}

#[test]
fn create_sale() {
    run_saved_inputs("create_sale", fuzz_targets::create_sale);
}

#[test]
fn journal_entry() {
    run_saved_inputs("journal_entry", fuzz_targets::journal_entry);
}

#[test]
fn tokens() {
    run_saved_inputs("tokens", fuzz_targets::tokens);
}

#[test]
fn identity() {
    run_saved_inputs("identity", fuzz_targets::identity);
}
