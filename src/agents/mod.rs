//! The agents context: registration, tokens, pings, admin edits, deletion and liveness.
//!
//! Every write goes through one `WriteTx` and, once committed, publishes exactly one event per
//! changed agent on `agents:updates` (none when nothing shown changed). Its SQL is in the
//! store (`store.rs`, `sqlite.rs`); its token crypto in `tokens.rs`.

mod contacts;
mod postgres;
mod sqlite;
mod store;

pub use contacts::Contacts;

use uuid::Uuid;

use crate::secrets::{constant_time_eq, hash_token, random_token};

use crate::audit;
use crate::db::{Db, WriteTx, now_millis};
use crate::domain::agent::{
    Agent, AgentState, BuildState, ConfigState, ListChange, NameKind, admin_config_state,
    bounded_text, names, required_text,
};
use crate::error::{Error, Result};
use crate::events::{DomainEvent, Topic};

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
    /// New agents without the key are refused once this many wait for approval.
    max_pending: i64,
    contacts: Contacts,
}

impl Agents {
    pub fn new(
        db: Db,
        registration_key: Option<String>,
        max_pending: u32,
        contacts: Contacts,
    ) -> Self {
        Agents {
            db,
            registration_key,
            max_pending: i64::from(max_pending),
            contacts,
        }
    }

    pub async fn list(&self) -> Result<Vec<Agent>> {
        let mut conn = self.db.reader().await?;
        store::list(conn.conn()).await
    }

    /// The agents among `uuids` that exist, in no particular order (one query per few hundred).
    pub async fn find_many(&self, uuids: &[Uuid]) -> Result<Vec<Agent>> {
        let mut conn = self.db.reader().await?;
        store::find_many(conn.conn(), uuids).await
    }

    pub async fn get(&self, uuid: Uuid) -> Result<Agent> {
        let mut conn = self.db.reader().await?;
        store::fetch(conn.conn(), uuid)
            .await?
            .ok_or_else(|| not_found(uuid))
    }

    /// The agent a bearer token belongs to. The first use of a new token retires the one
    /// it replaced (kept until then for a retried re-registration). The agent is read whole,
    /// as it is at that moment: a ping or work request that changes nothing needs no other
    /// read.
    pub async fn authenticate(&self, token: &str) -> Result<Agent> {
        let mut conn = self.db.reader().await?;
        let (agent, has_previous) = store::by_token(conn.conn(), &hash_token(token))
            .await?
            .ok_or_else(|| Error::Unauthorized("unknown agent token".into()))?;
        drop(conn);
        if has_previous {
            let mut tx = self.db.begin().await?;
            store::forget_previous_token(tx.conn(), agent.uuid).await?;
            tx.commit().await?;
        }
        Ok(agent)
    }

    /// Whether `key` is the server's registration key.
    pub fn is_registration_key(&self, key: Option<&str>) -> bool {
        matches!((&self.registration_key, key), (Some(expected), Some(given)) if constant_time_eq(expected, given))
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
        let registration = Registration {
            ip_address: bounded_text("ip_address", &registration.ip_address, 255)?,
            operating_system: bounded_text(
                "operating_system",
                &registration.operating_system,
                255,
            )?,
            agent_version: bounded_text("agent_version", &registration.agent_version, 255)?,
            sandbox: bounded_text("sandbox", &registration.sandbox, 1024)?,
            ..registration
        };
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
            Some(uuid) => store::fetch(tx.conn(), uuid).await?,
            None => None,
        };
        let (before, agent) = if let Some(before) = existing {
            let (current, previous) = store::token_hashes(tx.conn(), before.uuid).await?;
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
            // An agent that came back from deletion waits for an admin, key or not.
            if key_accepted
                && agent.agent_config_state == ConfigState::Pending
                && !store::was_deleted(tx.conn(), agent.uuid).await?
            {
                agent.agent_config_state = ConfigState::Enabled;
            }
            store::save(tx.conn(), &agent).await?;
            // The token presented stays good for one more re-registration, until the new one
            // is first used.
            let new_hash = hash_token(&new_token);
            store::replace_token(tx.conn(), agent.uuid, &new_hash, &presented, now).await?;
            (Some(before), agent)
        } else {
            let uuid = registration.uuid.unwrap_or_else(Uuid::new_v4);
            // A deleted agent's uuid comes back for an admin to approve, key or not: having an
            // agent deleted must not let anyone else take its place.
            let key_accepted = key_accepted && !store::was_deleted(tx.conn(), uuid).await?;
            if !key_accepted && store::count_pending(tx.conn()).await? >= self.max_pending {
                return Err(Error::TooManyRequests {
                    message: format!(
                        "{} agents already wait for approval: an admin must approve or delete \
                         some first (--max-pending-agents)",
                        self.max_pending
                    ),
                    retry_after: 60,
                });
            }
            let agent = Agent {
                uuid,
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
                last_changed_by: None,
            };
            store::insert(tx.conn(), &agent, &hash_token(&new_token), now).await?;
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
    /// changes (a new free space is stored silently). `known` is the agent as its
    /// authentication read it: a ping that changes nothing of it while its contact is fresh
    /// (see `Contacts`) writes nothing and reads nothing more.
    pub async fn ping(&self, known: &Agent, ping: Ping) -> Result<Agent> {
        let uuid = known.uuid;
        let now = now_millis();
        // A ping refused (a state an agent may not report) is not contact: it is checked
        // before the ledger hears of it, here or, when it changes something, in the write.
        if let Ok(agent) = pinged(known, &ping)
            && agent == *known
            && self.contacts.heard(uuid, now)
        {
            return Ok(agent);
        }
        let mut tx = self.db.begin().await?;
        let before = store::fetch(tx.conn(), uuid)
            .await?
            .ok_or_else(|| not_found(uuid))?;
        let agent = pinged(&before, &ping)?;
        if agent != before {
            store::save(tx.conn(), &agent).await?;
        }
        store::touch(tx.conn(), uuid, now).await?;
        if before.agent_state != agent.agent_state {
            tx.publish(Topic::AgentsUpdates, DomainEvent::AgentUpdated { uuid });
        }
        tx.commit().await?;
        self.contacts.wrote(uuid, now);
        Ok(agent)
    }

    /// An admin's edit of one agent (API `PATCH`, the enable/disable shortcuts, page buttons).
    pub async fn update(&self, uuid: Uuid, update: AgentUpdate, actor: &str) -> Result<Agent> {
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
        let before = store::fetch(tx.conn(), uuid)
            .await?
            .ok_or_else(|| not_found(uuid))?;
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
        if save_if_changed(&mut tx, &before, &mut agent, actor).await? {
            tx.commit().await?;
        }
        Ok(agent)
    }

    /// GoCD's bulk update: all or nothing. An unknown uuid changes nothing and is named.
    pub async fn bulk_update(&self, bulk: BulkUpdate, actor: &str) -> Result<Vec<Uuid>> {
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
            match store::fetch(tx.conn(), uuid).await? {
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
            resources.apply("resources", &mut agent.resources)?;
            environments.apply("environments", &mut agent.environments)?;
            if let Some(state) = config_state {
                agent.agent_config_state = state;
            }
            save_if_changed(&mut tx, &before, &mut agent, actor).await?;
        }
        tx.commit().await?;
        Ok(bulk.uuids)
    }

    /// Deletes Disabled, non-building agents, all or nothing.
    pub async fn delete(&self, uuids: &[Uuid], actor: &str) -> Result<usize> {
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
            match store::fetch(tx.conn(), uuid).await? {
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
            let uuid = agent.uuid;
            store::delete(tx.conn(), uuid, now_millis()).await?;
            audit::record(&mut tx, actor, "delete", &agent_target(agent)).await?;
            tx.publish(Topic::AgentsUpdates, DomainEvent::AgentDeleted { uuid });
        }
        tx.commit().await?;
        let gone: Vec<Uuid> = doomed.iter().map(|a| a.uuid).collect();
        self.contacts.forget(&gone);
        Ok(doomed.len())
    }

    /// The contact ledger, shared with the scheduler's work requests.
    pub fn contacts(&self) -> &Contacts {
        &self.contacts
    }

    /// At start every known agent is Missing until it is heard from in this process.
    pub async fn mark_all_missing(&self) -> Result<()> {
        let mut tx = self.db.begin().await?;
        store::mark_all_missing(tx.conn()).await?;
        tx.commit().await
    }

    /// Enabled agents heard from in this process but not since `silent_since` (milliseconds
    /// since the epoch) become LostContact.
    pub async fn mark_lost_contact(&self, silent_since: i64) -> Result<Vec<Uuid>> {
        let mut tx = self.db.begin().await?;
        // Agents heard since the cutoff whose stored contact trails (see `Contacts`).
        let heard = self.contacts.unwritten_since(silent_since);
        for &(uuid, at) in &heard {
            store::touch(tx.conn(), uuid, at).await?;
        }
        let lost = store::mark_lost_contact(tx.conn(), silent_since).await?;
        for &uuid in &lost {
            tx.publish(Topic::AgentsUpdates, DomainEvent::AgentUpdated { uuid });
        }
        tx.commit().await?;
        for (uuid, at) in heard {
            self.contacts.wrote(uuid, at);
        }
        Ok(lost)
    }
}

/// An admin's edit: saved, with its event, only if it changes the agent; true if it did.
/// Saves a person's change, if it changes anything: it records who made it (on the agent and
/// in the audit trail) and publishes it.
async fn save_if_changed(
    tx: &mut WriteTx,
    before: &Agent,
    agent: &mut Agent,
    actor: &str,
) -> Result<bool> {
    if agent == before {
        return Ok(false);
    }
    agent.last_changed_by = Some(actor.to_string());
    store::save(tx.conn(), agent).await?;
    let action = match (before.agent_config_state, agent.agent_config_state) {
        (from, ConfigState::Enabled) if from != ConfigState::Enabled => "enable",
        (from, ConfigState::Disabled) if from != ConfigState::Disabled => "disable",
        _ => "update",
    };
    audit::record(tx, actor, action, &agent_target(agent)).await?;
    publish_change(tx, Some(before), agent);
    Ok(true)
}

/// An agent as the audit trail names it.
fn agent_target(agent: &Agent) -> String {
    format!("agent {} ({})", agent.uuid, agent.hostname)
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

/// Every agent as `tx` sees it (a stage's `run_instances: all` jobs count the matching ones).
pub(crate) async fn list_in(tx: &mut WriteTx) -> Result<Vec<Agent>> {
    store::list(tx.conn()).await
}

/// The agent as `tx` sees it (for the other contexts, inside their writes).
pub(crate) async fn fetch(tx: &mut WriteTx, uuid: Uuid) -> Result<Option<Agent>> {
    store::fetch(tx.conn(), uuid).await
}

/// Sets an agent's state inside another context's transaction (assignment, completion).
/// Returns the agent before and after, for [`publish_change`]; `None` when nothing shown
/// changed.
pub(crate) async fn set_agent_state(
    tx: &mut WriteTx,
    uuid: Uuid,
    state: AgentState,
) -> Result<Option<(Agent, Agent)>> {
    let Some(before) = fetch(tx, uuid).await? else {
        return Ok(None);
    };
    store::set_state(tx.conn(), uuid, state).await?;
    let after = fetch(tx, uuid).await?.ok_or_else(|| not_found(uuid))?;
    Ok((before != after).then_some((before, after)))
}

/// Sets an agent's state inside another context's transaction that reads the agent itself
/// afterwards, for its own [`publish_change`].
pub(crate) async fn set_state_only(tx: &mut WriteTx, uuid: Uuid, state: AgentState) -> Result<()> {
    store::set_state(tx.conn(), uuid, state).await
}

/// A work request is contact (at `now`): an agent that was Missing or LostContact is back,
/// Idle. Returns the agent before and after.
/// `write_contact` false: its contact was written within the lag ([`Contacts::heard`]).
pub(crate) async fn record_work_request(
    tx: &mut WriteTx,
    uuid: Uuid,
    now: i64,
    write_contact: bool,
) -> Result<(Agent, Agent)> {
    let before = fetch(tx, uuid).await?.ok_or_else(|| not_found(uuid))?;
    if write_contact {
        store::touch(tx.conn(), uuid, now).await?;
    }
    // Asking for work means it is not building anything, unless it holds a run (which the
    // scheduler sorts out).
    let Some(state) = before.after_work_request() else {
        return Ok((before.clone(), before));
    };
    store::set_state(tx.conn(), uuid, state).await?;
    let after = fetch(tx, uuid).await?.ok_or_else(|| not_found(uuid))?;
    Ok((before, after))
}

/// A registration, ping or work request is contact (and so is a build's status report or
/// console upload: an agent busy uploading is plainly alive).
/// Written only when the stored contact trails by more than the ledger's lag, as a ping's is;
/// returns the time written, for [`Contacts::wrote`] once the write has committed.
pub(crate) async fn touch(
    tx: &mut WriteTx,
    contacts: &Contacts,
    uuid: Uuid,
) -> Result<Option<i64>> {
    let now = now_millis();
    if contacts.heard(uuid, now) {
        return Ok(None);
    }
    store::touch(tx.conn(), uuid, now).await?;
    Ok(Some(now))
}

fn not_found(uuid: Uuid) -> Error {
    Error::NotFound(format!("no agent with uuid {uuid}"))
}

/// The agent as a ping leaves it: the state it reports (as the domain allows), and its free
/// space when it sent one.
fn pinged(before: &Agent, ping: &Ping) -> Result<Agent> {
    let mut agent = before.clone();
    let state = before.after_ping(ping.agent_state, ping.build_id.is_some())?;
    agent.agent_state = state;
    agent.build_state = BuildState::of(state);
    if ping.free_space.is_some() {
        agent.free_space = ping.free_space;
    }
    Ok(agent)
}
