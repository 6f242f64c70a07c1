//! Where SQLite and PostgreSQL spell the same thing differently: each store's `sql.rs` is
//! compiled once per backend, and takes these fragments from the backend module it is compiled
//! in (`use super::dialect`), so one statement text serves both engines.
//!
//! Everything else the statements use reads alike on both: `$1…` binds, `ON CONFLICT`,
//! `RETURNING`, `COALESCE`, `CAST(… AS BIGINT)`, and a `rowid` column (SQLite's own; an
//! identity column in the PostgreSQL schema).

pub mod sqlite {
    /// The larger of several values (`GREATEST` on PostgreSQL).
    pub const GREATEST: &str = "MAX";

    /// Statements joined by `;` can be sent as one query, in one round trip, sharing its
    /// binds (sqlx's SQLite driver runs them in turn on the connection's worker thread);
    /// PostgreSQL takes one statement per query with binds.
    pub const STATEMENTS_IN_ONE_QUERY: bool = true;

    /// The integers of the JSON array bound at `param`, as a sub-select.
    pub fn json_ints(param: &str) -> String {
        format!("SELECT value FROM json_each({param})")
    }

    /// The `[name, counter]` pairs of the JSON array bound at `param`, as a table of `name`
    /// and `counter` to join with.
    pub fn json_pairs(param: &str) -> String {
        format!(
            "(SELECT json_extract(value, '$[0]') AS name, json_extract(value, '$[1]') AS counter \
             FROM json_each({param}))"
        )
    }

    /// The length of the array under `key` in the JSON object `column`.
    pub fn json_array_length(column: &str, key: &str) -> String {
        format!("json_array_length({column}, '$.{key}')")
    }

    /// A sub-select: the JSON array of `[values]` arrays, one per row of `from` (a table and
    /// its `WHERE`), in `order`; `[]` for none.
    pub fn json_agg_ordered(values: &str, from: &str, order: &str) -> String {
        format!("(SELECT json_group_array(json_array({values}) ORDER BY {order}) FROM {from})")
    }
}

pub mod postgres {
    pub const GREATEST: &str = "GREATEST";

    pub const STATEMENTS_IN_ONE_QUERY: bool = false;

    pub fn json_ints(param: &str) -> String {
        format!("SELECT CAST(value AS BIGINT) FROM jsonb_array_elements_text({param}) AS t(value)")
    }

    pub fn json_pairs(param: &str) -> String {
        format!(
            "(SELECT value->>0 AS name, CAST(value->>1 AS BIGINT) AS counter \
             FROM jsonb_array_elements({param}) AS t(value))"
        )
    }

    pub fn json_array_length(column: &str, key: &str) -> String {
        format!("CAST(jsonb_array_length({column}->'{key}') AS BIGINT)")
    }

    pub fn json_agg_ordered(values: &str, from: &str, order: &str) -> String {
        format!(
            "(SELECT COALESCE(jsonb_agg(jsonb_build_array({values}) ORDER BY {order}), '[]'::jsonb) \
             FROM {from})"
        )
    }
}
