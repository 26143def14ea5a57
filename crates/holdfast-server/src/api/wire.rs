//! The HTTP wire format, separate from the core's types so either can change without the
//! other. Conversions and validation of untrusted input live here.

pub use crate::text::{format_time, hold_id, http_date, order_id};
use chrono::{DateTime, NaiveDate};
use holdfast_core::{
    ADMISSION_PER_S_DEFAULT, Channel, Day, DeliveryPlan, HOLD_TTL_MILLIS_DEFAULT, HoldId, Order,
    OrderId, PASS_TTL_MILLIS_DEFAULT, QueueMode, Reply, SaleSpec, SaleStatus, SpecError, Timestamp,
    seed_commitment,
};
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::actor::{Outcome, SaleView};
use crate::error::ApiError;
use crate::idempotency::StoredAnswer;

pub fn parse_time(field: &'static str, raw: &str) -> Result<Timestamp, ApiError> {
    DateTime::parse_from_rfc3339(raw)
        .map(|t| Timestamp(t.timestamp_millis()))
        .map_err(|_| {
            ApiError::bad_request(
                "invalid_time",
                format!("{field} must be an RFC 3339 time, e.g. 2020-02-21T15:00:00Z"),
            )
        })
}

fn epoch() -> NaiveDate {
    NaiveDate::from_ymd_opt(1970, 1, 1).expect("the epoch is a date")
}

/// `YYYY-MM-DD`. The core keeps every day it hands out within `DAY_MIN..=DAY_MAX`, which all
/// have such a form; the fallback only keeps this total.
pub fn format_day(day: Day) -> String {
    chrono::Duration::try_days(day.0)
        .and_then(|days| epoch().checked_add_signed(days))
        .map(|date| date.format("%Y-%m-%d").to_string())
        .unwrap_or_else(|| format!("day {}", day.0))
}

/// A `YYYY-MM-DD` date. Whether the day is one the core accepts is the core's to say.
fn parse_day(raw: &str) -> Result<Day, SpecError> {
    NaiveDate::parse_from_str(raw, "%Y-%m-%d")
        .map(|d| Day((d - epoch()).num_days()))
        .map_err(|_| SpecError::DeliveryDayOutOfRange)
}

/// Untrusted text quoted in a message: at most `EXCERPT_CHARS_MAX` characters of it.
pub fn excerpt(raw: &str) -> String {
    const EXCERPT_CHARS_MAX: usize = 40;
    match raw.char_indices().nth(EXCERPT_CHARS_MAX) {
        Some((cut, _)) => format!("{}…", &raw[..cut]),
        None => raw.to_owned(),
    }
}

/// An integer field checked against its range, so negative and huge values get a clear 400.
/// `value` if it lies in `min..=max`; otherwise a 400 with `code`, naming `field`.
pub fn in_range(
    code: &'static str,
    field: &'static str,
    value: i64,
    min: i64,
    max: i64,
) -> Result<i64, ApiError> {
    if (min..=max).contains(&value) {
        Ok(value)
    } else {
        Err(ApiError::bad_request(
            code,
            format!("{field} must be between {min} and {max}, got {value}"),
        ))
    }
}

/// A quantity of stock from a request: from `min` to the most a sale can hold.
pub fn stock_quantity(value: i64, min: i64) -> Result<u32, ApiError> {
    let max = i64::from(holdfast_core::STOCK_MAX);
    Ok(in_range("invalid_quantity", "quantity", value, min, max)? as u32)
}

pub fn parse_channel(raw: Option<&str>) -> Result<Channel, ApiError> {
    let raw = raw.unwrap_or("web");
    Channel::parse(raw).ok_or_else(|| {
        ApiError::bad_request(
            "invalid_channel",
            format!(
                "unknown channel '{}': use web, app, phone or store",
                excerpt(raw)
            ),
        )
    })
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChannelShares {
    #[serde(default)]
    pub web: i64,
    #[serde(default)]
    pub app: i64,
    #[serde(default)]
    pub phone: i64,
    #[serde(default)]
    pub store: i64,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeliveryRequest {
    pub capacity_per_day: i64,
    pub first_day: String,
}

/// `POST /v1/sales`. Unknown fields are refused: a typo in a limit must not go unnoticed.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSale {
    pub id: String,
    pub sku: String,
    pub name: String,
    pub price: i64,
    pub stock: i64,
    pub per_customer_limit: i64,
    pub opens_at: String,
    pub closes_at: Option<String>,
    pub hold_ttl_s: Option<i64>,
    pub queue: Option<String>,
    pub rehearsal: Option<bool>,
    pub channels: Option<ChannelShares>,
    pub price_ceiling: Option<i64>,
    pub delivery: Option<DeliveryRequest>,
    /// Waiting room: positions admitted per second at most.
    pub admission_per_s: Option<i64>,
    /// Waiting room: seconds an admission pass stays good.
    pub pass_ttl_s: Option<i64>,
}

/// Converts an untrusted integer into the core's type for it. A value the type cannot hold is
/// refused with that field's own error; ranges are the core's to check (`SaleSpec::validate`),
/// so they are written once.
fn convert<T: TryFrom<i64>>(value: i64, error: SpecError) -> Result<T, SpecError> {
    T::try_from(value).map_err(|_| error)
}

/// Seconds from the wire as the core's milliseconds.
fn seconds_to_millis(seconds: i64, error: SpecError) -> Result<u64, SpecError> {
    convert::<u64>(seconds, error.clone())?
        .checked_mul(1000)
        .ok_or(error)
}

impl CreateSale {
    /// Validates the request into a spec. `lottery_seed` is used only for a lottery: the
    /// server draws it at random, and publishes its hash with the sale.
    pub fn into_spec(self, lottery_seed: [u8; 32]) -> Result<SaleSpec, ApiError> {
        let queue = match self.queue.as_deref().unwrap_or("none") {
            "none" => QueueMode::None,
            "fifo" => QueueMode::Fifo,
            "lottery" => QueueMode::Lottery,
            other => {
                return Err(ApiError::bad_request(
                    "invalid_queue",
                    format!("unknown queue mode '{}'", excerpt(other)),
                ));
            }
        };
        let opens_at = parse_time("opens_at", &self.opens_at)?;
        let closes_at = self
            .closes_at
            .map(|t| parse_time("closes_at", &t))
            .transpose()?;
        let delivery = match self.delivery {
            None => None,
            Some(d) => Some(DeliveryPlan {
                capacity_per_day: convert(
                    d.capacity_per_day,
                    SpecError::DeliveryCapacityOutOfRange,
                )?,
                first_day: parse_day(&d.first_day)?,
            }),
        };
        let spec = SaleSpec {
            id: self.id,
            sku: self.sku,
            name: self.name,
            price: convert(self.price, SpecError::PriceOutOfRange)?,
            stock: convert(self.stock, SpecError::StockOutOfRange)?,
            per_customer_limit: convert(self.per_customer_limit, SpecError::LimitOutOfRange)?,
            opens_at,
            closes_at,
            hold_ttl_millis: match self.hold_ttl_s {
                None => HOLD_TTL_MILLIS_DEFAULT,
                Some(s) => seconds_to_millis(s, SpecError::HoldTtlOutOfRange)?,
            },
            queue,
            rehearsal: self.rehearsal.unwrap_or(false),
            channel_shares: match self.channels {
                None => [0; 4],
                Some(c) => [c.web, c.app, c.phone, c.store]
                    .map(|share| convert(share, SpecError::ShareOutOfRange))
                    .into_iter()
                    .collect::<Result<Vec<u32>, _>>()?
                    .try_into()
                    .expect("four channels"),
            },
            price_ceiling: self
                .price_ceiling
                .map(|c| convert(c, SpecError::PriceCeilingOutOfRange))
                .transpose()?,
            delivery,
            admission_per_s: match self.admission_per_s {
                None => ADMISSION_PER_S_DEFAULT,
                Some(rate) => convert(rate, SpecError::AdmissionRateOutOfRange)?,
            },
            pass_ttl_millis: match self.pass_ttl_s {
                None => PASS_TTL_MILLIS_DEFAULT,
                Some(s) => seconds_to_millis(s, SpecError::PassTtlOutOfRange)?,
            },
            lottery_seed: (queue == QueueMode::Lottery).then_some(lottery_seed),
        };
        spec.validate_new()?;
        Ok(spec)
    }
}

/// A sale as the operator and shoppers see it (`GET /v1/sales/{id}` and every operator call
/// on a sale).
#[derive(Serialize, ToSchema)]
pub struct SaleBody {
    id: String,
    sku: String,
    name: String,
    price: u64,
    /// `scheduled`, `open`, `sold_out` or `closed`.
    #[schema(value_type = String)]
    state: SaleStatus,
    opens_at: String,
    closes_at: Option<String>,
    hold_ttl_s: u64,
    per_customer_limit: u32,
    /// `none`, `fifo` or `lottery`.
    #[schema(value_type = String)]
    queue_mode: QueueMode,
    rehearsal: bool,
    /// What the operator has paused: the sale (no new holds) and/or its waiting room.
    paused: PausedBody,
    price_ceiling: Option<u64>,
    stock: StockBody,
    queue: SaleQueueBody,
    lottery: Option<LotteryBody>,
    /// Per channel with a share: the share and what is left of it.
    channels: BTreeMap<String, ShareBody>,
    delivery: Option<DeliveryBody>,
    orders: usize,
}

#[derive(Serialize, ToSchema)]
pub struct PausedBody {
    sale: bool,
    waiting_room: bool,
}

#[derive(Serialize, ToSchema)]
pub struct StockBody {
    total: u32,
    available: u32,
    held: u32,
    sold: u32,
    allotted: u32,
}

#[derive(Serialize, ToSchema)]
pub struct SaleQueueBody {
    waiting: u32,
    admitted: u32,
    entries: u32,
    passes_outstanding: u32,
    admission_per_s: u32,
    pass_ttl_s: u64,
}

#[derive(Serialize, ToSchema)]
pub struct LotteryBody {
    seed_commitment: String,
    /// Revealed once the draw it decides has been made.
    seed: Option<String>,
    entrants: Option<u32>,
}

#[derive(Serialize, ToSchema)]
pub struct ShareBody {
    share: u32,
    share_left: u32,
}

#[derive(Serialize, ToSchema)]
pub struct DeliveryBody {
    capacity_per_day: u32,
    first_day: String,
}

impl SaleBody {
    pub fn new(view: &SaleView, now: Timestamp) -> SaleBody {
        let spec = &view.spec;
        let channels = Channel::ALL
            .iter()
            .filter(|c| spec.channel_shares[c.index()] > 0)
            .map(|c| {
                let share = ShareBody {
                    share: spec.channel_shares[c.index()],
                    share_left: view.shares_left[c.index()],
                };
                (c.name().to_owned(), share)
            })
            .collect();
        SaleBody {
            id: spec.id.clone(),
            sku: spec.sku.clone(),
            name: spec.name.clone(),
            price: spec.price,
            state: view.status(now),
            opens_at: format_time(spec.opens_at),
            closes_at: spec.closes_at.map(format_time),
            hold_ttl_s: spec.hold_ttl_millis / 1000,
            per_customer_limit: spec.per_customer_limit,
            queue_mode: spec.queue,
            rehearsal: spec.rehearsal,
            paused: PausedBody {
                sale: view.paused.sale,
                waiting_room: view.paused.waiting_room,
            },
            price_ceiling: spec.price_ceiling,
            stock: StockBody {
                total: view.total,
                available: view.available,
                held: view.held,
                sold: view.sold,
                allotted: view.allotted,
            },
            queue: SaleQueueBody {
                waiting: view
                    .queue
                    .entries
                    .saturating_sub(view.queue.admitted_through),
                admitted: view.queue.admitted_through,
                entries: view.queue.entries,
                passes_outstanding: view.queue.outstanding,
                admission_per_s: spec.admission_per_s,
                pass_ttl_s: spec.pass_ttl_millis / 1000,
            },
            lottery: spec.lottery_seed.map(|seed| LotteryBody {
                seed_commitment: seed_commitment(&seed),
                seed: view.queue.drawn.map(|_| hex::encode(seed)),
                entrants: view.queue.drawn,
            }),
            channels,
            delivery: spec.delivery.map(|d| DeliveryBody {
                capacity_per_day: d.capacity_per_day,
                first_day: format_day(d.first_day),
            }),
            orders: view.orders,
        }
    }
}

/// Splits "<sale>.<letter><n>" into the sale id and the number.
fn split_id(raw: &str, letter: char) -> Option<(&str, u64)> {
    let (sale, local) = raw.rsplit_once('.')?;
    let number = local.strip_prefix(letter)?.parse().ok()?;
    Some((sale, number))
}

pub fn parse_hold_id(raw: &str) -> Result<(&str, HoldId), ApiError> {
    split_id(raw, 'h')
        .map(|(sale, n)| (sale, HoldId(n)))
        .ok_or_else(|| ApiError::not_found("hold_not_found", "no such hold"))
}

pub fn parse_order_id(raw: &str) -> Result<(&str, OrderId), ApiError> {
    split_id(raw, 'o')
        .map(|(sale, n)| (sale, OrderId(n)))
        .ok_or_else(|| ApiError::not_found("order_not_found", "no such order"))
}

/// An order as shoppers and operators see it.
#[derive(Serialize, ToSchema)]
pub struct OrderBody {
    order_id: String,
    sale_id: String,
    hold_id: String,
    customer_id: String,
    quantity: u32,
    /// `web`, `app`, `phone` or `store`.
    #[schema(value_type = String)]
    channel: Channel,
    amount: u64,
    status: &'static str,
    created_at: String,
    deliver_by: Option<String>,
    rehearsal: bool,
}

impl OrderBody {
    pub fn new(sale_id: &str, order: &Order) -> OrderBody {
        OrderBody {
            order_id: order_id(sale_id, order.id),
            sale_id: sale_id.to_owned(),
            hold_id: hold_id(sale_id, order.hold),
            customer_id: order.shopper.customer_id().to_owned(),
            quantity: order.quantity,
            channel: order.channel,
            amount: order.amount,
            status: "confirmed",
            created_at: format_time(order.created_at),
            deliver_by: order.deliver_by.map(format_day),
            rehearsal: order.rehearsal,
        }
    }

    pub fn order_id(&self) -> &str {
        &self.order_id
    }
}

/// A hold: units kept for the shopper until `expires_at`.
#[derive(Serialize, ToSchema)]
pub struct HoldBody {
    hold_id: String,
    sale_id: String,
    quantity: u32,
    #[schema(value_type = String)]
    channel: Channel,
    amount: u64,
    expires_at: String,
    deliver_by: Option<String>,
    rehearsal: bool,
}

fn rejected(outcome: &Outcome) -> Option<StoredAnswer> {
    let rejection = outcome.as_ref().err()?;
    Some(ApiError::from(rejection.clone()).stored())
}

pub fn render_hold(spec: &SaleSpec, outcome: &Outcome) -> StoredAnswer {
    if let Some(answer) = rejected(outcome) {
        return answer;
    }
    let Ok(Reply::Held(hold)) = outcome else {
        unreachable!("a hold command answers with a hold: {outcome:?}")
    };
    let body = HoldBody {
        hold_id: hold_id(&spec.id, hold.id),
        sale_id: spec.id.clone(),
        quantity: hold.quantity,
        channel: hold.channel,
        amount: spec.price * u64::from(hold.quantity),
        expires_at: format_time(hold.expires_at),
        deliver_by: hold.deliver_by.map(format_day),
        rehearsal: spec.rehearsal,
    };
    StoredAnswer::json(201, &body)
}

/// A purchase's answer: the order, created (or the refusal).
pub fn render_purchase(spec: &SaleSpec, outcome: &Outcome) -> StoredAnswer {
    let mut answer = render_confirm(spec, outcome);
    if answer.status == 200 {
        answer.status = 201;
    }
    answer
}

pub fn render_confirm(spec: &SaleSpec, outcome: &Outcome) -> StoredAnswer {
    if let Some(answer) = rejected(outcome) {
        return answer;
    }
    let Ok(Reply::Confirmed(order)) = outcome else {
        unreachable!("a confirm command answers with an order: {outcome:?}")
    };
    StoredAnswer::json(200, &OrderBody::new(&spec.id, order))
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct HoldRequest {
    pub quantity: i64,
    pub channel: Option<String>,
    pub pass: Option<String>,
}

/// A hold and its payment in one request: what a storefront without a separate checkout step
/// sends.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct PurchaseRequest {
    pub quantity: i64,
    pub channel: Option<String>,
    pub pass: Option<String>,
    pub payment: ConfirmPayment,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ConfirmPayment {
    pub method: String,
    pub token: Option<String>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ConfirmRequest {
    pub payment: ConfirmPayment,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RestockRequest {
    pub quantity: i64,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CustomerTokenRequest {
    pub customer_id: String,
    pub phone: Option<String>,
    pub address: Option<String>,
    pub ttl_s: Option<i64>,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct OrdersQuery {
    pub after: Option<String>,
    pub limit: Option<String>,
}
