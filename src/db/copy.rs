//! `ferrocd db copy`: moves an embedded (SQLite) installation's data into PostgreSQL.
//!
//! Why: an installation that starts on the embedded database and outgrows it (several nodes,
//! a managed database) must not lose its agents, their tokens, its build history and its
//! consoles on the way; GoCD ships a database migrator for the same move. The copy fills an
//! empty PostgreSQL database, after which `ferrocd serve --database-url postgres://…` shows
//! everything the embedded one had.
//!
//! How:
//! 1. Both databases are opened with [`Db::connect`], which migrates each to the newest schema
//!    this binary knows, and closed again; the copy then refuses unless both are at the same
//!    schema version, and (inside its transaction) unless every PostgreSQL table is empty.
//! 2. It knows no table by name. The tables are SQLite's own list (`sqlite_master`, less
//!    `_sqlx_migrations` and SQLite's internal `sqlite_%` tables), copied so that a table
//!    comes after every table its foreign keys reference (`PRAGMA foreign_key_list`, sorted
//!    topologically). The columns and their types are PostgreSQL's
//!    (`information_schema.columns`): each SQLite value is converted to the column's type
//!    (`bigint`, `boolean` from 0/1, `jsonb` from JSON text, `bytea`, `text`), a NULL stays
//!    NULL, and a value that does not fit is an error naming the table, the column and the
//!    row. A PostgreSQL column SQLite lacks is an error, except `rowid`: the identity column
//!    that stands in for SQLite's implicit rowid receives it (`OVERRIDING SYSTEM VALUE`), so
//!    the order the statements read by it is kept. A SQLite column PostgreSQL lacks is an
//!    error too, as its data would be lost. So a table a later migration adds (to both
//!    folders, as every migration after 15 is) is copied without a change here.
//! 3. SQLite is read in pages (by rowid, in one read transaction: one snapshot), sized to about
//!    [`PAGE_BYTES`] so a console of large chunks is never held whole, and each page is one
//!    `INSERT … SELECT * FROM UNNEST($1, $2, …)` with one array per column.
//! 4. Everything is written in one PostgreSQL transaction, which also takes the servers'
//!    write lock: a server already running on the target waits for it, and a failure leaves
//!    the target as empty as it was. Before it commits, every identity (and serial) column's
//!    sequence is set past the largest value copied (and past SQLite's AUTOINCREMENT mark,
//!    which remembers ids of rows since deleted), so new rows do not collide.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;

use sqlx::postgres::PgConnectOptions;
use sqlx::sqlite::{SqliteConnectOptions, SqliteRow};
use sqlx::types::Json;
use sqlx::{AssertSqlSafe, Connection, PgConnection, Row, SqliteConnection, TypeInfo, ValueRef};

use super::{Db, WRITE_LOCK, redact_password};
use crate::error::{Error, Result};

/// About this many bytes of SQLite rows are read, and inserted, at once.
pub const PAGE_BYTES: usize = 8 * 1024 * 1024;
/// At most this many rows at once (a page of small rows).
const PAGE_ROWS: usize = 2000;
/// The first page of a table, before its rows' size is known.
const FIRST_PAGE_ROWS: usize = 64;

/// One table copied.
#[derive(Debug, Clone)]
pub struct Copied {
    pub table: String,
    pub rows: u64,
}

/// What a copy did.
#[derive(Debug, Clone)]
pub struct Summary {
    /// In the order copied.
    pub tables: Vec<Copied>,
    pub schema_version: i64,
    /// The target, its password left out.
    pub to: String,
}

impl Summary {
    pub fn rows(&self) -> u64 {
        self.tables.iter().map(|t| t.rows).sum()
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "copied {} rows in {} tables into {} (schema version {})",
            self.rows(),
            self.tables.len(),
            self.to,
            self.schema_version
        )
    }
}

/// Copies every row of the SQLite database at `from` (`sqlite://PATH`) into the empty
/// PostgreSQL database at `to`, both migrated first; `copied` hears of each table once it is
/// written (uncommitted until this returns `Ok`).
pub async fn copy(from: &str, to: &str, mut copied: impl FnMut(&Copied)) -> Result<Summary> {
    let shown_to = redact_password(to);
    if !from.starts_with("sqlite:") {
        return Err(refuse(format!(
            "--from: expected the embedded database's sqlite:// URL, got {:?}",
            redact_password(from)
        )));
    }
    if !(to.starts_with("postgres:") || to.starts_with("postgresql:")) {
        return Err(refuse(format!(
            "--to: expected a postgres:// URL, got {shown_to:?}"
        )));
    }
    let sqlite_options =
        SqliteConnectOptions::from_str(from).map_err(|e| refuse(format!("--from {from}: {e}")))?;
    // Db::connect would create a missing file: an empty copy of nothing.
    let path = sqlite_options.get_filename();
    if !path.is_file() {
        return Err(refuse(format!(
            "--from {from}: no database at {}",
            path.display()
        )));
    }
    let pg_options =
        PgConnectOptions::from_str(to).map_err(|e| refuse(format!("--to {shown_to}: {e}")))?;
    // Connected first, so a database that cannot be reached says why.
    let mut pg = PgConnection::connect_with(&pg_options)
        .await
        .map_err(|e| refuse(format!("--to {shown_to}: {e}")))?;

    migrate(from, "--from").await?;
    migrate(to, "--to").await?;

    let mut sqlite = SqliteConnection::connect_with(&sqlite_options.read_only(true))
        .await
        .map_err(|e| refuse(format!("--from {from}: {e}")))?;

    const NEWEST: &str = "SELECT MAX(version) FROM _sqlx_migrations WHERE success";
    let from_version: Option<i64> = sqlx::query_scalar(NEWEST).fetch_one(&mut sqlite).await?;
    let to_version: Option<i64> = sqlx::query_scalar(NEWEST).fetch_one(&mut pg).await?;
    let schema_version = from_version.unwrap_or(0);
    if from_version != to_version {
        return Err(refuse(format!(
            "the schema versions differ: {from} is at {}, {shown_to} at {}; both must be \
             migrated by the same ferrocd",
            schema_version,
            to_version.unwrap_or(0)
        )));
    }

    // One snapshot of SQLite for every table.
    let mut source = sqlite.begin().await?;
    let mut target = pg.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(WRITE_LOCK)
        .execute(&mut *target)
        .await?;

    let target_tables = target_tables(&mut target).await?;
    let mut not_empty = Vec::new();
    for table in &target_tables {
        let sql = format!("SELECT EXISTS (SELECT 1 FROM {})", quote(table));
        let any: bool = sqlx::query_scalar(AssertSqlSafe(sql))
            .fetch_one(&mut *target)
            .await?;
        if any {
            not_empty.push(table.as_str());
        }
    }
    if !not_empty.is_empty() {
        return Err(Error::Conflict(format!(
            "{shown_to} is not empty (rows in {}): ferrocd db copy fills an empty database \
             only, so nothing is overwritten or mixed; give it a new database",
            not_empty.join(", ")
        )));
    }

    let source_tables = source_tables(&mut source).await?;
    if let Some(missing) = source_tables.keys().find(|t| !target_tables.contains(*t)) {
        return Err(refuse(format!(
            "table {missing} is in {from} but not in {shown_to}: the schemas differ"
        )));
    }
    let order = foreign_key_order(&source_tables)?;

    let mut summary = Summary {
        tables: Vec::new(),
        schema_version,
        to: shown_to,
    };
    let mut sequences = Vec::new();
    for table in order {
        let plan = plan(&mut source, &mut target, table, &source_tables[table]).await?;
        let rows = copy_table(&mut source, &mut target, &plan).await?;
        sequences.extend(plan.sequences);
        let done = Copied {
            table: table.clone(),
            rows,
        };
        copied(&done);
        summary.tables.push(done);
    }
    for sequence in &sequences {
        reset(&mut target, sequence).await?;
    }
    target.commit().await?;
    // Only read: ending it cannot undo the copy, so an error here is no failure.
    source.rollback().await.ok();
    Ok(summary)
}

fn refuse(message: String) -> Error {
    Error::Unprocessable(message)
}

/// Opens `url` as the server does, which brings it to the newest schema, and closes it.
async fn migrate(url: &str, flag: &str) -> Result<()> {
    let (_hub, publisher) = crate::events::hub();
    let db = Db::connect(url, publisher)
        .await
        .map_err(|e| refuse(format!("{flag} {}: {e}", redact_password(url))))?;
    db.close().await;
    Ok(())
}

/// `name` as a quoted SQL identifier (both engines quote alike).
fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A SQLite table: its columns and the tables its foreign keys reference.
struct SourceTable {
    columns: Vec<String>,
    references: BTreeSet<String>,
    /// The one `INTEGER PRIMARY KEY` column, SQLite's rowid under its own name.
    rowid_alias: Option<String>,
    /// A `WITHOUT ROWID` table, read in pages by its primary key.
    primary_key: Option<Vec<String>>,
}

async fn source_tables(source: &mut SqliteConnection) -> Result<BTreeMap<String, SourceTable>> {
    let names: Vec<String> = sqlx::query_scalar(
        "SELECT name FROM sqlite_master WHERE type = 'table' \
         AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' AND name <> '_sqlx_migrations' ORDER BY name",
    )
    .fetch_all(&mut *source)
    .await?;
    let mut tables = BTreeMap::new();
    for name in names {
        // name, declared type, primary key position (0: not in it)
        let columns: Vec<(String, String, i64)> =
            sqlx::query_as("SELECT name, UPPER(type), pk FROM pragma_table_info($1) ORDER BY cid")
                .bind(&name)
                .fetch_all(&mut *source)
                .await?;
        let references: BTreeSet<String> = sqlx::query_scalar::<_, String>(
            "SELECT DISTINCT \"table\" FROM pragma_foreign_key_list($1)",
        )
        .bind(&name)
        .fetch_all(&mut *source)
        .await?
        .into_iter()
        .filter(|referenced| *referenced != name)
        .collect();
        let without_rowid: bool = sqlx::query_scalar(
            "SELECT COALESCE(MAX(wr), 0) <> 0 FROM pragma_table_list WHERE schema = 'main' \
             AND name = $1",
        )
        .bind(&name)
        .fetch_one(&mut *source)
        .await?;
        let mut key: Vec<&(String, String, i64)> = columns.iter().filter(|c| c.2 > 0).collect();
        key.sort_by_key(|c| c.2);
        let rowid_alias = match key.as_slice() {
            [(column, declared, _)] if !without_rowid && declared == "INTEGER" => {
                Some(column.clone())
            }
            _ => None,
        };
        let primary_key =
            without_rowid.then(|| key.iter().map(|(column, _, _)| column.clone()).collect());
        tables.insert(
            name,
            SourceTable {
                columns: columns.into_iter().map(|c| c.0).collect(),
                references,
                rowid_alias,
                primary_key,
            },
        );
    }
    Ok(tables)
}

async fn target_tables(target: &mut PgConnection) -> Result<BTreeSet<String>> {
    let names: Vec<String> = sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.tables \
         WHERE table_schema = current_schema() AND table_type = 'BASE TABLE' \
         AND table_name <> '_sqlx_migrations'",
    )
    .fetch_all(&mut *target)
    .await?;
    Ok(names.into_iter().collect())
}

/// The tables in an order where each comes after those it references; among the tables
/// ready at once, by name.
fn foreign_key_order(tables: &BTreeMap<String, SourceTable>) -> Result<Vec<&String>> {
    let mut waiting: BTreeMap<&String, BTreeSet<&String>> = tables
        .iter()
        .map(|(name, table)| {
            let on = table
                .references
                .iter()
                .filter_map(|r| tables.get_key_value(r).map(|(k, _)| k))
                .collect();
            (name, on)
        })
        .collect();
    let mut order = Vec::with_capacity(tables.len());
    while !waiting.is_empty() {
        let Some(ready) = waiting
            .iter()
            .find(|(_, on)| on.is_empty())
            .map(|(name, _)| *name)
        else {
            let cycle: Vec<&str> = waiting.keys().map(|t| t.as_str()).collect();
            return Err(refuse(format!(
                "the foreign keys of these tables form a cycle, so none can be copied first: {}",
                cycle.join(", ")
            )));
        };
        waiting.remove(ready);
        for on in waiting.values_mut() {
            on.remove(ready);
        }
        order.push(ready);
    }
    Ok(order)
}

/// A PostgreSQL column's type, as far as the copy converts to it.
#[derive(Clone, Copy, Debug)]
enum Kind {
    BigInt,
    Boolean,
    Jsonb,
    Bytea,
    Text,
}

impl Kind {
    fn of(data_type: &str) -> Option<Kind> {
        Some(match data_type {
            "bigint" => Kind::BigInt,
            "boolean" => Kind::Boolean,
            "jsonb" => Kind::Jsonb,
            "bytea" => Kind::Bytea,
            "text" => Kind::Text,
            _ => return None,
        })
    }

    fn array(self) -> &'static str {
        match self {
            Kind::BigInt => "bigint[]",
            Kind::Boolean => "boolean[]",
            Kind::Jsonb => "jsonb[]",
            Kind::Bytea => "bytea[]",
            Kind::Text => "text[]",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Kind::BigInt => "bigint",
            Kind::Boolean => "boolean",
            Kind::Jsonb => "jsonb",
            Kind::Bytea => "bytea",
            Kind::Text => "text",
        }
    }
}

/// One column written: its type and where in the SQLite select its value is.
struct Column {
    name: String,
    kind: Kind,
    /// In the page's row: 0 is SQLite's rowid.
    index: usize,
}

/// A sequence to set past the values copied.
struct Sequence {
    table: String,
    column: String,
    /// SQLite's AUTOINCREMENT mark for this column, when it has one.
    floor: Option<i64>,
}

/// How one table is copied.
struct Plan {
    table: String,
    columns: Vec<Column>,
    /// `SELECT rowid, …` of a page (`$1`: after this rowid, or the offset; `$2`: the limit).
    select: String,
    /// Paging by offset (a WITHOUT ROWID table), not by rowid.
    by_offset: bool,
    insert: String,
    sequences: Vec<Sequence>,
}

async fn plan(
    source: &mut SqliteConnection,
    target: &mut PgConnection,
    table: &str,
    sqlite: &SourceTable,
) -> Result<Plan> {
    // name, data_type, identity or serial
    let target_columns: Vec<(String, String, bool)> = sqlx::query_as(
        "SELECT column_name::text, data_type::text, \
                (is_identity = 'YES' OR COALESCE(column_default::text, '') LIKE 'nextval(%') \
         FROM information_schema.columns \
         WHERE table_schema = current_schema() AND table_name = $1 AND is_generated = 'NEVER' \
         ORDER BY ordinal_position",
    )
    .bind(table)
    .fetch_all(&mut *target)
    .await?;
    if let Some(lost) = sqlite
        .columns
        .iter()
        .find(|c| !target_columns.iter().any(|(name, _, _)| name == *c))
    {
        return Err(refuse(format!(
            "{table}.{lost} is a column in SQLite but not in PostgreSQL: its data would be lost"
        )));
    }
    // Only an INTEGER PRIMARY KEY can be AUTOINCREMENT.
    let autoincrement: Option<i64> = if sqlite.rowid_alias.is_some() {
        let has_sequences: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE name = 'sqlite_sequence')",
        )
        .fetch_one(&mut *source)
        .await?;
        if has_sequences {
            sqlx::query_scalar("SELECT seq FROM sqlite_sequence WHERE name = $1")
                .bind(table)
                .fetch_optional(&mut *source)
                .await?
        } else {
            None
        }
    } else {
        None
    };

    let mut selected = vec![if sqlite.primary_key.is_some() {
        "NULL".to_string()
    } else {
        "rowid".to_string()
    }];
    let mut columns = Vec::new();
    let mut identity = false;
    let mut sequences = Vec::new();
    for (name, data_type, is_identity) in target_columns {
        let kind = Kind::of(&data_type).ok_or_else(|| {
            refuse(format!(
                "{table}.{name}: the copy does not convert to PostgreSQL's {data_type} \
                 (it knows bigint, boolean, jsonb, bytea and text)"
            ))
        })?;
        let is_rowid = if sqlite.columns.contains(&name) {
            selected.push(quote(&name));
            columns.push(Column {
                name: name.clone(),
                kind,
                index: selected.len() - 1,
            });
            sqlite.rowid_alias.as_ref() == Some(&name)
        } else if name == "rowid" && is_identity && sqlite.primary_key.is_none() {
            // SQLite's implicit rowid, which PostgreSQL keeps as an identity column.
            columns.push(Column {
                name: name.clone(),
                kind,
                index: 0,
            });
            true
        } else {
            return Err(refuse(format!(
                "{table}.{name} is a column in PostgreSQL but not in SQLite: the schemas differ"
            )));
        };
        if is_identity {
            identity = true;
            sequences.push(Sequence {
                table: table.to_string(),
                column: name,
                floor: if is_rowid { autoincrement } else { None },
            });
        }
    }

    let (select, by_offset) = match &sqlite.primary_key {
        None => (
            format!(
                "SELECT {} FROM {} WHERE rowid > $1 ORDER BY rowid LIMIT $2",
                selected.join(", "),
                quote(table)
            ),
            false,
        ),
        Some(key) => (
            format!(
                "SELECT {} FROM {} ORDER BY {} LIMIT $2 OFFSET $1",
                selected.join(", "),
                quote(table),
                key.iter().map(|c| quote(c)).collect::<Vec<_>>().join(", ")
            ),
            true,
        ),
    };
    let insert = format!(
        "INSERT INTO {} ({}){} SELECT * FROM UNNEST({})",
        quote(table),
        columns
            .iter()
            .map(|c| quote(&c.name))
            .collect::<Vec<_>>()
            .join(", "),
        if identity {
            " OVERRIDING SYSTEM VALUE"
        } else {
            ""
        },
        columns
            .iter()
            .enumerate()
            .map(|(i, c)| format!("${}::{}", i + 1, c.kind.array()))
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(Plan {
        table: table.to_string(),
        columns,
        select,
        by_offset,
        insert,
        sequences,
    })
}

/// One column's values of a page, as PostgreSQL's array of its type.
enum Values {
    BigInt(Vec<Option<i64>>),
    Boolean(Vec<Option<bool>>),
    Jsonb(Vec<Option<Json<serde_json::Value>>>),
    Bytea(Vec<Option<Vec<u8>>>),
    Text(Vec<Option<String>>),
}

impl Values {
    fn new(kind: Kind, rows: usize) -> Values {
        match kind {
            Kind::BigInt => Values::BigInt(Vec::with_capacity(rows)),
            Kind::Boolean => Values::Boolean(Vec::with_capacity(rows)),
            Kind::Jsonb => Values::Jsonb(Vec::with_capacity(rows)),
            Kind::Bytea => Values::Bytea(Vec::with_capacity(rows)),
            Kind::Text => Values::Text(Vec::with_capacity(rows)),
        }
    }
}

/// Copies every row of one table; answers how many.
async fn copy_table(
    source: &mut SqliteConnection,
    target: &mut PgConnection,
    plan: &Plan,
) -> Result<u64> {
    let mut copied: u64 = 0;
    let mut after: i64 = if plan.by_offset { 0 } else { i64::MIN };
    let mut limit = FIRST_PAGE_ROWS;
    loop {
        let page: Vec<SqliteRow> = sqlx::query(AssertSqlSafe(plan.select.as_str()))
            .bind(after)
            .bind(limit as i64)
            .fetch_all(&mut *source)
            .await
            .map_err(|e| refuse(format!("{}: reading SQLite: {e}", plan.table)))?;
        let Some(last) = page.last() else {
            break;
        };
        let first_row = if plan.by_offset {
            after
        } else {
            page[0].try_get::<i64, _>(0)?
        };
        let next = if plan.by_offset {
            after + page.len() as i64
        } else {
            last.try_get::<i64, _>(0)?
        };
        let mut bytes = 0;
        let mut arrays = Vec::with_capacity(plan.columns.len());
        for column in &plan.columns {
            let mut values = Values::new(column.kind, page.len());
            for (n, row) in page.iter().enumerate() {
                bytes += convert(row, column, &mut values).map_err(|problem| {
                    let at = if plan.by_offset {
                        format!("row {}", after + n as i64 + 1)
                    } else {
                        format!("rowid {}", row.try_get::<i64, _>(0).unwrap_or_default())
                    };
                    refuse(format!("{}.{} ({at}): {problem}", plan.table, column.name))
                })?;
            }
            arrays.push(values);
        }
        let mut insert = sqlx::query(AssertSqlSafe(plan.insert.as_str()));
        for values in arrays {
            insert = match values {
                Values::BigInt(v) => insert.bind(v),
                Values::Boolean(v) => insert.bind(v),
                Values::Jsonb(v) => insert.bind(v),
                Values::Bytea(v) => insert.bind(v),
                Values::Text(v) => insert.bind(v),
            };
        }
        let rows = page.len();
        insert.execute(&mut *target).await.map_err(|e| {
            let which = if plan.by_offset {
                format!("rows {}–{}", first_row + 1, next)
            } else {
                format!("rowids {first_row}–{next}")
            };
            refuse(format!(
                "{}: writing {which} to PostgreSQL: {e}",
                plan.table
            ))
        })?;
        copied += rows as u64;
        if rows < limit {
            break;
        }
        after = next;
        // The next page about PAGE_BYTES, at the size these rows had.
        limit = (PAGE_BYTES.saturating_mul(rows) / bytes.max(1)).clamp(1, PAGE_ROWS);
    }
    Ok(copied)
}

/// Appends `row`'s value for `column` to `values`, converted; answers about how many bytes it
/// holds, or what is wrong with it.
fn convert(row: &SqliteRow, column: &Column, values: &mut Values) -> Result<usize, String> {
    let raw = row.try_get_raw(column.index).map_err(|e| e.to_string())?;
    if raw.is_null() {
        match values {
            Values::BigInt(v) => v.push(None),
            Values::Boolean(v) => v.push(None),
            Values::Jsonb(v) => v.push(None),
            Values::Bytea(v) => v.push(None),
            Values::Text(v) => v.push(None),
        }
        return Ok(1);
    }
    let class = raw.type_info().name().to_string();
    drop(raw);
    let wrong = || {
        format!(
            "SQLite holds {class}, which does not convert to PostgreSQL's {}",
            column.kind.name()
        )
    };
    let decode_error = |e: sqlx::Error| format!("SQLite's {class} does not decode: {e}");
    let index = column.index;
    Ok(match values {
        Values::BigInt(v) => {
            if class != "INTEGER" {
                return Err(wrong());
            }
            v.push(Some(row.try_get_unchecked(index).map_err(decode_error)?));
            8
        }
        Values::Boolean(v) => {
            if class != "INTEGER" {
                return Err(wrong());
            }
            let flag: i64 = row.try_get_unchecked(index).map_err(decode_error)?;
            v.push(Some(match flag {
                0 => false,
                1 => true,
                other => return Err(format!("{other} is not a boolean (0 or 1)")),
            }));
            1
        }
        Values::Jsonb(v) => {
            if class != "TEXT" {
                return Err(wrong());
            }
            let text: String = row.try_get_unchecked(index).map_err(decode_error)?;
            let json: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| format!("not JSON: {e}"))?;
            v.push(Some(Json(json)));
            text.len()
        }
        Values::Bytea(v) => {
            // A BLOB column may hold TEXT (a string bound where bytes were meant): its bytes.
            if class != "BLOB" && class != "TEXT" {
                return Err(wrong());
            }
            let bytes: Vec<u8> = row.try_get_unchecked(index).map_err(decode_error)?;
            let len = bytes.len();
            v.push(Some(bytes));
            len
        }
        Values::Text(v) => {
            if class != "TEXT" {
                return Err(wrong());
            }
            let text: String = row.try_get_unchecked(index).map_err(decode_error)?;
            if text.contains('\0') {
                return Err(
                    "the text holds a NUL character, which PostgreSQL's text cannot".into(),
                );
            }
            let len = text.len();
            v.push(Some(text));
            len
        }
    })
}

/// Sets `sequence` past the largest value its column holds now (and past its floor), so the
/// next row inserted without one gets a new value. An empty table's is left as it is.
async fn reset(target: &mut PgConnection, sequence: &Sequence) -> Result<()> {
    let sql = format!(
        "SELECT setval(pg_get_serial_sequence($1, $2), high) \
         FROM (SELECT GREATEST(MAX({column}), $3) AS high FROM {table}) AS m \
         WHERE high IS NOT NULL",
        column = quote(&sequence.column),
        table = quote(&sequence.table)
    );
    sqlx::query(AssertSqlSafe(sql))
        .bind(quote(&sequence.table))
        .bind(&sequence.column)
        .bind(sequence.floor)
        .execute(&mut *target)
        .await
        .map_err(|e| {
            refuse(format!(
                "{}.{}: setting its sequence past the rows copied: {e}",
                sequence.table, sequence.column
            ))
        })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(references: &[&str]) -> SourceTable {
        SourceTable {
            columns: Vec::new(),
            references: references.iter().map(|r| r.to_string()).collect(),
            rowid_alias: None,
            primary_key: None,
        }
    }

    #[test]
    fn a_table_comes_after_the_tables_it_references() {
        let tables: BTreeMap<String, SourceTable> = [
            ("artifacts", table(&["job_runs"])),
            ("job_runs", table(&[])),
            ("agents", table(&[])),
            ("stage_runs", table(&["pipeline_instances"])),
            ("pipeline_instances", table(&[])),
            (
                "test_reports",
                table(&["job_runs", "artifacts", "elsewhere"]),
            ),
        ]
        .into_iter()
        .map(|(name, t)| (name.to_string(), t))
        .collect();
        let order: Vec<&str> = foreign_key_order(&tables)
            .unwrap()
            .into_iter()
            .map(String::as_str)
            .collect();
        assert_eq!(
            order,
            [
                "agents",
                "job_runs",
                "artifacts",
                "pipeline_instances",
                "stage_runs",
                "test_reports"
            ]
        );
    }

    #[test]
    fn tables_referencing_each_other_are_refused_by_name() {
        let tables: BTreeMap<String, SourceTable> = [
            ("a", table(&["b"])),
            ("b", table(&["a"])),
            ("c", table(&[])),
        ]
        .into_iter()
        .map(|(name, t)| (name.to_string(), t))
        .collect();
        let error = foreign_key_order(&tables).expect_err("a cycle").to_string();
        assert!(error.contains("cycle") && error.contains("a, b"), "{error}");
    }

    /// Converts the one value `sql` selects to `kind`.
    async fn converted(sql: &'static str, kind: Kind) -> Result<(Values, usize), String> {
        let mut c = SqliteConnection::connect("sqlite::memory:").await.unwrap();
        let row = sqlx::query(sql).fetch_one(&mut c).await.unwrap();
        let column = Column {
            name: "c".into(),
            kind,
            index: 0,
        };
        let mut values = Values::new(kind, 1);
        let bytes = convert(&row, &column, &mut values)?;
        Ok((values, bytes))
    }

    #[tokio::test]
    async fn each_sqlite_value_becomes_its_postgres_column_s_type() {
        let Ok((Values::BigInt(v), _)) = converted("SELECT 42", Kind::BigInt).await else {
            panic!("bigint")
        };
        assert_eq!(v, [Some(42)]);
        let Ok((Values::Boolean(v), _)) = converted("SELECT 1", Kind::Boolean).await else {
            panic!("boolean")
        };
        assert_eq!(v, [Some(true)]);
        let Ok((Values::Jsonb(v), _)) = converted(r#"SELECT '{"a": [1, "x"]}'"#, Kind::Jsonb).await
        else {
            panic!("jsonb")
        };
        assert_eq!(v[0].as_ref().unwrap().0, serde_json::json!({"a": [1, "x"]}));
        let Ok((Values::Bytea(v), 3)) = converted("SELECT X'FF00C3'", Kind::Bytea).await else {
            panic!("bytea")
        };
        assert_eq!(v, [Some(vec![0xff, 0x00, 0xc3])]);
        let Ok((Values::Text(v), _)) = converted("SELECT 'Zoë'", Kind::Text).await else {
            panic!("text")
        };
        assert_eq!(v, [Some("Zoë".to_string())]);
        for kind in [
            Kind::BigInt,
            Kind::Boolean,
            Kind::Jsonb,
            Kind::Bytea,
            Kind::Text,
        ] {
            let Ok((values, _)) = converted("SELECT NULL", kind).await else {
                panic!("NULL as {kind:?}")
            };
            let null = match values {
                Values::BigInt(v) => v == [None],
                Values::Boolean(v) => v == [None],
                Values::Jsonb(v) => v.len() == 1 && v[0].is_none(),
                Values::Bytea(v) => v == [None],
                Values::Text(v) => v == [None],
            };
            assert!(null, "NULL stays NULL as {kind:?}");
        }
    }

    #[tokio::test]
    async fn a_value_that_does_not_fit_its_column_says_why() {
        for (sql, kind, expected) in [
            ("SELECT 2", Kind::Boolean, "2 is not a boolean"),
            ("SELECT '{bad'", Kind::Jsonb, "not JSON"),
            ("SELECT 'x'", Kind::BigInt, "SQLite holds TEXT"),
            ("SELECT 1.5", Kind::BigInt, "SQLite holds REAL"),
            ("SELECT 7", Kind::Text, "SQLite holds INTEGER"),
            ("SELECT 'a' || char(0) || 'b'", Kind::Text, "NUL"),
        ] {
            let Err(problem) = converted(sql, kind).await else {
                panic!("{sql} as {kind:?} converted")
            };
            assert!(problem.contains(expected), "{sql}: {problem}");
        }
    }
}
