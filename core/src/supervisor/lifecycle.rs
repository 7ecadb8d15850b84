//! A supervisor as a ractor actor: how it starts its children, carries out
//! its messages, and turns a child's exit into a restart, an escalation or
//! nothing (OTP's rules, decided in `policy.rs`).

use super::*;

impl ractor::Actor for Supervisor {
    type Msg = SupervisorMsg;
    type State = SupervisorState;
    type Arguments = ();

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        _: (),
    ) -> Result<Self::State, ActorProcessingErr> {
        let mut state = SupervisorState {
            children: BTreeMap::new(),
            linked: HashMap::new(),
            early_exits: HashMap::new(),
            window: Window::new(self.spec.intensity, self.spec.backoff),
            _alive: None,
        };
        for spec in &self.spec.children {
            match self.run_start(&myself, spec).await {
                Ok(running) => {
                    let key = self.next_key();
                    state.linked.insert(running.member(), Linked::Child(key));
                    state.children.insert(
                        key,
                        Child {
                            spec: spec.clone(),
                            actor_id: running.actor_id(),
                            running: Some(running),
                            restarts: 0,
                            last_failure: None,
                        },
                    );
                    self.emit(|| SupervisionEvent::ChildStarted {
                        supervisor: self.spec.name.clone(),
                        child: spec.id.clone(),
                    });
                }
                Err(err) => {
                    self.emit(|| SupervisionEvent::ChildStartFailed {
                        supervisor: self.spec.name.clone(),
                        child: spec.id.clone(),
                        error: err.to_string(),
                    });
                    self.stop_all(&mut state).await;
                    return Err(format!("child {:?} failed to start: {err}", spec.id).into());
                }
            }
        }
        tracing::debug!(supervisor = %self.spec.name, children = state.children.len(), "supervisor started");
        state._alive = Some(AliveGauge::new(SUPERVISOR_TYPE));
        Ok(state)
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        self.stop_all(state).await;
        tracing::debug!(supervisor = %self.spec.name, "supervisor stopped");
        self.emit(|| SupervisionEvent::SupervisorStopped {
            supervisor: self.spec.name.clone(),
        });
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            SupervisorMsg::Adopt { key, spec, running } => {
                let member = running.member();
                let early = state.early_exits.remove(&member);
                self.emit(|| SupervisionEvent::ChildStarted {
                    supervisor: self.spec.name.clone(),
                    child: spec.id.clone(),
                });
                state.children.insert(
                    key,
                    Child {
                        spec,
                        actor_id: running.actor_id(),
                        running: Some(running),
                        restarts: 0,
                        last_failure: None,
                    },
                );
                match early {
                    Some(exit) => return self.on_exit(&myself, state, key, exit).await,
                    None => {
                        state.linked.insert(member, Linked::Child(key));
                    }
                }
            }
            SupervisorMsg::NativeExited {
                actor,
                incarnation,
                abnormal,
                reason,
            } => {
                let member = Member::Native(actor, incarnation);
                self.exited(&myself, state, member, Exit { abnormal, reason })
                    .await?;
            }
            SupervisorMsg::TerminateChild(key, reply) => {
                let found = state.children.contains_key(&key);
                if found {
                    self.stop_children(state, &[key]).await;
                    self.remove_child(state, key, ChildExit::Terminated);
                }
                let _ = reply.send(found);
            }
            SupervisorMsg::WhichChildren(reply) => {
                let children = state
                    .children
                    .iter()
                    .map(|(key, child)| ChildInfo {
                        key: *key,
                        id: child.spec.id.clone(),
                        running: child.running.is_some(),
                        actor: child.running.as_ref().and_then(Running::cell),
                        restarts: child.restarts,
                        actor_id: child.actor_id,
                        last_failure: child.last_failure.clone(),
                    })
                    .collect();
                let _ = reply.send(children);
            }
            SupervisorMsg::RestartDue { keys } => {
                self.start_again(&myself, state, keys).await?;
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        event: ractor::SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let (cell, exit) = match event {
            ractor::SupervisionEvent::ActorTerminated(cell, last_state, reason) => {
                // A kill is abnormal (OTP's `killed`): ractor reports it as a
                // termination with reason "killed", or with no state at all
                // when it interrupted post_start or post_stop.
                let killed = last_state.is_none() || reason.as_deref() == Some(KILLED);
                let reason = reason.unwrap_or_else(|| "normal".to_owned());
                (
                    cell,
                    Exit {
                        abnormal: killed,
                        reason,
                    },
                )
            }
            ractor::SupervisionEvent::ActorFailed(cell, err) => (
                cell,
                Exit {
                    abnormal: true,
                    reason: err.to_string(),
                },
            ),
            _ => return Ok(()),
        };
        self.exited(&myself, state, Member::Cell(cell.get_id()), exit)
            .await
    }
}
