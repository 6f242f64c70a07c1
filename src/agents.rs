//! The agents context: registration, tokens, pings, admin edits, deletion and liveness.
//!
//! Every write goes through one transaction on the writer connection and, once committed,
//! publishes exactly one event per changed agent on `agents:updates` (none when nothing
//! shown changed).

use sha2::{Digest, Sha256};
use sqlx::SqliteConnection;
use sqlx::types::Json;
use uuid::Uuid;

use crate::db::{Db, WriteTx, now_millis};
use crate::domain::agent::{
    Agent, AgentState, BuildDetails, BuildState, ConfigState, ListChange, NameKind,
    admin_config_state, bounded_text, names, required_text,
};
use crate::error::{Error, Result};
use crate::events::{DomainEvent, Topic};

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
}

impl TryFrom<AgentRow> for Agent {
    type Error = Error;
    fn try_from(row: AgentRow) -> Result<Agent> {
        let corrupt = |what: String| Error::Database(sqlx::Error::Decode(what.into()));
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
        })
    }
}

/// An agent with the run it holds (the newest not Completed), if any.
const SELECT_AGENT: &str = "SELECT a.uuid, a.hostname, a.ip_address, a.sandbox, \
     a.operating_system, a.free_space, a.agent_version, a.agent_config_state, a.agent_state, \
     a.resources, a.environments, r.build_id AS build_id, r.pipeline_name AS build_pipeline, \
     r.stage_name AS build_stage, r.job_name AS build_job \
     FROM agents a LEFT JOIN job_runs r ON r.build_id = (SELECT MAX(j.build_id) FROM job_runs j \
     WHERE j.agent_uuid = a.uuid AND j.state != 'Completed')";

pub(crate) async fn fetch(conn: &mut SqliteConnection, uuid: Uuid) -> Result<Option<Agent>> {
    let row: Option<AgentRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "{SELECT_AGENT} WHERE a.uuid = ?"
    )))
    .bind(uuid.to_string())
    .fetch_optional(conn)
    .await?;
    row.map(Agent::try_from).transpose()
}

/// Writes every field an agent can change (not its token or timestamps).
async fn save(conn: &mut SqliteConnection, agent: &Agent) -> Result<()> {
    sqlx::query(
        "UPDATE agents SET hostname = ?, ip_address = ?, sandbox = ?, operating_system = ?, \
         free_space = ?, agent_version = ?, agent_config_state = ?, agent_state = ?, \
         resources = ?, environments = ? WHERE uuid = ?",
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
    .bind(agent.uuid.to_string())
    .execute(conn)
    .await?;
    Ok(())
}

/// What an agent sends when it registers.
#[derive(Debug, Clone, Default)]
pub struct Registration {
    pub uuid: Option<Uuid>,
    pub hostname: String,
    pub ip_address: String,
    pub operating_system: String,
    pub sandbox: String,
    pub free_space: Option<i64>,
    pub resources: Vec<String>,
    pub environments: Vec<String>,
    pub agent_version: String,
}

/// The answer to a registration: the token is shown this once and stored only as a hash.
#[derive(Debug)]
pub struct Registered {
    pub agent: Agent,
    pub token: String,
    pub created: bool,
}

/// What an agent reports every few seconds.
#[derive(Debug, Clone)]
pub struct Ping {
    pub agent_state: AgentState,
    /// The build the agent says it runs.
    pub build_id: Option<i64>,
    pub free_space: Option<i64>,
}

/// An admin's edit of one agent; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct AgentUpdate {
    pub hostname: Option<String>,
    pub resources: Option<Vec<String>>,
    pub environments: Option<Vec<String>>,
    pub config_state: Option<ConfigState>,
}

#[derive(Debug, Clone, Default)]
pub struct BulkUpdate {
    pub uuids: Vec<Uuid>,
    pub resources: ListChange,
    pub environments: ListChange,
    pub config_state: Option<ConfigState>,
}

#[derive(Clone)]
pub struct Agents {
    db: Db,
    registration_key: Option<String>,
}

impl Agents {
    pub fn new(db: Db, registration_key: Option<String>) -> Self {
        Agents {
            db,
            registration_key,
        }
    }

    pub async fn list(&self) -> Result<Vec<Agent>> {
        let rows: Vec<AgentRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "{SELECT_AGENT} ORDER BY a.hostname, a.uuid"
        )))
        .fetch_all(&self.db.read)
        .await?;
        rows.into_iter().map(Agent::try_from).collect()
    }

    /// The agents among `uuids` that exist, in no particular order (one query per few hundred).
    pub async fn find_many(&self, uuids: &[Uuid]) -> Result<Vec<Agent>> {
        // Well under SQLite's limit of bound parameters per statement.
        const CHUNK: usize = 500;
        let mut found = Vec::with_capacity(uuids.len());
        for chunk in uuids.chunks(CHUNK) {
            let marks = vec!["?"; chunk.len()].join(", ");
            let sql = format!("{SELECT_AGENT} WHERE a.uuid IN ({marks})");
            let mut query = sqlx::query_as::<_, AgentRow>(sqlx::AssertSqlSafe(sql));
            for uuid in chunk {
                query = query.bind(uuid.to_string());
            }
            for row in query.fetch_all(&self.db.read).await? {
                found.push(Agent::try_from(row)?);
            }
        }
        Ok(found)
    }

    pub async fn get(&self, uuid: Uuid) -> Result<Agent> {
        let mut conn = self.db.read.acquire().await?;
        fetch(&mut conn, uuid).await?.ok_or_else(|| not_found(uuid))
    }

    /// The agent a bearer token belongs to. The first use of a new token retires the one
    /// it replaced (kept until then for a retried re-registration).
    pub async fn authenticate(&self, token: &str) -> Result<Uuid> {
        let found: Option<(String, bool)> = sqlx::query_as(
            "SELECT uuid, previous_token_hash IS NOT NULL FROM agents WHERE token_hash = ?",
        )
        .bind(hash_token(token))
        .fetch_optional(&self.db.read)
        .await?;
        let (uuid, has_previous) =
            found.ok_or_else(|| Error::Unauthorized("unknown agent token".into()))?;
        if has_previous {
            let mut tx = self.db.begin().await?;
            sqlx::query("UPDATE agents SET previous_token_hash = NULL WHERE uuid = ?")
                .bind(&uuid)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
        }
        uuid.parse()
            .map_err(|_| Error::Unauthorized("unknown agent token".into()))
    }

    /// Registers a new agent or re-registers a known one (which needs its current token).
    /// `key` is the `X-Agent-Registration-Key` the agent presented.
    pub async fn register(
        &self,
        registration: Registration,
        key: Option<&str>,
        token: Option<&str>,
    ) -> Result<Registered> {
        let key_accepted = match (&self.registration_key, key) {
            (Some(expected), Some(given)) if constant_time_eq(expected, given) => true,
            (Some(_), Some(_)) => {
                return Err(Error::Forbidden(
                    "the agent registration key is not valid".into(),
                ));
            }
            _ => false,
        };
        let hostname = required_text("hostname", &registration.hostname)?;
        for (field, value, max) in [
            ("ip_address", &registration.ip_address, 255),
            ("operating_system", &registration.operating_system, 255),
            ("agent_version", &registration.agent_version, 255),
            ("sandbox", &registration.sandbox, 1024),
        ] {
            bounded_text(field, value, max)?;
        }
        let resources = names("resources", &registration.resources, NameKind::Resource)?;
        let environments = names(
            "environments",
            &registration.environments,
            NameKind::Environment,
        )?;
        let new_token = random_token();
        let now = now_millis();

        let mut tx = self.db.begin().await?;
        let existing = match registration.uuid {
            Some(uuid) => fetch(&mut tx, uuid).await?,
            None => None,
        };
        let (before, agent) = if let Some(before) = existing {
            let (current, previous): (String, Option<String>) =
                sqlx::query_as("SELECT token_hash, previous_token_hash FROM agents WHERE uuid = ?")
                    .bind(before.uuid.to_string())
                    .fetch_one(&mut *tx)
                    .await?;
            let presented = token.map(hash_token).unwrap_or_default();
            // The previous token counts too while the new one is unused: the answer that
            // carried the new one may have been lost, and the agent retries with what it has.
            let by_previous = previous
                .as_deref()
                .is_some_and(|p| constant_time_eq(p, &presented));
            if !constant_time_eq(&current, &presented) && !by_previous {
                return Err(Error::Conflict(format!(
                    "agent {} is already registered; re-registering needs its current token",
                    before.uuid
                )));
            }
            // Resources and environments stay as an admin set them.
            let mut agent = before.clone();
            agent.hostname = hostname;
            agent.ip_address = registration.ip_address;
            agent.sandbox = registration.sandbox;
            agent.operating_system = registration.operating_system;
            agent.free_space = registration.free_space;
            agent.agent_version = registration.agent_version;
            agent.agent_state = AgentState::Idle;
            agent.build_state = BuildState::Idle;
            if key_accepted && agent.agent_config_state == ConfigState::Pending {
                agent.agent_config_state = ConfigState::Enabled;
            }
            save(&mut tx, &agent).await?;
            // The token presented stays good for one more re-registration, until the new one
            // is first used.
            sqlx::query(
                "UPDATE agents SET token_hash = ?, previous_token_hash = ?, last_contact_at = ? \
                 WHERE uuid = ?",
            )
            .bind(hash_token(&new_token))
            .bind(&presented)
            .bind(now)
            .bind(agent.uuid.to_string())
            .execute(&mut *tx)
            .await?;
            (Some(before), agent)
        } else {
            let agent = Agent {
                uuid: registration.uuid.unwrap_or_else(Uuid::new_v4),
                hostname,
                ip_address: registration.ip_address,
                sandbox: registration.sandbox,
                operating_system: registration.operating_system,
                free_space: registration.free_space,
                agent_config_state: if key_accepted {
                    ConfigState::Enabled
                } else {
                    ConfigState::Pending
                },
                agent_state: AgentState::Idle,
                build_state: BuildState::Idle,
                agent_version: registration.agent_version,
                resources,
                environments,
                build_details: None,
            };
            sqlx::query(
                "INSERT INTO agents (uuid, hostname, ip_address, sandbox, operating_system, \
                 free_space, agent_version, agent_config_state, agent_state, resources, \
                 environments, token_hash, registered_at, last_contact_at) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
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
            .bind(hash_token(&new_token))
            .bind(now)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            (None, agent)
        };
        publish_change(&mut tx, before.as_ref(), &agent);
        tx.commit().await?;
        let created = before.is_none();
        Ok(Registered {
            agent,
            token: new_token,
            created,
        })
    }

    /// Records contact and the state the agent reports. Publishes only when the state shown
    /// changes (a new free space is stored silently).
    pub async fn ping(&self, uuid: Uuid, ping: Ping) -> Result<Agent> {
        let mut tx = self.db.begin().await?;
        let before = fetch(&mut tx, uuid).await?.ok_or_else(|| not_found(uuid))?;
        let mut agent = before.clone();
        let state = before.after_ping(ping.agent_state, ping.build_id.is_some())?;
        agent.agent_state = state;
        agent.build_state = BuildState::of(state);
        if ping.free_space.is_some() {
            agent.free_space = ping.free_space;
        }
        save(&mut tx, &agent).await?;
        touch(&mut tx, uuid).await?;
        if before.agent_state != agent.agent_state {
            tx.publish(Topic::AgentsUpdates, DomainEvent::AgentUpdated { uuid });
        }
        tx.commit().await?;
        Ok(agent)
    }

    /// An admin's edit of one agent (API `PATCH`, the enable/disable shortcuts, page buttons).
    pub async fn update(&self, uuid: Uuid, update: AgentUpdate) -> Result<Agent> {
        let hostname = update
            .hostname
            .as_deref()
            .map(|h| required_text("hostname", h))
            .transpose()?;
        let resources = update
            .resources
            .as_deref()
            .map(|r| names("resources", r, NameKind::Resource))
            .transpose()?;
        let environments = update
            .environments
            .as_deref()
            .map(|e| names("environments", e, NameKind::Environment))
            .transpose()?;
        let config_state = update.config_state.map(admin_config_state).transpose()?;

        let mut tx = self.db.begin().await?;
        let before = fetch(&mut tx, uuid).await?.ok_or_else(|| not_found(uuid))?;
        let mut agent = before.clone();
        if let Some(hostname) = hostname {
            agent.hostname = hostname;
        }
        if let Some(resources) = resources {
            agent.resources = resources;
        }
        if let Some(environments) = environments {
            agent.environments = environments;
        }
        if let Some(state) = config_state {
            agent.agent_config_state = state;
        }
        if agent != before {
            save(&mut tx, &agent).await?;
            publish_change(&mut tx, Some(&before), &agent);
            tx.commit().await?;
        }
        Ok(agent)
    }

    /// GoCD's bulk update: all or nothing. An unknown uuid changes nothing and is named.
    pub async fn bulk_update(&self, bulk: BulkUpdate) -> Result<Vec<Uuid>> {
        if bulk.uuids.is_empty() {
            return Err(Error::Unprocessable(
                "uuids: name at least one agent".into(),
            ));
        }
        let resources = bulk.resources.checked("resources", NameKind::Resource)?;
        let environments = bulk
            .environments
            .checked("environments", NameKind::Environment)?;
        let config_state = bulk.config_state.map(admin_config_state).transpose()?;

        let mut tx = self.db.begin().await?;
        let mut found = Vec::with_capacity(bulk.uuids.len());
        let mut unknown = Vec::new();
        for &uuid in &bulk.uuids {
            match fetch(&mut tx, uuid).await? {
                Some(agent) => found.push(agent),
                None => unknown.push(uuid.to_string()),
            }
        }
        if !unknown.is_empty() {
            return Err(Error::Unprocessable(format!(
                "uuids: no agent with uuid(s) [{}]; nothing was changed",
                unknown.join(", ")
            )));
        }
        for before in found {
            let mut agent = before.clone();
            resources.apply(&mut agent.resources);
            environments.apply(&mut agent.environments);
            if let Some(state) = config_state {
                agent.agent_config_state = state;
            }
            if agent != before {
                save(&mut tx, &agent).await?;
                publish_change(&mut tx, Some(&before), &agent);
            }
        }
        tx.commit().await?;
        Ok(bulk.uuids)
    }

    /// Deletes Disabled, non-building agents, all or nothing.
    pub async fn delete(&self, uuids: &[Uuid]) -> Result<usize> {
        if uuids.is_empty() {
            return Err(Error::Unprocessable(
                "uuids: name at least one agent".into(),
            ));
        }
        let mut tx = self.db.begin().await?;
        let mut doomed = Vec::with_capacity(uuids.len());
        let mut unknown = Vec::new();
        let mut refused = Vec::new();
        for &uuid in uuids {
            match fetch(&mut tx, uuid).await? {
                None => unknown.push(uuid.to_string()),
                Some(agent) if agent.agent_config_state != ConfigState::Disabled => refused.push(
                    format!("{uuid} is {}, not Disabled", agent.agent_config_state),
                ),
                Some(agent) if agent.is_building() => refused.push(format!("{uuid} is building")),
                Some(agent) => doomed.push(agent),
            }
        }
        if !unknown.is_empty() {
            return Err(Error::Unprocessable(format!(
                "uuids: no agent with uuid(s) [{}]; nothing was deleted",
                unknown.join(", ")
            )));
        }
        if !refused.is_empty() {
            return Err(Error::Unprocessable(format!(
                "only Disabled agents that are not building can be deleted: {}; nothing was deleted",
                refused.join("; ")
            )));
        }
        for agent in &doomed {
            sqlx::query("DELETE FROM agents WHERE uuid = ?")
                .bind(agent.uuid.to_string())
                .execute(&mut *tx)
                .await?;
            let uuid = agent.uuid;
            tx.publish(Topic::AgentsUpdates, DomainEvent::AgentDeleted { uuid });
        }
        tx.commit().await?;
        Ok(doomed.len())
    }

    /// At start every known agent is Missing until it is heard from in this process.
    pub async fn mark_all_missing(&self) -> Result<()> {
        let mut tx = self.db.begin().await?;
        sqlx::query("UPDATE agents SET agent_state = 'Missing'")
            .execute(&mut *tx)
            .await?;
        tx.commit().await
    }

    /// Enabled agents heard from in this process but not since `silent_since` (milliseconds
    /// since the epoch) become LostContact.
    pub async fn mark_lost_contact(&self, silent_since: i64) -> Result<Vec<Uuid>> {
        let mut tx = self.db.begin().await?;
        let lost: Vec<String> = sqlx::query_scalar(
            "UPDATE agents SET agent_state = 'LostContact' \
             WHERE agent_config_state = 'Enabled' AND agent_state IN ('Idle', 'Building', 'Unknown') \
             AND last_contact_at < ? RETURNING uuid",
        )
        .bind(silent_since)
        .fetch_all(&mut *tx)
        .await?;
        let lost: Vec<Uuid> = lost.iter().filter_map(|u| u.parse().ok()).collect();
        for &uuid in &lost {
            tx.publish(Topic::AgentsUpdates, DomainEvent::AgentUpdated { uuid });
        }
        tx.commit().await?;
        Ok(lost)
    }
}

/// One event for one write of an agent, queued on `tx`: enabled/disabled when the config
/// state moved, else updated; none when nothing changed.
pub(crate) fn publish_change(tx: &mut WriteTx, before: Option<&Agent>, after: &Agent) {
    let uuid = after.uuid;
    let event = match before {
        None => DomainEvent::AgentRegistered { uuid },
        Some(before) if before.agent_config_state != after.agent_config_state => {
            match after.agent_config_state {
                ConfigState::Disabled => DomainEvent::AgentDisabled { uuid },
                _ => DomainEvent::AgentEnabled { uuid },
            }
        }
        Some(before) if before != after => DomainEvent::AgentUpdated { uuid },
        Some(_) => return,
    };
    tx.publish(Topic::AgentsUpdates, event);
}

/// Sets an agent's state inside another context's transaction (assignment, completion).
/// Returns the agent before and after, for [`publish_change`]; `None`
/// when nothing shown changed.
pub(crate) async fn set_agent_state(
    conn: &mut SqliteConnection,
    uuid: Uuid,
    state: AgentState,
) -> Result<Option<(Agent, Agent)>> {
    let Some(before) = fetch(conn, uuid).await? else {
        return Ok(None);
    };
    sqlx::query("UPDATE agents SET agent_state = ? WHERE uuid = ?")
        .bind(state.as_str())
        .bind(uuid.to_string())
        .execute(&mut *conn)
        .await?;
    let after = fetch(conn, uuid).await?.ok_or_else(|| not_found(uuid))?;
    Ok((before != after).then_some((before, after)))
}

/// A work request is contact: an agent that was Missing or LostContact is back, Idle.
/// Returns the agent before and after.
pub(crate) async fn record_work_request(
    conn: &mut SqliteConnection,
    uuid: Uuid,
) -> Result<(Agent, Agent)> {
    let before = fetch(conn, uuid).await?.ok_or_else(|| not_found(uuid))?;
    touch(conn, uuid).await?;
    // Asking for work means it is not building anything, unless it holds a run (which the
    // scheduler sorts out).
    if let Some(state) = before.after_work_request() {
        sqlx::query("UPDATE agents SET agent_state = ? WHERE uuid = ?")
            .bind(state.as_str())
            .bind(uuid.to_string())
            .execute(&mut *conn)
            .await?;
    }
    let after = fetch(conn, uuid).await?.ok_or_else(|| not_found(uuid))?;
    Ok((before, after))
}

/// A registration, ping or work request is contact (and so is a build's status report or
/// console upload: an agent busy uploading is plainly alive).
pub(crate) async fn touch(conn: &mut SqliteConnection, uuid: Uuid) -> Result<()> {
    sqlx::query("UPDATE agents SET last_contact_at = ? WHERE uuid = ?")
        .bind(now_millis())
        .bind(uuid.to_string())
        .execute(conn)
        .await?;
    Ok(())
}

fn not_found(uuid: Uuid) -> Error {
    Error::NotFound(format!("no agent with uuid {uuid}"))
}

/// 256 random bits, hex-encoded.
fn random_token() -> String {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("the operating system's random source works");
    hex::encode(bytes)
}

fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

fn constant_time_eq(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_long_random_and_hashed() {
        let (a, b) = (random_token(), random_token());
        assert_eq!(a.len(), 64);
        assert_ne!(a, b);
        assert_ne!(hash_token(&a), a);
        assert_eq!(hash_token(&a), hash_token(&a));
    }
}
