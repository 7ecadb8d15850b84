//! `SupervisorRef`: what callers hold of a running supervisor.

use std::sync::atomic::Ordering;
use std::time::Duration;

use ractor::rpc::CallResult;
use ractor::ActorCell;

use super::{
    ChildInfo, ChildKey, ChildSpec, StartContext, SupervisionEvent, SupervisorError, SupervisorMsg,
    SupervisorRef,
};

/// How long management calls wait for a supervisor that should answer at once.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

impl SupervisorRef {
    /// The supervisor's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its path in its tree, names from the top (`root/user/workers`); a
    /// supervisor spawned on its own is its name.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The supervisor's actor cell (to link to it, or to count its children).
    pub fn cell(&self) -> ActorCell {
        self.actor.get_cell()
    }

    /// Starts `spec` as a new child and returns its key.
    ///
    /// The child is started in the caller's task, linked to the supervisor,
    /// then handed over: the supervisor never waits on a slow constructor,
    /// and keeps handling its other children meanwhile.
    pub async fn start_child(&self, spec: ChildSpec) -> Result<ChildKey, SupervisorError> {
        let key = ChildKey(self.keys.fetch_add(1, Ordering::Relaxed));
        let ctx = StartContext {
            supervisor: self.actor.get_cell(),
            events: self.events.clone(),
            reports: self.actor.clone(),
            path: self.path.clone(),
        };
        let running = match (spec.start)(ctx).await {
            Ok(running) => running,
            Err(err) => {
                if !self.is_alive() {
                    return Err(SupervisorError::Down(self.name.to_string()));
                }
                self.events.emit(|| SupervisionEvent::ChildStartFailed {
                    supervisor: self.name.clone(),
                    child: spec.id.clone(),
                    error: err.to_string(),
                });
                return Err(err.into());
            }
        };
        // No await between the start and this send: the child cannot be
        // left linked but unadopted by a cancelled caller.
        match self
            .actor
            .send_message(SupervisorMsg::Adopt { key, spec, running })
        {
            Ok(()) => Ok(key),
            Err(err) => {
                // The supervisor died meanwhile; make sure the child did too.
                if let ractor::MessagingErr::SendErr(SupervisorMsg::Adopt { running, .. }) = err {
                    running.kill();
                }
                Err(SupervisorError::Down(self.name.to_string()))
            }
        }
    }

    /// Stops the child per its shutdown and forgets it. Waits at most
    /// `timeout` for the supervisor to confirm (a child with
    /// `Shutdown::Infinity` may take as long as it likes to stop).
    pub async fn terminate_child_within(
        &self,
        key: ChildKey,
        timeout: Duration,
    ) -> Result<(), SupervisorError> {
        match self
            .actor
            .call(
                |reply| SupervisorMsg::TerminateChild(key, reply),
                Some(timeout),
            )
            .await
        {
            Ok(CallResult::Success(true)) => Ok(()),
            Ok(CallResult::Success(false)) => Err(SupervisorError::NoSuchChild {
                supervisor: self.name.to_string(),
                key,
            }),
            Ok(CallResult::Timeout) => Err(SupervisorError::Timeout {
                supervisor: self.name.to_string(),
                after: timeout,
            }),
            _ => Err(SupervisorError::Down(self.name.to_string())),
        }
    }

    /// [`terminate_child_within`](Self::terminate_child_within) 30 s.
    pub async fn terminate_child(&self, key: ChildKey) -> Result<(), SupervisorError> {
        self.terminate_child_within(key, CALL_TIMEOUT).await
    }

    /// The children in start order.
    pub async fn which_children(&self) -> Result<Vec<ChildInfo>, SupervisorError> {
        self.which_children_within(CALL_TIMEOUT).await
    }

    /// The children in start order, waiting at most `timeout` for the
    /// supervisor to answer (one busy restarting a slow child may not).
    pub async fn which_children_within(
        &self,
        timeout: Duration,
    ) -> Result<Vec<ChildInfo>, SupervisorError> {
        children_of(&self.actor, &self.name, timeout).await
    }

    /// Whether the supervisor is running.
    pub fn is_alive(&self) -> bool {
        self.actor.get_status() <= ractor::ActorStatus::Running
    }

    /// Stops the supervisor: its children stop in reverse order, each per its
    /// shutdown; if all that overruns `deadline`, the rest is killed.
    /// Returns whether the ordered stop finished in time.
    pub async fn stop(&self, deadline: Duration) -> bool {
        match self
            .actor
            .stop_and_wait(Some("shutdown".into()), Some(deadline))
            .await
        {
            Err(ractor::RactorErr::Timeout) => {
                let _ = self.actor.kill_and_wait(None).await;
                false
            }
            _ => true,
        }
    }
}

/// Asks the supervisor `actor` for its children, within `timeout`.
pub(crate) async fn children_of(
    actor: &ractor::ActorRef<SupervisorMsg>,
    name: &str,
    timeout: Duration,
) -> Result<Vec<ChildInfo>, SupervisorError> {
    match actor
        .call(SupervisorMsg::WhichChildren, Some(timeout))
        .await
    {
        Ok(CallResult::Success(children)) => Ok(children),
        Ok(CallResult::Timeout) => Err(SupervisorError::Timeout {
            supervisor: name.to_owned(),
            after: timeout,
        }),
        _ => Err(SupervisorError::Down(name.to_owned())),
    }
}
