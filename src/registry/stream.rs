//! A base image's layer pulled in one pass over the network bytes: each chunk is hashed and written to
//! the blob file as it arrives while a blocking thread decompresses and unpacks the same bytes into the
//! layer's snapshot, hashing the tar for its diff id. Nothing is adopted into the store before the
//! blob's digest and size and the tar's diff id are checked; a corrupt or short blob leaves nothing.

use std::io::{self, BufRead, Read, Write};
use std::path::Path;

use bytes::Bytes;
use futures_util::StreamExt as _;
use oci_client::errors::OciDistributionError;
use oci_client::manifest::OciDescriptor;
use sha2::{Digest as _, Sha256};
use tokio::sync::mpsc;

use super::client::Session;
use crate::diag::Result;
use crate::digest::Digest;
use crate::layer::Ids;
use crate::store::{LayerBlob, Store};

/// Chunks in flight between the download and the unpacking thread: enough to ride out a slow write,
/// little enough (a few MiB) to keep memory flat.
const QUEUE: usize = 64;

/// Downloads the layer `desc` into the store as a blob and, unpacked, as the snapshot of `diff_id`.
pub(super) async fn fetch_unpacked(
    s: &Session,
    store: &Store,
    desc: &OciDescriptor,
    diff_id: &Digest,
    ids: Ids,
) -> Result<()> {
    let digest = Digest::parse(&desc.digest).expect("checked by descriptor");
    let tmp = store.temp_dir("pull-")?;
    let part = tmp.path().join("blob");
    let dest = tmp.path().join("layer");
    let what = format!("blob {digest}");
    let tar_size = s
        .retry(&what, || attempt(s, desc, diff_id, &part, &dest, ids))
        .await?;
    let snapshot = Store::base_layer_id(diff_id);
    store.adopt_pulled_blob(&part, &digest)?;
    store.commit_snapshot(&dest, &snapshot)?;
    store.put_layer_blob(
        &snapshot,
        &LayerBlob {
            diff_id: diff_id.clone(),
            digest,
            size: desc.size as u64,
            media_type: desc.media_type.clone(),
            tar_size: Some(tar_size),
        },
    )
}

/// One try: a fresh blob file and snapshot directory, filled from one request. Returns the tar's size.
async fn attempt(
    s: &Session,
    desc: &OciDescriptor,
    diff_id: &Digest,
    part: &Path,
    dest: &Path,
    ids: Ids,
) -> std::result::Result<u64, OciDistributionError> {
    if dest.exists() {
        std::fs::remove_dir_all(dest)?;
    }
    std::fs::create_dir(dest)?;
    let mut stream = s.client.pull_blob_stream(&s.endpoint.oci(), desc).await?;
    let (tx, rx) = mpsc::channel::<Bytes>(QUEUE);
    let unpacking = {
        let (part, dest, media_type) = (
            part.to_path_buf(),
            dest.to_path_buf(),
            desc.media_type.clone(),
        );
        tokio::task::spawn_blocking(move || unpack(rx, &part, &dest, &media_type, ids))
    };
    let want = desc.size as u64;
    let mut received: u64 = 0;
    let mut failed = None;
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(chunk) => {
                received += chunk.len() as u64;
                // More bytes than promised: cut off here, the check below reports it.
                if received > want || tx.send(chunk).await.is_err() {
                    break;
                }
            }
            Err(e) => {
                failed = Some(e);
                break;
            }
        }
    }
    drop(tx);
    let done = unpacking
        .await
        .map_err(|e| generic(format!("the unpacking of blob {} failed: {e}", desc.digest)))?;
    if let Some(e) = failed {
        return Err(e.into());
    }
    let done = done?;
    if done.size != want || done.digest.as_str() != desc.digest {
        return Err(generic(format!(
            "blob {} arrived corrupt ({} bytes, digest {}; its descriptor says {want} bytes)",
            desc.digest, done.size, done.digest
        )));
    }
    let (tar_digest, tar_size) = done
        .unpacked
        .map_err(|e| generic(format!("cannot unpack layer {}: {e}", desc.digest)))?;
    if tar_digest != *diff_id {
        return Err(generic(format!(
            "layer {} unpacks to a tar whose digest is {tar_digest}, but the image config says {diff_id}",
            desc.digest
        )));
    }
    Ok(tar_size)
}

fn generic(message: String) -> OciDistributionError {
    OciDistributionError::GenericError(Some(message))
}

/// What the unpacking thread saw: the blob's digest and size (over every byte received, even after an
/// unpack error, so that a corrupt blob is reported as such), the tar's digest and size, and how the
/// unpacking went.
struct Unpacked {
    digest: Digest,
    size: u64,
    /// The tar's digest and size.
    unpacked: io::Result<(Digest, u64)>,
}

/// The blocking half: tees the chunks into the blob file and the hasher, and unpacks them.
fn unpack(
    rx: mpsc::Receiver<Bytes>,
    part: &Path,
    dest: &Path,
    media_type: &str,
    ids: Ids,
) -> std::result::Result<Unpacked, OciDistributionError> {
    let file = std::fs::File::create(part)?;
    let mut tee = Tee {
        rx,
        chunk: Bytes::new(),
        file: io::BufWriter::with_capacity(1 << 20, file),
        hasher: Sha256::new(),
        size: 0,
    };
    let unpacked = (|| {
        let mut tar = HashingReader {
            inner: crate::layer::decompress(&mut tee, media_type)?,
            hasher: Sha256::new(),
            size: 0,
        };
        crate::layer::unpack_layer(&mut tar, dest, ids)?;
        // The tar's end-of-archive blocks and any padding count towards the diff id.
        io::copy(&mut tar, &mut io::sink())?;
        Ok((Digest::from_hasher(tar.hasher), tar.size))
    })();
    // The rest of the blob (a gzip trailer, or everything after an unpack error) is still hashed.
    io::copy(&mut tee, &mut io::sink())?;
    tee.file.flush()?;
    Ok(Unpacked {
        digest: Digest::from_hasher(tee.hasher),
        size: tee.size,
        unpacked,
    })
}

/// The compressed bytes as they arrive, written to the blob file and hashed on their way to the reader.
struct Tee {
    rx: mpsc::Receiver<Bytes>,
    chunk: Bytes,
    file: io::BufWriter<std::fs::File>,
    hasher: Sha256,
    size: u64,
}

impl Read for Tee {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let available = self.fill_buf()?;
        let n = available.len().min(buf.len());
        buf[..n].copy_from_slice(&available[..n]);
        self.consume(n);
        Ok(n)
    }
}

impl BufRead for Tee {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        while self.chunk.is_empty() {
            match self.rx.blocking_recv() {
                Some(chunk) => {
                    self.file.write_all(&chunk)?;
                    self.hasher.update(&chunk);
                    self.size += chunk.len() as u64;
                    self.chunk = chunk;
                }
                None => break,
            }
        }
        Ok(&self.chunk)
    }

    fn consume(&mut self, n: usize) {
        let _ = self.chunk.split_to(n);
    }
}

/// The uncompressed tar, hashed (for the diff id) and counted as the unpacker reads it.
struct HashingReader<'a> {
    inner: Box<dyn Read + 'a>,
    hasher: Sha256,
    size: u64,
}

impl Read for HashingReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }
}
