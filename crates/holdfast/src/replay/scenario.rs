//! A scenario: a sale (or an outage) and the crowd that meets it, as a TOML file. The built-in
//! ones retell the incidents Holdfast was built from, with the reports' numbers; a seller
//! describes their own sale the same way (`holdfast replay --file my-sale.toml`).

use std::collections::BTreeMap;

use anyhow::{Context, bail};
use serde::Deserialize;

pub const BUILT_IN: [&str; 4] = [
    include_str!("../../scenarios/hyundai-0400.toml"),
    include_str!("../../scenarios/ns-restock.toml"),
    include_str!("../../scenarios/11st-day1.toml"),
    include_str!("../../scenarios/kt-outage.toml"),
];

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub name: String,
    pub title: String,
    pub story: String,
    pub kind: Kind,
    /// The same seed gives the same report.
    pub seed: u64,
    /// The moment the replay starts (RFC 3339); every `_s` below counts from it.
    pub start: String,
    pub duration_s: u64,
    pub sale: Option<SaleSetup>,
    #[serde(default)]
    pub restock: Vec<Restock>,
    pub shoppers: Option<Crowd>,
    pub tills: Option<Tills>,
    pub server: Option<SyncServer>,
    #[serde(default)]
    pub naive: Naive,
}

#[derive(Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A scarce product on sale at an announced instant.
    Drop,
    /// Tills losing their line and coming back.
    Outage,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SaleSetup {
    pub stock: u32,
    pub price: u64,
    pub per_person_limit: u32,
    pub opens_at_s: u64,
    /// `fifo` or `none`.
    pub queue: String,
    pub admission_per_s: u32,
    pub hold_ttl_s: u64,
    /// Units reserved per channel (web, app, phone, store).
    #[serde(default)]
    pub channels: BTreeMap<String, u32>,
    /// When the operator hands every channel's unsold share to everyone.
    pub release_shares_at_s: Option<u64>,
    pub delivery: Option<Delivery>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Delivery {
    pub capacity_per_day: u32,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Restock {
    pub at_s: u64,
    pub quantity: u32,
}

/// Who comes, when, and what they do.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Crowd {
    pub count: u32,
    /// Arrivals rise from here to `peak_at_s` and fall until `arrive_until_s` (a triangle).
    pub arrive_from_s: u64,
    pub arrive_until_s: u64,
    pub peak_at_s: u64,
    /// Of `count`, shoppers who come before the crowd (from `early_from_s`, spread evenly until
    /// the opening) and try to buy at once, as if the order page were open.
    #[serde(default)]
    pub early_count: u32,
    #[serde(default)]
    pub early_from_s: u64,
    /// Share of shoppers per channel.
    pub channels: BTreeMap<String, f64>,
    /// Share of shoppers who also come with a second account, the same phone written
    /// differently.
    #[serde(default)]
    pub second_account: f64,
    /// Seconds from being let in to paying, drawn evenly from this range.
    pub pay_s: [u64; 2],
    /// Share of shoppers who hold and never pay (their holds expire).
    #[serde(default)]
    pub abandon: f64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tills {
    pub count: u32,
    pub sales_per_minute: f64,
    pub price: u64,
    pub down_from_s: u64,
    pub down_for_s: u64,
    pub sync_every_s: u64,
    pub tenders: BTreeMap<String, f64>,
}

/// What the server offers reconnecting tills (as `Limits::syncs_in_flight_max`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyncServer {
    pub sync_slots: u32,
    pub round_trip_ms: u64,
    /// Share of sync answers lost on the way back (the till sends the same entries again).
    pub answers_lost: f64,
}

/// The design people build without Holdfast, for comparison: no waiting room, a stock check
/// then a decrement, limits per account, a promise that ignores the warehouse.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Naive {
    /// Requests answered per second; the rest time out.
    #[serde(default)]
    pub capacity_per_s: u32,
    /// The order page works before the announced instant (the order code leaked).
    #[serde(default)]
    pub sells_before_open: bool,
    /// Requests within this many milliseconds read the same stock before decrementing it.
    #[serde(default)]
    pub read_write_gap_ms: u64,
    /// The limit counts accounts, so a second account buys again.
    #[serde(default)]
    pub per_account_limit: bool,
    /// Every order is promised same-day delivery.
    #[serde(default)]
    pub same_day_promise: bool,
    /// Outage: share of "pay later" customers (a phone number on paper) who never pay.
    #[serde(default)]
    pub pay_later_never_paid: f64,
}

impl Scenario {
    pub fn parse(text: &str) -> anyhow::Result<Scenario> {
        let scenario: Scenario = toml::from_str(text).context("the scenario file is not valid")?;
        scenario.check()?;
        Ok(scenario)
    }

    pub fn built_in() -> Vec<Scenario> {
        BUILT_IN
            .iter()
            .map(|text| Scenario::parse(text).expect("built-in scenarios are valid"))
            .collect()
    }

    fn check(&self) -> anyhow::Result<()> {
        match self.kind {
            Kind::Drop => {
                let (Some(sale), Some(crowd)) = (&self.sale, &self.shoppers) else {
                    bail!("a drop needs [sale] and [shoppers]");
                };
                if !["fifo", "none"].contains(&sale.queue.as_str()) {
                    bail!("sale.queue: the replay plays `fifo` or `none`");
                }
                if crowd.count == 0 || crowd.count > 10_000_000 {
                    bail!("shoppers.count: 1 to 10,000,000");
                }
                if !(crowd.arrive_from_s <= crowd.peak_at_s
                    && crowd.peak_at_s <= crowd.arrive_until_s)
                {
                    bail!("shoppers: arrive_from_s <= peak_at_s <= arrive_until_s");
                }
                if crowd.early_count > crowd.count || crowd.pay_s[0] > crowd.pay_s[1] {
                    bail!("shoppers: early_count <= count, and pay_s is [low, high]");
                }
            }
            Kind::Outage => {
                let (Some(tills), Some(_)) = (&self.tills, &self.server) else {
                    bail!("an outage needs [tills] and [server]");
                };
                if tills.count == 0 || tills.count > 100_000 || tills.sales_per_minute <= 0.0 {
                    bail!("tills: 1 to 100,000 tills with a positive sales_per_minute");
                }
            }
        }
        if self.duration_s == 0 || self.duration_s > 7 * 24 * 3600 {
            bail!("duration_s: 1 second to a week");
        }
        chrono::DateTime::parse_from_rfc3339(&self.start).context("start: an RFC 3339 time")?;
        Ok(())
    }

    pub fn start_ms(&self) -> i64 {
        chrono::DateTime::parse_from_rfc3339(&self.start)
            .expect("checked")
            .timestamp_millis()
    }
}
