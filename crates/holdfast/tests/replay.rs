//! `holdfast replay`: the incidents replay on a virtual clock, keep every promise, and the
//! same seed gives the same report.

use std::path::Path;
use std::process::{Command, Output};

const HOLDFAST: &str = env!("CARGO_BIN_EXE_holdfast");

fn replay(dir: &Path, args: &[&str]) -> Output {
    Command::new(HOLDFAST)
        .arg("replay")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap()
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// The report up to the part that measures this machine.
fn reproducible(report: &Path) -> String {
    let page = std::fs::read_to_string(report).unwrap();
    let end = page
        .find("<!-- this machine -->")
        .expect("the report marks it");
    page[..end].to_owned()
}

#[test]
fn the_list_describes_every_incident() {
    let dir = tempfile::tempdir().unwrap();
    let listed = replay(dir.path(), &["--list"]);
    assert!(listed.status.success(), "{}", text(&listed));
    let out = text(&listed);
    for name in ["hyundai-0400", "ns-restock", "11st-day1", "kt-outage"] {
        assert!(out.contains(name), "{out}");
    }
    assert!(out.contains("04:00"), "the stories are told: {out}");
    let shown = replay(dir.path(), &["--show", "ns-restock"]);
    assert!(shown.status.success(), "{}", text(&shown));
    let toml = String::from_utf8(shown.stdout).unwrap();
    assert!(
        toml.contains("name = \"ns-restock\"") && toml.contains("[shoppers]"),
        "{toml}"
    );
}

#[test]
fn the_leaked_order_code_sells_nothing_before_four() {
    let dir = tempfile::tempdir().unwrap();
    let run = replay(dir.path(), &["hyundai-0400"]);
    let out = text(&run);
    assert!(run.status.success(), "{out}");
    assert!(out.contains("0 units sold before the opening"), "{out}");
    assert!(out.contains("230 of 230 units sold"), "{out}");
    assert!(
        out.contains("200 units sold before the announced instant"),
        "the naive design: {out}"
    );
    let page = std::fs::read_to_string(dir.path().join("replay-hyundai-0400.html")).unwrap();
    assert!(page.contains("<svg") && page.contains("polygon"), "charts");
    assert!(
        !page.contains("<script"),
        "a self-contained page, nothing to run"
    );
    // The tool leaves nothing behind but its report.
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|name| !name.ends_with(".html"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn a_thousand_tills_back_at_once_lose_nothing_and_record_nothing_twice() {
    let dir = tempfile::tempdir().unwrap();
    let run = replay(dir.path(), &["kt-outage"]);
    let out = text(&run);
    assert!(run.status.success(), "{out}");
    assert!(out.contains("ok   no sale lost"), "{out}");
    assert!(out.contains("ok   no sale recorded twice"), "{out}");
    assert!(out.contains("ok   the reconnect storm absorbed"), "{out}");
    assert!(dir.path().join("replay-kt-outage.html").exists());
}

/// A seller describes their own sale in TOML; a wrong file is refused with the reason.
#[test]
fn a_sellers_own_scenario_replays_and_a_wrong_one_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let own = r#"
name = "my-drop"
title = "Our sneaker drop"
story = "500 pairs, two per person, at noon."
kind = "drop"
seed = 3
start = "2026-12-01T11:50:00Z"
duration_s = 1_200

[sale]
stock = 500
price = 189_000
per_person_limit = 2
opens_at_s = 600
queue = "fifo"
admission_per_s = 50
hold_ttl_s = 120

[shoppers]
count = 3_000
arrive_from_s = 300
arrive_until_s = 900
peak_at_s = 600
channels = { web = 0.7, app = 0.3 }
second_account = 0.1
pay_s = [5, 20]
abandon = 0.1

[naive]
capacity_per_s = 100
read_write_gap_ms = 50
per_account_limit = true
"#;
    std::fs::write(dir.path().join("my-drop.toml"), own).unwrap();
    let run = replay(
        dir.path(),
        &["--file", "my-drop.toml", "--report", "first.html"],
    );
    let out = text(&run);
    assert!(run.status.success(), "{out}");
    assert!(out.contains("ok   nobody over the limit"), "{out}");
    assert!(out.contains("ok   fair"), "{out}");
    let again = replay(
        dir.path(),
        &["--file", "my-drop.toml", "--report", "again.html"],
    );
    assert!(again.status.success(), "{}", text(&again));
    assert_eq!(
        reproducible(&dir.path().join("first.html")),
        reproducible(&dir.path().join("again.html")),
        "the same seed, the same report"
    );
    let other = replay(
        dir.path(),
        &[
            "--file",
            "my-drop.toml",
            "--seed",
            "4",
            "--report",
            "other.html",
        ],
    );
    assert!(other.status.success(), "{}", text(&other));
    assert_ne!(
        reproducible(&dir.path().join("first.html")),
        reproducible(&dir.path().join("other.html")),
        "another seed, another crowd"
    );

    std::fs::write(dir.path().join("bad.toml"), own.replace("fifo", "stampede")).unwrap();
    let refused = replay(dir.path(), &["--file", "bad.toml"]);
    assert!(!refused.status.success());
    assert!(text(&refused).contains("sale.queue"), "{}", text(&refused));
    let unknown = replay(dir.path(), &["nonsense"]);
    assert!(!unknown.status.success());
    assert!(
        text(&unknown).contains("hyundai-0400"),
        "names the real ones"
    );
}
