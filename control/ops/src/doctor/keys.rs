//! `kek.match` (storage §10.1): the configured `ZONE_KEK` (and `ZONE_KEK_PREVIOUS`) against
//! the KEK canary, every `dek_id` in use, and one trial decrypt of each zone's newest signing
//! key. A restored STS that cannot decrypt its keys is explained here, naming both key ids.

use std::collections::BTreeMap;

use control_store::{kek_check, ops::doctor as store};

use super::{CheckError, Context, report::Check, report::Findings, sample};
use crate::{keys::load_kek, migrate::KEK_CANARY_CONTEXT};

const ID: &str = "kek.match";

/// Runs `kek.match`.
pub(crate) async fn kek_match(cx: &mut Context<'_>) -> Result<Check, CheckError> {
    let mut findings = Findings::new(ID);
    let canary = kek_check::read(&mut cx.db).await?;
    let in_use = store::dek_ids_in_use(&mut cx.db).await?;
    // Sealed values per key id, and where they are.
    let mut by_id: BTreeMap<String, (i64, Vec<String>)> = BTreeMap::new();
    for row in &in_use {
        let entry = by_id.entry(row.dek_id.clone()).or_default();
        entry.0 += row.rows;
        entry.1.push(format!("{} {}", row.rows, row.source));
    }

    if (cx.lookup)("ZONE_KEK").is_none() && (cx.lookup)("ZONE_KEK_FILE").is_none() {
        if canary.is_none() && by_id.is_empty() {
            findings.ok("nothing is sealed yet (ZONE_KEK is not set here either)");
        } else {
            let mut ids: Vec<String> = by_id.keys().cloned().collect();
            if let Some(canary) = &canary
                && !ids.contains(&canary.dek_id)
            {
                ids.push(canary.dek_id.clone());
            }
            findings.warn(
                format!(
                    "ZONE_KEK is not set in this environment, so the key ids in use ({}) cannot be compared",
                    ids.join(", ")
                ),
                "run caracal doctor with the ZONE_KEK (or ZONE_KEK_FILE) the API, STS and gateway use",
            );
        }
        return Ok(findings.finish());
    }
    let ring = match load_kek(cx.lookup) {
        Ok(ring) => ring,
        Err(error) => {
            findings.fail(
                error.to_string(),
                "set ZONE_KEK (or ZONE_KEK_FILE) to the 64 hex characters the services use",
            );
            return Ok(findings.finish());
        }
    };
    let current = ring.current().dek_id().as_str().to_owned();
    let previous = ring.previous().map(|kek| kek.dek_id().as_str().to_owned());
    let configured = match &previous {
        Some(previous) => format!("ZONE_KEK is {current}, ZONE_KEK_PREVIOUS is {previous}"),
        None => format!("ZONE_KEK is {current}, ZONE_KEK_PREVIOUS unset"),
    };
    let mismatch_fix = |found: &str| {
        format!(
            "set ZONE_KEK to the key whose id is {found} (the API, STS and gateway stay unready with zone_kek_mismatch until they have it); when rotating keys, set ZONE_KEK=<new key> and ZONE_KEK_PREVIOUS=<old key> and run `caracal keys rewrap`"
        )
    };

    // The canary.
    match &canary {
        None => findings.warn(
            "kek_check holds no KEK canary, so services cannot detect a wrong ZONE_KEK at start-up",
            "run `caracal migrate` with ZONE_KEK set: it seals the canary",
        ),
        Some(canary) if !ring.holds(&canary.dek_id) => findings.fail(
            format!(
                "zone_kek_mismatch: kek_check is sealed under {}; {configured}",
                canary.dek_id
            ),
            mismatch_fix(&canary.dek_id),
        ),
        Some(canary) => {
            match ring.open(
                &KEK_CANARY_CONTEXT,
                &canary.nonce,
                &canary.ciphertext,
                &canary.dek_id,
            ) {
                Ok(_plaintext) => findings.ok(format!("{} opens kek_check", canary.dek_id)),
                Err(error) => findings.fail(
                    format!("kek_check does not open: {error}"),
                    "the canary was altered or belongs to another database: restore kek_check from the backup that matches this database",
                ),
            }
        }
    }

    // Every key id in use.
    for (dek_id, (rows, places)) in &by_id {
        if !ring.holds(dek_id) {
            findings.fail(
                format!(
                    "{rows} sealed value(s) ({}) are under {dek_id}; {configured}",
                    places.join(", ")
                ),
                mismatch_fix(dek_id),
            );
        } else if Some(dek_id) == previous.as_ref() {
            findings.warn(
                format!("{rows} sealed value(s) are still under ZONE_KEK_PREVIOUS ({dek_id})"),
                "run `caracal keys rewrap` to re-seal them under ZONE_KEK, then remove ZONE_KEK_PREVIOUS",
            );
        }
    }

    // One trial decrypt per zone.
    let samples = store::signing_key_samples(&mut cx.db).await?;
    let mut opened = 0_usize;
    let mut unopened = Vec::new();
    for key in &samples {
        if !ring.holds(&key.dek_id) {
            // Already reported with its key id above.
            continue;
        }
        let context = control_crypto::SealContext {
            table: "secrets",
            column: "ciphertext",
            zone_id: &key.zone_id,
            row_id: &key.id,
        };
        match ring.open(&context, &key.nonce, &key.ciphertext, &key.dek_id) {
            Ok(_plaintext) => opened += 1,
            Err(_error) => unopened.push(format!(
                "zone {} key {} ({})",
                key.zone_id, key.id, key.dek_id
            )),
        }
    }
    if !unopened.is_empty() {
        findings.fail(
            format!(
                "the newest signing key of {} zone(s) does not decrypt although its key id matches: {}",
                unopened.len(),
                sample(&unopened, unopened.len(), 3)
            ),
            "the rows were altered or copied from another row or zone: restore them from the backup that matches this database, or rotate the zone's key with `caracal keys rotate --zone <zone>`",
        );
    }
    findings.ok(configured);
    findings.ok(format!(
        "{} key id(s) in use, all held; {opened} zone signing key(s) decrypt",
        by_id.len()
    ));
    Ok(findings.finish())
}
