//! One test per sale rule, written as a story a reader can check by eye.

use holdfast_core::{
    Channel, Command, DAY_MAX, DAY_MIN, Day, DeliveryPlan, HoldId, QueueMode, Rejection, Reply,
    Sale, SaleSpec, SaleStatus, Shopper, SpecError, Timestamp,
};

const OPENS: Timestamp = Timestamp(1_700_000_000_000);
const TTL: u64 = 60_000;

fn spec(stock: u32, limit: u32) -> SaleSpec {
    SaleSpec {
        id: "masks".into(),
        sku: "KF94".into(),
        name: "KF94 masks".into(),
        price: 39_900,
        stock,
        per_customer_limit: limit,
        opens_at: OPENS,
        closes_at: None,
        hold_ttl_millis: TTL,
        queue: QueueMode::None,
        rehearsal: false,
        channel_shares: [0; 4],
        price_ceiling: None,
        delivery: None,
        admission_per_s: holdfast_core::ADMISSION_PER_S_DEFAULT,
        pass_ttl_millis: holdfast_core::PASS_TTL_MILLIS_DEFAULT,
        lottery_seed: None,
    }
}

fn at(seconds_after_opening: i64) -> Timestamp {
    Timestamp(OPENS.0 + seconds_after_opening * 1000)
}

fn alice() -> Shopper {
    Shopper::new("alice", Some("010-1234-5678"), Some("1 Elm St")).unwrap()
}

fn hold(
    sale: &mut Sale,
    who: &Shopper,
    quantity: u32,
    now: Timestamp,
) -> Result<HoldId, Rejection> {
    hold_on(sale, who, quantity, Channel::Web, now)
}

fn hold_on(
    sale: &mut Sale,
    who: &Shopper,
    quantity: u32,
    channel: Channel,
    now: Timestamp,
) -> Result<HoldId, Rejection> {
    let command = Command::PlaceHold {
        shopper: who.clone(),
        quantity,
        channel,
        pass: None,
    };
    match sale.handle(&command, now).outcome? {
        Reply::Held(h) => Ok(h.id),
        other => panic!("unexpected reply {other:?}"),
    }
}

fn confirm(sale: &mut Sale, who: &Shopper, id: HoldId, now: Timestamp) -> Result<Reply, Rejection> {
    let command = Command::ConfirmHold {
        hold: id,
        customer_id: who.customer_id().into(),
        payment_ref: "auth-1".into(),
    };
    sale.handle(&command, now).outcome
}

#[test]
fn hold_then_confirm_sells_the_unit() {
    let mut sale = Sale::new(spec(2, 1));
    let id = hold(&mut sale, &alice(), 1, at(0)).unwrap();
    assert_eq!((sale.available(), sale.held(), sale.sold()), (1, 1, 0));
    let Ok(Reply::Confirmed(order)) = confirm(&mut sale, &alice(), id, at(5)) else {
        panic!()
    };
    assert_eq!(
        (order.quantity, order.amount, order.rehearsal),
        (1, 39_900, false)
    );
    assert_eq!((sale.available(), sale.held(), sale.sold()), (1, 0, 1));
    // Confirming again returns the same order and sells nothing more.
    let Ok(Reply::Confirmed(again)) = confirm(&mut sale, &alice(), id, at(6)) else {
        panic!()
    };
    assert_eq!(again, order);
    assert_eq!(sale.sold(), 1);
}

#[test]
fn released_hold_returns_its_unit_and_cannot_be_confirmed() {
    let mut sale = Sale::new(spec(1, 1));
    let id = hold(&mut sale, &alice(), 1, at(0)).unwrap();
    let release = Command::ReleaseHold {
        hold: id,
        customer_id: "alice".into(),
    };
    assert_eq!(sale.handle(&release, at(1)).outcome, Ok(Reply::Released));
    assert_eq!(sale.available(), 1);
    assert_eq!(
        confirm(&mut sale, &alice(), id, at(2)),
        Err(Rejection::HoldReleased)
    );
}

#[test]
fn expired_hold_returns_to_the_pool_and_confirm_says_expired() {
    let mut sale = Sale::new(spec(1, 1));
    let id = hold(&mut sale, &alice(), 1, at(0)).unwrap();
    let bob = Shopper::new("bob", None, None).unwrap();
    assert_eq!(
        hold(&mut sale, &bob, 1, at(59)),
        Err(Rejection::SoldOut { available: 0 })
    );
    // At exactly the TTL the hold is gone: bob gets the unit, alice is told it expired.
    assert!(hold(&mut sale, &bob, 1, at(60)).is_ok());
    assert_eq!(
        confirm(&mut sale, &alice(), id, at(61)),
        Err(Rejection::HoldExpired)
    );
}

#[test]
fn a_tick_alone_expires_holds() {
    let mut sale = Sale::new(spec(3, 3));
    hold(&mut sale, &alice(), 3, at(0)).unwrap();
    let handled = sale.handle(&Command::Tick, at(60));
    assert_eq!(handled.events.len(), 1);
    assert_eq!(sale.available(), 3);
}

#[test]
fn nothing_is_sold_before_opening_or_after_closing() {
    let mut sale = Sale::new(SaleSpec {
        closes_at: Some(at(3600)),
        ..spec(10, 1)
    });
    let early = hold(&mut sale, &alice(), 1, Timestamp(OPENS.0 - 1));
    assert_eq!(early, Err(Rejection::NotOpenYet { opens_at: OPENS }));
    assert_eq!(sale.status(Timestamp(OPENS.0 - 1)), SaleStatus::Scheduled);
    assert_eq!(sale.status(at(0)), SaleStatus::Open);
    assert_eq!(
        hold(&mut sale, &alice(), 1, at(3600)),
        Err(Rejection::Closed)
    );
    assert_eq!(sale.status(at(3600)), SaleStatus::Closed);
    assert_eq!(early.unwrap_err().code(), "not_open");
}

#[test]
fn operator_close_stops_new_holds_but_keeps_promises() {
    let mut sale = Sale::new(spec(10, 2));
    let id = hold(&mut sale, &alice(), 1, at(0)).unwrap();
    assert_eq!(
        sale.handle(&Command::Close, at(1)).outcome,
        Ok(Reply::Closed)
    );
    let bob = Shopper::new("bob", None, None).unwrap();
    assert_eq!(hold(&mut sale, &bob, 1, at(2)), Err(Rejection::Closed));
    // A hold taken before the close can still be paid for: it was promised.
    assert!(confirm(&mut sale, &alice(), id, at(3)).is_ok());
}

#[test]
fn restock_mid_sale_reopens_a_sold_out_sale() {
    let mut sale = Sale::new(spec(1, 1));
    hold(&mut sale, &alice(), 1, at(0)).unwrap();
    assert_eq!(sale.status(at(1)), SaleStatus::SoldOut);
    let restock = Command::Restock { quantity: 30 };
    assert_eq!(sale.handle(&restock, at(2)).outcome, Ok(Reply::Restocked));
    assert_eq!((sale.total(), sale.available()), (31, 30));
    assert_eq!(sale.status(at(3)), SaleStatus::Open);
}

#[test]
fn limit_counts_holds_and_orders_across_accounts_sharing_phone_or_address() {
    let mut sale = Sale::new(spec(100, 1));
    let id = hold(&mut sale, &alice(), 1, at(0)).unwrap();
    confirm(&mut sale, &alice(), id, at(1)).unwrap();
    let limit_hit = Err(Rejection::LimitExceeded { limit: 1, used: 1 });
    // Same person, second account, phone written differently.
    let same_phone = Shopper::new("alice-2", Some("+82 10 1234 5678"), None).unwrap();
    assert_eq!(hold(&mut sale, &same_phone, 1, at(2)), limit_hit);
    // Same address, differently punctuated.
    let same_address = Shopper::new("alice-3", None, Some("1 elm st.")).unwrap();
    assert_eq!(hold(&mut sale, &same_address, 1, at(3)), limit_hit);
    // A stranger is fine.
    let bob = Shopper::new("bob", Some("010-9999-0000"), Some("2 Oak Rd")).unwrap();
    assert!(hold(&mut sale, &bob, 1, at(4)).is_ok());
    // Asking for more than the limit at once is refused too.
    let carol = Shopper::new("carol", None, None).unwrap();
    assert_eq!(
        hold(&mut sale, &carol, 2, at(5)),
        Err(Rejection::LimitExceeded { limit: 1, used: 0 })
    );
}

#[test]
fn rehearsal_orders_are_flagged() {
    let mut sale = Sale::new(SaleSpec {
        rehearsal: true,
        ..spec(5, 1)
    });
    let id = hold(&mut sale, &alice(), 1, at(0)).unwrap();
    let Ok(Reply::Confirmed(order)) = confirm(&mut sale, &alice(), id, at(1)) else {
        panic!()
    };
    assert!(order.rehearsal);
}

#[test]
fn a_channel_cannot_take_another_channels_share_until_it_is_released() {
    // 10 units: 4 reserved for phone ordering, 6 common.
    let mut sale = Sale::new(SaleSpec {
        channel_shares: [0, 0, 4, 0],
        ..spec(10, 10)
    });
    hold_on(&mut sale, &alice(), 6, Channel::Web, at(0)).unwrap();
    let bob = Shopper::new("bob", None, None).unwrap();
    assert_eq!(
        hold_on(&mut sale, &bob, 1, Channel::Web, at(1)),
        Err(Rejection::SoldOut { available: 0 })
    );
    assert!(hold_on(&mut sale, &bob, 1, Channel::Phone, at(2)).is_ok());
    assert_eq!(sale.share_left(Channel::Phone), 3);
    let release = Command::ReleaseChannelShare {
        channel: Channel::Phone,
    };
    let handled = sale.handle(&release, at(3));
    assert_eq!(handled.outcome, Ok(Reply::ShareReleased { quantity: 3 }));
    let carol = Shopper::new("carol", None, None).unwrap();
    assert!(hold_on(&mut sale, &carol, 3, Channel::Web, at(4)).is_ok());
}

#[test]
fn a_price_above_the_ceiling_is_refused() {
    let gouging = SaleSpec {
        price: 120_000,
        price_ceiling: Some(50_000),
        ..spec(10, 1)
    };
    assert_eq!(
        gouging.validate(),
        Err(SpecError::PriceAboveCeiling {
            price: 120_000,
            ceiling: 50_000
        })
    );
    assert_eq!(
        gouging.validate().unwrap_err().code(),
        "price_above_ceiling"
    );
}

#[test]
fn delivery_day_is_quoted_at_hold_and_kept_at_confirm() {
    let first_day = OPENS.day();
    let mut sale = Sale::new(SaleSpec {
        delivery: Some(DeliveryPlan {
            capacity_per_day: 2,
            first_day,
        }),
        ..spec(10, 1)
    });
    let mut days = Vec::new();
    for n in 0..5 {
        let who = Shopper::new(&format!("c{n}"), None, None).unwrap();
        let command = Command::PlaceHold {
            shopper: who.clone(),
            quantity: 1,
            channel: Channel::Web,
            pass: None,
        };
        let Ok(Reply::Held(h)) = sale.handle(&command, at(n)).outcome else {
            panic!()
        };
        let Ok(Reply::Confirmed(order)) = confirm(&mut sale, &who, h.id, at(n)) else {
            panic!()
        };
        assert_eq!(order.deliver_by, h.deliver_by, "the quoted day is kept");
        days.push(h.deliver_by.unwrap().0 - first_day.0);
    }
    assert_eq!(days, [0, 0, 1, 1, 2]);
    assert_eq!(sale.delivery_quote(at(10)), Ok(Some(Day(first_day.0 + 2))));
}

#[test]
fn no_hold_is_promised_a_day_past_the_calendar() {
    let mut sale = Sale::new(SaleSpec {
        delivery: Some(DeliveryPlan {
            capacity_per_day: 1,
            first_day: Day(DAY_MAX.0 - 1),
        }),
        ..spec(10, 1)
    });
    let mut answers = Vec::new();
    for n in 0..3 {
        let command = Command::PlaceHold {
            shopper: Shopper::new(&format!("c{n}"), None, None).unwrap(),
            quantity: 1,
            channel: Channel::Web,
            pass: None,
        };
        answers.push(sale.handle(&command, at(n)).outcome.map(|r| match r {
            Reply::Held(h) => h.deliver_by,
            other => panic!("{other:?}"),
        }));
    }
    assert_eq!(
        answers,
        [
            Ok(Some(Day(DAY_MAX.0 - 1))),
            Ok(Some(DAY_MAX)),
            Err(Rejection::NoDeliveryDay)
        ]
    );
    assert_eq!(
        (sale.held(), sale.available()),
        (2, 8),
        "the refusal took nothing"
    );
}

#[test]
fn a_delivery_day_outside_the_calendar_is_refused_at_creation() {
    for first_day in [Day(DAY_MIN.0 - 1), DAY_MAX.next(), Day(95_000_000)] {
        let spec = SaleSpec {
            delivery: Some(DeliveryPlan {
                capacity_per_day: 1,
                first_day,
            }),
            ..spec(10, 1)
        };
        assert_eq!(
            spec.validate(),
            Err(SpecError::DeliveryDayOutOfRange),
            "{first_day:?}"
        );
    }
}

#[test]
fn allotments_leave_the_pool_and_come_back() {
    let mut sale = Sale::new(spec(10, 1));
    let holder = holdfast_core::HolderId("terminal-7".into());
    let claim = Command::ClaimAllotment {
        holder: holder.clone(),
        channel: Channel::Store,
        quantity: 20,
    };
    assert_eq!(
        sale.handle(&claim, at(0)).outcome,
        Ok(Reply::Granted { quantity: 10 })
    );
    assert_eq!(
        hold(&mut sale, &alice(), 1, at(1)),
        Err(Rejection::SoldOut { available: 0 })
    );
    let sold = till_sale(&holder, 4, Some(1), at(2), None);
    assert!(sale.handle(&sold, at(2)).outcome.is_ok());
    // The same journal entry again (a retried sync) changes nothing.
    assert!(sale.handle(&sold, at(2)).outcome.is_ok());
    assert_eq!(sale.sold(), 4);
    let over = till_sale(&holder, 7, Some(2), at(3), None);
    assert_eq!(
        sale.handle(&over, at(3)).outcome,
        Err(Rejection::AllotmentExceeded { allotted: 6 })
    );
    let back = Command::ReturnAllotment {
        holder,
        quantity: 6,
    };
    assert!(sale.handle(&back, at(4)).outcome.is_ok());
    assert_eq!((sale.available(), sale.allotted(), sale.sold()), (6, 0, 4));
}

#[test]
fn another_customers_hold_is_invisible() {
    let mut sale = Sale::new(spec(1, 1));
    let id = hold(&mut sale, &alice(), 1, at(0)).unwrap();
    let mallory = Shopper::new("mallory", None, None).unwrap();
    assert_eq!(
        confirm(&mut sale, &mallory, id, at(1)),
        Err(Rejection::HoldNotFound)
    );
    let release = Command::ReleaseHold {
        hold: id,
        customer_id: "mallory".into(),
    };
    assert_eq!(
        sale.handle(&release, at(2)).outcome,
        Err(Rejection::HoldNotFound)
    );
    assert_eq!(sale.held(), 1);
}

fn till_sale(
    holder: &holdfast_core::HolderId,
    quantity: u32,
    journal_seq: Option<u64>,
    sold_at: Timestamp,
    buyer: Option<Shopper>,
) -> Command {
    Command::RecordAllottedSale {
        holder: holder.clone(),
        quantity,
        journal_seq,
        sold_at,
        unit_price: 39_900,
        buyer,
    }
}

fn till_holding(units: u32) -> (Sale, holdfast_core::HolderId) {
    let mut sale = Sale::new(spec(10, 1));
    let holder = holdfast_core::HolderId("terminal-7".into());
    let claim = Command::ClaimAllotment {
        holder: holder.clone(),
        channel: Channel::Store,
        quantity: units,
    };
    assert!(sale.handle(&claim, at(0)).outcome.is_ok());
    (sale, holder)
}

#[test]
fn a_till_cannot_take_units_before_the_opening() {
    let mut sale = Sale::new(spec(10, 1));
    let claim = Command::ClaimAllotment {
        holder: holdfast_core::HolderId("terminal-7".into()),
        channel: Channel::Store,
        quantity: 3,
    };
    assert_eq!(
        sale.handle(&claim, at(-3600)).outcome,
        Err(Rejection::NotOpenYet { opens_at: OPENS })
    );
    assert_eq!(sale.allotted(), 0);
}

#[test]
fn a_till_sale_outside_the_window_or_at_another_price_is_refused() {
    let (mut sale, holder) = till_holding(5);
    let early = till_sale(&holder, 1, Some(1), at(-60), None);
    assert_eq!(
        sale.handle(&early, at(10)).outcome,
        Err(Rejection::NotOpenYet { opens_at: OPENS })
    );
    let cheap = Command::RecordAllottedSale {
        holder: holder.clone(),
        quantity: 3,
        journal_seq: Some(2),
        sold_at: at(5),
        unit_price: 1_000,
        buyer: None,
    };
    assert_eq!(
        sale.handle(&cheap, at(10)).outcome,
        Err(Rejection::PriceMismatch {
            charged: 1_000,
            price: 39_900
        })
    );
    assert!(sale.handle(&Command::Close, at(20)).outcome.is_ok());
    let late = till_sale(&holder, 1, Some(3), at(21), None);
    assert_eq!(sale.handle(&late, at(30)).outcome, Err(Rejection::Closed));
    let before_closing = till_sale(&holder, 1, Some(4), at(19), None);
    assert_eq!(
        sale.handle(&before_closing, at(30)).outcome,
        Ok(Reply::AllottedSaleRecorded { over_limit: false }),
        "sold while open, synced after the close"
    );
    assert_eq!((sale.allotted(), sale.sold()), (4, 1));
}

/// What a till sold is counted against the person's limit everywhere: a phone that bought at
/// two tills is flagged, and cannot then buy online.
#[test]
fn till_sales_count_against_the_person_and_beyond_the_limit_are_flagged() {
    let (mut sale, holder) = till_holding(5);
    let buyer = || Shopper::new("till-buyer", Some("010-1234-5678"), None).unwrap();
    let first = till_sale(&holder, 1, Some(1), at(1), Some(buyer()));
    assert_eq!(
        sale.handle(&first, at(2)).outcome,
        Ok(Reply::AllottedSaleRecorded { over_limit: false })
    );
    let second = till_sale(&holder, 1, Some(2), at(3), Some(buyer()));
    assert_eq!(
        sale.handle(&second, at(4)).outcome,
        Ok(Reply::AllottedSaleRecorded { over_limit: true }),
        "recorded, since the units left the counter, and flagged"
    );
    assert_eq!(sale.sold(), 2);
    assert_eq!(
        hold(&mut sale, &alice(), 1, at(5)),
        Err(Rejection::LimitExceeded { limit: 1, used: 2 }),
        "alice shares the phone"
    );
    let restored = Sale::restore(sale.snapshot()).unwrap();
    let buyer = buyer();
    assert_eq!(
        restored.till_usage(&buyer.keys()[1]),
        2,
        "kept in snapshots"
    );
}
