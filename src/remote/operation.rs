//! One remote execution followed to its end: `Execute`, then `WaitExecution` by the operation's name
//! whenever the stream breaks (a server restart, a proxy's idle timeout), with exponential backoff and
//! jitter; a new `Execute` of the same Action when the server no longer knows the operation; and
//! `CancelOperation` when the build gives the step up, so that no job runs later with nobody waiting.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bazel_remote_apis::build::bazel::remote::execution::v2 as re;
use bazel_remote_apis::google::longrunning::{self as lr, operation};
use prost::Message as _;
use tonic::Code;

use super::server::Server;
use crate::diag::{Diagnostic, Result};
use crate::progress::Placement;

/// Broken calls in a row before the step fails: with the backoff below, about a minute of a server
/// that does not answer (Bazel's `--remote_retries` is 5).
const RETRIES: u32 = 10;
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// The operation a step is waiting for, shared with whoever must cancel it when the step is given up.
#[derive(Clone, Default)]
pub(crate) struct Running(Arc<Mutex<Option<String>>>);

impl Running {
    fn set(&self, name: Option<String>) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = name;
    }

    fn get(&self) -> Option<String> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The operation, if one is still waited for; from here on nobody waits for it.
    pub(crate) fn take(&self) -> Option<String> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

/// Codes after which the same call may succeed: the server is restarting or the connection broke.
fn transient(code: Code) -> bool {
    matches!(
        code,
        Code::Unavailable
            | Code::Cancelled
            | Code::Unknown
            | Code::Aborted
            | Code::Internal
            | Code::DeadlineExceeded
            | Code::ResourceExhausted
    )
}

/// The wait before retry number `n` (from 1): doubling from 250 ms up to 10 s, less up to a quarter at
/// random so that the clients of a restarted server do not all come back at once.
fn backoff(n: u32) -> Duration {
    use std::hash::{BuildHasher as _, Hasher as _};
    let full = FIRST_BACKOFF
        .saturating_mul(1 << n.saturating_sub(1).min(16))
        .min(MAX_BACKOFF);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(n);
    let quarter = full / 4;
    full - quarter.mul_f64((h.finish() % 1000) as f64 / 1000.0)
}

/// What the operation's metadata says of where the step is.
fn placement(op: &lr::Operation) -> Option<Placement> {
    let meta = op.metadata.as_ref()?;
    let meta = re::ExecuteOperationMetadata::decode(meta.value.as_slice()).ok()?;
    let worker = meta
        .partial_execution_metadata
        .map(|m| m.worker)
        .filter(|w| !w.is_empty());
    match re::execution_stage::Value::try_from(meta.stage).ok()? {
        re::execution_stage::Value::Queued => Some(Placement::Queued),
        re::execution_stage::Value::Executing => Some(Placement::Remote { worker }),
        _ => None,
    }
}

impl Server {
    /// Executes an Action and waits for its response, retrying across broken streams and server
    /// restarts (see the module's comment). `running` holds the operation's name while it is waited
    /// for; `status` hears each new stage.
    pub(crate) async fn execute(
        &self,
        action: &re::Digest,
        skip_cache_lookup: bool,
        running: &Running,
        status: &(dyn Fn(Placement) + Send + Sync),
    ) -> Result<re::ExecuteResponse> {
        let mut c = re::execution_client::ExecutionClient::new(self.channel.clone());
        let mut failures = 0u32;
        let mut last: Option<Placement> = None;
        loop {
            let name = running.get();
            let what = if name.is_some() {
                "WaitExecution"
            } else {
                "Execute"
            };
            let opened = match &name {
                None => {
                    c.execute(re::ExecuteRequest {
                        instance_name: self.instance.clone(),
                        action_digest: Some(action.clone()),
                        skip_cache_lookup,
                        ..Default::default()
                    })
                    .await
                }
                Some(name) => {
                    c.wait_execution(re::WaitExecutionRequest { name: name.clone() })
                        .await
                }
            };
            let broken = match opened {
                Ok(stream) => {
                    let mut stream = stream.into_inner();
                    loop {
                        match stream.message().await {
                            Ok(Some(op)) => {
                                failures = 0;
                                if let Some(p) = placement(&op)
                                    && last.as_ref() != Some(&p)
                                {
                                    status(p.clone());
                                    last = Some(p);
                                }
                                if op.done {
                                    running.set(None);
                                    return self.response(op);
                                }
                                running.set(Some(op.name));
                            }
                            Ok(None) => break tonic::Status::unavailable("the stream ended early"),
                            Err(s) => break s,
                        }
                    }
                }
                Err(s) => s,
            };
            // The server forgot the operation (restarted without its database, or expired it): the
            // same Action again, which its ActionCache may already answer.
            if broken.code() == Code::NotFound && name.is_some() {
                running.set(None);
            } else if !transient(broken.code()) {
                return Err(self.error(what, broken));
            }
            failures += 1;
            if failures > RETRIES {
                return Err(self.error(what, broken).help(format!(
                    "kiln retried {RETRIES} times; check that the REAPI server is running"
                )));
            }
            tokio::time::sleep(backoff(failures)).await;
        }
    }

    fn response(&self, op: lr::Operation) -> Result<re::ExecuteResponse> {
        match op.result {
            Some(operation::Result::Response(any)) => {
                re::ExecuteResponse::decode(any.value.as_slice()).map_err(|e| {
                    Diagnostic::env(format!(
                        "remote Execute at {} answered garbage: {e}",
                        self.url
                    ))
                })
            }
            Some(operation::Result::Error(st)) => Err(Diagnostic::env(format!(
                "remote execution failed at {}: {} (code {})",
                self.url, st.message, st.code
            ))),
            None => Err(Diagnostic::env(format!(
                "remote execution at {} finished without a result",
                self.url
            ))),
        }
    }

    /// Cancels an operation (`google.longrunning.Operations.CancelOperation`, which BuildGrid and
    /// Buildbarn serve beside Execution).
    pub(crate) async fn cancel(&self, name: &str) -> Result<()> {
        let mut c = lr::operations_client::OperationsClient::new(self.channel.clone());
        c.cancel_operation(lr::CancelOperationRequest {
            name: name.to_string(),
        })
        .await
        .map_err(|s| self.error("CancelOperation", s))?;
        Ok(())
    }
}

/// Cancels the operation a dropped step was waiting for. The step's future is dropped when the build
/// is interrupted or a sibling fails, often while its runtime shuts down, so the call is made on a
/// thread and runtime of its own over a new connection, and waited for (at most 5 s): kiln must not
/// exit before the server has heard it.
pub(crate) struct CancelOnDrop {
    pub(crate) server: Server,
    pub(crate) running: Running,
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        let Some(name) = self.running.take() else {
            return;
        };
        let server = self.server.clone();
        let cancelling = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            runtime.block_on(async {
                let server = server.reconnect().ok()?;
                tokio::time::timeout(Duration::from_secs(5), server.cancel(&name))
                    .await
                    .ok()?
                    .ok()
            })
        });
        let _ = cancelling.join();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_cap_with_jitter() {
        for n in 1..20 {
            let full = FIRST_BACKOFF
                .saturating_mul(1 << (n - 1).min(16))
                .min(MAX_BACKOFF);
            let b = backoff(n);
            assert!(b <= full && b >= full * 3 / 4, "{n}: {b:?} of {full:?}");
        }
        assert_eq!(backoff(30).max(MAX_BACKOFF), MAX_BACKOFF);
    }

    #[test]
    fn only_broken_connections_are_retried() {
        assert!(transient(Code::Unavailable) && transient(Code::Cancelled));
        assert!(!transient(Code::InvalidArgument) && !transient(Code::PermissionDenied));
        assert!(!transient(Code::FailedPrecondition) && !transient(Code::NotFound));
    }
}
