//! The SSH agent protocol (draft-miller-ssh-agent) as kiln speaks it on behalf of a step: a minimal
//! agent answering from keys kiln holds, and a relay to an agent kiln does not own. Both let only
//! listing identities and signing through, so a step (here or on a worker) can neither add, remove nor
//! lock a key of the user's agent, as BuildKit's read-only agent refuses adding, removing, locking and
//! extensions.
//!
//! Messages are u32-length-framed, their type the first byte; strings inside are u32-prefixed.

use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};

use super::SshSource;

const FAILURE: u8 = 5;
const REQUEST_IDENTITIES: u8 = 11;
const IDENTITIES_ANSWER: u8 = 12;
const SIGN_REQUEST: u8 = 13;
const SIGN_RESPONSE: u8 = 14;
/// The largest message either side may send (OpenSSH's agent caps messages at 256 KiB).
const MAX_MESSAGE: u32 = 256 * 1024;

/// Whether a step may send `msg` to an agent: only requests that use a key without changing or
/// revealing the agent's keys.
pub fn allowed(msg: &[u8]) -> bool {
    matches!(msg.first(), Some(&REQUEST_IDENTITIES | &SIGN_REQUEST))
}

/// Serves one client until it hangs up, answering from `agent`: a socket's agent through the filter,
/// or kiln's own keys.
pub async fn serve(
    client: &mut (impl AsyncRead + AsyncWrite + Unpin),
    agent: &SshSource,
) -> std::io::Result<()> {
    match agent {
        SshSource::Socket(path) => {
            let mut upstream = tokio::net::UnixStream::connect(path).await?;
            while let Some(msg) = read_message(client).await? {
                if !allowed(&msg) {
                    write_message(client, &[FAILURE]).await?;
                    continue;
                }
                write_message(&mut upstream, &msg).await?;
                // The protocol is one answer per request, in order.
                let Some(reply) = read_message(&mut upstream).await? else {
                    return Ok(());
                };
                write_message(client, &reply).await?;
            }
            Ok(())
        }
        SshSource::Keys(keys) => {
            while let Some(msg) = read_message(client).await? {
                let reply = answer(&msg, keys).unwrap_or_else(|| vec![FAILURE]);
                write_message(client, &reply).await?;
            }
            Ok(())
        }
    }
}

/// The next message, or `None` when the other side hung up (or sent one too large to be an agent's).
async fn read_message(r: &mut (impl AsyncRead + Unpin)) -> std::io::Result<Option<Vec<u8>>> {
    let len = match r.read_u32().await {
        Ok(n) if n <= MAX_MESSAGE => n as usize,
        _ => return Ok(None),
    };
    let mut msg = vec![0u8; len];
    r.read_exact(&mut msg).await?;
    Ok(Some(msg))
}

async fn write_message(w: &mut (impl AsyncWrite + Unpin), msg: &[u8]) -> std::io::Result<()> {
    w.write_u32(msg.len() as u32).await?;
    w.write_all(msg).await?;
    w.flush().await
}

fn put_string(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
    out.extend_from_slice(bytes);
}

fn take_string<'a>(buf: &mut &'a [u8]) -> Option<&'a [u8]> {
    let len = u32::from_be_bytes(buf.get(..4)?.try_into().ok()?) as usize;
    let s = buf.get(4..4 + len)?;
    *buf = &buf[4 + len..];
    Some(s)
}

fn answer(msg: &[u8], keys: &[ssh_key::PrivateKey]) -> Option<Vec<u8>> {
    use signature::Signer as _;
    use ssh_encoding::Encode as _;
    match *msg.first()? {
        REQUEST_IDENTITIES => {
            let mut out = vec![IDENTITIES_ANSWER];
            out.extend_from_slice(&(keys.len() as u32).to_be_bytes());
            for key in keys {
                put_string(&mut out, &key.public_key().to_bytes().ok()?);
                put_string(&mut out, key.comment().as_bytes());
            }
            Some(out)
        }
        SIGN_REQUEST => {
            let mut rest = &msg[1..];
            let blob = take_string(&mut rest)?;
            let data = take_string(&mut rest)?;
            let key = keys
                .iter()
                .find(|k| k.public_key().to_bytes().is_ok_and(|b| b == blob))?;
            let sig: ssh_key::Signature = key.try_sign(data).ok()?;
            let mut encoded = Vec::new();
            sig.encode(&mut encoded).ok()?;
            let mut out = vec![SIGN_RESPONSE];
            put_string(&mut out, &encoded);
            Some(out)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_listing_and_signing_pass() {
        // 17 add identity, 18 remove, 19 remove all, 22 lock, 25 add constrained, 27 extension.
        for refused in [17u8, 18, 19, 20, 21, 22, 23, 25, 26, 27] {
            assert!(!super::allowed(&[refused]), "{refused}");
        }
        assert!(super::allowed(&[11]) && super::allowed(&[13, 0, 0]));
        assert!(!super::allowed(&[]));
    }
}
