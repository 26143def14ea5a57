//! The text receipt, as printed at the counter.

use std::fmt::Write;

use qrcode::QrCode;
use qrcode::render::unicode::Dense1x2;

use crate::counter::{Sold, Tender};

/// What every receipt of this till carries besides the sale.
#[derive(Clone, Debug, Default)]
pub struct Header {
    pub store: String,
    pub terminal: String,
    /// Where pay links point: the server the till syncs with.
    pub pay_base: String,
    /// The business registration number, from the store's catalogue.
    pub business_number: Option<String>,
    /// Where a bank transfer goes, from the store's catalogue.
    pub bank_account: Option<String>,
}

/// Korean VAT is 10% and included in the price: the tax share of a total is one eleventh.
pub fn vat_share(total: u64) -> u64 {
    total / 11
}

pub fn receipt(header: &Header, sold: &Sold) -> String {
    let mut out = String::new();
    let when = chrono::DateTime::from_timestamp_millis(sold.at_millis)
        .map(|t| t.format("%Y-%m-%d %H:%M").to_string());
    let _ = writeln!(out, "{}", header.store);
    if let Some(number) = &header.business_number {
        let _ = writeln!(out, "business no. {number}");
    }
    let _ = writeln!(
        out,
        "{} · till {} · #{}",
        when.unwrap_or_default(),
        header.terminal,
        sold.seq
    );
    let _ = writeln!(out, "{}", "-".repeat(40));
    for (name, quantity, price) in &sold.lines {
        let _ = writeln!(out, "{:<24}{:>3} x {:>9}", name, quantity, price);
    }
    let _ = writeln!(out, "{}", "-".repeat(40));
    let _ = writeln!(out, "{:<28}{:>12}", "TOTAL", sold.total);
    let _ = writeln!(out, "{:<28}{:>12}", "  of which VAT", vat_share(sold.total));
    let paid = match &sold.tender {
        Tender::Cash => "cash".to_owned(),
        Tender::Card { authorization, .. } => format!("card · {authorization}"),
        Tender::CardOffline { .. } => "card (stored, authorised when back online)".to_owned(),
        Tender::BankTransfer => "bank transfer (pending confirmation)".to_owned(),
        Tender::PayLater { phone } => format!("pay later · {phone}"),
    };
    let _ = writeln!(out, "paid by {paid}");
    if let (Tender::BankTransfer, Some(account)) = (&sold.tender, &header.bank_account) {
        let _ = writeln!(out, "transfer to {account}, reference #{}", sold.seq);
    }
    if let Some(id) = &sold.receivable {
        let link = format!(
            "{}/pay/{}/{id}",
            header.pay_base.trim_end_matches('/'),
            header.terminal
        );
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_receipt_carries_the_business_number_vat_and_transfer_account() {
        let header = Header {
            store: "Mapo cafe".into(),
            terminal: "till-1".into(),
            pay_base: "http://server".into(),
            business_number: Some("123-45-67890".into()),
            bank_account: Some("Shinhan 110-123-456789".into()),
        };
        let sold = Sold {
            seq: 7,
            lines: vec![("Americano".into(), 2, 5_500)],
            total: 11_000,
            tender: Tender::BankTransfer,
            receivable: None,
            at_millis: 0,
        };
        let printed = receipt(&header, &sold);
        for expected in [
            "business no. 123-45-67890",
            "of which VAT",
            "1000",
            "transfer to Shinhan 110-123-456789, reference #7",
        ] {
            assert!(printed.contains(expected), "{expected}: {printed}");
        }
    }
}
