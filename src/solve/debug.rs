//! `--on-error=shell`: an interactive shell in the sandbox of a RUN step that failed, over the filesystem
//! it left, opened before the build reports the failure. The step's upper dir lives in its work dir until
//! `execute` returns, so the shell sees what the failed command wrote; nothing of the session is kept.

use std::sync::Mutex;

use super::Executor;
use super::executor::{RunStep, StepMount};
use super::schedule::Shared;
use crate::diag::Result;
use crate::graph::op::RunOp;
use crate::progress::{Event, Reporter};

/// Holds back the build's progress while a debug shell has the terminal, and shows it afterwards: steps
/// still running in parallel must not write over the shell.
pub(super) struct Gate {
    inner: std::sync::Arc<dyn Reporter>,
    held: Mutex<Option<Vec<Event>>>,
}

impl Gate {
    pub(super) fn new(inner: std::sync::Arc<dyn Reporter>) -> Gate {
        Gate {
            inner,
            held: Mutex::new(None),
        }
    }
}

impl Reporter for Gate {
    fn event(&self, e: Event) {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        match held.as_mut() {
            Some(events) => events.push(e),
            None => self.inner.event(e),
        }
    }

    fn finish(&self) {
        self.inner.finish();
    }

    fn pause(&self, paused: bool) {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        if paused {
            held.get_or_insert_with(Vec::new);
            self.inner.pause(true);
        } else {
            self.inner.pause(false);
            for e in held.take().unwrap_or_default() {
                self.inner.event(e);
            }
        }
    }
}

impl<E: Executor> Shared<E> {
    /// The process a debug shell runs if step `step` fails: its command in the step's environment, user,
    /// directory, network and mounts; its secrets and SSH agents only with `--debug-secrets`.
    pub(super) fn shell_step(&self, step: &RunStep, r: &RunOp) -> Result<Option<RunStep>> {
        let Some(debug) = &self.opts.debug else {
            return Ok(None);
        };
        let mut secrets = Vec::new();
        if debug.secrets {
            for m in &r.secrets {
                let value = self
                    .secrets
                    .load(&m.id)
                    .map_err(crate::diag::Diagnostic::input)?;
                secrets.push((m.clone(), value));
            }
        }
        let mounts = step
            .mounts
            .iter()
            .filter(|m| debug.secrets || !matches!(m, StepMount::Ssh { .. }))
            .cloned()
            .collect();
        Ok(Some(RunStep {
            fs: step.fs.clone(),
            args: debug.command.clone(),
            env: step.env.clone(),
            cwd: step.cwd.clone(),
            user: step.user.clone(),
            network: step.network,
            insecure: step.insecure,
            secrets,
            mounts,
            key: None,
            sandbox: step.sandbox.clone(),
            more_runs: false,
        }))
    }

    /// Opens the debug shell of the step numbered `id` in progress, once per build, and waits for it.
    pub(super) async fn open_shell(&self, id: usize, step: RunStep) {
        let Some(debug) = &self.opts.debug else {
            return;
        };
        let mut opened = debug.opened.lock().await;
        if *opened {
            return;
        }
        *opened = true;
        let note = |text: String| self.reporter.event(Event::Note(text));
        note(format!(
            "#{id}: opening `{}` in the failed step's sandbox; exit the shell to end the build",
            debug.command.join(" ")
        ));
        if debug.secrets {
            note(
                "warning: --debug-secrets: the step's secrets are mounted in the debug shell, and what \
                 it prints is not hidden"
                    .to_string(),
            );
        }
        self.reporter.pause(true);
        let result = self.exec.shell(step).await;
        self.reporter.pause(false);
        if let Err(e) = result {
            note(format!("warning: no debug shell: {}", e.message));
        }
    }
}
