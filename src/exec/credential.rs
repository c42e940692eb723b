//! A credential helper for a REAPI server, in Bazel's protocol (`--credential_helper`): the helper runs
//! with the argument `get`, reads `{"uri": "..."}` on stdin and answers
//! `{"headers": {"NAME": ["VALUE", ...]}}` on stdout. The values are credentials: they stay in
//! zeroized buffers and never appear in an error.

use std::io::{Read as _, Write as _};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::Deserialize;
use zeroize::Zeroizing;

use crate::diag::{Diagnostic, Result};

/// How long a helper may take (Bazel's `--credential_helper_timeout` default).
const TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Deserialize)]
struct Answer {
    #[serde(default)]
    headers: std::collections::BTreeMap<String, Vec<String>>,
    /// RFC 3339: when the headers stop being valid.
    expires: Option<String>,
}

/// What a helper answered: headers in order (a name once per value), and when they expire.
pub struct Credentials {
    pub headers: Vec<(String, Zeroizing<String>)>,
    pub expires: Option<std::time::SystemTime>,
}

/// Runs `helper get` for `uri`.
pub fn get(helper: &Path, uri: &str) -> Result<Credentials> {
    let shown = helper.display();
    let fail = |why: String| {
        Diagnostic::env(format!("credential helper `{shown}` failed: {why}")).help(
            "it must answer `get` with `{\"headers\": {\"NAME\": [\"VALUE\"]}}` on stdout (Bazel's credential-helper protocol)",
        )
    };
    let mut child = Command::new(helper)
        .arg("get")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Diagnostic::io(format!("cannot run credential helper `{shown}`"), e))?;
    let request = serde_json::json!({ "uri": uri }).to_string();
    if let Some(mut stdin) = child.stdin.take() {
        // A helper that does not read its request still answers; a broken pipe is not an error here.
        let _ = stdin.write_all(request.as_bytes());
    }
    let mut stdout = child.stdout.take();
    let mut stderr = child.stderr.take();
    // Read both pipes on threads, so a helper that writes much cannot block on a full pipe.
    let out = std::thread::spawn(move || {
        let mut buf = Zeroizing::new(Vec::new());
        if let Some(s) = stdout.as_mut() {
            let _ = s.read_to_end(&mut buf);
        }
        buf
    });
    let err = std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(s) = stderr.as_mut() {
            let _ = s.take(4096).read_to_end(&mut buf);
        }
        buf
    });
    let started = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if started.elapsed() > TIMEOUT => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(fail(format!("no answer in {}s", TIMEOUT.as_secs())));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => return Err(Diagnostic::io(format!("cannot wait for `{shown}`"), e)),
        }
    };
    let out = out.join().unwrap_or_default();
    let err = err.join().unwrap_or_default();
    if !status.success() {
        let last = String::from_utf8_lossy(&err);
        let last = last
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("");
        return Err(fail(format!("{status}: {last}")));
    }
    // Only the position: serde_json's message may quote a value ("invalid type: string \"...\"").
    let answer: Answer = serde_json::from_slice(&out).map_err(|e| {
        fail(format!(
            "its answer is not the expected JSON (line {}, column {})",
            e.line(),
            e.column()
        ))
    })?;
    let expires = match &answer.expires {
        None => None,
        Some(t) => {
            let t = t
                .parse::<jiff::Timestamp>()
                .map_err(|e| fail(format!("`expires` is not an RFC 3339 time ({e})")))?;
            let secs = u64::try_from(t.as_second()).unwrap_or(0);
            Some(std::time::UNIX_EPOCH + Duration::from_secs(secs))
        }
    };
    let mut headers = Vec::new();
    for (name, values) in answer.headers {
        for v in values {
            headers.push((name.clone(), Zeroizing::new(v)));
        }
    }
    Ok(Credentials { headers, expires })
}
