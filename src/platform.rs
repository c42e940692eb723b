//! Target platforms (`linux/arm64`, `linux/arm/v7`), spelled and normalized as containerd's `platforms`
//! package does, which is what `docker buildx build --platform` and `FROM --platform` accept.

use std::fmt;

/// An OS, an architecture and (for arm) a variant, normalized: `aarch64` is `arm64`, `x86_64` is
/// `amd64`, `arm` is `arm/v7`, and a default variant (`amd64/v1`, `arm64/v8`) is dropped.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Platform {
    pub os: String,
    pub arch: String,
    /// Empty when the architecture has none (or only its default one).
    pub variant: String,
}

/// The architectures containerd and Go know; anything else is refused rather than guessed.
const ARCHES: [&str; 15] = [
    "386", "amd64", "arm", "arm64", "ppc64", "ppc64le", "s390x", "riscv64", "mips", "mipsle",
    "mips64", "mips64le", "loong64", "wasm", "sparc64",
];
const OSES: [&str; 10] = [
    "linux", "windows", "darwin", "freebsd", "netbsd", "openbsd", "solaris", "illumos", "aix",
    "wasip1",
];

impl Platform {
    /// The platform kiln builds for when none is asked for, and what the graph leaves unsaid.
    pub fn amd64() -> Platform {
        Platform {
            os: "linux".into(),
            arch: "amd64".into(),
            variant: String::new(),
        }
    }

    /// The machine kiln runs on: BuildKit's `BUILDPLATFORM`.
    pub fn host() -> Platform {
        Platform::parse(std::env::consts::ARCH).unwrap_or_else(|_| Platform::amd64())
    }

    /// containerd's `platforms.Parse` then `Normalize`: `os[/arch[/variant]]`, or a lone architecture
    /// (the OS is linux) or a lone OS (the architecture is the host's). The error says what was wrong.
    pub fn parse(text: &str) -> Result<Platform, String> {
        let lower = text.trim().to_ascii_lowercase();
        let parts: Vec<&str> = lower.split('/').collect();
        if parts.iter().any(|p| p.is_empty()) || parts.len() > 3 {
            return Err("expected os/arch[/variant], such as linux/arm64".into());
        }
        let (os, arch, variant) = match parts[..] {
            [one] if OSES.contains(&normal_os(one)) => (one, Platform::host().arch, ""),
            [one] => ("linux", one.to_string(), ""),
            [os, arch] => (os, arch.to_string(), ""),
            [os, arch, variant] => (os, arch.to_string(), variant),
            _ => unreachable!("one to three parts"),
        };
        let os = normal_os(os);
        if !OSES.contains(&os) {
            return Err(format!("unknown operating system `{os}`"));
        }
        let (arch, variant) = normal_arch(&arch, variant);
        if !ARCHES.contains(&arch.as_str()) {
            return Err(format!("unknown architecture `{arch}`"));
        }
        Ok(Platform {
            os: os.to_string(),
            arch,
            variant,
        })
    }

    /// How the graph records a platform: nothing for linux/amd64, so every digest made before kiln
    /// knew platforms still means the same build.
    pub fn in_graph(&self) -> Option<String> {
        (*self != Platform::amd64()).then(|| self.to_string())
    }

    /// The platform a graph field names (`None`: linux/amd64).
    pub fn from_graph(field: Option<&str>) -> Platform {
        field
            .and_then(|p| Platform::parse(p).ok())
            .unwrap_or_else(Platform::amd64)
    }

    /// Whether an image config's `os`/`architecture`/`variant` describe this platform.
    pub fn matches(&self, os: &str, arch: &str, variant: &str) -> bool {
        let (arch, variant) = normal_arch(&arch.to_ascii_lowercase(), variant);
        normal_os(&os.to_ascii_lowercase()) == self.os
            && arch == self.arch
            && variant == self.variant
    }
}

impl Default for Platform {
    fn default() -> Platform {
        Platform::amd64()
    }
}

fn normal_os(os: &str) -> &str {
    if os == "macos" { "darwin" } else { os }
}

/// containerd's `normalizeArch`.
fn normal_arch(arch: &str, variant: &str) -> (String, String) {
    let variant = variant.to_ascii_lowercase();
    let (arch, variant) = match arch {
        "i386" => ("386", variant),
        "x86_64" | "x86-64" | "amd64" => (
            "amd64",
            if variant == "v1" {
                String::new()
            } else {
                variant
            },
        ),
        "aarch64" | "arm64" => (
            "arm64",
            match variant.as_str() {
                "8" | "v8" | "v8.0" => String::new(),
                _ => variant,
            },
        ),
        "armhf" => ("arm", "v7".into()),
        "armel" => ("arm", "v6".into()),
        "arm" => (
            "arm",
            match variant.as_str() {
                "" | "7" => "v7".into(),
                "5" | "6" | "8" => format!("v{variant}"),
                _ => variant,
            },
        ),
        other => (other, variant),
    };
    (arch.to_string(), variant)
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.arch)?;
        if !self.variant.is_empty() {
            write!(f, "/{}", self.variant)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::Platform;

    #[test]
    fn normalizes_as_containerd() {
        for (given, want) in [
            ("linux/arm64", "linux/arm64"),
            ("arm64", "linux/arm64"),
            ("aarch64", "linux/arm64"),
            ("linux/arm64/v8", "linux/arm64"),
            ("Linux/AMD64", "linux/amd64"),
            ("x86_64", "linux/amd64"),
            ("linux/amd64/v1", "linux/amd64"),
            ("linux/amd64/v3", "linux/amd64/v3"),
            ("linux/arm", "linux/arm/v7"),
            ("linux/arm/7", "linux/arm/v7"),
            ("linux/arm/v6", "linux/arm/v6"),
            ("armhf", "linux/arm/v7"),
            ("i386", "linux/386"),
            ("linux/s390x", "linux/s390x"),
        ] {
            assert_eq!(Platform::parse(given).unwrap().to_string(), want, "{given}");
        }
        assert_eq!(Platform::parse("linux").unwrap(), Platform::host());
        for bad in [
            "",
            "linux/",
            "linux/arm64/v8/x",
            "linux/sparc",
            "plan10/amd64",
        ] {
            assert!(Platform::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn linux_amd64_is_unsaid_in_the_graph() {
        assert_eq!(Platform::parse("x86_64").unwrap().in_graph(), None);
        let arm = Platform::parse("arm64").unwrap();
        assert_eq!(arm.in_graph().as_deref(), Some("linux/arm64"));
        assert_eq!(Platform::from_graph(arm.in_graph().as_deref()), arm);
        assert!(arm.matches("linux", "aarch64", "v8"));
        assert!(!arm.matches("linux", "amd64", ""));
    }
}
