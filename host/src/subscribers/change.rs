//! The change notifications sent by the trigger of `migrations/001_subscriber_changes.sql`.
//!
//! One JSON object per changed row (or per TRUNCATE statement), with a one-letter `op`:
//!
//! | op  | meaning | fields besides `op` and `seq` |
//! |-----|---------|-------------------------------|
//! | `I` | row inserted | `id`, `client_id`, `restaurant_id` |
//! | `U` | row updated | `old_id`, `id`, `client_id`, `restaurant_id` (the new values) |
//! | `D` | row deleted | `id` |
//! | `F` | row inserted or updated, but its ids did not fit a NOTIFY payload (8000 bytes) | `id`, and `old_id` for an update |
//! | `T` | table truncated | none |
//!
//! `seq` counts the notifications of one transaction. It is there only to make every payload
//! unique: PostgreSQL delivers identical payloads of one transaction once, which would lose e.g.
//! the second of "insert row 5, delete it, insert it again".

use serde::Deserialize;

/// One change of `subscribers_restaurants`, as the cache applies it.
///
/// Every change *sets* the state of the rows it names (present with these values, or absent);
/// none is relative to the previous state. Replaying changes that a full load already contains
/// therefore converges to the same table, which is what makes "LISTEN, then load, then apply"
/// safe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Row `id` now holds these values (insert, or update that kept the id).
    Upsert {
        id: i32,
        client_id: String,
        restaurant_id: String,
    },
    /// Row `old_id` is gone and row `id` holds these values (an update; the ids may be equal).
    Update {
        old_id: i32,
        id: i32,
        client_id: String,
        restaurant_id: String,
    },
    /// Row `id` is gone.
    Delete { id: i32 },
    /// Row `old_id` (if any) is gone and row `id` must be read from the table: its ids were too
    /// long for a notification.
    Refetch { old_id: Option<i32>, id: i32 },
    /// The table was truncated: load it again.
    Truncate,
}

/// A payload that is not one of the shapes above: the cache reloads the table rather than guess.
#[derive(Debug, thiserror::Error)]
pub enum PayloadError {
    #[error("notification payload is not the expected JSON object: {0}")]
    Json(#[from] serde_json::Error),
    #[error("notification payload has unknown op {0:?}")]
    UnknownOp(String),
    #[error("notification payload with op {op:?} lacks field {field}")]
    Missing { op: String, field: &'static str },
}

#[derive(Deserialize)]
struct Wire {
    op: String,
    id: Option<i32>,
    old_id: Option<i32>,
    client_id: Option<String>,
    restaurant_id: Option<String>,
}

impl Change {
    pub fn parse(payload: &str) -> Result<Self, PayloadError> {
        let wire: Wire = serde_json::from_str(payload)?;
        let op = wire.op.as_str();
        let missing = |field| PayloadError::Missing {
            op: wire.op.clone(),
            field,
        };
        let id = || wire.id.ok_or_else(|| missing("id"));
        Ok(match op {
            "I" => Change::Upsert {
                id: id()?,
                client_id: wire.client_id.clone().ok_or_else(|| missing("client_id"))?,
                restaurant_id: wire
                    .restaurant_id
                    .clone()
                    .ok_or_else(|| missing("restaurant_id"))?,
            },
            "U" => Change::Update {
                old_id: wire.old_id.ok_or_else(|| missing("old_id"))?,
                id: id()?,
                client_id: wire.client_id.clone().ok_or_else(|| missing("client_id"))?,
                restaurant_id: wire
                    .restaurant_id
                    .clone()
                    .ok_or_else(|| missing("restaurant_id"))?,
            },
            "D" => Change::Delete { id: id()? },
            "F" => Change::Refetch {
                old_id: wire.old_id,
                id: id()?,
            },
            "T" => Change::Truncate,
            _ => return Err(PayloadError::UnknownOp(wire.op.clone())),
        })
    }

    /// Whether applying the change needs the database (a row to read, or the whole table).
    pub fn needs_database(&self) -> bool {
        matches!(self, Change::Refetch { .. } | Change::Truncate)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_op_as_the_trigger_writes_it() {
        // Spacing as json_build_object prints it.
        let insert =
            r#"{"op" : "I", "seq" : 1, "id" : 5, "client_id" : "c", "restaurant_id" : "r"}"#;
        assert_eq!(
            Change::parse(insert).unwrap(),
            Change::Upsert {
                id: 5,
                client_id: "c".into(),
                restaurant_id: "r".into()
            }
        );
        let update =
            r#"{"op":"U","seq":2,"old_id":5,"id":6,"client_id":"c\"q","restaurant_id":"r"}"#;
        assert_eq!(
            Change::parse(update).unwrap(),
            Change::Update {
                old_id: 5,
                id: 6,
                client_id: "c\"q".into(),
                restaurant_id: "r".into()
            }
        );
        assert_eq!(
            Change::parse(r#"{"op":"D","seq":3,"id":7}"#).unwrap(),
            Change::Delete { id: 7 }
        );
        assert_eq!(
            Change::parse(r#"{"op":"F","seq":4,"id":8}"#).unwrap(),
            Change::Refetch {
                old_id: None,
                id: 8
            }
        );
        assert_eq!(
            Change::parse(r#"{"op":"F","seq":4,"old_id":7,"id":8}"#).unwrap(),
            Change::Refetch {
                old_id: Some(7),
                id: 8
            }
        );
        assert_eq!(
            Change::parse(r#"{"op":"T","seq":1}"#).unwrap(),
            Change::Truncate
        );
    }

    #[test]
    fn refuses_what_it_does_not_understand() {
        assert!(matches!(
            Change::parse("not json"),
            Err(PayloadError::Json(_))
        ));
        assert!(matches!(
            Change::parse(r#"{"op":"X"}"#),
            Err(PayloadError::UnknownOp(_))
        ));
        assert!(matches!(
            Change::parse(r#"{"op":"I","id":1,"client_id":"c"}"#),
            Err(PayloadError::Missing {
                field: "restaurant_id",
                ..
            })
        ));
        assert!(matches!(
            Change::parse(r#"{"op":"D","id":"1"}"#),
            Err(PayloadError::Json(_))
        ));
    }
}
