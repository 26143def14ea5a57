//! The sale state machine.
//!
//! Every unit of a sale is, at every instant, in exactly one place:
//!
//! ```text
//! total = pool + allotted + held + sold        pool = common + Σ channel shares
//! ```
//!
//! `Sale::handle` takes a command and the caller's `now`, first expires the holds that are due,
//! then *decides* (validates, producing events or a rejection) and *applies* the events.
//! Replay after a restart calls `Sale::apply` with the logged events only, so decisions are never
//! re-made from a different clock.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::{Deserialize, Serialize};

use crate::chunks::Chunks;
use crate::delivery::DeliveryCalendar;
use crate::person::{IdentityKey, Shopper};
use crate::queue::{EntryId, Queue, QueueSnapshot, key_digest};
use crate::rejection::Rejection;
use crate::spec::{Channel, QueueMode, STOCK_MAX, SaleSpec};
use crate::time::{Day, Timestamp};

/// A hold's number within its sale, assigned in order from 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct HoldId(pub u64);

/// An order's number within its sale, assigned in order from 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct OrderId(pub u64);

/// Who holds an allotment: a server node or a POS terminal.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct HolderId(pub String);

/// Units reserved for one shopper until `expires_at` or confirmation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hold {
    pub id: HoldId,
    pub shopper: Shopper,
    pub quantity: u32,
    pub channel: Channel,
    /// How many of `quantity` came out of the channel's share; the rest came from common.
    pub from_share: u32,
    pub placed_at: Timestamp,
    pub expires_at: Timestamp,
    /// The delivery day booked for this hold, when the sale has a delivery plan.
    pub deliver_by: Option<Day>,
    /// The waiting-room position whose admission pass this hold used.
    pub pass: Option<u32>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Order {
    pub id: OrderId,
    pub hold: HoldId,
    pub shopper: Shopper,
    pub quantity: u32,
    pub channel: Channel,
    pub amount: u64,
    pub payment_ref: String,
    pub created_at: Timestamp,
    pub deliver_by: Option<Day>,
    pub rehearsal: bool,
}

/// What became of a hold that is no longer active.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum HoldEnd {
    Confirmed(OrderId),
    Released,
    Expired,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    PlaceHold {
        shopper: Shopper,
        quantity: u32,
        channel: Channel,
        /// The admitted position, on a sale with a waiting room. The caller has checked that
        /// the pass was issued to this shopper.
        pass: Option<u32>,
    },
    /// Takes a place in the waiting room (or finds the one this person already has).
    Join {
        shopper: Shopper,
    },
    /// Payment was already authorised by the caller; `payment_ref` names that authorisation.
    ConfirmHold {
        hold: HoldId,
        customer_id: String,
        payment_ref: String,
    },
    ReleaseHold {
        hold: HoldId,
        customer_id: String,
    },
    Restock {
        quantity: u32,
    },
    Close,
    /// Hands a channel's unsold share to the common pool.
    ReleaseChannelShare {
        channel: Channel,
    },
    ClaimAllotment {
        holder: HolderId,
        channel: Channel,
        quantity: u32,
    },
    ReturnAllotment {
        holder: HolderId,
        quantity: u32,
    },
    /// A holder sold units out of its allotment (e.g. a terminal while offline).
    RecordAllottedSale {
        holder: HolderId,
        quantity: u32,
        /// The holder's journal entry this sale comes from. A sale from an entry at or below
        /// the last one applied for this holder is a repeat and changes nothing.
        journal_seq: Option<u64>,
        /// When the holder sold, by its clock: the sale's window applies to that instant.
        sold_at: Timestamp,
        /// The price per unit the holder charged; it must be the sale's.
        unit_price: u64,
        /// Who bought, when the holder recorded it: counted against the per-person limit.
        buyer: Option<Shopper>,
    },
    /// Does nothing but bring the sale up to `now`: expires due holds.
    Tick,
    /// The operator stops (`paused: true`) or restarts part of the sale: see `Pausable`.
    SetPaused {
        part: Pausable,
        paused: bool,
    },
}

/// What an operator can pause while a sale runs (a bot wave, a payment outage, a wrong
/// price): nothing already promised is taken back, and nothing is lost while it waits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Pausable {
    /// No new holds or allotments; holds already placed can still be paid, tills' sales are
    /// still recorded (the units left the counter), and nobody new is admitted.
    Sale,
    /// The waiting room admits nobody new; shoppers keep joining and keep their places, and
    /// passes already given can still be used.
    WaitingRoom,
}

/// Which parts of a sale are paused.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Paused {
    pub sale: bool,
    pub waiting_room: bool,
}

impl Paused {
    fn set(&mut self, part: Pausable, paused: bool) {
        match part {
            Pausable::Sale => self.sale = paused,
            Pausable::WaitingRoom => self.waiting_room = paused,
        }
    }

    pub fn get(&self, part: Pausable) -> bool {
        match part {
            Pausable::Sale => self.sale,
            Pausable::WaitingRoom => self.waiting_room,
        }
    }

    /// Whether the waiting room admits anyone: not while either part is paused (a pass given
    /// while the sale cannot be held would only expire).
    fn admits(&self) -> bool {
        !self.sale && !self.waiting_room
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Event {
    HoldPlaced(Hold),
    /// The hold became an order. The order's other fields follow from the hold and the sale,
    /// so the log does not repeat them.
    HoldConfirmed {
        hold: HoldId,
        order: OrderId,
        payment_ref: String,
        at: Timestamp,
    },
    HoldReleased {
        hold: HoldId,
    },
    HoldExpired {
        hold: HoldId,
    },
    Restocked {
        quantity: u32,
    },
    Closed {
        at: Timestamp,
    },
    ChannelShareReleased {
        channel: Channel,
        quantity: u32,
    },
    AllotmentGranted {
        holder: HolderId,
        channel: Channel,
        quantity: u32,
    },
    AllotmentReturned {
        holder: HolderId,
        quantity: u32,
    },
    AllottedSold {
        holder: HolderId,
        quantity: u32,
        journal_seq: Option<u64>,
        #[serde(default)]
        buyer: Option<Shopper>,
    },
    Joined {
        entry: EntryId,
        keys: Vec<u64>,
    },
    /// The lottery was drawn over the first `entrants` entries, from the sale's seed.
    LotteryDrawn {
        entrants: u32,
    },
    Admitted {
        through: u32,
        at: Timestamp,
    },
    PassesExpired {
        through: u32,
    },
    PauseSet {
        part: Pausable,
        paused: bool,
        at: Timestamp,
    },
}

/// The answer to an accepted command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    Held(Hold),
    Confirmed(Order),
    Released,
    Restocked,
    Closed,
    ShareReleased {
        quantity: u32,
    },
    Granted {
        quantity: u32,
    },
    Returned,
    /// A holder's sale was recorded. `over_limit`: with it, its buyer has more than the
    /// per-person limit; the units are gone already, so it is recorded and flagged for a
    /// person rather than refused.
    AllottedSaleRecorded {
        over_limit: bool,
    },
    Ticked,
    /// The entry index (join order, from 0) of the shopper's place in line, and the entry's
    /// pseudonymous id, as the published draw lists it.
    Joined {
        entry: u32,
        id: EntryId,
    },
    PauseSet,
}

/// Everything one `handle` call did: the events to log (expiries first), and the answer.
#[derive(Debug)]
pub struct Handled {
    pub events: Vec<Event>,
    pub outcome: Result<Reply, Rejection>,
}

/// Where a sale stands at a given instant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SaleStatus {
    Scheduled,
    Open,
    SoldOut,
    Closed,
}

/// The few numbers of a sale that decide, on their own, some answers to a hold: a copy of them
/// (a server's published view) can give those answers without the sale. Whatever
/// `hold_refusal` answers, `Sale::handle` answers the same to any hold at that state and time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HoldCounters {
    pub opens_at: Timestamp,
    pub closes_at: Option<Timestamp>,
    pub closed: bool,
    pub paused: Paused,
    /// Units in the pool (common and every channel's share).
    pub available: u32,
    pub held: u32,
}

impl HoldCounters {
    /// The refusal every hold gets now, whoever asks and for what, if these counters make one
    /// certain. Sold out is certain only when nothing is held: a hold due to expire gives its
    /// units back before the next command is decided.
    pub fn hold_refusal(&self, now: Timestamp) -> Option<Rejection> {
        if self.closed || self.closes_at.is_some_and(|at| now >= at) {
            Some(Rejection::Closed)
        } else if now < self.opens_at {
            Some(Rejection::NotOpenYet {
                opens_at: self.opens_at,
            })
        } else if self.paused.sale {
            Some(Rejection::Paused)
        } else if self.available == 0 && self.held == 0 {
            Some(Rejection::SoldOut { available: 0 })
        } else {
            None
        }
    }
}

impl SaleStatus {
    /// The status of a sale from its spec and a few counters, for readers that hold a copy of
    /// those rather than the sale itself.
    pub fn of(spec: &SaleSpec, closed: bool, available: u32, now: Timestamp) -> SaleStatus {
        if closed || spec.closes_at.is_some_and(|at| now >= at) {
            SaleStatus::Closed
        } else if now < spec.opens_at {
            SaleStatus::Scheduled
        } else if available == 0 {
            SaleStatus::SoldOut
        } else {
            SaleStatus::Open
        }
    }
}

#[derive(Clone, Debug)]
pub struct Sale {
    spec: SaleSpec,
    total: u32,
    common: u32,
    shares: [u32; 4],
    share_released: [bool; 4],
    allotments: BTreeMap<HolderId, u32>,
    allotted: u32,
    held: u32,
    sold: u32,
    closed_at: Option<Timestamp>,
    active: BTreeMap<HoldId, Hold>,
    expiry_queue: BTreeSet<(Timestamp, HoldId)>,
    /// Holds no longer active, with their owner's customer id, so a stranger learns nothing.
    ended: BTreeMap<HoldId, (String, HoldEnd)>,
    usage: HashMap<IdentityKey, u32>,
    /// Units bought at tills per identity key, learned when the till synced.
    till_usage: HashMap<IdentityKey, u32>,
    orders: Chunks<Order>,
    deliveries: DeliveryCalendar,
    last_hold: u64,
    queue: Queue,
    /// The last journal entry applied per holder, so terminal syncs apply exactly once.
    journal_applied: BTreeMap<HolderId, u64>,
    paused: Paused,
}

fn calendar_for(spec: &SaleSpec) -> DeliveryCalendar {
    spec.delivery
        .map_or_else(DeliveryCalendar::default, |plan| {
            DeliveryCalendar::new(plan.capacity_per_day)
        })
}

impl Sale {
    /// A new sale with all its stock in the pool. The spec must already be valid.
    pub fn new(spec: SaleSpec) -> Sale {
        assert_eq!(spec.validate(), Ok(()), "Sale::new needs a validated spec");
        let shares = spec.channel_shares;
        let common = spec.stock - shares.iter().sum::<u32>();
        let sale = Sale {
            total: spec.stock,
            common,
            shares,
            share_released: [false; 4],
            allotments: BTreeMap::new(),
            allotted: 0,
            held: 0,
            sold: 0,
            closed_at: None,
            active: BTreeMap::new(),
            expiry_queue: BTreeSet::new(),
            ended: BTreeMap::new(),
            usage: HashMap::new(),
            till_usage: HashMap::new(),
            orders: Chunks::new(),
            deliveries: calendar_for(&spec),
            last_hold: 0,
            queue: Queue::default(),
            journal_applied: BTreeMap::new(),
            paused: Paused::default(),
            spec,
        };
        sale.assert_balanced();
        sale
    }

    pub fn spec(&self) -> &SaleSpec {
        &self.spec
    }
    pub fn total(&self) -> u32 {
        self.total
    }
    /// Units in the pool: common plus every channel's remaining share.
    pub fn available(&self) -> u32 {
        self.common + self.shares.iter().sum::<u32>()
    }
    pub fn held(&self) -> u32 {
        self.held
    }
    /// The numbers that decide some holds' answers on their own (see `HoldCounters`).
    pub fn counters(&self) -> HoldCounters {
        HoldCounters {
            opens_at: self.spec.opens_at,
            closes_at: self.spec.closes_at,
            closed: self.closed_at.is_some(),
            paused: self.paused,
            available: self.available(),
            held: self.held,
        }
    }
    pub fn sold(&self) -> u32 {
        self.sold
    }
    pub fn allotted(&self) -> u32 {
        self.allotted
    }
    pub fn allotment(&self, holder: &HolderId) -> u32 {
        self.allotments.get(holder).copied().unwrap_or(0)
    }
    pub fn share_left(&self, channel: Channel) -> u32 {
        self.shares[channel.index()]
    }
    /// Units a hold on `channel` could take right now: its own share plus common.
    pub fn available_to(&self, channel: Channel) -> u32 {
        self.common + self.shares[channel.index()]
    }
    pub fn orders(&self) -> &Chunks<Order> {
        &self.orders
    }
    pub fn order(&self, id: OrderId) -> Option<&Order> {
        let index = usize::try_from(id.0.checked_sub(1)?).ok()?;
        self.orders.get(index)
    }
    pub fn active_hold(&self, id: HoldId) -> Option<&Hold> {
        self.active.get(&id)
    }
    /// Units this identity key has held or bought in this sale.
    pub fn usage(&self, key: &IdentityKey) -> u32 {
        self.usage.get(key).copied().unwrap_or(0)
    }
    /// How many records (holds, ended holds, orders) a snapshot of this sale would carry.
    pub fn record_count(&self) -> usize {
        self.active.len() + self.ended.len() + self.orders.len()
    }

    pub fn queue(&self) -> &Queue {
        &self.queue
    }

    pub fn closed_at(&self) -> Option<Timestamp> {
        self.closed_at
    }

    /// Holds ever placed (their ids run from 1 to this).
    pub fn holds_placed(&self) -> u64 {
        self.last_hold
    }

    pub fn paused(&self) -> Paused {
        self.paused
    }

    pub fn status(&self, now: Timestamp) -> SaleStatus {
        SaleStatus::of(&self.spec, self.closed_at.is_some(), self.available(), now)
    }

    fn is_closed(&self, now: Timestamp) -> bool {
        self.closed_at.is_some() || self.spec.closes_at.is_some_and(|at| now >= at)
    }

    /// The delivery day a hold placed at `now` would be given, if the sale has a plan.
    /// `Err` when the sale has a plan but no day up to `DAY_MAX` has room.
    pub fn delivery_quote(&self, now: Timestamp) -> Result<Option<Day>, Rejection> {
        let Some(plan) = self.spec.delivery else {
            return Ok(None);
        };
        let from = plan.first_day.max(now.day());
        self.deliveries
            .quote(from)
            .map(Some)
            .ok_or(Rejection::NoDeliveryDay)
    }

    /// Expires due holds, then decides and applies `command`.
    pub fn handle(&mut self, command: &Command, now: Timestamp) -> Handled {
        let mut events = self.expire_due(now);
        events.extend(self.advance_queue(now));
        let outcome = self.decide(command, now).map(|(decided, reply)| {
            for event in &decided {
                self.apply(event);
            }
            events.extend(decided);
            reply
        });
        self.assert_balanced();
        debug_assert_eq!(self.check_deep(), Ok(()));
        Handled { events, outcome }
    }

    fn expire_due(&mut self, now: Timestamp) -> Vec<Event> {
        let due: Vec<HoldId> = self
            .expiry_queue
            .iter()
            .take_while(|(expires_at, _)| *expires_at <= now)
            .map(|&(_, id)| id)
            .collect();
        due.into_iter()
            .map(|hold| {
                let event = Event::HoldExpired { hold };
                self.apply(&event);
                event
            })
            .collect()
    }

    /// Brings the waiting room up to `now`: the lottery draw at the opening, expiry of unused
    /// passes, and admission of the next positions — as many as the rate allows and never more
    /// than the stock left for those already holding a pass.
    fn advance_queue(&mut self, now: Timestamp) -> Vec<Event> {
        let mut events = Vec::new();
        if self.spec.queue == QueueMode::None {
            return events;
        }
        if self.spec.queue == QueueMode::Lottery
            && self.queue.drawn().is_none()
            && now >= self.spec.opens_at
        {
            events.push(Event::LotteryDrawn {
                entrants: self.queue.entries().len() as u32,
            });
        }
        if let Some(through) = self.queue.next_expiry(now, self.spec.pass_ttl_millis) {
            events.push(Event::PassesExpired { through });
        }
        for event in &events {
            self.apply(event);
        }
        if let Some(admitted) = self.admission_due(now) {
            let event = Event::Admitted {
                through: self.queue.admitted_through() + admitted,
                at: now,
            };
            self.apply(&event);
            events.push(event);
        }
        events
    }

    fn admission_due(&self, now: Timestamp) -> Option<u32> {
        if now < self.spec.opens_at || self.is_closed(now) || !self.paused.admits() {
            return None;
        }
        let rate = u64::from(self.spec.admission_per_s);
        let since = self
            .queue
            .admit_clock()
            .unwrap_or(self.spec.opens_at)
            .max(self.spec.opens_at);
        let elapsed_ms = u64::try_from(now.0 - since.0).unwrap_or(0);
        // At most one second's worth at once, so a pause (or a restart) does not release a burst.
        let budget = (elapsed_ms.saturating_mul(rate) / 1000).min(rate) as u32;
        let room = self.available().saturating_sub(self.queue.outstanding());
        let admitted = budget.min(room).min(self.queue.waiting());
        (admitted > 0).then_some(admitted)
    }

    fn check_pass(&self, pass: Option<u32>) -> Result<(), Rejection> {
        if self.spec.queue == QueueMode::None {
            return Ok(());
        }
        let Some(position) = pass else {
            return Err(Rejection::PassRequired);
        };
        let reason = if position == 0 || position > self.queue.admitted_through() {
            "this position has not been admitted"
        } else if self.queue.is_redeemed(position) {
            "this pass was already used"
        } else if position <= self.queue.expired_through() {
            "this pass expired"
        } else {
            return Ok(());
        };
        Err(Rejection::PassInvalid {
            reason: reason.into(),
        })
    }

    fn decide_join(
        &self,
        shopper: &Shopper,
        now: Timestamp,
    ) -> Result<(Vec<Event>, Reply), Rejection> {
        if self.spec.queue == QueueMode::None {
            return Err(Rejection::NoQueue);
        }
        if self.is_closed(now) {
            return Err(Rejection::Closed);
        }
        let keys: Vec<u64> = shopper.keys().iter().map(key_digest).collect();
        if let Some(entry) = self.queue.find(&keys) {
            let id = self.queue.entries()[entry as usize];
            return Ok((vec![], Reply::Joined { entry, id }));
        }
        let entry = self.queue.entries().len() as u32;
        if entry >= crate::queue::ENTRIES_MAX {
            return Err(Rejection::QueueFull);
        }
        let id = EntryId::of(&self.spec.id, &shopper.keys()[0]);
        Ok((
            vec![Event::Joined { entry: id, keys }],
            Reply::Joined { entry, id },
        ))
    }

    fn decide(&self, command: &Command, now: Timestamp) -> Result<(Vec<Event>, Reply), Rejection> {
        match command {
            Command::PlaceHold {
                shopper,
                quantity,
                channel,
                pass,
            } => self.decide_hold(shopper, *quantity, *channel, *pass, now),
            Command::Join { shopper } => self.decide_join(shopper, now),
            Command::ConfirmHold {
                hold,
                customer_id,
                payment_ref,
            } => self.decide_confirm(*hold, customer_id, payment_ref, now),
            Command::ReleaseHold { hold, customer_id } => self.decide_release(*hold, customer_id),
            Command::Restock { quantity } => {
                let room = STOCK_MAX - self.total;
                if *quantity == 0 || *quantity > room {
                    return Err(Rejection::InvalidQuantity { max: room });
                }
                let event = Event::Restocked {
                    quantity: *quantity,
                };
                Ok((vec![event], Reply::Restocked))
            }
            Command::Close => {
                if self.closed_at.is_some() {
                    return Ok((vec![], Reply::Closed));
                }
                Ok((vec![Event::Closed { at: now }], Reply::Closed))
            }
            Command::ReleaseChannelShare { channel } => {
                if self.share_released[channel.index()] {
                    return Err(Rejection::ShareAlreadyReleased {
                        channel: channel.name().into(),
                    });
                }
                let quantity = self.shares[channel.index()];
                let event = Event::ChannelShareReleased {
                    channel: *channel,
                    quantity,
                };
                Ok((vec![event], Reply::ShareReleased { quantity }))
            }
            Command::ClaimAllotment {
                holder,
                channel,
                quantity,
            } => {
                if self.is_closed(now) {
                    return Err(Rejection::Closed);
                }
                // A till holding units before the opening could sell them before it.
                if now < self.spec.opens_at {
                    return Err(Rejection::NotOpenYet {
                        opens_at: self.spec.opens_at,
                    });
                }
                if self.paused.sale {
                    return Err(Rejection::Paused);
                }
                if *quantity == 0 || *quantity > STOCK_MAX {
                    return Err(Rejection::InvalidQuantity { max: STOCK_MAX });
                }
                let granted = (*quantity).min(self.available_to(*channel));
                if granted == 0 {
                    return Ok((vec![], Reply::Granted { quantity: 0 }));
                }
                let event = Event::AllotmentGranted {
                    holder: holder.clone(),
                    channel: *channel,
                    quantity: granted,
                };
                Ok((vec![event], Reply::Granted { quantity: granted }))
            }
            Command::ReturnAllotment { holder, quantity } => {
                self.check_allotment(holder, *quantity)?;
                let event = Event::AllotmentReturned {
                    holder: holder.clone(),
                    quantity: *quantity,
                };
                Ok((vec![event], Reply::Returned))
            }
            Command::RecordAllottedSale {
                holder,
                quantity,
                journal_seq,
                sold_at,
                unit_price,
                buyer,
            } => self.decide_allotted_sale(
                holder,
                *quantity,
                *journal_seq,
                *sold_at,
                *unit_price,
                buyer.as_ref(),
            ),
            Command::Tick => Ok((vec![], Reply::Ticked)),
            Command::SetPaused { part, paused } => {
                if self.paused.get(*part) == *paused {
                    return Ok((vec![], Reply::PauseSet));
                }
                let event = Event::PauseSet {
                    part: *part,
                    paused: *paused,
                    at: now,
                };
                Ok((vec![event], Reply::PauseSet))
            }
        }
    }

    /// A holder (a till) reports units it sold out of its allotment. Everything a web sale
    /// must respect applies to the instant it sold: the window and the price. A sale beyond a
    /// person's limit has happened already — the units left the counter — so it is recorded
    /// and flagged, never refused.
    fn decide_allotted_sale(
        &self,
        holder: &HolderId,
        quantity: u32,
        journal_seq: Option<u64>,
        sold_at: Timestamp,
        unit_price: u64,
        buyer: Option<&Shopper>,
    ) -> Result<(Vec<Event>, Reply), Rejection> {
        let applied = self.journal_applied.get(holder).copied().unwrap_or(0);
        if journal_seq.is_some_and(|seq| seq <= applied) {
            return Ok((vec![], Reply::AllottedSaleRecorded { over_limit: false }));
        }
        if sold_at < self.spec.opens_at {
            return Err(Rejection::NotOpenYet {
                opens_at: self.spec.opens_at,
            });
        }
        let closed_by = self.closed_at.or(self.spec.closes_at);
        if closed_by.is_some_and(|at| sold_at >= at) {
            return Err(Rejection::Closed);
        }
        if unit_price != self.spec.price {
            return Err(Rejection::PriceMismatch {
                charged: unit_price,
                price: self.spec.price,
            });
        }
        self.check_allotment(holder, quantity)?;
        let used = buyer.map_or(0, |b| self.used_by(b));
        let over_limit =
            u64::from(used) + u64::from(quantity) > u64::from(self.spec.per_customer_limit);
        let event = Event::AllottedSold {
            holder: holder.clone(),
            quantity,
            journal_seq,
            buyer: buyer.cloned(),
        };
        Ok((vec![event], Reply::AllottedSaleRecorded { over_limit }))
    }

    /// Units this person has, through any of their identity keys: held or bought online, and
    /// bought at a till.
    fn used_by(&self, shopper: &Shopper) -> u32 {
        shopper
            .keys()
            .iter()
            .map(|k| self.usage(k).saturating_add(self.till_usage(k)))
            .max()
            .unwrap_or(0)
    }

    /// Units this identity key bought at tills (recorded after the fact; may exceed the limit).
    pub fn till_usage(&self, key: &IdentityKey) -> u32 {
        self.till_usage.get(key).copied().unwrap_or(0)
    }

    fn decide_hold(
        &self,
        shopper: &Shopper,
        quantity: u32,
        channel: Channel,
        pass: Option<u32>,
        now: Timestamp,
    ) -> Result<(Vec<Event>, Reply), Rejection> {
        if let Some(refusal) = self.counters().hold_refusal(now) {
            return Err(refusal);
        }
        // With nothing left for this channel, the answer is the same for everyone.
        if self.available_to(channel) == 0 {
            return Err(Rejection::SoldOut { available: 0 });
        }
        self.check_pass(pass)?;
        if quantity == 0 {
            return Err(Rejection::InvalidQuantity {
                max: self.spec.per_customer_limit,
            });
        }
        let limit = self.spec.per_customer_limit;
        let used = self.used_by(shopper);
        if u64::from(used) + u64::from(quantity) > u64::from(limit) {
            return Err(Rejection::LimitExceeded { limit, used });
        }
        let available = self.available_to(channel);
        if quantity > available {
            return Err(Rejection::SoldOut { available });
        }
        let hold = Hold {
            id: HoldId(self.last_hold + 1),
            shopper: shopper.clone(),
            quantity,
            channel,
            from_share: quantity.min(self.shares[channel.index()]),
            placed_at: now,
            expires_at: now.plus_millis(self.spec.hold_ttl_millis),
            deliver_by: self.delivery_quote(now)?,
            pass,
        };
        Ok((vec![Event::HoldPlaced(hold.clone())], Reply::Held(hold)))
    }

    fn decide_confirm(
        &self,
        id: HoldId,
        customer_id: &str,
        payment_ref: &str,
        now: Timestamp,
    ) -> Result<(Vec<Event>, Reply), Rejection> {
        if let Some(hold) = self.active.get(&id) {
            if hold.shopper.customer_id() != customer_id {
                return Err(Rejection::HoldNotFound);
            }
            let id_of_order = OrderId(self.orders.len() as u64 + 1);
            let order = self.order_for(hold, id_of_order, payment_ref, now);
            let event = Event::HoldConfirmed {
                hold: id,
                order: order.id,
                payment_ref: order.payment_ref.clone(),
                at: now,
            };
            return Ok((vec![event], Reply::Confirmed(order)));
        }
        match self.hold_end_for(id, customer_id) {
            Some(HoldEnd::Confirmed(order_id)) => {
                let order = self.order(order_id).expect("ended hold names a real order");
                Ok((vec![], Reply::Confirmed(order.clone())))
            }
            Some(HoldEnd::Expired) => Err(Rejection::HoldExpired),
            Some(HoldEnd::Released) => Err(Rejection::HoldReleased),
            None => Err(Rejection::HoldNotFound),
        }
    }

    fn decide_release(
        &self,
        id: HoldId,
        customer_id: &str,
    ) -> Result<(Vec<Event>, Reply), Rejection> {
        if let Some(hold) = self.active.get(&id) {
            if hold.shopper.customer_id() != customer_id {
                return Err(Rejection::HoldNotFound);
            }
            return Ok((vec![Event::HoldReleased { hold: id }], Reply::Released));
        }
        match self.hold_end_for(id, customer_id) {
            // Releasing what is already back in the pool changes nothing and is not an error.
            Some(HoldEnd::Released | HoldEnd::Expired) => Ok((vec![], Reply::Released)),
            Some(HoldEnd::Confirmed(_)) => Err(Rejection::HoldConfirmed),
            None => Err(Rejection::HoldNotFound),
        }
    }

    /// How `customer_id`'s hold `id` ended; `None` also when the hold is someone else's.
    pub fn hold_end_for(&self, id: HoldId, customer_id: &str) -> Option<HoldEnd> {
        match self.ended.get(&id) {
            Some((owner, end)) if owner == customer_id => Some(*end),
            _ => None,
        }
    }

    fn check_allotment(&self, holder: &HolderId, quantity: u32) -> Result<(), Rejection> {
        let allotted = self.allotment(holder);
        if quantity == 0 {
            return Err(Rejection::InvalidQuantity { max: allotted });
        }
        if quantity > allotted {
            return Err(Rejection::AllotmentExceeded { allotted });
        }
        Ok(())
    }

    /// Applies one event. Events were validated when decided, so an impossible event means the
    /// log or the code is wrong: stop rather than continue with a wrong ledger.
    pub fn apply(&mut self, event: &Event) {
        match event {
            Event::HoldPlaced(hold) => self.apply_hold_placed(hold),
            Event::HoldConfirmed {
                hold,
                order,
                payment_ref,
                at,
            } => {
                assert_eq!(
                    order.0,
                    self.orders.len() as u64 + 1,
                    "orders are numbered in order"
                );
                let hold = self.end_hold(*hold, HoldEnd::Confirmed(*order));
                self.held -= hold.quantity;
                self.sold += hold.quantity;
                let order = self.order_for(&hold, *order, payment_ref, *at);
                self.orders.push(order);
            }
            Event::HoldReleased { hold } => self.return_hold(*hold, HoldEnd::Released),
            Event::HoldExpired { hold } => self.return_hold(*hold, HoldEnd::Expired),
            Event::Restocked { quantity } => {
                self.total += quantity;
                self.common += quantity;
            }
            Event::Closed { at } => self.closed_at = Some(*at),
            Event::ChannelShareReleased { channel, quantity } => {
                let index = channel.index();
                assert_eq!(self.shares[index], *quantity);
                self.shares[index] = 0;
                self.share_released[index] = true;
                self.common += quantity;
            }
            Event::AllotmentGranted {
                holder,
                channel,
                quantity,
            } => {
                let from_share = (*quantity).min(self.shares[channel.index()]);
                self.shares[channel.index()] -= from_share;
                self.common -= quantity - from_share;
                self.allotted += quantity;
                *self.allotments.entry(holder.clone()).or_default() += quantity;
            }
            Event::AllotmentReturned { holder, quantity } => {
                self.take_from_allotment(holder, *quantity);
                self.common += quantity;
            }
            Event::AllottedSold {
                holder,
                quantity,
                journal_seq,
                buyer,
            } => {
                self.take_from_allotment(holder, *quantity);
                self.sold += quantity;
                if let Some(seq) = journal_seq {
                    self.journal_applied.insert(holder.clone(), *seq);
                }
                for key in buyer.iter().flat_map(Shopper::keys) {
                    let used = self.till_usage.entry(key.clone()).or_default();
                    *used = used.saturating_add(*quantity);
                }
            }
            Event::Joined { entry, keys } => self.queue.apply_joined(*entry, keys),
            Event::LotteryDrawn { entrants } => {
                let seed = self.spec.lottery_seed.expect("only a lottery is drawn");
                self.queue.apply_drawn(*entrants, &seed);
            }
            Event::Admitted { through, at } => self.queue.apply_admitted(*through, *at),
            Event::PassesExpired { through } => self.queue.apply_passes_expired(*through),
            Event::PauseSet { part, paused, .. } => self.paused.set(*part, *paused),
        }
    }

    /// The order a confirmed hold becomes: the one construction that deciding and replaying
    /// share, so a replayed order is the order that was answered.
    fn order_for(&self, hold: &Hold, id: OrderId, payment_ref: &str, at: Timestamp) -> Order {
        Order {
            id,
            hold: hold.id,
            shopper: hold.shopper.clone(),
            quantity: hold.quantity,
            channel: hold.channel,
            amount: self.spec.price * u64::from(hold.quantity),
            payment_ref: payment_ref.to_owned(),
            created_at: at,
            deliver_by: hold.deliver_by,
            rehearsal: self.spec.rehearsal,
        }
    }

    fn apply_hold_placed(&mut self, hold: &Hold) {
        assert_eq!(hold.id.0, self.last_hold + 1, "holds are numbered in order");
        let share = &mut self.shares[hold.channel.index()];
        *share -= hold.from_share;
        self.common -= hold.quantity - hold.from_share;
        self.held += hold.quantity;
        self.last_hold = hold.id.0;
        self.book(hold, 1);
        self.expiry_queue.insert((hold.expires_at, hold.id));
        self.active.insert(hold.id, hold.clone());
        if let Some(position) = hold.pass {
            self.queue.apply_redeemed(position);
        }
    }

    /// Puts a released or expired hold's units back where they came from, and frees its
    /// delivery slot and its count against the person's limit.
    fn return_hold(&mut self, id: HoldId, end: HoldEnd) {
        let hold = self.end_hold(id, end);
        let index = hold.channel.index();
        if self.share_released[index] {
            self.common += hold.quantity;
        } else {
            self.shares[index] += hold.from_share;
            self.common += hold.quantity - hold.from_share;
        }
        self.held -= hold.quantity;
        self.book(&hold, -1);
    }

    fn end_hold(&mut self, id: HoldId, end: HoldEnd) -> Hold {
        let hold = self.active.remove(&id).expect("event names an active hold");
        assert!(self.expiry_queue.remove(&(hold.expires_at, id)));
        self.ended
            .insert(id, (hold.shopper.customer_id().to_owned(), end));
        hold
    }

    /// Counts (`+1`) or uncounts (`-1`) a hold against the person's limit and the delivery
    /// calendar. A confirmed hold stays counted: orders count against the limit too.
    fn book(&mut self, hold: &Hold, direction: i8) {
        for key in hold.shopper.keys() {
            let used = self.usage.entry(key.clone()).or_default();
            if direction > 0 {
                *used += hold.quantity;
            } else {
                *used -= hold.quantity;
            }
        }
        if let Some(day) = hold.deliver_by {
            if direction > 0 {
                self.deliveries.book(day);
            } else {
                self.deliveries.unbook(day);
            }
        }
    }

    fn take_from_allotment(&mut self, holder: &HolderId, quantity: u32) {
        let allotment = self
            .allotments
            .get_mut(holder)
            .expect("event names a holder");
        *allotment -= quantity;
        if *allotment == 0 {
            self.allotments.remove(holder);
        }
        self.allotted -= quantity;
    }

    /// The escrow equation. Cheap, so it is asserted after every command.
    fn assert_balanced(&self) {
        let accounted = u64::from(self.available())
            + u64::from(self.allotted)
            + u64::from(self.held)
            + u64::from(self.sold);
        assert_eq!(
            u64::from(self.total),
            accounted,
            "escrow broken: total != pool + allotted + held + sold"
        );
    }

    /// Recomputes every derived counter from the records and compares. O(holds + orders):
    /// run after every step in tests and debug builds.
    pub fn check_deep(&self) -> Result<(), String> {
        let held: u32 = self.active.values().map(|h| h.quantity).sum();
        let sold_orders: u32 = self.orders.iter().map(|o| o.quantity).sum();
        let allotted: u32 = self.allotments.values().sum();
        if held != self.held {
            return Err(format!("held {} but active holds sum to {held}", self.held));
        }
        if allotted != self.allotted {
            return Err(format!(
                "allotted {} but allotments sum to {allotted}",
                self.allotted
            ));
        }
        if sold_orders > self.sold {
            return Err(format!(
                "orders sum to {sold_orders} but sold is {}",
                self.sold
            ));
        }
        let mut usage: HashMap<&IdentityKey, u32> = HashMap::new();
        let holds = self.active.values().map(|h| (&h.shopper, h.quantity));
        let bought = self.orders.iter().map(|o| (&o.shopper, o.quantity));
        for (shopper, quantity) in holds.chain(bought) {
            for key in shopper.keys() {
                *usage.entry(key).or_default() += quantity;
            }
        }
        for (key, used) in &usage {
            if *used > self.spec.per_customer_limit {
                return Err(format!("{key:?} has {used}, over the limit"));
            }
            if self.usage(key) != *used {
                return Err(format!(
                    "usage of {key:?} is {} but records say {used}",
                    self.usage(key)
                ));
            }
        }
        if self.usage.values().filter(|&&u| u > 0).count()
            != usage.values().filter(|&&u| u > 0).count()
        {
            return Err("usage counts a key no record carries".into());
        }
        self.queue.check()?;
        self.assert_balanced();
        Ok(())
    }

    /// The sale's records, from which `restore` rebuilds every derived counter.
    pub fn snapshot(&self) -> SaleSnapshot {
        SaleSnapshot {
            spec: self.spec.clone(),
            total: self.total,
            common: self.common,
            shares: self.shares,
            share_released: self.share_released,
            allotments: self.allotments.clone().into_iter().collect(),
            sold: self.sold,
            closed_at: self.closed_at,
            active: self.active.values().cloned().collect(),
            ended: self
                .ended
                .iter()
                .map(|(id, (owner, end))| (*id, owner.clone(), *end))
                .collect(),
            orders: self.orders.iter().cloned().collect(),
            last_hold: self.last_hold,
            queue: self.queue.snapshot(),
            journal_applied: self.journal_applied.clone().into_iter().collect(),
            till_usage: {
                let mut usage: Vec<_> = self.till_usage.clone().into_iter().collect();
                usage.sort();
                usage
            },
            paused: self.paused,
        }
    }

    /// Rebuilds a sale from a snapshot, recomputing derived state, and checks it deeply: a
    /// snapshot that does not add up is refused rather than trusted.
    pub fn restore(snapshot: SaleSnapshot) -> Result<Sale, String> {
        snapshot.spec.validate().map_err(|e| e.to_string())?;
        let seed = snapshot.spec.lottery_seed;
        let deliveries = calendar_for(&snapshot.spec);
        let mut sale = Sale {
            spec: snapshot.spec,
            total: snapshot.total,
            common: snapshot.common,
            shares: snapshot.shares,
            share_released: snapshot.share_released,
            allotted: snapshot.allotments.iter().map(|(_, q)| q).sum(),
            allotments: snapshot.allotments.into_iter().collect(),
            held: snapshot.active.iter().map(|h| h.quantity).sum(),
            sold: snapshot.sold,
            closed_at: snapshot.closed_at,
            active: BTreeMap::new(),
            expiry_queue: BTreeSet::new(),
            ended: snapshot
                .ended
                .into_iter()
                .map(|(id, owner, end)| (id, (owner, end)))
                .collect(),
            usage: HashMap::new(),
            till_usage: snapshot.till_usage.into_iter().collect(),
            orders: Chunks::new(),
            deliveries,
            last_hold: snapshot.last_hold,
            queue: Queue::restore(snapshot.queue, seed.as_ref()),
            journal_applied: snapshot.journal_applied.into_iter().collect(),
            paused: snapshot.paused,
        };
        for hold in snapshot.active {
            sale.book(&hold, 1);
            sale.expiry_queue.insert((hold.expires_at, hold.id));
            sale.active.insert(hold.id, hold);
        }
        for order in snapshot.orders {
            sale.count_order(&order);
            sale.orders.push(order);
        }
        let accounted = u64::from(sale.available())
            + u64::from(sale.allotted)
            + u64::from(sale.held)
            + u64::from(sale.sold);
        if accounted != u64::from(sale.total) {
            return Err("snapshot does not balance".into());
        }
        sale.check_deep()?;
        Ok(sale)
    }

    fn count_order(&mut self, order: &Order) {
        for key in order.shopper.keys() {
            *self.usage.entry(key.clone()).or_default() += order.quantity;
        }
        if let Some(day) = order.deliver_by {
            self.deliveries.book(day);
        }
    }
}

/// A sale's records without derived indexes, for fast start-up on a long log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SaleSnapshot {
    spec: SaleSpec,
    total: u32,
    common: u32,
    shares: [u32; 4],
    share_released: [bool; 4],
    allotments: Vec<(HolderId, u32)>,
    sold: u32,
    closed_at: Option<Timestamp>,
    active: Vec<Hold>,
    ended: Vec<(HoldId, String, HoldEnd)>,
    orders: Vec<Order>,
    last_hold: u64,
    queue: QueueSnapshot,
    journal_applied: Vec<(HolderId, u64)>,
    #[serde(default)]
    till_usage: Vec<(IdentityKey, u32)>,
    #[serde(default)]
    paused: Paused,
}
