//! `tokenvault keys status` and `keys run`: what the KEK epochs look like,
//! and one epoch pass on demand.

use super::CliError;
use crate::vault::{EpochReport, KeyStatus, VaultError};
use chrono::{DateTime, SecondsFormat, Utc};
use std::fmt::Write as _;

/// Refuses a `--now` in the future without `--force`: a pass at that time `consequence`.
pub(super) fn check_future_now(now: Option<DateTime<Utc>>, force: bool, consequence: &str) -> Result<(), CliError> {
    match now {
        Some(at) if at > Utc::now() && !force => Err(CliError::Other(format!(
            "--now {} is in the future: a pass at that time {consequence}; add --force if that is what you want \
             (or --dry-run to count only, where the command has it)",
            at.to_rfc3339_opts(SecondsFormat::Secs, true)
        ))),
        _ => Ok(()),
    }
}

/// Prints what an epoch pass did; exit status 2 when a step failed (it is retried next pass).
pub(super) fn report_pass(result: Result<Option<EpochReport>, VaultError>) -> Result<(), CliError> {
    let report = match result {
        Ok(Some(report)) => report,
        Ok(None) => {
            return Err(CliError::Other(
                "another process holds the KEK epoch lock (a replica's epoch pass is running); try again shortly"
                    .to_owned(),
            ))
        }
        Err(error) => return Err(CliError::Other(format!("KEK epoch pass failed: {error}"))),
    };
    if let Some(kek) = &report.started {
        println!("new epoch started: {kek}");
    }
    println!(
        "re-wrapped {} data keys; {} still under a retired key",
        report.rewrapped, report.backlog
    );
    for kek in &report.destroyed {
        println!("destroyed retired key: {kek}");
    }
    if report.problems.is_empty() {
        Ok(())
    } else {
        for problem in &report.problems {
            eprintln!("problem: {problem}");
        }
        Err(CliError::Incomplete(format!(
            "KEK epoch pass finished with {} problems (retried next pass)",
            report.problems.len()
        )))
    }
}

fn time(at: Option<DateTime<Utc>>) -> String {
    at.map_or_else(|| "-".to_owned(), |t| t.to_rfc3339_opts(SecondsFormat::Secs, true))
}

/// The text of `keys status`.
pub(super) fn render_status(status: &KeyStatus, now: DateTime<Utc>) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "keyring: {}", status.backend);
    let _ = writeln!(out, "active key-encryption key: {}", status.active);
    match status.rotation {
        Some(every) => {
            let _ = writeln!(out, "epochs: a new key every {} days", every.num_days());
        }
        None => {
            let _ = writeln!(out, "epochs: off (keys.rotate_every_days = 0)");
        }
    }
    if !status.epochs.is_empty() {
        let _ = writeln!(out, "\nepochs (oldest first):");
    }
    for epoch in &status.epochs {
        let e = &epoch.epoch;
        let state = match (e.retired_at, e.destroyed_at, e.gone_at) {
            (_, Some(_), Some(gone)) if gone <= now => "gone",
            (_, Some(_), _) => "destroyed, pending deletion",
            (Some(_), None, _) => "retired",
            (None, None, _) => "active",
        };
        let _ = writeln!(out, "  {}", e.kek_id);
        let _ = writeln!(
            out,
            "    state {state}; wraps {} data keys; activated {}; retired {}",
            epoch.wraps,
            time(Some(e.activated_at)),
            time(e.retired_at)
        );
        if e.destroyed_at.is_some() {
            let _ = writeln!(
                out,
                "    destroyed {}; material gone {}",
                time(e.destroyed_at),
                time(e.gone_at)
            );
        } else {
            let _ = writeln!(out, "    destruction due {}", time(epoch.destroy_due));
        }
        if let Some(error) = &e.last_error {
            let _ = writeln!(out, "    last problem: {error}");
        }
    }
    for (kek, count) in &status.outside_epochs {
        let _ = writeln!(
            out,
            "  {kek}: wraps {count} data keys, outside any epoch (re-wrapped away from by the next pass; never destroyed by tokenvault)"
        );
    }
    let _ = writeln!(out);
    match status.backups_unreadable_after {
        Some(at) => {
            let _ = writeln!(
                out,
                "backups taken now stop opening any token after {} (restoring an older backup restores no tokens: users reconnect)",
                time(Some(at))
            );
        }
        None => {
            let _ = writeln!(
                out,
                "backups taken now keep opening tokens for as long as the keys above live (no epoch bound: {})",
                if status.rotation.is_none() {
                    "epochs are off"
                } else {
                    "keys outside any epoch, or no epoch started yet"
                }
            );
        }
    }
    out
}
