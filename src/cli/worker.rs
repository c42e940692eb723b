//! `kiln worker`: run RUN steps leased by a REAPI server, in namespaces.

use super::args::WorkerArgs;
use crate::diag::{Diagnostic, Result};

pub(super) fn run(args: WorkerArgs) -> Result<()> {
    crate::remote::parse_url(&args.server).map_err(|m| {
        Diagnostic::input(format!("bad server address `{}`: {m}", args.server))
            .help("for example `kiln worker --server grpc://127.0.0.1:50051`")
    })?;
    // Before any thread starts: an unprivileged worker becomes root of its own user namespace here.
    crate::exec::userns::enter()?;
    let temp;
    let work = match args.work_dir {
        Some(d) => d,
        None => {
            temp = tempfile::Builder::new()
                .prefix("kiln-worker-")
                .tempdir()
                .map_err(|e| Diagnostic::io("cannot make the worker's directory", e))?;
            temp.path().to_path_buf()
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Diagnostic::io("cannot start the worker", e))?;
    runtime.block_on(async {
        let server = crate::remote::Server::new(&args.server, &args.instance)?;
        server.check().await?;
        let worker = crate::remote::worker::Worker::new(
            server,
            work,
            crate::exec::Namespaces::new(),
            crate::exec::userns::layer_ids(),
        )?;
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .map_err(|e| Diagnostic::io("cannot watch for SIGTERM", e))?;
        tokio::select! {
            r = worker.serve() => r,
            _ = tokio::signal::ctrl_c() => Ok(()),
            _ = term.recv() => Ok(()),
        }
    })
}
