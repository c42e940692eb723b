//! Reads and writes OCI image layouts (directories and their tar form).
//!
//! A layout may come from anywhere, so every blob read here is checked against its digest
//! before its contents are believed. Writes are atomic (temp file + rename) so a crash never
//! leaves a half-written blob or index behind, and a layout shared by several images keeps
//! the others intact. JSON is written with sorted keys because oci-spec holds maps in
//! HashMaps, whose order would otherwise leak into digests.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use oci_spec::image::{Descriptor, ImageConfiguration, ImageManifest};
use serde::Serialize;
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

const REF_NAME: &str = "org.opencontainers.image.ref.name";
const IMAGE_NAME: &str = "io.containerd.image.name";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// Manifests, configs and indexes are small; anything bigger is not one of them.
const MAX_JSON_BLOB: u64 = 64 << 20;
/// Indexes may nest, but a real image never needs more than a couple of levels.
const MAX_INDEX_DEPTH: usize = 4;

/// An image chosen from a layout: its manifest and config, both verified.
#[derive(Debug, Clone)]
pub(crate) struct ImageRef {
    pub manifest_digest: String,
    pub manifest: ImageManifest,
    pub config: ImageConfiguration,
    pub config_digest: String,
}

/// Picks the image tagged `tag` (or the obvious one when `tag` is None) from the layout.
pub(crate) fn read_image(layout: &Path, tag: Option<&str>) -> io::Result<ImageRef> {
    read_image_as(layout, tag, None)
}

/// The image for `platform`: its entry when the layout holds an index, else the one image, which must
/// be for that platform (its config says so).
pub(crate) fn read_image_for(
    layout: &Path,
    tag: Option<&str>,
    platform: &crate::platform::Platform,
) -> io::Result<ImageRef> {
    let image = read_image_as(layout, tag, Some(platform))?;
    let c = &image.config;
    let (os, arch) = (c.os().to_string(), c.architecture().to_string());
    let variant = c.variant().clone().unwrap_or_default();
    if !arch.is_empty() && !platform.matches(&os, &arch, &variant) {
        let actual = crate::platform::Platform::parse(&format!("{os}/{arch}/{variant}"))
            .map_or_else(|_| format!("{os}/{arch}"), |p| p.to_string());
        return Err(wrong_platform(format!(
            "the image is for platform \"{actual}\", expected \"{platform}\" for current build"
        )));
    }
    Ok(image)
}

fn read_image_as(
    layout: &Path,
    tag: Option<&str>,
    platform: Option<&crate::platform::Platform>,
) -> io::Result<ImageRef> {
    let header = layout.join("oci-layout");
    // Blobs are named by their digests; which image a tag names is in these two files.
    crate::inputs::file(&header);
    crate::inputs::file(&layout.join("index.json"));
    let header_bytes = match fs::read(&header) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("no OCI layout at {} (missing oci-layout)", layout.display()),
            ));
        }
        Err(e) => return Err(with_path(e, "cannot read", &header)),
    };
    let header_json: Value = parse_json(&header_bytes, &header.display().to_string())?;
    let version = header_json
        .get("imageLayoutVersion")
        .and_then(Value::as_str);
    if version != Some("1.0.0") {
        return Err(invalid(format!(
            "unsupported OCI layout version {} in {}",
            version.unwrap_or("(none)"),
            header.display()
        )));
    }

    let index_path = layout.join("index.json");
    let index_bytes =
        fs::read(&index_path).map_err(|e| with_path(e, "cannot read", &index_path))?;
    let index: Value = parse_json(&index_bytes, &index_path.display().to_string())?;
    let entries = descriptors(&index, &index_path.display().to_string())?;
    let chosen = choose_tagged(&entries, tag, layout)?;
    resolve(layout, &chosen, 0, platform)
}

/// Where the blob with this digest lives in a layout; refuses anything but `sha256:<64 hex>`.
pub(crate) fn blob_path(layout: &Path, digest: &str) -> io::Result<PathBuf> {
    let hex = digest
        .strip_prefix("sha256:")
        .filter(|h| h.len() == 64 && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
        .ok_or_else(|| invalid(format!("invalid digest `{digest}` (want sha256:<64 hex>)")))?;
    Ok(layout.join("blobs").join("sha256").join(hex))
}

/// Hashes a blob in the layout and fails unless it matches `digest` (and `size`, if given).
pub(crate) fn verify_blob(layout: &Path, digest: &str, size: Option<u64>) -> io::Result<PathBuf> {
    let path = blob_path(layout, digest)?;
    let file = File::open(&path).map_err(|e| missing_blob(e, digest, layout))?;
    check_size(&file, digest, size)?;
    let actual = hash_reader(file).map_err(|e| with_path(e, "cannot read", &path))?;
    if actual != digest {
        return Err(corrupt(digest, &actual));
    }
    Ok(path)
}

/// Whether the file at `path` hashes to `digest` (false when it cannot be read).
pub(crate) fn file_holds(path: &Path, digest: &str) -> bool {
    File::open(path)
        .and_then(hash_reader)
        .is_ok_and(|actual| actual == digest)
}

/// Serialises with object keys sorted at every level, so equal values give equal bytes.
pub(crate) fn canonical_json<T: Serialize>(value: &T) -> io::Result<Vec<u8>> {
    let value = serde_json::to_value(value).map_err(|e| invalid(e.to_string()))?;
    serde_json::to_vec(&sorted(value)).map_err(|e| invalid(e.to_string()))
}

/// Adds one image to the layout at `dir` (created if needed), returning the manifest digest.
///
/// Blobs already present are kept; an existing index entry with the same tag is replaced.
pub(crate) fn write_layout(
    dir: &Path,
    manifest_json: &[u8],
    tag: Option<&str>,
    blobs: &[(String, PathBuf)],
) -> io::Result<String> {
    write_layout_keeping(dir, manifest_json, tag, None, &[], blobs, &|_, _| true)
}

/// `write_layout`, keeping a blob already in the layout only where `keep(path, digest)` says it holds
/// that digest; any other is written again from its source.
pub(crate) fn write_layout_keeping(
    dir: &Path,
    manifest_json: &[u8],
    tag: Option<&str>,
    image_name: Option<&str>,
    descriptor_annotations: &[(String, String)],
    blobs: &[(String, PathBuf)],
    keep: &dyn Fn(&Path, &str) -> bool,
) -> io::Result<String> {
    if tag == Some("") {
        return Err(invalid("empty tag".to_string()));
    }
    let blob_dir = dir.join("blobs").join("sha256");
    fs::create_dir_all(&blob_dir).map_err(|e| with_path(e, "cannot create", &blob_dir))?;

    for (digest, source) in blobs {
        let dest = blob_path(dir, digest)?;
        if dest.exists() && keep(&dest, digest) {
            continue;
        }
        let mut src = File::open(source).map_err(|e| with_path(e, "cannot open", source))?;
        let mut tmp = tempfile::NamedTempFile::new_in(&blob_dir)?;
        let mut hashing = HashingWriter {
            inner: tmp.as_file_mut(),
            hasher: Sha256::new(),
        };
        io::copy(&mut src, &mut hashing).map_err(|e| with_path(e, "cannot copy", source))?;
        let actual = format!("sha256:{}", hex::encode(hashing.hasher.finalize()));
        // Catching a mislabelled blob here is far cheaper than a registry rejecting it later.
        if &actual != digest {
            return Err(invalid(format!(
                "blob {} does not match its digest {digest} (content is {actual})",
                source.display()
            )));
        }
        persist(tmp, &dest)?;
    }

    let manifest: Value = parse_json(manifest_json, "manifest")?;
    let typed: ImageManifest = serde_json::from_value(manifest.clone())
        .map_err(|e| invalid(format!("manifest is not an OCI image manifest: {e}")))?;
    for desc in std::iter::once(typed.config()).chain(typed.layers()) {
        let digest = desc.digest().to_string();
        let path = blob_path(dir, &digest)?;
        if !path.exists() {
            return Err(invalid(format!(
                "manifest refers to blob {digest}, which is neither in {} nor among the blobs given",
                dir.display()
            )));
        }
    }
    let manifest_digest = sha256_hex(manifest_json);
    let manifest_path = blob_path(dir, &manifest_digest)?;
    if !(manifest_path.exists() && keep(&manifest_path, &manifest_digest)) {
        write_atomic(&manifest_path, manifest_json)?;
    }

    let media_type = manifest
        .get("mediaType")
        .and_then(Value::as_str)
        .unwrap_or(OCI_MANIFEST)
        .to_string();
    let mut desc = Map::new();
    desc.insert("mediaType".into(), json!(media_type));
    desc.insert("digest".into(), json!(manifest_digest));
    desc.insert("size".into(), json!(manifest_json.len()));
    if let Some(platform) = config_platform(dir, typed.config().digest().as_ref()) {
        desc.insert("platform".into(), platform);
    }
    let mut annotations = Map::new();
    // `--annotation manifest-descriptor:K=V`, under the names kiln writes itself.
    for (k, v) in descriptor_annotations {
        annotations.insert(k.clone(), json!(v));
    }
    if let Some(tag) = tag {
        annotations.insert(REF_NAME.into(), json!(tag));
    }
    if let Some(name) = image_name {
        // containerd's (and BuildKit's) annotation for the whole normalised name: `ctr image import`
        // names the image by it.
        annotations.insert(IMAGE_NAME.into(), json!(name));
    }
    if !annotations.is_empty() {
        desc.insert("annotations".into(), Value::Object(annotations));
    }

    let index_path = dir.join("index.json");
    let mut index: Value = match fs::read(&index_path) {
        Ok(bytes) => parse_json(&bytes, &index_path.display().to_string())?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            json!({ "schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [] })
        }
        Err(e) => return Err(with_path(e, "cannot read", &index_path)),
    };
    let manifests = index
        .as_object_mut()
        .ok_or_else(|| invalid(format!("{} is not a JSON object", index_path.display())))?
        .entry("manifests")
        .or_insert_with(|| json!([]))
        .as_array_mut()
        .ok_or_else(|| {
            invalid(format!(
                "{}: manifests is not an array",
                index_path.display()
            ))
        })?;
    manifests.retain(|entry| {
        let entry_tag = entry
            .pointer("/annotations")
            .and_then(|a| a.get(REF_NAME))
            .and_then(Value::as_str);
        match tag {
            Some(t) => entry_tag != Some(t),
            // Re-exporting the same untagged image must not pile up duplicate entries.
            None => {
                entry_tag.is_some()
                    || entry.get("digest").and_then(Value::as_str) != Some(&manifest_digest)
            }
        }
    });
    manifests.push(Value::Object(desc));

    write_atomic(
        &dir.join("oci-layout"),
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    )?;
    let index_bytes = serde_json::to_vec(&sorted(index)).map_err(|e| invalid(e.to_string()))?;
    write_atomic(&index_path, &index_bytes)?;
    Ok(manifest_digest)
}

/// Writes the layout at `dir` as a tar (for `type=oci,dest=x.tar`), byte-for-byte reproducible.
pub(crate) fn write_layout_tar<W: Write>(dir: &Path, out: W) -> io::Result<()> {
    let mut builder = tar::Builder::new(out);
    builder.mode(tar::HeaderMode::Deterministic);
    builder.follow_symlinks(false);
    append_tree(&mut builder, dir, Path::new(""))?;
    builder.into_inner()?.flush()
}

fn append_tree<W: Write>(builder: &mut tar::Builder<W>, dir: &Path, rel: &Path) -> io::Result<()> {
    let mut names: Vec<_> = fs::read_dir(dir)
        .map_err(|e| with_path(e, "cannot list", dir))?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<io::Result<_>>()?;
    names.sort();
    for name in names {
        // Dot files are leftovers of interrupted atomic writes, not part of the layout.
        if name.to_string_lossy().starts_with('.') {
            continue;
        }
        let path = dir.join(&name);
        let rel = rel.join(&name);
        let meta = fs::symlink_metadata(&path)?;
        if meta.is_dir() {
            // Trailing slash, as tar(1) writes directory names.
            let mut dir_name = rel.clone().into_os_string();
            dir_name.push("/");
            builder.append_dir(&dir_name, &path)?;
            append_tree(builder, &path, &rel)?;
        } else {
            builder.append_path_with_name(&path, &rel)?;
        }
    }
    Ok(())
}

/// Follows a descriptor from index.json down to a single image manifest.
/// The image `desc` names, following an index to the entry for `platform` (linux/amd64 when `None`).
fn resolve(
    layout: &Path,
    desc: &Descriptor,
    depth: usize,
    platform: Option<&crate::platform::Platform>,
) -> io::Result<ImageRef> {
    let digest = desc.digest().to_string();
    let bytes = read_verified(layout, &digest, desc.size())?;
    let media_type = desc.media_type().to_string();
    let json: Value = parse_json(&bytes, &digest)?;
    let declared = json.get("mediaType").and_then(Value::as_str);
    let is_index = media_type == OCI_INDEX
        || media_type == DOCKER_LIST
        || declared == Some(OCI_INDEX)
        || declared == Some(DOCKER_LIST);
    if is_index {
        if depth >= MAX_INDEX_DEPTH {
            return Err(invalid(format!("image index {digest} nests too deeply")));
        }
        let entries = descriptors(&json, &digest)?;
        let amd64 = crate::platform::Platform::amd64();
        let want = platform.unwrap_or(&amd64);
        let chosen = entries
            .iter()
            .find(|d| {
                d.platform().as_ref().is_some_and(|p| {
                    let variant = p.variant().clone().unwrap_or_default();
                    want.matches(&p.os().to_string(), &p.architecture().to_string(), &variant)
                })
            })
            .ok_or_else(|| {
                wrong_platform(format!(
                    "image index {digest} in {} has no {want} image",
                    layout.display()
                ))
            })?;
        return resolve(layout, chosen, depth + 1, platform);
    }

    let manifest: ImageManifest = serde_json::from_value(json)
        .map_err(|e| invalid(format!("manifest {digest} is not an image manifest: {e}")))?;
    let config_digest = manifest.config().digest().to_string();
    let config_bytes = read_verified(layout, &config_digest, manifest.config().size())?;
    let config: ImageConfiguration = serde_json::from_slice(&config_bytes).map_err(|e| {
        invalid(format!(
            "config {config_digest} is not an image config: {e}"
        ))
    })?;
    // Layers are too big to hash here; callers verify them as they stream (verify_blob).
    for layer in manifest.layers() {
        let layer_digest = layer.digest().to_string();
        let path = blob_path(layout, &layer_digest)?;
        let file = File::open(&path).map_err(|e| missing_blob(e, &layer_digest, layout))?;
        check_size(&file, &layer_digest, Some(layer.size()))?;
    }
    Ok(ImageRef {
        manifest_digest: digest,
        manifest,
        config,
        config_digest,
    })
}

fn choose_tagged(
    entries: &[Descriptor],
    tag: Option<&str>,
    layout: &Path,
) -> io::Result<Descriptor> {
    let tag_of = |d: &Descriptor| {
        d.annotations()
            .as_ref()
            .and_then(|a| a.get(REF_NAME))
            .cloned()
    };
    let tags = || {
        let mut tags: Vec<String> = entries.iter().filter_map(tag_of).collect();
        tags.sort();
        if tags.is_empty() {
            "none".to_string()
        } else {
            tags.join(", ")
        }
    };
    let exact = |want: &str| entries.iter().find(|d| tag_of(d).as_deref() == Some(want));
    // An entry named by a whole reference (`hello:1.0`, as kiln writes them) is also found by its tag
    // alone (`1.0`, as BuildKit names entries and as `oci-layout://DIR:TAG` can spell it), when only
    // one entry has that tag.
    let by_tag = |want: &str| {
        let mut matching = entries
            .iter()
            .filter(|d| tag_of(d).as_deref().and_then(reference_tag) == Some(want));
        match (matching.next(), matching.next()) {
            (Some(only), None) => Some(only),
            _ => None,
        }
    };
    let found = |want: &str| exact(want).or_else(|| by_tag(want));
    match tag {
        Some(t) => found(t).cloned().ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("tag `{t}` not in {} (tags: {})", layout.display(), tags()),
            )
        }),
        None => {
            if let Some(d) = found("latest") {
                return Ok(d.clone());
            }
            match entries {
                [only] => Ok(only.clone()),
                [] => Err(invalid(format!("{} holds no images", layout.display()))),
                _ => Err(invalid(format!(
                    "{} holds several images; pick one by tag (tags: {})",
                    layout.display(),
                    tags()
                ))),
            }
        }
    }
}

fn descriptors(index: &Value, what: &str) -> io::Result<Vec<Descriptor>> {
    let list = index.get("manifests").cloned().unwrap_or_else(|| json!([]));
    serde_json::from_value(list).map_err(|e| invalid(format!("{what}: bad manifests list: {e}")))
}

/// Reads a small JSON blob, trusting it only once its length and hash match the descriptor.
fn read_verified(layout: &Path, digest: &str, size: u64) -> io::Result<Vec<u8>> {
    let path = blob_path(layout, digest)?;
    let file = File::open(&path).map_err(|e| missing_blob(e, digest, layout))?;
    check_size(&file, digest, Some(size))?;
    if size > MAX_JSON_BLOB {
        return Err(invalid(format!(
            "blob {digest} is too large to be metadata"
        )));
    }
    let mut bytes = Vec::new();
    file.take(MAX_JSON_BLOB)
        .read_to_end(&mut bytes)
        .map_err(|e| with_path(e, "cannot read", &path))?;
    let actual = sha256_hex(&bytes);
    if actual != digest {
        return Err(corrupt(digest, &actual));
    }
    Ok(bytes)
}

fn check_size(file: &File, digest: &str, size: Option<u64>) -> io::Result<()> {
    let Some(want) = size else { return Ok(()) };
    let have = file.metadata()?.len();
    if have != want {
        return Err(invalid(format!(
            "blob {digest} is corrupt: {have} bytes, descriptor says {want}"
        )));
    }
    Ok(())
}

/// Best effort: a platform in the index lets multi-image tools pick without opening configs.
fn config_platform(dir: &Path, config_digest: &str) -> Option<Value> {
    let bytes = fs::read(blob_path(dir, config_digest).ok()?).ok()?;
    let config: Value = serde_json::from_slice(&bytes).ok()?;
    let mut platform = Map::new();
    for key in ["architecture", "os", "variant"] {
        if let Some(v) = config.get(key).and_then(Value::as_str) {
            platform.insert(key.into(), json!(v));
        }
    }
    (platform.contains_key("architecture") && platform.contains_key("os"))
        .then_some(Value::Object(platform))
}

/// An image (or index) that is not for the platform built for: its kind tells callers to say so.
fn wrong_platform(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::Unsupported, message)
}

fn write_atomic(dest: &Path, bytes: &[u8]) -> io::Result<()> {
    let parent = dest
        .parent()
        .ok_or_else(|| invalid(format!("{} has no parent", dest.display())))?;
    let mut tmp = tempfile::NamedTempFile::new_in(parent)
        .map_err(|e| with_path(e, "cannot create a file in", parent))?;
    tmp.write_all(bytes)?;
    persist(tmp, dest)
}

fn persist(tmp: tempfile::NamedTempFile, dest: &Path) -> io::Result<()> {
    tmp.as_file().sync_all()?;
    // Temp files start out 0600; layouts are meant to be read by other users and tools.
    tmp.as_file()
        .set_permissions(fs::Permissions::from_mode(0o644))?;
    tmp.persist(dest)
        .map_err(|e| with_path(e.error, "cannot write", dest))?;
    Ok(())
}

fn sorted(value: Value) -> Value {
    match value {
        Value::Object(map) => {
            let mut pairs: Vec<(String, Value)> = map.into_iter().collect();
            pairs.sort_by(|a, b| a.0.cmp(&b.0));
            // Inserting in order keeps keys sorted even if serde_json's preserve_order is on.
            Value::Object(pairs.into_iter().map(|(k, v)| (k, sorted(v))).collect())
        }
        Value::Array(items) => Value::Array(items.into_iter().map(sorted).collect()),
        other => other,
    }
}

struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

fn hash_reader(mut reader: impl Read) -> io::Result<String> {
    let mut hashing = HashingWriter {
        inner: io::sink(),
        hasher: Sha256::new(),
    };
    io::copy(&mut reader, &mut hashing)?;
    Ok(format!("sha256:{}", hex::encode(hashing.hasher.finalize())))
}

fn sha256_hex(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

fn parse_json(bytes: &[u8], what: &str) -> io::Result<Value> {
    serde_json::from_slice(bytes).map_err(|e| invalid(format!("{what} is not valid JSON: {e}")))
}

fn missing_blob(e: io::Error, digest: &str, layout: &Path) -> io::Error {
    io::Error::new(
        e.kind(),
        format!("blob {digest} missing from {}: {e}", layout.display()),
    )
}

fn corrupt(digest: &str, actual: &str) -> io::Error {
    invalid(format!(
        "blob {digest} is corrupt: its content hashes to {actual}"
    ))
}

fn with_path(e: io::Error, what: &str, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("{what} {}: {e}", path.display()))
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

/// The tag of a whole reference used as a ref name (`registry:5000/app:1.0` → `1.0`); `None` for a bare
/// tag or a name without one.
fn reference_tag(name: &str) -> Option<&str> {
    let (repository, tag) = name.rsplit_once(':')?;
    (!repository.is_empty() && !tag.contains('/') && !tag.is_empty()).then_some(tag)
}

/// `DIR[:TAG]` of an `oci-layout://` reference: a tag is the text after the last `:` when it holds no `/`.
pub fn split_layout_ref(rest: &str) -> (&str, Option<&str>) {
    match rest.rsplit_once(':') {
        Some((dir, tag)) if !tag.contains('/') && !dir.is_empty() => (dir, Some(tag)),
        _ => (rest, None),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn layout_refs_split_tags() {
        use super::split_layout_ref;
        assert_eq!(split_layout_ref("/a/b:latest"), ("/a/b", Some("latest")));
        assert_eq!(split_layout_ref("/a/b"), ("/a/b", None));
        assert_eq!(split_layout_ref("./x:1/y"), ("./x:1/y", None));
    }

    #[test]
    fn an_entry_named_by_a_whole_reference_is_found_by_its_tag() {
        use oci_spec::image::{DescriptorBuilder, MediaType};
        let entry = |name: &str, hex: char| {
            DescriptorBuilder::default()
                .media_type(MediaType::ImageManifest)
                .digest(
                    oci_spec::image::Digest::try_from(format!(
                        "sha256:{}",
                        hex.to_string().repeat(64)
                    ))
                    .unwrap(),
                )
                .size(1u64)
                .annotations(
                    [(super::REF_NAME.to_string(), name.to_string())]
                        .into_iter()
                        .collect::<std::collections::HashMap<_, _>>(),
                )
                .build()
                .unwrap()
        };
        let dir = std::path::Path::new("/layout");
        let one = [entry("kiln/app:1.0", 'a'), entry("kiln/app:2.0", 'b')];
        let found = super::choose_tagged(&one, Some("1.0"), dir).unwrap();
        assert_eq!(
            found.digest().to_string(),
            format!("sha256:{}", "a".repeat(64))
        );
        let found = super::choose_tagged(&one, Some("kiln/app:2.0"), dir).unwrap();
        assert_eq!(
            found.digest().to_string(),
            format!("sha256:{}", "b".repeat(64))
        );
        // Two repositories with one tag: the tag alone names neither.
        let two = [entry("kiln/a:1.0", 'a'), entry("kiln/b:1.0", 'b')];
        assert!(super::choose_tagged(&two, Some("1.0"), dir).is_err());
        assert_eq!(super::reference_tag("localhost:5000/app"), None);
        assert_eq!(super::reference_tag("1.0"), None);
    }

    use super::*;
    use std::process::Command;

    /// Writes a blob file and returns (digest, path) as write_layout wants them.
    fn blob(dir: &Path, name: &str, bytes: &[u8]) -> (String, PathBuf) {
        let path = dir.join(name);
        fs::write(&path, bytes).unwrap();
        (sha256_hex(bytes), path)
    }

    /// A minimal but real image: one gzip layer made by the layer exporter, a config, a manifest.
    fn image(work: &Path, content: &[u8]) -> (Vec<u8>, Vec<(String, PathBuf)>) {
        let snap = work.join(format!("snap-{}", sha256_hex(content)));
        fs::create_dir_all(&snap).unwrap();
        fs::write(snap.join("hello"), content).unwrap();
        let layer_path = work.join(format!("layer-{}", sha256_hex(content)));
        let info = crate::layer::layer_digests(
            &snap,
            Some(0),
            crate::layer::Codec::Gzip,
            File::create(&layer_path).unwrap(),
        )
        .unwrap();
        let config = json!({
            "architecture": "amd64",
            "os": "linux",
            "config": { "Cmd": ["/hello"], "Labels": { "b": "2", "a": "1" } },
            "rootfs": { "type": "layers", "diff_ids": [info.diff_id] },
            "history": [{ "created_by": "kiln test" }],
        });
        let config_bytes = canonical_json(&config).unwrap();
        let config_name = format!("config-{}", sha256_hex(content));
        let (config_digest, config_path) = blob(work, &config_name, &config_bytes);
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": config_digest,
                "size": config_bytes.len(),
            },
            "layers": [{
                "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                "digest": info.digest,
                "size": info.size,
            }],
        });
        let blobs = vec![
            (config_digest, config_path),
            (info.digest.clone(), layer_path),
        ];
        (canonical_json(&manifest).unwrap(), blobs)
    }

    #[test]
    fn write_then_read_back() {
        let tmp = tempfile::tempdir().unwrap();
        let layout = tmp.path().join("layout");
        let (manifest, blobs) = image(tmp.path(), b"one");
        let digest = write_layout(&layout, &manifest, Some("v1"), &blobs).unwrap();
        assert_eq!(digest, sha256_hex(&manifest));

        for tag in [Some("v1"), None] {
            let img = read_image(&layout, tag).unwrap();
            assert_eq!(img.manifest_digest, digest);
            assert_eq!(img.config_digest, blobs[0].0);
            assert_eq!(img.manifest.layers().len(), 1);
            assert_eq!(img.config.os().to_string(), "linux");
        }
        // Layer blobs can be verified and unpacked by the consumer.
        let img = read_image(&layout, None).unwrap();
        let layer = &img.manifest.layers()[0];
        let path = verify_blob(&layout, layer.digest().as_ref(), Some(layer.size())).unwrap();
        let dest = tmp.path().join("unpacked");
        fs::create_dir(&dest).unwrap();
        let media = layer.media_type().to_string();
        let reader = crate::layer::open_blob(&path, &media).unwrap();
        crate::layer::unpack_layer(reader, &dest, crate::exec::userns::layer_ids()).unwrap();
        assert_eq!(fs::read(dest.join("hello")).unwrap(), b"one");

        // Files in the layout are readable by others, not left at the temp files' 0600.
        let mode = fs::metadata(layout.join("index.json"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o644);
        let index: Value =
            serde_json::from_slice(&fs::read(layout.join("index.json")).unwrap()).unwrap();
        assert_eq!(index["manifests"][0]["platform"]["architecture"], "amd64");
    }

    #[test]
    fn several_images_share_a_layout() {
        let tmp = tempfile::tempdir().unwrap();
        let layout = tmp.path().join("layout");
        let (m1, b1) = image(tmp.path(), b"one");
        let (m2, b2) = image(tmp.path(), b"two");
        let (m3, b3) = image(tmp.path(), b"three");
        let d1 = write_layout(&layout, &m1, Some("v1"), &b1).unwrap();
        let d2 = write_layout(&layout, &m2, Some("v2"), &b2).unwrap();
        assert_eq!(read_image(&layout, Some("v1")).unwrap().manifest_digest, d1);
        assert_eq!(read_image(&layout, Some("v2")).unwrap().manifest_digest, d2);

        let err = read_image(&layout, Some("nope")).unwrap_err().to_string();
        assert_eq!(
            err,
            format!("tag `nope` not in {} (tags: v1, v2)", layout.display())
        );
        let err = read_image(&layout, None).unwrap_err().to_string();
        assert!(err.contains("(tags: v1, v2)"), "{err}");

        // Re-tagging v1 replaces its entry; v1's old blobs stay (another tag may share them).
        let d3 = write_layout(&layout, &m3, Some("v1"), &b3).unwrap();
        assert_eq!(read_image(&layout, Some("v1")).unwrap().manifest_digest, d3);
        assert_eq!(read_image(&layout, Some("v2")).unwrap().manifest_digest, d2);
        let index: Value =
            serde_json::from_slice(&fs::read(layout.join("index.json")).unwrap()).unwrap();
        assert_eq!(index["manifests"].as_array().unwrap().len(), 2);
        assert!(blob_path(&layout, &d1).unwrap().exists());

        // "latest" wins when no tag is asked for.
        write_layout(&layout, &m2, Some("latest"), &b2).unwrap();
        assert_eq!(read_image(&layout, None).unwrap().manifest_digest, d2);

        // Untagged re-exports of the same image don't pile up.
        let before = fs::read(layout.join("index.json")).unwrap();
        write_layout(&layout, &m1, None, &b1).unwrap();
        write_layout(&layout, &m1, None, &b1).unwrap();
        let index: Value =
            serde_json::from_slice(&fs::read(layout.join("index.json")).unwrap()).unwrap();
        assert_eq!(index["manifests"].as_array().unwrap().len(), 4);
        assert_ne!(before, fs::read(layout.join("index.json")).unwrap());
    }

    #[test]
    fn corruption_is_detected() {
        let tmp = tempfile::tempdir().unwrap();
        let layout = tmp.path().join("layout");
        let (manifest, blobs) = image(tmp.path(), b"one");
        write_layout(&layout, &manifest, Some("v1"), &blobs).unwrap();

        let config = blob_path(&layout, &blobs[0].0).unwrap();
        let mut bytes = fs::read(&config).unwrap();
        bytes[0] = b' ';
        fs::write(&config, &bytes).unwrap();
        let err = read_image(&layout, Some("v1")).unwrap_err().to_string();
        assert!(
            err.contains(&blobs[0].0) && err.contains("corrupt"),
            "{err}"
        );

        let layer = blob_path(&layout, &blobs[1].0).unwrap();
        let mut bytes = fs::read(&layer).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        fs::write(&layer, &bytes).unwrap();
        let err = verify_blob(&layout, &blobs[1].0, None)
            .unwrap_err()
            .to_string();
        assert!(err.contains(&blobs[1].0), "{err}");

        // A truncated layer is caught by read_image itself, from its size.
        fs::write(&layer, &bytes[..10]).unwrap();
        fs::write(&config, fs::read(&blobs[0].1).unwrap()).unwrap();
        let err = read_image(&layout, Some("v1")).unwrap_err().to_string();
        assert!(err.contains(&blobs[1].0), "{err}");

        // A blob handed in under the wrong digest never enters the layout.
        let other = tmp.path().join("other");
        let wrong = vec![(blobs[0].0.clone(), blobs[1].1.clone())];
        let err = write_layout(&other, &manifest, None, &wrong)
            .unwrap_err()
            .to_string();
        assert!(err.contains("does not match"), "{err}");
    }

    #[test]
    fn bad_layouts_and_digests_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let err = read_image(tmp.path(), None).unwrap_err().to_string();
        assert_eq!(
            err,
            format!(
                "no OCI layout at {} (missing oci-layout)",
                tmp.path().display()
            )
        );
        for bad in [
            "sha256:../../etc/passwd",
            "sha512:00",
            &format!("sha256:{}", "A".repeat(64)),
            &format!("sha256:{}", "a".repeat(63)),
        ] {
            assert!(blob_path(tmp.path(), bad).is_err(), "{bad}");
        }
        let good = format!("sha256:{}", "a".repeat(64));
        assert_eq!(
            blob_path(tmp.path(), &good).unwrap(),
            tmp.path().join("blobs/sha256").join("a".repeat(64))
        );
    }

    #[test]
    fn nested_index_resolves_to_linux_amd64() {
        let tmp = tempfile::tempdir().unwrap();
        let layout = tmp.path().join("layout");
        let (manifest, blobs) = image(tmp.path(), b"one");
        let digest = write_layout(&layout, &manifest, None, &blobs).unwrap();
        let nested = canonical_json(&json!({
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [
                {
                    "mediaType": OCI_MANIFEST, "digest": digest, "size": manifest.len(),
                    "platform": { "os": "linux", "architecture": "arm64" },
                },
                {
                    "mediaType": OCI_MANIFEST, "digest": digest, "size": manifest.len(),
                    "platform": { "os": "linux", "architecture": "amd64" },
                },
            ],
        }))
        .unwrap();
        let nested_digest = sha256_hex(&nested);
        write_atomic(&blob_path(&layout, &nested_digest).unwrap(), &nested).unwrap();
        let top = canonical_json(&json!({
            "schemaVersion": 2,
            "manifests": [{
                "mediaType": OCI_INDEX, "digest": nested_digest, "size": nested.len(),
                "annotations": { REF_NAME: "multi" },
            }],
        }))
        .unwrap();
        fs::write(layout.join("index.json"), top).unwrap();
        let img = read_image(&layout, Some("multi")).unwrap();
        assert_eq!(img.manifest_digest, digest);
    }

    #[test]
    fn layout_tar_is_reproducible() {
        let tmp = tempfile::tempdir().unwrap();
        let layout = tmp.path().join("layout");
        let (manifest, blobs) = image(tmp.path(), b"one");
        write_layout(&layout, &manifest, Some("v1"), &blobs).unwrap();
        fs::write(layout.join(".tmpLeftover"), b"junk").unwrap();
        let mut a = Vec::new();
        write_layout_tar(&layout, &mut a).unwrap();
        // New mtimes on disk must not change the archive.
        let index = File::options()
            .write(true)
            .open(layout.join("index.json"))
            .unwrap();
        index.set_modified(std::time::SystemTime::now()).unwrap();
        let mut b = Vec::new();
        write_layout_tar(&layout, &mut b).unwrap();
        assert_eq!(a, b);
        let names: Vec<String> = tar::Archive::new(a.as_slice())
            .entries()
            .unwrap()
            .map(|e| String::from_utf8(e.unwrap().path_bytes().into_owned()).unwrap())
            .collect();
        assert_eq!(&names[..2], ["blobs/", "blobs/sha256/"]);
        assert_eq!(&names[names.len() - 2..], ["index.json", "oci-layout"]);
        assert_eq!(names.len(), 2 + 3 + 2);
    }

    #[test]
    fn canonical_json_sorts_hashmaps() {
        let mut labels = std::collections::HashMap::new();
        for i in 0..32 {
            labels.insert(format!("k{i}"), i);
        }
        let bytes = canonical_json(&json!({ "z": 1, "labels": labels })).unwrap();
        let text = String::from_utf8(bytes).unwrap();
        assert!(
            text.starts_with(r#"{"labels":{"k0":0,"k1":1,"k10":10"#),
            "{text}"
        );
        assert!(text.ends_with(r#""z":1}"#));
    }

    #[test]
    fn skopeo_accepts_the_layout() {
        let Some(skopeo) = ["/usr/bin/skopeo", "/usr/local/bin/skopeo"]
            .into_iter()
            .find(|p| Path::new(p).exists())
        else {
            crate::progress::test_note("note: skopeo not installed; skipping the skopeo check");
            return;
        };
        let tmp = tempfile::tempdir().unwrap();
        let layout = tmp.path().join("layout");
        let (manifest, blobs) = image(tmp.path(), b"one");
        let digest = write_layout(&layout, &manifest, Some("v1"), &blobs).unwrap();
        let tar_path = tmp.path().join("image.tar");
        write_layout_tar(&layout, File::create(&tar_path).unwrap()).unwrap();

        for reference in [
            format!("oci:{}:v1", layout.display()),
            format!("oci-archive:{}:v1", tar_path.display()),
        ] {
            let out = Command::new(skopeo)
                .args(["inspect", "--raw"])
                .arg(&reference)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "skopeo inspect {reference}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert_eq!(sha256_hex(&out.stdout), digest);
            let out = Command::new(skopeo)
                .arg("inspect")
                .arg(&reference)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "skopeo inspect {reference}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let info: Value = serde_json::from_slice(&out.stdout).unwrap();
            assert_eq!(info["Os"], "linux");
            assert_eq!(info["Layers"].as_array().unwrap().len(), 1);
        }
        // skopeo copies it out again, which re-reads and verifies every blob.
        let copy = tmp.path().join("copy");
        let out = Command::new(skopeo)
            .args(["copy", "--quiet"])
            .arg(format!("oci:{}:v1", layout.display()))
            .arg(format!("oci:{}:again", copy.display()))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(read_image(&copy, Some("again")).is_ok());
    }
}
