//! The worker's bot session (Bots API): created with a short deadline so that it exists, and is
//! announced, at once (BuildGrid otherwise holds CreateBotSession until the first job); then one
//! UpdateBotSession at a time, a long poll when a lease slot is free and a keep-alive every 10 s when
//! none is, interrupted as soon as a step finishes (the server redelivers whatever the dropped call
//! assigned). Leases run as tasks, up to the worker's capacity, which the session declares as the
//! `capacity` worker config (BuildGrid's convention).
//!
//! Stopping (SIGTERM/SIGINT): the first signal drains. The session turns `BOT_TERMINATING`, which
//! takes it out of BuildGrid's assignment at once, the running steps finish and are reported, and
//! the worker leaves; a lease assigned in the meantime is handed back. A second signal abandons: the
//! steps are stopped and their leases handed back. A lease is handed back by reporting it CANCELLED,
//! which BuildGrid answers by closing the session and requeueing its jobs at once, rather than after
//! the bot keep-alive timeout.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use bazel_remote_apis::build::bazel::remote::execution::v2 as re;
use bazel_remote_apis::google::protobuf::Any;
use bazel_remote_apis::google::rpc::Status;
use prost::Message as _;
use tokio::sync::watch;
use tokio::task::{AbortHandle, JoinSet};

use super::bots::{
    BotSession, BotStatus, BotsClient, Config, CreateBotSessionRequest, LeaseState,
    UpdateBotSessionRequest, Worker as BotWorker,
};
use super::worker::{Worker, log};
use crate::diag::{Diagnostic, Result};
use crate::solve::RunExit;

const RESULT_TYPE: &str = "type.googleapis.com/build.bazel.remote.execution.v2.ActionResult";
/// How often a busy worker tells the server it is alive (BuildGrid drops silent bots after its
/// `bot-session-keepalive-timeout`).
const KEEPALIVE: Duration = Duration::from_secs(10);
/// CreateBotSession's deadline: BuildGrid waits for work only when the deadline leaves it over 3 s
/// (its NETWORK_TIMEOUT, at 80 % of the deadline), so with this one it answers at once.
const CREATE_DEADLINE: Duration = Duration::from_millis(3500);
/// The longest a long poll may take before the worker assumes the connection is dead (BuildGrid's own
/// limit for it is 300 s).
const POLL_DEADLINE: Duration = Duration::from_secs(330);

/// What the worker has been asked to do.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Stop {
    Run,
    /// Take no new lease, finish the running ones, leave.
    Drain,
    /// Stop the running steps, hand their leases back, leave.
    Abandon,
}

/// A finished lease task: its lease id and outcome.
type Done = (String, Result<re::ActionResult>);

struct Leases {
    running: JoinSet<Done>,
    handles: HashMap<String, AbortHandle>,
    /// Leases already reported, in case a server repeats one.
    reported: VecDeque<String>,
}

impl<E: RunExit + Send + Sync + 'static> Worker<E> {
    /// Serves leases until stopped. A lost session (the server restarted, the network broke) is logged
    /// and replaced by a new one; the server requeues what the old one held.
    pub(crate) async fn serve(self, mut stop: watch::Receiver<Stop>) -> Result<()> {
        let me = Arc::new(self);
        let mut delay = Duration::from_secs(1);
        loop {
            let started = std::time::Instant::now();
            match me.session(&mut stop).await {
                Ok(()) => return Ok(()),
                Err(e) => log(&format!("session lost: {}; reconnecting", e.message)),
            }
            if *stop.borrow() != Stop::Run {
                return Ok(());
            }
            if started.elapsed() > Duration::from_secs(60) {
                delay = Duration::from_secs(1);
            }
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = stop.changed() => return Ok(()),
            }
            delay = (delay * 2).min(Duration::from_secs(30));
        }
    }

    /// One bot session, until the worker is stopped (`Ok`) or the session fails.
    async fn session(self: &Arc<Self>, stop: &mut watch::Receiver<Stop>) -> Result<()> {
        let mut bots = BotsClient::new(self.server.channel.clone());
        let mut session = self.create(&mut bots).await?;
        let mut leases = Leases {
            running: JoinSet::new(),
            handles: HashMap::new(),
            reported: VecDeque::new(),
        };
        let mut told = Stop::Run;
        loop {
            let mode = *stop.borrow_and_update();
            if mode == Stop::Abandon || (mode == Stop::Drain && leases.handles.is_empty()) {
                return self.leave(&mut bots, session, leases).await;
            }
            if mode == Stop::Run {
                self.start_leases(&mut session, &mut leases);
            }
            let full = leases.handles.len() >= self.capacity || mode != Stop::Run;
            session.status = if mode == Stop::Run {
                BotStatus::Ok
            } else {
                BotStatus::BotTerminating
            } as i32;
            // A worker that starts draining says so at once: BuildGrid then assigns it nothing more.
            if full && told == mode {
                tokio::select! {
                    _ = tokio::time::sleep(KEEPALIVE) => {}
                    Some(j) = leases.running.join_next() => finish(&mut session, &mut leases, j),
                    _ = stop.changed() => continue,
                }
            }
            told = mode;
            let mut client = bots.clone();
            let call = update(&self.server, &mut client, session.clone(), POLL_DEADLINE);
            tokio::select! {
                answer = call => adopt(&mut session, answer?, &mut leases),
                Some(j) = leases.running.join_next(), if !leases.handles.is_empty() => {
                    finish(&mut session, &mut leases, j)
                }
                _ = stop.changed() => {}
            }
        }
    }

    async fn create(&self, bots: &mut BotsClient) -> Result<BotSession> {
        let request = |deadline| {
            let mut req = tonic::Request::new(CreateBotSessionRequest {
                parent: self.server.instance.clone(),
                bot_session: Some(BotSession {
                    bot_id: self.bot_id.clone(),
                    status: BotStatus::Ok as i32,
                    worker: Some(BotWorker {
                        configs: vec![Config {
                            key: "capacity".to_string(),
                            value: self.capacity.to_string(),
                        }],
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
            });
            req.set_timeout(deadline);
            req
        };
        let session = match bots.create_bot_session(request(CREATE_DEADLINE)).await {
            // A server too busy to answer in time: wait for it as long as for a long poll (the new
            // session replaces the one it may have made meanwhile, which has the same bot id).
            Err(s) if s.code() == tonic::Code::DeadlineExceeded => {
                log("the server is slow to create a session; waiting for it");
                bots.create_bot_session(request(POLL_DEADLINE)).await
            }
            other => other,
        }
        .map_err(|s| self.server.error("CreateBotSession", s))?;
        log(&format!(
            "connected to {} (instance \"{}\") as {}, session {}, capacity {}",
            self.server.url, self.server.instance, self.bot_id, session.name, self.capacity
        ));
        Ok(session)
    }

    /// Starts a task for each lease the server assigned that is not running yet.
    fn start_leases(self: &Arc<Self>, session: &mut BotSession, leases: &mut Leases) {
        for lease in &mut session.leases {
            let new = lease.state == LeaseState::Pending as i32
                || lease.state == LeaseState::Active as i32;
            if !new || leases.handles.contains_key(&lease.id) || leases.reported.contains(&lease.id)
            {
                continue;
            }
            lease.state = LeaseState::Active as i32;
            let (worker, id, payload) = (Arc::clone(self), lease.id.clone(), lease.payload.clone());
            let handle = leases.running.spawn(async move {
                let outcome = worker.run_lease(payload).await;
                // Pruning a big cache takes a while: the result is reported meanwhile.
                tokio::task::spawn_blocking(move || worker.prune_cache());
                (id, outcome)
            });
            leases.handles.insert(lease.id.clone(), handle);
        }
    }

    /// Leaves the session: waits for nothing, stops what still runs, and hands back every lease not
    /// completed, so that the server requeues it now.
    async fn leave(
        &self,
        bots: &mut BotsClient,
        mut session: BotSession,
        mut leases: Leases,
    ) -> Result<()> {
        leases.running.abort_all();
        session.status = BotStatus::BotTerminating as i32;
        let mut abandoned = leases.handles.len();
        if abandoned == 0 {
            // Reports what finished and takes the session out of assignment; the answer names any
            // lease assigned meanwhile.
            session = update(&self.server, bots, session, POLL_DEADLINE).await?;
            abandoned = session.leases.len();
        }
        let mut handed_back = false;
        for lease in &mut session.leases {
            if lease.state != LeaseState::Completed as i32 {
                lease.state = LeaseState::Cancelled as i32;
                lease.result = None;
                handed_back = true;
            }
        }
        if handed_back {
            // BuildGrid refuses the transition and answers it by closing the session and requeueing
            // its jobs: the error is the expected answer. It looks at the leases only when the
            // session's version is not the one it last gave out, so none is sent.
            session.version.clear();
            let _ = update(&self.server, bots, session, POLL_DEADLINE).await;
            log(&format!(
                "session closed; {abandoned} lease(s) handed back to the server"
            ));
        } else {
            log("session closed");
        }
        Ok(())
    }
}

/// Records a finished lease task in the session, to be reported by the next update.
fn finish(
    session: &mut BotSession,
    leases: &mut Leases,
    joined: std::result::Result<Done, tokio::task::JoinError>,
) {
    let (id, outcome) = match joined {
        Ok(done) => done,
        // Aborted: the lease was cancelled or handed back, and is already out of `handles`.
        Err(e) if e.is_cancelled() => return,
        Err(e) => {
            let Some(id) = leases
                .handles
                .iter()
                .find(|(_, h)| h.id() == e.id())
                .map(|(id, _)| id.clone())
            else {
                return;
            };
            let failed = Diagnostic::env(format!("the action task failed: {e}"));
            (id, Err(failed))
        }
    };
    leases.handles.remove(&id);
    leases.reported.push_back(id.clone());
    if leases.reported.len() > 1000 {
        leases.reported.pop_front();
    }
    let Some(lease) = session.leases.iter_mut().find(|l| l.id == id) else {
        return;
    };
    lease.state = LeaseState::Completed as i32;
    match outcome {
        Ok(result) => {
            lease.status = Some(Status::default());
            lease.result = Some(Any {
                type_url: RESULT_TYPE.to_string(),
                value: result.encode_to_vec(),
            });
        }
        Err(e) => {
            log(&format!("action failed to run: {}", e.message));
            // BuildGrid retries a lease that failed with INTERNAL; a refusal or a leak would fail the
            // same way on any worker, so it ends the job.
            let code = match e.category {
                crate::diag::Category::Environment => tonic::Code::Internal,
                _ => tonic::Code::FailedPrecondition,
            };
            lease.status = Some(Status {
                code: code as i32,
                message: e.message,
                ..Default::default()
            });
            lease.result = None;
        }
    }
}

/// Takes the server's answer as the session; a running lease it no longer lists was cancelled (or
/// given to another bot), so its step stops.
fn adopt(session: &mut BotSession, answer: BotSession, leases: &mut Leases) {
    *session = answer;
    let gone: Vec<String> = leases
        .handles
        .keys()
        .filter(|id| !session.leases.iter().any(|l| &l.id == *id))
        .cloned()
        .collect();
    for id in gone {
        if let Some(h) = leases.handles.remove(&id) {
            h.abort();
            log(&format!(
                "lease {id} was cancelled by the server; its step stopped"
            ));
        }
    }
}

async fn update(
    server: &super::Server,
    bots: &mut BotsClient,
    session: BotSession,
    deadline: Duration,
) -> Result<BotSession> {
    let mut req = tonic::Request::new(UpdateBotSessionRequest {
        name: session.name.clone(),
        bot_session: Some(session),
    });
    req.set_timeout(deadline);
    bots.update_bot_session(req)
        .await
        .map_err(|s| server.error("UpdateBotSession", s))
}
