//! Leader election on a `coordination.k8s.io/v1` Lease. The decision is a pure function of the
//! Lease and what this replica observed of it; the I/O is a get and a resourceVersion-guarded
//! replace (or a create), so two replicas can never both win one round.
//!
//! Expiry is measured on this replica's clock from when it last saw the Lease record change
//! (as client-go does), not from the holder's `renewTime`, so clock skew cannot hand the
//! lease to two replicas.
//!
//! The holder stops leading at its last successful renewal + [`RENEW_DEADLINE`], timed from
//! *before* that renewal was sent and enforced by a timer, so a request that hangs cannot keep
//! it leading past the moment a standby may take over (last seen change + [`LEASE_DURATION`]).
//! The timings are client-go's defaults and rules
//! (staging/src/k8s.io/client-go/tools/leaderelection/leaderelection.go, Kubernetes v1.34:
//! `NewLeaderElector` requires LeaseDuration > RenewDeadline > JitterFactor x RetryPeriod;
//! `renew` gives up when no `tryAcquireOrRenew` succeeded within RenewDeadline, and
//! `tryAcquireOrRenew` takes `now` before it reads or writes the lock).
//!
//! kube-lease-manager 0.13 (kube 5, k8s-openapi 0.29: no second copy) was considered and not
//! used: it computes expiry as the holder's `renewTime` + duration (src/state.rs, `sync`), so a
//! standby whose clock runs ahead takes a live lease, and it offers no injectable clock.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::Api;
use kube::api::PostParams;
use tokio::sync::watch;
use tokio::time::Instant;

/// How long a standby waits without seeing the Lease change before it takes over
/// (client-go's default LeaseDuration).
pub const LEASE_DURATION: Duration = Duration::from_secs(15);
/// How long the holder keeps leading after its last successful renewal (client-go's default
/// RenewDeadline); must stay below [`LEASE_DURATION`].
pub const RENEW_DEADLINE: Duration = Duration::from_secs(10);
/// Pause between rounds (client-go's default RetryPeriod).
pub const RETRY_PERIOD: Duration = Duration::from_secs(2);

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LeaseDecision {
    /// Nobody holds it, or the holder stopped renewing: take it.
    Acquire,
    /// We hold it: renew.
    Renew,
    /// Someone else holds a live lease.
    Standby { holder: String },
}

/// What identifies one renewal of the lease: a change means the holder is alive.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Record {
    holder: Option<String>,
    renew_time: Option<Timestamp>,
    transitions: Option<i32>,
}

impl Record {
    fn of(spec: &LeaseSpec) -> Self {
        Record {
            holder: spec.holder_identity.clone().filter(|h| !h.is_empty()),
            renew_time: spec.renew_time.as_ref().map(|t| t.0),
            transitions: spec.lease_transitions,
        }
    }
}

/// One replica's view of the election.
#[derive(Clone, Debug)]
pub struct Elector {
    pub identity: String,
    pub lease_duration: Duration,
    observed: Option<(Record, Timestamp)>,
}

impl Elector {
    pub fn new(identity: impl Into<String>, lease_duration: Duration) -> Self {
        Elector {
            identity: identity.into(),
            lease_duration,
            observed: None,
        }
    }

    /// Decide from the lease as read now (`None`: it does not exist yet).
    pub fn decide(&mut self, lease: Option<&LeaseSpec>, now: Timestamp) -> LeaseDecision {
        let Some(spec) = lease else {
            return LeaseDecision::Acquire;
        };
        let record = Record::of(spec);
        let Some(holder) = record.holder.clone() else {
            return LeaseDecision::Acquire;
        };
        if holder == self.identity {
            return LeaseDecision::Renew;
        }
        let observed_at = match &self.observed {
            Some((seen, at)) if *seen == record => *at,
            _ => {
                self.observed = Some((record, now));
                now
            }
        };
        let duration = spec
            .lease_duration_seconds
            .map(|s| Duration::from_secs(s.max(1) as u64))
            .unwrap_or(self.lease_duration);
        let silent = now.duration_since(observed_at);
        if silent > SignedDuration::try_from(duration).unwrap_or(SignedDuration::MAX) {
            LeaseDecision::Acquire
        } else {
            LeaseDecision::Standby { holder }
        }
    }

    /// The spec to write for `decision` (Acquire or Renew) over the current one.
    pub fn lease_spec(
        &self,
        current: Option<&LeaseSpec>,
        decision: &LeaseDecision,
        now: Timestamp,
    ) -> LeaseSpec {
        let mut spec = current.cloned().unwrap_or_default();
        let taking_over = *decision == LeaseDecision::Acquire;
        if taking_over {
            let changed_hands = spec
                .holder_identity
                .as_deref()
                .is_some_and(|h| !h.is_empty() && h != self.identity);
            spec.lease_transitions =
                Some(spec.lease_transitions.unwrap_or(0) + i32::from(changed_hands));
            spec.acquire_time = Some(MicroTime(now));
        }
        spec.holder_identity = Some(self.identity.clone());
        spec.lease_duration_seconds = Some(self.lease_duration.as_secs() as i32);
        spec.renew_time = Some(MicroTime(now));
        spec
    }

    /// The spec that hands the lease back on shutdown: no holder, so a standby takes it at once.
    pub fn released_spec(&self, current: &LeaseSpec, now: Timestamp) -> LeaseSpec {
        LeaseSpec {
            holder_identity: None,
            lease_duration_seconds: Some(1),
            renew_time: Some(MicroTime(now)),
            ..current.clone()
        }
    }
}

/// What the election loop publishes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LeaderState {
    pub leader: bool,
    /// The last round read the Lease; false after an API error.
    pub healthy: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error("read Lease {name}: {source}")]
    Read { name: String, source: kube::Error },
    #[error("write Lease {name}: {source}")]
    Write { name: String, source: kube::Error },
    #[error("Lease {name}: no answer within {after:?}")]
    Timeout { name: String, after: Duration },
}

fn write_params() -> PostParams {
    PostParams {
        field_manager: Some(super::apply::FIELD_MANAGER.into()),
        ..PostParams::default()
    }
}

/// One round: read, decide, write. Returns whether we lead after it.
pub async fn round(
    api: &Api<Lease>,
    name: &str,
    elector: &mut Elector,
    now: Timestamp,
) -> Result<bool, LeaseError> {
    let current = api.get_opt(name).await.map_err(|source| LeaseError::Read {
        name: name.into(),
        source,
    })?;
    let spec = current.as_ref().and_then(|l| l.spec.as_ref());
    let decision = elector.decide(spec, now);
    if let LeaseDecision::Standby { .. } = decision {
        return Ok(false);
    }
    let lease = Lease {
        metadata: ObjectMeta {
            name: Some(name.into()),
            resource_version: current
                .as_ref()
                .and_then(|l| l.metadata.resource_version.clone()),
            ..current
                .as_ref()
                .map(|l| l.metadata.clone())
                .unwrap_or_default()
        },
        spec: Some(elector.lease_spec(spec, &decision, now)),
    };
    let params = write_params();
    let written = match current {
        None => api.create(&params, &lease).await,
        // resourceVersion-guarded: a replica that read the same version loses with 409.
        Some(_) => api.replace(name, &params, &lease).await,
    };
    match written {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
        Err(source) => Err(LeaseError::Write {
            name: name.into(),
            source,
        }),
    }
}

/// Whether this replica leads, on a monotonic clock: it leads until the last successful
/// renewal, timed from before the request was sent, + the renew deadline.
#[derive(Clone, Copy, Debug)]
pub struct Leadership {
    renew_deadline: Duration,
    renewed_at: Option<Instant>,
}

impl Leadership {
    pub fn new(renew_deadline: Duration) -> Self {
        Leadership {
            renew_deadline,
            renewed_at: None,
        }
    }

    /// A renewal (or acquisition) sent at `sent_at` succeeded.
    pub fn renewed(&mut self, sent_at: Instant) {
        self.renewed_at = Some(sent_at);
    }

    /// Someone else holds the lease now.
    pub fn lost(&mut self) {
        self.renewed_at = None;
    }

    /// When leadership ends unless renewed before; `None` when not leading.
    pub fn deadline(&self) -> Option<Instant> {
        self.renewed_at.map(|t| t + self.renew_deadline)
    }

    pub fn leading(&self, now: Instant) -> bool {
        self.deadline().is_some_and(|d| now < d)
    }

    /// How long a request sent at `now` may take: until the deadline while leading (a renewal
    /// that answers later is worthless), else one renew deadline.
    pub fn request_budget(&self, now: Instant) -> Duration {
        match self.deadline() {
            Some(d) if d > now => d - now,
            Some(_) => Duration::ZERO,
            None => self.renew_deadline,
        }
    }
}

/// Run the election until `shutdown` turns true; hands the lease back if it held it.
pub async fn run(
    api: Api<Lease>,
    name: String,
    elector: Elector,
    state: watch::Sender<LeaderState>,
    shutdown: watch::Receiver<bool>,
) {
    run_with(
        api,
        name,
        elector,
        (RENEW_DEADLINE, RETRY_PERIOD),
        state,
        shutdown,
    )
    .await
}

/// [`run`] with the renew deadline and retry period given (tests shorten them).
pub async fn run_with(
    api: Api<Lease>,
    name: String,
    mut elector: Elector,
    (renew_deadline, retry_period): (Duration, Duration),
    state: watch::Sender<LeaderState>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut leadership = Leadership::new(renew_deadline);
    loop {
        // Both clocks are read before the request goes out.
        let sent_at = Instant::now();
        let budget = leadership.request_budget(sent_at);
        let outcome =
            match tokio::time::timeout(budget, round(&api, &name, &mut elector, Timestamp::now()))
                .await
            {
                Ok(r) => r,
                Err(_) => Err(LeaseError::Timeout {
                    name: name.clone(),
                    after: budget,
                }),
            };
        match &outcome {
            Ok(true) => leadership.renewed(sent_at),
            Ok(false) => leadership.lost(),
            // A leader that cannot renew keeps leading until its deadline, not one moment
            // longer: the timer below ends it even if no round completes.
            Err(e) => tracing::warn!(error = %e, "leader election round failed"),
        }
        state.send_replace(LeaderState {
            leader: leadership.leading(Instant::now()),
            healthy: outcome.is_ok(),
        });
        let next = Instant::now() + retry_period;
        let wake = match leadership.deadline() {
            Some(d) if d < next => d,
            _ => next,
        };
        tokio::select! {
            _ = tokio::time::sleep_until(wake) => {}
            _ = shutdown.changed() => break,
        }
        if *shutdown.borrow() {
            break;
        }
        if !leadership.leading(Instant::now()) && state.borrow().leader {
            state.send_modify(|s| s.leader = false);
        }
    }
    if leadership.leading(Instant::now()) {
        let _ = tokio::time::timeout(renew_deadline, release(&api, &name, &elector)).await;
    }
}

async fn release(api: &Api<Lease>, name: &str, elector: &Elector) {
    let Ok(Some(current)) = api.get_opt(name).await else {
        return;
    };
    let Some(spec) = current.spec.as_ref() else {
        return;
    };
    if spec.holder_identity.as_deref() != Some(elector.identity.as_str()) {
        return;
    }
    let lease = Lease {
        metadata: current.metadata.clone(),
        spec: Some(elector.released_spec(spec, Timestamp::now())),
    };
    if let Err(e) = api.replace(name, &write_params(), &lease).await {
        tracing::warn!(error = %e, "could not hand the lease back; the standby takes it when it expires");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).unwrap()
    }

    fn held_by(holder: &str, renewed: i64) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(holder.into()),
            lease_duration_seconds: Some(15),
            renew_time: Some(MicroTime(t(renewed))),
            lease_transitions: Some(0),
            ..Default::default()
        }
    }

    #[test]
    fn a_missing_or_empty_lease_is_acquired() {
        let mut e = Elector::new("a", LEASE_DURATION);
        assert_eq!(e.decide(None, t(0)), LeaseDecision::Acquire);
        assert_eq!(
            e.decide(Some(&LeaseSpec::default()), t(0)),
            LeaseDecision::Acquire
        );
        let released = e.released_spec(&held_by("b", 0), t(1));
        assert_eq!(e.decide(Some(&released), t(1)), LeaseDecision::Acquire);
    }

    #[test]
    fn the_holder_renews() {
        let mut e = Elector::new("a", LEASE_DURATION);
        assert_eq!(
            e.decide(Some(&held_by("a", -100)), t(0)),
            LeaseDecision::Renew
        );
    }

    #[test]
    fn a_live_holder_is_respected_and_a_silent_one_replaced() {
        let mut e = Elector::new("a", LEASE_DURATION);
        let lease = held_by("b", 0);
        let standby = LeaseDecision::Standby { holder: "b".into() };
        assert_eq!(e.decide(Some(&lease), t(0)), standby);
        assert_eq!(e.decide(Some(&lease), t(15)), standby);
        // No renewal seen for more than the lease duration, on our own clock.
        assert_eq!(e.decide(Some(&lease), t(16)), LeaseDecision::Acquire);
    }

    #[test]
    fn renewals_keep_the_holder_even_with_a_skewed_clock() {
        let mut e = Elector::new("a", LEASE_DURATION);
        // The holder's clock is an hour behind: its renewTime looks ancient to us.
        assert!(matches!(
            e.decide(Some(&held_by("b", -3600)), t(0)),
            LeaseDecision::Standby { .. }
        ));
        assert!(matches!(
            e.decide(Some(&held_by("b", -3595)), t(10)),
            LeaseDecision::Standby { .. }
        ));
        assert!(matches!(
            e.decide(Some(&held_by("b", -3590)), t(20)),
            LeaseDecision::Standby { .. }
        ));
    }

    #[test]
    fn client_go_timing_rules_hold() {
        // leaderelection.go NewLeaderElector: LeaseDuration > RenewDeadline > 1.2 x RetryPeriod.
        assert!(LEASE_DURATION > RENEW_DEADLINE);
        assert!(RENEW_DEADLINE.as_secs_f64() > 1.2 * RETRY_PERIOD.as_secs_f64());
    }

    #[test]
    fn leadership_ends_at_the_last_renewal_sent_plus_the_deadline() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut l = Leadership::new(RENEW_DEADLINE);
        assert!(!l.leading(t0));
        assert_eq!(l.request_budget(t0), RENEW_DEADLINE);
        // Sent at t0, answered 4 s later: the deadline counts from t0, not from the answer.
        l.renewed(t0);
        assert!(l.leading(t0 + s(4)));
        assert!(l.leading(t0 + s(9)));
        assert!(!l.leading(t0 + s(10)));
        // A request sent at t0 + 7 s may take 3 s, no more.
        assert_eq!(l.request_budget(t0 + s(7)), s(3));
        assert_eq!(l.request_budget(t0 + s(12)), Duration::ZERO);
        // The holder stops before a standby that saw the last change at t0 may take over.
        assert!(t0 + RENEW_DEADLINE < t0 + LEASE_DURATION);
        l.renewed(t0 + s(8));
        assert!(l.leading(t0 + s(17)));
        l.lost();
        assert!(!l.leading(t0 + s(9)));
    }

    #[test]
    fn taking_over_counts_a_transition() {
        let e = Elector::new("a", LEASE_DURATION);
        let spec = e.lease_spec(Some(&held_by("b", 0)), &LeaseDecision::Acquire, t(20));
        assert_eq!(spec.holder_identity.as_deref(), Some("a"));
        assert_eq!(spec.lease_transitions, Some(1));
        assert_eq!(spec.acquire_time, Some(MicroTime(t(20))));
        assert_eq!(spec.lease_duration_seconds, Some(15));
        let renewed = e.lease_spec(Some(&spec), &LeaseDecision::Renew, t(25));
        assert_eq!(renewed.lease_transitions, Some(1));
        assert_eq!(renewed.acquire_time, Some(MicroTime(t(20))));
        assert_eq!(renewed.renew_time, Some(MicroTime(t(25))));
    }
}
