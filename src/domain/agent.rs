//! Agents: their vocabulary (GoCD's config, agent and build states), the entity, and the rules
//! on them: which names are allowed, what a ping or a work request does to the state, and which
//! agent may take which job.

use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use uuid::Uuid;

use super::job_run::Requirements;
use super::{Checked, Rejection};

/// GoCD's `agent_config_state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ConfigState {
    Pending,
    Enabled,
    Disabled,
}

/// GoCD's `agent_state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AgentState {
    Idle,
    Building,
    LostContact,
    Missing,
    Unknown,
}

/// GoCD's `build_state`, derived from the agent state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum BuildState {
    Idle,
    Building,
    Cancelled,
    Unknown,
}

text_enum!(ConfigState {
    Pending,
    Enabled,
    Disabled
});
text_enum!(AgentState {
    Idle,
    Building,
    LostContact,
    Missing,
    Unknown
});
text_enum!(BuildState {
    Idle,
    Building,
    Cancelled,
    Unknown
});

impl BuildState {
    /// What the build state shows for an agent state as stored.
    pub fn of(state: AgentState) -> BuildState {
        match state {
            AgentState::Idle => BuildState::Idle,
            AgentState::Building => BuildState::Building,
            _ => BuildState::Unknown,
        }
    }
}

/// An agent: what it registered with, what an admin set, and the run it holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Agent {
    pub uuid: Uuid,
    pub hostname: String,
    pub ip_address: String,
    pub sandbox: String,
    pub operating_system: String,
    /// Bytes free in its sandbox; `None` when it did not say.
    pub free_space: Option<i64>,
    pub agent_config_state: ConfigState,
    pub agent_state: AgentState,
    pub build_state: BuildState,
    pub agent_version: String,
    pub resources: Vec<String>,
    pub environments: Vec<String>,
    /// The run it holds, only while it has one.
    pub build_details: Option<BuildDetails>,
    /// Who last changed its config (approval, resources, …); `None` until someone did.
    pub last_changed_by: Option<String>,
}

/// The run an agent holds, as its row and the API name it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BuildDetails {
    pub pipeline_name: String,
    pub stage_name: String,
    pub job_name: String,
    pub build_id: i64,
}

impl Agent {
    /// Building agents can't be deleted; they are the ones the counts call "building".
    pub fn is_building(&self) -> bool {
        self.agent_state == AgentState::Building || self.build_details.is_some()
    }

    /// Only an Enabled agent that is in contact and holds no run gets work.
    pub fn can_take_work(&self) -> bool {
        self.agent_config_state == ConfigState::Enabled
            && self.build_details.is_none()
            && !matches!(
                self.agent_state,
                AgentState::LostContact | AgentState::Missing | AgentState::Building
            )
    }

    /// GoCD's matching rule: the agent has every resource the job needs (case-insensitive),
    /// and agent and job share an environment, or neither has one.
    pub fn matches(&self, job: &Requirements) -> bool {
        self.offer().matches(job)
    }

    /// What it offers, ready to match many jobs: each check is a set lookup.
    pub fn offer(&self) -> Offer {
        let lower = |names: &[String]| names.iter().map(|n| n.to_lowercase()).collect();
        Offer {
            uuid: self.uuid,
            resources: lower(&self.resources),
            environments: lower(&self.environments),
        }
    }

    /// The state a ping leaves: while it holds a run it is Building, even if the ping raced
    /// the assignment; a ping "Building" that names a build it no longer holds raced the
    /// completion: Idle. An agent reports only Idle or Building.
    pub fn after_ping(&self, reported: AgentState, names_a_build: bool) -> Checked<AgentState> {
        if !matches!(reported, AgentState::Idle | AgentState::Building) {
            return Err(Rejection::Invalid(format!(
                "agent_state: an agent reports Idle or Building, not {reported}"
            )));
        }
        Ok(if self.build_details.is_some() {
            AgentState::Building
        } else if names_a_build {
            AgentState::Idle
        } else {
            reported
        })
    }

    /// Asking for work is contact: an agent that was Missing, LostContact or Unknown is back,
    /// and one "Building" without a run is not building anything. `None`: the state stays.
    pub fn after_work_request(&self) -> Option<AgentState> {
        let idle = match self.agent_state {
            AgentState::Missing | AgentState::LostContact | AgentState::Unknown => true,
            AgentState::Building => self.build_details.is_none(),
            AgentState::Idle => false,
        };
        idle.then_some(AgentState::Idle)
    }
}

/// An admin may enable or disable; Pending is where agents start, not a state to set.
pub fn admin_config_state(state: ConfigState) -> Checked<ConfigState> {
    match state {
        ConfigState::Pending => Err(Rejection::Invalid(
            "agent_config_state: must be Enabled or Disabled".into(),
        )),
        other => Ok(other),
    }
}

/// A required one-line text (a hostname): trimmed, not empty, at most 255 characters.
pub fn required_text(field: &str, value: &str) -> Checked<String> {
    let value = visible(value.trim());
    if value.is_empty() {
        return Err(Rejection::Invalid(format!("{field}: must not be empty")));
    }
    if value.chars().count() > 255 {
        return Err(Rejection::Invalid(format!(
            "{field}: at most 255 characters"
        )));
    }
    Ok(value.to_string())
}

/// At most `max` characters, control characters shown as U+FFFD.
pub fn bounded_text(field: &str, value: &str, max: usize) -> Checked<String> {
    if value.chars().count() > max {
        return Err(Rejection::Invalid(format!(
            "{field}: at most {max} characters"
        )));
    }
    Ok(visible(value))
}

/// An agent's text as it is stored: control characters (a NUL, an escape, a carriage return;
/// a tab excepted) become U+FFFD, so the API, the pages and the streams all show the same,
/// valid, text.
pub fn visible(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_control() && c != '\t' {
                '\u{FFFD}'
            } else {
                c
            }
        })
        .collect()
}

/// What a list of names holds: GoCD's resources or environments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameKind {
    /// Letters, digits, `_`, `-`, `.`, `|` and spaces.
    Resource,
    /// Letters, digits, `_`, `-` and `.`.
    Environment,
}

impl NameKind {
    fn allows(self, c: char) -> bool {
        c.is_alphanumeric()
            || matches!(c, '_' | '-' | '.')
            || (self == NameKind::Resource && matches!(c, '|' | ' '))
    }

    fn described(self) -> &'static str {
        match self {
            NameKind::Resource => "letters, digits, '_', '-', '.', '|' and spaces",
            NameKind::Environment => "letters, digits, '_', '-', '.'",
        }
    }
}

/// Trims, drops empties and case-insensitive duplicates (keeping the first spelling), and
/// rejects names with characters GoCD does not allow.
pub fn names(field: &str, raw: &[String], kind: NameKind) -> Checked<Vec<String>> {
    let mut out: Vec<String> = Vec::new();
    let mut seen = HashSet::new();
    for name in raw.iter().map(|n| n.trim()).filter(|n| !n.is_empty()) {
        if name.chars().count() > MAX_NAME_CHARS || !name.chars().all(|c| kind.allows(c)) {
            let shown: String = name.chars().take(64).collect();
            return Err(Rejection::Invalid(format!(
                "{field}: {shown:?} is not a valid name ({})",
                kind.described()
            )));
        }
        if seen.insert(name.to_lowercase()) {
            out.push(name.to_string());
            if out.len() > MAX_NAMES {
                return Err(too_many(field));
            }
        }
    }
    Ok(out)
}

/// At most this many resources, or environments, per agent or job.
pub const MAX_NAMES: usize = 256;
/// A name is at most this long.
pub const MAX_NAME_CHARS: usize = 255;

fn too_many(field: &str) -> Rejection {
    Rejection::Invalid(format!("{field}: at most {MAX_NAMES} names"))
}

/// An agent's resources and environments, lower-cased, for matching.
#[derive(Debug, Clone)]
pub struct Offer {
    uuid: Uuid,
    resources: HashSet<String>,
    environments: HashSet<String>,
}

impl Offer {
    /// GoCD's rule: the agent has every resource the job needs (names compared
    /// case-insensitively), and it is in the job's environment, or in none when the job has
    /// none; and a job pinned to one agent (`run_instances: all`) matches that agent only.
    pub fn matches(&self, job: &Requirements) -> bool {
        if job.agent.is_some_and(|pinned| pinned != self.uuid) {
            return false;
        }
        let environment_ok = match &job.environment {
            None => self.environments.is_empty(),
            Some(env) => self.environments.contains(&env.to_lowercase()),
        };
        environment_ok
            && job
                .resources
                .iter()
                .all(|needed| self.resources.contains(&needed.to_lowercase()))
    }
}

/// Why one agent is not running a Scheduled job (GoCD users keep asking): the first reason
/// that applies, in the order a person would fix them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WaitReason {
    pub uuid: Uuid,
    pub hostname: String,
    /// `busy`, `idle`, `pending`, `disabled`, `lost_contact`, `missing`, `pinned`,
    /// `environment`, `resources`.
    pub reason: &'static str,
    pub message: String,
}

/// For a job that needs `needs`, what each agent is doing about it: the matching ones first
/// (busy, or idle and about to take it on its next poll), then the others with the first
/// reason they do not match.
pub fn why_waiting(needs: &Requirements, agents: &[Agent]) -> Vec<WaitReason> {
    let mut reasons: Vec<WaitReason> = agents
        .iter()
        .map(|agent| {
            let (reason, message) = wait_reason(needs, agent);
            WaitReason {
                uuid: agent.uuid,
                hostname: agent.hostname.clone(),
                reason,
                message,
            }
        })
        .collect();
    let rank = |r: &WaitReason| match r.reason {
        "busy" | "idle" => 0,
        _ => 1,
    };
    reasons.sort_by(|a, b| {
        rank(a)
            .cmp(&rank(b))
            .then_with(|| a.hostname.cmp(&b.hostname))
    });
    reasons
}

fn wait_reason(needs: &Requirements, agent: &Agent) -> (&'static str, String) {
    match agent.agent_config_state {
        ConfigState::Pending => return ("pending", "waits for an admin to enable it".into()),
        ConfigState::Disabled => return ("disabled", "is disabled".into()),
        ConfigState::Enabled => {}
    }
    match agent.agent_state {
        AgentState::LostContact => return ("lost_contact", "lost contact with the server".into()),
        AgentState::Missing => {
            return (
                "missing",
                "has not been heard from since the server started".into(),
            );
        }
        _ => {}
    }
    if let Some(pinned) = needs.agent.filter(|pinned| *pinned != agent.uuid) {
        return (
            "pinned",
            format!("the job runs on agent {pinned} only (run_instances: all)"),
        );
    }
    let offer = agent.offer();
    let environment_ok = match &needs.environment {
        None => offer.environments.is_empty(),
        Some(env) => offer.environments.contains(&env.to_lowercase()),
    };
    if !environment_ok {
        let message = match &needs.environment {
            Some(env) => format!("is not in the job's environment {env}"),
            None => format!(
                "is in environments ({}) and the job is in none",
                agent.environments.join(", ")
            ),
        };
        return ("environment", message);
    }
    let missing: Vec<&str> = needs
        .resources
        .iter()
        .filter(|r| !offer.resources.contains(&r.to_lowercase()))
        .map(String::as_str)
        .collect();
    if !missing.is_empty() {
        return (
            "resources",
            format!("lacks the resources {}", missing.join(", ")),
        );
    }
    match &agent.build_details {
        Some(busy) => (
            "busy",
            format!(
                "matches, and is busy with build {} ({}/{}/{})",
                busy.build_id, busy.pipeline_name, busy.stage_name, busy.job_name
            ),
        ),
        None => (
            "idle",
            "matches and is idle: it takes the job when it next asks for work".into(),
        ),
    }
}

/// Names to add to and remove from a list (GoCD's bulk `operations`).
#[derive(Debug, Clone, Default)]
pub struct ListChange {
    pub add: Vec<String>,
    pub remove: Vec<String>,
}

impl ListChange {
    /// The change with its names checked as `kind`.
    pub fn checked(&self, field: &str, kind: NameKind) -> Checked<ListChange> {
        Ok(ListChange {
            add: names(field, &self.add, kind)?,
            remove: names(field, &self.remove, kind)?,
        })
    }

    /// Removes, then adds, both case-insensitively; a name already there is not added twice.
    /// The list may not grow past [`MAX_NAMES`].
    pub fn apply(&self, field: &str, list: &mut Vec<String>) -> Checked<()> {
        let removed: HashSet<String> = self.remove.iter().map(|r| r.to_lowercase()).collect();
        list.retain(|n| !removed.contains(&n.to_lowercase()));
        let mut present: HashSet<String> = list.iter().map(|n| n.to_lowercase()).collect();
        for name in &self.add {
            if present.insert(name.to_lowercase()) {
                list.push(name.clone());
            }
        }
        if list.len() > MAX_NAMES {
            return Err(too_many(field));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn agent(
        state: ConfigState,
        agent_state: AgentState,
        resources: &[&str],
        environments: &[&str],
    ) -> Agent {
        Agent {
            uuid: Uuid::new_v4(),
            hostname: "h".into(),
            ip_address: String::new(),
            sandbox: String::new(),
            operating_system: String::new(),
            free_space: None,
            agent_config_state: state,
            agent_state,
            build_state: BuildState::of(agent_state),
            agent_version: String::new(),
            resources: resources.iter().map(|s| s.to_string()).collect(),
            environments: environments.iter().map(|s| s.to_string()).collect(),
            build_details: None,
            last_changed_by: None,
        }
    }

    fn job(resources: &[&str], environment: Option<&str>) -> Requirements {
        Requirements {
            resources: resources.iter().map(|s| s.to_string()).collect(),
            environment: environment.map(str::to_string),
            agent: None,
        }
    }

    fn holding_a_run(mut agent: Agent) -> Agent {
        agent.build_details = Some(BuildDetails {
            pipeline_name: "p".into(),
            stage_name: "s".into(),
            job_name: "j".into(),
            build_id: 9,
        });
        agent
    }

    #[test]
    fn names_are_trimmed_deduplicated_and_validated() {
        let raw = vec![
            " linux ".to_string(),
            "Linux".into(),
            "".into(),
            "java 21".into(),
        ];
        assert_eq!(
            names("resources", &raw, NameKind::Resource).unwrap(),
            vec!["linux", "java 21"]
        );
        let err = names("resources", &["<script>".to_string()], NameKind::Resource).unwrap_err();
        assert!(err.to_string().starts_with("resources:"), "{err}");
        assert!(names("environments", &["a b".to_string()], NameKind::Environment).is_err());
        assert!(names("resources", &["a|b c".to_string()], NameKind::Resource).is_ok());
    }

    #[test]
    fn list_changes_add_once_and_remove_case_insensitively() {
        let mut list = vec!["linux".to_string(), "java".into()];
        let change = ListChange {
            add: vec!["LINUX".into(), "docker".into()],
            remove: vec!["Java".into()],
        };
        change.apply("resources", &mut list).unwrap();
        assert_eq!(list, vec!["linux", "docker"]);
        let many = ListChange {
            add: (0..MAX_NAMES).map(|n| format!("r{n}")).collect(),
            remove: vec![],
        };
        let err = many.apply("resources", &mut list).unwrap_err();
        assert_eq!(err.to_string(), "resources: at most 256 names");
    }

    #[test]
    fn names_are_bounded_in_count_and_length_and_deduplicated_by_a_set() {
        let copies = vec!["Linux".to_string(); 80_000];
        assert_eq!(
            names("resources", &copies, NameKind::Resource).unwrap(),
            vec!["Linux"]
        );
        let distinct: Vec<String> = (0..80_000).map(|n| format!("r{n}")).collect();
        let err = names("resources", &distinct, NameKind::Resource).unwrap_err();
        assert_eq!(err.to_string(), "resources: at most 256 names");
        let exactly: Vec<String> = distinct[..MAX_NAMES].to_vec();
        assert_eq!(
            names("resources", &exactly, NameKind::Resource)
                .unwrap()
                .len(),
            256
        );
        let long = vec!["x".repeat(256)];
        assert!(names("resources", &long, NameKind::Resource).is_err());
        assert!(names("resources", &["x".repeat(255)], NameKind::Resource).is_ok());
    }

    #[test]
    fn an_offer_matches_as_gocd_does() {
        let linux = agent(
            ConfigState::Enabled,
            AgentState::Idle,
            &["Linux", "Java"],
            &["prod"],
        );
        let offer = linux.offer();
        let needs = |resources: &[&str], environment: Option<&str>| Requirements {
            resources: resources.iter().map(|r| r.to_string()).collect(),
            environment: environment.map(str::to_string),
            agent: None,
        };
        assert!(offer.matches(&needs(&["java"], Some("PROD"))));
        assert!(
            !offer.matches(&needs(&["java"], None)),
            "an agent in an environment"
        );
        assert!(!offer.matches(&needs(&["docker"], Some("prod"))));
        let plain = agent(ConfigState::Enabled, AgentState::Idle, &[], &[]).offer();
        assert!(plain.matches(&needs(&[], None)));
        assert!(!plain.matches(&needs(&[], Some("prod"))));
    }

    #[test]
    fn config_state_parses_case_insensitively() {
        assert_eq!(
            "enabled".parse::<ConfigState>().unwrap(),
            ConfigState::Enabled
        );
        assert_eq!(
            "DISABLED".parse::<ConfigState>().unwrap(),
            ConfigState::Disabled
        );
        assert!("on".parse::<ConfigState>().is_err());
        assert!(admin_config_state(ConfigState::Pending).is_err());
    }

    #[test]
    fn resources_must_all_be_offered_case_insensitively() {
        let a = agent(
            ConfigState::Enabled,
            AgentState::Idle,
            &["Linux", "docker"],
            &[],
        );
        assert!(a.matches(&job(&[], None)));
        assert!(a.matches(&job(&["linux"], None)));
        assert!(a.matches(&job(&["DOCKER", "linux"], None)));
        assert!(!a.matches(&job(&["linux", "java"], None)));
    }

    #[test]
    fn environments_must_be_shared_or_absent_on_both_sides() {
        let plain = agent(ConfigState::Enabled, AgentState::Idle, &[], &[]);
        let prod = agent(ConfigState::Enabled, AgentState::Idle, &[], &["Production"]);
        assert!(plain.matches(&job(&[], None)));
        assert!(!plain.matches(&job(&[], Some("production"))));
        assert!(prod.matches(&job(&[], Some("production"))));
        assert!(!prod.matches(&job(&[], Some("staging"))));
        assert!(
            !prod.matches(&job(&[], None)),
            "an agent in an environment takes only its jobs"
        );
    }

    #[test]
    fn only_enabled_idle_agents_in_contact_take_work() {
        let table = [
            (ConfigState::Enabled, AgentState::Idle, true),
            (ConfigState::Pending, AgentState::Idle, false),
            (ConfigState::Disabled, AgentState::Idle, false),
            (ConfigState::Enabled, AgentState::LostContact, false),
            (ConfigState::Enabled, AgentState::Missing, false),
            (ConfigState::Enabled, AgentState::Building, false),
        ];
        for (config, state, expected) in table {
            assert_eq!(
                agent(config, state, &[], &[]).can_take_work(),
                expected,
                "{config} {state}"
            );
        }
        let busy = holding_a_run(agent(ConfigState::Enabled, AgentState::Idle, &[], &[]));
        assert!(
            !busy.can_take_work(),
            "an agent holding a run gets no second one"
        );
    }

    #[test]
    fn a_ping_keeps_an_agent_with_a_run_building_and_one_without_idle() {
        let idle = agent(ConfigState::Enabled, AgentState::Idle, &[], &[]);
        assert_eq!(
            idle.after_ping(AgentState::Building, false),
            Ok(AgentState::Building)
        );
        assert_eq!(
            idle.after_ping(AgentState::Building, true),
            Ok(AgentState::Idle)
        );
        let busy = holding_a_run(idle.clone());
        assert_eq!(
            busy.after_ping(AgentState::Idle, false),
            Ok(AgentState::Building)
        );
        assert!(idle.after_ping(AgentState::LostContact, false).is_err());
    }

    #[test]
    fn a_work_request_brings_a_silent_agent_back_idle() {
        for state in [
            AgentState::Missing,
            AgentState::LostContact,
            AgentState::Unknown,
        ] {
            let a = agent(ConfigState::Enabled, state, &[], &[]);
            assert_eq!(a.after_work_request(), Some(AgentState::Idle), "{state}");
        }
        let building = agent(ConfigState::Enabled, AgentState::Building, &[], &[]);
        assert_eq!(building.after_work_request(), Some(AgentState::Idle));
        assert_eq!(holding_a_run(building).after_work_request(), None);
        let idle = agent(ConfigState::Enabled, AgentState::Idle, &[], &[]);
        assert_eq!(idle.after_work_request(), None);
    }
}
