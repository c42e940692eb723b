//! The SBOM of an image: an SPDX 2.3 JSON document listing the operating system (`/etc/os-release`) and
//! the OS packages its final filesystem records (dpkg's `status` and distroless's `status.d/`, Alpine's
//! apk database), read from the layer snapshots (`rootfs`) without running anything in the image.
//! Output is deterministic: packages sorted, ids derived from content, the creation time
//! `SOURCE_DATE_EPOCH` when set.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::rootfs::Merged;
use super::{SPDX_NOASSERTION, rfc3339};
use crate::digest::Digest;

/// One package of the image.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Package {
    /// `deb`, `apk`.
    pub kind: &'static str,
    pub name: String,
    pub version: String,
    pub arch: String,
    /// SPDX's `supplier`: `Person: NAME (EMAIL)` or `Organization: ...`, or NOASSERTION.
    pub supplier: String,
    /// An SPDX license expression, or NOASSERTION.
    pub license: String,
}

/// The image's operating system, from os-release.
#[derive(Clone, Debug, Default)]
pub struct OsRelease {
    pub id: String,
    pub version_id: String,
    pub name: String,
    pub pretty_name: String,
}

/// What was read from an image's filesystem.
pub struct Inventory {
    pub os: Option<OsRelease>,
    pub packages: Vec<Package>,
    /// Package databases found but not read (rpm), for a warning.
    pub unread: Vec<String>,
}

/// Reads the OS and its packages from the merged layers.
pub(super) fn inventory(fs: &Merged) -> Inventory {
    let os = fs
        .read("/etc/os-release")
        .or_else(|| fs.read("/usr/lib/os-release"))
        .map(|b| os_release(&String::from_utf8_lossy(&b)));
    let mut packages = Vec::new();
    if let Some(status) = fs.read("/var/lib/dpkg/status") {
        packages.extend(dpkg(&String::from_utf8_lossy(&status), fs));
    }
    for (_, file) in fs.files_in("/var/lib/dpkg/status.d") {
        // distroless writes one paragraph per package, without `Status` (all are installed); the
        // `.md5sums` files beside them are not paragraphs.
        if let Ok(text) = std::fs::read_to_string(&file)
            && file.extension().is_none_or(|e| e != "md5sums")
        {
            packages.extend(dpkg(&text, fs));
        }
    }
    if let Some(db) = fs.read("/lib/apk/db/installed") {
        packages.extend(apk(&String::from_utf8_lossy(&db)));
    }
    packages.sort();
    packages.dedup_by(|a, b| (a.kind, &a.name, &a.arch) == (b.kind, &b.name, &b.arch));
    let unread = ["/var/lib/rpm", "/usr/lib/sysimage/rpm"]
        .into_iter()
        .filter(|p| fs.exists(p))
        .map(|p| format!("the rpm database at {p}"))
        .collect();
    Inventory {
        os,
        packages,
        unread,
    }
}

/// `KEY=value` lines, values unquoted as the shell would.
fn os_release(text: &str) -> OsRelease {
    let mut os = OsRelease::default();
    for line in text.lines() {
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        let v = v.trim().trim_matches(|c| c == '"' || c == '\'').to_string();
        match k.trim() {
            "ID" => os.id = v,
            "VERSION_ID" => os.version_id = v,
            "NAME" => os.name = v,
            "PRETTY_NAME" => os.pretty_name = v,
            _ => {}
        }
    }
    os
}

/// Debian control paragraphs: `Field: value`, continuation lines indented, paragraphs apart by blank
/// lines. Field names are compared case-insensitively, as dpkg does.
fn paragraphs(text: &str) -> Vec<BTreeMap<String, String>> {
    let mut out = Vec::new();
    let mut cur: BTreeMap<String, String> = BTreeMap::new();
    let mut last: Option<String> = None;
    for line in text.lines() {
        if line.trim().is_empty() {
            if !cur.is_empty() {
                out.push(std::mem::take(&mut cur));
            }
            last = None;
        } else if line.starts_with([' ', '\t']) {
            if let Some(v) = last.as_ref().and_then(|k| cur.get_mut(k)) {
                v.push('\n');
                v.push_str(line.trim());
            }
        } else if let Some((k, v)) = line.split_once(':') {
            let k = k.trim().to_ascii_lowercase();
            cur.insert(k.clone(), v.trim().to_string());
            last = Some(k);
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// dpkg's database: every package it lists but those it calls `not-installed` (purged), as
/// `dpkg-query -W` lists them.
fn dpkg(text: &str, fs: &Merged) -> Vec<Package> {
    paragraphs(text)
        .into_iter()
        .filter(|p| {
            p.get("status")
                .is_none_or(|s| s.split_whitespace().nth(2) != Some("not-installed"))
        })
        .filter_map(|p| {
            let name = p.get("package")?.clone();
            let license = debian_license(fs, &name);
            Some(Package {
                kind: "deb",
                version: p.get("version").cloned().unwrap_or_default(),
                arch: p.get("architecture").cloned().unwrap_or_default(),
                supplier: supplier(p.get("maintainer").map(String::as_str)),
                license,
                name,
            })
        })
        .collect()
}

/// Alpine's `installed` database: one-letter fields, a paragraph per package.
fn apk(text: &str) -> Vec<Package> {
    let mut out = Vec::new();
    for block in text.split("\n\n") {
        let field = |k: &str| {
            block
                .lines()
                .find_map(|l| l.strip_prefix(k).and_then(|r| r.strip_prefix(':')))
                .map(str::to_string)
        };
        let Some(name) = field("P") else { continue };
        out.push(Package {
            kind: "apk",
            name,
            version: field("V").unwrap_or_default(),
            arch: field("A").unwrap_or_default(),
            supplier: supplier(field("m").as_deref()),
            license: field("L")
                .map(|l| spdx_expression(&l))
                .unwrap_or_else(|| SPDX_NOASSERTION.into()),
        });
    }
    out
}

/// A maintainer `Name <email>` as SPDX's supplier.
fn supplier(maintainer: Option<&str>) -> String {
    let Some(m) = maintainer.map(str::trim).filter(|m| !m.is_empty()) else {
        return SPDX_NOASSERTION.into();
    };
    match m.split_once('<') {
        Some((name, email)) => format!(
            "Person: {} ({})",
            name.trim().replace(['(', ')'], ""),
            email.trim_end_matches('>').trim()
        ),
        None => format!("Person: {}", m.replace(['(', ')'], "")),
    }
}

/// The license of a Debian package where its copyright file is machine-readable (DEP-5) and every
/// `License:` short name in it has an SPDX id; else NOASSERTION.
fn debian_license(fs: &Merged, package: &str) -> String {
    let Some(text) = fs.read(&format!("/usr/share/doc/{package}/copyright")) else {
        return SPDX_NOASSERTION.into();
    };
    let text = String::from_utf8_lossy(&text);
    let paras = paragraphs(&text);
    if !paras
        .first()
        .and_then(|p| p.get("format"))
        .is_some_and(|f| f.contains("copyright-format"))
    {
        return SPDX_NOASSERTION.into();
    }
    let mut terms = std::collections::BTreeSet::new();
    for p in &paras {
        if let Some(l) = p.get("license") {
            let short = l.lines().next().unwrap_or_default();
            if short.is_empty() {
                continue;
            }
            terms.insert(spdx_expression(short));
        }
    }
    if terms.is_empty() || terms.contains(SPDX_NOASSERTION) {
        return SPDX_NOASSERTION.into();
    }
    let terms: Vec<String> = terms.into_iter().collect();
    match terms.len() {
        1 => terms.into_iter().next().expect("one"),
        _ => terms
            .iter()
            .map(|t| {
                if t.contains(' ') {
                    format!("({t})")
                } else {
                    t.clone()
                }
            })
            .collect::<Vec<_>>()
            .join(" AND "),
    }
}

/// A license field (`GPL-2+ or Artistic-2.0`, Alpine's `MIT BSD-3-Clause`) as an SPDX expression,
/// when every name in it has an SPDX id (`GPL-2+` is `GPL-2.0-or-later`) and it mixes no `and` with
/// `or` (whose precedence the formats leave open); names side by side are all of them (AND). Else
/// NOASSERTION.
fn spdx_expression(field: &str) -> String {
    let mut ids = Vec::new();
    let mut op: Option<&str> = None;
    for token in field.split_whitespace() {
        let lower = token.to_ascii_lowercase();
        let this = match lower.as_str() {
            "and" | "&" => "AND",
            "or" | "|" => "OR",
            _ => match spdx_id(&lower) {
                Some(id) => {
                    ids.push(id);
                    continue;
                }
                None => return SPDX_NOASSERTION.into(),
            },
        };
        if op.is_some_and(|o| o != this) {
            return SPDX_NOASSERTION.into();
        }
        op = Some(this);
    }
    ids.dedup();
    if ids.is_empty() {
        return SPDX_NOASSERTION.into();
    }
    ids.join(&format!(" {} ", op.unwrap_or("AND")))
}

/// Debian's and Alpine's short license names (lower case) that have an SPDX id.
fn spdx_id(short: &str) -> Option<&'static str> {
    Some(match short {
        "gpl-1" => "GPL-1.0-only",
        "gpl-1+" => "GPL-1.0-or-later",
        "gpl-2" | "gpl-2.0-only" => "GPL-2.0-only",
        "gpl-2+" | "gpl-2.0-or-later" => "GPL-2.0-or-later",
        "gpl-3" | "gpl-3.0-only" => "GPL-3.0-only",
        "gpl-3+" | "gpl-3.0-or-later" => "GPL-3.0-or-later",
        "lgpl-2" => "LGPL-2.0-only",
        "lgpl-2+" => "LGPL-2.0-or-later",
        "lgpl-2.1" | "lgpl-2.1-only" => "LGPL-2.1-only",
        "lgpl-2.1+" | "lgpl-2.1-or-later" => "LGPL-2.1-or-later",
        "lgpl-3" | "lgpl-3.0-only" => "LGPL-3.0-only",
        "lgpl-3+" | "lgpl-3.0-or-later" => "LGPL-3.0-or-later",
        "bsd-2-clause" => "BSD-2-Clause",
        "bsd-3-clause" => "BSD-3-Clause",
        "bsd-4-clause" => "BSD-4-Clause",
        "expat" | "mit" => "MIT",
        "apache-2.0" | "apache-2" => "Apache-2.0",
        "zlib" => "Zlib",
        "isc" => "ISC",
        "mpl-2.0" => "MPL-2.0",
        "cc0-1.0" | "cc0" => "CC0-1.0",
        "0bsd" => "0BSD",
        "bzip2-1.0.6" => "bzip2-1.0.6",
        "openssl" => "OpenSSL",
        "curl" => "curl",
        "artistic-2.0" => "Artistic-2.0",
        // Already an SPDX id kiln knows.
        _ => {
            return SPDX_IDS
                .iter()
                .copied()
                .find(|id| id.eq_ignore_ascii_case(short));
        }
    })
}

/// The SPDX ids `spdx_id` maps to, accepted as written too.
const SPDX_IDS: [&str; 26] = [
    "GPL-1.0-only",
    "GPL-1.0-or-later",
    "GPL-2.0-only",
    "GPL-2.0-or-later",
    "GPL-3.0-only",
    "GPL-3.0-or-later",
    "LGPL-2.0-only",
    "LGPL-2.0-or-later",
    "LGPL-2.1-only",
    "LGPL-2.1-or-later",
    "LGPL-3.0-only",
    "LGPL-3.0-or-later",
    "BSD-2-Clause",
    "BSD-3-Clause",
    "BSD-4-Clause",
    "MIT",
    "Apache-2.0",
    "Zlib",
    "ISC",
    "MPL-2.0",
    "CC0-1.0",
    "0BSD",
    "bzip2-1.0.6",
    "OpenSSL",
    "curl",
    "Artistic-2.0",
];

/// A package URL (purl): `pkg:deb/debian/NAME@VERSION?arch=ARCH&distro=debian-12`.
pub fn purl(p: &Package, os: Option<&OsRelease>) -> String {
    use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
    const PART: &AsciiSet = &NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'.')
        .remove(b'_')
        .remove(b'~');
    let enc = |s: &str| utf8_percent_encode(s, PART).to_string();
    let namespace = os
        .map(|o| o.id.as_str())
        .filter(|id| !id.is_empty())
        .unwrap_or(match p.kind {
            "apk" => "alpine",
            _ => "debian",
        });
    let mut purl = format!(
        "pkg:{}/{}/{}@{}",
        p.kind,
        enc(namespace),
        enc(&p.name),
        enc(&p.version)
    );
    let mut qualifiers = Vec::new();
    if !p.arch.is_empty() {
        qualifiers.push(format!("arch={}", enc(&p.arch)));
    }
    if let Some(os) = os.filter(|o| !o.id.is_empty()) {
        let distro = if os.version_id.is_empty() {
            os.id.clone()
        } else {
            format!("{}-{}", os.id, os.version_id)
        };
        qualifiers.push(format!("distro={}", enc(&distro)));
    }
    if !qualifiers.is_empty() {
        purl.push('?');
        purl.push_str(&qualifiers.join("&"));
    }
    purl
}

/// An SPDX id made of what SPDX allows (letters, digits, `.`, `-`), unique by a digest of `unique`.
fn spdx_id_for(kind: &str, name: &str, unique: &str) -> String {
    let clean: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' {
                c
            } else {
                '-'
            }
        })
        .collect();
    let hash = Digest::of(unique.as_bytes());
    format!("SPDXRef-{kind}-{clean}-{}", &hash.hex()[..16])
}

/// The SPDX 2.3 document of an image: `name` (the image's name, or its digest) DESCRIBES the image,
/// which CONTAINS the operating system and every package.
pub fn document(inv: &Inventory, name: &str, manifest: &Digest, created: i64) -> Value {
    let image_id = "SPDXRef-image".to_string();
    let mut packages = vec![json!({
        "SPDXID": image_id,
        "name": name,
        "versionInfo": manifest.to_string(),
        "downloadLocation": SPDX_NOASSERTION,
        "filesAnalyzed": false,
        "licenseConcluded": SPDX_NOASSERTION,
        "licenseDeclared": SPDX_NOASSERTION,
        "copyrightText": SPDX_NOASSERTION,
        "primaryPackagePurpose": "CONTAINER",
        "checksums": [{"algorithm": "SHA256", "checksumValue": manifest.hex()}],
    })];
    let mut relationships = vec![json!({
        "spdxElementId": "SPDXRef-DOCUMENT",
        "relationshipType": "DESCRIBES",
        "relatedSpdxElement": image_id,
    })];
    let mut contains = |id: &str| {
        relationships.push(json!({
            "spdxElementId": image_id,
            "relationshipType": "CONTAINS",
            "relatedSpdxElement": id,
        }));
    };
    if let Some(os) = inv.os.as_ref().filter(|o| !o.id.is_empty()) {
        let id = spdx_id_for(
            "OperatingSystem",
            &os.id,
            &format!("{}@{}", os.id, os.version_id),
        );
        let mut p = json!({
            "SPDXID": id,
            "name": os.id,
            "downloadLocation": SPDX_NOASSERTION,
            "filesAnalyzed": false,
            "licenseConcluded": SPDX_NOASSERTION,
            "licenseDeclared": SPDX_NOASSERTION,
            "copyrightText": SPDX_NOASSERTION,
            "primaryPackagePurpose": "OPERATING-SYSTEM",
            "description": if os.pretty_name.is_empty() { &os.name } else { &os.pretty_name },
        });
        if !os.version_id.is_empty() {
            p["versionInfo"] = json!(os.version_id);
        }
        packages.push(p);
        contains(&id);
    }
    for p in &inv.packages {
        let purl = purl(p, inv.os.as_ref());
        let id = spdx_id_for("Package", &format!("{}-{}", p.kind, p.name), &purl);
        packages.push(json!({
            "SPDXID": id,
            "name": p.name,
            "versionInfo": p.version,
            "supplier": p.supplier,
            "downloadLocation": SPDX_NOASSERTION,
            "filesAnalyzed": false,
            "licenseConcluded": SPDX_NOASSERTION,
            "licenseDeclared": p.license,
            "copyrightText": SPDX_NOASSERTION,
            "primaryPackagePurpose": "LIBRARY",
            "externalRefs": [{
                "referenceCategory": "PACKAGE-MANAGER",
                "referenceType": "purl",
                "referenceLocator": purl,
            }],
        }));
        contains(&id);
    }
    json!({
        "spdxVersion": "SPDX-2.3",
        "dataLicense": "CC0-1.0",
        "SPDXID": "SPDXRef-DOCUMENT",
        "name": name,
        // Unique per image, and the same for the same image: a URI no one resolves.
        "documentNamespace": format!("urn:kiln:spdx:{}", manifest.hex()),
        "creationInfo": {
            "created": rfc3339(created),
            "creators": [format!("Tool: kiln-{}", env!("CARGO_PKG_VERSION"))],
        },
        "packages": packages,
        "relationships": relationships,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dpkg_status_paragraphs_and_purls() {
        let text = "Package: libc6\nStatus: install ok installed\nArchitecture: amd64\nVersion: 2.36-9+deb12u4\nMaintainer: GNU Libc Maintainers <debian-glibc@lists.debian.org>\nDescription: GNU C Library\n two lines\n\nPackage: gone\nStatus: purge ok not-installed\nVersion: 1\n";
        let fs = Merged::new(Vec::new());
        let pkgs = dpkg(text, &fs);
        assert_eq!(pkgs.len(), 1);
        let os = OsRelease {
            id: "debian".into(),
            version_id: "12".into(),
            ..OsRelease::default()
        };
        assert_eq!(
            purl(&pkgs[0], Some(&os)),
            "pkg:deb/debian/libc6@2.36-9%2Bdeb12u4?arch=amd64&distro=debian-12"
        );
        assert_eq!(
            pkgs[0].supplier,
            "Person: GNU Libc Maintainers (debian-glibc@lists.debian.org)"
        );
    }

    /// Alpine's database and distroless's `status.d/` (with its `.md5sums` beside), read through the
    /// merged layers.
    #[test]
    fn apk_and_distroless_databases() {
        let tmp = tempfile::tempdir().unwrap();
        let layer = tmp.path().join("l");
        let put = |p: &str, text: &str| {
            let path = layer.join(p);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        };
        put(
            "etc/os-release",
            "ID=alpine\nVERSION_ID=3.20.3\nPRETTY_NAME=\"Alpine Linux v3.20\"\n",
        );
        put(
            "lib/apk/db/installed",
            "C:Q1abc=\nP:musl\nV:1.2.5-r0\nA:x86_64\nL:MIT\nm:Natanael Copa <ncopa@alpinelinux.org>\n\nP:busybox\nV:1.36.1-r29\nA:x86_64\nL:GPL-2.0-only\n",
        );
        put(
            "var/lib/dpkg/status.d/tzdata",
            "Package: tzdata\nVersion: 2024a-0+deb12u1\nArchitecture: all\n",
        );
        put(
            "var/lib/dpkg/status.d/tzdata.md5sums",
            "d41d8cd98f00b204e9800998ecf8427e  usr/share/zoneinfo/UTC\n",
        );
        let inv = inventory(&Merged::new(vec![layer]));
        let os = inv.os.as_ref().unwrap();
        assert_eq!(
            (os.id.as_str(), os.version_id.as_str()),
            ("alpine", "3.20.3")
        );
        let shown: Vec<String> = inv.packages.iter().map(|p| purl(p, Some(os))).collect();
        assert_eq!(
            shown,
            [
                "pkg:apk/alpine/busybox@1.36.1-r29?arch=x86_64&distro=alpine-3.20.3",
                "pkg:apk/alpine/musl@1.2.5-r0?arch=x86_64&distro=alpine-3.20.3",
                "pkg:deb/alpine/tzdata@2024a-0%2Bdeb12u1?arch=all&distro=alpine-3.20.3",
            ]
        );
        assert_eq!(inv.packages[1].license, "MIT");
        assert!(inv.unread.is_empty());
    }

    #[test]
    fn licenses_map_to_spdx_or_noassertion() {
        let cases = [
            ("GPL-2+ or Artistic-2.0", "GPL-2.0-or-later OR Artistic-2.0"),
            ("public-domain", SPDX_NOASSERTION),
            ("MIT BSD-3-Clause", "MIT AND BSD-3-Clause"),
            ("GPL-2+ and MIT or ISC", SPDX_NOASSERTION),
            ("gpl-2.0-only", "GPL-2.0-only"),
        ];
        for (field, expected) in cases {
            assert_eq!(spdx_expression(field), expected, "{field}");
        }
    }
}
