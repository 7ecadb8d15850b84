//! Jobs (`troupe job`, Ray's `ray job`): a driver program handed to the
//! cluster and run by the head as a child process, with the cluster's
//! address and credentials in its environment, its output kept in a log
//! file, and its status kept after it ends.
//!
//! A job's directory (`<state dir>/jobs/<id>/`, mode 0700) holds `log`
//! (stdout and stderr, as written) and `cookie` (mode 0600, what the job
//! reads through `TROUPE_COOKIE_FILE`). Stopping a job sends SIGTERM to
//! its process group, then SIGKILL after [`STOP_GRACE`]; the actors it
//! owns on other nodes share its fate (they end when their owner leaves or
//! dies).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncSeekExt};

/// How long a stopped job has between SIGTERM and SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(5);

/// Bytes of log one page carries at most.
const LOG_PAGE_BYTES: usize = 256 << 10;

/// Jobs kept (the oldest finished ones are forgotten past it; their files
/// stay).
const KEEP_JOBS: usize = 256;

/// The most bytes a job's command line and environment may take.
const MAX_SPEC_BYTES: usize = 64 << 10;

/// What to run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobSpec {
    /// The program and its arguments.
    pub command: Vec<String>,
    /// Extra environment variables.
    pub env: Vec<(String, String)>,
    /// Where it runs (default: the head's working directory).
    pub working_dir: Option<PathBuf>,
}

/// Where a job is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum JobState {
    /// Its process runs.
    Running,
    /// It exited with status 0.
    Succeeded,
    /// It exited otherwise, or could not start: how.
    Failed(String),
    /// `troupe job stop` ended it.
    Stopped,
}

/// A job as `troupe job status` and `list` show it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobInfo {
    /// Its id (`job-<n>`).
    pub id: String,
    /// What runs.
    pub spec: JobSpec,
    /// Where it is.
    pub state: JobState,
    /// Its process, while it runs.
    pub pid: Option<u32>,
    /// When it was submitted, in microseconds since the Unix epoch.
    pub submitted_at_us: u64,
    /// When it ended, if it did.
    pub ended_at_us: Option<u64>,
    /// Its log file, on the head.
    pub log: PathBuf,
}

/// A page of a job's log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogPage {
    /// The bytes from the page's offset.
    #[serde(with = "troupe_objects::bytes_field")]
    pub bytes: Vec<u8>,
    /// Where the next page starts.
    pub next: u64,
    /// Whether the job has ended (no more bytes will come past the end).
    pub ended: bool,
}

/// Why a job request failed.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// No job has this id.
    #[error("no job {0} (see `troupe job list`)")]
    Unknown(String),
    /// The spec cannot run.
    #[error("the job cannot start: {0}")]
    Start(String),
    /// Its files could not be read or written.
    #[error("job files under {}: {source}", path.display())]
    Files {
        /// Where.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

struct Entry {
    info: JobInfo,
    stopping: bool,
}

/// The head's jobs.
pub(crate) struct Jobs {
    dir: PathBuf,
    /// The cluster's address, cookie and TLS directory, for each job.
    address: String,
    cookie: Arc<[u8]>,
    tls_dir: Option<PathBuf>,
    table: Mutex<BTreeMap<u64, Entry>>,
    next: std::sync::atomic::AtomicU64,
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

fn files(path: &Path) -> impl FnOnce(std::io::Error) -> JobError + '_ {
    move |source| JobError::Files {
        path: path.to_owned(),
        source,
    }
}

fn number(id: &str) -> Option<u64> {
    id.strip_prefix("job-")?.parse().ok()
}

impl Jobs {
    pub(crate) fn new(
        state_dir: &Path,
        address: String,
        cookie: Arc<[u8]>,
        tls_dir: Option<PathBuf>,
    ) -> Arc<Jobs> {
        let dir = state_dir.join("jobs");
        // Numbers go on from the last job of an earlier head in this state
        // directory: its log is never overwritten.
        let last = std::fs::read_dir(&dir)
            .map(|entries| {
                entries
                    .filter_map(|e| e.ok()?.file_name().to_str().and_then(number))
                    .max()
                    .unwrap_or(0)
            })
            .unwrap_or(0);
        Arc::new(Jobs {
            dir,
            address,
            cookie,
            tls_dir,
            table: Mutex::new(BTreeMap::new()),
            next: std::sync::atomic::AtomicU64::new(last + 1),
        })
    }

    fn table(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Entry>> {
        // Each critical section is a map update: a panic cannot leave it
        // half-done.
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts `spec`; its info once its process runs.
    pub(crate) fn submit(self: &Arc<Self>, spec: JobSpec) -> Result<JobInfo, JobError> {
        let Some(program) = spec.command.first() else {
            return Err(JobError::Start("no command".to_owned()));
        };
        let size = postcard::to_stdvec(&spec).map_or(usize::MAX, |b| b.len());
        if size > MAX_SPEC_BYTES {
            return Err(JobError::Start(format!(
                "its command line and environment take {size} bytes, over {MAX_SPEC_BYTES}"
            )));
        }
        let n = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let id = format!("job-{n}");
        let dir = self.dir.join(&id);
        crate::cookie::private_dir(&dir).map_err(files(&dir))?;
        let cookie_path = dir.join("cookie");
        crate::cookie::write_private(&cookie_path, &String::from_utf8_lossy(&self.cookie))
            .map_err(files(&cookie_path))?;
        let log_path = dir.join("log");
        let log = std::fs::File::create(&log_path).map_err(files(&log_path))?;
        let err_log = log.try_clone().map_err(files(&log_path))?;
        let mut command = tokio::process::Command::new(program);
        command
            .args(&spec.command[1..])
            .env(crate::ADDRESS_ENV, &self.address)
            .env("TROUPE_COOKIE_FILE", &cookie_path)
            .env_remove("TROUPE_COOKIE")
            .env("TROUPE_JOB_ID", &id)
            .envs(spec.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err_log)
            .kill_on_drop(true)
            .process_group(0);
        if let Some(tls) = &self.tls_dir {
            command.env(crate::TLS_DIR_ENV, tls);
        }
        if let Some(dir) = &spec.working_dir {
            command.current_dir(dir);
        }
        let mut child = command
            .spawn()
            .map_err(|e| JobError::Start(format!("{program}: {e}")))?;
        let info = JobInfo {
            id: id.clone(),
            spec,
            state: JobState::Running,
            pid: child.id(),
            submitted_at_us: now_us(),
            ended_at_us: None,
            log: log_path,
        };
        {
            let mut table = self.table();
            table.insert(
                n,
                Entry {
                    info: info.clone(),
                    stopping: false,
                },
            );
            // Forget the oldest ended jobs past the bound.
            while table.len() > KEEP_JOBS {
                let ended = table
                    .iter()
                    .find(|(_, e)| e.info.state != JobState::Running)
                    .map(|(k, _)| *k);
                match ended {
                    Some(k) => table.remove(&k),
                    None => break,
                };
            }
        }
        metrics::counter!("troupe_jobs_submitted_total").increment(1);
        tracing::info!(job = %id, pid = ?info.pid, "job started");
        let jobs = Arc::downgrade(self);
        tokio::spawn(async move {
            let status = child.wait().await;
            let Some(jobs) = jobs.upgrade() else { return };
            let mut table = jobs.table();
            let Some(entry) = table.get_mut(&n) else {
                return;
            };
            entry.info.state = match status {
                _ if entry.stopping => JobState::Stopped,
                Ok(s) if s.success() => JobState::Succeeded,
                Ok(s) => JobState::Failed(s.to_string()),
                Err(e) => JobState::Failed(format!("waiting for it failed: {e}")),
            };
            entry.info.pid = None;
            entry.info.ended_at_us = Some(now_us());
            tracing::info!(job = %entry.info.id, state = ?entry.info.state, "job ended");
        });
        Ok(info)
    }

    /// Every job kept, oldest first (the oldest left out past what one
    /// control frame holds).
    pub(crate) fn list(&self) -> Vec<JobInfo> {
        let mut all: Vec<JobInfo> = self.table().values().map(|e| e.info.clone()).collect();
        let budget = crate::protocol::MAX_FRAME_BYTES - (16 << 10);
        while all.len() > 1 && postcard::to_stdvec(&all).map_or(usize::MAX, |b| b.len()) > budget {
            all.remove(0);
        }
        all
    }

    fn info(&self, id: &str) -> Result<JobInfo, JobError> {
        number(id)
            .and_then(|n| self.table().get(&n).map(|e| e.info.clone()))
            .ok_or_else(|| JobError::Unknown(id.to_owned()))
    }

    /// The job's log from byte `from`, at most a page.
    pub(crate) async fn logs(&self, id: &str, from: u64) -> Result<LogPage, JobError> {
        let info = self.info(id)?;
        let mut file = tokio::fs::File::open(&info.log)
            .await
            .map_err(files(&info.log))?;
        file.seek(std::io::SeekFrom::Start(from))
            .await
            .map_err(files(&info.log))?;
        let mut bytes = Vec::with_capacity(LOG_PAGE_BYTES.min(64 << 10));
        file.take(LOG_PAGE_BYTES as u64)
            .read_to_end(&mut bytes)
            .await
            .map_err(files(&info.log))?;
        Ok(LogPage {
            next: from + bytes.len() as u64,
            bytes,
            ended: info.state != JobState::Running,
        })
    }

    /// Stops the job: SIGTERM to its process group, SIGKILL after
    /// [`STOP_GRACE`]; its info once it ended (or at once if it had).
    pub(crate) async fn stop(&self, id: &str) -> Result<JobInfo, JobError> {
        let n = number(id).ok_or_else(|| JobError::Unknown(id.to_owned()))?;
        let pid = {
            let mut table = self.table();
            let entry = table
                .get_mut(&n)
                .ok_or_else(|| JobError::Unknown(id.to_owned()))?;
            if entry.info.state != JobState::Running {
                return Ok(entry.info.clone());
            }
            entry.stopping = true;
            entry.info.pid
        };
        if let Some(pid) = pid {
            signal_group(pid, libc::SIGTERM);
            let deadline = tokio::time::Instant::now() + STOP_GRACE;
            while self.info(id)?.state == JobState::Running {
                if tokio::time::Instant::now() > deadline {
                    signal_group(pid, libc::SIGKILL);
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        // Once it is reaped, its state says so.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        loop {
            let info = self.info(id)?;
            if info.state != JobState::Running || tokio::time::Instant::now() > deadline {
                metrics::counter!("troupe_jobs_stopped_total").increment(1);
                return Ok(info);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Sends `signal` to the process group `pid` leads (each job is the leader
/// of its own group: its children end with it).
fn signal_group(pid: u32, signal: libc::c_int) {
    let Ok(group) = libc::pid_t::try_from(pid) else {
        return;
    };
    // SAFETY: kill(2) takes any pid and signal and touches no memory of
    // this process; a group that is gone is an error it returns (ESRCH),
    // which is ignored: the job ended by itself.
    #[allow(unsafe_code)]
    unsafe {
        libc::kill(-group, signal);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jobs(name: &str) -> (Arc<Jobs>, PathBuf) {
        let dir = std::env::temp_dir().join(format!("troupe-jobs-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        (
            Jobs::new(
                &dir,
                "127.0.0.1:1".to_owned(),
                Arc::from(&b"secret"[..]),
                None,
            ),
            dir,
        )
    }

    fn sh(script: &str) -> JobSpec {
        JobSpec {
            command: vec!["sh".into(), "-c".into(), script.into()],
            env: vec![("GREETING".into(), "hello".into())],
            working_dir: None,
        }
    }

    async fn ended(jobs: &Jobs, id: &str) -> JobInfo {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let info = jobs.info(id).expect("known");
            if info.state != JobState::Running {
                return info;
            }
            assert!(tokio::time::Instant::now() < deadline, "{id} never ended");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn a_job_runs_with_the_clusters_environment_and_keeps_its_log_and_status() {
        let (jobs, dir) = jobs("run");
        let info = jobs
            .submit(sh("echo $GREETING $TROUPE_ADDRESS $TROUPE_JOB_ID; cat $TROUPE_COOKIE_FILE; echo oops >&2; exit 3"))
            .expect("started");
        let done = ended(&jobs, &info.id).await;
        assert!(
            matches!(&done.state, JobState::Failed(how) if how.contains('3')),
            "{done:?}"
        );
        let log = jobs.logs(&info.id, 0).await.expect("the log");
        let text = String::from_utf8_lossy(&log.bytes);
        assert_eq!(
            text,
            format!("hello 127.0.0.1:1 {}\nsecret\noops\n", info.id)
        );
        assert!(log.ended);
        // Paged from an offset.
        let rest = jobs.logs(&info.id, 6).await.expect("the log");
        assert!(String::from_utf8_lossy(&rest.bytes).starts_with("127.0.0.1:1"));
        assert_eq!(jobs.list().len(), 1);
        assert!(matches!(
            jobs.logs("job-99", 0).await,
            Err(JobError::Unknown(_))
        ));
        assert!(matches!(
            jobs.submit(JobSpec {
                command: vec![],
                env: vec![],
                working_dir: None
            }),
            Err(JobError::Start(_))
        ));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let cookie = dir.join("jobs").join(&info.id).join("cookie");
            let mode = std::fs::metadata(cookie)
                .expect("written")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn a_new_head_numbers_its_jobs_after_the_last_one_in_its_state_dir() {
        let (jobs, dir) = jobs("numbers");
        let first = jobs.submit(sh("echo first")).expect("started");
        assert_eq!(first.id, "job-1");
        ended(&jobs, &first.id).await;
        let again = Jobs::new(&dir, "127.0.0.1:1".to_owned(), Arc::from(&b"s"[..]), None);
        let second = again.submit(sh("echo second")).expect("started");
        assert_eq!(second.id, "job-2");
        ended(&again, &second.id).await;
        let first_log = std::fs::read_to_string(dir.join("jobs/job-1/log")).expect("kept");
        assert_eq!(first_log, "first\n");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn a_stopped_job_and_its_children_end_and_say_so() {
        let (jobs, dir) = jobs("stop");
        // A child that ignores nothing, under a shell that waits for it.
        let info = jobs.submit(sh("sleep 60 & wait")).expect("started");
        let stopped = tokio::time::timeout(Duration::from_secs(10), jobs.stop(&info.id))
            .await
            .expect("stopped in time")
            .expect("known");
        assert_eq!(stopped.state, JobState::Stopped);
        assert!(stopped.ended_at_us.is_some());
        // Stopping again answers at once.
        assert_eq!(
            jobs.stop(&info.id).await.expect("known").state,
            JobState::Stopped
        );
        let _ = std::fs::remove_dir_all(dir);
    }
}
