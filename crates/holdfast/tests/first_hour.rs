//! The first hour with Holdfast, as a newcomer meets it on the command line: nothing they did
//! not hand over is destroyed, every error names its real cause and what to change, secrets stay
//! put across restarts.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Output, Stdio};

use holdfast_testkit::KilledOnDrop;

const HOLDFAST: &str = env!("CARGO_BIN_EXE_holdfast");

fn holdfast(args: &[&str], dir: &Path) -> Output {
    Command::new(HOLDFAST)
        .args(args)
        .current_dir(dir)
        .env("RUST_BACKTRACE", "1")
        .env_remove("HOLDFAST_OPERATOR_TOKEN")
        .output()
        .unwrap()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// An ordinary error is one line for a person: its causes, never a stack trace.
fn assert_plain_error(output: &Output, expected: &[&str]) {
    assert!(!output.status.success(), "{output:?}");
    let text = stderr(output);
    for part in expected {
        assert!(text.contains(part), "expected {part:?} in: {text}");
    }
    assert!(
        !text.contains("stack backtrace") && !text.contains("panicked"),
        "{text}"
    );
    assert!(
        text.matches("(os error").count() <= 1,
        "a cause told twice: {text}"
    );
}

/// `holdfast serve` on a free port, with the lines it printed on start.
fn serve(data: &Path, extra: &[&str]) -> (KilledOnDrop, String, Vec<String>) {
    let mut child = KilledOnDrop(
        Command::new(HOLDFAST)
            .args(["serve", "--listen", "127.0.0.1:0", "--data"])
            .arg(data)
            .args(extra)
            .env_remove("HOLDFAST_OPERATOR_TOKEN")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut lines = Vec::new();
    for _ in 0..2 {
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        lines.push(line.trim().to_owned());
    }
    std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
    let base = lines[0]
        .strip_prefix("holdfast listening on ")
        .expect("the listening line comes first")
        .to_owned();
    (child, base, lines)
}

#[test]
fn a_tool_never_deletes_a_directory_it_was_handed() {
    let dir = tempfile::tempdir().unwrap();
    let precious = dir.path().join("precious");
    std::fs::create_dir(&precious).unwrap();
    std::fs::write(precious.join("notes.txt"), "mine").unwrap();
    let refused = holdfast(
        &[
            "bench",
            "--scenario",
            "core",
            "--runs",
            "1",
            "--seconds",
            "1",
            "--data",
            "precious",
        ],
        dir.path(),
    );
    assert_plain_error(&refused, &["precious is not empty", "--data"]);
    assert_eq!(
        std::fs::read_to_string(precious.join("notes.txt")).unwrap(),
        "mine"
    );

    // A running server's data directory is not empty either: the tool leaves it alone.
    let server_data = dir.path().join("server-data");
    let (mut server, _, _) = serve(&server_data, &[]);
    let refused = holdfast(
        &[
            "load",
            "--shoppers",
            "5",
            "--stock",
            "1",
            "--data",
            "server-data",
        ],
        dir.path(),
    );
    assert_plain_error(&refused, &["server-data is not empty"]);
    assert!(server_data.join("holdfast.db").exists());
    server.kill().unwrap();
    server.wait().unwrap();

    // Without --data the tool uses a directory of its own, and removes only that.
    let ran = holdfast(
        &[
            "bench",
            "--scenario",
            "core",
            "--runs",
            "1",
            "--seconds",
            "1",
        ],
        dir.path(),
    );
    assert!(ran.status.success(), "{}", stderr(&ran));
    let mut left: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(left, ["precious", "server-data"]);
}

#[test]
fn errors_name_the_real_cause_and_what_to_change() {
    let dir = tempfile::tempdir().unwrap();
    let (mut first, base, _) = serve(&dir.path().join("a"), &[]);
    let address = base.trim_start_matches("http://").to_owned();
    let port_taken = holdfast(&["serve", "--listen", &address, "--data", "b"], dir.path());
    assert_plain_error(
        &port_taken,
        &[&format!("cannot listen on {address}"), "in use", "--listen"],
    );
    assert!(!stderr(&port_taken).contains("data directory"));
    first.kill().unwrap();
    first.wait().unwrap();

    let unwritable = holdfast(
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--data",
            "/proc/holdfast",
        ],
        dir.path(),
    );
    assert_plain_error(&unwritable, &["/proc/holdfast"]);

    std::fs::write(dir.path().join("notes.txt"), "mine").unwrap();
    let a_file = holdfast(
        &["serve", "--listen", "127.0.0.1:0", "--data", "notes.txt"],
        dir.path(),
    );
    assert_plain_error(&a_file, &["notes.txt", "not a directory", "--data"]);
    assert_eq!(
        std::fs::read_to_string(dir.path().join("notes.txt")).unwrap(),
        "mine"
    );

    let no_scheme = holdfast(&["load", "--url", "localhost:8080"], dir.path());
    assert_plain_error(&no_scheme, &["localhost:8080", "http://"]);
    let refused = holdfast(
        &[
            "verify-draw",
            "--url",
            "http://127.0.0.1:9",
            "--sale",
            "drop",
        ],
        dir.path(),
    );
    assert_plain_error(&refused, &["cannot reach the server at http://127.0.0.1:9"]);
}

#[test]
fn a_generated_operator_token_is_kept_private_and_stays_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (mut server, _, lines) = serve(&data, &[]);
    let announced = lines[1]
        .strip_prefix("operator token: ")
        .and_then(|rest| rest.split(' ').next())
        .unwrap_or_else(|| panic!("{lines:?}"))
        .to_owned();
    assert!(lines[1].contains(&data.join("operator-token").display().to_string()));
    server.kill().unwrap();
    server.wait().unwrap();
    let kept = data.join("operator-token");
    assert_eq!(std::fs::read_to_string(&kept).unwrap(), announced);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&kept).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    let (mut again, base, lines) = serve(&data, &[]);
    assert_eq!(
        lines[1],
        format!("operator token: kept in {}", kept.display())
    );
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let status = runtime.block_on(async {
        reqwest::Client::new()
            .post(format!("{base}/v1/customer-tokens"))
            .bearer_auth(&announced)
            .json(&serde_json::json!({"customer_id": "c"}))
            .send()
            .await
            .unwrap()
            .status()
    });
    assert_eq!(status, 201, "the same token works");
    again.kill().unwrap();
    again.wait().unwrap();

    // A token from a file, for operators who keep secrets in files.
    let file = dir.path().join("token");
    std::fs::write(&file, "from-a-file\n").unwrap();
    let (mut third, _, lines) = serve(
        &dir.path().join("other"),
        &["--operator-token-file", file.to_str().unwrap()],
    );
    assert!(
        !lines[1].contains("from-a-file"),
        "a configured token is never printed"
    );
    third.kill().unwrap();
    third.wait().unwrap();
}
