//! Export: a solved image (snapshots plus config) becomes OCI blobs (layer tars, config, manifest)
//! and is written out as an OCI image layout (directory or tar), a docker-archive, or as its final
//! filesystem (a directory or a tar).

pub mod attach;
pub mod cache;
pub mod cache_mounts;
pub mod daemon;
pub mod docker;
pub mod index;
pub mod kept;
pub mod local;
pub mod record;

use std::path::{Path, PathBuf};

use oci_spec::image::{
    Descriptor, DescriptorBuilder, ImageConfiguration, ImageManifestBuilder, MediaType,
};
use serde_json::{Value, json};

use crate::diag::{Diagnostic, Result};
use crate::digest::Digest;
use crate::layer;
use crate::secret::{Leak, LeakScanner};
use crate::store::{LayerBlob, Store};

/// The most zstd workers one layer gets: its blob is the same for any number, and each holds a job's
/// buffers (8 MiB of input at kiln's level, plus its window), so memory stays bounded on big machines.
const ZSTD_WORKERS: usize = 4;

/// `-o type=...,dest=...`
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    /// An OCI image layout; a tar of one when `tar` is set (dest ends in `.tar`). `name` (`-o name=`)
    /// names the image instead of the build's `-t`.
    Oci {
        dest: PathBuf,
        tar: bool,
        name: Option<String>,
    },
    /// A docker-archive tar (`docker save` format), loadable by `docker load` and `podman load`.
    Docker { dest: PathBuf, name: Option<String> },
    /// The final filesystem, as a directory.
    Local { dest: PathBuf },
    /// The final filesystem, as a tar file.
    Tar { dest: PathBuf },
    /// Loaded into a Docker Engine (or podman) through its API socket: `--load`, `-o type=docker`
    /// without `dest`.
    Load { endpoint: daemon::Endpoint },
}

impl Output {
    /// The output's type as `-o type=` names it, for messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Output::Oci { .. } => "oci",
            Output::Docker { .. } | Output::Load { .. } => "docker",
            Output::Local { .. } => "local",
            Output::Tar { .. } => "tar",
        }
    }

    /// Where the output goes, for messages.
    pub fn destination(&self) -> String {
        match self {
            Output::Oci { dest, .. }
            | Output::Docker { dest, .. }
            | Output::Local { dest }
            | Output::Tar { dest } => dest.display().to_string(),
            Output::Load { endpoint } => format!("the daemon at {}", endpoint.socket.display()),
        }
    }
}

/// The placeholder in an output's `dest` that makes it one output per target: `dest=out/{target}`.
pub const TARGET_PLACEHOLDER: &str = "{target}";

impl Output {
    /// Whether `dest` has the `{target}` placeholder, so each target gets its own destination.
    pub fn per_target(&self) -> bool {
        match self {
            Output::Oci { dest, .. }
            | Output::Docker { dest, .. }
            | Output::Local { dest }
            | Output::Tar { dest } => dest.to_string_lossy().contains(TARGET_PLACEHOLDER),
            Output::Load { .. } => false,
        }
    }

    /// This output for the target `label`: `{target}` in `dest` becomes the label as a relative path
    /// (`//services/api:image` → `services/api/image`, as Bazel lays out its outputs).
    pub fn for_target(&self, label: &str) -> Output {
        let path = label.trim_start_matches("//").replace(':', "/");
        let path = path.trim_start_matches('/');
        let sub = |dest: &PathBuf| {
            PathBuf::from(dest.to_string_lossy().replace(TARGET_PLACEHOLDER, path))
        };
        match self {
            Output::Oci { dest, tar, name } => Output::Oci {
                dest: sub(dest),
                tar: *tar,
                name: name.clone(),
            },
            Output::Docker { dest, name } => Output::Docker {
                dest: sub(dest),
                name: name.clone(),
            },
            Output::Local { dest } => Output::Local { dest: sub(dest) },
            Output::Tar { dest } => Output::Tar { dest: sub(dest) },
            Output::Load { endpoint } => Output::Load {
                endpoint: endpoint.clone(),
            },
        }
    }
}

/// How image outputs are made: `SOURCE_DATE_EPOCH` and the layer codec.
#[derive(Clone, Debug, Default)]
pub struct Settings {
    pub epoch: Option<i64>,
    pub codec: layer::Codec,
    /// How many layers are compressed at once (`--jobs`); 0: one per core.
    pub jobs: usize,
    /// `compression-level=`: the codec's level instead of kiln's default (gzip 6, zstd 3).
    pub level: Option<i32>,
    /// `force-compression=true`: a base image layer compressed otherwise than `codec` is compressed
    /// anew instead of being reused as it came.
    pub force: bool,
    /// `--annotation KEY=VALUE` (and `manifest:KEY=VALUE`): the image manifest's annotations.
    pub manifest_annotations: std::collections::BTreeMap<String, String>,
    /// `--annotation manifest-descriptor:KEY=VALUE`: annotations of the manifest's descriptor in an
    /// OCI layout's `index.json`.
    pub descriptor_annotations: std::collections::BTreeMap<String, String>,
    /// The build's own uncompressed layers are recorded by their digests alone and their tars left
    /// unwritten, to be made from their snapshots when they leave the store (an image kept under a name:
    /// `NamedImage::snapshots`).
    pub unwritten: bool,
}

impl Settings {
    /// The same settings with the build's own layers kept as their tars (no codec, no level).
    fn as_tars(&self) -> Settings {
        Settings {
            codec: layer::Codec::Uncompressed,
            level: None,
            ..self.clone()
        }
    }

    /// `as_tars`, the tars left unwritten until they leave the store (an image kept under a name).
    fn as_kept(&self) -> Settings {
        Settings {
            unwritten: true,
            ..self.as_tars()
        }
    }
}

/// Where a file output is written to stdout (buildx's `dest=-`).
pub fn is_stdout(dest: &Path) -> bool {
    dest.as_os_str() == "-"
}

/// What was exported: the manifest digest (for image outputs) and the number of layers, for the summary.
pub struct Exported {
    pub manifest: Option<Digest>,
    pub layers: usize,
    /// The destination already held exactly this output (see `record`), so nothing was written.
    pub unchanged: bool,
    /// What a daemon said it loaded (`--load`).
    pub loaded: Vec<String>,
}

/// Writes the requested output. Image outputs build their blobs in the store (reusing any computed before);
/// filesystem outputs apply the snapshots and never compress anything. An output that already holds what
/// would be written (as the store's export record vouches) is left alone.
pub fn export(
    store: &Store,
    layers: &[String],
    config: &Value,
    output: &Output,
    names: &[&str],
    settings: &Settings,
) -> Result<Exported> {
    let epoch = settings.epoch;
    let epoch_text = epoch.map_or_else(String::new, |e| e.to_string());
    let filesystem = |unchanged| Exported {
        manifest: None,
        layers: layers.len(),
        unchanged,
        loaded: Vec::new(),
    };
    match output {
        Output::Local { dest } => {
            local::write_dir(store, layers, dest)?;
            return Ok(filesystem(false));
        }
        Output::Tar { dest } => {
            let key = record_key("tar", &[&snapshot_identities(store, layers)?, &epoch_text]);
            let unchanged = write_file_output(store, dest, &key, |dest| {
                let tmp = store.temp_dir("export-")?;
                let dir = tmp.path().join("rootfs");
                local::write_dir(store, layers, &dir)?;
                write_atomically(dest, |f| local::write_tar(&dir, f, epoch))
            })?;
            return Ok(filesystem(unchanged));
        }
        Output::Oci { .. } | Output::Docker { .. } | Output::Load { .. } => {}
    }
    let image = build_image(store, layers, config, &for_output(output, settings))?;
    export_image(store, &image, output, names, epoch)
}

/// The settings an output's blobs are made with. A docker-archive holds each layer as its tar, as
/// `docker save` writes it, and a daemon load reads that archive: a compressed blob would only be
/// decompressed again, so the build's own layers are kept as tars (`force-compression` aside).
fn for_output<'a>(output: &Output, settings: &'a Settings) -> std::borrow::Cow<'a, Settings> {
    match output {
        Output::Docker { .. } | Output::Load { .. } if !settings.force => {
            std::borrow::Cow::Owned(settings.as_tars())
        }
        _ => std::borrow::Cow::Borrowed(settings),
    }
}

/// Writes an image whose blobs are all in the store (just built, or kept under a name) to an image
/// output; `names` are the image's names, the first one recorded in an OCI layout's index.
pub fn export_image(
    store: &Store,
    image: &Image,
    output: &Output,
    names: &[&str],
    epoch: Option<i64>,
) -> Result<Exported> {
    // `-o name=` names this output's image instead of the build's `-t`.
    let own;
    let names = match output {
        Output::Oci { name: Some(n), .. } | Output::Docker { name: Some(n), .. } => {
            own = [n.as_str()];
            &own[..]
        }
        _ => names,
    };
    let epoch_text = epoch.map_or_else(String::new, |e| e.to_string());
    let manifest = Digest::of(&image.manifest);
    let mut loaded = Vec::new();
    let unchanged = match output {
        Output::Docker { dest, .. } => {
            let key = record_key(
                "docker",
                &[manifest.as_str(), &names.join(","), &epoch_text],
            );
            write_file_output(store, dest, &key, |dest| {
                write_atomically(dest, |f| {
                    docker::write_archive(store, image, names, epoch, f)
                })
            })?
        }
        Output::Load { endpoint } => {
            // A daemon's images are its own business: nothing is recorded, every load sends the image.
            loaded = daemon::load(store, image, names, epoch, endpoint)?.messages;
            false
        }
        Output::Oci { dest, tar, .. } => {
            let layout_tag = ref_name(names.first().copied());
            let full_name = names
                .first()
                .and_then(|n| crate::registry::ImageName::parse(n).ok())
                .map(|n| n.to_string());
            let files = image_files(store, image);
            let described: Vec<String> = image
                .descriptor_annotations
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            let described = described.join("\n");
            let referrers: Vec<&str> = image.referrers.iter().map(|a| a.digest.as_str()).collect();
            let referrers = referrers.join(",");
            if *tar {
                let key = record_key(
                    "oci-tar",
                    &[manifest.as_str(), &layout_tag, &referrers, &described],
                );
                write_file_output(store, dest, &key, |dest| {
                    let tmp = store.temp_dir("export-")?;
                    let dir = tmp.path().join("layout");
                    // The layout is only read back into the tar: its blobs are links to the store's,
                    // checked against their digests instead of copied.
                    link_blobs(&dir, &files);
                    crate::oci::write_layout_keeping(
                        &dir,
                        &image.manifest,
                        Some(&layout_tag),
                        full_name.as_deref(),
                        &image.descriptor_annotations,
                        &files,
                        &crate::oci::file_holds,
                    )
                    .map_err(|e| Diagnostic::io("cannot write OCI layout", e))?;
                    attach::add_to_layout(&dir, &manifest, &image.referrers)?;
                    write_atomically(dest, |f| crate::oci::write_layout_tar(&dir, f))
                })?
            } else {
                let key = record_key(
                    "oci",
                    &[manifest.as_str(), &layout_tag, &referrers, &described],
                );
                let named = (layout_tag.as_str(), full_name.as_deref());
                write_layout_output(store, dest, &key, image, named, &files)?
            }
        }
        Output::Local { .. } | Output::Tar { .. } => {
            return Err(Diagnostic::input(format!(
                "{} is a filesystem output, which is made from the build's layer snapshots, not from an image",
                output.destination()
            ))
            .help("export an image as `-o type=oci,dest=PATH` or `-o type=docker,dest=PATH`, or rebuild with `-o type=local,dest=DIR`"));
        }
    };
    Ok(Exported {
        manifest: Some(manifest),
        layers: image.blobs.len(),
        unchanged,
        loaded,
    })
}

/// Builds the image's blobs in the store (layers compressed once per settings, then reused) without
/// writing it anywhere: for an image kept under a name.
pub fn image(
    store: &Store,
    layers: &[String],
    config: &Value,
    settings: &Settings,
) -> Result<Image> {
    build_image(store, layers, config, settings)
}

/// The store's record of `image` under `name`: its manifest and every blob it needs, with their size.
pub fn named(image: &Image, name: &str, epoch: Option<i64>) -> crate::store::NamedImage {
    let mut blobs = vec![image.config_digest.clone()];
    blobs.extend(image.blobs.iter().map(|b| b.digest.clone()));
    let size = image.manifest.len() as u64
        + image.config.len() as u64
        + image.blobs.iter().map(|b| b.size).sum::<u64>();
    let created = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    crate::store::NamedImage {
        name: name.to_string(),
        manifest: Digest::of(&image.manifest),
        blobs,
        size,
        created,
        tar_sizes: image.blobs.iter().map(|b| b.tar_size).collect(),
        epoch,
        leaves: None,
        snapshots: Vec::new(),
    }
}

/// Writes `image` as an OCI layout at `dir` (a fresh directory) for a push; see `export_for_push`.
pub fn push_layout(store: &Store, image: &Image, dir: &Path) -> Result<()> {
    let files = image_files(store, image);
    link_blobs(dir, &files);
    crate::oci::write_layout(dir, &image.manifest, Some("latest"), &files)
        .map_err(|e| Diagnostic::io(format!("cannot write OCI layout {}", dir.display()), e))?;
    Ok(())
}

/// Writes the image as an OCI layout at `dir` (a fresh directory) for a push, keeping no export record:
/// the layout is gone once the push is done.
pub fn export_for_push(
    store: &Store,
    layers: &[String],
    config: &Value,
    dir: &Path,
    settings: &Settings,
) -> Result<()> {
    let image = build_image(store, layers, config, settings)?;
    let files = image_files(store, &image);
    // Links, not copies: the push reads only the blobs the registry lacks, and hashes each as it
    // uploads it.
    link_blobs(dir, &files);
    crate::oci::write_layout(dir, &image.manifest, Some("latest"), &files)
        .map_err(|e| Diagnostic::io(format!("cannot write OCI layout {}", dir.display()), e))?;
    Ok(())
}

/// Hard-links the store's blobs into a private layout at `dir` that kiln only reads and then removes. A
/// blob that cannot be linked is left out: `write_layout` copies it.
fn link_blobs(dir: &Path, files: &[(String, PathBuf)]) {
    let blobs = dir.join("blobs/sha256");
    if std::fs::create_dir_all(&blobs).is_err() {
        return;
    }
    for (digest, source) in files {
        if let Ok(path) = crate::oci::blob_path(dir, digest) {
            let _ = std::fs::hard_link(source, path);
        }
    }
}

/// What an export record's key holds: the kind of output and everything that shapes its bytes. kiln's
/// version is part of it, as another kiln may write other bytes for the same image.
fn record_key(kind: &str, parts: &[&str]) -> String {
    let mut key = format!("kiln {}\n{kind}", env!("CARGO_PKG_VERSION"));
    for p in parts {
        key.push('\n');
        key.push_str(p);
    }
    key
}

/// Names the snapshots' content without reading it: a snapshot is named by its step's cache key, not by
/// its content, and a step run again after a prune may commit other content under the same name; but
/// committed snapshots are never changed, so the root directory's inode and ctime tell them apart.
fn snapshot_identities(store: &Store, layers: &[String]) -> Result<String> {
    use std::os::unix::fs::MetadataExt as _;
    let mut out = String::new();
    for snapshot in layers {
        let m = std::fs::symlink_metadata(store.snapshot_path(snapshot))
            .map_err(|e| Diagnostic::io(format!("store snapshot {snapshot} is missing"), e))?;
        out.push_str(&format!(
            "{snapshot}@{}:{}:{}.{},",
            m.dev(),
            m.ino(),
            m.ctime(),
            m.ctime_nsec()
        ));
    }
    Ok(out)
}

/// The image's blobs as `write_layout` takes them: (digest, file in the store).
fn image_files(store: &Store, image: &Image) -> Vec<(String, PathBuf)> {
    let mut files: Vec<(String, PathBuf)> = image
        .blobs
        .iter()
        .map(|b| (b.digest.to_string(), store.blob_path(&b.digest)))
        .collect();
    files.push((
        image.config_digest.to_string(),
        store.blob_path(&image.config_digest),
    ));
    files
}

/// A single-file output (a tar): left alone when its record says it holds `key` untouched, else written
/// by `write` and recorded. Returns whether it was left alone.
fn write_file_output(
    store: &Store,
    dest: &Path,
    key: &str,
    write: impl FnOnce(&Path) -> Result<()>,
) -> Result<bool> {
    if is_stdout(dest) {
        // Written whole first, so a failure half-way leaves no half tar in the reader's pipe.
        let tmp = store.temp_dir("stdout-")?;
        let file = tmp.path().join("out.tar");
        write(&file)?;
        let mut f = std::fs::File::open(&file)
            .map_err(|e| Diagnostic::io("cannot read the output back", e))?;
        crate::progress::stdout_copy(&mut f)
            .map_err(|e| Diagnostic::io("cannot write the output to stdout", e))?;
        return Ok(false);
    }
    let dest = record::absolute(dest);
    let files = [dest.clone()];
    if record::holds(store, &dest, key, &files) {
        return Ok(true);
    }
    record::forget(store, &dest)?;
    write(&dest)?;
    record::remember(store, &dest, key, &files)?;
    Ok(false)
}

/// An OCI layout directory: left alone when its record says it holds `key` and every file of the image
/// (blobs, `index.json`, `oci-layout`) is untouched. Else the image is added; a blob already there is
/// kept only if the record vouches for it or it hashes right, so a damaged blob is written anew.
fn write_layout_output(
    store: &Store,
    dest: &Path,
    key: &str,
    image: &Image,
    (tag, full_name): (&str, Option<&str>),
    files: &[(String, PathBuf)],
) -> Result<bool> {
    let dest = record::absolute(dest);
    let manifest_hex = Digest::of(&image.manifest);
    let mut written: Vec<PathBuf> = vec![dest.join("oci-layout"), dest.join("index.json")];
    let referrer_blobs = image.referrers.iter().flat_map(|a| &a.blobs);
    for digest in files
        .iter()
        .chain(referrer_blobs)
        .map(|(d, _)| d.as_str())
        .chain([manifest_hex.as_str()])
    {
        let path = crate::oci::blob_path(&dest, digest)
            .map_err(|e| Diagnostic::env(format!("bad blob digest: {e}")))?;
        written.push(path);
    }
    if record::holds(store, &dest, key, &written) {
        return Ok(true);
    }
    let trusted = record::unchanged(store, &dest);
    record::forget(store, &dest)?;
    let keep = |path: &Path, digest: &str| {
        trusted.iter().any(|t| t == path) || crate::oci::file_holds(path, digest)
    };
    crate::oci::write_layout_keeping(
        &dest,
        &image.manifest,
        Some(tag),
        full_name,
        &image.descriptor_annotations,
        files,
        &keep,
    )
    .map_err(|e| Diagnostic::io(format!("cannot write OCI layout {}", dest.display()), e))?;
    attach::add_to_layout(&dest, &manifest_hex, &image.referrers)?;
    record::remember(store, &dest, key, &written)?;
    Ok(false)
}

/// The OCI layout's `org.opencontainers.image.ref.name` for an image name: the name as given
/// (`hello:1.0`, `registry.example.com/team/app:v2`), which the annotation's grammar allows (components
/// joined by `/`, `:` a separator), so `skopeo copy oci:DIR:hello:1.0`, umoci and `podman load` find the
/// image by the name the user gave; BuildKit (through containerd's archive exporter) writes only the tag
/// there, which loses the repository and makes two images of one tag collide. No name: `latest`. The
/// whole normalised name also goes where BuildKit puts it, `io.containerd.image.name`.
pub fn ref_name(name: Option<&str>) -> String {
    name.filter(|n| !n.is_empty())
        .map_or_else(|| "latest".to_string(), str::to_string)
}

/// An image's blobs, all in the store: layers, config and manifest.
#[derive(Clone)]
pub struct Image {
    /// The layers, bottom first, with the snapshots they came from.
    pub blobs: Vec<LayerBlob>,
    pub snapshots: Vec<String>,
    pub config: Vec<u8>,
    pub config_digest: Digest,
    pub manifest: Vec<u8>,
    /// What an OCI layout's descriptor of the manifest carries besides its names.
    pub descriptor_annotations: Vec<(String, String)>,
    /// Documents attached to the image as OCI referrers (attestations), written into OCI layouts with it.
    pub referrers: Vec<attach::Artifact>,
}

fn build_image(
    store: &Store,
    layers: &[String],
    config: &Value,
    settings: &Settings,
) -> Result<Image> {
    // A step that changed nothing still has its layer, an empty tar, as in BuildKit (v0.8 and today:
    // its exporter keeps every layer of the chain, so `WORKDIR` on an existing directory or a RUN that
    // writes nothing leaves an entry in `rootfs` and a history entry that is not `empty_layer`). A base
    // image's empty layers stay too, so the base's diff ids remain a prefix of the image's.
    let snapshots = layers.to_vec();
    for snapshot in &snapshots {
        std::fs::metadata(store.snapshot_path(snapshot))
            .map_err(|e| Diagnostic::io(format!("store snapshot {snapshot} is missing"), e))?;
    }
    // Layers are independent: each is compressed on a thread of its own, up to `jobs` at once. Each
    // blob's bytes depend on its snapshot alone, so the image is the same whatever the order.
    let cached: Vec<Option<LayerBlob>> = snapshots
        .iter()
        .map(|s| cached_blob(store, s, settings))
        .collect();
    let missing: Vec<&String> = snapshots
        .iter()
        .zip(&cached)
        .filter(|(_, c)| c.is_none())
        .map(|(s, _)| s)
        .collect();
    // The cores are shared out: zstd's workers per layer times the layers at once stay within `jobs`
    // (and within ZSTD_WORKERS a layer, as each worker holds a job's buffers of several MiB).
    let cores = layer::cores(settings.jobs);
    let at_once = cores.min(missing.len()).max(1);
    let threads = (cores / at_once).clamp(1, ZSTD_WORKERS);
    let mut made = layer::parallel_map(&missing, at_once, |snapshot| {
        make_blob(store, snapshot, settings, threads)
    })
    .into_iter();
    let blobs = cached
        .into_iter()
        .map(|c| match c {
            Some(blob) => Ok(blob),
            None => made.next().expect("a blob made for every one missing"),
        })
        .collect::<Result<Vec<LayerBlob>>>()?;
    let config = finish_config(config, &blobs)?;
    let config_bytes = canonical_json(&config)?;
    let config_digest = store.put_blob(&config_bytes)?;
    let manifest = manifest_bytes(
        &config_digest,
        config_bytes.len() as u64,
        &blobs,
        &settings.manifest_annotations,
    )?;
    store.put_blob(&manifest)?;
    Ok(Image {
        blobs,
        snapshots,
        config: config_bytes,
        config_digest,
        manifest,
        descriptor_annotations: settings
            .descriptor_annotations
            .clone()
            .into_iter()
            .collect(),
        referrers: Vec::new(),
    })
}

/// The image manifest naming the config and the layer blobs (canonical JSON: equal content, equal digest).
fn manifest_bytes(
    config_digest: &Digest,
    config_size: u64,
    blobs: &[LayerBlob],
    annotations: &std::collections::BTreeMap<String, String>,
) -> Result<Vec<u8>> {
    let descriptor = |media: MediaType, digest: &Digest, size: u64| -> Result<Descriptor> {
        let d = oci_spec::image::Digest::try_from(digest.as_str())
            .map_err(|e| Diagnostic::env(format!("bad digest {digest}: {e}")))?;
        DescriptorBuilder::default()
            .media_type(media)
            .digest(d)
            .size(size)
            .build()
            .map_err(|e| Diagnostic::env(format!("cannot build a descriptor: {e}")))
    };
    let mut layer_descs = Vec::new();
    for b in blobs {
        layer_descs.push(descriptor(
            MediaType::from(b.media_type.as_str()),
            &b.digest,
            b.size,
        )?);
    }
    let mut manifest = ImageManifestBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageManifest)
        .config(descriptor(
            MediaType::ImageConfig,
            config_digest,
            config_size,
        )?)
        .layers(layer_descs)
        .build()
        .map_err(|e| Diagnostic::env(format!("cannot build the manifest: {e}")))?;
    if !annotations.is_empty() {
        manifest.set_annotations(Some(annotations.clone().into_iter().collect()));
    }
    canonical_json(&manifest)
}

/// Writes a file through a temp file beside it, so `dest` holds either nothing or the whole output.
fn write_atomically(
    dest: &Path,
    write: impl FnOnce(&mut std::io::BufWriter<&mut std::fs::File>) -> std::io::Result<()>,
) -> Result<()> {
    let parent = dest
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let fail = |e| Diagnostic::io(format!("cannot write {}", dest.display()), e);
    std::fs::create_dir_all(parent).map_err(fail)?;
    let mut file = tempfile::NamedTempFile::new_in(parent).map_err(fail)?;
    {
        let mut buffered = std::io::BufWriter::new(file.as_file_mut());
        write(&mut buffered).map_err(fail)?;
        std::io::Write::flush(&mut buffered).map_err(fail)?;
    }
    file.as_file().sync_all().map_err(fail)?;
    file.persist(dest).map_err(|e| fail(e.error))?;
    Ok(())
}

/// Where the guard found a secret in a finished image.
pub enum Found {
    /// In the image config (env, labels, history...), at `at` (a JSON path, secrets in it redacted).
    Config { leak: Leak, at: String },
    /// In the layer of `snapshot`, at `path` (inside the image, already redacted).
    Layer {
        leak: Leak,
        snapshot: String,
        path: PathBuf,
    },
}

/// The last check before anything leaves kiln: every layer this build made and the config are searched
/// for the values of every secret given to the build. Layers imported from a base image are not this
/// build's doing and are skipped, and so are those this build's steps staged: each was scanned for every
/// secret given before it was staged (`solve`), so a cold build reads each layer once, not twice.
pub fn guard(
    store: &Store,
    layers: &[String],
    config: &Value,
    scanner: &LeakScanner,
) -> Result<Option<Found>> {
    if scanner.is_empty() {
        return Ok(None);
    }
    if let Some((leak, at)) = scan_json(scanner, config) {
        return Ok(Some(Found::Config { leak, at }));
    }
    for snapshot in guarded_layers(layers).filter(|l| !store.is_staged(l)) {
        let found = scanner
            .scan_tree(&store.snapshot_path(snapshot))
            .map_err(|e| Diagnostic::io(format!("cannot scan snapshot {snapshot}"), e))?;
        if let Some((leak, path)) = found {
            return Ok(Some(Found::Layer {
                leak,
                snapshot: snapshot.clone(),
                path,
            }));
        }
    }
    Ok(None)
}

/// The layers of an image the leak guard searches: the build's own snapshots, not a base image's blobs.
pub fn guarded_layers(layers: &[String]) -> impl Iterator<Item = &String> {
    layers.iter().filter(|l| !l.starts_with("layer-"))
}

/// Searches every string of a JSON document, keys included, as the text it stands for: the JSON encoding
/// escapes `"`, `\`, control characters (and, in other writers, non-ASCII), so a value holding any of
/// them would not be found in the encoded bytes. Returns the leak and where it is (`config.Env[2]`),
/// with any key that holds a secret shown as `***`.
pub fn scan_json(scanner: &LeakScanner, value: &Value) -> Option<(Leak, String)> {
    if scanner.is_empty() {
        return None;
    }
    let mut path = String::new();
    walk_json(scanner, value, &mut path)
}

fn walk_json(scanner: &LeakScanner, value: &Value, path: &mut String) -> Option<(Leak, String)> {
    let found = |leak: Leak, path: &str| Some((leak, path.trim_start_matches('.').to_string()));
    match value {
        Value::String(s) => scanner.scan(s.as_bytes()).and_then(|l| found(l, path)),
        Value::Array(items) => items.iter().enumerate().find_map(|(i, v)| {
            let len = path.len();
            path.push_str(&format!("[{i}]"));
            let hit = walk_json(scanner, v, path);
            path.truncate(len);
            hit
        }),
        Value::Object(map) => map.iter().find_map(|(k, v)| {
            let len = path.len();
            let key_leak = scanner.scan(k.as_bytes());
            path.push('.');
            path.push_str(if key_leak.is_some() { "***" } else { k });
            let hit = match key_leak {
                Some(l) => found(l, path),
                None => walk_json(scanner, v, path),
            };
            path.truncate(len);
            hit
        }),
        Value::Null | Value::Bool(_) | Value::Number(_) => None,
    }
}

/// The blob of one snapshot: from the store if computed before (or kept from an imported image), else made
/// now by streaming the snapshot through tar, SHA-256 and the compressor once.
pub fn layer_blob(store: &Store, snapshot: &str, settings: &Settings) -> Result<LayerBlob> {
    match cached_blob(store, snapshot, settings) {
        Some(b) => Ok(b),
        None => make_blob(
            store,
            snapshot,
            settings,
            layer::cores(settings.jobs).min(ZSTD_WORKERS),
        ),
    }
}

/// Where the blob of a snapshot is recorded for these settings: clamped times and another codec change the
/// bytes, so each gets blobs of its own, and none takes the snapshot's plain name: that is its original blob (a
/// base image layer, or a layer from a shared cache), kept whatever the settings, and a gzip blob there would
/// answer a later zstd export.
fn blob_key(snapshot: &str, settings: &Settings) -> String {
    let mut key = match settings.epoch {
        Some(t) => format!("{snapshot}@{t}"),
        None => format!("{snapshot}@"),
    };
    // A compressed blob's record says its compressor was fed fixed blocks (`layer::write::Blocks`): one
    // an earlier kiln compressed from the tar writer's own writes holds other bytes for the same tar,
    // and is not taken for one (an image must not depend on the store's history).
    match settings.codec {
        layer::Codec::Gzip => key.push_str("+blocks"),
        layer::Codec::Zstd => key.push_str("+zstd+blocks"),
        layer::Codec::Uncompressed => key.push_str("+tar"),
    }
    if let Some(level) = settings.level {
        key.push_str(&format!("+level{level}"));
    }
    key
}

/// The blob of one snapshot if computed before (or kept from an imported image).
fn cached_blob(store: &Store, snapshot: &str, settings: &Settings) -> Option<LayerBlob> {
    store
        .layer_blob(snapshot)
        .filter(|b| !settings.force || b.media_type == settings.codec.media_type())
        .or_else(|| store.layer_blob(&blob_key(snapshot, settings)))
        .or_else(|| {
            settings
                .unwritten
                .then(|| store.layer_record(&blob_key(snapshot, settings)))
                .flatten()
        })
}

/// Makes the blob of one snapshot by streaming it through tar, SHA-256 and the compressor once.
fn make_blob(
    store: &Store,
    snapshot: &str,
    settings: &Settings,
    threads: usize,
) -> Result<LayerBlob> {
    let key = blob_key(snapshot, settings);
    let tmp = store.temp_dir("layer-")?;
    let gz = tmp.path().join("layer.tar.gz");
    let file =
        std::fs::File::create(&gz).map_err(|e| Diagnostic::io("cannot create a layer blob", e))?;
    let info = layer::layer_digests_leveled(
        &store.snapshot_path(snapshot),
        settings.epoch,
        (settings.codec, settings.level),
        threads,
        std::io::BufWriter::new(file),
    )
    .map_err(|e| Diagnostic::io(format!("cannot write the layer of {snapshot}"), e))?;
    let blob = layer_blob_of(info, settings)?;
    store.adopt_blob(&gz, &blob.digest)?;
    store.put_layer_blob(&key, &blob)?;
    Ok(blob)
}

pub(super) fn layer_blob_of(info: layer::LayerInfo, settings: &Settings) -> Result<LayerBlob> {
    let bad = |d: &str| Diagnostic::env(format!("layer writer produced a bad digest `{d}`"));
    Ok(LayerBlob {
        diff_id: Digest::parse(&info.diff_id).ok_or_else(|| bad(&info.diff_id))?,
        digest: Digest::parse(&info.digest).ok_or_else(|| bad(&info.digest))?,
        size: info.size,
        media_type: settings.codec.media_type().to_string(),
        tar_size: Some(info.tar_size),
    })
}

/// Adds `rootfs` (every layer, empty ones included), then checks the result against the OCI config
/// schema.
fn finish_config(config: &Value, blobs: &[LayerBlob]) -> Result<Value> {
    let mut config = config.clone();
    config["rootfs"] = json!({
        "type": "layers",
        "diff_ids": blobs.iter().map(|b| b.diff_id.as_str()).collect::<Vec<_>>(),
    });
    // Checked against the OCI schema, but written as built: Docker's extensions that BuildKit also
    // writes (`Healthcheck`, `OnBuild`, `Shell`) are not in oci-spec's types and must survive.
    let _: ImageConfiguration = serde_json::from_value(config.clone())
        .map_err(|e| Diagnostic::env(format!("the image config is not valid OCI: {e}")))?;
    Ok(config)
}

/// JSON with sorted keys, so equal content gives equal digests.
fn canonical_json<T: serde::Serialize>(v: &T) -> Result<Vec<u8>> {
    crate::oci::canonical_json(v).map_err(|e| Diagnostic::env(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::SecretValue;

    /// `{target}` becomes the label as a relative path, whatever kind of label it is.
    #[test]
    fn a_per_target_dest_takes_the_label_as_a_path() {
        let out = Output::Oci {
            dest: "out/{target}.tar".into(),
            tar: true,
            name: None,
        };
        assert!(out.per_target());
        for (label, dest) in [
            ("//services/api:image", "out/services/api/image.tar"),
            ("//:app", "out/app.tar"),
            ("build", "out/build.tar"),
        ] {
            let Output::Oci { dest: got, .. } = out.for_target(label) else {
                panic!("an OCI output stays one");
            };
            assert_eq!(got, PathBuf::from(dest), "{label}");
        }
        assert!(!Output::Local { dest: "out".into() }.per_target());
    }

    fn scanner(value: &str) -> LeakScanner {
        let v = SecretValue::new(zeroize::Zeroizing::new(value.as_bytes().to_vec()));
        LeakScanner::new([("s", &v)])
    }

    /// Values JSON must escape are found as the strings they stand for, and named by their place.
    #[test]
    fn json_is_searched_as_decoded_strings() {
        for value in [
            "quote-\"in\"-the-middle",
            r"back\slash\value",
            "short\nlines\nonly",
            "ünïcødé-パスワード",
        ] {
            let config = json!({"config": {"Env": ["A=1", format!("T={value}")]}});
            let encoded = serde_json::to_vec(&config).unwrap();
            let (leak, at) = scan_json(&scanner(value), &config).expect("found");
            assert_eq!((leak.id.as_str(), at.as_str()), ("s", "config.Env[1]"));
            if !value.is_ascii() {
                continue;
            }
            assert!(
                scanner(value).scan(&encoded).is_none(),
                "the encoded bytes hide {value:?}"
            );
        }
    }

    /// A key that holds the value is found, and shown as `***`.
    #[test]
    fn keys_are_searched_and_redacted() {
        let config = json!({"config": {"Labels": {"k-\"secret\"-label": "v"}}});
        let (_, at) = scan_json(&scanner("k-\"secret\"-label"), &config).expect("found");
        assert_eq!(at, "config.Labels.***");
        assert!(scan_json(&scanner("not-in-there"), &config).is_none());
    }
}
