//! `holdfast log dump`: a data directory's log (or its snapshots, or its keyed values) as JSON
//! lines, whatever form
//! the records were written in — the audit trail, readable and greppable without Holdfast's
//! internals. It only reads, so it may look at the data of a running server.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};
use holdfast_server::log_entry::{as_json, snapshot_as_json};
use holdfast_store::SqliteReader;
use serde_json::json;

#[derive(Args)]
pub struct LogArgs {
    #[command(subcommand)]
    command: LogCommand,
}

#[derive(Subcommand)]
enum LogCommand {
    /// Print every record as a JSON line: {"seq", "stream", "record"}.
    Dump {
        /// The server's data directory.
        #[arg(short, long, default_value = "./holdfast-data")]
        data: PathBuf,
        /// Print the newest snapshot of each stream instead: {"stream", "through", "snapshot"}.
        #[arg(long)]
        snapshots: bool,
        /// Print the keyed values instead (stored answers, registrations, settings), oldest
        /// first: {"key", "value"}, the value as text when it is UTF-8 and {"hex"} when not.
        #[arg(long, conflicts_with = "snapshots")]
        values: bool,
    },
}

pub fn run(args: LogArgs) -> anyhow::Result<()> {
    let LogCommand::Dump {
        data,
        snapshots,
        values,
    } = args.command;
    let reader = SqliteReader::open(&data)
        .with_context(|| format!("{} is not a Holdfast data directory", data.display()))?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    if values {
        let values = reader.values()?;
        until_the_reader_leaves(values.into_iter().try_for_each(|(key, value)| {
            let value = match String::from_utf8(value) {
                Ok(text) => json!(text),
                Err(bytes) => json!({ "hex": hex::encode(bytes.into_bytes()) }),
            };
            writeln!(out, "{}", json!({ "key": key, "value": value }))
        }))?;
    } else if snapshots {
        until_the_reader_leaves(reader.snapshots()?.into_iter().try_for_each(|snapshot| {
            let line = json!({
                "stream": snapshot.stream,
                "through": snapshot.through,
                "snapshot": snapshot_as_json(&snapshot.stream, &snapshot.payload),
            });
            writeln!(out, "{line}")
        }))?;
    } else {
        let mut failed = None;
        reader
            .records(|record| {
                let line = json!({
                    "seq": record.seq,
                    "stream": record.stream,
                    "record": as_json(&record.stream, &record.payload),
                });
                if let Err(error) = writeln!(out, "{line}") {
                    failed = Some(error);
                    return Err(holdfast_store::StoreError::Stopped);
                }
                Ok(())
            })
            .or_else(|error| match failed.take() {
                // A reader that went away (`| head`) ends the dump quietly.
                Some(io) if io.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
                Some(io) => Err(anyhow::Error::from(io)),
                None => Err(error.into()),
            })?;
    }
    until_the_reader_leaves(out.flush())
}

/// A reader that went away (`| head`) ends the dump quietly.
fn until_the_reader_leaves(written: std::io::Result<()>) -> anyhow::Result<()> {
    match written {
        Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => Ok(other?),
    }
}
