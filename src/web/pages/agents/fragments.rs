//! The agents page's markup: plain functions from data to `Markup`.

use maud::{Markup, html};

use crate::domain::agent::{Agent, AgentState, ConfigState};

/// What the counts strip shows.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct AgentCounts {
    pub total: usize,
    pub pending: usize,
    pub enabled: usize,
    pub disabled: usize,
    pub building: usize,
    pub lost_contact: usize,
}

impl AgentCounts {
    pub fn of<'a>(agents: impl IntoIterator<Item = &'a Agent>) -> Self {
        let mut counts = AgentCounts::default();
        for agent in agents {
            counts.total += 1;
            match agent.agent_config_state {
                ConfigState::Pending => counts.pending += 1,
                ConfigState::Enabled => counts.enabled += 1,
                ConfigState::Disabled => counts.disabled += 1,
            }
            match agent.agent_state {
                AgentState::Building => counts.building += 1,
                AgentState::LostContact => counts.lost_contact += 1,
                _ => {}
            }
        }
        counts
    }
}

/// The whole page body. `queued` is the scheduler's pending count.
pub fn agents_page(agents: &[Agent], queued: u64) -> Markup {
    html! {
        div sse-connect="/agents/events" {
            div.page-title {
                h1 { "Agents" }
            }
            section.card.toolbar {
                div.actions.admin-only {
                    (action_button("delete", "Delete", "btn danger", ""))
                    (action_button("enable", "Enable", "btn", ""))
                    (action_button("disable", "Disable", "btn", ""))
                    span.selected-count #selected-count { "0 selected" }
                }
                div.list-editor.admin-only {
                    label for="edit-resources" { "Resources" }
                    input #edit-resources type="text" name="resources" placeholder="e.g. linux, docker" autocomplete="off";
                    (action_button("add_resources", "Add", "btn small", "#edit-resources"))
                    (action_button("remove_resources", "Remove", "btn small", "#edit-resources"))
                    label for="edit-environments" { "Environments" }
                    input #edit-environments type="text" name="environments" placeholder="e.g. production" autocomplete="off";
                    (action_button("add_environments", "Add", "btn small", "#edit-environments"))
                    (action_button("remove_environments", "Remove", "btn small", "#edit-environments"))
                }
                div.summary {
                    div #agent-counts sse-swap="counts" { (counts(&AgentCounts::of(agents))) }
                    span.count {
                        "Queued jobs: " span #queued-count sse-swap="queued" { (queued) }
                    }
                    input #agent-filter type="search" placeholder="Filter agents" aria-label="Filter agents"
                        autocomplete="off";
                }
                div #flash role="status" aria-live="polite" {}
            }
            section.card.table-card {
                table #agents-table {
                    thead {
                        tr {
                            th.select { input #select-all type="checkbox" aria-label="Select all shown agents"; }
                            (sort_header("hostname", "Agent name", false))
                            (sort_header("sandbox", "Sandbox", false))
                            (sort_header("os", "OS", false))
                            (sort_header("ip", "IP address", false))
                            (sort_header("status", "Status", false))
                            (sort_header("free_space", "Free space", true))
                            (sort_header("resources", "Resources", false))
                            (sort_header("environments", "Environments", false))
                        }
                    }
                    // Rows come and go one by one (`live.js` applies `agents`, `agent-added`
                    // and each row's own event, named by its id).
                    tbody #agents-body data-live-rows="agents" data-live-added="agent-added" {
                        (rows(agents))
                    }
                }
                @if agents.is_empty() {
                    p.empty-hint {
                        "No agents yet. Start one with " code { "ferrocd agent --server URL" }
                        " or register one through " code { "POST /api/agents/register" } "."
                    }
                }
            }
        }
    }
}

/// The checked agents a bulk action applies to: those shown (a filter hides the rest).
const SELECTED: &str = "#agents-body tr:not([hidden]) .agent-select:checked";

/// A toolbar button that posts `action` for the selected agents (plus `also`, an input).
fn action_button(action: &str, label: &str, class: &str, also: &str) -> Markup {
    let include = if also.is_empty() {
        SELECTED.to_string()
    } else {
        format!("{SELECTED}, {also}")
    };
    html! {
        button class=(class) type="button" data-needs-selection disabled
            hx-post="/agents/actions" hx-vals=(format!(r#"{{"action": "{action}"}}"#))
            hx-include=(include) hx-target="#flash" hx-swap="innerHTML" { (label) }
    }
}

fn sort_header(key: &str, label: &str, numeric: bool) -> Markup {
    html! {
        th data-sort-key=(key) data-sort-type=(if numeric { "number" } else { "text" }) {
            button.sort type="button" { (label) span.sort-mark {} }
        }
    }
}

/// The counts strip (event `counts`).
pub fn counts(c: &AgentCounts) -> Markup {
    html! {
        span.count data-count="total" { "Total: " b { (c.total) } }
        span.count data-count="pending" { "Pending: " b { (c.pending) } }
        span.count.enabled data-count="enabled" { "Enabled: " b { (c.enabled) } }
        span.count.disabled data-count="disabled" { "Disabled: " b { (c.disabled) } }
        span.count.building data-count="building" { "Building: " b { (c.building) } }
        span.count.lost data-count="lost_contact" { "Lost contact: " b { (c.lost_contact) } }
    }
}

/// Every row (event `agents`, the whole inner HTML of the table body).
pub fn rows<'a>(agents: impl IntoIterator<Item = &'a Agent>) -> Markup {
    html! { @for agent in agents { (row(agent)) } }
}

/// What the status column says, and the class that colours it.
fn status(agent: &Agent) -> (&'static str, &'static str) {
    match (agent.agent_config_state, agent.agent_state) {
        (ConfigState::Pending, _) => ("Pending", "pending"),
        (ConfigState::Disabled, AgentState::Building) => ("Disabled (Building)", "disabled"),
        (ConfigState::Disabled, _) => ("Disabled", "disabled"),
        (ConfigState::Enabled, AgentState::Idle) => ("Idle", "idle"),
        (ConfigState::Enabled, AgentState::Building) => ("Building", "building"),
        (ConfigState::Enabled, AgentState::LostContact) => ("Lost Contact", "lost-contact"),
        (ConfigState::Enabled, AgentState::Missing) => ("Missing", "missing"),
        (ConfigState::Enabled, AgentState::Unknown) => ("Unknown", "unknown"),
    }
}

/// Where a fresh load puts a row, as text that sorts the way the server sorts (hostname,
/// then uuid, bytewise): the hostname's bytes in hex, so a browser's string comparison of
/// two keys agrees with the database's, whatever the characters.
pub fn order_key(agent: &Agent) -> String {
    format!("{}-{}", hex::encode(agent.hostname.as_bytes()), agent.uuid)
}

/// One agent's row (events `agent-added` and `agent-{uuid}`, which replace the row with its
/// id or insert it where `data-order` puts it).
pub fn row(agent: &Agent) -> Markup {
    let (status_text, status_class) = status(agent);
    let resources = agent.resources.join(", ");
    let environments = agent.environments.join(", ");
    let filter_text = [
        agent.hostname.as_str(),
        &agent.ip_address,
        &agent.operating_system,
        &agent.sandbox,
        &resources,
        &environments,
        status_text,
    ]
    .join(" ")
    .to_lowercase();
    html! {
        tr id={ "agent-" (agent.uuid) } .agent-row
            data-uuid=(agent.uuid)
            data-agent-state=(agent.agent_state)
            data-config-state=(agent.agent_config_state)
            data-filter=(filter_text)
            data-order=(order_key(agent)) {
            td.select {
                input.agent-select type="checkbox" name="uuid" value=(agent.uuid)
                    aria-label={ "Select " (agent.hostname) };
            }
            td data-col="hostname" data-sort=(agent.hostname.to_lowercase()) {
                a.hostname href={ "/agents/" (agent.uuid) "/job_run_history" } title=(agent.uuid) { (agent.hostname) }
            }
            td data-col="sandbox" { (agent.sandbox) }
            td data-col="os" { (agent.operating_system) }
            td data-col="ip" { (agent.ip_address) }
            td data-col="status" data-sort=(status_text) {
                span class={ "status status-" (status_class) } { (status_text) }
                @if let Some(build) = &agent.build_details {
                    " "
                    a.build-link href={ "/builds/" (build.build_id) } {
                        (build.pipeline_name) " / " (build.stage_name) " / " (build.job_name)
                    }
                }
                @if let Some(actor) = &agent.last_changed_by {
                    " " span.changed-by title="who last changed this agent" { "by " (actor) }
                }
                @if agent.agent_config_state == ConfigState::Pending {
                    " "
                    button.btn.small.approve.admin-only type="button" hx-post="/agents/actions"
                        hx-vals=(format!(r#"{{"action": "enable", "uuid": "{}"}}"#, agent.uuid))
                        hx-target="#flash" hx-swap="innerHTML" { "Approve" }
                }
            }
            td data-col="free_space" data-sort=(agent.free_space.unwrap_or(-1)) { (free_space(agent.free_space)) }
            td data-col="resources" { (names_or_none(&resources)) }
            td data-col="environments" { (names_or_none(&environments)) }
        }
    }
}

fn names_or_none(joined: &str) -> Markup {
    if joined.is_empty() {
        html! { span.none { "none specified" } }
    } else {
        html! { (joined) }
    }
}

/// Bytes in GoCD's style: "108.8 GB".
pub fn free_space(bytes: Option<i64>) -> String {
    let Some(bytes) = bytes else {
        return "Unknown".to_string();
    };
    const UNITS: [&str; 5] = ["bytes", "KB", "MB", "GB", "TB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} bytes")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// The answer to a page action: what was done, and each agent that was refused and why.
pub fn action_result(done: &str, refused: &[(String, String)]) -> Markup {
    html! {
        @if !done.is_empty() {
            p.flash.ok { (done) }
        }
        @if !refused.is_empty() {
            div.flash.refused {
                p { "Refused " (refused.len()) " agent(s):" }
                ul {
                    @for (who, why) in refused {
                        li { b { (who) } ": " (why) }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_keys_sort_as_the_database_sorts_rows() {
        let agent = |hostname: &str, uuid: u128| Agent {
            uuid: uuid::Uuid::from_u128(uuid),
            hostname: hostname.to_string(),
            ip_address: String::new(),
            sandbox: String::new(),
            operating_system: String::new(),
            free_space: None,
            agent_config_state: ConfigState::Enabled,
            agent_state: AgentState::Idle,
            build_state: crate::domain::agent::BuildState::Idle,
            agent_version: String::new(),
            resources: vec![],
            environments: vec![],
            build_details: None,
            last_changed_by: None,
        };
        // A prefix, upper before lower case, characters beyond ASCII (whose UTF-16 order
        // differs from their UTF-8 order) and equal names told apart by uuid.
        let mut agents = vec![
            agent("ab", 1),
            agent("a", 2),
            agent("B", 3),
            agent("\u{FF21}", 4),
            agent("\u{1F600}", 5),
            agent("a", 1),
            agent("é", 6),
        ];
        let mut by_key = agents.clone();
        agents
            .sort_by(|x, y| (x.hostname.as_bytes(), x.uuid).cmp(&(y.hostname.as_bytes(), y.uuid)));
        // A browser compares the ASCII keys code unit by code unit, i.e. byte by byte.
        by_key.sort_by_key(order_key);
        let names = |list: &[Agent]| {
            list.iter()
                .map(|a| (a.hostname.clone(), a.uuid))
                .collect::<Vec<_>>()
        };
        assert_eq!(names(&by_key), names(&agents));
        assert!(by_key.iter().map(order_key).all(|k| k.is_ascii()));
    }

    #[test]
    fn free_space_reads_like_gocd() {
        assert_eq!(free_space(None), "Unknown");
        assert_eq!(free_space(Some(512)), "512 bytes");
        assert_eq!(free_space(Some(116_823_110_451)), "108.8 GB");
    }
}
