//! The sale state machine against a deliberately naive reference model.
//!
//! The model keeps every unit of stock as its own token with a location, and answers every
//! question by scanning. It shares no code with the core beyond the input types.

mod common;

use std::collections::HashMap;

use holdfast_core::{
    Channel, Command, DeliveryPlan, Event, HoldId, HolderId, IdentityKey, Pausable, QueueMode,
    Reply, Sale, SaleSpec, Shopper, Timestamp,
};
use proptest::prelude::*;

const DAY_MILLIS: i64 = 86_400_000;
const OPENS_AT: i64 = 10 * DAY_MILLIS;
const HOLD_TTL: u64 = 60_000;
const LIMIT: u32 = 3;
const PRICE: u64 = 39_900;
const DELIVERY_PER_DAY: u32 = 2;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Origin {
    Share(Channel),
    Common,
}

#[derive(Clone, Debug, PartialEq)]
enum Place {
    Pool(Origin),
    Held(u64, Origin),
    Allotted(String),
    Sold,
}

#[derive(Clone, Debug, PartialEq)]
enum HoldState {
    Active,
    Confirmed,
    Released,
    Expired,
}

#[derive(Clone, Debug)]
struct ModelHold {
    id: u64,
    shopper: Shopper,
    quantity: u32,
    expires_at: i64,
    deliver_by: Option<i64>,
    state: HoldState,
}

struct Model {
    units: Vec<Place>,
    holds: Vec<ModelHold>,
    released_shares: Vec<Channel>,
    closed: bool,
    closed_at: Option<i64>,
    opens_at: i64,
    /// The operator paused the sale: no new holds or allotments.
    paused: bool,
    /// Sales recorded from tills: who bought (if known) and how many.
    till_sales: Vec<(Option<Shopper>, u32)>,
}

impl Model {
    fn new(stock: u32, shares: [u32; 4]) -> Model {
        let mut units = Vec::new();
        for channel in Channel::ALL {
            for _ in 0..shares[channel.index()] {
                units.push(Place::Pool(Origin::Share(channel)));
            }
        }
        while units.len() < stock as usize {
            units.push(Place::Pool(Origin::Common));
        }
        Model {
            units,
            holds: Vec::new(),
            released_shares: Vec::new(),
            closed: false,
            closed_at: None,
            opens_at: OPENS_AT,
            paused: false,
            till_sales: Vec::new(),
        }
    }

    fn count(&self, f: impl Fn(&Place) -> bool) -> u32 {
        self.units.iter().filter(|p| f(p)).count() as u32
    }

    fn pool_for(&self, channel: Channel) -> Vec<usize> {
        // A channel takes its own share first, then common.
        let mut own: Vec<usize> = (0..self.units.len())
            .filter(|&i| self.units[i] == Place::Pool(Origin::Share(channel)))
            .collect();
        own.extend((0..self.units.len()).filter(|&i| self.units[i] == Place::Pool(Origin::Common)));
        own
    }

    fn used_by(&self, key: &IdentityKey) -> u32 {
        self.holds
            .iter()
            .filter(|h| matches!(h.state, HoldState::Active | HoldState::Confirmed))
            .filter(|h| h.shopper.keys().contains(key))
            .map(|h| h.quantity)
            .sum()
    }

    fn till_used_by(&self, key: &IdentityKey) -> u32 {
        self.till_sales
            .iter()
            .filter(|(buyer, _)| buyer.as_ref().is_some_and(|b| b.keys().contains(key)))
            .map(|(_, quantity)| quantity)
            .sum()
    }

    fn expire(&mut self, now: i64) {
        for i in 0..self.holds.len() {
            if self.holds[i].state == HoldState::Active && self.holds[i].expires_at <= now {
                self.holds[i].state = HoldState::Expired;
                let id = self.holds[i].id;
                self.return_units(id);
            }
        }
    }

    fn return_units(&mut self, hold: u64) {
        for i in 0..self.units.len() {
            if let Place::Held(h, origin) = self.units[i].clone()
                && h == hold
            {
                let origin = match origin {
                    Origin::Share(c) if self.released_shares.contains(&c) => Origin::Common,
                    other => other,
                };
                self.units[i] = Place::Pool(origin);
            }
        }
    }

    fn first_delivery_day(&self, now: i64) -> i64 {
        let mut day = (now.div_euclid(DAY_MILLIS)).max(OPENS_AT / DAY_MILLIS);
        loop {
            let booked = self
                .holds
                .iter()
                .filter(|h| matches!(h.state, HoldState::Active | HoldState::Confirmed))
                .filter(|h| h.deliver_by == Some(day))
                .count() as u32;
            if booked < DELIVERY_PER_DAY {
                return day;
            }
            day += 1;
        }
    }

    fn is_closed(&self) -> bool {
        self.closed
    }

    /// Answers with a short string: "ok:<detail>" or the rejection code.
    fn run(&mut self, command: &Command, now: i64) -> String {
        self.expire(now);
        match command {
            Command::PlaceHold {
                shopper,
                quantity,
                channel,
                ..
            } => {
                if self.is_closed() || now < self.opens_at {
                    return "not_open".into();
                }
                if self.paused {
                    return "sale_paused".into();
                }
                if self.pool_for(*channel).is_empty() {
                    return "sold_out".into();
                }
                if *quantity == 0 {
                    return "invalid_quantity".into();
                }
                let over = shopper
                    .keys()
                    .iter()
                    .any(|k| self.used_by(k) + self.till_used_by(k) + quantity > LIMIT);
                if over {
                    return "limit_exceeded".into();
                }
                let pool = self.pool_for(*channel);
                if pool.len() < *quantity as usize {
                    return "sold_out".into();
                }
                let id = self.holds.len() as u64 + 1;
                for &i in pool.iter().take(*quantity as usize) {
                    let Place::Pool(origin) = self.units[i] else {
                        unreachable!()
                    };
                    self.units[i] = Place::Held(id, origin);
                }
                let deliver_by = Some(self.first_delivery_day(now));
                let expires_at = now + HOLD_TTL as i64;
                self.holds.push(ModelHold {
                    id,
                    shopper: shopper.clone(),
                    quantity: *quantity,
                    expires_at,
                    deliver_by,
                    state: HoldState::Active,
                });
                format!("ok:held {id} x{quantity} until {expires_at} day {deliver_by:?}")
            }
            Command::ConfirmHold {
                hold, customer_id, ..
            } => {
                let Some(h) = self.find_hold(*hold, customer_id) else {
                    return "hold_not_found".into();
                };
                match self.holds[h].state {
                    HoldState::Active => {
                        self.holds[h].state = HoldState::Confirmed;
                        for place in &mut self.units {
                            if matches!(place, Place::Held(id, _) if *id == hold.0) {
                                *place = Place::Sold;
                            }
                        }
                        format!("ok:confirmed {}", hold.0)
                    }
                    HoldState::Confirmed => format!("ok:confirmed {}", hold.0),
                    HoldState::Expired => "hold_expired".into(),
                    HoldState::Released => "hold_released".into(),
                }
            }
            Command::ReleaseHold { hold, customer_id } => {
                let Some(h) = self.find_hold(*hold, customer_id) else {
                    return "hold_not_found".into();
                };
                match self.holds[h].state {
                    HoldState::Active => {
                        self.holds[h].state = HoldState::Released;
                        self.return_units(hold.0);
                        "ok:released".into()
                    }
                    HoldState::Confirmed => "hold_confirmed".into(),
                    _ => "ok:released".into(),
                }
            }
            Command::Restock { quantity } => {
                if *quantity == 0 {
                    return "invalid_quantity".into();
                }
                for _ in 0..*quantity {
                    self.units.push(Place::Pool(Origin::Common));
                }
                "ok:restocked".into()
            }
            Command::Close => {
                self.closed = true;
                self.closed_at.get_or_insert(now);
                "ok:closed".into()
            }
            Command::ReleaseChannelShare { channel } => {
                if self.released_shares.contains(channel) {
                    return "share_already_released".into();
                }
                self.released_shares.push(*channel);
                let mut moved = 0;
                for place in &mut self.units {
                    if *place == Place::Pool(Origin::Share(*channel)) {
                        *place = Place::Pool(Origin::Common);
                        moved += 1;
                    }
                }
                format!("ok:share released {moved}")
            }
            Command::ClaimAllotment {
                holder,
                channel,
                quantity,
            } => {
                if self.is_closed() || now < self.opens_at {
                    return "not_open".into();
                }
                if self.paused {
                    return "sale_paused".into();
                }
                if *quantity == 0 {
                    return "invalid_quantity".into();
                }
                let pool = self.pool_for(*channel);
                let granted = pool.len().min(*quantity as usize);
                for &i in pool.iter().take(granted) {
                    self.units[i] = Place::Allotted(holder.0.clone());
                }
                format!("ok:granted {granted}")
            }
            Command::ReturnAllotment { holder, quantity } => self.move_allotted(
                holder,
                *quantity,
                Place::Pool(Origin::Common),
                "ok:returned",
            ),
            Command::RecordAllottedSale {
                holder,
                quantity,
                sold_at,
                unit_price,
                buyer,
                ..
            } => {
                if sold_at.0 < self.opens_at || self.closed_at.is_some_and(|at| sold_at.0 >= at) {
                    return "not_open".into();
                }
                if *unit_price != PRICE {
                    return "price_mismatch".into();
                }
                let over = buyer.as_ref().is_some_and(|b| {
                    b.keys()
                        .iter()
                        .any(|k| self.used_by(k) + self.till_used_by(k) + quantity > LIMIT)
                });
                let outcome = if over {
                    "ok:allotted sold over"
                } else {
                    "ok:allotted sold"
                };
                let answer = self.move_allotted(holder, *quantity, Place::Sold, outcome);
                if answer.starts_with("ok") {
                    self.till_sales.push((buyer.clone(), *quantity));
                }
                answer
            }
            Command::Tick => "ok:ticked".into(),
            Command::SetPaused { part, paused } => {
                if *part == Pausable::Sale {
                    self.paused = *paused;
                }
                "ok:pause set".into()
            }
            Command::Join { .. } => "no_queue".into(),
        }
    }

    fn find_hold(&self, id: HoldId, customer_id: &str) -> Option<usize> {
        self.holds
            .iter()
            .position(|h| h.id == id.0 && h.shopper.customer_id() == customer_id)
    }

    fn move_allotted(&mut self, holder: &HolderId, quantity: u32, to: Place, ok: &str) -> String {
        let mine: Vec<usize> = (0..self.units.len())
            .filter(|&i| self.units[i] == Place::Allotted(holder.0.clone()))
            .collect();
        if quantity == 0 {
            return "invalid_quantity".into();
        }
        if mine.len() < quantity as usize {
            return "allotment_exceeded".into();
        }
        for &i in mine.iter().take(quantity as usize) {
            self.units[i] = to.clone();
        }
        ok.into()
    }
}

fn describe(outcome: &Result<Reply, holdfast_core::Rejection>) -> String {
    match outcome {
        Err(rejection) => rejection.code().into(),
        Ok(Reply::Held(h)) => format!(
            "ok:held {} x{} until {} day {:?}",
            h.id.0,
            h.quantity,
            h.expires_at.0,
            h.deliver_by.map(|d| d.0)
        ),
        Ok(Reply::Confirmed(o)) => format!("ok:confirmed {}", o.hold.0),
        Ok(Reply::Released) => "ok:released".into(),
        Ok(Reply::Restocked) => "ok:restocked".into(),
        Ok(Reply::Closed) => "ok:closed".into(),
        Ok(Reply::ShareReleased { quantity }) => format!("ok:share released {quantity}"),
        Ok(Reply::Granted { quantity }) => format!("ok:granted {quantity}"),
        Ok(Reply::Returned) => "ok:returned".into(),
        Ok(Reply::AllottedSaleRecorded { over_limit: false }) => "ok:allotted sold".into(),
        Ok(Reply::AllottedSaleRecorded { over_limit: true }) => "ok:allotted sold over".into(),
        Ok(Reply::Ticked) => "ok:ticked".into(),
        Ok(Reply::PauseSet) => "ok:pause set".into(),
        Ok(Reply::Joined { entry, .. }) => format!("ok:joined {entry}"),
    }
}

/// Four accounts: c0 and c1 share a phone, c2 and c3 share an address (written differently).
fn shopper(index: usize) -> Shopper {
    match index {
        0 => Shopper::new("c0", Some("010-1111-2222"), None).unwrap(),
        1 => Shopper::new("c1", Some("+82 10 1111 2222"), Some("1 Elm St")).unwrap(),
        2 => Shopper::new("c2", None, Some("9 Oak Road, Apt 2")).unwrap(),
        _ => Shopper::new("c3", Some("010-3333-4444"), Some("9 oak road apt 2")).unwrap(),
    }
}

fn channel() -> impl Strategy<Value = Channel> {
    prop::sample::select(Channel::ALL.to_vec())
}

fn command() -> impl Strategy<Value = Command> {
    let customer = 0..4usize;
    let hold_id = (1..12u64).prop_map(HoldId);
    let holder = prop::sample::select(vec!["t1", "t2"]).prop_map(|h| HolderId(h.into()));
    prop_oneof![
        6 => (customer.clone(), 0..4u32, channel()).prop_map(|(c, quantity, channel)| {
            Command::PlaceHold { shopper: shopper(c), quantity, channel, pass: None }
        }),
        4 => (customer.clone(), hold_id.clone()).prop_map(|(c, hold)| Command::ConfirmHold {
            hold,
            customer_id: format!("c{c}"),
            payment_ref: "auth".into(),
        }),
        2 => (customer, hold_id).prop_map(|(c, hold)| Command::ReleaseHold {
            hold,
            customer_id: format!("c{c}"),
        }),
        1 => (0..4u32).prop_map(|quantity| Command::Restock { quantity }),
        1 => channel().prop_map(|channel| Command::ReleaseChannelShare { channel }),
        1 => (holder.clone(), channel(), 0..5u32).prop_map(|(holder, channel, quantity)| {
            Command::ClaimAllotment { holder, channel, quantity }
        }),
        1 => (holder.clone(), 0..4u32).prop_map(|(holder, quantity)| {
            Command::ReturnAllotment { holder, quantity }
        }),
        2 => (
            holder,
            0..4u32,
            -60_000..600_000i64,
            prop::sample::select(vec![PRICE, PRICE, 1_000]),
            prop::option::of(0..4usize),
        )
            .prop_map(|(holder, quantity, after_opening, unit_price, buyer)| {
                Command::RecordAllottedSale {
                    holder,
                    quantity,
                    journal_seq: None,
                    sold_at: Timestamp(OPENS_AT + after_opening),
                    unit_price,
                    buyer: buyer.map(shopper),
                }
            }),
        1 => Just(Command::Tick),
        1 => Just(Command::Close),
        1 => (prop::sample::select(vec![Pausable::Sale, Pausable::WaitingRoom]), any::<bool>())
            .prop_map(|(part, paused)| Command::SetPaused { part, paused }),
    ]
}

fn spec(stock: u32, shares: [u32; 4]) -> SaleSpec {
    SaleSpec {
        id: "s1".into(),
        sku: "KF94-60".into(),
        name: "KF94 masks, 60".into(),
        price: 39_900,
        stock,
        per_customer_limit: LIMIT,
        opens_at: Timestamp(OPENS_AT),
        closes_at: None,
        hold_ttl_millis: HOLD_TTL,
        queue: QueueMode::None,
        rehearsal: false,
        channel_shares: shares,
        price_ceiling: None,
        delivery: Some(DeliveryPlan {
            capacity_per_day: DELIVERY_PER_DAY,
            first_day: holdfast_core::Day(OPENS_AT / DAY_MILLIS),
        }),
        admission_per_s: holdfast_core::ADMISSION_PER_S_DEFAULT,
        pass_ttl_millis: holdfast_core::PASS_TTL_MILLIS_DEFAULT,
        lottery_seed: None,
    }
}

proptest! {
    #![proptest_config(common::cases(300, 3000))]

    #[test]
    fn core_agrees_with_the_naive_model(
        stock in 0..12u32,
        share_web in 0..4u32,
        share_store in 0..3u32,
        steps in prop::collection::vec((command(), 0..40_000i64), 1..60),
    ) {
        let shares = [share_web.min(stock), 0, 0, share_store.min(stock - share_web.min(stock))];
        let mut sale = Sale::new(spec(stock, shares));
        let mut model = Model::new(stock, shares);
        let mut replica = Sale::new(spec(stock, shares));
        let mut now = OPENS_AT - 30_000;
        for (command, advance) in steps {
            now += advance;
            // A refusal the counters alone make certain is what the sale itself answers to
            // any hold, whoever places it.
            if let Some(certain) = sale.counters().hold_refusal(Timestamp(now)) {
                for (who, quantity, channel) in [(0, 1, Channel::Web), (3, 2, Channel::Store)] {
                    let hold = Command::PlaceHold {
                        shopper: shopper(who),
                        quantity,
                        channel,
                        pass: None,
                    };
                    let outcome = sale.clone().handle(&hold, Timestamp(now)).outcome;
                    prop_assert_eq!(outcome, Err(certain.clone()));
                }
            }
            let handled = sale.handle(&command, Timestamp(now));
            let expected = model.run(&command, now);
            prop_assert_eq!(describe(&handled.outcome), expected, "command {:?}", command);

            // Replaying the logged events rebuilds the same ledger.
            for event in &handled.events {
                replica.apply(event);
            }
            prop_assert_eq!(replica.snapshot(), sale.snapshot());

            prop_assert_eq!(sale.total(), model.units.len() as u32);
            prop_assert_eq!(sale.available(), model.count(|p| matches!(p, Place::Pool(_))));
            prop_assert_eq!(sale.held(), model.count(|p| matches!(p, Place::Held(..))));
            prop_assert_eq!(sale.sold(), model.count(|p| *p == Place::Sold));
            prop_assert_eq!(sale.allotted(), model.count(|p| matches!(p, Place::Allotted(_))));
            prop_assert_eq!(
                sale.total(),
                sale.available() + sale.allotted() + sale.held() + sale.sold()
            );
            for c in 0..4 {
                for key in shopper(c).keys() {
                    prop_assert!(sale.usage(key) <= LIMIT);
                    prop_assert_eq!(sale.usage(key), model.used_by(key));
                }
            }
            prop_assert_eq!(sale.check_deep(), Ok(()));
        }
        let restored = Sale::restore(sale.snapshot()).expect("snapshot restores");
        prop_assert_eq!(restored.snapshot(), sale.snapshot());
        for c in 0..4 {
            for key in shopper(c).keys() {
                prop_assert_eq!(restored.usage(key), sale.usage(key));
            }
        }
    }
}

/// Expiry events come before the command's own, so replay sees units return first.
#[test]
fn expiry_is_logged_before_the_command_that_noticed_it() {
    let mut sale = Sale::new(spec(1, [0; 4]));
    let opens = Timestamp(OPENS_AT);
    let hold = Command::PlaceHold {
        shopper: shopper(0),
        quantity: 1,
        channel: Channel::Web,
        pass: None,
    };
    assert!(sale.handle(&hold, opens).outcome.is_ok());
    let later = Timestamp(OPENS_AT + HOLD_TTL as i64);
    let other = Command::PlaceHold {
        shopper: shopper(2),
        quantity: 1,
        channel: Channel::Web,
        pass: None,
    };
    let handled = sale.handle(&other, later);
    assert!(matches!(
        handled.events[0],
        Event::HoldExpired { hold: HoldId(1) }
    ));
    assert!(matches!(handled.events[1], Event::HoldPlaced(_)));
    let first = shopper(0);
    let usage: HashMap<_, _> = first.keys().iter().map(|k| (k, sale.usage(k))).collect();
    assert!(
        usage.values().all(|&u| u == 0),
        "expired hold no longer counts: {usage:?}"
    );
}
