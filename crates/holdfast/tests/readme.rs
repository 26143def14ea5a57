//! The README's walk-throughs work as written: every ```sh block is run, in order, in one bash
//! session, against a real `holdfast serve` started the way the README starts it. The
//! README's `cargo run --release [-p holdfast-pos] -- ...` runs the binaries this test built.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use holdfast_testkit::KilledOnDrop;

const HOLDFAST: &str = env!("CARGO_BIN_EXE_holdfast");

/// The ```sh blocks of the README, in order (```console blocks are not steps).
fn steps(readme: &str) -> Vec<String> {
    let mut steps = Vec::new();
    let mut current: Option<String> = None;
    for line in readme.lines() {
        match (&mut current, line.trim_end()) {
            (None, "```sh") => current = Some(String::new()),
            (Some(block), "```") => {
                steps.push(std::mem::take(block));
                current = None;
            }
            (Some(block), text) => {
                block.push_str(text);
                block.push('\n');
            }
            (None, _) => {}
        }
    }
    steps
}

/// The README's `cargo run --release [-p holdfast-pos] -- ARGS`, as the built binaries.
const PREAMBLE: &str = r#"set -euo pipefail
cargo() {
  [ "$1 $2" = "run --release" ] || { echo "the README calls cargo in a way this test does not know: $*" >&2; return 2; }
  shift 2
  local bin="$HOLDFAST_BIN"
  if [ "$1" = "-p" ]; then
    [ "$2" = holdfast-pos ] && bin="$POS_BIN"
    shift 2
  fi
  [ "$1" = "--" ] && shift
  "$bin" "$@"
}
"#;

fn pos_binary() -> PathBuf {
    Path::new(HOLDFAST).with_file_name("holdfast-pos")
}

#[test]
fn the_readme_walk_throughs_work_as_written() {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md"))
            .unwrap();
    let steps = steps(&readme);
    assert!(
        steps.len() >= 10,
        "the README has its walk-throughs: {} steps",
        steps.len()
    );
    assert!(
        pos_binary().exists(),
        "{} is missing: run the workspace's tests (cargo test --workspace, or scripts/test)",
        pos_binary().display()
    );
    assert!(
        Command::new("curl").arg("--version").output().is_ok(),
        "the walk-throughs use curl: run scripts/test, which installs it"
    );
    let dir = tempfile::tempdir().unwrap();
    // Started as the README starts it: the token from the environment.
    let mut server = KilledOnDrop(
        Command::new(HOLDFAST)
            .args(["serve", "--listen", "127.0.0.1:0", "--data"])
            .arg(dir.path().join("holdfast-data"))
            .env("HOLDFAST_OPERATOR_TOKEN", "op-secret")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut stdout = BufReader::new(server.stdout.take().unwrap());
    let mut first = String::new();
    stdout.read_line(&mut first).unwrap();
    std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
    let base = first
        .trim()
        .strip_prefix("holdfast listening on ")
        .unwrap()
        .to_owned();

    let mut script = String::from(PREAMBLE);
    for (n, step) in steps.iter().enumerate() {
        script.push_str(&format!("echo '### step {}'\n{step}echo\n", n + 1));
    }
    let walked = Command::new("bash")
        .arg("-c")
        .arg(&script)
        .current_dir(dir.path())
        .env("HOLDFAST", &base)
        .env("HOLDFAST_BIN", HOLDFAST)
        .env("POS_BIN", pos_binary())
        .env_remove("HOLDFAST_OPERATOR_TOKEN")
        .output()
        .unwrap();
    server.kill().unwrap();
    server.wait().unwrap();
    let out = String::from_utf8_lossy(&walked.stdout);
    let err = String::from_utf8_lossy(&walked.stderr);
    assert!(walked.status.success(), "a step failed\n{out}\n{err}");
    for expected in [
        r#""hold_id":"kf94.h1""#,
        r#""order_id":"kf94.o1","#,
        r#""sold":1"#,
        r#""code":"limit_exceeded""#,
        r#""state":"not_open""#,
        r#""state":"admitted""#,
        r#""state":"sold_out""#,
        r#""poll_after_s":null"#,
        "draw verified: 1 entrants",
        "till till-1 of Mapo registered",
        "this till now holds 20 unit(s) of kf94",
        "to pay: ",
        "synced: acknowledged through #2",
        "receivable R-",
    ] {
        assert!(
            out.contains(expected),
            "the walk-through did not show {expected}\n{out}\n{err}"
        );
    }
}
