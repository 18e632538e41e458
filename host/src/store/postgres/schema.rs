//! The schema, created and migrated by the proxy.
//!
//! Plain SQL migrations, applied in order inside one transaction that first
//! takes `pg_advisory_xact_lock`: two proxies starting at once serialize
//! there, and the second sees the first's `credproxy_schema_version` row
//! and applies nothing. (A transaction-scoped lock, unlike a session lock,
//! is released by commit or rollback and works through poolers.)

use postgres::{Client, Error};

/// The advisory lock key of migrations ("credprox" in ASCII).
const MIGRATION_LOCK: i64 = 0x6372_6564_7072_6f78;

/// The migrations, `MIGRATIONS[i]` bringing the schema to version `i + 1`.
/// Sealed columns are `bytea` envelopes; names and versions are plain (a
/// database administrator sees which logins exist, never their secrets).
/// A NULL ciphertext is a tombstone: deletes keep the row so that versions
/// only grow and an old sealed value can never come back under a reused
/// version.
const MIGRATIONS: &[&str] = &["
CREATE TABLE credproxy_tokens (
    provider text NOT NULL,
    bucket text NOT NULL,
    version bigint NOT NULL,
    ciphertext bytea,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (provider, bucket)
);
CREATE TABLE credproxy_meta (
    provider text NOT NULL,
    bucket text NOT NULL,
    version bigint NOT NULL,
    ciphertext bytea NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (provider, bucket)
);
CREATE TABLE credproxy_api_keys (
    name text PRIMARY KEY,
    version bigint NOT NULL,
    ciphertext bytea,
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE credproxy_leases (
    provider text NOT NULL,
    bucket text NOT NULL,
    holder text NOT NULL,
    deadline timestamptz NOT NULL,
    fence bigint NOT NULL,
    PRIMARY KEY (provider, bucket)
);
CREATE SEQUENCE credproxy_lease_fence;
"];

/// The schema version this build writes.
pub const LATEST: i32 = 1;

/// Creates or migrates the schema to [`LATEST`].
pub fn migrate(client: &mut Client) -> Result<(), Error> {
    let mut tx = client.transaction()?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS credproxy_schema_version (
            version integer PRIMARY KEY,
            applied_at timestamptz NOT NULL DEFAULT now()
        )",
    )?;
    let have: i32 = tx
        .query_one(
            "SELECT coalesce(max(version), 0) FROM credproxy_schema_version",
            &[],
        )?
        .get(0);
    for (i, sql) in MIGRATIONS
        .iter()
        .enumerate()
        .skip(usize::try_from(have).unwrap_or(0))
    {
        let version = i32::try_from(i + 1).unwrap_or(i32::MAX);
        tx.batch_execute(sql)?;
        tx.execute(
            "INSERT INTO credproxy_schema_version (version) VALUES ($1)",
            &[&version],
        )?;
    }
    tx.commit()
}

/// The schema version recorded in the database.
pub fn current(client: &mut Client) -> Result<i32, Error> {
    Ok(client
        .query_one(
            "SELECT coalesce(max(version), 0) FROM credproxy_schema_version",
            &[],
        )?
        .get(0))
}

/// The schema version recorded in the database, 0 when it has no schema
/// yet; reads only (a check must not create the version table).
pub fn peek(client: &mut Client) -> Result<i32, Error> {
    let exists: bool = client
        .query_one(
            "SELECT to_regclass('credproxy_schema_version') IS NOT NULL",
            &[],
        )?
        .get(0);
    if exists { current(client) } else { Ok(0) }
}
