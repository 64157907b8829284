use std::time::Duration;

use vllm_operator::api::{GpuInfo, GpuMemory, GpuProcess};

use super::*;

const GIB: u64 = 1 << 30;
const MIB: u64 = 1 << 20;

fn gpu(uuid: &str, total: u64, free: u64, pids: &[u32]) -> GpuInfo {
    GpuInfo {
        uuid: uuid.into(),
        memory: GpuMemory {
            total_bytes: total,
            free_bytes: free,
            used_bytes: total - free,
            reserved_bytes: 0,
        },
        processes: pids
            .iter()
            .map(|&pid| GpuProcess {
                pid,
                used_bytes: GIB,
                pod: None,
            })
            .collect(),
        ..GpuInfo::default()
    }
}

fn reason(last: &[GpuInfo], now: &[GpuInfo], secs: u64) -> Option<PublishReason> {
    publish_reason(
        Some(last),
        now,
        false,
        Duration::from_secs(secs),
        &Thresholds::default(),
    )
}

#[test]
fn first_read_is_always_published() {
    let now = [gpu("a", 80 * GIB, 79 * GIB, &[])];
    let r = publish_reason(None, &now, false, Duration::ZERO, &Thresholds::default());
    assert_eq!(r, Some(PublishReason::First));
}

#[test]
fn threshold_is_the_larger_of_bytes_and_percent() {
    let t = Thresholds::default();
    assert_eq!(t.free_delta_bytes(8 * GIB), 256 * MIB);
    assert_eq!(t.free_delta_bytes(80 * GIB), 80 * GIB / 100);
    let last = [gpu("a", 8 * GIB, 6 * GIB, &[])];
    assert_eq!(
        reason(&last, &[gpu("a", 8 * GIB, 6 * GIB + 256 * MIB, &[])], 1),
        None
    );
    assert!(matches!(
        reason(&last, &[gpu("a", 8 * GIB, 6 * GIB - 257 * MIB, &[])], 1),
        Some(PublishReason::FreeMoved { delta_bytes, .. }) if delta_bytes == 257 * MIB
    ));
    // 80 GiB: 500 MiB is under 1 % (819 MiB).
    let big = [gpu("b", 80 * GIB, 70 * GIB, &[])];
    assert_eq!(
        reason(&big, &[gpu("b", 80 * GIB, 70 * GIB - 500 * MIB, &[])], 1),
        None
    );
    assert!(reason(&big, &[gpu("b", 80 * GIB, 70 * GIB - 900 * MIB, &[])], 1).is_some());
}

#[test]
fn heartbeat_publishes_when_nothing_moved() {
    let last = [gpu("a", 8 * GIB, 6 * GIB, &[1])];
    assert_eq!(reason(&last, &last, 29), None);
    assert_eq!(reason(&last, &last, 30), Some(PublishReason::Heartbeat));
}

#[test]
fn process_set_change_publishes_even_without_memory_change() {
    let last = [gpu("a", 8 * GIB, 6 * GIB, &[1, 2])];
    let now = [gpu("a", 8 * GIB, 6 * GIB, &[2, 3])];
    assert_eq!(
        reason(&last, &now, 1),
        Some(PublishReason::ProcessesChanged { uuid: "a".into() })
    );
    // Same pids in another order: no change.
    let reordered = [gpu("a", 8 * GIB, 6 * GIB, &[2, 1])];
    assert_eq!(reason(&last, &reordered, 1), None);
}

#[test]
fn gpu_set_and_condition_changes_publish() {
    let last = [gpu("a", 8 * GIB, 6 * GIB, &[])];
    let now = [
        gpu("a", 8 * GIB, 6 * GIB, &[]),
        gpu("b", 8 * GIB, 8 * GIB, &[]),
    ];
    assert_eq!(reason(&last, &now, 1), Some(PublishReason::GpuSetChanged));
    assert_eq!(reason(&last, &[], 1), Some(PublishReason::GpuSetChanged));
    let r = publish_reason(
        Some(&last),
        &last,
        true,
        Duration::from_secs(1),
        &Thresholds::default(),
    );
    assert_eq!(r, Some(PublishReason::ConditionsChanged));
}

/// One hour of 1 s polls on 8 x 80 GiB GPUs whose free memory wanders by up to +-400 MiB
/// (allocator noise under a 1 % = 819 MiB threshold): only heartbeats are written.
#[test]
fn noisy_steady_state_writes_120_times_per_hour() {
    let t = Thresholds::default();
    let mut seed: u64 = 0x9e3779b97f4a7c15;
    let mut noise = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed % (800 * MIB)) as i64 - 400 * MIB as i64
    };
    let base = 60 * GIB as i64;
    let mut last: Option<Vec<GpuInfo>> = None;
    let mut since = Duration::ZERO;
    let mut writes = 0;
    for _second in 0..3600 {
        let now: Vec<GpuInfo> = (0..8)
            .map(|i| {
                gpu(
                    &format!("g{i}"),
                    80 * GIB,
                    (base + noise()) as u64,
                    &[100 + i],
                )
            })
            .collect();
        if publish_reason(last.as_deref(), &now, false, since, &t).is_some() {
            writes += 1;
            last = Some(now);
            since = Duration::ZERO;
        }
        since += Duration::from_secs(1);
    }
    // The first write plus one heartbeat every 30 s.
    assert_eq!(writes, 120, "writes per hour");
}

#[test]
fn free_summary_sums_physical_gpus() {
    let gpus = [
        gpu("a", 80 * GIB, 79 * GIB, &[]),
        gpu("b", 8 * GIB, 6 * GIB, &[]),
    ];
    assert_eq!(
        free_summary(&gpus).as_deref(),
        Some("85.0/88.0 GiB free, max 79.0")
    );
    assert_eq!(free_summary(&[]), None);
}

#[test]
fn condition_transition_time_moves_only_on_status_flip() {
    let mut c = Conditions::default();
    let t0 = Timestamp::from_second(1_700_000_000).unwrap();
    let t1 = Timestamp::from_second(1_700_000_100).unwrap();
    let state = |ok: bool, msg: &str| ConditionState {
        type_: "NvmlHealthy",
        ok,
        reason: "R".into(),
        message: msg.into(),
    };
    assert!(c.set(state(true, "3 GPUs"), t0));
    assert!(!c.set(state(true, "3 GPUs"), t1));
    assert_eq!(c.to_vec()[0].last_transition_time.0, t0);
    assert!(c.set(state(false, "lost"), t1));
    assert_eq!(c.to_vec()[0].last_transition_time.0, t1);
    assert_eq!(c.to_vec()[0].status, "False");
}
