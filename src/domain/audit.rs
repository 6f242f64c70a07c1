//! The audit trail's entries: who did what to which thing, and when.

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    /// Unix milliseconds.
    pub at: i64,
    /// The user (`anonymous` on an open server).
    pub actor: String,
    /// What was done: `schedule`, `cancel`, `enable`, `disable`, `update`, `delete`.
    pub action: String,
    /// What it was done to, e.g. `agent 4f1c… (build-7)` or `build 12 (web/3/test/1/unit)`.
    pub target: String,
}
