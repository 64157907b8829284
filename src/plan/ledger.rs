//! Reservations: GPUs and bytes promised to pods that are placed but not yet visible in their
//! node agent's report. Without them two replicas could count on the same free memory.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;

use super::fleet::Fleet;
use crate::api::PodRef;

#[derive(Clone, Debug, PartialEq)]
pub struct Reservation {
    pub pod: PodRef,
    pub node: String,
    /// Exclusive sharing: GPUs taken from the node's unallocated pool (the kubelet picks which).
    pub gpus: u32,
    /// Shared sharing: bytes that may land on any of the node's GPUs.
    pub shared_bytes: u64,
    /// DRA path: the UUIDs of the exact GPUs booked (`gpus` of them). No other replica is
    /// planned on them until the reservation ends, by the same rules as the others.
    pub exact_gpus: Vec<String>,
    pub created_at: Timestamp,
}

/// Why a reservation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Released {
    /// The agent's report shows the pod on its GPUs.
    Reported,
    /// Nothing showed up in time; the pod failed or never started.
    TimedOut,
    /// The node is gone from the fleet.
    NodeGone,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Ledger {
    reservations: BTreeMap<PodRef, Reservation>,
}

impl Ledger {
    pub fn reserve(&mut self, r: Reservation) {
        self.reservations.insert(r.pod.clone(), r);
    }

    pub fn release(&mut self, pod: &PodRef) -> Option<Reservation> {
        self.reservations.remove(pod)
    }

    pub fn get(&self, pod: &PodRef) -> Option<&Reservation> {
        self.reservations.get(pod)
    }

    pub fn len(&self) -> usize {
        self.reservations.len()
    }

    pub fn is_empty(&self) -> bool {
        self.reservations.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Reservation> {
        self.reservations.values()
    }

    /// GPUs reserved on `node` (exclusive sharing).
    pub fn reserved_gpus(&self, node: &str) -> u32 {
        self.reservations
            .values()
            .filter(|r| r.node == node)
            .fold(0u32, |sum, r| sum.saturating_add(r.gpus))
    }

    /// Bytes reserved on every GPU of `node` (shared sharing).
    pub fn reserved_shared_bytes(&self, node: &str) -> u64 {
        self.reservations
            .values()
            .filter(|r| r.node == node)
            .fold(0u64, |sum, r| sum.saturating_add(r.shared_bytes))
    }

    /// Drop reservations the fleet now accounts for (a GPU allocated to the pod, or a process of
    /// the pod, in a report taken after the reservation), those older than `timeout`, and those
    /// on nodes that left the fleet.
    pub fn settle(
        &mut self,
        fleet: &Fleet,
        now: Timestamp,
        timeout: Duration,
    ) -> Vec<(PodRef, Released)> {
        let mut out = Vec::new();
        self.reservations.retain(|pod, r| {
            let Some(node) = fleet.node(&r.node) else {
                out.push((pod.clone(), Released::NodeGone));
                return false;
            };
            let reported_after = node.observed_at.is_some_and(|t| t > r.created_at);
            let visible = node.gpus.iter().any(|g| {
                g.allocated_to.as_ref() == Some(pod)
                    || g.processes.iter().any(|(_, _, p)| p.as_ref() == Some(pod))
            });
            if reported_after && visible {
                out.push((pod.clone(), Released::Reported));
                return false;
            }
            let age = now.duration_since(r.created_at).as_secs().max(0) as u64;
            if age > timeout.as_secs() {
                out.push((pod.clone(), Released::TimedOut));
                return false;
            }
            true
        });
        out
    }
}
