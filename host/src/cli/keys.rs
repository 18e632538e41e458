//! `credproxy key …` and `credproxy logout`: direct store edits.

use std::io::Read;
use std::process::ExitCode;

use credproxy_core::Secret;

use super::{Failure, KeyCmd, LogoutArgs, failed, open_store_cli};

pub(super) fn cmd_key(k: KeyCmd) -> Result<ExitCode, Failure> {
    match k {
        KeyCmd::Set(a) => {
            let (store, _) = open_store_cli(&a.store)?;
            let mut value = String::new();
            std::io::stdin()
                .read_to_string(&mut value)
                .map_err(failed)?;
            let value = value.strip_suffix('\n').unwrap_or(&value);
            let value = value.strip_suffix('\r').unwrap_or(value);
            if value.is_empty() {
                return Err(failed(
                    "no key value on stdin; pipe it in, e.g. `credproxy key set NAME < file`",
                ));
            }
            store
                .set_api_key(&a.name, &Secret::new(value))
                .map_err(failed)?;
            println!("stored API key {}", a.name);
        }
        KeyCmd::List(s) => {
            let (store, _) = open_store_cli(&s)?;
            let keys = store.list_api_keys().map_err(failed)?;
            if s.json {
                println!("{}", serde_json::json!({ "keys": keys }));
            } else if keys.is_empty() {
                // Silence would look like a failure (or a wrong --store).
                println!("no API keys stored");
            } else {
                for k in keys {
                    println!("{k}");
                }
            }
        }
        KeyCmd::Rm(a) => {
            let (store, _) = open_store_cli(&a.store)?;
            if !store.remove_api_key(&a.name).map_err(failed)? {
                return Err(failed(format!("no API key named {}", a.name)));
            }
            println!("removed API key {}", a.name);
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub(super) fn cmd_logout(a: LogoutArgs) -> Result<ExitCode, Failure> {
    let (store, _) = open_store_cli(&a.store)?;
    // Take the key's cross-process lock, as every write does: a refresh
    // running in a proxy finishes (and persists) first, then this removal
    // wins.
    let _lock = store
        .lock_key(&a.provider, &a.bucket, std::time::Duration::from_secs(10))
        .map_err(failed)?
        .ok_or_else(|| failed("the credential store is busy (a refresh is running); try again"))?;
    if store
        .get_token(&a.provider, &a.bucket, true)
        .map_err(failed)?
        .is_none()
    {
        return Err(failed(format!(
            "no token stored for {}/{}",
            a.provider, a.bucket
        )));
    }
    store.delete_token(&a.provider, &a.bucket).map_err(failed)?;
    println!("removed the token of {}/{}", a.provider, a.bucket);
    Ok(ExitCode::SUCCESS)
}
