//! With the `mkl` feature, links Intel MKL's static libraries (from PyPI through
//! `scripts/setup-mkl.sh`, or any install under `$MKLROOT`). Without it, nothing.

use std::path::{Path, PathBuf};

const ARCHIVES: [&str; 3] = ["libmkl_intel_lp64.a", "libmkl_sequential.a", "libmkl_core.a"];

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=MKLROOT");
    println!("cargo:rerun-if-env-changed=ALIGNSCOPE_MKL_PREFIX");
    if std::env::var_os("CARGO_FEATURE_MKL").is_none() {
        return;
    }
    let Some(dir) = mkl_lib_dir() else {
        eprintln!(
            "error: the `mkl` feature needs Intel MKL's static libraries ({}): run scripts/setup-mkl.sh \
             (MKL from PyPI) and build again, or set MKLROOT to an MKL install",
            ARCHIVES.join(", ")
        );
        std::process::exit(1);
    };
    // The three archives refer to one another, so they are linked as a group, after
    // everything that calls them (link args come last on the line), as Intel's link line
    // advisor gives for "static, LP64, sequential".
    println!("cargo:rustc-link-arg=-Wl,--start-group");
    for a in ARCHIVES {
        println!("cargo:rustc-link-arg={}", dir.join(a).display());
    }
    println!("cargo:rustc-link-arg=-Wl,--end-group");
    for lib in ["pthread", "m", "dl"] {
        println!("cargo:rustc-link-arg=-l{lib}");
    }
    for a in ARCHIVES {
        println!("cargo:rerun-if-changed={}", dir.join(a).display());
    }
}

/// `$MKLROOT/lib` (or oneAPI's `lib/intel64`), else the prefix `scripts/setup-mkl.sh`
/// installs to by default.
fn mkl_lib_dir() -> Option<PathBuf> {
    let has_all = |d: &Path| ARCHIVES.iter().all(|a| d.join(a).is_file());
    let mut roots = Vec::new();
    if let Some(root) = std::env::var_os("MKLROOT") {
        roots.push(PathBuf::from(root));
    } else {
        if let Some(p) = std::env::var_os("ALIGNSCOPE_MKL_PREFIX") {
            roots.push(PathBuf::from(p));
        }
        let cache = std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")));
        if let Some(c) = cache {
            roots.push(c.join("alignscope").join("mkl"));
        }
    }
    roots.iter().flat_map(|r| [r.join("lib"), r.join("lib").join("intel64")]).find(|d| has_all(d))
}
