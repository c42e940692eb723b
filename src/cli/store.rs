//! `kiln du` and `kiln prune`: the store's space, shown and freed.

use std::path::PathBuf;

use super::args::{PruneArgs, StoreArgs};
use super::command_line::CommandLine;
use crate::diag::{Result, Span};
use crate::progress;

fn store_root(args: &StoreArgs) -> PathBuf {
    args.store
        .clone()
        .unwrap_or_else(crate::store::Store::default_root)
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
    let store = crate::store::Store::open(&store_root(&args), crate::store::Access::Shared)?;
    let u = store.usage();
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
    let store =
        crate::store::Store::open(&store_root(&args.store), crate::store::Access::Exclusive)?;
    let freed = store.prune(keep)?;
    progress::stdout(&format!(
        "freed {}, {} left\n",
        human(freed),
        human(store.usage().total())
    ));
    Ok(())
}
