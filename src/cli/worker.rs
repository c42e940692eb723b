//! `kiln worker`: run RUN steps leased by a REAPI server, in namespaces.

use tokio::signal::unix::{SignalKind, signal};

use super::args::WorkerArgs;
use super::command_line::CommandLine;
use crate::diag::{Diagnostic, Result, Span};
use crate::remote::Stop;

pub(super) fn run(args: WorkerArgs) -> Result<()> {
    let cl = CommandLine::capture();
    crate::remote::parse_url(&args.server).map_err(|m| {
        cl.error(
            &args.server,
            Span::default(),
            format!("bad server address `{}`: {m}", args.server),
        )
        .help("for example `kiln worker --server grpcs://reapi.example.com:443` or `grpc://127.0.0.1:50051`")
    })?;
    // All three TLS files together are also the identity this worker receives secrets with, so they
    // may go with a plaintext `grpc://` server.
    let secret_identity =
        args.tls_ca.is_some() && args.tls_cert.is_some() && args.tls_key.is_some();
    let max_cache_size = match &args.max_cache_size {
        None => None,
        Some(s) => Some(crate::options::parse_size(s).ok_or_else(|| {
            cl.error(s, Span::default(), format!("`{s}` is not a size"))
                .help("write a size such as `500MB` or `10GB`")
        })?),
    };
    let (connect, helper) = super::remote_auth::AuthFlags {
        prefix: "--",
        tls_ca: &args.tls_ca,
        tls_cert: &args.tls_cert,
        tls_key: &args.tls_key,
        headers: &args.header,
        credential_helper: &args.credential_helper,
        secret_channel: secret_identity,
    }
    .connect(&cl, Some(&args.server), "--server")?;
    // The helper's headers are kept apart from `--header`'s: they are renewed as they expire.
    let (helped, expires) = match &helper {
        Some(h) => crate::pipeline::helper_headers(h, &args.server)?,
        None => (Vec::new(), None),
    };
    let tls = match (&args.tls_ca, &args.tls_cert, &args.tls_key) {
        (Some(ca), Some(cert), Some(key)) => Some(crate::remote::secrets::client_config(
            &crate::remote::secrets::TlsFiles { ca, cert, key },
        )?),
        _ => None,
    };
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
        let (stop, stopped) = tokio::sync::watch::channel(Stop::Run);
        let watch = |kind| signal(kind).map_err(|e| Diagnostic::io("cannot watch for signals", e));
        let (mut term, mut int) = (
            watch(SignalKind::terminate())?,
            watch(SignalKind::interrupt())?,
        );
        // The first SIGTERM or SIGINT drains (running steps finish), the second abandons them.
        tokio::spawn(async move {
            for next in [Stop::Drain, Stop::Abandon] {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
                let _ = stop.send(next);
            }
            // Keeps the sender, so that the worker never sees the channel close.
            std::future::pending::<()>().await
        });
        let server = crate::remote::Server::new(&args.server, &args.instance, &connect, "--tls-")?;
        server.renew_headers(helped);
        server.check().await?;
        if let Some(helper) = helper {
            tokio::spawn(crate::pipeline::renew_credentials(
                server.clone(),
                helper,
                args.server.clone(),
                expires,
            ));
        }
        let mut worker = crate::remote::worker::Worker::new(
            server,
            work,
            crate::exec::Namespaces::new(),
            crate::exec::userns::layer_ids(),
            args.concurrency as usize,
            max_cache_size,
        )?;
        if let Some(tls) = tls {
            worker = worker.with_secret_tls(tls);
        }
        worker.serve(stopped).await
    })
}
