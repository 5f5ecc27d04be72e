//! What agents told the hub beyond acks: health and drift reports, agent version, last contact.
//! (Adapters over [`crate::delivery::Hub`], so the status code reads plain values.)

use std::time::SystemTime;

use crate::delivery::Hub;

/// An agent's latest report for one delivery.
#[derive(Debug, Clone)]
pub struct ReportView {
    /// The bundle sequence it is about.
    pub sequence: u64,
    /// `Healthy`, `Progressing`, `Degraded` or `Unknown`.
    pub health: String,
    /// Objects drifted now.
    pub drifted_objects: u32,
    /// Objects in the delivery's inventory.
    pub inventory_objects: u32,
    /// What the agent says, in words.
    pub message: String,
}

/// What the hub knows of a cluster's agent.
#[derive(Debug, Clone)]
pub struct AgentView {
    /// The agent's version.
    pub agent_version: Option<String>,
    /// Last message from it.
    pub last_seen: Option<SystemTime>,
}

/// The latest report of `cluster`'s agent for `delivery`.
pub fn report_for(hub: &Hub, cluster: &str, delivery: &str) -> Option<ReportView> {
    let r = hub.report(cluster, delivery)?;
    let mut message = r.message.clone();
    if !r.drifted.is_empty() {
        let drifted = format!("drifted: {}", r.drifted.join(", "));
        message = if message.is_empty() {
            drifted
        } else {
            format!("{message}; {drifted}")
        };
    }
    Some(ReportView {
        sequence: r.sequence,
        health: format!("{:?}", r.health),
        drifted_objects: r.drifted_objects,
        inventory_objects: r.inventory_objects,
        message,
    })
}

/// What the hub knows of `cluster`'s agent.
pub fn agent_info_for(hub: &Hub, cluster: &str) -> Option<AgentView> {
    let a = hub.agent_info(cluster)?;
    Some(AgentView {
        agent_version: Some(a.agent_version),
        last_seen: Some(a.last_seen),
    })
}
