//! `holdfast-pos`: the shop-counter agent. Its own binary, because a counter machine needs the
//! agent and its journal, not the server.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use holdfast_pos::counter::{self, Line, OfflineCardLimits, Tender};
use holdfast_pos::journal::{Item, Journal};
use holdfast_pos::receipt::receipt;
use holdfast_pos::sync::{ForwardReport, forward_cards, sync_once};
use holdfast_pos::uplink::{Uplink, back_off};
use serde::{Deserialize, Serialize};
use serde_json::json;

#[derive(Parser)]
#[command(
    name = "holdfast-pos",
    version,
    about = "Holdfast at the shop counter: sell with or without a network; every sale reaches the server exactly once."
)]
struct Cli {
    /// Where this till keeps its journal and keys.
    #[arg(long, global = true, default_value = "./holdfast-pos-data")]
    data: PathBuf,
    #[command(subcommand)]
    command: Commands,
}

#[derive(Subcommand)]
enum Commands {
    /// Register this till with the server (needs the operator token once).
    Init {
        /// Server addresses in order of preference, e.g. the shop's line then a mobile backup.
        #[arg(long, required = true, num_args = 1..)]
        server: Vec<String>,
        #[arg(long)]
        terminal_id: String,
        #[arg(long)]
        store: String,
        #[arg(long, env = "HOLDFAST_OPERATOR_TOKEN", hide_env_values = true)]
        operator_token: String,
    },
    /// Add or change an item in this till's catalogue.
    Item {
        #[arg(long)]
        sku: String,
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
        #[arg(long)]
        sale_id: String,
        #[arg(long)]
        quantity: u32,
    },
    /// Ring up a sale and print the receipt. Works with no network.
    Sell {
        /// Items as SKU or SKU:QUANTITY.
        #[arg(required = true, num_args = 1..)]
        items: Vec<String>,
        /// cash, card (online), card-offline, bank-transfer or pay-later.
        #[arg(long, default_value = "cash")]
        tender: String,
        /// The card token from the terminal's card reader (card, card-offline).
        #[arg(long)]
        card_token: Option<String>,
        /// The customer's phone number (pay-later, card-offline).
        #[arg(long)]
        phone: Option<String>,
    },
    /// Upload what the server has not acknowledged yet, once.
    Sync,
    /// Keep syncing: every few seconds while online, backing off while the network is down.
    Run {
        #[arg(long, default_value_t = 5)]
        every_s: u64,
    },
    /// What is waiting: unsynced entries, allotments, receivables, stored cards.
    Status,
    /// Serve the counter page on this machine, and keep syncing in the background.
    Web {
        #[arg(long, default_value = "127.0.0.1:8090")]
        listen: std::net::SocketAddr,
        #[arg(long, default_value_t = 5)]
        every_s: u64,
    },
}

/// Syncs forever: every `every_s` while online, backing off with jitter while offline, waiting
/// as long as the server asks when it is busy.
async fn keep_syncing(
    mut journal: Journal,
    uplink: Uplink,
    key: chacha20poly1305::Key,
    every_s: u64,
) {
    let mut failures = 0u32;
    loop {
        let synced = match sync_once(&mut journal, &uplink).await {
            Ok(_) => forward_cards(&mut journal, &key, &uplink).await.map(|_| ()),
            Err(error) => Err(error),
        };
        let pause = match synced {
            Ok(()) => {
                failures = 0;
                Duration::from_secs(every_s)
            }
            Err(holdfast_pos::sync::SyncError::Uplink(
                holdfast_pos::uplink::UplinkError::RetryAfter(wait),
            )) => wait,
            Err(error) => {
                eprintln!("sync failed ({error}); retrying");
                failures += 1;
                back_off(failures - 1)
            }
        };
        tokio::time::sleep(pause).await;
    }
}

#[derive(Serialize, Deserialize)]
struct Registration {
    terminal_id: String,
    store: String,
    servers: Vec<String>,
    secret: String,
}

fn now_millis() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

fn registration(journal: &Journal) -> anyhow::Result<Registration> {
    journal
        .setting("registration")?
        .context("this till is not registered yet: run `holdfast-pos init`")
}

fn uplink(registration: &Registration) -> anyhow::Result<Uplink> {
    let secret = hex::decode(&registration.secret).context("damaged secret")?;
    Ok(Uplink::new(
        registration.servers.clone(),
        registration.terminal_id.clone(),
        secret,
    ))
}

fn parse_line(raw: &str) -> anyhow::Result<Line> {
    let (sku, quantity) = match raw.split_once(':') {
        Some((sku, q)) => (
            sku,
            q.parse()
                .with_context(|| format!("bad quantity in '{raw}'"))?,
        ),
        None => (raw, 1),
    };
    Ok(Line {
        sku: sku.to_owned(),
        quantity,
    })
}

fn tender(kind: &str, card_token: Option<String>, phone: Option<String>) -> anyhow::Result<Tender> {
    Ok(match kind {
        "cash" => Tender::Cash,
        "card-offline" => Tender::CardOffline {
            card_token: card_token.context("card-offline needs --card-token")?,
            phone: phone.context(
                "card-offline needs --phone, to reach the customer if the card is declined later",
            )?,
        },
        "bank-transfer" => Tender::BankTransfer,
        "pay-later" => Tender::PayLater {
            phone: phone.context("pay-later needs --phone")?,
        },
        other => {
            bail!("unknown tender '{other}': cash, card, card-offline, bank-transfer or pay-later")
        }
    })
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let mut journal = Journal::open(&cli.data)?;
    match cli.command {
        Commands::Init {
            server,
            terminal_id,
            store,
            operator_token,
        } => {
            let client = reqwest::Client::new();
            let url = format!("{}/v1/terminals", server[0].trim_end_matches('/'));
            let response = client
                .post(url)
                .bearer_auth(operator_token)
                .json(&json!({"terminal_id": terminal_id, "store": store}))
                .send()
                .await?;
            let status = response.status();
            let answer: serde_json::Value = response.json().await?;
            if !status.is_success() {
                bail!("the server refused the registration ({status}): {answer}");
            }
            let registration = Registration {
                terminal_id,
                store,
                servers: server,
                secret: answer["secret"]
                    .as_str()
                    .context("no secret in the answer")?
                    .to_owned(),
            };
            journal.set_setting("registration", &registration)?;
            journal.set_setting("offline_card_limits", &OfflineCardLimits::default())?;
            counter::card_key(&cli.data)?;
            println!(
                "till {} of {} registered; data in {}",
                registration.terminal_id,
                registration.store,
                cli.data.display()
            );
        }
        Commands::Item {
            sku,
            name,
            price,
            sale_id,
        } => {
            journal.put_item(&Item {
                sku,
                name,
                price,
                sale_id,
            })?;
            println!("saved");
        }
        Commands::Allot { sale_id, quantity } => {
            let registration = registration(&journal)?;
            let uplink = uplink(&registration)?;
            // The server's view of the allotment must include every sale made from it first.
            sync_once(&mut journal, &uplink).await?;
            let path = format!("/v1/terminals/{}/allotments", registration.terminal_id);
            let (status, answer) = uplink
                .post(&path, &json!({"sale_id": sale_id, "quantity": quantity}))
                .await?;
            if status != 200 {
                bail!("the server refused ({status}): {answer}");
            }
            let granted = answer["granted"].as_u64().unwrap_or(0) as u32;
            journal.set_allotment(&sale_id, granted)?;
            println!("this till now holds {granted} unit(s) of {sale_id}");
        }
        Commands::Sell {
            items,
            tender: kind,
            card_token,
            phone,
        } => {
            let registration = registration(&journal)?;
            let lines = items
                .iter()
                .map(|i| parse_line(i))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let tender = if kind == "card" {
                // Online card: authorised before anything is journaled.
                let total = counter::quote(&journal, &lines)?
                    .map_err(|r| anyhow::anyhow!("not sold: {r}"))?;
                let uplink = uplink(&registration)?;
                let path = format!("/v1/terminals/{}/payments", registration.terminal_id);
                let reference = format!("online-{}", hex::encode(rand::random::<[u8; 8]>()));
                let card = card_token.context("card needs --card-token")?;
                let body = json!({"reference": reference, "amount": total, "card_token": card});
                match uplink.post(&path, &body).await {
                    Ok((200, answer)) => Tender::Card {
                        authorization: answer["authorization_id"]
                            .as_str()
                            .unwrap_or_default()
                            .to_owned(),
                    },
                    Ok((402, _)) => bail!("not sold: the card was declined"),
                    Ok((status, answer)) => {
                        bail!("not sold: the server answered {status}: {answer}")
                    }
                    Err(error) => {
                        bail!("not sold: {error}; take it as card-offline, cash or pay-later")
                    }
                }
            } else {
                tender(&kind, card_token, phone)?
            };
            let key = counter::card_key(&cli.data)?;
            match counter::sell(&mut journal, &key, &lines, tender, now_millis())? {
                Ok(sold) => print!(
                    "{}",
                    receipt(
                        &registration.store,
                        &registration.terminal_id,
                        &registration.servers[0],
                        &sold
                    )
                ),
                Err(refusal) => bail!("not sold: {refusal}"),
            }
        }
        Commands::Sync => {
            let uplink = uplink(&registration(&journal)?)?;
            let report = sync_once(&mut journal, &uplink).await?;
            println!(
                "acknowledged through #{} ({} uploaded now)",
                report.acked_through, report.uploaded
            );
            let key = counter::card_key(&cli.data)?;
            let cards = forward_cards(&mut journal, &key, &uplink).await?;
            if cards != ForwardReport::default() {
                println!(
                    "stored cards: {} approved, {} declined (now receivables), {} waiting",
                    cards.approved, cards.declined, cards.waiting
                );
            }
            if !report.quarantined.is_empty() {
                println!("quarantined by the server: {:?}", report.quarantined);
            }
        }
        Commands::Run { every_s } => {
            let uplink = uplink(&registration(&journal)?)?;
            let key = counter::card_key(&cli.data)?;
            keep_syncing(journal, uplink, key, every_s).await;
        }
        Commands::Web { listen, every_s } => {
            let registration = registration(&journal)?;
            let key = counter::card_key(&cli.data)?;
            let syncing = Journal::open(&cli.data)?;
            tokio::spawn(keep_syncing(syncing, uplink(&registration)?, key, every_s));
            let counter = std::sync::Arc::new(holdfast_pos::web::Counter {
                journal: tokio::sync::Mutex::new(journal),
                card_key: key,
                store: registration.store.clone(),
                terminal: registration.terminal_id.clone(),
                pay_base: registration.servers[0].clone(),
                clock: now_millis,
            });
            let listener = tokio::net::TcpListener::bind(listen).await?;
            println!("counter page on http://{}", listener.local_addr()?);
            axum::serve(listener, holdfast_pos::web::router(counter)).await?;
        }
        Commands::Status => {
            let (last, _) = journal.head()?;
            let acked = journal.acked()?;
            println!("journal: {last} entries, {} waiting to sync", last - acked);
            let mut statement = journal
                .read()
                .prepare("SELECT sale_id, remaining FROM allotment")?;
            for row in
                statement.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?
            {
                let (sale, remaining) = row?;
                println!("allotment {sale}: {remaining} left");
            }
            let mut statement = journal
                .read()
                .prepare("SELECT id, phone, amount, created_at FROM receivable WHERE settled = 0 ORDER BY created_at")?;
            for row in statement.query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, i64>(3)?,
                ))
            })? {
                let (id, phone, amount, created) = row?;
                let age_h = (now_millis() - created) / 3_600_000;
                println!("receivable {id}: {amount} from {phone}, {age_h} h old");
            }
            let (cards, amount): (i64, i64) = journal.read().query_row(
                "SELECT COUNT(*), COALESCE(SUM(amount), 0) FROM offline_card WHERE forwarded = 0",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?;
            println!("stored card payments waiting: {cards} ({amount})");
        }
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tokio::runtime::Runtime::new()?.block_on(run(cli))
}
