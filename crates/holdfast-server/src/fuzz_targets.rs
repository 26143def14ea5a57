//! The parsers of untrusted input, each as one function over raw bytes: what `fuzz/` runs
//! under libFuzzer (`scripts/fuzz`), and what `tests/fuzz_regressions.rs` runs over every
//! saved input in plain `cargo test`. Each asserts what must hold for any input; a panic is
//! a finding.

use holdfast_core::terminal::ChainHash;
use holdfast_core::terminal::auth::Authorization;
use holdfast_core::terminal::entry::EntryBody;
use holdfast_core::{Channel, Command, Reply, Sale, Shopper, Timestamp};

use crate::api::wire::{CreateSale, format_day, format_time};
use crate::auth::TokenKeys;

/// `POST /v1/sales` bodies: parsed and validated, and when accepted, sold from until stock or
/// the delivery calendar runs out, every answer formatted as the API would.
pub fn create_sale(data: &[u8]) {
    let Ok(request) = serde_json::from_slice::<CreateSale>(data) else {
        return;
    };
    let Ok(spec) = request.into_spec([7; 32]) else {
        return;
    };
    let opens_at = spec.opens_at;
    let _ = format_time(opens_at);
    let mut sale = Sale::new(spec);
    for n in 0..64 {
        let shopper = Shopper::new(&format!("c{n}"), None, None).expect("no phone to refuse");
        let hold = Command::PlaceHold {
            shopper,
            quantity: 1,
            channel: Channel::Web,
            pass: None,
        };
        let now = Timestamp(opens_at.0.saturating_add(n));
        if let Ok(Reply::Held(hold)) = sale.handle(&hold, now).outcome {
            let _ = format_time(hold.expires_at);
            let _ = hold.deliver_by.map(format_day);
        }
    }
    sale.check_deep()
        .expect("a sale built from any accepted request stays consistent");
}

/// A till's journal entry body, and the header terminal requests are signed under.
pub fn journal_entry(data: &[u8]) {
    let read = || EntryBody::read(data).and_then(|body| body.effects());
    assert_eq!(read(), read(), "reading an entry is deterministic");
    if let Ok(body) = EntryBody::read(data) {
        // What a till writes reads back as the same entry.
        assert_eq!(EntryBody::read(body.to_json().as_bytes()), Ok(body));
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = ChainHash::from_hex(text);
        if let Some(auth) = Authorization::parse(text) {
            assert_eq!(Authorization::parse(&auth.header_value()), Some(auth));
        }
    }
}

/// Bearer tokens, tickets and passes as a stranger might present them.
pub fn tokens(data: &[u8]) {
    static KEYS: std::sync::OnceLock<TokenKeys> = std::sync::OnceLock::new();
    let Ok(token) = std::str::from_utf8(data) else {
        return;
    };
    let keys = KEYS.get_or_init(|| TokenKeys::from_secret(b"a fuzzing secret of 32 bytes...."));
    let now = Timestamp(1_800_000_000_000);
    let _ = keys.verify_customer(token, now);
    let _ = keys.verify_ticket(token, now);
    let _ = keys.verify_pass(token, now);
}

/// Phones and addresses a storefront vouches for, normalised into identity keys.
pub fn identity(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(phone) = holdfast_core::normalise_phone(text) {
        assert!(phone.bytes().all(|b| b.is_ascii_digit()), "{phone:?}");
        // A key is its own normal form: a phone stored as a key folds to the same key again.
        assert_eq!(holdfast_core::normalise_phone(&phone), Ok(phone.clone()));
    }
    let address = holdfast_core::normalise_address(text);
    assert_eq!(address.trim(), address);
    let _ = Shopper::new("c", Some(text), Some(text));
}
