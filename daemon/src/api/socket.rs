//! The control socket: a Unix domain socket only its owner can use, which refuses
//! to take over from a live daemon and replaces one left by a crashed daemon.

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tracing::info;

/// Why the control socket could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    /// A daemon already answers on the socket.
    #[error(
        "another voiced is already running on {0} (stop it first, or give this one its own \
         --socket and --data-dir)"
    )]
    AlreadyRunning(PathBuf),
    /// Something that is not a socket is in the way.
    #[error("{0} exists and is not a socket; remove it or choose another --socket")]
    NotASocket(PathBuf),
    /// The folder belongs to someone else, who could replace our socket.
    #[error("the folder {dir} belongs to uid {owner}, not to you (uid {me}); choose another --socket")]
    ForeignDirectory {
        /// The folder.
        dir: PathBuf,
        /// Its owner.
        owner: u32,
        /// The daemon's user.
        me: u32,
    },
    /// Anything else.
    #[error("cannot {action} {path}: {source}")]
    Io {
        /// What we tried.
        action: &'static str,
        /// On what.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

/// The control socket's file. Dropping it removes the file, if it is still ours.
#[derive(Debug)]
pub struct ControlSocket {
    path: PathBuf,
    /// Device and inode of the file we bound, so we never remove another's socket.
    file_id: (u64, u64),
}

impl ControlSocket {
    /// Binds `path`, creating its folder (mode 0700) if needed, and returns the
    /// file's guard and the listener. Must be called from within a tokio runtime.
    pub fn bind(path: &Path) -> Result<(ControlSocket, tokio::net::UnixListener), SocketError> {
        fn io_error<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> SocketError + 'a {
            move |source| SocketError::Io { action, path: path.to_owned(), source }
        }
        let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let me = nix::unistd::geteuid().as_raw();
        if !dir.exists() {
            fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(io_error("create", dir))?;
        }
        let owner = fs::metadata(dir).map_err(io_error("inspect", dir))?.uid();
        if owner != me && owner != 0 {
            return Err(SocketError::ForeignDirectory { dir: dir.to_owned(), owner, me });
        }

        match fs::symlink_metadata(path) {
            Ok(meta) if !meta.file_type().is_socket() => return Err(SocketError::NotASocket(path.to_owned())),
            Ok(_) => match std::os::unix::net::UnixStream::connect(path) {
                Ok(_) => return Err(SocketError::AlreadyRunning(path.to_owned())),
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                    fs::remove_file(path).map_err(io_error("remove the stale socket", path))?;
                    info!(socket = %path.display(), "replaced a stale socket left by a daemon that did not stop cleanly");
                }
                Err(e) => return Err(SocketError::Io { action: "probe", path: path.to_owned(), source: e }),
            },
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(SocketError::Io { action: "inspect", path: path.to_owned(), source: e }),
        }

        let listener = tokio::net::UnixListener::bind(path).map_err(io_error("listen on", path))?;
        fs::set_permissions(path, fs::Permissions::from_mode(0o600)).map_err(io_error("restrict", path))?;
        let meta = fs::metadata(path).map_err(io_error("inspect", path))?;
        Ok((ControlSocket { path: path.to_owned(), file_id: (meta.dev(), meta.ino()) }, listener))
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        if let Ok(meta) = fs::symlink_metadata(&self.path)
            && (meta.dev(), meta.ino()) == self.file_id
        {
            let _ = fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_socket_is_private_and_removed_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run/voicelink/voiced.sock");
        let (socket, _listener) = ControlSocket::bind(&path).unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(path.parent().unwrap()), 0o700);
        drop(socket);
        assert!(!path.exists());
    }

    #[tokio::test]
    async fn a_live_socket_is_refused_and_a_stale_one_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("voiced.sock");
        let live = ControlSocket::bind(&path).unwrap();
        let error = ControlSocket::bind(&path).unwrap_err();
        assert!(matches!(error, SocketError::AlreadyRunning(_)), "{error}");
        assert!(error.to_string().contains("already running"));
        // The refused attempt must not have removed the live daemon's socket.
        assert!(path.exists());
        drop(live);

        // A socket file nobody listens on, as a crashed daemon leaves it.
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        assert!(path.exists());
        let (replaced, _listener) = ControlSocket::bind(&path).unwrap();
        assert!(std::os::unix::net::UnixStream::connect(replaced.path()).is_ok());
    }

    #[tokio::test]
    async fn a_regular_file_in_the_way_is_not_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("voiced.sock");
        fs::write(&path, "precious").unwrap();
        let error = ControlSocket::bind(&path).unwrap_err();
        assert!(matches!(error, SocketError::NotASocket(_)), "{error}");
        assert_eq!(fs::read_to_string(&path).unwrap(), "precious");
    }

    #[tokio::test]
    async fn dropping_does_not_remove_a_socket_that_replaced_ours() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("voiced.sock");
        let (ours, _listener) = ControlSocket::bind(&path).unwrap();
        fs::remove_file(&path).unwrap();
        let _theirs = std::os::unix::net::UnixListener::bind(&path).unwrap();
        drop(ours);
        assert!(path.exists());
    }
}
