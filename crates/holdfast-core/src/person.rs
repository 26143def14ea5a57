//! Who a shopper is, for per-person limits.
//!
//! The storefront vouches for a customer account and, optionally, its phone number and delivery
//! address. Each of those is an *identity key*; a per-person limit applies to every key
//! separately, so two accounts sharing a phone number (or a normalised address) share one limit.
//!
//! Keys are normalised so that text which looks the same is the same key: Unicode NFKC (folds
//! fullwidth and other compatibility forms), then invisible characters removed (controls,
//! format characters such as the zero-width space, and the other default-ignorable code
//! points), then the rules of each kind. An address is also folded by case and by the Unicode
//! confusables table (UTS #39 skeleton: a Cyrillic "а" is a Latin "a"), and accents are
//! dropped. A phone must be digits and the usual separators; anything else is refused rather
//! than silently dropped, since a dropped key is a limit dodged.

use serde::{Deserialize, Serialize};
use thiserror::Error;
use unicode_normalization::UnicodeNormalization;
use unicode_properties::{GeneralCategory, UnicodeGeneralCategory};
use unicode_security::confusable_detection::skeleton;

/// One identifier that a per-person limit is counted against.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum IdentityKey {
    Account(String),
    Phone(String),
    Address(String),
}

/// Digits a phone number may have once normalised: enough to name a line, no more than an
/// international number with its prefix (E.164 allows 15).
pub const PHONE_DIGITS_RANGE: std::ops::RangeInclusive<usize> = 4..=20;

#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum IdentityError {
    #[error(
        "phone must be 4-20 digits with optional spaces, dashes, dots, parentheses and a leading +"
    )]
    InvalidPhone,
}

/// A shopper as vouched for by the storefront, with its identity keys already normalised.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shopper {
    customer_id: String,
    keys: Vec<IdentityKey>,
}

impl Shopper {
    /// Builds a shopper, normalising phone and address so that formatting differences and
    /// look-alike characters do not create a second identity. A blank phone or address is
    /// absent; a phone that is not a phone number is refused.
    pub fn new(
        customer_id: &str,
        phone: Option<&str>,
        address: Option<&str>,
    ) -> Result<Shopper, IdentityError> {
        let mut keys = vec![IdentityKey::Account(customer_id.to_owned())];
        if let Some(phone) = phone.filter(|p| !visible(p).trim().is_empty()) {
            keys.push(IdentityKey::Phone(normalise_phone(phone)?));
        }
        if let Some(address) = address.map(normalise_address).filter(|a| !a.is_empty()) {
            keys.push(IdentityKey::Address(address));
        }
        Ok(Shopper {
            customer_id: customer_id.to_owned(),
            keys,
        })
    }

    /// A buyer known only by the phone a till recorded (a pay-later sale, a stored card, or
    /// a scarce item sold for cash to a customer who gave a number). No account: the phone is
    /// the person.
    pub fn by_phone(phone: &str) -> Result<Shopper, IdentityError> {
        Ok(Shopper {
            customer_id: String::new(),
            keys: vec![IdentityKey::Phone(normalise_phone(phone)?)],
        })
    }

    pub fn customer_id(&self) -> &str {
        &self.customer_id
    }

    pub fn keys(&self) -> &[IdentityKey] {
        &self.keys
    }
}

/// NFKC, without the characters that show nothing.
fn visible(raw: &str) -> String {
    raw.nfkc().filter(|&c| !is_invisible(c)).collect()
}

/// Controls, format characters (zero-width space and joiners, bidirectional marks, soft
/// hyphen) and the other default-ignorable code points of Unicode's DerivedCoreProperties.
fn is_invisible(c: char) -> bool {
    matches!(
        c.general_category(),
        GeneralCategory::Control | GeneralCategory::Format
    ) || matches!(
        u32::from(c),
        0x034F
            | 0x115F..=0x1160
            | 0x17B4..=0x17B5
            | 0x180B..=0x180F
            | 0x3164
            | 0xFE00..=0xFE0F
            | 0xFFA0
            | 0xFFF0..=0xFFF8
            | 0x1BCA0..=0x1BCA3
            | 0x1D173..=0x1D17A
            | 0xE0000..=0xE0FFF
    )
}

/// Keeps the digits and writes Korea's country code as the domestic trunk prefix 0, so
/// "+82 10-1234-5678", "010 1234 5678" and "０１０-１２３４-５６７８" are one phone. The country
/// code counts however it is written — "+82", "0082", "(+82)", or "82" with the + left off — as
/// no number dialled within Korea starts with 82 (national numbers start with the trunk prefix
/// 0, service numbers with 1). Letters, digits of other scripts and other symbols are refused,
/// not skipped.
pub fn normalise_phone(raw: &str) -> Result<String, IdentityError> {
    let text = visible(raw);
    let allowed = |c: char| {
        c.is_ascii_digit()
            || matches!(c, '+' | '(' | ')' | '.' | '/')
            || matches!(
                c.general_category(),
                GeneralCategory::DashPunctuation | GeneralCategory::SpaceSeparator
            )
    };
    if !text.chars().all(allowed) {
        return Err(IdentityError::InvalidPhone);
    }
    let digits: String = text.chars().filter(char::is_ascii_digit).collect();
    let national = digits
        .strip_prefix("0082")
        .or_else(|| digits.strip_prefix("82"));
    let phone = match national {
        Some(rest) if !rest.is_empty() => format!("0{}", rest.trim_start_matches('0')),
        _ => digits,
    };
    if !PHONE_DIGITS_RANGE.contains(&phone.len()) {
        return Err(IdentityError::InvalidPhone);
    }
    Ok(phone)
}

/// Folds case, look-alike characters and accents, drops punctuation and folds white space, so
/// "12 Main St., Apt 3", "１２ ｍａｉｎ ｓｔ ａｐｔ ３" and "12 Mаin St Apt 3" (a Cyrillic "а")
/// are one address. The result is a key, not something to show a person.
pub fn normalise_address(raw: &str) -> String {
    let lowered = visible(raw).to_lowercase();
    let folded: String = skeleton(&lowered)
        .flat_map(char::to_lowercase)
        .filter(|c| c.general_category() != GeneralCategory::NonspacingMark)
        .map(|c| if c.is_alphanumeric() { c } else { ' ' })
        .collect();
    folded.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phone_formats_fold_to_one_key() {
        for raw in [
            "010-1234-5678",
            "+82 10 1234 5678",
            "0082-10-1234-5678",
            "(010) 1234 5678",
            "０１０-１２３４-５６７８",
            "010\u{200B}-1234-5678",
            "010\u{2011}1234\u{2013}5678",
            "\u{FEFF}010 1234\u{00AD} 5678",
            "82-10-1234-5678",
            "82 010 1234 5678",
            "(+82) 10-1234-5678",
            "+82 (0)10 1234 5678",
        ] {
            assert_eq!(normalise_phone(raw), Ok("01012345678".into()), "{raw:?}");
        }
        assert_eq!(normalise_phone("+1 415 555 0100"), Ok("14155550100".into()));
    }

    #[test]
    fn what_is_not_a_phone_is_refused_not_dropped() {
        for raw in [
            "call me",
            "010-CALL-NOW",
            "٠١٠١٢٣٤٥٦٧٨",
            "010-1234-5678 ext 2",
            "12",
            "1234567890123456789012",
        ] {
            assert_eq!(
                normalise_phone(raw),
                Err(IdentityError::InvalidPhone),
                "{raw:?}"
            );
        }
        assert_eq!(
            Shopper::new("c1", Some("no phone"), None),
            Err(IdentityError::InvalidPhone)
        );
    }

    #[test]
    fn address_formats_and_look_alikes_fold_to_one_key() {
        let plain = normalise_address("12 main st apt 3");
        for raw in [
            "  12 Main St., Apt 3 ",
            "１２ Ｍａｉｎ Ｓｔ， Ａｐｔ ３",
            "12 Ma\u{200B}in St Apt 3",
            "12 M\u{0430}in St Apt 3",
            "12 MAIN ST APT 3",
            "12 Main\u{00A0}St Apt\u{3000}3",
        ] {
            assert_eq!(normalise_address(raw), plain, "{raw:?}");
        }
        assert_eq!(normalise_address("Café"), normalise_address("cafe"));
        assert_ne!(
            normalise_address("서울시 강남구 테헤란로 1"),
            normalise_address("서울시 강남구 태헤란로 1")
        );
        assert_eq!(
            normalise_address("서울시 강남구, 1-2"),
            normalise_address("서울시  강남구 1 2")
        );
    }

    #[test]
    fn blank_phone_and_address_are_absent() {
        let shopper = Shopper::new("c1", Some(" \u{200B} "), Some(" , ")).unwrap();
        assert_eq!(shopper.keys(), &[IdentityKey::Account("c1".into())]);
    }

    proptest::proptest! {
        /// A stored key folds to itself, so one written as a key and one typed by a person
        /// meet (and the country code is never stripped twice).
        #[test]
        fn a_normalised_phone_is_its_own_normal_form(raw in "[+(]{0,2}[0-9 ()+.-]{0,24}") {
            if let Ok(phone) = normalise_phone(&raw) {
                proptest::prop_assert_eq!(normalise_phone(&phone), Ok(phone.clone()));
            }
        }
    }
}
