//! The health state machine of one target.
//!
//! A target starts healthy. Active checks (periodic probes) and passive checks (outcomes of real
//! requests) each count consecutive results:
//!
//! - `unhealthy_threshold` consecutive failed probes, or `passive_threshold` consecutive failed
//!   requests, take a healthy target out;
//! - `healthy_threshold` consecutive successful probes put an unhealthy target back, whatever
//!   took it out;
//! - without active checks, a target taken out by passive checks comes back after
//!   `ejection_time`, because no probe would ever see it recover.

use super::nanos;

/// Thresholds of the active checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ActiveThresholds {
    pub healthy: u32,
    pub unhealthy: u32,
}

/// Thresholds of the passive checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PassiveThresholds {
    pub unhealthy: u32,
    /// Nanoseconds a passively ejected target stays out when there are no active checks.
    pub ejection_ns: u64,
}

/// Health-check settings of a target.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HealthParams {
    pub active: Option<ActiveThresholds>,
    pub passive: Option<PassiveThresholds>,
}

impl HealthParams {
    pub fn from_spec(spec: Option<&portcullis_config::HealthChecksSpec>) -> Self {
        let Some(spec) = spec else {
            return HealthParams::default();
        };
        HealthParams {
            active: spec.active.as_ref().map(|active| ActiveThresholds {
                healthy: active.healthy_threshold.max(1),
                unhealthy: active.unhealthy_threshold.max(1),
            }),
            passive: spec.passive.as_ref().map(|passive| PassiveThresholds {
                unhealthy: passive.unhealthy_threshold.max(1),
                ejection_ns: nanos(passive.ejection_time),
            }),
        }
    }
}

/// The kind of check that took a target out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnhealthyCause {
    ActiveCheck,
    PassiveCheck,
}

impl UnhealthyCause {
    pub fn name(self) -> &'static str {
        match self {
            UnhealthyCause::ActiveCheck => "active_check",
            UnhealthyCause::PassiveCheck => "passive_check",
        }
    }
}

/// A change of a target's health, for logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    TakenOut(UnhealthyCause),
    PutBack,
}

/// The health of one target.
#[derive(Debug, Clone, Default)]
pub struct Health {
    unhealthy: Option<Unhealthy>,
    active_successes: u32,
    active_failures: u32,
    passive_failures: u32,
}

#[derive(Debug, Clone, Copy)]
struct Unhealthy {
    cause: UnhealthyCause,
    since: u64,
}

impl Health {
    /// Returns whether the target may receive requests at `now`. A passive ejection whose time
    /// has passed ends here, and the returned transition reports it.
    pub fn poll(&mut self, params: &HealthParams, now: u64) -> (bool, Option<Transition>) {
        let Some(unhealthy) = self.unhealthy else {
            return (true, None);
        };
        if unhealthy.cause == UnhealthyCause::PassiveCheck && params.active.is_none() {
            let ejection_ns = params.passive.map_or(0, |passive| passive.ejection_ns);
            if now.saturating_sub(unhealthy.since) >= ejection_ns {
                self.put_back();
                return (true, Some(Transition::PutBack));
            }
        }
        (false, None)
    }

    /// Returns whether the target is in service, without ending an expired ejection.
    pub fn is_healthy(&self) -> bool {
        self.unhealthy.is_none()
    }

    /// Returns what took the target out and when, if it is out.
    pub fn unhealthy_since(&self) -> Option<(UnhealthyCause, u64)> {
        self.unhealthy
            .map(|unhealthy| (unhealthy.cause, unhealthy.since))
    }

    /// Returns the consecutive successful and failed probes, and the consecutive failed
    /// requests.
    pub fn counters(&self) -> (u32, u32, u32) {
        (
            self.active_successes,
            self.active_failures,
            self.passive_failures,
        )
    }

    /// Records the result of one active probe.
    pub fn record_probe(
        &mut self,
        params: &HealthParams,
        success: bool,
        now: u64,
    ) -> Option<Transition> {
        let thresholds = params.active?;
        if success {
            self.active_failures = 0;
            self.active_successes = self.active_successes.saturating_add(1);
            if self.unhealthy.is_some() && self.active_successes >= thresholds.healthy {
                self.put_back();
                return Some(Transition::PutBack);
            }
            return None;
        }
        self.active_successes = 0;
        self.active_failures = self.active_failures.saturating_add(1);
        if self.unhealthy.is_none() && self.active_failures >= thresholds.unhealthy {
            self.take_out(UnhealthyCause::ActiveCheck, now);
            return Some(Transition::TakenOut(UnhealthyCause::ActiveCheck));
        }
        None
    }

    /// Records the outcome of one real request.
    pub fn record_request(
        &mut self,
        params: &HealthParams,
        success: bool,
        now: u64,
    ) -> Option<Transition> {
        let thresholds = params.passive?;
        if success {
            self.passive_failures = 0;
            return None;
        }
        self.passive_failures = self.passive_failures.saturating_add(1);
        if self.unhealthy.is_none() && self.passive_failures >= thresholds.unhealthy {
            self.take_out(UnhealthyCause::PassiveCheck, now);
            return Some(Transition::TakenOut(UnhealthyCause::PassiveCheck));
        }
        None
    }

    fn take_out(&mut self, cause: UnhealthyCause, now: u64) {
        self.unhealthy = Some(Unhealthy { cause, since: now });
        // Recovery counts from the moment the target went out.
        self.active_successes = 0;
    }

    fn put_back(&mut self) {
        *self = Health::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: u64 = 1_000_000_000;

    fn params(active: bool, passive: bool) -> HealthParams {
        HealthParams {
            active: active.then_some(ActiveThresholds {
                healthy: 2,
                unhealthy: 3,
            }),
            passive: passive.then_some(PassiveThresholds {
                unhealthy: 2,
                ejection_ns: 30 * SECOND,
            }),
        }
    }

    #[test]
    fn probes_take_out_and_put_back() {
        let params = params(true, false);
        let mut health = Health::default();
        assert_eq!(health.record_probe(&params, false, 1), None);
        assert_eq!(health.record_probe(&params, false, 2), None);
        assert_eq!(
            health.record_probe(&params, false, 3),
            Some(Transition::TakenOut(UnhealthyCause::ActiveCheck))
        );
        assert!(!health.poll(&params, 4).0);
        assert_eq!(health.record_probe(&params, true, 5), None);
        assert!(!health.is_healthy(), "one success is below the threshold");
        assert_eq!(
            health.record_probe(&params, true, 6),
            Some(Transition::PutBack)
        );
        assert!(health.poll(&params, 7).0);
    }

    #[test]
    fn success_resets_failure_count() {
        let params = params(true, true);
        let mut health = Health::default();
        health.record_probe(&params, false, 1);
        health.record_probe(&params, false, 2);
        health.record_probe(&params, true, 3);
        assert_eq!(health.record_probe(&params, false, 4), None);
        assert!(health.is_healthy());

        health.record_request(&params, false, 5);
        health.record_request(&params, true, 6);
        assert_eq!(health.record_request(&params, false, 7), None);
        assert!(health.is_healthy());
    }

    #[test]
    fn passive_failures_eject_until_probe_recovers() {
        let params = params(true, true);
        let mut health = Health::default();
        health.record_request(&params, false, SECOND);
        assert_eq!(
            health.record_request(&params, false, SECOND),
            Some(Transition::TakenOut(UnhealthyCause::PassiveCheck))
        );
        // With active checks, time alone does not bring the target back.
        assert!(!health.poll(&params, 100 * SECOND).0);
        health.record_probe(&params, true, 101 * SECOND);
        assert_eq!(
            health.record_probe(&params, true, 102 * SECOND),
            Some(Transition::PutBack)
        );
    }

    #[test]
    fn passive_ejection_expires_without_probes() {
        let params = params(false, true);
        let mut health = Health::default();
        health.record_request(&params, false, SECOND);
        health.record_request(&params, false, SECOND);
        assert_eq!(health.poll(&params, 30 * SECOND), (false, None));
        assert_eq!(
            health.poll(&params, 31 * SECOND),
            (true, Some(Transition::PutBack))
        );
        assert_eq!(health.counters(), (0, 0, 0));
    }

    #[test]
    fn disabled_checks_record_nothing() {
        let params = params(false, false);
        let mut health = Health::default();
        for now in 0..10 {
            assert_eq!(health.record_probe(&params, false, now), None);
            assert_eq!(health.record_request(&params, false, now), None);
        }
        assert!(health.is_healthy());
    }
}
