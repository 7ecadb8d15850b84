//! The restart decision, in one place: what a supervisor does when a child
//! exits or fails to start again. Pure: no actors, no clocks of its own
//! (callers pass `now`), so it is tested directly against OTP's rules.
//!
//! Used by the [`Supervisor`](super::Supervisor) actor for its children, and
//! by the driver of every top-level actor, which restarts itself under the
//! runtime's `user` supervisor without a round trip through it (the same
//! decision, made where the exit happens).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::{ChildExit, Restart};

/// Restart intensity: at most `max_restarts` restarts within `period`.
///
/// Troupe's default is 3 restarts in 5 s. OTP's is 1 in 5 s; ours allows a
/// little more because a restart here costs microseconds, not a process, while
/// still stopping a crash loop within the first second of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Intensity {
    /// Restarts allowed within `period`; one more escalates.
    pub max_restarts: u32,
    /// The sliding window.
    pub period: Duration,
}

impl Intensity {
    /// At most `max_restarts` in `period`.
    pub const fn new(max_restarts: u32, period: Duration) -> Self {
        Self {
            max_restarts,
            period,
        }
    }
}

impl Default for Intensity {
    fn default() -> Self {
        Self::new(3, Duration::from_secs(5))
    }
}

/// Delay before a restart: `initial`, doubled for each further restart in the
/// current intensity window, capped at `max`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    /// Delay before the first restart in a window.
    pub initial: Duration,
    /// Upper bound.
    pub max: Duration,
}

impl Backoff {
    /// Exponential backoff from `initial` up to `max`.
    pub const fn exponential(initial: Duration, max: Duration) -> Self {
        Self { initial, max }
    }

    pub(crate) fn delay(&self, restarts_in_window: usize) -> Duration {
        let doublings = restarts_in_window.saturating_sub(1).min(30) as u32;
        self.initial.saturating_mul(1u32 << doublings).min(self.max)
    }
}

/// How a child exited.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Exit {
    /// A panic, an error or a kill (OTP: any reason but `normal`/`shutdown`).
    pub(crate) abnormal: bool,
    pub(crate) reason: String,
}

/// What one child's spec says about restarting it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ChildRules {
    pub(crate) restart: Restart,
    /// The child's own cap over its life (Ray's `max_restarts`); `None`:
    /// only the supervisor's intensity limits it.
    pub(crate) max_restarts: Option<u32>,
}

/// What to do with a child that exited.
#[derive(Clone, Debug, PartialEq, Eq)]
#[must_use]
pub(crate) enum Verdict {
    /// Start it again (after `delay`); `restarts` is its count once it has.
    Restart { delay: Duration, restarts: u32 },
    /// Leave it dead; the reason goes to its exit hook.
    Remove(ChildExit),
    /// The supervisor's intensity is exceeded: stop everything and fail.
    Escalate,
}

/// How far back restarts count for the backoff when there is no intensity.
const UNLIMITED_PERIOD: Duration = Duration::from_secs(60);
/// Restarts remembered without an intensity (the backoff's doublings stop
/// at 30).
const MAX_COUNTED: usize = 32;

/// A supervisor's sliding window of recent restarts.
#[derive(Clone, Debug)]
pub(crate) struct Window {
    intensity: Option<Intensity>,
    backoff: Option<Backoff>,
    recent: VecDeque<Instant>,
}

impl Window {
    /// `None` intensity: never escalates (each child carries its own cap).
    pub(crate) fn new(intensity: Option<Intensity>, backoff: Option<Backoff>) -> Self {
        Self {
            intensity,
            backoff,
            recent: VecDeque::new(),
        }
    }

    /// Records one restart at `now`; false when that exceeds the intensity.
    /// Without an intensity the window still counts recent restarts (over
    /// `UNLIMITED_PERIOD`), so that a backoff grows in a crash loop.
    fn record(&mut self, now: Instant) -> bool {
        let period = self
            .intensity
            .map_or(UNLIMITED_PERIOD, |limit| limit.period);
        while self
            .recent
            .front()
            .is_some_and(|t| now.duration_since(*t) > period)
        {
            self.recent.pop_front();
        }
        self.recent.push_back(now);
        match self.intensity {
            Some(limit) => self.recent.len() <= limit.max_restarts as usize,
            None => {
                // Only the count matters, and past 31 the delay is capped.
                if self.recent.len() > MAX_COUNTED {
                    self.recent.pop_front();
                }
                true
            }
        }
    }

    fn delay(&self) -> Duration {
        self.backoff
            .map(|b| b.delay(self.recent.len()))
            .unwrap_or(Duration::ZERO)
    }

    /// A child with `rules` and `restarts` so far exited with `exit`.
    /// `allowed` is false when its owner vetoed restarts (a kill with
    /// `no_restart`, or its last handle dropped).
    pub(crate) fn after_exit(
        &mut self,
        rules: ChildRules,
        restarts: u32,
        exit: Exit,
        allowed: bool,
        now: Instant,
    ) -> Verdict {
        let wanted = match rules.restart {
            Restart::Permanent => true,
            Restart::Transient => exit.abnormal,
            Restart::Temporary => false,
        };
        if !wanted || !allowed {
            return Verdict::Remove(if exit.abnormal {
                ChildExit::Failed(exit.reason)
            } else {
                ChildExit::Stopped
            });
        }
        self.restart_or_give_up(rules, restarts, exit.reason, now)
    }

    /// Starting a child again failed with `error`: that counts as another
    /// failure of it (OTP), against its cap and the intensity.
    pub(crate) fn after_failed_start(
        &mut self,
        rules: ChildRules,
        restarts: u32,
        error: String,
        now: Instant,
    ) -> Verdict {
        self.restart_or_give_up(rules, restarts, error, now)
    }

    fn restart_or_give_up(
        &mut self,
        rules: ChildRules,
        restarts: u32,
        reason: String,
        now: Instant,
    ) -> Verdict {
        if rules.max_restarts.is_some_and(|max| restarts >= max) {
            return Verdict::Remove(ChildExit::RestartsExhausted {
                restarts,
                last_error: reason,
            });
        }
        if !self.record(now) {
            return Verdict::Escalate;
        }
        Verdict::Restart {
            delay: self.delay(),
            restarts: restarts + 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exit(abnormal: bool) -> Exit {
        Exit {
            abnormal,
            reason: if abnormal { "boom" } else { "normal" }.to_owned(),
        }
    }

    fn rules(restart: Restart) -> ChildRules {
        ChildRules {
            restart,
            max_restarts: None,
        }
    }

    fn restarts(v: &Verdict) -> bool {
        matches!(v, Verdict::Restart { .. })
    }

    #[test]
    fn restart_types_follow_otp() {
        let now = Instant::now();
        let mut w = Window::new(None, None);
        // permanent: always; transient: abnormal only; temporary: never.
        assert!(restarts(&w.after_exit(
            rules(Restart::Permanent),
            0,
            exit(false),
            true,
            now
        )));
        assert!(restarts(&w.after_exit(
            rules(Restart::Permanent),
            0,
            exit(true),
            true,
            now
        )));
        assert_eq!(
            w.after_exit(rules(Restart::Transient), 0, exit(false), true, now),
            Verdict::Remove(ChildExit::Stopped)
        );
        assert!(restarts(&w.after_exit(
            rules(Restart::Transient),
            0,
            exit(true),
            true,
            now
        )));
        assert_eq!(
            w.after_exit(rules(Restart::Temporary), 0, exit(true), true, now),
            Verdict::Remove(ChildExit::Failed("boom".to_owned()))
        );
    }

    #[test]
    fn a_veto_removes_the_child() {
        let mut w = Window::new(None, None);
        let v = w.after_exit(
            rules(Restart::Permanent),
            0,
            exit(true),
            false,
            Instant::now(),
        );
        assert_eq!(v, Verdict::Remove(ChildExit::Failed("boom".to_owned())));
    }

    #[test]
    fn intensity_escalates_on_the_restart_past_the_limit() {
        let now = Instant::now();
        let mut w = Window::new(Some(Intensity::new(3, Duration::from_secs(5))), None);
        for i in 0..3 {
            assert!(restarts(&w.after_exit(
                rules(Restart::Permanent),
                i,
                exit(true),
                true,
                now
            )));
        }
        assert_eq!(
            w.after_exit(rules(Restart::Permanent), 3, exit(true), true, now),
            Verdict::Escalate
        );
    }

    #[test]
    fn the_window_slides() {
        let start = Instant::now();
        let mut w = Window::new(Some(Intensity::new(1, Duration::from_secs(5))), None);
        assert!(restarts(&w.after_exit(
            rules(Restart::Permanent),
            0,
            exit(true),
            true,
            start
        )));
        // Six seconds later the first restart has left the window.
        let later = start + Duration::from_secs(6);
        assert!(restarts(&w.after_exit(
            rules(Restart::Permanent),
            1,
            exit(true),
            true,
            later
        )));
        assert_eq!(
            w.after_exit(rules(Restart::Permanent), 2, exit(true), true, later),
            Verdict::Escalate
        );
    }

    #[test]
    fn a_child_cap_removes_before_the_intensity_counts() {
        let now = Instant::now();
        let mut w = Window::new(Some(Intensity::new(1, Duration::from_secs(5))), None);
        let capped = ChildRules {
            restart: Restart::Transient,
            max_restarts: Some(2),
        };
        assert!(restarts(&w.after_exit(capped, 1, exit(true), true, now)));
        match w.after_exit(capped, 2, exit(true), true, now) {
            Verdict::Remove(ChildExit::RestartsExhausted { restarts: 2, .. }) => {}
            other => panic!("expected the cap to remove it, got {other:?}"),
        }
    }

    #[test]
    fn a_failed_restart_counts_as_a_failure() {
        let now = Instant::now();
        let mut w = Window::new(Some(Intensity::new(2, Duration::from_secs(5))), None);
        let r = rules(Restart::Permanent);
        assert!(restarts(&w.after_exit(r, 0, exit(true), true, now)));
        assert!(restarts(&w.after_failed_start(r, 1, "ctor".into(), now)));
        assert_eq!(
            w.after_failed_start(r, 2, "ctor".into(), now),
            Verdict::Escalate
        );
    }

    #[test]
    fn backoff_doubles_within_the_window_and_caps() {
        let b = Backoff::exponential(Duration::from_millis(10), Duration::from_millis(50));
        assert_eq!(b.delay(1), Duration::from_millis(10));
        assert_eq!(b.delay(2), Duration::from_millis(20));
        assert_eq!(b.delay(3), Duration::from_millis(40));
        assert_eq!(b.delay(4), Duration::from_millis(50));
        assert_eq!(b.delay(1000), Duration::from_millis(50));
        let now = Instant::now();
        let mut w = Window::new(Some(Intensity::new(10, Duration::from_secs(5))), Some(b));
        let r = rules(Restart::Permanent);
        let delays: Vec<_> = (0..3)
            .map(|i| match w.after_exit(r, i, exit(true), true, now) {
                Verdict::Restart { delay, .. } => delay,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(delays, [10, 20, 40].map(Duration::from_millis).to_vec());
    }

    #[test]
    fn backoff_grows_without_an_intensity_too() {
        let b = Backoff::exponential(Duration::from_millis(10), Duration::from_millis(50));
        let start = Instant::now();
        let mut w = Window::new(None, Some(b));
        let r = rules(Restart::Permanent);
        let delay_at =
            |w: &mut Window, i: u32, at: Instant| match w.after_exit(r, i, exit(true), true, at) {
                Verdict::Restart { delay, .. } => delay,
                other => panic!("{other:?}"),
            };
        let delays: Vec<_> = (0..5).map(|i| delay_at(&mut w, i, start)).collect();
        assert_eq!(
            delays,
            [10, 20, 40, 50, 50].map(Duration::from_millis).to_vec()
        );
        // Long quiet: the count starts over.
        let later = start + UNLIMITED_PERIOD + Duration::from_secs(1);
        assert_eq!(delay_at(&mut w, 5, later), Duration::from_millis(10));
        // A long crash loop is remembered only as far as it matters.
        for i in 0..100 {
            delay_at(&mut w, 6 + i, later);
        }
        assert!(w.recent.len() <= MAX_COUNTED);
    }

    #[test]
    fn default_intensity_is_documented_value() {
        assert_eq!(
            Intensity::default(),
            Intensity::new(3, Duration::from_secs(5))
        );
    }
}
