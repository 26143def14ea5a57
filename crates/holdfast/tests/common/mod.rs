//! What the tests that run real `holdfast serve` processes share.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use serde_json::{Value, json};

/// A running `holdfast serve`, killed (SIGKILL) and reaped when dropped, however a test ends.
pub struct Served {
    pub child: Child,
    pub base: String,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `holdfast serve` on a free port with `operator`'s token, adjusted by `configure`
/// (its data or database), and waits for the line that says where it listens.
pub fn serve(operator: &str, configure: impl FnOnce(&mut Command)) -> Served {
    let mut command = Command::new(env!("CARGO_BIN_EXE_holdfast"));
    command
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env("HOLDFAST_OPERATOR_TOKEN", operator)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    configure(&mut command);
    let mut child = command.spawn().expect("start holdfast serve");
    let stdout = child.stdout.take().unwrap();
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    let base = line
        .trim()
        .strip_prefix("holdfast listening on ")
        .unwrap_or_else(|| panic!("unexpected first line: {line:?}"))
        .to_owned();
    Served { child, base }
}

/// Two accounts share each phone number, so the limit is per pair.
pub fn phone_of(customer: usize) -> String {
    format!("010-0000-{:04}", customer / 2)
}

/// Tokens for customers `c0`… (phones shared in pairs), asked of the given servers in turn.
pub async fn customer_tokens(
    client: &reqwest::Client,
    bases: &[String],
    operator: &str,
    customers: usize,
) -> Vec<String> {
    let mut tokens = Vec::with_capacity(customers);
    for customer in 0..customers {
        let body = json!({"customer_id": format!("c{customer}"), "phone": phone_of(customer)});
        let base = &bases[customer % bases.len()];
        let answer: Value = client
            .post(format!("{base}/v1/customer-tokens"))
            .bearer_auth(operator)
            .json(&body)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        tokens.push(answer["token"].as_str().unwrap().to_owned());
    }
    tokens
}

/// Whether this is the full tier (`HOLDFAST_TESTS=full`, as `scripts/test` runs), and the seed
/// of this run: `CRASH_SEED` if given, else a fresh one in the full tier and `quick_seed` in
/// the quick one. Printed, so a failure can be replayed.
pub fn tier_and_seed(test: &str, quick_seed: u64) -> (bool, u64) {
    let full_tier = std::env::var("HOLDFAST_TESTS").is_ok_and(|tier| tier == "full");
    let seed: u64 = std::env::var("CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            if full_tier {
                rand::random()
            } else {
                quick_seed
            }
        });
    println!("{test} seed {seed} (rerun with CRASH_SEED={seed})");
    (full_tier, seed)
}
