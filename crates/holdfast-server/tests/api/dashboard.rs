//! The dashboard in a real browser (Debian's headless Chromium, driven by playwright-core from
//! `browser/`): a small sale and two tills, one of them out of touch; the page's numbers are
//! checked against the API's, and the sale is paused from the page. `scripts/test` installs
//! Chromium and playwright-core.

use std::path::Path;
use std::process::Command;

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::helpers::*;
use crate::terminals;

fn browser_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../browser")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_watches_a_sale_and_its_tills_and_pauses_it_from_the_dashboard() {
    assert!(
        Path::new("/usr/bin/chromium").exists() && browser_dir().join("node_modules").exists(),
        "this test needs Debian's chromium and playwright-core: run scripts/test, which installs both"
    );
    let limits = holdfast_server::Limits {
        feed_every: std::time::Duration::from_millis(100),
        ..holdfast_server::Limits::default()
    };
    let app = spawn_app_with(Backend::Embedded, limits).await;
    app.create_sale(sale_json("masks", 20, 2, json!({}))).await;
    let alice = app.token("alice", Some("010-1000-0001"), None).await;
    let held = app.hold("masks", &alice, 2).await;
    let hold_id = held.body["hold_id"].as_str().unwrap();
    assert_eq!(app.confirm(hold_id, &alice).await.status, StatusCode::OK);
    let bob = app.token("bob", Some("010-1000-0002"), None).await;
    assert_eq!(app.hold("masks", &bob, 1).await.status, StatusCode::CREATED);

    let mut secrets = Vec::new();
    for till in ["till-cafe", "till-kiosk"] {
        let secret = terminals::register(&app, till).await;
        let allot = json!({"sale_id": "masks", "quantity": 3});
        let path = format!("/v1/terminals/{till}/allotments");
        let granted = terminals::signed(&app, till, &secret, &path, &allot).await;
        assert_eq!(granted.status, StatusCode::OK, "{}", granted.body);
        secrets.push(secret);
    }
    terminals::sync_report(&app, "till-cafe", &secrets[0], 3, Some(2)).await;
    // The café's line goes down; the kiosk keeps syncing.
    app.advance_s(60);
    terminals::sync_report(&app, "till-kiosk", &secrets[1], 0, Some(3)).await;

    let sale = app.sale("masks").await;
    let expected = json!({
        "sale": {"id": "masks", "available": sale["stock"]["available"],
            "held": sale["stock"]["held"], "sold": sale["stock"]["sold"],
            "total": sale["stock"]["total"], "allotted": sale["stock"]["allotted"]},
        "tills": {
            "till-cafe": {"reach": "unreachable", "entries_pending": 3, "allotment_left": 2},
            "till-kiosk": {"reach": "online", "entries_pending": 0, "allotment_left": 3},
        },
    });
    let screenshot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png");
    let _ = std::fs::remove_file(&screenshot);
    let run = tokio::task::spawn_blocking({
        let (base, screenshot) = (app.base.clone(), screenshot.clone());
        move || {
            Command::new("node")
                .arg("dashboard.mjs")
                .arg(&base)
                .arg(OPERATOR)
                .arg(&screenshot)
                .arg(expected.to_string())
                .current_dir(browser_dir())
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    assert!(
        run.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    let png = std::fs::read(&screenshot).unwrap();
    assert!(png.starts_with(b"\x89PNG"), "a screenshot was saved");

    // The click paused the sale itself.
    assert_eq!(app.sale("masks").await["paused"]["sale"], true);
    let carol = app.token("carol", Some("010-1000-0003"), None).await;
    let refused = app.hold("masks", &carol, 1).await;
    assert_eq!(
        (refused.status, refused.code()),
        (StatusCode::FORBIDDEN, "sale_paused")
    );
    let page = app.call(Method::GET, "/dashboard", None, None).await;
    assert_eq!(page.status, StatusCode::OK);
}
