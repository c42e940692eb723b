//! `kiln images` and `kiln image rm|export|push`: the images kept in the store under a name.

use super::args::{ImageArgs, ImageCommand, StoreArgs};
use super::command_line::CommandLine;
use super::outputs::{self, Target};
use crate::diag::{Diagnostic, Result, Span, suggest};
use crate::export::Output;
use crate::progress;
use crate::store::{Access, NamedImage, Store};

fn open(args: &StoreArgs) -> Result<Store> {
    // Rootless stores hold files owned by subordinate ids, readable only inside the namespace.
    crate::exec::userns::enter()?;
    let root = args.store.clone().unwrap_or_else(Store::default_root);
    if !root.join("lock").is_file() {
        return Err(Diagnostic::input(format!(
            "{} is not a kiln store",
            root.display()
        ))
        .help("give the store a build used with --store (default: $KILN_STORE, else ~/.cache/kiln)"));
    }
    Store::open(&root, Access::Shared)
}

/// `kiln images`: name, image ID, size and age of every kept image, as `docker images` lists them. The
/// ID is the config's digest, as docker's is: the manifest changes when the kept layers are compressed
/// on their way out (`export::kept`), the config does not.
pub(super) fn list(args: StoreArgs) -> Result<()> {
    let mut out = format!(
        "{:<40} {:<19} {:>10}  CREATED\n",
        "NAME", "IMAGE ID", "SIZE"
    );
    if args.store.is_none() && !Store::default_root().exists() {
        // A machine that never built has no store, and no images.
        progress::stdout(&out);
        return Ok(());
    }
    let store = open(&args)?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    for image in store.names() {
        // A record's first blob is its config.
        let id = image.blobs.first().unwrap_or(&image.manifest).as_str();
        out.push_str(&format!(
            "{:<40} {:<19} {:>10}  {}\n",
            image.name,
            &id[..19.min(id.len())],
            super::store::human(image.size),
            ago(now.saturating_sub(image.created))
        ));
    }
    progress::stdout(&out);
    Ok(())
}

fn ago(seconds: u64) -> String {
    match seconds {
        0..60 => "just now".into(),
        60..3600 => format!("{} minutes ago", seconds / 60),
        3600..86400 => format!("{} hours ago", seconds / 3600),
        _ => format!("{} days ago", seconds / 86400),
    }
}

pub(super) fn run(args: ImageArgs) -> Result<()> {
    let cl = CommandLine::capture();
    match args.command {
        ImageCommand::Rm { names, store } => {
            let store = open(&store)?;
            for name in &names {
                if !store.remove_name(name)? {
                    return Err(unknown(&cl, &store, name));
                }
                progress::stdout(&format!("removed {name}\n"));
            }
            Ok(())
        }
        ImageCommand::Export {
            name,
            outputs,
            load,
            store,
        } => {
            let mut parsed = outputs
                .iter()
                .map(|o| file_output(&cl, o))
                .collect::<Result<Vec<_>>>()?;
            if load {
                let endpoint = crate::export::daemon::endpoint()?;
                parsed.push((Output::Load { endpoint }, Default::default()));
            }
            for (o, _) in &parsed {
                if let Output::Load { endpoint } = o {
                    crate::export::daemon::check(endpoint)?;
                }
            }
            if parsed.is_empty() {
                return Err(Diagnostic::input("kiln image export needs an output")
                    .help("write `-o type=oci,dest=DIR`, `-o type=docker,dest=FILE` or `--load`"));
            }
            let store = open(&store)?;
            let named = find(&cl, &store, &name)?;
            let kept = crate::export::kept::stored_image(&store, &named)?;
            for (output, asked) in &parsed {
                // An OCI layout is an image leaving the store: its layers as a build with that output
                // compresses them. A docker-archive and a daemon take the layers' tars as they are kept.
                let image = match output {
                    Output::Oci { .. } => {
                        crate::export::kept::leaving(&store, kept.clone(), &named, *asked)?
                    }
                    _ => kept.clone(),
                };
                let exported = crate::export::export_image(
                    &store,
                    &image,
                    output,
                    &[name.as_str()],
                    named.epoch,
                )?;
                let dest = output.destination();
                let mut note = format!("exported {name} to {dest}");
                if exported.unchanged {
                    note = format!("{dest} already holds {name}: nothing written");
                }
                if !exported.loaded.is_empty() {
                    note = format!("loaded {name} into {dest}: {}", exported.loaded.join("; "));
                }
                progress::stderr(&format!("{note}\n"));
                let manifest = exported.manifest.as_ref().unwrap_or(&named.manifest);
                progress::stdout(&format!("{manifest}\n"));
            }
            Ok(())
        }
        ImageCommand::Push {
            name,
            new_name,
            insecure_registries,
            sign,
            store,
        } => {
            let key = super::sign::parse_sign(&cl, sign.as_deref(), true)?;
            let store = open(&store)?;
            let named = find(&cl, &store, &name)?;
            let image = crate::export::kept::stored_image(&store, &named)?;
            let image = crate::export::kept::leaving(&store, image, &named, Default::default())?;
            let target = new_name.as_deref().unwrap_or(&name);
            crate::registry::ImageName::parse(target).map_err(|d| {
                cl.error(target, Span::default(), d.message)
                    .help(d.help.unwrap_or_default())
            })?;
            let tmp = store.temp_dir("push-")?;
            let dir = tmp.path().join("layout");
            crate::export::push_layout(&store, &image, &dir)?;
            let mut registry = super::flags::registry_options(
                &cl,
                &insecure_registries,
                &super::args::MirrorArgs::default(),
            )?;
            registry.sources = Some(crate::registry::sources_dir(store.root()));
            let pushed = crate::registry::push(&dir, Some("latest"), target, &registry)?;
            progress::stderr(&format!(
                "pushed {name} to {target}, manifest {}\n",
                pushed.digest
            ));
            progress::stdout(&format!("{}\n", pushed.digest));
            if let Some(key) = key {
                for note in crate::sign::sign_pushed(&key, &dir, target, &pushed.digest, &registry)?
                {
                    progress::stderr(&format!("{note}\n"));
                }
            }
            Ok(())
        }
    }
}

fn find(cl: &CommandLine, store: &Store, name: &str) -> Result<NamedImage> {
    store.named(name).ok_or_else(|| unknown(cl, store, name))
}

/// A name the store does not keep, with the nearest one it does.
fn unknown(cl: &CommandLine, store: &Store, name: &str) -> Diagnostic {
    let names: Vec<String> = store.names().into_iter().map(|n| n.name).collect();
    let d = cl.error(
        name,
        Span::default(),
        format!("no image named `{name}` in the store"),
    );
    match suggest(name, names.iter().map(String::as_str)) {
        Some(s) => d.help(format!("did you mean `{s}`? (`kiln images` lists them)")),
        None => d.help(
            "`kiln images` lists the kept images; `kiln build -t NAME` without an output keeps one",
        ),
    }
}

/// An `-o` of `kiln image export`: a file, directory or daemon output (a push is `kiln image push`), with
/// what it asks of the layers' compression.
fn file_output(cl: &CommandLine, value: &str) -> Result<(Output, crate::export::kept::Asked)> {
    let parsed = outputs::parse(cl, value, &[])?;
    let asked = crate::export::kept::Asked {
        codec: parsed.layers.codec,
        level: parsed.layers.level,
        force: parsed.layers.force.unwrap_or(false),
    };
    match parsed.target {
        Target::File(out) => Ok((out, asked)),
        Target::Push(_) | Target::Store => Err(cl
            .error(
                value,
                Span::default(),
                "`kiln image export` writes files or loads a daemon",
            )
            .help("push a kept image with `kiln image push NAME [NEWNAME]`")),
    }
}
