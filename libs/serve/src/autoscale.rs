//! The autoscaling decision of one deployment, from load samples alone.
//!
//! The load is the deployment's ongoing requests (on its replicas and in
//! its queue), averaged over the last [`LOOK_BACK`]. The wanted number of
//! replicas is `ceil(load / target_ongoing_requests)`, within the bounds;
//! it replaces the target only after it has stayed above (or below) the
//! target for the whole upscale (or downscale) delay. A deployment with no
//! replica and a request waiting scales to one at once.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::deployment::AutoscalingConfig;

/// How far back the load is averaged.
pub(crate) const LOOK_BACK: Duration = Duration::from_secs(1);

/// The autoscaler's memory: recent load samples and since when it has
/// wanted a change.
#[derive(Debug, Default)]
pub(crate) struct Autoscaler {
    samples: VecDeque<(Instant, f64)>,
    wanted_up_since: Option<Instant>,
    wanted_down_since: Option<Instant>,
}

impl Autoscaler {
    /// Records the load at `now` and returns the new target (`current`
    /// when nothing changes).
    pub(crate) fn decide(
        &mut self,
        config: &AutoscalingConfig,
        now: Instant,
        current: usize,
        load: f64,
    ) -> usize {
        self.samples.push_back((now, load));
        while let Some(&(at, _)) = self.samples.front() {
            if now.duration_since(at) > LOOK_BACK {
                self.samples.pop_front();
            } else {
                break;
            }
        }
        let mean = self.samples.iter().map(|(_, l)| l).sum::<f64>() / self.samples.len() as f64;
        let wanted = ((mean / config.target_ongoing_requests).ceil() as usize)
            .clamp(config.min_replicas, config.max_replicas);
        if current == 0 && load > 0.0 {
            self.wanted_up_since = None;
            return wanted.max(1);
        }
        if wanted > current {
            self.wanted_down_since = None;
            let since = *self.wanted_up_since.get_or_insert(now);
            if now.duration_since(since) >= config.upscale_delay {
                self.wanted_up_since = None;
                return wanted;
            }
        } else if wanted < current {
            self.wanted_up_since = None;
            let since = *self.wanted_down_since.get_or_insert(now);
            if now.duration_since(since) >= config.downscale_delay {
                self.wanted_down_since = None;
                return wanted;
            }
        } else {
            self.wanted_up_since = None;
            self.wanted_down_since = None;
        }
        current.clamp(config.min_replicas, config.max_replicas)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> AutoscalingConfig {
        AutoscalingConfig {
            min_replicas: 1,
            max_replicas: 4,
            target_ongoing_requests: 2.0,
            upscale_delay: Duration::from_millis(100),
            downscale_delay: Duration::from_millis(500),
        }
    }

    #[test]
    fn scales_up_after_the_delay_only() {
        let mut a = Autoscaler::default();
        let t0 = Instant::now();
        let c = config();
        assert_eq!(a.decide(&c, t0, 1, 8.0), 1);
        assert_eq!(a.decide(&c, t0 + Duration::from_millis(50), 1, 8.0), 1);
        assert_eq!(a.decide(&c, t0 + Duration::from_millis(100), 1, 8.0), 4);
    }

    #[test]
    fn a_dip_resets_the_delay() {
        let mut a = Autoscaler::default();
        let t0 = Instant::now();
        let c = config();
        assert_eq!(a.decide(&c, t0, 2, 8.0), 2);
        // The mean drops to the target: the wish to scale up is forgotten.
        let later = t0 + Duration::from_millis(1100);
        assert_eq!(a.decide(&c, later, 2, 4.0), 2);
        assert_eq!(a.decide(&c, later + Duration::from_millis(60), 2, 8.0), 2);
    }

    #[test]
    fn scales_down_to_the_minimum_after_the_longer_delay() {
        let mut a = Autoscaler::default();
        let t0 = Instant::now();
        let c = config();
        assert_eq!(a.decide(&c, t0, 4, 0.0), 4);
        assert_eq!(a.decide(&c, t0 + Duration::from_millis(400), 4, 0.0), 4);
        assert_eq!(a.decide(&c, t0 + Duration::from_millis(500), 4, 0.0), 1);
    }

    #[test]
    fn scales_from_zero_at_once_and_to_zero_when_allowed() {
        let mut a = Autoscaler::default();
        let t0 = Instant::now();
        let c = AutoscalingConfig {
            min_replicas: 0,
            ..config()
        };
        assert_eq!(a.decide(&c, t0, 0, 1.0), 1);
        let idle = t0 + Duration::from_secs(2);
        assert_eq!(a.decide(&c, idle, 1, 0.0), 1);
        assert_eq!(a.decide(&c, idle + Duration::from_millis(500), 1, 0.0), 0);
    }
}
