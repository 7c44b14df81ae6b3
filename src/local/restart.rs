//! When the supervisor restarts a component that exited, and when it gives
//! up: a capped exponential back-off (as the kubelet's CrashLoopBackOff and
//! systemd's `RestartSec` with `StartLimitBurst`), kept as plain data so unit
//! tests reach it without processes or clocks.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::components::Component;

/// The restart rule every component follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    /// The delay before the first restart; doubled for each crash in a row.
    pub base: Duration,
    /// The longest delay.
    pub cap: Duration,
    /// A run at least this long was healthy: the next crash starts the
    /// back-off again from `base`.
    pub stable: Duration,
    /// More than `burst` exits within `window` and the component is given up on.
    pub burst: usize,
    pub window: Duration,
}

impl Policy {
    /// The supervisor's rule: 0.25 s doubling to 8 s; five restarts within
    /// two minutes are the most it tries.
    pub const DEFAULT: Policy = Policy {
        base: Duration::from_millis(250),
        cap: Duration::from_secs(8),
        stable: Duration::from_secs(60),
        burst: 5,
        window: Duration::from_secs(120),
    };

    /// The delay before restart number `in_a_row` (0-based) of a crash loop.
    pub fn delay(&self, in_a_row: u32) -> Duration {
        let factor = 1u32.checked_shl(in_a_row.min(16)).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.cap)
    }
}

/// What to do about a component that just exited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Start it again after this delay.
    RestartAfter(Duration),
    /// It keeps crashing: stop trying, and say so.
    GiveUp,
}

/// One component's exits, as the policy needs them.
#[derive(Clone, Debug, Default)]
pub struct History {
    exits: VecDeque<Instant>,
    in_a_row: u32,
}

impl History {
    /// Records an exit at `now` of a run that started at `started`.
    pub fn exited(&mut self, policy: &Policy, started: Instant, now: Instant) -> Decision {
        if now.saturating_duration_since(started) >= policy.stable {
            self.in_a_row = 0;
        }
        self.exits.push_back(now);
        while self
            .exits
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) > policy.window)
        {
            self.exits.pop_front();
        }
        if self.exits.len() > policy.burst {
            return Decision::GiveUp;
        }
        let delay = policy.delay(self.in_a_row);
        self.in_a_row += 1;
        Decision::RestartAfter(delay)
    }
}

/// What must be up before `c` is (re)started: the API server needs etcd;
/// everything that talks to the API server needs it ready; the kubelet
/// also needs its container runtime.
pub fn needs(c: Component) -> &'static [Component] {
    match c {
        Component::Etcd | Component::Containerd => &[],
        Component::ApiServer => &[Component::Etcd],
        Component::ControllerManager
        | Component::Scheduler
        | Component::Node
        | Component::KubeProxy => &[Component::ApiServer],
        Component::Kubelet => &[Component::ApiServer, Component::Containerd],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: Policy = Policy::DEFAULT;

    #[test]
    fn delay_doubles_up_to_the_cap() {
        let ms = |n| P.delay(n).as_millis();
        assert_eq!(
            [ms(0), ms(1), ms(2), ms(3), ms(4), ms(5), ms(40)],
            [250, 500, 1000, 2000, 4000, 8000, 8000]
        );
    }

    #[test]
    fn a_crash_loop_backs_off_then_is_given_up() {
        let t0 = Instant::now();
        let mut h = History::default();
        let mut decisions = Vec::new();
        for i in 0..6 {
            let at = t0 + Duration::from_secs(i);
            decisions.push(h.exited(&P, at, at + Duration::from_millis(100)));
        }
        let after = |ms| Decision::RestartAfter(Duration::from_millis(ms));
        assert_eq!(
            decisions,
            [
                after(250),
                after(500),
                after(1000),
                after(2000),
                after(4000),
                Decision::GiveUp
            ]
        );
    }

    #[test]
    fn exits_spread_out_are_restarted_forever() {
        // One kill every three minutes: never more than one in a window,
        // and each run was stable, so every restart is quick.
        let t0 = Instant::now();
        let mut h = History::default();
        for i in 0..50 {
            let start = t0 + Duration::from_secs(180 * i);
            let d = h.exited(&P, start, start + Duration::from_secs(179));
            assert_eq!(d, Decision::RestartAfter(P.base), "exit {i}");
        }
    }

    #[test]
    fn a_stable_run_resets_the_back_off_but_not_the_window() {
        let t0 = Instant::now();
        let mut h = History::default();
        let quick = |s| t0 + Duration::from_millis(s);
        assert_eq!(
            h.exited(&P, t0, quick(10)),
            Decision::RestartAfter(P.delay(0))
        );
        assert_eq!(
            h.exited(&P, quick(20), quick(30)),
            Decision::RestartAfter(P.delay(1))
        );
        // A run longer than `stable`: back to the base delay.
        let long_start = quick(40);
        let long_end = long_start + P.stable;
        assert_eq!(
            h.exited(&P, long_start, long_end),
            Decision::RestartAfter(P.base)
        );
    }

    #[test]
    fn order_follows_dependencies() {
        assert_eq!(needs(Component::ApiServer), [Component::Etcd]);
        assert!(needs(Component::Etcd).is_empty());
        for c in [
            Component::ControllerManager,
            Component::Scheduler,
            Component::Node,
        ] {
            assert_eq!(needs(c), [Component::ApiServer], "{c:?}");
        }
        assert!(needs(Component::Kubelet).contains(&Component::Containerd));
    }
}
