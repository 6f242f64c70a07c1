//! Jobs, builds and the scheduler, as a user's script and an agent see them, one file per
//! concern so that a failing area reads on its own: scheduling, handing out work, matching,
//! status reports, the console, cancelling, rescheduling the runs of agents that went silent,
//! and the events all of that publishes.

mod cancel;
mod console;
mod events;
mod lost_contact;
mod matching;
mod reports;
mod scheduling;
mod work;
