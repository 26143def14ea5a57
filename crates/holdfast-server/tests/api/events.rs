//! `GET /v1/events`: the operator's live feed says what the API says, only to the operator,
//! and picks up where a dropped connection left off.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::*;
use crate::terminals;

/// A feed sampled often, so a test waits for little.
fn quick_feed() -> holdfast_server::Limits {
    holdfast_server::Limits {
        feed_every: Duration::from_millis(50),
        ..holdfast_server::Limits::default()
    }
}

/// An open `GET /v1/events` and what has arrived of it so far.
struct Subscription {
    response: reqwest::Response,
    unread: String,
}

impl Subscription {
    async fn open(app: &TestApp, base: &str, last_event_id: Option<u64>) -> Subscription {
        let mut request = app
            .client
            .get(format!("{base}/v1/events"))
            .bearer_auth(OPERATOR);
        if let Some(id) = last_event_id {
            request = request.header("Last-Event-ID", id.to_string());
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let kind = response.headers()["content-type"].to_str().unwrap();
        assert!(kind.starts_with("text/event-stream"), "{kind}");
        Subscription {
            response,
            unread: String::new(),
        }
    }

    /// The next sample: its id and body.
    async fn next(&mut self) -> (u64, Value) {
        loop {
            if let Some(end) = self.unread.find("\n\n") {
                let event: String = self.unread.drain(..end + 2).collect();
                let field = |name: &str| {
                    event
                        .lines()
                        .find_map(|l| l.strip_prefix(name))
                        .map(|v| v.trim().to_owned())
                };
                let (Some(id), Some(data)) = (field("id:"), field("data:")) else {
                    continue; // a keep-alive comment
                };
                assert_eq!(field("event:").as_deref(), Some("sample"));
                return (id.parse().unwrap(), serde_json::from_str(&data).unwrap());
            }
            let chunk = tokio::time::timeout(Duration::from_secs(10), self.response.chunk())
                .await
                .expect("a sample within ten seconds")
                .unwrap()
                .expect("the feed goes on");
            self.unread.push_str(std::str::from_utf8(&chunk).unwrap());
        }
    }

    /// Reads samples until one satisfies `wanted`.
    async fn until(&mut self, wanted: impl Fn(&Value) -> bool) -> (u64, Value) {
        loop {
            let (id, sample) = self.next().await;
            if wanted(&sample) {
                return (id, sample);
            }
        }
    }

    /// The first of the next `count` samples that satisfies `wanted`, if any does.
    async fn within(&mut self, count: usize, wanted: impl Fn(&Value) -> bool) -> Option<Value> {
        for _ in 0..count {
            let (_, sample) = self.next().await;
            if wanted(&sample) {
                return Some(sample);
            }
        }
        None
    }
}

fn sale_in<'a>(sample: &'a Value, id: &str) -> Option<&'a Value> {
    sample["sales"].as_array()?.iter().find(|s| s["id"] == id)
}

#[apply(backends)]
async fn the_feed_says_what_the_api_says_and_resumes_after_the_last_event(backend: Backend) {
    let app = spawn_app_with(backend, quick_feed()).await;
    app.create_sale(sale_json(
        "watched",
        10,
        2,
        json!({"delivery": {"capacity_per_day": 100, "first_day": "2026-01-05"}}),
    ))
    .await;
    let alice = app.token("alice", None, None).await;
    let held = app.hold("watched", &alice, 2).await;
    let hold_id = held.body["hold_id"].as_str().unwrap();
    assert_eq!(app.confirm(hold_id, &alice).await.status, StatusCode::OK);
    let bob = app.token("bob", None, None).await;
    assert_eq!(
        app.hold("watched", &bob, 1).await.status,
        StatusCode::CREATED
    );
    let secret = terminals::register(&app, "till-watched").await;
    terminals::sync_report(&app, "till-watched", &secret, 4, None).await;
    let sale = app.sale("watched").await;

    // Each node samples what it serves: find the one serving the sale.
    let mut base = None;
    for node in &app.bases {
        let health = app
            .client
            .get(format!("{node}/health"))
            .send()
            .await
            .unwrap();
        let health: Value = health.json().await.unwrap();
        if health["sales"] == 1 {
            base = Some(node.clone());
        }
    }
    let base = base.expect("a node serves the sale");
    let mut feed = Subscription::open(&app, &base, None).await;
    // Samples are taken once in a while: the feed comes to say what the API says, and stays.
    let buckets = ["total", "available", "held", "sold", "allotted"];
    let agrees = |s: &Value| {
        sale_in(s, "watched").is_some_and(|watched| {
            watched["orders"] == 1
                && buckets
                    .iter()
                    .all(|b| watched["stock"][b] == sale["stock"][b])
        })
    };
    let (_, sample) = feed.until(agrees).await;
    let watched = sale_in(&sample, "watched").unwrap();
    assert_eq!(watched["state"], sale["state"]);
    assert_eq!(watched["paused"], sale["paused"]);
    assert_eq!(watched["promising"], "2026-01-05");
    let (_, sample) = feed
        .until(|s| s["tills"]["total"].as_u64() >= Some(1))
        .await;
    let till = &sample["tills"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["terminal_id"] == "till-watched")
        .cloned();
    if let Some(till) = till {
        assert_eq!(till["reach"], "online");
        assert_eq!(till["entries_pending"], 4);
        assert_eq!(till["offline_since"], Value::Null);
    } else {
        // Several nodes: the till is served by another one.
        assert_eq!(backend, Backend::TwoNodes, "{sample}");
    }

    let (first, later) = feed.next().await;
    assert!(agrees(&later), "{later}");
    let second = feed.next().await.0;
    let third = feed.next().await.0;
    assert!(first < second && second < third);
    drop(feed);
    let mut resumed = Subscription::open(&app, &base, Some(first)).await;
    assert_eq!(
        resumed.next().await.0,
        second,
        "nothing missed, nothing twice"
    );
    assert_eq!(resumed.next().await.0, third);
}

#[apply(backends)]
async fn only_the_operator_reads_the_feed(backend: Backend) {
    let app = spawn_app(backend).await;
    let shopper = app.token("nosy", None, None).await;
    for token in [None, Some(shopper.as_str()), Some("garbage")] {
        let refused = app.call(Method::GET, "/v1/events", token, None).await;
        assert_eq!(refused.status, StatusCode::UNAUTHORIZED, "{token:?}");
    }
    let response = app
        .client
        .get(format!("{}/v1/events", app.base))
        .bearer_auth(OPERATOR)
        .header("Last-Event-ID", "yesterday")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "invalid_last_event_id");
}

/// A server shedding syncs says so (`overloaded`), and the till it put off is `deferred` —
/// reachable — not `unreachable` like a till whose line is down.
#[apply(backends)]
async fn a_till_put_off_by_an_overloaded_server_is_not_called_unreachable(backend: Backend) {
    let limits = holdfast_server::Limits {
        syncs_in_flight_max: 0,
        ..quick_feed()
    };
    let app = spawn_app_with(backend, limits).await;
    let secret = terminals::register(&app, "till-put-off").await;
    let body = json!({"entries": []});
    let path = "/v1/terminals/till-put-off/sync";
    let put_off = terminals::signed(&app, "till-put-off", &secret, path, &body).await;
    assert_eq!(put_off.status, StatusCode::TOO_MANY_REQUESTS);
    // The node serving the till shed its sync: its samples (history first) show both.
    let mut found = None;
    for base in &app.bases {
        let mut feed = Subscription::open(&app, base, None).await;
        let shed = |s: &Value| s["server"]["overloaded"] == true && s["tills"]["total"] == 1;
        found = found.or(feed.within(100, shed).await);
    }
    let sample = found.expect("the node that shed the sync says it is overloaded");
    assert_eq!(sample["server"]["shed_total"], 1);
    assert_eq!(sample["tills"]["list"][0]["reach"], "deferred", "{sample}");
    assert_eq!(sample["tills"]["deferred"], 1);
    assert_eq!(sample["tills"]["unreachable"], 0);
}

/// A dashboard left open does not keep the server from stopping: the feed ends, and the
/// connection with it.
#[tokio::test]
async fn an_open_feed_does_not_hold_up_shutdown() {
    let mut app = spawn_app_with(Backend::Embedded, quick_feed()).await;
    let mut feed = Subscription::open(&app, &app.base.clone(), None).await;
    feed.next().await;
    tokio::time::timeout(Duration::from_secs(10), app.stop())
        .await
        .expect("the server stops with a feed open");
    let rest = tokio::time::timeout(Duration::from_secs(10), async {
        while let Ok(Some(_)) = feed.response.chunk().await {}
    })
    .await;
    assert!(rest.is_ok(), "the feed's stream ended");
}
