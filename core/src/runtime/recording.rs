//! Recording what runs: the timeline (Chrome trace), and the gauges that
//! are sampled rather than kept live.

use std::io::Write;
use std::path::Path;

use super::Runtime;
use crate::error::TimelineError;
use crate::timeline::{TimelineEvent, TimelineSnapshot};

impl Runtime {
    /// Starts (`true`) or stops recording the timeline: every task attempt
    /// and actor call, with its thread, start and duration. Off by default
    /// (`Config::record_timeline`); while off, it costs one atomic load per
    /// attempt and call. Returns false if it cannot record
    /// (`Config::timeline_events` is 0).
    pub fn record_timeline(&self, on: bool) -> bool {
        self.inner.timeline.set_recording(on)
    }

    /// The timeline's events so far, oldest first (the last
    /// `Config::timeline_events` of them), and how many older ones were
    /// dropped to stay within that bound.
    pub fn timeline_events(&self) -> (Vec<TimelineEvent>, u64) {
        self.inner.timeline.events()
    }

    /// At most `max` of the timeline's events from the `from`th (oldest
    /// first), with the names of the threads they ran on, how many there
    /// are in all, whether it records now, and this runtime's clock now
    /// (µs since the Unix epoch, the clock of the events' `start_us`):
    /// what a cluster gathers from each node, window by window, to write
    /// one trace. Only the window is copied.
    pub fn timeline_snapshot(&self, from: u64, max: usize) -> TimelineSnapshot {
        let timeline = &self.inner.timeline;
        let start = usize::try_from(from).unwrap_or(usize::MAX);
        let (events, threads, total) = timeline.window(start, max);
        TimelineSnapshot {
            events,
            from,
            total: total as u64,
            threads,
            recording: timeline.is_recording(),
            ever_recorded: timeline.ever_recorded(),
            now_us: timeline.clock().now_us(),
        }
    }

    /// This runtime's clock now, in microseconds since the Unix epoch (the
    /// clock of its timeline: monotonic from one wall-clock reading at
    /// boot).
    pub fn clock_us(&self) -> u64 {
        self.inner.timeline.clock().now_us()
    }

    /// Forgets the timeline's events so far (recording goes on if on).
    pub fn clear_timeline(&self) {
        self.inner.timeline.clear();
    }

    /// Writes the timeline as a Chrome trace (Ray's `ray timeline`): a JSON
    /// array with one complete event (`"ph": "X"`, `ts` and `dur` in µs) per
    /// task attempt and actor call, on the thread it started on, and
    /// metadata naming the process and threads. Open it in Perfetto
    /// (<https://ui.perfetto.dev>) or `chrome://tracing`. Returns how many
    /// events it wrote.
    ///
    /// ```
    /// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let rt = troupe_core::init(troupe_core::Config::default().record_timeline(true)).await?;
    /// // ... run tasks and actor calls ...
    /// let path = std::env::temp_dir().join("troupe-doc-timeline.json");
    /// let events = rt.timeline(&path)?;
    /// assert_eq!(events, 0, "nothing ran");
    /// # std::fs::remove_file(&path)?;
    /// # rt.shutdown().await?;
    /// # Ok(()) }
    /// ```
    ///
    /// Fails with [`TimelineError::NotRecorded`] if the timeline never
    /// recorded (it is off by default).
    pub fn timeline(&self, path: impl AsRef<Path>) -> Result<usize, TimelineError> {
        let path = path.as_ref();
        let io = |cause| TimelineError::Io {
            path: path.to_path_buf(),
            cause,
        };
        if !self.inner.timeline.ever_recorded() {
            return Err(TimelineError::NotRecorded);
        }
        let file = std::fs::File::create(path).map_err(io)?;
        let mut out = std::io::BufWriter::new(file);
        let written = self.write_timeline(&mut out)?;
        out.flush().map_err(io)?;
        Ok(written)
    }

    /// Writes the timeline as a Chrome trace to `out` (see
    /// [`timeline`](Self::timeline)); what the dashboard serves.
    pub fn write_timeline(&self, out: &mut dyn Write) -> Result<usize, TimelineError> {
        if !self.inner.timeline.ever_recorded() {
            return Err(TimelineError::NotRecorded);
        }
        self.inner
            .timeline
            .write_chrome_trace(out, &self.inner.config.name, self.node_id())
            .map_err(|e| TimelineError::Encode(e.to_string()))
    }

    /// Refreshes the gauges that are sampled rather than kept live: tasks
    /// by where they are, CPU threads, free resources, objects in the
    /// store, its budget. Counters, histograms and the other gauges are
    /// recorded as things happen. A Prometheus endpoint calls this before
    /// each scrape; call it periodically if you install a recorder of your
    /// own.
    pub fn sample_metrics(&self) {
        self.inner.scheduler.sample_metrics();
        self.inner.objects.sample_metrics();
        let total = self.inner.scheduler.capacity();
        let free = self.available_resources();
        let resources = [
            ("CPU", total.num_cpus, free.num_cpus),
            ("GPU", total.num_gpus, free.num_gpus),
            ("memory", total.memory as f64, free.memory as f64),
        ];
        for (resource, total, free) in resources {
            metrics::gauge!("troupe_node_resources", "resource" => resource).set(total);
            metrics::gauge!("troupe_node_resources_available", "resource" => resource).set(free);
        }
        for (name, amount) in &total.custom {
            let free = free.custom.get(name).copied().unwrap_or(0.0);
            metrics::gauge!("troupe_node_resources", "resource" => name.clone()).set(*amount);
            metrics::gauge!("troupe_node_resources_available", "resource" => name.clone())
                .set(free);
        }
    }
}
