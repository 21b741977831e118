//! The live-stream socket: binding it safely ([`bind`]), the accept loop
//! ([`ObserveListener::run`]) and who may connect ([`peer_allowed`]).

use std::{
    io::ErrorKind,
    os::unix::fs::{DirBuilderExt as _, FileTypeExt as _, MetadataExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    sync::atomic::Ordering,
    time::Duration,
};

use tokio::net::UnixListener;

use super::client::{deny, refuse, serve_client};
use super::{Hub, MAX_CLIENTS, ObserveStats};

/// Why the socket could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The path exists and is not a socket: refuse to replace it.
    #[error("{} exists and is not a socket: refusing to replace it", path.display())]
    NotASocket {
        /// The path.
        path: PathBuf,
    },
    /// Another process answers on the socket.
    #[error("{} is in use: is another `tracer run` serving on it?", path.display())]
    InUse {
        /// The path.
        path: PathBuf,
    },
    /// The path has no file name or parent directory.
    #[error("bad socket path {}", path.display())]
    BadPath {
        /// The path.
        path: PathBuf,
    },
    /// A file system or socket call failed.
    #[error("{what} {}", path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// On which path.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// Maps an I/O error of `what` on `path` to a [`ServeError::Io`].
fn io_err(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> ServeError {
    let path = path.to_path_buf();
    move |source| ServeError::Io { what, path, source }
}

/// Removes the socket file when the server stops, if it is still ours.
#[derive(Debug)]
struct SocketGuard {
    path: PathBuf,
    ino: u64,
}

impl Drop for SocketGuard {
    fn drop(&mut self) {
        if std::fs::symlink_metadata(&self.path).is_ok_and(|m| m.ino() == self.ino) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// A bound live-stream socket, not yet serving. Dropping it removes the socket file.
#[derive(Debug)]
pub struct ObserveListener {
    listener: UnixListener,
    _guard: SocketGuard,
}

/// Binds the socket at `path`: creates the parent directory (mode 0700) when missing, replaces
/// a stale socket (one nobody answers on), refuses a path that is not a socket or a socket in
/// use. The socket is created with mode 0600 in a private directory and renamed into place, so
/// it is never reachable with looser permissions. Must run inside a tokio runtime.
pub fn bind(path: &Path) -> Result<ObserveListener, ServeError> {
    let bad = || ServeError::BadPath {
        path: path.to_path_buf(),
    };
    let name = path.file_name().ok_or_else(bad)?;
    let parent = match path.parent() {
        Some(p) if p.as_os_str().is_empty() => Path::new("."),
        Some(p) => p,
        None => return Err(bad()),
    };
    if !parent.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)
            .map_err(io_err("creating the directory of", path))?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(ServeError::InUse {
                    path: path.to_path_buf(),
                });
            }
            std::fs::remove_file(path).map_err(io_err("removing the stale socket", path))?;
        }
        Ok(_) => {
            return Err(ServeError::NotASocket {
                path: path.to_path_buf(),
            });
        }
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => return Err(io_err("inspecting", path)(e)),
    }
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".{}.tmp", std::process::id()));
    let tmp_dir = parent.join(tmp_name);
    let _ = std::fs::remove_dir_all(&tmp_dir);
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&tmp_dir)
        .map_err(io_err("creating a private directory beside", path))?;
    let tmp_sock = tmp_dir.join("s");
    let result = (|| {
        let listener = UnixListener::bind(&tmp_sock).map_err(io_err("binding", path))?;
        std::fs::set_permissions(&tmp_sock, std::fs::Permissions::from_mode(0o600))
            .map_err(io_err("setting the mode of", path))?;
        std::fs::rename(&tmp_sock, path).map_err(io_err("moving the socket to", path))?;
        let ino = std::fs::symlink_metadata(path)
            .map_err(io_err("inspecting", path))?
            .ino();
        Ok(ObserveListener {
            listener,
            _guard: SocketGuard {
                path: path.to_path_buf(),
                ino,
            },
        })
    })();
    let _ = std::fs::remove_dir_all(&tmp_dir);
    result
}

impl ObserveListener {
    /// Accepts clients until the future is dropped; then every client connection is closed and
    /// the socket file removed. Accept errors (e.g. out of file descriptors) are logged and
    /// retried; they do not end the server.
    pub async fn run(self, hub: Hub, stats: ObserveStats) {
        // SAFETY: geteuid has no preconditions.
        let own_uid = unsafe { libc::geteuid() };
        // Client tasks live in this set: dropping the server ends them all.
        let mut clients = tokio::task::JoinSet::new();
        loop {
            let accepted = tokio::select! {
                accepted = self.listener.accept() => accepted,
                Some(_) = clients.join_next(), if !clients.is_empty() => continue,
            };
            let stream = match accepted {
                Ok((stream, _)) => stream,
                Err(err) => {
                    tracing::warn!(%err, "observe socket: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            match stream.peer_cred().map(|c| c.uid()) {
                Ok(uid) if peer_allowed(uid, own_uid) => {}
                peer => {
                    stats.inner.denied.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(?peer, "observe socket: client uid not allowed");
                    if let (Ok(uid), true) = (peer, clients.len() < MAX_CLIENTS) {
                        clients.spawn(deny(stream, uid, own_uid));
                    }
                    continue;
                }
            }
            if clients.len() >= MAX_CLIENTS {
                stats.inner.refused.fetch_add(1, Ordering::Relaxed);
                clients.spawn(refuse(stream));
                continue;
            }
            let (hub, stats) = (hub.clone(), stats.clone());
            clients.spawn(async move { serve_client(stream, &hub, &stats).await });
        }
    }
}

/// Binds `path` now (see [`bind`]; errors fail start-up) and returns the server: a future that
/// serves clients until dropped, to spawn. Dropping it closes every client stream and removes
/// the socket file.
pub fn serve(
    path: &Path,
    hub: Hub,
    stats: ObserveStats,
) -> Result<impl Future<Output = ()> + Send + 'static, ServeError> {
    Ok(bind(path)?.run(hub, stats))
}

/// Whether a client running as `peer_uid` may read the stream of a daemon running as
/// `own_uid`: root, or the daemon's own user (an unprivileged daemon, e.g. in tests).
pub fn peer_allowed(peer_uid: u32, own_uid: u32) -> bool {
    peer_uid == 0 || peer_uid == own_uid
}
