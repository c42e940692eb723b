//! A line diff for the data-driven case harnesses (`tests/lints.rs`, `tests/build_cases.rs`): what an
//! expected file and kiln's output disagree on, lines marked `-`/`+`.

/// A line diff good enough to spot the change: lines only in one side, marked `-`/`+`.
pub(crate) fn diff(expected: &str, actual: &str) -> String {
    let e: Vec<&str> = expected.lines().collect();
    let a: Vec<&str> = actual.lines().collect();
    // Longest common subsequence, then walk it.
    let mut lcs = vec![vec![0usize; a.len() + 1]; e.len() + 1];
    for i in (0..e.len()).rev() {
        for j in (0..a.len()).rev() {
            lcs[i][j] = if e[i] == a[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let (mut i, mut j, mut out) = (0, 0, String::new());
    while i < e.len() || j < a.len() {
        if i < e.len() && j < a.len() && e[i] == a[j] {
            i += 1;
            j += 1;
        } else if j < a.len() && (i == e.len() || lcs[i][j + 1] >= lcs[i + 1][j]) {
            out.push_str(&format!("    + {}\n", a[j]));
            j += 1;
        } else {
            out.push_str(&format!("    - {}\n", e[i]));
            i += 1;
        }
    }
    if expected.ends_with('\n') != actual.ends_with('\n') {
        out.push_str("    (the final newline differs)\n");
    }
    out
}
