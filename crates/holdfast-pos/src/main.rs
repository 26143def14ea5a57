//! `holdfast-pos`: the shop-counter agent. Its own binary, because a counter machine needs the
//! agent and its journal, not the server.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand, ValueEnum};
use holdfast_core::terminal::ChainHash;
use holdfast_core::terminal::wire::OfflineCardLimits;
use holdfast_pos::card::{self, CardOutcome};
use holdfast_pos::counter::{self, Basket, Line, Tender};
use holdfast_pos::journal::{Item, Journal};
use holdfast_pos::receipt::receipt;
use holdfast_pos::sync::{ForwardReport, SyncError, forward_cards, set_allotment, sync_once};
use holdfast_pos::till::{Registration, Till};
use holdfast_pos::uplink::{UplinkError, back_off, server_url};
use holdfast_pos::web::LineStatus;
use serde_json::json;

/// Prints a line for the person at the counter. A closed output (a till run by a service
/// manager, a pipe whose reader left) must not stop the till: write errors are ignored.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout().lock(), $($arg)*);
    }};
}

/// Like `say!`, on standard error.
macro_rules! complain {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr().lock(), $($arg)*);
    }};
}

#[derive(Parser)]
#[command(
    name = "holdfast-pos",
    version,
    about = "Holdfast at the shop counter: sell with or without a network; every sale reaches the server exactly once."
)]
struct Cli {
    /// Where this till keeps its journal and keys.
    #[arg(short, long, global = true, default_value = "./holdfast-pos-data")]
    data: PathBuf,
    #[command(subcommand)]
    command: Commands,
}

/// How the customer pays.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum TenderKind {
    /// Cash in the drawer.
    Cash,
    /// A card authorised online now (the line is checked first; needs --card-token).
    Card,
    /// A card stored while offline and authorised later (needs --card-token and --phone).
    CardOffline,
    /// A bank transfer, pending until the owner confirms it arrived.
    BankTransfer,
    /// The customer leaves a phone number and pays by the link on the receipt (needs --phone).
    PayLater,
}

#[derive(Subcommand)]
enum Commands {
    /// Register this till with the server (needs the operator token once).
    Init {
        /// Server addresses in order of preference, e.g. the shop's line then a mobile backup,
        /// each like http://192.168.0.10:8080.
        #[arg(short, long, required = true, num_args = 1.., value_parser = server_url)]
        server: Vec<String>,
        /// This till's name, unique on the server: letters, digits, '-' or '_'.
        #[arg(short, long)]
        terminal_id: String,
        /// The store the till belongs to; its tills share catalogue and card limits. The
        /// server's operator token comes from HOLDFAST_OPERATOR_TOKEN (never the command line,
        /// which other users can see).
        #[arg(long)]
        store: String,
        /// Register again a till that lost its data: the server keeps its history and makes
        /// it a new secret; this journal continues where the server's record ends.
        #[arg(long)]
        again: bool,
    },
    /// Add or change an item typed in at this till (the server's catalogue comes by itself).
    Item {
        /// The item's code, as typed at the counter.
        #[arg(long)]
        sku: String,
        /// The name printed on receipts.
        #[arg(long)]
        name: String,
        /// Price in minor units (won).
        #[arg(long)]
        price: u64,
        /// For scarce goods: the server sale whose allotment this item sells from.
        #[arg(long)]
        sale_id: Option<String>,
    },
    /// Ask the server to set this till's allotment of a scarce sale (syncs first).
    Allot {
        /// The server's sale id.
        #[arg(long)]
        sale_id: String,
        /// Units to hold from now on (0 gives everything back).
        #[arg(short, long)]
        quantity: u32,
    },
    /// Ring up a sale and print the receipt. Works with no network (but for --tender card).
    Sell {
        /// Items as SKU or SKU:QUANTITY.
        #[arg(required = true, num_args = 1..)]
        items: Vec<String>,
        /// How the customer pays.
        #[arg(short, long, value_enum, default_value_t = TenderKind::Cash)]
        tender: TenderKind,
        /// The card token from the card reader (card, card-offline).
        #[arg(long)]
        card_token: Option<String>,
        /// The customer's phone (pay-later, card-offline; optional otherwise, and counted
        /// against a scarce item's per-person limit when given).
        #[arg(short, long)]
        phone: Option<String>,
    },
    /// Upload what the server has not acknowledged yet, once, and forward stored cards.
    Sync,
    /// Keep syncing: every few seconds while online, backing off while the network is down.
    Run {
        /// Seconds between syncs while online.
        #[arg(long, default_value_t = 5)]
        every_s: u64,
    },
    /// What is waiting: unsynced entries, allotments, receivables, stored cards, transfers.
    Status,
    /// Bank transfers waiting for the owner, or confirm that one arrived.
    Transfer {
        /// The receipt number (#) of the sale whose transfer arrived.
        #[arg(long)]
        confirm: Option<u64>,
    },
    /// Close a receivable the customer paid at the counter (cash in hand).
    Paid {
        /// The receivable id printed on the receipt (R-...).
        receivable: String,
    },
    /// This till as the server sees it: synced, takings, receivables, quarantine, flags.
    View,
    /// Serve the counter page on this machine, and keep syncing in the background.
    Web {
        /// Where the page listens (loopback unless you mean otherwise).
        #[arg(short, long, default_value = "127.0.0.1:8090")]
        listen: std::net::SocketAddr,
        /// Seconds between background syncs while online.
        #[arg(long, default_value_t = 5)]
        every_s: u64,
    },
}

/// Errors are told in one line with their causes (`error: what: why`), never as a stack trace,
/// whatever RUST_BACKTRACE says: they are for the person at the counter.
fn main() -> std::process::ExitCode {
    match run(Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            complain!("error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new()?;
    let data = cli.data;
    runtime.block_on(async move {
        match cli.command {
            Commands::Init {
                server,
                terminal_id,
                store,
                again,
            } => init(&data, server, terminal_id, store, again).await,
            Commands::Item {
                sku,
                name,
                price,
                sale_id,
            } => item(&data, sku, name, price, sale_id),
            Commands::Allot { sale_id, quantity } => allot(&data, &sale_id, quantity).await,
            Commands::Sell {
                items,
                tender,
                card_token,
                phone,
            } => sell(&data, &items, tender, card_token, phone).await,
            Commands::Sync => sync(&data).await,
            Commands::Run { every_s } => {
                let till = Till::open(&data)?;
                keep_syncing(till, every_s, None).await;
                Ok(())
            }
            Commands::Status => status(&data),
            Commands::Transfer { confirm } => transfer(&data, confirm),
            Commands::Paid { receivable } => paid(&data, &receivable),
            Commands::View => view(&data).await,
            Commands::Web { listen, every_s } => web(&data, listen, every_s).await,
        }
    })
}

async fn init(
    data: &Path,
    server: Vec<String>,
    terminal_id: String,
    store: String,
    again: bool,
) -> anyhow::Result<()> {
    let operator_token = std::env::var("HOLDFAST_OPERATOR_TOKEN")
        .ok()
        .filter(|t| !t.is_empty())
        .context("set HOLDFAST_OPERATOR_TOKEN to the server's operator token to register a till")?;
    let mut journal = Journal::open(data)?;
    anyhow::ensure!(
        journal.entry_count()? == 0,
        "{} already holds this till's journal; registering again is for a till that lost it",
        data.display()
    );
    let base = server[0].trim_end_matches('/');
    let (url, body) = if again {
        (
            format!("{base}/v1/terminals/{terminal_id}/secret"),
            json!({}),
        )
    } else {
        (
            format!("{base}/v1/terminals"),
            json!({"terminal_id": terminal_id, "store": store}),
        )
    };
    let response = reqwest::Client::new()
        .post(&url)
        .bearer_auth(operator_token)
        .json(&body)
        .send()
        .await
        .with_context(|| format!("cannot reach the server at {url}"))?;
    let status = response.status();
    let answer: serde_json::Value = response.json().await.unwrap_or_default();
    if !status.is_success() {
        bail!("the server refused the registration ({status}): {answer}");
    }
    if again {
        // The server's record of this till's journal stays: this one continues after it.
        let through = answer["acked_through"].as_u64().unwrap_or(0);
        let head = answer["head"]
            .as_str()
            .and_then(ChainHash::from_hex)
            .context("the server's answer has no journal head")?;
        journal.continue_chain(through, head)?;
    }
    let registration = Registration {
        terminal_id,
        store,
        servers: server,
        secret: answer["secret"]
            .as_str()
            .context("no secret in the server's answer")?
            .to_owned(),
    };
    journal.set_setting("registration", &registration)?;
    journal.set_setting("offline_card_limits", &OfflineCardLimits::default())?;
    counter::card_key(data)?;
    say!(
        "till {} of {} registered{}; data in {}",
        registration.terminal_id,
        registration.store,
        if again {
            " again, continuing its journal"
        } else {
            ""
        },
        data.display()
    );
    Ok(())
}

fn item(
    data: &Path,
    sku: String,
    name: String,
    price: u64,
    sale_id: Option<String>,
) -> anyhow::Result<()> {
    Journal::open(data)?.put_item(&Item {
        sku,
        name,
        price,
        sale_id,
    })?;
    say!("saved");
    Ok(())
}

async fn allot(data: &Path, sale_id: &str, quantity: u32) -> anyhow::Result<()> {
    let mut till = Till::open(data)?;
    // The server's view of the allotment must include every sale made from it first.
    sync_once(&mut till.journal, &till.uplink).await?;
    let answer = set_allotment(&till.uplink, sale_id, quantity).await?;
    till.journal
        .set_allotment(sale_id, answer.granted, Some(&answer.terms))?;
    say!(
        "this till now holds {} unit(s) of {sale_id}, sold at {} each, at most {} per person",
        answer.granted,
        answer.terms.price,
        answer.terms.per_customer_limit
    );
    Ok(())
}

fn parse_line(raw: &str) -> anyhow::Result<Line> {
    let (sku, quantity) = match raw.split_once(':') {
        Some((sku, q)) => (
            sku,
            q.parse()
                .with_context(|| format!("bad quantity in '{raw}': use SKU:QUANTITY"))?,
        ),
        None => (raw, 1),
    };
    Ok(Line {
        sku: sku.to_owned(),
        quantity,
    })
}

fn offline_tender(
    kind: TenderKind,
    card_token: Option<String>,
    phone: Option<String>,
) -> anyhow::Result<Tender> {
    Ok(match kind {
        TenderKind::Cash => Tender::Cash,
        TenderKind::CardOffline => Tender::CardOffline {
            card_token: card_token.context("card-offline needs --card-token")?,
            phone: phone.context(
                "card-offline needs --phone, to reach the customer if the card is declined later",
            )?,
        },
        TenderKind::BankTransfer => Tender::BankTransfer,
        TenderKind::PayLater => Tender::PayLater {
            phone: phone.context("pay-later needs --phone")?,
        },
        TenderKind::Card => unreachable!("an online card is paid by card::pay"),
    })
}

async fn sell(
    data: &Path,
    items: &[String],
    kind: TenderKind,
    card_token: Option<String>,
    phone: Option<String>,
) -> anyhow::Result<()> {
    let mut till = Till::open(data)?;
    let lines = items
        .iter()
        .map(|i| parse_line(i))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let buyer_phone = phone
        .clone()
        .filter(|_| !matches!(kind, TenderKind::PayLater | TenderKind::CardOffline));
    let basket = Basket { lines, buyer_phone };
    let now = till.now_millis();
    let sold = if kind == TenderKind::Card {
        let card = card_token.context("card needs --card-token")?;
        let outcome = card::pay(
            &mut till.journal,
            &till.key,
            &till.uplink,
            &basket,
            &card,
            now,
        )
        .await?;
        match outcome {
            CardOutcome::Sold(sold) => sold,
            CardOutcome::Refused(refusal) => bail!("not sold: {refusal}"),
            CardOutcome::Declined => bail!("not sold: the card was declined"),
            CardOutcome::LineDown => bail!(
                "not sold: the line is down, nothing was charged; take it as card-offline, cash or pay-later"
            ),
            CardOutcome::AnswerLost { reference } => bail!(
                "not sold yet: the card network's answer was lost ({reference}); run the same \
                 sale again to finish it (it will not charge twice), or take another tender"
            ),
        }
    } else {
        let tender = offline_tender(kind, card_token, phone)?;
        match counter::sell(&mut till.journal, &till.key, &basket, tender, now)? {
            Ok(sold) => sold,
            Err(refusal) => bail!("not sold: {refusal}"),
        }
    };
    print!("{}", receipt(&till.header()?, &sold));
    Ok(())
}

async fn sync(data: &Path) -> anyhow::Result<()> {
    let mut till = Till::open(data)?;
    let report = sync_once(&mut till.journal, &till.uplink).await?;
    say!(
        "synced: acknowledged through #{} ({} uploaded now)",
        report.acked_through,
        report.uploaded
    );
    let now = till.now_millis();
    let cards = forward_cards(&mut till.journal, &till.key, &till.uplink, now).await?;
    if cards != ForwardReport::default() {
        say!(
            "stored cards: {} approved, {} declined (now receivables), {} waiting",
            cards.approved,
            cards.declined,
            cards.waiting
        );
    }
    let settled = card::settle_unanswered(&mut till.journal, &till.key, &till.uplink, now).await?;
    if settled > 0 {
        say!("{settled} unanswered card payment(s) settled");
    }
    if !report.quarantined.is_empty() {
        say!(
            "quarantined by the server (for a person): {:?}",
            report.quarantined
        );
    }
    if !report.flagged.is_empty() {
        say!(
            "flagged by the server (over a per-person limit): {:?}",
            report.flagged
        );
    }
    if report.given_back > 0 {
        say!(
            "{} unit(s) given back: the sale ran out online",
            report.given_back
        );
    }
    Ok(())
}

/// One round of the background sync: upload, forward stored cards, settle unanswered cards.
async fn sync_round(till: &mut Till) -> Result<(), SyncError> {
    let report = sync_once(&mut till.journal, &till.uplink).await?;
    let now = till.now_millis();
    forward_cards(&mut till.journal, &till.key, &till.uplink, now).await?;
    card::settle_unanswered(&mut till.journal, &till.key, &till.uplink, now).await?;
    let at = chrono::DateTime::from_timestamp_millis(now)
        .map(|t| t.format("%H:%M:%S").to_string())
        .unwrap_or_default();
    let given_back = match report.given_back {
        0 => String::new(),
        units => format!(", {units} unit(s) given back"),
    };
    say!(
        "{at} synced: acknowledged through #{} ({} uploaded{given_back})",
        report.acked_through,
        report.uploaded
    );
    Ok(())
}

/// Syncs forever: every `every_s` while online, backing off with jitter while offline, waiting
/// as long as the server asks when it is busy.
async fn keep_syncing(mut till: Till, every_s: u64, line: Option<Arc<LineStatus>>) {
    let mut failures = 0u32;
    loop {
        if let Some(line) = &line {
            line.syncing();
        }
        let pause = match sync_round(&mut till).await {
            Ok(()) => {
                failures = 0;
                if let Some(line) = &line {
                    line.synced(till.now_millis());
                }
                Duration::from_secs(every_s)
            }
            Err(SyncError::Uplink(UplinkError::RetryAfter(wait))) => wait,
            Err(error) => {
                if let Some(line) = &line {
                    line.down();
                }
                complain!("sync failed ({error}); retrying");
                failures += 1;
                back_off(failures - 1)
            }
        };
        tokio::time::sleep(pause).await;
    }
}

fn status(data: &Path) -> anyhow::Result<()> {
    let journal = Journal::open(data)?;
    let waiting = journal.waiting()?;
    say!(
        "journal: {} entries, {} waiting to sync",
        waiting.entries,
        waiting.unsynced
    );
    for allotment in journal.allotments()? {
        say!(
            "allotment {}: {} left",
            allotment.sale_id,
            allotment.remaining
        );
    }
    let now = chrono::Utc::now().timestamp_millis();
    for receivable in journal.open_receivables()? {
        let age_h = (now - receivable.created_at) / 3_600_000;
        say!(
            "receivable {}: {} from {}, {age_h} h old",
            receivable.id,
            receivable.amount,
            receivable.phone
        );
    }
    for transfer in journal.pending_transfers()? {
        say!(
            "bank transfer for #{}: {} not yet confirmed",
            transfer.seq,
            transfer.amount
        );
    }
    say!(
        "stored card payments waiting: {} ({})",
        waiting.cards_waiting,
        waiting.cards_waiting_amount
    );
    if waiting.refunds_due > 0 {
        say!(
            "card payments approved with no sale, to refund: {}",
            waiting.refunds_due
        );
    }
    for reference in card::unanswered(&journal)? {
        say!("card payment {reference}: answer not yet known");
    }
    Ok(())
}

fn transfer(data: &Path, confirm: Option<u64>) -> anyhow::Result<()> {
    let mut journal = Journal::open(data)?;
    let Some(seq) = confirm else {
        for transfer in journal.pending_transfers()? {
            say!("#{}: {} pending", transfer.seq, transfer.amount);
        }
        return Ok(());
    };
    let at = chrono::Utc::now().timestamp_millis();
    if !journal.confirm_transfer(seq, at)? {
        bail!("no pending bank transfer for receipt #{seq}");
    }
    say!("bank transfer for #{seq} confirmed; the server learns it on the next sync");
    Ok(())
}

fn paid(data: &Path, receivable: &str) -> anyhow::Result<()> {
    if !Journal::open(data)?.settle_receivable(receivable)? {
        bail!("no open receivable '{receivable}'");
    }
    say!("receivable {receivable} closed");
    Ok(())
}

async fn view(data: &Path) -> anyhow::Result<()> {
    let till = Till::open(data)?;
    let path = format!("/v1/terminals/{}/view", till.uplink.terminal());
    let (status, answer) = till.uplink.post(&path, &json!({})).await?;
    if status != 200 {
        bail!("the server refused ({status}): {answer}");
    }
    say!("{}", serde_json::to_string_pretty(&answer)?);
    Ok(())
}

async fn web(data: &Path, listen: std::net::SocketAddr, every_s: u64) -> anyhow::Result<()> {
    let counter = holdfast_pos::web::Counter::open(data)?;
    let line = Some(counter.line.clone());
    tokio::spawn(keep_syncing(Till::open(data)?, every_s, line));
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    say!("counter page on http://{}", listener.local_addr()?);
    axum::serve(listener, holdfast_pos::web::router(counter)).await?;
    Ok(())
}
