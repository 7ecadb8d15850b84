//! The cluster's shared secret and the files `troupe` commands on one
//! machine use to find each other (the state directory).
//!
//! There is no built-in default secret: a cookie comes from the options,
//! `TROUPE_COOKIE`, a file named by `TROUPE_COOKIE_FILE`, or the state
//! directory's `cookie` file, which a head started without one creates
//! (random, readable by its owner only).

use std::io::Write;
use std::path::{Path, PathBuf};

use troupe_core::NodeId;

use crate::protocol::Role;
use crate::ClusterError;

/// The environment variable holding the cookie itself.
pub const COOKIE_ENV: &str = "TROUPE_COOKIE";
/// The environment variable naming a file that holds the cookie.
pub const COOKIE_FILE_ENV: &str = "TROUPE_COOKIE_FILE";
/// The environment variable naming the state directory.
pub const HOME_ENV: &str = "TROUPE_HOME";

/// The state directory: `explicit`, else `$TROUPE_HOME`, else `~/.troupe`,
/// else a directory under the system's temporary directory (with a
/// warning: other users of the machine can see that path).
pub fn state_dir(explicit: Option<&Path>) -> PathBuf {
    if let Some(dir) = explicit {
        return dir.to_owned();
    }
    if let Some(dir) = std::env::var_os(HOME_ENV).filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    if let Some(home) = std::env::var_os("HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(home).join(".troupe");
    }
    let dir = std::env::temp_dir().join("troupe");
    tracing::warn!(dir = %dir.display(), "no HOME and no TROUPE_HOME: the cookie and node files go to a shared temporary directory; set TROUPE_HOME");
    dir
}

/// The cookie to use. `create`: make one in the state directory if none is
/// configured (a head); otherwise a missing cookie is an error that says
/// where one is looked for.
pub fn resolve(explicit: Option<String>, dir: &Path, create: bool) -> Result<String, ClusterError> {
    if let Some(cookie) = explicit.filter(|c| !c.is_empty()) {
        return Ok(cookie);
    }
    if let Some(cookie) = std::env::var(COOKIE_ENV).ok().filter(|c| !c.is_empty()) {
        return Ok(cookie);
    }
    if let Some(file) = std::env::var_os(COOKIE_FILE_ENV).filter(|f| !f.is_empty()) {
        return read_cookie(Path::new(&file));
    }
    let file = dir.join("cookie");
    if file.exists() {
        return read_cookie(&file);
    }
    if !create {
        return Err(ClusterError::NoCookie { looked_in: file });
    }
    let cookie = random_cookie().map_err(|source| ClusterError::CookieFile {
        path: file.clone(),
        source,
    })?;
    write_private(&file, &cookie).map_err(|source| ClusterError::CookieFile {
        path: file.clone(),
        source,
    })?;
    tracing::info!(path = %file.display(), "generated a cluster cookie");
    Ok(cookie)
}

fn read_cookie(path: &Path) -> Result<String, ClusterError> {
    #[cfg(unix)]
    if let Ok(meta) = std::fs::metadata(path) {
        use std::os::unix::fs::PermissionsExt;
        if meta.permissions().mode() & 0o077 != 0 {
            tracing::warn!(path = %path.display(), "the cookie file is readable by other users: chmod 600 it");
        }
    }
    let text = std::fs::read_to_string(path).map_err(|source| ClusterError::CookieFile {
        path: path.to_owned(),
        source,
    })?;
    let cookie = text.trim().to_owned();
    if cookie.is_empty() {
        return Err(ClusterError::CookieFile {
            path: path.to_owned(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, "the file is empty"),
        });
    }
    Ok(cookie)
}

/// 128 random bits from the OS, as hex. Without OS randomness there is no
/// cookie to make: a guessable one would be worse than none.
fn random_cookie() -> std::io::Result<String> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(|e| {
        std::io::Error::other(format!(
            "no OS randomness to make a cookie ({e}); set TROUPE_COOKIE or TROUPE_COOKIE_FILE"
        ))
    })?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Refuses a path that is a symbolic link: a file written there could land
/// wherever another user points it.
pub(crate) fn refuse_link(path: &Path) -> std::io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_symlink() => Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!(
                "{} is a symbolic link; Troupe writes its secrets only to real files",
                path.display()
            ),
        )),
        _ => Ok(()),
    }
}

/// Makes `dir` (readable by its owner only, 0700, if new), refusing a
/// symbolic link.
pub(crate) fn private_dir(dir: &Path) -> std::io::Result<()> {
    refuse_link(dir)?;
    if dir.is_dir() {
        return Ok(());
    }
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir)
}

pub(crate) fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    if let Some(parent) = path.parent() {
        private_dir(parent)?;
    }
    refuse_link(path)?;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(text.as_bytes())?;
    file.write_all(b"\n")
}

/// Records the head's address for `troupe` commands on this machine.
pub fn write_head_address(dir: &Path, address: &str) {
    if let Err(err) = write_private(&dir.join("head_address"), address) {
        tracing::warn!(%err, "could not record the head's address");
    }
}

/// The head address recorded on this machine, if any.
pub fn head_address(dir: &Path) -> Option<String> {
    std::fs::read_to_string(dir.join("head_address"))
        .ok()
        .map(|a| a.trim().to_owned())
        .filter(|a| !a.is_empty())
}

/// Records a node started on this machine (`troupe status` lists its pid).
pub fn write_node_file(dir: &Path, node: NodeId, role: Role, address: &str) {
    let text = format!("{} {:?} {}", std::process::id(), role, address);
    if let Err(err) = write_private(&dir.join("nodes").join(node.0.to_string()), &text) {
        tracing::debug!(%err, "could not record the node");
    }
}

/// The read-only token of the cluster whose cookie is `cookie`: what
/// `troupe token` prints and `troupe status --token-file` proves. Derived,
/// so every member checks it without being given it; a new cookie makes
/// a new one (the way to revoke it).
pub fn read_only_token(cookie: &[u8]) -> String {
    use hmac::{Hmac, Mac};
    let mut mac = <Hmac<sha2::Sha256> as Mac>::new_from_slice(cookie)
        .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
    mac.update(b"troupe read-only token v1");
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_head_creates_a_private_cookie_others_then_find() {
        let dir = std::env::temp_dir().join(format!("troupe-cookie-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        // Nothing configured (this test's process sets no TROUPE_COOKIE).
        if std::env::var_os(COOKIE_ENV).is_some() || std::env::var_os(COOKIE_FILE_ENV).is_some() {
            return;
        }
        let err = resolve(None, &dir, false).unwrap_err();
        assert!(err.to_string().contains("cookie"), "{err}");
        let made = resolve(None, &dir, true).unwrap();
        assert_eq!(made.len(), 32);
        assert_eq!(resolve(None, &dir, false).unwrap(), made);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.join("cookie"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o077, 0, "readable by its owner only");
        }
        assert_eq!(resolve(Some("given".into()), &dir, false).unwrap(), "given");
        assert_ne!(random_cookie().unwrap(), random_cookie().unwrap());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[cfg(unix)]
    #[test]
    fn secrets_are_never_written_through_a_symbolic_link() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("troupe-link-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        private_dir(&dir).unwrap();
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "a new state directory is private");
        let target = dir.join("elsewhere");
        std::os::unix::fs::symlink(&target, dir.join("cookie")).unwrap();
        let err = write_private(&dir.join("cookie"), "secret").unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput, "{err}");
        assert!(!target.exists(), "nothing written through the link");
        let linked_dir = dir.join("linked");
        std::os::unix::fs::symlink(&dir, &linked_dir).unwrap();
        assert!(write_private(&linked_dir.join("cookie"), "secret").is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
