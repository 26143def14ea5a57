//! The counter page in a real browser (Debian's headless Chromium, driven by playwright-core):
//! the real `holdfast-pos web` process against a real server, its line cut and restored by a
//! fault-injecting proxy in between. `scripts/test` installs Chromium and playwright-core.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use holdfast_testkit::KilledOnDrop;
use std::sync::Arc;

use axum::Router;
use axum::routing::post;
use common::{Fault, FaultProxy, OPERATOR, Server};
use serde_json::json;

const AGENT: &str = env!("CARGO_BIN_EXE_holdfast-pos");

fn agent(data: &Path, args: &[&str]) {
    let output = Command::new(AGENT)
        .arg("--data")
        .arg(data)
        .args(args)
        .env("HOLDFAST_OPERATOR_TOKEN", OPERATOR)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "holdfast-pos {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Starts `holdfast-pos web` and answers the address it printed.
fn counter_page(data: &Path) -> (KilledOnDrop, String) {
    let mut child = KilledOnDrop(
        Command::new(AGENT)
            .arg("--data")
            .arg(data)
            .args(["web", "--listen", "127.0.0.1:0", "--every-s", "1"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    stdout.read_line(&mut first).unwrap();
    // Keep reading what the till prints (its syncs), as a terminal would.
    std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
    let url = first
        .trim()
        .strip_prefix("counter page on ")
        .unwrap_or_else(|| panic!("unexpected first line: {first}"))
        .to_owned();
    (child, format!("{url}/"))
}

/// Cuts and restores the till's line on the browser script's request.
async fn line_control(proxy: Arc<FaultProxy>) -> String {
    let (cut, restore) = (proxy.clone(), proxy);
    let router = Router::new()
        .route(
            "/cut",
            post(move || async move { cut.set(Fault::DropRequests) }),
        )
        .route(
            "/restore",
            post(move || async move { restore.set(Fault::Pass) }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    url
}

fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../browser")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cashier_works_the_counter_page_through_a_cut_line() {
    assert!(
        Path::new("/usr/bin/chromium").exists() && browser_dir().join("node_modules").exists(),
        "this test needs Debian's chromium and playwright-core: run scripts/test, which installs both"
    );
    let server_dir = tempfile::tempdir().unwrap();
    let till_dir = tempfile::tempdir().unwrap();
    let server = Server::start(server_dir.path(), "127.0.0.1:0".parse().unwrap()).await;
    let proxy = Arc::new(FaultProxy::start(server.address).await);
    let sale = json!({"id": "masks", "sku": "KF94", "name": "KF94 masks", "price": 39900,
        "stock": 10, "per_customer_limit": 2, "opens_at": "2020-01-01T00:00:00Z"});
    common::operator(&server.base, reqwest::Method::POST, "/v1/sales", Some(sale)).await;
    common::set_mapo_catalogue(&server.base, 39900).await;
    let data = till_dir.path();
    agent(
        data,
        &[
            "init",
            "--server",
            &proxy.base,
            "--terminal-id",
            "till-w",
            "--store",
            "Mapo",
        ],
    );
    agent(data, &["allot", "--sale-id", "masks", "--quantity", "5"]);
    let (mut web, page) = counter_page(data);
    let control = line_control(proxy.clone()).await;
    let screenshot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("counter-page.png");
    let _ = std::fs::remove_file(&screenshot);

    let run = tokio::task::spawn_blocking({
        let screenshot = screenshot.clone();
        move || {
            Command::new("node")
                .arg("counter.mjs")
                .arg(&page)
                .arg(&control)
                .arg(&screenshot)
                .current_dir(browser_dir())
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    web.kill().unwrap();
    web.wait().unwrap();
    assert!(
        run.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    println!("{}", String::from_utf8_lossy(&run.stdout));
    let png = std::fs::read(&screenshot).unwrap();
    assert!(png.starts_with(b"\x89PNG"), "a screenshot was saved");

    // What the page did reached the server, once.
    let view = common::operator(
        &server.base,
        reqwest::Method::GET,
        "/v1/terminals/till-w",
        None,
    )
    .await;
    assert_eq!(view["units_sold"]["masks"], 1, "{view}");
    assert_eq!(view["takings"], 39_900 + 6_000);
    server.stop().await;
}
