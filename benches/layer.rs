//! Layer creation: a snapshot of 5,000 small files and three 4 MiB ones (incompressible, as the peers'
//! copyheavy context) streamed through tar, SHA-256 (diff id), the compressor and SHA-256 (blob digest),
//! as `kiln build -o type=oci` does for a layer it has not compressed before; and the same data split into
//! four layers, compressed one after another and in parallel; and one zstd layer on one core and on all.
//! Run with `cargo bench --bench layer`.

mod common;

use std::path::{Path, PathBuf};

use divan::counter::BytesCount;
use kiln::layer::{Codec, cores, layer_digests, layer_digests_threaded, parallel_map, write_layer};

const SMALL: usize = 5_000;
const BIG: usize = 3;
const BIG_SIZE: usize = 4 << 20;
/// The split snapshots: the small files in four directories, each with one big file but the last.
const PARTS: usize = 4;

fn main() {
    divan::main();
}

struct Snapshots {
    _dir: tempfile::TempDir,
    whole: PathBuf,
    parts: Vec<PathBuf>,
    bytes: u64,
}

/// Writes the snapshots once per process.
fn snapshots() -> &'static Snapshots {
    static SNAPSHOTS: std::sync::OnceLock<Snapshots> = std::sync::OnceLock::new();
    SNAPSHOTS.get_or_init(|| {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut noise = common::Noise::new();
        let mut bytes = |n: usize| noise.bytes(n);
        let whole = dir.path().join("whole");
        let parts: Vec<PathBuf> = (0..PARTS)
            .map(|i| dir.path().join(format!("part{i}")))
            .collect();
        let mut total = 0u64;
        let mut write = |rel: &str, part: usize, b: &[u8]| {
            for root in [&whole, &parts[part]] {
                let p = root.join(rel);
                std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
                std::fs::write(&p, b).expect("write");
            }
            total += b.len() as u64;
        };
        for i in 0..SMALL {
            let rel = format!("small/d{:02}/f{:02}.bin", i / 100, i % 100);
            write(
                &rel,
                i * PARTS / SMALL,
                &bytes(64 + i * 2_654_435_761 % 4096),
            );
        }
        for i in 0..BIG {
            write(&format!("big/blob{i}.bin"), i, &bytes(BIG_SIZE));
        }
        Snapshots {
            _dir: dir,
            whole,
            parts,
            bytes: total,
        }
    })
}

fn layer(path: &Path, codec: Codec) -> String {
    layer_digests(path, None, codec, std::io::sink())
        .expect("layer")
        .digest
}

/// The tar stream alone (walk, headers, file reads), no hashing or compression.
#[divan::bench(sample_count = 10, sample_size = 1)]
fn tar_only(b: divan::Bencher) {
    let s = snapshots();
    b.counter(BytesCount::new(s.bytes))
        .bench(|| write_layer(&s.whole, std::io::sink(), None).expect("tar"));
}

#[divan::bench(sample_count = 10, sample_size = 1, args = ["gzip", "zstd"])]
fn one_layer(b: divan::Bencher, codec: &str) {
    let s = snapshots();
    let codec = codec_of(codec);
    let first = layer(&s.whole, codec);
    b.counter(BytesCount::new(s.bytes)).bench(|| {
        let d = layer(&s.whole, codec);
        assert_eq!(d, first, "the same snapshot gives the same blob");
        d
    });
}

/// One layer in zstd on `threads` cores (1: one worker; 0: one per core): the same blob either way.
#[divan::bench(sample_count = 10, sample_size = 1, args = [1, 0])]
fn one_layer_zstd_threads(b: divan::Bencher, threads: usize) {
    let s = snapshots();
    let first = layer(&s.whole, Codec::Zstd);
    b.counter(BytesCount::new(s.bytes)).bench(|| {
        let d =
            layer_digests_threaded(&s.whole, None, Codec::Zstd, cores(threads), std::io::sink())
                .expect("layer")
                .digest;
        assert_eq!(d, first, "the same blob on any number of threads");
        d
    });
}

/// Four layers, compressed with `jobs` threads (1: one after another; 0: one per core).
#[divan::bench(sample_count = 10, sample_size = 1, args = [1, 0])]
fn four_layers_gzip(b: divan::Bencher, jobs: usize) {
    let s = snapshots();
    b.counter(BytesCount::new(s.bytes))
        .bench(|| parallel_map(&s.parts, jobs, |p| layer(p, Codec::Gzip)));
}

fn codec_of(name: &str) -> Codec {
    match name {
        "zstd" => Codec::Zstd,
        _ => Codec::Gzip,
    }
}
