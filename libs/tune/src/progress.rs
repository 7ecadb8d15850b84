//! The live progress table: an `indicatif` bar over the trials, with one
//! line per running trial under it. Off when stderr is not a terminal or
//! when [`TuneOptions::progress`](crate::TuneOptions::progress) says so.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

/// The bar, if shown.
#[derive(Debug)]
pub(crate) struct Progress {
    bar: Option<ProgressBar>,
}

impl Progress {
    pub(crate) fn new(enabled: bool, trials: usize, done: usize) -> Progress {
        let bar = (enabled && std::io::stderr().is_terminal()).then(|| {
            let bar = ProgressBar::new(trials as u64);
            let style = ProgressStyle::with_template(
                "{elapsed_precise} [{bar:30}] {pos}/{len} trials\n{msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
            bar.set_style(style);
            bar.set_position(done as u64);
            bar.enable_steady_tick(Duration::from_millis(250));
            bar
        });
        Progress { bar }
    }

    /// Whether anything is drawn (the table is built only then).
    pub(crate) fn shown(&self) -> bool {
        self.bar.is_some()
    }

    pub(crate) fn update(&self, finished: usize, table: String) {
        if let Some(bar) = &self.bar {
            bar.set_position(finished as u64);
            bar.set_message(table);
        }
    }

    /// Clears the bar and its table: the caller prints the results.
    pub(crate) fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
