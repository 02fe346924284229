//! The cr-sqlite extension, carried inside the binary and loaded into every connection.
//!
//! SQLite can only load an extension from a file, so the embedded bytes are written once per
//! process to an anonymous in-memory file (memfd, Linux) and loaded from `/proc/self/fd/N`.
//! Elsewhere (macOS), or where memfd is unavailable, the bytes go to a file named by their
//! checksum in the data directory.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use sha2::{Digest, Sha256};

use super::StoreError;

#[cfg(not(crsqlite_missing))]
static EXTENSION: &[u8] = include_bytes!(env!("CRSQLITE_SO_PATH"));
#[cfg(not(crsqlite_missing))]
const EXTENSION_SHA256: &str = env!("CRSQLITE_SO_SHA256");
#[cfg(not(crsqlite_missing))]
const BUILD_PROBLEM: Option<&str> = None;
// Built without the extension (node/build.rs warned): nothing to load, and `prepare` says why.
#[cfg(crsqlite_missing)]
static EXTENSION: &[u8] = &[];
#[cfg(crsqlite_missing)]
const EXTENSION_SHA256: &str = "";
#[cfg(crsqlite_missing)]
const BUILD_PROBLEM: Option<&str> = Some(env!("CRSQLITE_BUILD_PROBLEM"));
pub const CRSQLITE_VERSION: &str = env!("CRSQLITE_VERSION");
/// What cr-sqlite records in `crsql_master.crsqlite_version` for [`CRSQLITE_VERSION`].
pub const CRSQLITE_VERSION_NUMBER: i64 = 160300;
/// The extension's entry point (its file name says nothing, so name it).
pub const ENTRY_POINT: &str = "sqlite3_crsqlite_init";

/// Where the extension can be loaded from, prepared once per process.
struct Prepared {
    path: PathBuf,
    /// Keeps the memfd open for as long as the process lives.
    _memfd: Option<std::os::fd::OwnedFd>,
}

static PREPARED: OnceLock<Result<Prepared, String>> = OnceLock::new();

/// The path to hand to `sqlite3_load_extension`.
pub fn path(data_dir: &Path) -> Result<PathBuf, StoreError> {
    PREPARED
        .get_or_init(|| prepare(data_dir).map_err(|e| e.to_string()))
        .as_ref()
        .map(|p| p.path.clone())
        .map_err(|e| StoreError::Extension(e.clone()))
}

fn prepare(data_dir: &Path) -> Result<Prepared, StoreError> {
    if let Some(problem) = BUILD_PROBLEM {
        return Err(StoreError::Extension(format!(
            "this todo-node was built without it: {problem}"
        )));
    }
    let actual = hex::encode(Sha256::digest(EXTENSION));
    if actual != EXTENSION_SHA256 {
        return Err(StoreError::Extension(format!(
            "embedded cr-sqlite does not match its build checksum ({EXTENSION_SHA256}, found {actual}): rebuild the node"
        )));
    }
    #[cfg(target_os = "linux")]
    match memfd::write(EXTENSION) {
        Ok(prepared) => return Ok(prepared),
        Err(memfd_error) => {
            tracing::debug!(%memfd_error, "memfd unavailable; writing the extension to the data dir");
        }
    }
    write_beside_data(data_dir)
}

/// Writes the extension into the data directory (once: an intact copy is reused).
fn write_beside_data(data_dir: &Path) -> Result<Prepared, StoreError> {
    let path = data_dir.join(format!(".crsqlite-{}.so", &EXTENSION_SHA256[..16]));
    let current = std::fs::read(&path).ok();
    if current.as_deref() != Some(EXTENSION) {
        let tmp = path.with_extension("so.tmp");
        std::fs::write(&tmp, EXTENSION)
            .and_then(|()| std::fs::rename(&tmp, &path))
            .map_err(|e| StoreError::Extension(format!("writing {}: {e}", path.display())))?;
    }
    Ok(Prepared { path, _memfd: None })
}

#[cfg(target_os = "linux")]
mod memfd {
    use std::io::Write;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    use std::path::PathBuf;

    use super::Prepared;

    /// The bytes in an anonymous memory file, loadable as `/proc/self/fd/N`.
    pub(super) fn write(bytes: &[u8]) -> std::io::Result<Prepared> {
        let name = c"crsqlite.so";
        // SAFETY: memfd_create takes a NUL-terminated name and flags; it returns a new fd or -1.
        let raw = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
        if raw < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let mut file = std::fs::File::from(fd);
        file.write_all(bytes)?;
        let fd = OwnedFd::from(file);
        Ok(Prepared {
            path: PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd())),
            _memfd: Some(fd),
        })
    }
}
