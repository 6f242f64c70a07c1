//! The agents store's statements, the same on SQLite and PostgreSQL (`sqlite.rs`, `postgres.rs`
//! compile this file once each): every statement that touches `agents`.
//!
//! Binds are `$1, $2, …` in the order they first appear (SQLite numbers named parameters by first
//! appearance), so the statements read the same on PostgreSQL.

use super::{Connection, dialect};
use sqlx::types::Json;
use uuid::Uuid;

use crate::domain::agent::{Agent, AgentState, BuildDetails, BuildState};
use crate::error::{Error, Result};

#[derive(sqlx::FromRow)]
struct AgentRow {
    uuid: String,
    hostname: String,
    ip_address: String,
    sandbox: String,
    operating_system: String,
    free_space: Option<i64>,
    agent_version: String,
    agent_config_state: String,
    agent_state: String,
    resources: Json<Vec<String>>,
    environments: Json<Vec<String>>,
    build_id: Option<i64>,
    build_pipeline: Option<String>,
    build_stage: Option<String>,
    build_job: Option<String>,
    last_changed_by: Option<String>,
}

fn corrupt(what: String) -> Error {
    Error::Database(sqlx::Error::Decode(what.into()))
}

impl TryFrom<AgentRow> for Agent {
    type Error = Error;
    fn try_from(row: AgentRow) -> Result<Agent> {
        let agent_state: AgentState = row.agent_state.parse().map_err(corrupt)?;
        Ok(Agent {
            uuid: row
                .uuid
                .parse()
                .map_err(|e: uuid::Error| corrupt(e.to_string()))?,
            hostname: row.hostname,
            ip_address: row.ip_address,
            sandbox: row.sandbox,
            operating_system: row.operating_system,
            free_space: row.free_space,
            agent_config_state: row.agent_config_state.parse().map_err(corrupt)?,
            build_state: BuildState::of(agent_state),
            agent_state,
            agent_version: row.agent_version,
            resources: row.resources.0,
            environments: row.environments.0,
            build_details: match (
                row.build_id,
                row.build_pipeline,
                row.build_stage,
                row.build_job,
            ) {
                (Some(build_id), Some(pipeline_name), Some(stage_name), Some(job_name)) => {
                    Some(BuildDetails {
                        pipeline_name,
                        stage_name,
                        job_name,
                        build_id,
                    })
                }
                _ => None,
            },
            last_changed_by: row.last_changed_by,
        })
    }
}

/// An agent with the run it holds (the newest not Completed), if any.
macro_rules! select_agent {
    () => {
        "SELECT a.uuid, a.hostname, a.ip_address, a.sandbox, \
         a.operating_system, a.free_space, a.agent_version, a.agent_config_state, a.agent_state, \
         a.resources, a.environments, r.build_id AS build_id, r.pipeline_name AS build_pipeline, \
         r.stage_name AS build_stage, r.job_name AS build_job, a.last_changed_by"
    };
}
macro_rules! from_agents {
    () => {
        "FROM agents a LEFT JOIN job_runs r ON r.build_id = (SELECT MAX(j.build_id) \
         FROM job_runs j WHERE j.agent_uuid = a.uuid AND j.state != 'Completed')"
    };
}
const SELECT_AGENT: &str = concat!(select_agent!(), " ", from_agents!());

pub async fn fetch(conn: &mut Connection, uuid: Uuid) -> Result<Option<Agent>> {
    let row: Option<AgentRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "{SELECT_AGENT} WHERE a.uuid = $1"
    )))
    .bind(uuid.to_string())
    .fetch_optional(conn)
    .await?;
    row.map(Agent::try_from).transpose()
}

pub async fn list(conn: &mut Connection) -> Result<Vec<Agent>> {
    let rows: Vec<AgentRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "{SELECT_AGENT} ORDER BY a.hostname, a.uuid"
    )))
    .fetch_all(conn)
    .await?;
    rows.into_iter().map(Agent::try_from).collect()
}

pub async fn find_many(conn: &mut Connection, uuids: &[Uuid]) -> Result<Vec<Agent>> {
    // Well under SQLite's limit of bound parameters per statement.
    const CHUNK: usize = 500;
    let mut found = Vec::with_capacity(uuids.len());
    for chunk in uuids.chunks(CHUNK) {
        let marks: Vec<String> = (1..=chunk.len()).map(|i| format!("${i}")).collect();
        let sql = format!("{SELECT_AGENT} WHERE a.uuid IN ({})", marks.join(", "));
        let mut query = sqlx::query_as::<_, AgentRow>(sqlx::AssertSqlSafe(sql));
        for uuid in chunk {
            query = query.bind(uuid.to_string());
        }
        for row in query.fetch_all(&mut *conn).await? {
            found.push(Agent::try_from(row)?);
        }
    }
    Ok(found)
}

pub async fn save(conn: &mut Connection, agent: &Agent) -> Result<()> {
    sqlx::query(
        "UPDATE agents SET hostname = $1, ip_address = $2, sandbox = $3, operating_system = $4, \
         free_space = $5, agent_version = $6, agent_config_state = $7, agent_state = $8, \
         resources = $9, environments = $10, last_changed_by = $11 WHERE uuid = $12",
    )
    .bind(&agent.hostname)
    .bind(&agent.ip_address)
    .bind(&agent.sandbox)
    .bind(&agent.operating_system)
    .bind(agent.free_space)
    .bind(&agent.agent_version)
    .bind(agent.agent_config_state.as_str())
    .bind(agent.agent_state.as_str())
    .bind(Json(&agent.resources))
    .bind(Json(&agent.environments))
    .bind(&agent.last_changed_by)
    .bind(agent.uuid.to_string())
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn insert(
    conn: &mut Connection,
    agent: &Agent,
    token_hash: &str,
    now: i64,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO agents (uuid, hostname, ip_address, sandbox, operating_system, \
         free_space, agent_version, agent_config_state, agent_state, resources, \
         environments, token_hash, registered_at, last_contact_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $13)",
    )
    .bind(agent.uuid.to_string())
    .bind(&agent.hostname)
    .bind(&agent.ip_address)
    .bind(&agent.sandbox)
    .bind(&agent.operating_system)
    .bind(agent.free_space)
    .bind(&agent.agent_version)
    .bind(agent.agent_config_state.as_str())
    .bind(agent.agent_state.as_str())
    .bind(Json(&agent.resources))
    .bind(Json(&agent.environments))
    .bind(token_hash)
    .bind(now)
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn delete(conn: &mut Connection, uuid: Uuid, now: i64) -> Result<()> {
    sqlx::query("DELETE FROM agents WHERE uuid = $1")
        .bind(uuid.to_string())
        .execute(&mut *conn)
        .await?;
    sqlx::query(
        "INSERT INTO deleted_agents (uuid, deleted_at) VALUES ($1, $2) \
         ON CONFLICT (uuid) DO UPDATE SET deleted_at = excluded.deleted_at",
    )
    .bind(uuid.to_string())
    .bind(now)
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn was_deleted(conn: &mut Connection, uuid: Uuid) -> Result<bool> {
    let found: Option<String> =
        sqlx::query_scalar("SELECT uuid FROM deleted_agents WHERE uuid = $1")
            .bind(uuid.to_string())
            .fetch_optional(conn)
            .await?;
    Ok(found.is_some())
}

pub async fn count_pending(conn: &mut Connection) -> Result<i64> {
    Ok(
        sqlx::query_scalar("SELECT COUNT(*) FROM agents WHERE agent_config_state = 'Pending'")
            .fetch_one(conn)
            .await?,
    )
}

/// The agent a token belongs to, read whole (an agent's call needs it next), and whether it
/// still has a previous token to forget.
pub async fn by_token(conn: &mut Connection, token_hash: &str) -> Result<Option<(Agent, bool)>> {
    #[derive(sqlx::FromRow)]
    struct TokenRow {
        #[sqlx(flatten)]
        agent: AgentRow,
        has_previous: bool,
    }
    let found: Option<TokenRow> = sqlx::query_as(concat!(
        select_agent!(),
        ", a.previous_token_hash IS NOT NULL AS has_previous ",
        from_agents!(),
        " WHERE a.token_hash = $1"
    ))
    .bind(token_hash)
    .fetch_optional(conn)
    .await?;
    found
        .map(|row| Ok((Agent::try_from(row.agent)?, row.has_previous)))
        .transpose()
}

pub async fn forget_previous_token(conn: &mut Connection, uuid: Uuid) -> Result<()> {
    sqlx::query("UPDATE agents SET previous_token_hash = NULL WHERE uuid = $1")
        .bind(uuid.to_string())
        .execute(conn)
        .await?;
    Ok(())
}

pub async fn token_hashes(conn: &mut Connection, uuid: Uuid) -> Result<(String, Option<String>)> {
    Ok(
        sqlx::query_as("SELECT token_hash, previous_token_hash FROM agents WHERE uuid = $1")
            .bind(uuid.to_string())
            .fetch_one(conn)
            .await?,
    )
}

pub async fn replace_token(
    conn: &mut Connection,
    uuid: Uuid,
    new_hash: &str,
    previous_hash: &str,
    now: i64,
) -> Result<()> {
    sqlx::query(
        "UPDATE agents SET token_hash = $1, previous_token_hash = $2, last_contact_at = $3 \
         WHERE uuid = $4",
    )
    .bind(new_hash)
    .bind(previous_hash)
    .bind(now)
    .bind(uuid.to_string())
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn set_state(conn: &mut Connection, uuid: Uuid, state: AgentState) -> Result<()> {
    sqlx::query("UPDATE agents SET agent_state = $1 WHERE uuid = $2")
        .bind(state.as_str())
        .bind(uuid.to_string())
        .execute(conn)
        .await?;
    Ok(())
}

/// Contact only moves forward: the sweep writes contact the ledger heard, which may be older
/// than a status report's or a console upload's written since.
pub async fn touch(conn: &mut Connection, uuid: Uuid, now: i64) -> Result<()> {
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "UPDATE agents SET last_contact_at = {}(last_contact_at, $1) WHERE uuid = $2",
        dialect::GREATEST
    )))
    .bind(now)
    .bind(uuid.to_string())
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn mark_all_missing(conn: &mut Connection) -> Result<()> {
    sqlx::query("UPDATE agents SET agent_state = 'Missing'")
        .execute(conn)
        .await?;
    Ok(())
}

pub async fn mark_lost_contact(conn: &mut Connection, silent_since: i64) -> Result<Vec<Uuid>> {
    let lost: Vec<String> = sqlx::query_scalar(
        "UPDATE agents SET agent_state = 'LostContact' \
         WHERE agent_config_state = 'Enabled' AND agent_state IN ('Idle', 'Building', 'Unknown') \
         AND last_contact_at < $1 RETURNING uuid",
    )
    .bind(silent_since)
    .fetch_all(conn)
    .await?;
    Ok(lost.iter().filter_map(|u| u.parse().ok()).collect())
}
