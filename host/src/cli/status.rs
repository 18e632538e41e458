//! `credproxy status`: stored tokens and their expiry, never secrets.

use super::*;

pub(super) fn cmd_status(a: StatusArgs) -> Result<ExitCode, Failure> {
    let store = open_store_cli(&a.store)?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    let mut rows = Vec::new();
    for provider in store.list_providers().map_err(failed)? {
        for bucket in store.list_buckets(&provider).map_err(failed)? {
            let Some(token) = store.get_token(&provider, &bucket, true).map_err(failed)? else {
                continue;
            };
            let expiry = token.expiry_secs();
            rows.push(serde_json::json!({
                "provider": provider,
                "bucket": bucket,
                "expiry": expiry,
                "expired": expiry.is_some_and(|e| e <= now),
                "refreshable": token.refresh_token().is_some(),
                "refresh_unusable": store.get_meta(&provider, &bucket).map(|m| m.refresh_unusable).unwrap_or(false),
            }));
        }
    }
    if a.store.json {
        println!("{}", serde_json::json!({ "tokens": rows }));
        return Ok(ExitCode::SUCCESS);
    }
    if rows.is_empty() {
        println!("no tokens stored");
    }
    for r in rows {
        let when = r["expiry"].as_f64().map_or_else(
            || "no expiry".to_owned(),
            |e| {
                let left = e - now;
                if left <= 0.0 {
                    format!(
                        "expired {} ago",
                        humantime::format_duration(std::time::Duration::from_secs((-left) as u64))
                    )
                } else {
                    format!(
                        "expires in {}",
                        humantime::format_duration(std::time::Duration::from_secs(left as u64))
                    )
                }
            },
        );
        let refresh = if r["refresh_unusable"] == true {
            "refresh token rejected: log in again"
        } else if r["refreshable"] == true {
            "refreshable"
        } else {
            "no refresh token"
        };
        println!(
            "{}/{}\t{when}\t{refresh}",
            r["provider"].as_str().unwrap_or(""),
            r["bucket"].as_str().unwrap_or("")
        );
    }
    Ok(ExitCode::SUCCESS)
}
