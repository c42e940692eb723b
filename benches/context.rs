//! Context hashing: the content digest of `COPY . /dst/` over a generated context of 5,000 small files
//! and three 8 MiB ones, with a cold stat cache (every file read) and a warm one (nothing read, only
//! stat'ed). Run with `cargo bench --bench context`.

mod common;

use std::path::Path;

use divan::counter::ItemsCount;
use kiln::solve::context::{HostDir, selection_digest};
use kiln::solve::statcache::StatCache;

const SMALL: usize = 5_000;

fn main() {
    divan::main();
}

/// Writes the context once per process; files get an old mtime so the stat cache may store them.
fn context() -> &'static Path {
    static DIR: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::tempdir().expect("temp dir");
        let old = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000);
        let mut noise = common::Noise::new();
        let mut bytes = |n: usize| noise.bytes(n);
        let write = |p: &Path, b: &[u8]| {
            std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
            std::fs::write(p, b).expect("write");
            let f = std::fs::File::options().write(true).open(p).expect("open");
            f.set_modified(old).expect("mtime");
        };
        for i in 0..SMALL {
            let p = dir
                .path()
                .join(format!("small/d{:02}/f{:02}.bin", i / 100, i % 100));
            write(&p, &bytes(64 + i * 2_654_435_761 % 4096));
        }
        for i in 0..3 {
            write(
                &dir.path().join(format!("big/blob{i}.bin")),
                &bytes(8 << 20),
            );
        }
        // ctime cannot be set back: wait out the racy window so a warm cache holds every file.
        std::thread::sleep(std::time::Duration::from_millis(2_100));
        dir
    })
    .path()
}

fn digest(cache: &StatCache) -> String {
    let dir = HostDir {
        path: context().to_path_buf(),
        excludes: Vec::new(),
    };
    selection_digest(&dir.tree().expect("tree"), &[".".to_string()], cache).expect("digest")
}

#[divan::bench(sample_count = 10, sample_size = 1)]
fn context_hashing_cold(b: divan::Bencher) {
    context();
    b.counter(ItemsCount::new(SMALL + 3))
        .bench(|| digest(&StatCache::memory()));
}

#[divan::bench(sample_count = 20, sample_size = 1)]
fn context_hashing_warm(b: divan::Bencher) {
    let cache = StatCache::memory();
    let first = digest(&cache);
    assert_eq!(
        cache.len(),
        SMALL + 3,
        "every file is old enough to be cached"
    );
    b.counter(ItemsCount::new(SMALL + 3)).bench(|| {
        let d = digest(&cache);
        assert_eq!(d, first);
        d
    });
}
