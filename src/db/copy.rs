//! `ferrocd db copy`: moves an embedded (SQLite) installation's data into PostgreSQL.
