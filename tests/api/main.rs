//! Integration tests: the real server on a free port, spoken to over HTTP.

mod access;
mod agent_identity;
mod agent_runtime;
mod agent_tasks;
mod agent_tls;
mod agents_api;
mod architecture;
mod audit;
mod build_cause;
mod config_repos;
mod connections;
mod console_stream;
mod cross_site;
mod gocd_shape;
mod helpers;
mod jobs;
mod lifecycle;
mod live_views;
mod materials;
mod pipelines;
mod pipelines_agent;
mod registration;
mod robustness;
mod show_all;
mod streams;
mod timers;
