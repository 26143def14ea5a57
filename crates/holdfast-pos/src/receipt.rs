//! The text receipt, as printed at the counter.

use std::fmt::Write;

use qrcode::QrCode;
use qrcode::render::unicode::Dense1x2;

use crate::counter::{Sold, Tender};

pub fn receipt(store: &str, terminal: &str, pay_base: &str, sold: &Sold) -> String {
    let mut out = String::new();
    let when = chrono::DateTime::from_timestamp_millis(sold.at_millis)
        .map(|t| t.format("%Y-%m-%d %H:%M").to_string());
    let _ = writeln!(
        out,
        "{store}\n{} · till {terminal} · #{}",
        when.unwrap_or_default(),
        sold.seq
    );
    let _ = writeln!(out, "{}", "-".repeat(40));
    for (name, quantity, price) in &sold.lines {
        let _ = writeln!(out, "{:<24}{:>3} x {:>9}", name, quantity, price);
    }
    let _ = writeln!(out, "{}", "-".repeat(40));
    let _ = writeln!(out, "{:<28}{:>12}", "TOTAL", sold.total);
    let paid = match &sold.tender {
        Tender::Cash => "cash".to_owned(),
        Tender::Card { authorization } => format!("card · {authorization}"),
        Tender::CardOffline { .. } => "card (stored, authorised when back online)".to_owned(),
        Tender::BankTransfer => "bank transfer (pending confirmation)".to_owned(),
        Tender::PayLater { phone } => format!("pay later · {phone}"),
    };
    let _ = writeln!(out, "paid by {paid}");
    if let Some(id) = &sold.receivable {
        let link = format!("{}/pay/{terminal}/{id}", pay_base.trim_end_matches('/'));
        let _ = writeln!(out, "to pay: {link}");
        if let Ok(code) = QrCode::new(link.as_bytes()) {
            let _ = writeln!(
                out,
                "{}",
                code.render::<Dense1x2>().quiet_zone(true).build()
            );
        }
    }
    out
}
