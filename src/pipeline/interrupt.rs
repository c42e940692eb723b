//! Ctrl-C and SIGTERM during a build. The first stops the build: the solve is dropped (its steps'
//! sandboxes killed, their work dirs removed), the live view cleared, and kiln exits 130 (143). A second
//! signal, or one that comes when no build is solving, ends kiln at once with the same code.
//!
//! The signals are watched on a thread of their own with its own runtime, so they are still heard while
//! the build's runtime shuts down (which waits for blocking work to end) and after it is gone. Once
//! watched, they are watched for the rest of the process: the default action (die) would skip the
//! cleanup, and tokio never gives a signal back.

use std::sync::{Mutex, OnceLock};

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::oneshot;

use crate::diag::{Category, Diagnostic, Result};

/// The first signal's number arrives here.
pub(super) type First = oneshot::Receiver<i32>;

/// Where the watcher sends the next signal: the solving build's receiver, or nobody.
static LISTENER: Mutex<Option<oneshot::Sender<i32>>> = Mutex::new(None);
static WATCHER: OnceLock<std::result::Result<(), String>> = OnceLock::new();

/// Hears the next SIGINT or SIGTERM (the watcher is started on first use).
pub(super) fn listen() -> Result<First> {
    WATCHER
        .get_or_init(start)
        .clone()
        .map_err(|e| Diagnostic::env(format!("cannot watch for SIGINT and SIGTERM: {e}")))?;
    let (tx, rx) = oneshot::channel();
    *LISTENER.lock().unwrap_or_else(|p| p.into_inner()) = Some(tx);
    Ok(rx)
}

/// Stops listening: from here on a signal ends kiln at once.
pub(super) fn stop() {
    LISTENER.lock().unwrap_or_else(|p| p.into_inner()).take();
}

fn start() -> std::result::Result<(), String> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("kiln-signals".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(r) => r,
                Err(e) => {
                    let _ = ready_tx.send(Err(e.to_string()));
                    return;
                }
            };
            runtime.block_on(async move {
                let (int, term) = (SignalKind::interrupt(), SignalKind::terminate());
                let (mut on_int, mut on_term) = match (signal(int), signal(term)) {
                    (Ok(i), Ok(t)) => (i, t),
                    (Err(e), _) | (_, Err(e)) => {
                        let _ = ready_tx.send(Err(e.to_string()));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(()));
                loop {
                    let number = tokio::select! {
                        _ = on_int.recv() => int.as_raw_value(),
                        _ = on_term.recv() => term.as_raw_value(),
                    };
                    let listener = LISTENER.lock().unwrap_or_else(|p| p.into_inner()).take();
                    if listener.is_none_or(|tx| tx.send(number).is_err()) {
                        std::process::exit(128 + number);
                    }
                }
            });
        })
        .map_err(|e| e.to_string())?;
    ready_rx
        .recv()
        .unwrap_or_else(|_| Err("the watcher stopped".into()))
}

/// The error a build stopped by `signal` ends with.
pub(super) fn interrupted(signal: i32) -> Diagnostic {
    let what = if signal == SignalKind::terminate().as_raw_value() {
        "terminated"
    } else {
        "interrupted"
    };
    Diagnostic::new(Category::Interrupted(signal), what)
}
