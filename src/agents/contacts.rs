//! When each agent was last heard from, and when that was last written. A ping or a work
//! request that changes nothing else is the bulk of what a fleet of agents sends; writing its
//! contact every time made each one a write transaction. Now contact is written at most once
//! per [`Contacts::lag`] per agent (always when anything else changes), and the liveness sweep
//! first writes the contact of every agent heard since its cutoff whose stored contact is
//! older, so an agent is judged silent exactly as before: after `--lost-contact-after`.
//!
//! The ledger is this process's own: another node (or a restart) starts without it and simply
//! writes an agent's first contact again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use uuid::Uuid;

/// At most this long between two contact writes of one agent, however long the lost-contact
/// period (a third of it when that is shorter).
const LONGEST_LAG: Duration = Duration::from_secs(10);

#[derive(Clone, Copy)]
struct Contact {
    /// The agent's latest call (epoch ms).
    heard: i64,
    /// The newest contact committed for it (epoch ms), if any in this process.
    written: Option<i64>,
}

#[derive(Clone)]
pub struct Contacts {
    agents: Arc<Mutex<HashMap<Uuid, Contact>>>,
    lag: Duration,
}

impl Contacts {
    /// A ledger whose lag is a third of `lost_contact_after`, at most [`LONGEST_LAG`].
    pub fn new(lost_contact_after: Duration) -> Contacts {
        Contacts {
            agents: Arc::default(),
            lag: (lost_contact_after / 3).min(LONGEST_LAG),
        }
    }

    /// How far the stored contact may trail an agent's last call.
    pub fn lag(&self) -> Duration {
        self.lag
    }

    /// Notes a call from `uuid` at `now` (epoch ms); true when its contact was written less
    /// than the lag before, so this call need not write it.
    pub fn heard(&self, uuid: Uuid, now: i64) -> bool {
        let mut agents = self.agents.lock().expect("contacts lock poisoned");
        let contact = agents.entry(uuid).or_insert(Contact {
            heard: now,
            written: None,
        });
        contact.heard = contact.heard.max(now);
        contact
            .written
            .is_some_and(|at| now - at < self.lag.as_millis() as i64)
    }

    /// Notes that `uuid`'s contact `at` (epoch ms) has been committed.
    pub fn wrote(&self, uuid: Uuid, at: i64) {
        let mut agents = self.agents.lock().expect("contacts lock poisoned");
        let contact = agents.entry(uuid).or_insert(Contact {
            heard: at,
            written: None,
        });
        contact.heard = contact.heard.max(at);
        contact.written = Some(contact.written.map_or(at, |w| w.max(at)));
    }

    /// The agents heard at or after `cutoff` whose written contact is older: what the sweep
    /// writes before it judges anyone silent.
    pub fn unwritten_since(&self, cutoff: i64) -> Vec<(Uuid, i64)> {
        let agents = self.agents.lock().expect("contacts lock poisoned");
        agents
            .iter()
            .filter(|(_, c)| c.heard >= cutoff && c.written.is_none_or(|w| w < cutoff))
            .map(|(uuid, c)| (*uuid, c.heard))
            .collect()
    }

    /// Forgets deleted agents.
    pub fn forget(&self, uuids: &[Uuid]) {
        let mut agents = self.agents.lock().expect("contacts lock poisoned");
        for uuid in uuids {
            agents.remove(uuid);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_contact_need_not_be_written_again_within_the_lag() {
        let uuid = Uuid::new_v4();
        let contacts = Contacts::new(Duration::from_secs(3));
        assert_eq!(contacts.lag(), Duration::from_secs(1));
        assert!(!contacts.heard(uuid, 1_000), "never written");
        contacts.wrote(uuid, 1_000);
        assert!(contacts.heard(uuid, 1_999));
        assert!(!contacts.heard(uuid, 2_000));
        // An older write committed late does not move it back.
        contacts.wrote(uuid, 900);
        assert!(contacts.heard(uuid, 1_999));
        contacts.forget(&[uuid]);
        assert!(!contacts.heard(uuid, 1_001));

        assert_eq!(Contacts::new(Duration::from_secs(300)).lag(), LONGEST_LAG);
    }

    #[test]
    fn the_sweep_learns_of_every_agent_heard_since_its_cutoff_but_not_written() {
        let (quiet, chatty, written) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        let contacts = Contacts::new(Duration::from_secs(30));
        contacts.wrote(quiet, 1_000);
        contacts.wrote(chatty, 1_000);
        assert!(contacts.heard(chatty, 5_000), "within the lag: not written");
        contacts.wrote(written, 6_000);
        assert_eq!(contacts.unwritten_since(2_000), vec![(chatty, 5_000)]);
        assert!(contacts.unwritten_since(5_001).is_empty());
    }
}
