//! The fulfilment calendar: deliveries booked per day against a daily capacity.
//!
//! A day is *full* once it has `capacity_per_day` deliveries. Full days are kept as runs of
//! consecutive days, so the first day with room is one lookup however many days are booked
//! solid — a sale of a million units at a capacity of one a day must not walk a million days
//! per hold. Quotes never go past `DAY_MAX`: a calendar that far out is not a promise anyone
//! can keep, and it is where date arithmetic outside the core would overflow.

use std::collections::BTreeMap;

use crate::time::{DAY_MAX, Day};

#[derive(Clone, Debug, Default)]
pub struct DeliveryCalendar {
    capacity_per_day: u32,
    booked: BTreeMap<Day, u32>,
    /// Runs of full days: first day → last day (inclusive). Runs never touch or overlap.
    full_runs: BTreeMap<Day, Day>,
}

impl DeliveryCalendar {
    pub fn new(capacity_per_day: u32) -> DeliveryCalendar {
        assert!(capacity_per_day > 0, "a delivery plan ships something");
        DeliveryCalendar {
            capacity_per_day,
            ..DeliveryCalendar::default()
        }
    }

    /// The first day on or after `from` with room for one more delivery, or `None` when every
    /// day up to `DAY_MAX` is full.
    pub fn quote(&self, from: Day) -> Option<Day> {
        let day = match self.run_containing(from) {
            Some((_, last)) => last.next(),
            None => from,
        };
        (day <= DAY_MAX).then_some(day)
    }

    pub fn booked(&self, day: Day) -> u32 {
        self.booked.get(&day).copied().unwrap_or(0)
    }

    pub fn book(&mut self, day: Day) {
        let booked = self.booked.entry(day).or_default();
        assert!(*booked < self.capacity_per_day, "booked a full day {day:?}");
        *booked += 1;
        if *booked == self.capacity_per_day {
            self.mark_full(day);
        }
    }

    pub fn unbook(&mut self, day: Day) {
        let booked = self.booked(day);
        assert!(booked > 0, "unbooked a day never booked {day:?}");
        if booked == self.capacity_per_day {
            self.mark_open(day);
        }
        if booked == 1 {
            self.booked.remove(&day);
        } else {
            self.booked.insert(day, booked - 1);
        }
    }

    fn run_containing(&self, day: Day) -> Option<(Day, Day)> {
        let (&first, &last) = self.full_runs.range(..=day).next_back()?;
        (last >= day).then_some((first, last))
    }

    fn mark_full(&mut self, day: Day) {
        debug_assert!(self.run_containing(day).is_none());
        let first = match self.full_runs.range(..day).next_back() {
            Some((&first, &last)) if last.next() == day => first,
            _ => day,
        };
        let last = self.full_runs.remove(&day.next()).unwrap_or(day);
        self.full_runs.insert(first, last);
    }

    fn mark_open(&mut self, day: Day) {
        let (first, last) = self
            .run_containing(day)
            .expect("a full day lies in a run of full days");
        self.full_runs.remove(&first);
        if first < day {
            self.full_runs.insert(first, Day(day.0 - 1));
        }
        if day < last {
            self.full_runs.insert(day.next(), last);
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// The obvious calendar: walk the days.
    fn naive_quote(booked: &BTreeMap<Day, u32>, capacity: u32, from: Day) -> Option<Day> {
        let mut day = from;
        while booked.get(&day).copied().unwrap_or(0) >= capacity {
            day = day.next();
        }
        (day <= DAY_MAX).then_some(day)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(500))]
        #[test]
        fn quotes_agree_with_walking_the_days(
            capacity in 1u32..4,
            steps in prop::collection::vec((0i64..40, any::<bool>()), 1..300),
        ) {
            let mut calendar = DeliveryCalendar::new(capacity);
            let mut naive: BTreeMap<Day, u32> = BTreeMap::new();
            for (from, book) in steps {
                let from = Day(from);
                if book {
                    let day = calendar.quote(from).unwrap();
                    prop_assert_eq!(Some(day), naive_quote(&naive, capacity, from));
                    calendar.book(day);
                    *naive.entry(day).or_default() += 1;
                } else if let Some((&day, _)) = naive.range(from..).next() {
                    calendar.unbook(day);
                    let count = naive.get_mut(&day).unwrap();
                    *count -= 1;
                    if *count == 0 {
                        naive.remove(&day);
                    }
                }
                for probe in 0..45 {
                    prop_assert_eq!(
                        calendar.quote(Day(probe)),
                        naive_quote(&naive, capacity, Day(probe))
                    );
                }
            }
        }
    }

    #[test]
    fn no_quote_past_the_last_day() {
        let mut calendar = DeliveryCalendar::new(1);
        calendar.book(DAY_MAX);
        assert_eq!(calendar.quote(DAY_MAX), None);
        assert_eq!(calendar.quote(DAY_MAX.next()), None);
        assert_eq!(calendar.quote(Day(DAY_MAX.0 - 1)), Some(Day(DAY_MAX.0 - 1)));
    }
}
