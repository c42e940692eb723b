//! `kiln du` and `kiln prune`: the store's space, shown and freed.

use std::path::PathBuf;

use super::args::{PruneArgs, StoreArgs};
use super::command_line::CommandLine;
use crate::diag::{Diagnostic, Result, Span};
use crate::progress;

fn store_root(args: &StoreArgs) -> PathBuf {
    args.store
        .clone()
        .unwrap_or_else(crate::store::Store::default_root)
}

/// Opens the store for a command that only reads or shrinks it: a store that does not exist yet is
/// `None` (nothing to show or free), except where `--store` names it, when it is most likely a typo
/// and is neither created nor passed over in silence.
fn open_existing(
    args: &StoreArgs,
    access: crate::store::Access,
) -> Result<Option<crate::store::Store>> {
    let root = store_root(args);
    if !root.join("snapshots").is_dir() {
        let shown = root.display().to_string();
        let what = if root.exists() {
            format!("`{shown}` is not a kiln store")
        } else {
            format!("there is no kiln store at `{shown}`")
        };
        let help =
            "check the path; a store is made by the first `kiln build --store DIR` that uses it";
        return match &args.store {
            Some(given) => {
                let cl = CommandLine::capture();
                let given = given.display().to_string();
                Err(cl.error(&given, Span::default(), what).help(help))
            }
            None if std::env::var_os("KILN_STORE").is_some_and(|v| !v.is_empty()) => {
                Err(Diagnostic::input(format!("{what} (from KILN_STORE)")).help(help))
            }
            None => Ok(None),
        };
    }
    crate::store::Store::open(&root, access).map(Some)
}

pub(super) fn human(bytes: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < units.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", units[u])
    }
}

pub(super) fn du(args: StoreArgs) -> Result<()> {
    // Rootless stores hold files owned by subordinate ids, readable only inside the namespace.
    crate::exec::userns::enter()?;
    let u = open_existing(&args, crate::store::Access::Shared)?
        .map(|s| s.usage())
        .unwrap_or_default();
    let rows = [
        (
            "layer snapshots",
            format!("{} ({})", human(u.snapshots), u.snapshot_count),
        ),
        ("blobs", human(u.blobs)),
        ("cache mounts", human(u.caches)),
        ("work in progress", human(u.tmp)),
        ("cached results", u.records.to_string()),
        ("total", human(u.total())),
    ];
    for (name, value) in rows {
        progress::stdout(&format!("{name:<22}{value:>12}\n"));
    }
    Ok(())
}

pub(super) fn prune(args: PruneArgs) -> Result<()> {
    // Rootless stores hold files owned by subordinate ids, removable only inside the namespace.
    crate::exec::userns::enter()?;
    let cl = CommandLine::capture();
    let keep = match &args.keep_storage {
        None => 0,
        Some(s) => crate::options::parse_size(s).ok_or_else(|| {
            cl.error(s, Span::default(), format!("`{s}` is not a size"))
                .help("write a size such as `500MB` or `10GB`")
        })?,
    };
    let Some(store) = open_existing(&args.store, crate::store::Access::Exclusive)? else {
        progress::stdout("freed 0 B, 0 B left\n");
        return Ok(());
    };
    if !args.force && !confirm(&args)? {
        progress::stderr("nothing pruned\n");
        return Ok(());
    }
    let freed = store.prune(keep)?;
    progress::stdout(&format!(
        "freed {}, {} left\n",
        human(freed),
        human(store.usage().total())
    ));
    Ok(())
}

/// `docker builder prune`'s question, asked on a terminal; without one, only `--force` prunes.
fn confirm(args: &PruneArgs) -> Result<bool> {
    use std::io::IsTerminal as _;
    let what = match &args.keep_storage {
        Some(size) => format!("build cache beyond the most recently used {size}"),
        None => "all build cache".to_string(),
    };
    if !std::io::stdin().is_terminal() {
        return Err(Diagnostic::input(format!(
            "kiln prune would remove {what}, and there is no terminal to ask for confirmation"
        ))
        .help("pass `-f` (`--force`) to prune without asking"));
    }
    progress::stderr(&format!(
        "WARNING! This will remove {what}.\nAre you sure you want to continue? [y/N] "
    ));
    let mut answer = String::new();
    std::io::stdin()
        .read_line(&mut answer)
        .map_err(|e| Diagnostic::io("cannot read the answer", e))?;
    Ok(matches!(
        answer.trim().to_ascii_lowercase().as_str(),
        "y" | "yes"
    ))
}
