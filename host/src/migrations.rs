//! The project's own database objects (never the contract's tables): applied at start-up.
//!
//! Each migration is idempotent SQL embedded in the binary. A bookkeeping table records the
//! SHA-256 of what was applied, so that a host start normally changes nothing (and takes no lock on
//! `subscribers_restaurants`), while an edited migration is applied again. Everything runs in one
//! transaction under a transaction-level advisory lock, so hosts starting together take turns and
//! a failure leaves the database as it was.

use sha2::{Digest, Sha256};
use tokio_postgres::Client;
use tracing::info;

/// One migration: a name (the file's stem) and its SQL.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    pub name: &'static str,
    pub sql: &'static str,
}

/// The migrations, in the order they are applied.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        name: "001_subscriber_changes",
        sql: include_str!("../migrations/001_subscriber_changes.sql"),
    },
    Migration {
        name: "002_delivery_ledger",
        sql: include_str!("../migrations/002_delivery_ledger.sql"),
    },
    Migration {
        name: "003_decisions",
        sql: include_str!("../migrations/003_decisions.sql"),
    },
    Migration {
        name: "004_decision_parts",
        sql: include_str!("../migrations/004_decision_parts.sql"),
    },
    Migration {
        name: "005_ledger_retention",
        sql: include_str!("../migrations/005_ledger_retention.sql"),
    },
    Migration {
        name: "006_decisions_lz4",
        sql: include_str!("../migrations/006_decisions_lz4.sql"),
    },
    Migration {
        name: "007_ledger_per_decision",
        sql: include_str!("../migrations/007_ledger_per_decision.sql"),
    },
    Migration {
        name: "008_decision_templates",
        sql: include_str!("../migrations/008_decision_templates.sql"),
    },
];

/// The advisory lock key that serialises migrations: "camppush" in ASCII.
pub const MIGRATION_LOCK_KEY: i64 = 0x6361_6d70_7075_7368;

/// How long a migration waits for a lock (the advisory lock, or the table lock that creating a
/// trigger takes) before it gives up rather than hang a start-up behind a long transaction.
const LOCK_TIMEOUT: &str = "60s";

const BOOKKEEPING: &str = "CREATE TABLE IF NOT EXISTS public.campaign_push_migrations (
    name       text        PRIMARY KEY,
    sha256     text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)";

/// What [`migrate`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MigrationReport {
    /// Applied now: new, or changed since they were last applied.
    pub applied: Vec<&'static str>,
    /// Already applied with the same SQL.
    pub unchanged: Vec<&'static str>,
}

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("cannot start the migration transaction or take its lock: {0}")]
    Lock(#[source] tokio_postgres::Error),
    #[error("cannot read or write the migration bookkeeping table: {0}")]
    Bookkeeping(#[source] tokio_postgres::Error),
    #[error("migration {name} failed: {source}")]
    Apply {
        name: &'static str,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("cannot commit the migrations: {0}")]
    Commit(#[source] tokio_postgres::Error),
}

/// Applies [`MIGRATIONS`] that are new or changed, all in one transaction.
///
/// Takes `&Client` (not `&mut`) so that it can share a connection; it must not be used by others
/// while this runs, since the transaction is the connection's.
pub async fn migrate(client: &Client) -> Result<MigrationReport, MigrateError> {
    client
        .batch_execute(&format!("BEGIN; SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'"))
        .await
        .map_err(MigrateError::Lock)?;
    let result = apply_all(client).await;
    match result {
        Ok(report) => {
            client
                .batch_execute("COMMIT")
                .await
                .map_err(MigrateError::Commit)?;
            if !report.applied.is_empty() {
                info!(applied = ?report.applied, "database migrations applied");
            }
            Ok(report)
        }
        Err(error) => {
            // The error is what matters; a failed rollback means the connection is gone anyway.
            let _ = client.batch_execute("ROLLBACK").await;
            Err(error)
        }
    }
}

async fn apply_all(client: &Client) -> Result<MigrationReport, MigrateError> {
    client
        .execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK_KEY])
        .await
        .map_err(MigrateError::Lock)?;
    client
        .batch_execute(BOOKKEEPING)
        .await
        .map_err(MigrateError::Bookkeeping)?;
    let mut report = MigrationReport::default();
    for migration in MIGRATIONS {
        let digest = sha256_hex(migration.sql);
        let recorded: Option<String> = client
            .query_opt(
                "SELECT sha256 FROM public.campaign_push_migrations WHERE name = $1",
                &[&migration.name],
            )
            .await
            .map_err(MigrateError::Bookkeeping)?
            .map(|row| row.get(0));
        if recorded.as_deref() == Some(digest.as_str()) {
            report.unchanged.push(migration.name);
            continue;
        }
        client
            .batch_execute(migration.sql)
            .await
            .map_err(|source| MigrateError::Apply {
                name: migration.name,
                source,
            })?;
        client
            .execute(
                "INSERT INTO public.campaign_push_migrations (name, sha256) VALUES ($1, $2)
                 ON CONFLICT (name) DO UPDATE SET sha256 = EXCLUDED.sha256, applied_at = now()",
                &[&migration.name, &digest],
            )
            .await
            .map_err(MigrateError::Bookkeeping)?;
        report.applied.push(migration.name);
    }
    Ok(report)
}

fn sha256_hex(text: &str) -> String {
    Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_trigger_notifies_the_default_channel() {
        let sql = MIGRATIONS[0].sql;
        let quoted = format!("'{}'", crate::subscribers::DEFAULT_CHANNEL);
        // The default in the function body and the argument of both triggers.
        assert_eq!(
            sql.matches(&quoted).count(),
            3,
            "{quoted} in {}",
            MIGRATIONS[0].name
        );
    }

    #[test]
    fn migrations_are_idempotent_sql() {
        for migration in MIGRATIONS {
            let creates = migration.sql.matches("CREATE TRIGGER").count();
            let drops = migration.sql.matches("DROP TRIGGER IF EXISTS").count();
            assert_eq!(creates, drops, "{}", migration.name);
            assert!(
                !migration.sql.contains("CREATE FUNCTION"),
                "use CREATE OR REPLACE"
            );
            let sql = migration.sql.to_lowercase();
            for table in ["subscribers_restaurants", "subscribers_feedback"] {
                assert!(
                    !sql.contains(&format!("alter table {table}"))
                        && !sql.contains(&format!("alter table public.{table}")),
                    "{}: the contract's table {table} is not ours to alter",
                    migration.name
                );
            }
        }
    }
}
