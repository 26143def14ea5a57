//! Waiting-room rules: order, dedupe, the draw, stock-aware admission, passes.

mod common;

use holdfast_core::{
    Channel, Command, Event, Pausable, QueueMode, Rejection, Reply, Sale, SaleSpec, Shopper,
    Standing, Timestamp, draw,
};

const OPENS: Timestamp = Timestamp(1_700_000_000_000);
const PASS_TTL: u64 = 60_000;

fn spec(stock: u32, queue: QueueMode, admission_per_s: u32) -> SaleSpec {
    SaleSpec {
        id: "drop".into(),
        sku: "KF94".into(),
        name: "KF94 masks".into(),
        price: 39_900,
        stock,
        per_customer_limit: 1,
        opens_at: OPENS,
        closes_at: None,
        hold_ttl_millis: 300_000,
        queue,
        rehearsal: false,
        channel_shares: [0; 4],
        price_ceiling: None,
        delivery: None,
        admission_per_s,
        pass_ttl_millis: PASS_TTL,
        lottery_seed: (queue == QueueMode::Lottery).then_some([42; 32]),
    }
}

fn at(ms_after_opening: i64) -> Timestamp {
    Timestamp(OPENS.0 + ms_after_opening)
}

fn shopper(n: usize) -> Shopper {
    Shopper::new(&format!("c{n}"), Some(&format!("010-0000-{n:04}")), None).unwrap()
}

fn join(sale: &mut Sale, who: &Shopper, now: Timestamp) -> u32 {
    match sale
        .handle(
            &Command::Join {
                shopper: who.clone(),
            },
            now,
        )
        .outcome
    {
        Ok(Reply::Joined { entry, .. }) => entry,
        other => panic!("join answered {other:?}"),
    }
}

fn hold(
    sale: &mut Sale,
    who: &Shopper,
    pass: Option<u32>,
    now: Timestamp,
) -> Result<Reply, Rejection> {
    let command = Command::PlaceHold {
        shopper: who.clone(),
        quantity: 1,
        channel: Channel::Web,
        pass,
    };
    sale.handle(&command, now).outcome
}

fn view(sale: &Sale) -> holdfast_core::QueueView {
    sale.queue()
        .view(sale.spec().queue == QueueMode::Lottery, PASS_TTL)
}

fn standing(sale: &Sale, entry: u32) -> Standing {
    view(sale).standing(entry)
}

#[test]
fn fifo_positions_follow_arrival_and_one_person_has_one_place() {
    let mut sale = Sale::new(spec(10, QueueMode::Fifo, 100));
    let early = Timestamp(OPENS.0 - 60_000);
    let entries: Vec<u32> = (0..5)
        .map(|n| join(&mut sale, &shopper(n), early))
        .collect();
    assert_eq!(entries, [0, 1, 2, 3, 4]);
    // The same account again, and another account with the same phone: the same place.
    assert_eq!(join(&mut sale, &shopper(3), early), 3);
    let same_phone = Shopper::new("other-account", Some("+82 10 0000 0003"), None).unwrap();
    assert_eq!(join(&mut sale, &same_phone, early), 3);
    assert_eq!(sale.queue().entries().len(), 5);
    assert_eq!(standing(&sale, 2), Standing::Waiting { position: 3 });
}

#[test]
fn nothing_is_admitted_before_the_opening_then_the_rate_and_the_stock_bound_it() {
    let mut sale = Sale::new(spec(3, QueueMode::Fifo, 2));
    for n in 0..10 {
        join(&mut sale, &shopper(n), Timestamp(OPENS.0 - 1000));
    }
    sale.handle(&Command::Tick, Timestamp(OPENS.0 - 1));
    assert_eq!(
        sale.queue().admitted_through(),
        0,
        "closed doors before the opening"
    );
    sale.handle(&Command::Tick, at(1000));
    assert_eq!(sale.queue().admitted_through(), 2, "two per second");
    sale.handle(&Command::Tick, at(2000));
    assert_eq!(
        sale.queue().admitted_through(),
        3,
        "never more passes out than units"
    );
    sale.handle(&Command::Tick, at(9000));
    assert_eq!(sale.queue().admitted_through(), 3);
    assert!(matches!(
        standing(&sale, 0),
        Standing::Admitted { position: 1, .. }
    ));
    assert_eq!(standing(&sale, 3), Standing::Waiting { position: 4 });
}

#[test]
fn a_hold_needs_a_valid_unused_pass() {
    let mut sale = Sale::new(spec(5, QueueMode::Fifo, 1));
    let (alice, bob) = (shopper(0), shopper(1));
    join(&mut sale, &alice, at(0));
    join(&mut sale, &bob, at(0));
    sale.handle(&Command::Tick, at(1000));
    assert_eq!(
        hold(&mut sale, &alice, None, at(1001)),
        Err(Rejection::PassRequired)
    );
    let not_yet = hold(&mut sale, &bob, Some(2), at(1001));
    assert_eq!(not_yet.unwrap_err().code(), "pass_invalid");
    assert!(hold(&mut sale, &alice, Some(1), at(1002)).is_ok());
    let replayed = hold(&mut sale, &bob, Some(1), at(1003));
    assert_eq!(
        replayed,
        Err(Rejection::PassInvalid {
            reason: "this pass was already used".into()
        })
    );
}

#[test]
fn an_unused_pass_expires_and_its_room_admits_the_next_person() {
    let mut sale = Sale::new(spec(1, QueueMode::Fifo, 10));
    for n in 0..3 {
        join(&mut sale, &shopper(n), at(0));
    }
    sale.handle(&Command::Tick, at(1000));
    assert_eq!(sale.queue().admitted_through(), 1, "one unit, one pass");
    sale.handle(&Command::Tick, at(1000 + PASS_TTL as i64));
    assert_eq!(standing(&sale, 0), Standing::PassSpent { position: 1 });
    assert_eq!(
        sale.queue().admitted_through(),
        2,
        "the expired pass's unit goes to the next"
    );
    let late = hold(&mut sale, &shopper(0), Some(1), at(2000 + PASS_TTL as i64));
    assert_eq!(
        late,
        Err(Rejection::PassInvalid {
            reason: "this pass expired".into()
        })
    );
}

#[test]
fn an_expired_hold_and_a_restock_admit_more() {
    let mut sale = Sale::new(spec(1, QueueMode::Fifo, 10));
    for n in 0..4 {
        join(&mut sale, &shopper(n), at(0));
    }
    sale.handle(&Command::Tick, at(1000));
    hold(&mut sale, &shopper(0), Some(1), at(1500)).unwrap();
    sale.handle(&Command::Tick, at(2000));
    assert_eq!(
        sale.queue().admitted_through(),
        1,
        "the unit is held: nobody else yet"
    );
    // The hold lapses (TTL 300 s): its unit comes back and the next person is admitted.
    sale.handle(&Command::Tick, at(1500 + 300_000));
    assert_eq!(sale.queue().admitted_through(), 2);
    sale.handle(&Command::Restock { quantity: 2 }, at(302_000));
    sale.handle(&Command::Tick, at(303_000));
    assert_eq!(sale.queue().admitted_through(), 4);
}

#[test]
fn the_lottery_ranks_pre_opening_entrants_by_the_seed_and_later_ones_queue_behind() {
    let mut sale = Sale::new(spec(100, QueueMode::Lottery, 1000));
    let before = Timestamp(OPENS.0 - 10_000);
    for n in 0..20 {
        join(&mut sale, &shopper(n), before);
    }
    assert_eq!(standing(&sale, 0), Standing::AwaitingDraw);
    let late = join(&mut sale, &shopper(99), at(5));
    assert_eq!(
        sale.queue().drawn(),
        Some(20),
        "drawn at the first moment after opening"
    );
    let expected = draw(&[42; 32], &sale.queue().entries()[..20]);
    let positions: Vec<u32> = (0..20)
        .map(|e| match standing(&sale, e) {
            Standing::Waiting { position } | Standing::Admitted { position, .. } => position,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        positions,
        expected.iter().map(|r| r + 1).collect::<Vec<_>>()
    );
    assert_ne!(
        positions,
        (1..=20).collect::<Vec<u32>>(),
        "a draw, not arrival order"
    );
    assert!(matches!(
        standing(&sale, late),
        Standing::Waiting { position: 21 }
    ));
}

#[test]
fn replay_and_snapshots_rebuild_the_queue() {
    let mut sale = Sale::new(spec(3, QueueMode::Lottery, 2));
    let mut replica = Sale::new(spec(3, QueueMode::Lottery, 2));
    let mut log: Vec<Event> = Vec::new();
    let mut now = Timestamp(OPENS.0 - 5000);
    for n in 0..12 {
        let handled = sale.handle(
            &Command::Join {
                shopper: shopper(n),
            },
            now,
        );
        log.extend(handled.events);
        now = Timestamp(now.0 + 700);
    }
    for step in 0..200 {
        now = Timestamp(now.0 + 1000);
        let handled = sale.handle(&Command::Tick, now);
        log.extend(handled.events);
        for entry in 0..12u32 {
            if let Standing::Admitted { position, .. } = standing(&sale, entry)
                && step % 3 == 0
            {
                let handled = sale.handle(
                    &Command::PlaceHold {
                        shopper: shopper(entry as usize),
                        quantity: 1,
                        channel: Channel::Web,
                        pass: Some(position),
                    },
                    now,
                );
                log.extend(handled.events);
            }
        }
    }
    for event in &log {
        replica.apply(event);
    }
    assert_eq!(replica.snapshot(), sale.snapshot());
    let restored = Sale::restore(sale.snapshot()).unwrap();
    assert_eq!(restored.snapshot(), sale.snapshot());
    assert_eq!(restored.queue().outstanding(), sale.queue().outstanding());
    assert_eq!(sale.check_deep(), Ok(()));
    assert_eq!(
        sale.sold() + sale.held(),
        3,
        "every unit went to someone admitted"
    );
}

fn set_paused(sale: &mut Sale, part: Pausable, paused: bool, now: Timestamp) {
    let answer = sale
        .handle(&Command::SetPaused { part, paused }, now)
        .outcome;
    assert_eq!(answer, Ok(Reply::PauseSet));
}

#[test]
fn a_paused_waiting_room_admits_nobody_keeps_every_place_and_resumes_without_a_burst() {
    let mut sale = Sale::new(spec(100, QueueMode::Fifo, 2));
    for n in 0..4 {
        join(&mut sale, &shopper(n), at(-1000));
    }
    sale.handle(&Command::Tick, at(1000));
    assert_eq!(sale.queue().admitted_through(), 2);
    set_paused(&mut sale, Pausable::WaitingRoom, true, at(1000));
    // Joining goes on while paused, and a pass already given still holds.
    assert_eq!(join(&mut sale, &shopper(9), at(5000)), 4);
    assert!(hold(&mut sale, &shopper(0), Some(1), at(5000)).is_ok());
    sale.handle(&Command::Tick, at(30_000));
    assert_eq!(
        sale.queue().admitted_through(),
        2,
        "nobody admitted while paused"
    );
    set_paused(&mut sale, Pausable::WaitingRoom, false, at(30_000));
    sale.handle(&Command::Tick, at(31_000));
    assert_eq!(
        sale.queue().admitted_through(),
        4,
        "one second's worth after resuming, not the paused time's"
    );
}

#[test]
fn a_paused_sale_takes_no_new_hold_but_the_held_can_still_pay_and_replay_keeps_the_pause() {
    let mut sale = Sale::new(spec(10, QueueMode::Fifo, 5));
    join(&mut sale, &shopper(0), at(-1000));
    join(&mut sale, &shopper(1), at(-1000));
    sale.handle(&Command::Tick, at(1000));
    let Ok(Reply::Held(held)) = hold(&mut sale, &shopper(0), Some(1), at(1000)) else {
        panic!("the first admitted shopper holds");
    };
    set_paused(&mut sale, Pausable::Sale, true, at(2000));
    assert_eq!(
        hold(&mut sale, &shopper(1), Some(2), at(2000)),
        Err(Rejection::Paused)
    );
    let confirm = Command::ConfirmHold {
        hold: held.id,
        customer_id: "c0".into(),
        payment_ref: "auth-1".into(),
    };
    assert!(matches!(
        sale.handle(&confirm, at(3000)).outcome,
        Ok(Reply::Confirmed(_))
    ));
    let restored = Sale::restore(sale.snapshot()).unwrap();
    assert!(restored.paused().sale, "a snapshot keeps the pause");
    set_paused(&mut sale, Pausable::Sale, false, at(4000));
    assert!(hold(&mut sale, &shopper(1), Some(2), at(4000)).is_ok());
}

#[test]
fn joining_needs_a_waiting_room_and_an_open_door() {
    let mut plain = Sale::new(spec(5, QueueMode::None, 1));
    let answer = plain
        .handle(
            &Command::Join {
                shopper: shopper(0),
            },
            at(0),
        )
        .outcome;
    assert_eq!(answer, Err(Rejection::NoQueue));
    let mut queued = Sale::new(spec(5, QueueMode::Fifo, 1));
    queued.handle(&Command::Close, at(0));
    let closed = queued
        .handle(
            &Command::Join {
                shopper: shopper(0),
            },
            at(1),
        )
        .outcome;
    assert_eq!(closed, Err(Rejection::Closed));
}

mod properties {
    use super::*;
    use holdfast_core::HoldId;
    use proptest::prelude::*;

    #[derive(Clone, Debug)]
    enum Step {
        Join(usize),
        /// Hold with the pass the shopper's standing gives, if any.
        HoldAdmitted(usize),
        /// Hold naming any position at all, as a forger would.
        HoldForged(usize, u32),
        Confirm(usize, u64),
        Release(usize, u64),
        Restock(u32),
        Wait(i64),
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            4 => (0..8usize).prop_map(Step::Join),
            4 => (0..8usize).prop_map(Step::HoldAdmitted),
            1 => (0..8usize, 0..12u32).prop_map(|(s, p)| Step::HoldForged(s, p)),
            2 => (0..8usize, 1..10u64).prop_map(|(s, h)| Step::Confirm(s, h)),
            1 => (0..8usize, 1..10u64).prop_map(|(s, h)| Step::Release(s, h)),
            1 => (1..3u32).prop_map(Step::Restock),
            3 => (0..90_000i64).prop_map(Step::Wait),
        ]
    }

    proptest! {
        #![proptest_config(common::cases(200, 1500))]

        #[test]
        fn the_waiting_room_keeps_its_promises(
            lottery in any::<bool>(),
            stock in 0..5u32,
            rate in 1..4u32,
            steps in prop::collection::vec(step(), 1..80),
        ) {
            let mode = if lottery { QueueMode::Lottery } else { QueueMode::Fifo };
            let mut sale = Sale::new(spec(stock, mode, rate));
            let mut replica = Sale::new(spec(stock, mode, rate));
            let mut entries: Vec<Option<u32>> = vec![None; 8];
            let mut now = Timestamp(OPENS.0 - 30_000);
            for step in steps {
                let command = match &step {
                    Step::Join(s) => Command::Join { shopper: shopper(*s) },
                    Step::HoldAdmitted(s) => {
                        let pass = entries[*s].and_then(|e| match view(&sale).standing(e) {
                            Standing::Admitted { position, .. } => Some(position),
                            _ => None,
                        });
                        Command::PlaceHold { shopper: shopper(*s), quantity: 1, channel: Channel::Web, pass }
                    }
                    Step::HoldForged(s, p) => Command::PlaceHold {
                        shopper: shopper(*s), quantity: 1, channel: Channel::Web, pass: Some(*p),
                    },
                    Step::Confirm(s, h) => Command::ConfirmHold {
                        hold: HoldId(*h), customer_id: format!("c{s}"), payment_ref: "auth".into(),
                    },
                    Step::Release(s, h) => Command::ReleaseHold { hold: HoldId(*h), customer_id: format!("c{s}") },
                    Step::Restock(q) => Command::Restock { quantity: *q },
                    Step::Wait(ms) => {
                        now = Timestamp(now.0 + ms);
                        Command::Tick
                    }
                };
                let outstanding_before = sale.queue().outstanding();
                let handled = sale.handle(&command, now);
                if let (Step::Join(s), Ok(Reply::Joined { entry, .. })) = (&step, &handled.outcome) {
                    entries[*s] = Some(*entry);
                }
                for event in &handled.events {
                    replica.apply(event);
                    if let Event::Admitted { .. } = event {
                        // Admission never promises more units than there are.
                        prop_assert!(sale.queue().outstanding() <= sale.available().max(outstanding_before));
                    }
                    if let Event::HoldPlaced(hold) = event {
                        let position = hold.pass.expect("every hold on a queued sale used a pass");
                        prop_assert!(position >= 1 && position <= sale.queue().admitted_through());
                        prop_assert!(now >= OPENS, "nothing is held before the opening");
                    }
                }
                prop_assert!(sale.queue().admitted_through() <= sale.queue().entries().len() as u32);
                prop_assert_eq!(sale.check_deep(), Ok(()));
                prop_assert_eq!(sale.total(), sale.available() + sale.held() + sale.sold() + sale.allotted());
            }
            prop_assert_eq!(replica.snapshot(), sale.snapshot());
            let restored = Sale::restore(sale.snapshot()).expect("snapshot restores");
            prop_assert_eq!(restored.snapshot(), sale.snapshot());
        }
    }
}
