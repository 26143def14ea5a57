//! Who a shopper is, for per-person limits.
//!
//! The storefront vouches for a customer account and, optionally, its phone number and delivery
//! address. Each of those is an *identity key*; a per-person limit applies to every key
//! separately, so two accounts sharing a phone number (or a normalised address) share one limit.

use serde::{Deserialize, Serialize};

/// One identifier that a per-person limit is counted against.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum IdentityKey {
    Account(String),
    Phone(String),
    Address(String),
}

/// A shopper as vouched for by the storefront, with its identity keys already normalised.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shopper {
    customer_id: String,
    keys: Vec<IdentityKey>,
}

impl Shopper {
    /// Builds a shopper, normalising phone and address so that formatting differences do not
    /// create a second identity. Empty phone or address strings are treated as absent.
    pub fn new(customer_id: &str, phone: Option<&str>, address: Option<&str>) -> Shopper {
        let mut keys = vec![IdentityKey::Account(customer_id.to_owned())];
        if let Some(phone) = phone.map(normalise_phone).filter(|p| !p.is_empty()) {
            keys.push(IdentityKey::Phone(phone));
        }
        if let Some(address) = address.map(normalise_address).filter(|a| !a.is_empty()) {
            keys.push(IdentityKey::Address(address));
        }
        Shopper {
            customer_id: customer_id.to_owned(),
            keys,
        }
    }

    pub fn customer_id(&self) -> &str {
        &self.customer_id
    }

    pub fn keys(&self) -> &[IdentityKey] {
        &self.keys
    }
}

/// Keeps digits only, and writes an international prefix for Korea (+82 / 0082) as the
/// domestic trunk prefix 0, so "+82 10-1234-5678" and "010 1234 5678" are one phone.
pub fn normalise_phone(raw: &str) -> String {
    let international = raw.trim_start().starts_with('+');
    let digits: String = raw.chars().filter(char::is_ascii_digit).collect();
    let national = if international {
        digits.strip_prefix("82")
    } else {
        digits.strip_prefix("0082")
    };
    match national {
        Some(rest) if !rest.is_empty() => format!("0{}", rest.trim_start_matches('0')),
        _ => digits,
    }
}

/// Lower-cases, drops punctuation and folds white space, so "12 Main St., Apt 3" and
/// "12 main st apt 3" are one address.
pub fn normalise_address(raw: &str) -> String {
    let kept: String = raw
        .chars()
        .map(|c| {
            if c.is_alphanumeric() {
                c.to_lowercase().next().unwrap_or(c)
            } else {
                ' '
            }
        })
        .collect();
    kept.split_whitespace().collect::<Vec<_>>().join(" ")
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
        ] {
            assert_eq!(normalise_phone(raw), "01012345678", "{raw}");
        }
        assert_eq!(normalise_phone("+1 415 555 0100"), "14155550100");
    }

    #[test]
    fn address_formats_fold_to_one_key() {
        assert_eq!(
            normalise_address("  12 Main St., Apt 3 "),
            normalise_address("12 main st apt 3")
        );
        assert_eq!(normalise_address("서울시 강남구, 1-2"), "서울시 강남구 1 2");
    }

    #[test]
    fn empty_phone_and_address_are_absent() {
        let shopper = Shopper::new("c1", Some(" - "), Some(" , "));
        assert_eq!(shopper.keys(), &[IdentityKey::Account("c1".into())]);
    }
}
