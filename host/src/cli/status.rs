//! `credproxy status`: stored tokens and their expiry, never secrets.
//!
//! One unreadable token file must not hide the others: a file that does
//! not parse (or a `postgres` row that fails its check) is listed as
//! `corrupt` with the store's reason (a position, never content) and its
//! path, and `status` still exits 0 unless `--strict` asks for 1.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::store::StoreError;

use std::io::Write;
use std::process::ExitCode;

use serde_json::{Value, json};

use super::{EXIT_FAILED, Failure, StatusArgs, emit, emit_line, failed, open_store_cli};

/// Beyond this distance an expiry is shown as a date: "73years 28days"
/// says less than "2099-01-01".
const DATE_BEYOND: Duration = Duration::from_secs(30 * 24 * 3600);

pub(super) fn cmd_status(a: StatusArgs) -> Result<ExitCode, Failure> {
    let (store, backend) = open_store_cli(&a.store)?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    let mut rows = Vec::new();
    let mut corrupt = Vec::new();
    for provider in store.list_providers().map_err(failed)? {
        for bucket in store.list_buckets(&provider).map_err(failed)? {
            let token = match store.get_token(&provider, &bucket, true) {
                Ok(Some(token)) => token,
                Ok(None) => continue,
                Err(StoreError::Corrupt { path, detail }) => {
                    corrupt.push(json!({
                        "provider": provider,
                        "bucket": bucket,
                        "reason": detail,
                        "path": path.display().to_string(),
                    }));
                    continue;
                }
                // A database row that fails its check (tampered, swapped,
                // rolled back) is listed like a corrupt file.
                Err(StoreError::RowRefused { detail, .. }) => {
                    corrupt.push(json!({
                        "provider": provider,
                        "bucket": bucket,
                        "reason": detail,
                        "path": "credproxy_tokens row",
                    }));
                    continue;
                }
                Err(e) => return Err(failed(e)),
            };
            let expiry = token.expiry_secs();
            rows.push(json!({
                "provider": provider,
                "bucket": bucket,
                "expiry": expiry,
                "expired": expiry.is_some_and(|e| e <= now),
                "refreshable": token.refresh_token().is_some(),
                "refresh_unusable": store.get_meta(&provider, &bucket).map(|m| m.refresh_unusable).unwrap_or(false),
            }));
        }
    }
    let code = if a.strict && !corrupt.is_empty() {
        ExitCode::from(EXIT_FAILED)
    } else {
        ExitCode::SUCCESS
    };
    if a.store.json {
        // `corrupt` only when there is one: `{"tokens":[…]}` stays as it was.
        let mut out = json!({ "tokens": rows, "backend": backend.name.as_str() });
        if let Some(k) = &backend.key {
            out["key"] = json!(k);
        }
        if !corrupt.is_empty() {
            out["corrupt"] = Value::Array(corrupt);
        }
        emit_line(format_args!("{out}"));
        return Ok(code);
    }
    let mut out = String::new();
    if rows.is_empty() && corrupt.is_empty() {
        out.push_str("no tokens stored\n");
    }
    for r in &rows {
        let when = r["expiry"]
            .as_f64()
            .map_or_else(|| "no expiry".to_owned(), |e| describe_expiry(e, now));
        let refresh = if r["refresh_unusable"] == true {
            "refresh token rejected: log in again"
        } else if r["refreshable"] == true {
            "refreshable"
        } else {
            "no refresh token: will need a new login at expiry"
        };
        out.push_str(&format!(
            "{}/{}\t{when}\t{refresh}\n",
            r["provider"].as_str().unwrap_or(""),
            r["bucket"].as_str().unwrap_or("")
        ));
    }
    for c in &corrupt {
        out.push_str(&format!(
            "{}/{}\tcorrupt: {}\t{}\n",
            c["provider"].as_str().unwrap_or(""),
            c["bucket"].as_str().unwrap_or(""),
            c["reason"].as_str().unwrap_or(""),
            c["path"].as_str().unwrap_or("")
        ));
    }
    out.push_str(&format!("backend: {}\n", backend.describe()));
    emit(&out);
    if let Some(hint) = backend.migrate_hint() {
        let _ = writeln!(
            std::io::stderr(),
            "credproxy: note: the store is plaintext; {hint}"
        );
    }
    Ok(code)
}

/// "expires in 2h 5m" / "expired 3days ago" within [`DATE_BEYOND`] of
/// `now`, else "expires 2099-01-01" / "expired 2001-09-09" (UTC, the RFC
/// 3339 date).
fn describe_expiry(expiry: f64, now: f64) -> String {
    let left = expiry - now;
    let distance = Duration::from_secs(left.abs() as u64);
    if distance > DATE_BEYOND {
        let date = utc_date(expiry);
        return if left > 0.0 {
            format!("expires {date}")
        } else {
            format!("expired {date}")
        };
    }
    let shown = humantime::format_duration(distance);
    if left <= 0.0 {
        format!("expired {shown} ago")
    } else {
        format!("expires in {shown}")
    }
}

/// `YYYY-MM-DD` of a Unix time in seconds, UTC.
fn utc_date(secs: f64) -> String {
    let t = UNIX_EPOCH + Duration::from_secs(secs.max(0.0) as u64);
    let full = humantime::format_rfc3339_seconds(t).to_string();
    full.get(..10).unwrap_or(&full).to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: f64 = 1_795_837_160.0; // 2026-11-28

    #[test]
    fn far_expiries_are_dates_near_ones_durations() {
        assert_eq!(describe_expiry(4_070_908_800.0, NOW), "expires 2099-01-01");
        assert_eq!(describe_expiry(1_000_000_000.0, NOW), "expired 2001-09-09");
        assert_eq!(describe_expiry(NOW + 7_500.0, NOW), "expires in 2h 5m");
        assert_eq!(
            describe_expiry(NOW - 3.0 * 86_400.0, NOW),
            "expired 3days ago"
        );
        // 30 days exactly is still a duration; a second more is a date.
        assert_eq!(describe_expiry(NOW + 2_592_000.0, NOW), "expires in 30days");
        assert!(describe_expiry(NOW + 2_592_001.0, NOW).starts_with("expires 2026-12-28"));
    }
}
