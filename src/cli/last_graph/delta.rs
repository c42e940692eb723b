//! What changed in the kept graph since its file was written, kept in a file of its own beside it
//! (`<cache>.graph-delta`, naming the CRC-32 of the file it changes): a run after an edit writes the
//! few nodes, units and files it changed, not the whole graph again. The graph is written whole, and
//! the delta removed, once the delta would pass a quarter of it.

use std::borrow::Cow;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::kept::{Kept, KeptFile, Node, Unit, write_checked};
use crate::inputs::Stat;

/// The delta as read, borrowing the file's bytes.
#[derive(Deserialize)]
struct Delta<'a> {
    base: u32,
    #[serde(borrow)]
    digests: Vec<(u32, Cow<'a, str>)>,
    #[serde(borrow)]
    nodes: Vec<(u32, Node<'a>)>,
    #[serde(borrow)]
    units: Vec<(u32, Unit<'a>)>,
    files: Vec<(u32, KeptFile)>,
    roots: Vec<(u32, Option<Vec<String>>)>,
    entered: Vec<(u32, u32, Option<Stat>)>,
    dirs: Option<Vec<(PathBuf, bool)>>,
}

/// The delta as written, borrowing the kept graph (the same layout as `Delta`).
#[derive(Serialize)]
struct Out<'k> {
    base: u32,
    digests: Vec<(u32, &'k str)>,
    nodes: Vec<(u32, &'k Node<'k>)>,
    units: Vec<(u32, &'k Unit<'k>)>,
    files: Vec<(u32, &'k KeptFile)>,
    roots: Vec<(u32, &'k Option<Vec<String>>)>,
    entered: Vec<(u32, u32, Option<Stat>)>,
    dirs: Option<&'k [(PathBuf, bool)]>,
}

pub(super) fn delta_of(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push("-delta");
    PathBuf::from(p)
}

impl<'a> Kept<'a> {
    /// Applies the delta in `bytes` (a file's content) if it is whole and changes this graph's file;
    /// what it changed counts as touched, so the next delta holds it too.
    pub(super) fn apply_delta(&mut self, bytes: &'a [u8]) {
        let Some((body, crc)) = bytes.split_at_checked(bytes.len().wrapping_sub(4)) else {
            return;
        };
        let whole = crc32fast::hash(body).to_le_bytes() == crc;
        let Some(d) = whole
            .then(|| rmp_serde::from_slice::<Delta<'a>>(body).ok())
            .flatten()
        else {
            return;
        };
        let (nodes, units) = (self.nodes.len(), self.units.len());
        let fits = Some(d.base) == self.crc
            && d.digests.iter().all(|(i, _)| (*i as usize) < nodes)
            && d.nodes
                .iter()
                .all(|(i, n)| (*i as usize) < nodes && n.in_range(nodes))
            && d.units
                .iter()
                .all(|(i, u)| (*i as usize) < units && u.in_range(nodes, units))
            && d.files
                .iter()
                .all(|(i, _)| (*i as usize) < self.files.len())
            && d.roots
                .iter()
                .all(|(i, _)| (*i as usize) < self.roots.len())
            && d.entered.iter().all(|&(i, j, _)| {
                (self.walked.get(i as usize)).is_some_and(|w| (j as usize) < w.entered.len())
            });
        if !fits {
            return;
        }
        for (i, digest) in d.digests {
            self.nodes[i as usize].digest = digest;
            self.touched.digests.insert(i);
        }
        for (i, node) in d.nodes {
            self.nodes[i as usize] = node;
            self.touched.nodes.insert(i);
        }
        for (i, unit) in d.units {
            self.units[i as usize] = unit;
            self.touched.units.insert(i);
        }
        for (i, file) in d.files {
            self.files[i as usize] = file;
            self.touched.files.insert(i);
        }
        for (i, tags) in d.roots {
            self.roots[i as usize].tags = tags;
            self.touched.roots.insert(i);
        }
        for (i, j, stat) in d.entered {
            self.walked[i as usize].entered[j as usize].1 = stat;
            self.touched.entered.insert((i, j));
        }
        if let Some(dirs) = d.dirs {
            self.dirs = dirs;
            self.touched.dirs = true;
        }
    }

    /// Writes what changed: the delta beside the graph's file at `path`, or the whole graph (and no
    /// delta) when the delta would pass a quarter of it or no file was read.
    pub(super) fn save(&self, path: &Path, file_len: usize) {
        let t = &self.touched;
        let walked = t.entered.len() * 64 + if t.dirs { self.dirs.len() * 64 } else { 0 };
        let delta_len = t.digests.len() * 80 + t.nodes.len() * 256 + t.units.len() * 160 + walked;
        let Some(base) = self.crc.filter(|_| delta_len < file_len / 4) else {
            self.write(path);
            let _ = std::fs::remove_file(delta_of(path));
            return;
        };
        let out = Out {
            base,
            digests: (t.digests.difference(&t.nodes))
                .map(|&i| (i, self.nodes[i as usize].digest.as_ref()))
                .collect(),
            nodes: t
                .nodes
                .iter()
                .map(|&i| (i, &self.nodes[i as usize]))
                .collect(),
            units: t
                .units
                .iter()
                .map(|&i| (i, &self.units[i as usize]))
                .collect(),
            files: t
                .files
                .iter()
                .map(|&i| (i, &self.files[i as usize]))
                .collect(),
            roots: t
                .roots
                .iter()
                .map(|&i| (i, &self.roots[i as usize].tags))
                .collect(),
            entered: (t.entered.iter())
                .map(|&(i, j)| (i, j, self.walked[i as usize].entered[j as usize].1))
                .collect(),
            dirs: t.dirs.then_some(&self.dirs[..]),
        };
        write_checked(&delta_of(path), &out);
    }
}
