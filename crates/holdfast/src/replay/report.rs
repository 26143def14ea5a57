//! What a replay found, as one self-contained HTML file: a summary of the promises checked,
//! what the naive design would have done, and charts drawn as inline SVG (no script, nothing
//! fetched), one point per virtual second.

use std::collections::BTreeMap;
use std::fmt::Write;

use super::scenario::Scenario;

/// One virtual second of a replay.
#[derive(Clone, Debug, Default)]
pub struct Second {
    pub t_s: i64,
    pub available: u32,
    /// Of `available`, reserved for a channel.
    pub shares: u32,
    pub held: u32,
    pub sold: u32,
    pub waiting: u32,
    pub admitted: u32,
    pub joins: u64,
    pub holds: u64,
    pub orders: u64,
    /// Requests the shoppers (or tills) sent this second.
    pub requests: u64,
    pub refused: BTreeMap<&'static str, u64>,
    /// Real time the core and the log took for this virtual second.
    pub work_us: u64,
    /// The delivery day a hold placed now is promised, in days after the first day.
    pub promising_day: Option<i64>,
    pub naive_sold: i64,
    pub naive_timeouts: u64,
}

/// A promise, whether it held, and the numbers that say so.
pub struct Check {
    pub promise: &'static str,
    pub held: bool,
    pub detail: String,
}

impl Check {
    pub fn new(promise: &'static str, held: bool, detail: String) -> Check {
        Check {
            promise,
            held,
            detail,
        }
    }
}

pub struct Outcome {
    pub seconds: Vec<Second>,
    pub checks: Vec<Check>,
    /// What the naive design did with the same crowd.
    pub naive: Vec<String>,
    pub headline: String,
    pub opens_at_s: Option<i64>,
    /// Charts particular to a kind of scenario: title, unit, series.
    pub extra: Vec<Chart>,
}

pub struct Chart {
    pub title: String,
    pub unit: &'static str,
    pub series: Vec<Series>,
    pub stacked: bool,
}

pub struct Series {
    pub name: String,
    pub colour: &'static str,
    pub values: Vec<f64>,
}

impl Series {
    pub fn of(name: &str, colour: &'static str, values: impl Iterator<Item = f64>) -> Series {
        Series {
            name: name.to_owned(),
            colour,
            values: values.collect(),
        }
    }
}

/// The charts every drop has.
fn drop_charts(seconds: &[Second]) -> Vec<Chart> {
    let of = |f: &dyn Fn(&Second) -> f64| seconds.iter().map(f).collect::<Vec<_>>();
    let series = |name: &str, colour, f: &dyn Fn(&Second) -> f64| Series {
        name: name.to_owned(),
        colour,
        values: of(f),
    };
    let refused =
        |code: &'static str| move |s: &Second| s.refused.get(code).copied().unwrap_or(0) as f64;
    let mut charts = vec![
        Chart {
            title: "Stock".into(),
            unit: "units",
            stacked: true,
            series: vec![
                series("sold", "#8d6e63", &|s| f64::from(s.sold)),
                series("held", "#ffb300", &|s| f64::from(s.held)),
                series("channel shares", "#9ccc65", &|s| f64::from(s.shares)),
                series("available to all", "#4caf50", &|s| {
                    f64::from(s.available - s.shares)
                }),
            ],
        },
        Chart {
            title: "Waiting room".into(),
            unit: "shoppers",
            stacked: false,
            series: vec![
                series("waiting", "#5c6bc0", &|s| f64::from(s.waiting)),
                series("admitted through position", "#26a69a", &|s| {
                    f64::from(s.admitted)
                }),
            ],
        },
        Chart {
            title: "Per second".into(),
            unit: "per s",
            stacked: false,
            series: vec![
                series("requests (joins, holds, payments)", "#cfd8dc", &|s| {
                    s.requests as f64
                }),
                series("joins", "#90a4ae", &|s| s.joins as f64),
                series("holds", "#ffb300", &|s| s.holds as f64),
                series("orders", "#8d6e63", &|s| s.orders as f64),
            ],
        },
        Chart {
            title: "Refusals and timeouts".into(),
            unit: "per s",
            stacked: false,
            series: vec![
                series("Holdfast: refused for load (429)", "#c62828", &|_| 0.0),
                series("Holdfast: not open yet", "#ef6c00", &refused("not_open")),
                series("Holdfast: sold out", "#6d4c41", &refused("sold_out")),
                series("naive design: timed out", "#000000", &|s| {
                    s.naive_timeouts as f64
                }),
            ],
        },
        Chart {
            title: "Sold: Holdfast and the naive design".into(),
            unit: "units",
            stacked: false,
            series: vec![
                series("Holdfast", "#2e7d32", &|s| f64::from(s.sold)),
                series("naive design", "#000000", &|s| s.naive_sold as f64),
            ],
        },
    ];
    if seconds.iter().any(|s| s.promising_day.is_some()) {
        charts.push(Chart {
            title: "Delivery day promised to a hold placed now".into(),
            unit: "days after today",
            stacked: false,
            series: vec![series("day", "#6a1b9a", &|s| {
                s.promising_day.unwrap_or(0) as f64
            })],
        });
    }
    charts
}

pub fn html(scenario: &Scenario, outcome: &Outcome, wall_s: f64, seed: u64) -> String {
    let mut page = String::new();
    let title = format!("Holdfast replay: {}", scenario.name);
    let _ = write!(
        page,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{}</title>\
         <style>body{{font-family:system-ui,sans-serif;max-width:1000px;margin:1em auto;color:#222}}\
         .ok{{color:#2e7d32}}.no{{color:#c62828}}figure{{margin:1.5em 0}}figcaption{{font-weight:600}}\
         .legend span{{margin-right:1em}}td{{padding:.2em .6em;vertical-align:top}}</style></head><body>",
        escape(&title)
    );
    let _ = write!(
        page,
        "<h1>{}</h1><h2>{}</h2><p>{}</p><p><b>{}</b>. Replayed in virtual time from seed {seed}: \
         the same seed gives the same report (all but its last section, which measures this \
         machine).</p>",
        escape(&title),
        escape(&scenario.title),
        escape(scenario.story.trim()),
        escape(&outcome.headline)
    );
    page.push_str("<h3>Promises</h3><table>");
    for check in &outcome.checks {
        let (class, mark) = if check.held {
            ("ok", "✔")
        } else {
            ("no", "✘")
        };
        let _ = write!(
            page,
            "<tr><td class=\"{class}\">{mark}</td><td><b>{}</b></td><td>{}</td></tr>",
            escape(check.promise),
            escape(&check.detail)
        );
    }
    page.push_str("</table>");
    if !outcome.naive.is_empty() {
        page.push_str("<h3>The naive design, same crowd, same instant</h3><ul>");
        for line in &outcome.naive {
            let _ = write!(page, "<li>{}</li>", escape(line));
        }
        page.push_str(
            "</ul><p>The naive design: no waiting room, a stock check then a decrement, limits \
             per account, a fixed capacity beyond which requests time out and are retried.</p>",
        );
    }
    let charts = if outcome.extra.is_empty() {
        drop_charts(&outcome.seconds)
    } else {
        Vec::new()
    };
    for chart in charts.iter().chain(&outcome.extra) {
        page.push_str(&svg(chart, outcome.opens_at_s, &outcome.seconds));
    }
    let _ = write!(
        page,
        "{THIS_MACHINE}<h3>This run, on this machine</h3><p>{} virtual seconds replayed in \
         {wall_s:.1} s of real time.</p>",
        outcome.seconds.len()
    );
    if outcome.extra.is_empty() {
        let work = Chart {
            title: "Real work per virtual second (the core and the durable log)".into(),
            unit: "ms",
            stacked: false,
            series: vec![Series::of(
                "ms",
                "#455a64",
                outcome.seconds.iter().map(|s| s.work_us as f64 / 1000.0),
            )],
        };
        page.push_str(&svg(&work, outcome.opens_at_s, &outcome.seconds));
    }
    page.push_str("</body></html>\n");
    page
}

/// Where the part of the report that depends on the machine begins: everything before it is
/// the same for the same seed.
pub const THIS_MACHINE: &str = "<!-- this machine -->";

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// One chart: lines, or stacked areas, over the virtual seconds, with the opening marked.
fn svg(chart: &Chart, opens_at_s: Option<i64>, seconds: &[Second]) -> String {
    const W: f64 = 960.0;
    const H: f64 = 220.0;
    const LEFT: f64 = 60.0;
    let points = chart.series.first().map_or(0, |s| s.values.len());
    if points == 0 {
        return String::new();
    }
    let totals: Vec<f64> = (0..points)
        .map(|i| {
            if chart.stacked {
                chart.series.iter().map(|s| s.values[i]).sum()
            } else {
                chart.series.iter().map(|s| s.values[i]).fold(0.0, f64::max)
            }
        })
        .collect();
    let top = totals.iter().copied().fold(0.0, f64::max).max(1.0);
    let x = |i: usize| LEFT + (i as f64 / (points.max(2) - 1) as f64) * (W - LEFT - 10.0);
    let y = |v: f64| 10.0 + (H - 30.0) * (1.0 - v / top);
    let mut out = String::new();
    let _ = write!(
        out,
        "<figure><figcaption>{}</figcaption><svg viewBox=\"0 0 {W} {H}\" width=\"100%\" \
         role=\"img\" aria-label=\"{}\"><rect x=\"{LEFT}\" y=\"10\" width=\"{}\" height=\"{}\" \
         fill=\"#f6f6f6\"/>",
        escape(&chart.title),
        escape(&chart.title),
        W - LEFT - 10.0,
        H - 30.0
    );
    let _ = write!(
        out,
        "<text x=\"4\" y=\"18\" font-size=\"11\">{}</text><text x=\"4\" y=\"{}\" font-size=\"11\">0</text>\
         <text x=\"{LEFT}\" y=\"{}\" font-size=\"11\">{} s</text><text x=\"{}\" y=\"{}\" font-size=\"11\" \
         text-anchor=\"end\">{} s</text>",
        compact(top),
        H - 20.0,
        H - 4.0,
        seconds.first().map_or(0, |s| s.t_s),
        W - 10.0,
        H - 4.0,
        seconds.last().map_or(0, |s| s.t_s)
    );
    let mut below = vec![0.0; points];
    for series in &chart.series {
        let path: Vec<String> = if chart.stacked {
            let upper: Vec<f64> = below
                .iter()
                .zip(&series.values)
                .map(|(b, v)| b + v)
                .collect();
            let mut ring: Vec<String> = (0..points)
                .map(|i| format!("{:.1},{:.1}", x(i), y(upper[i])))
                .collect();
            ring.extend(
                (0..points)
                    .rev()
                    .map(|i| format!("{:.1},{:.1}", x(i), y(below[i]))),
            );
            below = upper;
            ring
        } else {
            (0..points)
                .map(|i| format!("{:.1},{:.1}", x(i), y(series.values[i])))
                .collect()
        };
        if chart.stacked {
            let _ = write!(
                out,
                "<polygon points=\"{}\" fill=\"{}\"/>",
                path.join(" "),
                series.colour
            );
        } else {
            let _ = write!(
                out,
                "<polyline points=\"{}\" fill=\"none\" stroke=\"{}\" stroke-width=\"1.5\"/>",
                path.join(" "),
                series.colour
            );
        }
    }
    if let Some(opens) = opens_at_s
        && let Some(i) = seconds.iter().position(|s| s.t_s >= opens)
    {
        let _ = write!(
            out,
            "<line x1=\"{0:.1}\" x2=\"{0:.1}\" y1=\"10\" y2=\"{1}\" stroke=\"#c62828\" \
             stroke-dasharray=\"4 3\"/><text x=\"{2:.1}\" y=\"22\" font-size=\"11\" fill=\"#c62828\">opening</text>",
            x(i),
            H - 20.0,
            x(i) + 4.0
        );
    }
    out.push_str("</svg><div class=\"legend\">");
    for series in &chart.series {
        let _ = write!(
            out,
            "<span><span style=\"color:{}\">■</span> {}</span>",
            series.colour,
            escape(&series.name)
        );
    }
    let _ = write!(out, " <span>({})</span></div></figure>", chart.unit);
    out
}

fn compact(value: f64) -> String {
    if value >= 1_000_000.0 {
        format!("{:.1}M", value / 1_000_000.0)
    } else if value >= 1_000.0 {
        format!("{:.1}k", value / 1_000.0)
    } else {
        format!("{value:.0}")
    }
}
