//! `holdfast verify-draw`: recomputes a lottery from what the server published and says
//! whether it is what the server claims. Needs nothing from the server but its published draw.

use std::path::PathBuf;

use anyhow::{Context, bail, ensure};
use clap::Args;
use holdfast_core::{EntryId, draw, seed_commitment};
use hyper::Method;
use serde_json::Value;

#[derive(Args)]
pub struct VerifyDrawArgs {
    /// Server to fetch the draw from, like http://127.0.0.1:8080 (with --sale).
    #[arg(long, requires = "sale", value_parser = crate::http::server_url)]
    url: Option<String>,
    /// The sale whose draw to verify.
    #[arg(long)]
    sale: Option<String>,
    /// A saved copy of GET /v1/sales/{id}/draw, instead of --url.
    #[arg(long, conflicts_with = "url")]
    file: Option<PathBuf>,
    /// The seed commitment you saw when the sale was announced (checked if given).
    #[arg(long)]
    commitment: Option<String>,
}

pub fn run(args: VerifyDrawArgs) -> anyhow::Result<()> {
    let published: Value = match (&args.file, &args.url, &args.sale) {
        (Some(file), _, _) => serde_json::from_slice(&std::fs::read(file)?)?,
        (None, Some(url), Some(sale)) => {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let url = format!("{}/v1/sales/{sale}/draw", url.trim_end_matches('/'));
            let (status, body) = runtime.block_on(crate::http::send_json(
                &crate::http::client(1),
                Method::GET,
                &url,
                None,
                None,
            ))?;
            ensure!(status == 200, "the server answered {status}: {body}");
            body
        }
        _ => bail!("give --url and --sale, or --file"),
    };
    let report = verify(&published, args.commitment.as_deref())?;
    println!("{report}");
    Ok(())
}

/// Checks a published draw; returns a one-line summary, or what is wrong.
pub fn verify(published: &Value, expected_commitment: Option<&str>) -> anyhow::Result<String> {
    let commitment = published["seed_commitment"]
        .as_str()
        .context("no seed_commitment")?;
    if let Some(expected) = expected_commitment {
        ensure!(
            expected == commitment,
            "the server now shows commitment {commitment}, not the announced {expected}"
        );
    }
    let seed_hex = published["seed"]
        .as_str()
        .context("the seed is not revealed yet: the draw has not been made")?;
    let seed: [u8; 32] = hex::decode(seed_hex)
        .ok()
        .and_then(|bytes| bytes.try_into().ok())
        .context("the seed is not 32 bytes of hex")?;
    ensure!(
        seed_commitment(&seed) == commitment,
        "the revealed seed does not match the commitment"
    );
    let entrants: Vec<EntryId> = published["entrants"]
        .as_array()
        .context("no entrants list")?
        .iter()
        .map(|e| {
            e.as_str()
                .and_then(EntryId::from_hex)
                .context("an entrant id is not 16 hex digits")
        })
        .collect::<anyhow::Result<_>>()?;
    let positions: Vec<u64> = published["positions"]
        .as_array()
        .context("no positions list")?
        .iter()
        .map(|p| p.as_u64().context("a position is not a number"))
        .collect::<anyhow::Result<_>>()?;
    let recomputed: Vec<u64> = draw(&seed, &entrants)
        .iter()
        .map(|r| u64::from(*r) + 1)
        .collect();
    ensure!(
        recomputed == positions,
        "the published positions are not the ones this seed gives"
    );
    Ok(format!(
        "draw verified: {} entrants, seed {seed_hex} matches commitment {commitment}, every position recomputed",
        entrants.len()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn published(seed: [u8; 32], entrants: &[EntryId]) -> Value {
        let positions: Vec<u32> = draw(&seed, entrants).iter().map(|r| r + 1).collect();
        json!({
            "seed_commitment": seed_commitment(&seed),
            "seed": hex::encode(seed),
            "entrants": entrants.iter().map(|e| e.to_hex()).collect::<Vec<_>>(),
            "positions": positions,
        })
    }

    fn entrants() -> Vec<EntryId> {
        (0..30)
            .map(|n| EntryId::of("s", &holdfast_core::IdentityKey::Account(format!("c{n}"))))
            .collect()
    }

    #[test]
    fn an_honest_draw_verifies() {
        let draw = published([9; 32], &entrants());
        assert!(
            verify(&draw, None)
                .unwrap()
                .starts_with("draw verified: 30 entrants")
        );
    }

    #[test]
    fn a_swapped_position_a_changed_seed_or_a_new_commitment_is_caught() {
        let honest = published([9; 32], &entrants());
        let mut swapped = honest.clone();
        let (a, b) = (
            swapped["positions"][0].clone(),
            swapped["positions"][1].clone(),
        );
        swapped["positions"][0] = b;
        swapped["positions"][1] = a;
        assert!(verify(&swapped, None).is_err());
        let mut reseeded = honest.clone();
        reseeded["seed"] = json!(hex::encode([8u8; 32]));
        assert!(verify(&reseeded, None).is_err());
        let announced = seed_commitment(&[1; 32]);
        assert!(verify(&honest, Some(&announced)).is_err());
    }
}
