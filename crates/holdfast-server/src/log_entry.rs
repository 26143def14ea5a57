//! What the server writes to the log — one record per actor batch — and a sale's snapshot, and
//! how their bytes look. Both are written compactly: a one-byte format tag, then postcard.
//! Records and snapshots written before that are JSON (their first byte is `{`) and are still
//! read. `holdfast log dump` prints either form as JSON lines (`as_json`), so the audit trail
//! stays readable without Holdfast's internals.

use holdfast_core::{Event, Sale, SaleSnapshot, SaleSpec};
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// The first byte of a postcard payload. JSON payloads start with `{`.
const POSTCARD: u8 = 0x01;

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "entry", rename_all = "snake_case")]
pub enum LogEntry {
    SaleCreated { spec: SaleSpec },
    Events { events: Vec<Event> },
}

/// `LogEntry` as postcard writes it: postcard cannot read an internally tagged enum, so the
/// binary form names the variant by its index. The variants' order is part of the format.
#[derive(Serialize)]
enum BinaryRef<'a> {
    SaleCreated(&'a SaleSpec),
    Events(&'a [Event]),
}

#[derive(Deserialize)]
enum Binary {
    SaleCreated(SaleSpec),
    Events(Vec<Event>),
}

#[derive(Debug, Error)]
pub enum DecodeError {
    #[error("an empty payload")]
    Empty,
    #[error("unknown payload format (first byte {0:#04x})")]
    UnknownFormat(u8),
    #[error("binary payload: {0}")]
    Binary(#[from] postcard::Error),
    #[error("JSON payload: {0}")]
    Json(#[from] serde_json::Error),
}

impl LogEntry {
    pub fn encode(&self) -> Vec<u8> {
        let binary = match self {
            LogEntry::SaleCreated { spec } => BinaryRef::SaleCreated(spec),
            LogEntry::Events { events } => BinaryRef::Events(events),
        };
        tagged(&binary)
    }

    pub fn decode(bytes: &[u8]) -> Result<LogEntry, DecodeError> {
        Ok(match decode_either::<Binary, LogEntry>(bytes)? {
            Either::Binary(Binary::SaleCreated(spec)) => LogEntry::SaleCreated { spec },
            Either::Binary(Binary::Events(events)) => LogEntry::Events { events },
            Either::Json(entry) => entry,
        })
    }
}

/// A sale's snapshot as stored.
pub fn encode_snapshot(sale: &Sale) -> Vec<u8> {
    tagged(&sale.snapshot())
}

/// A stored snapshot read back, in either form.
pub fn decode_snapshot(bytes: &[u8]) -> Result<SaleSnapshot, DecodeError> {
    Ok(match decode_either::<SaleSnapshot, SaleSnapshot>(bytes)? {
        Either::Binary(snapshot) | Either::Json(snapshot) => snapshot,
    })
}

/// A record of any stream as JSON, for people and tools: a sale's entries decoded from either
/// form; other streams' records (tills' trails, already JSON) as they are; anything else as hex.
pub fn as_json(stream: &str, payload: &[u8]) -> serde_json::Value {
    if is_sale(stream)
        && let Ok(entry) = LogEntry::decode(payload)
    {
        return serde_json::to_value(entry).expect("log entries serialise");
    }
    raw_json(payload)
}

/// A snapshot of any stream as JSON: a sale's decoded from either form, others as they are.
pub fn snapshot_as_json(stream: &str, payload: &[u8]) -> serde_json::Value {
    if is_sale(stream)
        && let Ok(snapshot) = decode_snapshot(payload)
    {
        return serde_json::to_value(snapshot).expect("snapshots serialise");
    }
    raw_json(payload)
}

fn is_sale(stream: &str) -> bool {
    matches!(
        crate::streams::StreamKind::of(stream),
        crate::streams::StreamKind::Sale(_)
    )
}

fn raw_json(payload: &[u8]) -> serde_json::Value {
    serde_json::from_slice(payload).unwrap_or_else(|_| {
        let hex: String = payload.iter().map(|b| format!("{b:02x}")).collect();
        serde_json::json!({ "undecodable_hex": hex })
    })
}

fn tagged(value: &impl Serialize) -> Vec<u8> {
    postcard::to_extend(value, vec![POSTCARD]).expect("log payloads serialise")
}

enum Either<B, J> {
    Binary(B),
    Json(J),
}

fn decode_either<B, J>(bytes: &[u8]) -> Result<Either<B, J>, DecodeError>
where
    B: for<'de> Deserialize<'de>,
    J: for<'de> Deserialize<'de>,
{
    match bytes.first() {
        None => Err(DecodeError::Empty),
        Some(&POSTCARD) => Ok(Either::Binary(postcard::from_bytes(&bytes[1..])?)),
        Some(b'{') => Ok(Either::Json(serde_json::from_slice(bytes)?)),
        Some(&other) => Err(DecodeError::UnknownFormat(other)),
    }
}

#[cfg(test)]
mod tests {
    use holdfast_core::{Channel, Command, Sale, SaleSpec, Shopper, Timestamp};

    use super::*;

    fn sale_with_an_order() -> (Sale, Vec<Event>) {
        let mut sale = Sale::new(SaleSpec::plain("masks", 1000, 5, 1, Timestamp(0)));
        let shopper = Shopper::new("alice", Some("010-1234-5678"), Some("1 Main St")).unwrap();
        let hold = Command::PlaceHold {
            shopper,
            quantity: 1,
            channel: Channel::Web,
            pass: None,
        };
        let events = sale.handle(&hold, Timestamp(10)).events;
        (sale, events)
    }

    #[test]
    fn entries_and_snapshots_read_back_from_either_form() {
        let (sale, events) = sale_with_an_order();
        let entry = LogEntry::Events {
            events: events.clone(),
        };
        let binary = entry.encode();
        assert_eq!(binary[0], POSTCARD);
        let json = serde_json::to_vec(&entry).unwrap();
        assert!(
            binary.len() < json.len() / 2,
            "{} vs {}",
            binary.len(),
            json.len()
        );
        for bytes in [binary, json] {
            let LogEntry::Events { events: back } = LogEntry::decode(&bytes).unwrap() else {
                panic!("not events");
            };
            assert_eq!(back, events);
        }
        for bytes in [
            encode_snapshot(&sale),
            serde_json::to_vec(&sale.snapshot()).unwrap(),
        ] {
            assert_eq!(decode_snapshot(&bytes).unwrap(), sale.snapshot());
        }
    }

    #[test]
    fn a_payload_in_no_known_form_is_refused_and_shown_as_hex() {
        assert!(matches!(LogEntry::decode(&[]), Err(DecodeError::Empty)));
        assert!(matches!(
            LogEntry::decode(&[0x7f, 1, 2]),
            Err(DecodeError::UnknownFormat(0x7f))
        ));
        assert!(LogEntry::decode(&[POSTCARD, 0xff, 0xff]).is_err());
        assert_eq!(as_json("masks", &[0x7f, 0x01])["undecodable_hex"], "7f01");
        let (_, events) = sale_with_an_order();
        let shown = as_json("masks", &LogEntry::Events { events }.encode());
        assert_eq!(shown["entry"], "events");
        assert!(shown["events"][0].get("HoldPlaced").is_some(), "{shown}");
    }
}
