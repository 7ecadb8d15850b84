//! Which GPUs a request gets on a node.
//!
//! Placement follows Ray: a fraction (at most one device) goes to the
//! fullest device it still fits on, so fractions pack and whole devices stay
//! free; a whole number `n` takes `n` devices nobody uses.

/// A share of one GPU: its ordinal and the thousandths held.
pub(crate) type GpuShare = (u32, i64);

/// What is free on each GPU of the node, in thousandths of a device.
#[derive(Clone, Debug)]
pub(crate) struct Gpus {
    free: Vec<i64>,
}

impl Gpus {
    /// `devices` is bounded by `resources::MAX_GPUS` (validated).
    pub(crate) fn new(devices: usize) -> Self {
        Gpus {
            free: vec![1000; devices],
        }
    }

    pub(crate) fn place(&self, need: i64) -> Option<Vec<GpuShare>> {
        if need == 0 {
            return Some(Vec::new());
        }
        if need <= 1000 {
            let (ordinal, _) = self
                .free
                .iter()
                .enumerate()
                .filter(|(_, free)| **free >= need)
                .min_by_key(|(i, free)| (**free, *i))?;
            return Some(vec![(ordinal as u32, need)]);
        }
        let whole = (need / 1000) as usize;
        let idle: Vec<GpuShare> = self
            .free
            .iter()
            .enumerate()
            .filter(|(_, free)| **free == 1000)
            .map(|(i, _)| (i as u32, 1000))
            .take(whole)
            .collect();
        (idle.len() == whole).then_some(idle)
    }

    pub(crate) fn take(&mut self, shares: &[GpuShare]) {
        self.adjust(shares, -1);
    }

    pub(crate) fn give_back(&mut self, shares: &[GpuShare]) {
        self.adjust(shares, 1);
    }

    fn adjust(&mut self, shares: &[GpuShare], sign: i64) {
        for (ordinal, amount) in shares {
            if let Some(free) = self.free.get_mut(*ordinal as usize) {
                *free += sign * amount;
            }
        }
    }

    /// Thousandths of devices in use.
    pub(crate) fn in_use(&self) -> i64 {
        self.free.iter().map(|free| 1000 - free).sum()
    }

    /// Whether `need` thousandths could ever be placed here: a fraction of
    /// one device, or whole idle devices.
    pub(crate) fn feasible(&self, need: i64) -> bool {
        match need {
            0 => true,
            1..=1000 => !self.free.is_empty(),
            _ => need % 1000 == 0 && (need / 1000) as usize <= self.free.len(),
        }
    }
}

/// The ordinals of a set of GPU shares, in order.
pub(crate) fn ordinals(shares: &[GpuShare]) -> Vec<u32> {
    shares.iter().map(|(ordinal, _)| *ordinal).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fractions_pack_onto_the_fullest_device() {
        let mut gpus = Gpus::new(2);
        let a = gpus.place(250).unwrap();
        gpus.take(&a);
        let b = gpus.place(500).unwrap();
        assert_eq!(a[0].0, b[0].0, "packed on the same device");
        gpus.take(&b);
        // A whole GPU takes the idle one.
        let c = gpus.place(1000).unwrap();
        assert_ne!(c[0].0, a[0].0);
        gpus.take(&c);
        assert!(gpus.place(1000).is_none());
        assert!(gpus.place(250).is_some());
        assert_eq!(gpus.in_use(), 1750);
    }

    #[test]
    fn whole_numbers_need_idle_devices() {
        let mut gpus = Gpus::new(3);
        let frac = gpus.place(100).unwrap();
        gpus.take(&frac);
        assert!(gpus.place(3000).is_none(), "one device is partly used");
        assert_eq!(gpus.place(2000).unwrap().len(), 2);
        assert!(gpus.feasible(3000));
        assert!(!gpus.feasible(4000));
        assert!(!gpus.feasible(1500));
        assert!(!Gpus::new(0).feasible(500));
    }
}
