//! Jobs on the head (`troupe job`), and the Rust API to them.

use super::*;
use crate::jobs::{JobInfo, JobSpec, LogPage};

impl Shared {
    /// Answers a job request (on the head; refused elsewhere).
    pub(super) async fn answer_job(&self, body: Request) -> Reply {
        let Some(jobs) = self.jobs.get().cloned() else {
            return Reply::Refused("jobs run on the head: ask the head".to_owned());
        };
        let refused = |e: crate::jobs::JobError| Reply::Refused(e.to_string());
        match body {
            Request::JobSubmit(spec) => match jobs.submit(spec) {
                Ok(info) => Reply::Job(Box::new(info)),
                Err(e) => refused(e),
            },
            Request::JobList => Reply::Jobs(jobs.list()),
            Request::JobLogs { id, from } => match jobs.logs(&id, from).await {
                Ok(page) => Reply::JobLogs(page),
                Err(e) => refused(e),
            },
            Request::JobStop(id) => match jobs.stop(&id).await {
                Ok(info) => Reply::Job(Box::new(info)),
                Err(e) => refused(e),
            },
            other => Reply::Refused(format!("not a job request: {}", other.kind())),
        }
    }
}

impl ClusterNode {
    async fn ask_head(&self, body: Request) -> Result<Reply, ClusterError> {
        let head = self.head_id()?;
        if Some(head) == self.shared.me() {
            return Ok(self.shared.answer_job(body).await);
        }
        self.request(head, body).await
    }

    /// Runs `spec` as a job on the head (Ray's `ray job submit`): a child
    /// process of the head with the cluster's address (`TROUPE_ADDRESS`),
    /// cookie (`TROUPE_COOKIE_FILE`), TLS directory and `TROUPE_JOB_ID`
    /// in its environment, its output kept in a log file.
    pub async fn submit_job(&self, spec: JobSpec) -> Result<JobInfo, ClusterError> {
        match self.ask_head(Request::JobSubmit(spec)).await? {
            Reply::Job(info) => Ok(*info),
            Reply::Refused(why) => Err(ClusterError::Job(why)),
            other => Err(ClusterError::Protocol(format!(
                "unexpected reply {other:?}"
            ))),
        }
    }

    /// The head's jobs, oldest first, running and ended.
    pub async fn jobs(&self) -> Result<Vec<JobInfo>, ClusterError> {
        match self.ask_head(Request::JobList).await? {
            Reply::Jobs(jobs) => Ok(jobs),
            Reply::Refused(why) => Err(ClusterError::Job(why)),
            other => Err(ClusterError::Protocol(format!(
                "unexpected reply {other:?}"
            ))),
        }
    }

    /// A page of job `id`'s log from byte `from` (follow it with the
    /// page's `next` until `ended` and an empty page).
    pub async fn job_logs(&self, id: &str, from: u64) -> Result<LogPage, ClusterError> {
        let body = Request::JobLogs {
            id: id.to_owned(),
            from,
        };
        match self.ask_head(body).await? {
            Reply::JobLogs(page) => Ok(page),
            Reply::Refused(why) => Err(ClusterError::Job(why)),
            other => Err(ClusterError::Protocol(format!(
                "unexpected reply {other:?}"
            ))),
        }
    }

    /// Stops job `id` (SIGTERM to its process group, SIGKILL after
    /// `jobs::STOP_GRACE`); answered once it ended. The actors it owns end
    /// with it.
    pub async fn stop_job(&self, id: &str) -> Result<JobInfo, ClusterError> {
        match self.ask_head(Request::JobStop(id.to_owned())).await? {
            Reply::Job(info) => Ok(*info),
            Reply::Refused(why) => Err(ClusterError::Job(why)),
            other => Err(ClusterError::Protocol(format!(
                "unexpected reply {other:?}"
            ))),
        }
    }
}
