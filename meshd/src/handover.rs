//! Upgrades without a failed request: a running meshd starts its successor (the binary
//! now at its path: a package upgrade replaced it) and hands it every listening socket
//! over a Unix socket (SCM_RIGHTS), so not one connection attempt meets a closed port.
//!
//! The exchange, on a Unix socket next to the admin socket that only the successor
//! (checked by its process ID) may use:
//!
//! 1. the old process checks the new binary with `check-config`, then starts it with
//!    [`ENV`] naming the socket; the successor says [`Message::Hello`];
//! 2. the old one sends [`Message::Sockets`] (the sockets, in batches, and a Unix datagram
//!    socket on which the successor passes on the old process's QUIC datagrams: see
//!    [`crate::transport::socket`]), stops accepting, stops its control plane, closes the
//!    store (one process at a time may hold it), and sends [`Message::Released`];
//! 3. the successor opens the store, serves on the inherited sockets, and says
//!    [`Message::Serving`]; the old process tells systemd the successor is the main
//!    process now (`MAINPID=`) and drains: its open connections finish on it, peers are
//!    told to open new streams on a new connection (which reaches the successor).
//!
//! If the successor fails before step 2 nothing changed; after it, the old process exits
//! non-zero once drained, so that systemd restarts meshd.
//!
//! Must not: decide what is served; it only moves sockets and says when.

use std::io::{IoSlice, IoSliceMut, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::{UnixDatagram, UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// The environment variable that tells a starting meshd to take its sockets from the
/// process listening on this path.
pub const ENV: &str = "MESHD_HANDOVER";

/// How long the successor may take to ask for the sockets, and to serve once it has them.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);

/// Sockets per message (the kernel takes at most 253 descriptors in one).
const BATCH: usize = 128;

/// The largest message either side accepts.
const MAX_MESSAGE: usize = 1024 * 1024;

/// What a socket is, so that the successor finds it where its config asks for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Kind {
    /// The mesh UDP port (QUIC: gossip, tunnels, joins).
    Mesh,
    DnsUdp,
    DnsTcp,
    /// The admin Unix socket.
    Admin,
    /// `admin.http`.
    AdminHttp,
    /// An `[[upstream]]` listener or a service's virtual IP listener.
    Proxy,
}

/// One socket: its kind and the address it was asked for (for `Admin`, the path).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Slot {
    pub kind: Kind,
    pub key: String,
}

#[derive(Debug, Serialize, Deserialize)]
enum Message {
    Hello {
        pid: u32,
        version: String,
    },
    /// `slots` name the descriptors that came with the message, in order. `last` marks
    /// the final batch, which also carries the datagram socket (after the slots' ones)
    /// and the old process's connection ID generation.
    Sockets {
        slots: Vec<Slot>,
        last: Option<u8>,
        /// The members the old process knew alive (name, address): the successor
        /// announces itself to them and routes to them once gossip confirms them.
        #[serde(default)]
        members: Vec<(String, std::net::SocketAddr)>,
    },
    Released,
    Serving {
        pid: u32,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum HandoverError {
    #[error("the new binary {exe} refuses the config: {detail}")]
    CheckConfig { exe: String, detail: String },
    #[error("cannot start {exe}: {error}")]
    Spawn { exe: String, error: std::io::Error },
    #[error("the new process exited before taking over ({status})")]
    Exited { status: String },
    #[error("the new process did not {what} within {timeout:?}")]
    Timeout { what: &'static str, timeout: Duration },
    #[error("handover socket {path}: {error}")]
    Socket { path: String, error: std::io::Error },
    #[error("handover: {0}")]
    Protocol(String),
    #[error("handover I/O: {0}")]
    Io(#[from] std::io::Error),
}

/// The handover socket's path: next to the admin socket.
pub fn socket_path(admin_socket: &Path) -> PathBuf {
    let mut name = admin_socket.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(".handover");
    admin_socket.with_file_name(name)
}

fn send(stream: &UnixStream, message: &Message, fds: &[BorrowedFd<'_>]) -> Result<(), HandoverError> {
    let body = serde_json::to_vec(message).map_err(|e| HandoverError::Protocol(e.to_string()))?;
    let len = u32::try_from(body.len()).map_err(|_| HandoverError::Protocol("message too large".into()))?;
    let mut bytes = len.to_be_bytes().to_vec();
    bytes.extend_from_slice(&body);
    let mut space = vec![std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(fds.len().max(1)))];
    let mut control = rustix::net::SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() && !control.push(rustix::net::SendAncillaryMessage::ScmRights(fds)) {
        return Err(HandoverError::Protocol("too many sockets for one message".into()));
    }
    // The descriptors travel with the first byte; the rest follows as plain writes.
    let sent = rustix::net::sendmsg(stream, &[IoSlice::new(&bytes)], &mut control, rustix::net::SendFlags::NOSIGNAL)
        .map_err(std::io::Error::from)?;
    (&*stream).write_all(&bytes[sent..])?;
    Ok(())
}

fn receive(stream: &UnixStream) -> Result<(Message, Vec<OwnedFd>), HandoverError> {
    let mut len = [0u8; 4];
    let mut space = vec![std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(BATCH + 1))];
    let mut control = rustix::net::RecvAncillaryBuffer::new(&mut space);
    let got = rustix::net::recvmsg(
        stream,
        &mut [IoSliceMut::new(&mut len)],
        &mut control,
        rustix::net::RecvFlags::CMSG_CLOEXEC,
    )
    .map_err(std::io::Error::from)?;
    if got.bytes == 0 {
        return Err(HandoverError::Protocol("the other process closed the handover socket".into()));
    }
    let mut fds = Vec::new();
    for m in control.drain() {
        if let rustix::net::RecvAncillaryMessage::ScmRights(rights) = m {
            fds.extend(rights);
        }
    }
    if got.flags.contains(rustix::net::ReturnFlags::CTRUNC) {
        return Err(HandoverError::Protocol("sockets were cut off in transit".into()));
    }
    (&*stream).read_exact(&mut len[got.bytes..])?;
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_MESSAGE {
        return Err(HandoverError::Protocol(format!("a {len}-byte message")));
    }
    let mut body = vec![0u8; len];
    (&*stream).read_exact(&mut body)?;
    let message = serde_json::from_slice(&body).map_err(|e| HandoverError::Protocol(e.to_string()))?;
    Ok((message, fds))
}

/// The old process's side: a started successor that asked for the sockets.
pub struct Successor {
    stream: UnixStream,
    pid: u32,
    child: std::process::Child,
}

/// Checks `exe` against the config at `config`, starts it as this meshd's successor and
/// waits until it asks for the sockets. Nothing is given up yet: on error, carry on.
pub fn start(exe: &Path, config: &Path, admin_socket: &Path) -> Result<Successor, HandoverError> {
    let exe_name = exe.display().to_string();
    let checked = std::process::Command::new(exe)
        .arg("check-config")
        .arg("--config")
        .arg(config)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|error| HandoverError::Spawn { exe: exe_name.clone(), error })?;
    if !checked.status.success() {
        let detail = String::from_utf8_lossy(&checked.stderr).trim().to_owned();
        return Err(HandoverError::CheckConfig { exe: exe_name, detail });
    }
    let path = socket_path(admin_socket);
    let socket_err = |error| HandoverError::Socket { path: path.display().to_string(), error };
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path).map_err(socket_err)?;
    let cleanup = RemoveOnDrop(path.clone());
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).map_err(socket_err)?;
    }
    listener.set_nonblocking(true).map_err(socket_err)?;
    let mut child = std::process::Command::new(exe)
        .arg("run")
        .arg("--config")
        .arg(config)
        .env(ENV, &path)
        .stdin(std::process::Stdio::null())
        .spawn()
        .map_err(|error| HandoverError::Spawn { exe: exe_name, error })?;
    let pid = child.id();
    let deadline = Instant::now() + START_TIMEOUT;
    let stream = loop {
        match listener.accept() {
            Ok((stream, _)) => {
                // Only the process started here may take the sockets.
                let from = nix::sys::socket::getsockopt(&stream, nix::sys::socket::sockopt::PeerCredentials)
                    .map(|c| c.pid())
                    .unwrap_or(0);
                if u32::try_from(from).ok() == Some(pid) {
                    break stream;
                }
                tracing::warn!(pid = from, "refused a handover connection from a process other than the successor");
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(abandon(child, socket_err(e))),
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(HandoverError::Exited { status: status.to_string() });
        }
        if Instant::now() > deadline {
            return Err(abandon(child, HandoverError::Timeout { what: "ask for the sockets", timeout: START_TIMEOUT }));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    drop(cleanup);
    let setup = || -> Result<(), HandoverError> {
        stream.set_nonblocking(false)?;
        stream.set_read_timeout(Some(START_TIMEOUT))?;
        match receive(&stream)? {
            (Message::Hello { version, .. }, _) => {
                tracing::info!(pid, %version, "the new process asks for the sockets");
                Ok(())
            }
            (other, _) => Err(HandoverError::Protocol(format!("expected hello, got {other:?}"))),
        }
    };
    match setup() {
        Ok(()) => Ok(Successor { stream, pid, child }),
        Err(e) => Err(abandon(child, e)),
    }
}

/// Stops a successor that will not take over.
fn abandon(mut child: std::process::Child, error: HandoverError) -> HandoverError {
    let _ = child.kill();
    let _ = child.wait();
    error
}

struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

impl Successor {
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Gives the successor `sockets` (it takes its own copies: this process keeps
    /// serving on them until it stops accepting), and returns the datagram socket on
    /// which it will pass on this process's QUIC datagrams.
    pub fn send_sockets(
        &self,
        sockets: &[(Slot, BorrowedFd<'_>)],
        generation: u8,
        members: Vec<(String, std::net::SocketAddr)>,
    ) -> Result<UnixDatagram, HandoverError> {
        let (mine, theirs) = UnixDatagram::pair()?;
        for socket in [&mine, &theirs] {
            // Room for a burst of datagrams while the two processes switch over.
            let _ = nix::sys::socket::setsockopt(socket, nix::sys::socket::sockopt::SndBuf, &(8 << 20));
            let _ = nix::sys::socket::setsockopt(socket, nix::sys::socket::sockopt::RcvBuf, &(8 << 20));
        }
        let mut batches = sockets.chunks(BATCH).peekable();
        if batches.peek().is_none() {
            send(
                &self.stream,
                &Message::Sockets { slots: Vec::new(), last: Some(generation), members },
                &[theirs.as_fd()],
            )?;
            return Ok(mine);
        }
        while let Some(batch) = batches.next() {
            let slots: Vec<Slot> = batch.iter().map(|(s, _)| s.clone()).collect();
            let mut fds: Vec<BorrowedFd<'_>> = batch.iter().map(|(_, fd)| *fd).collect();
            let last = batches.peek().is_none();
            if last {
                fds.push(theirs.as_fd());
            }
            let members = if last { members.clone() } else { Vec::new() };
            send(&self.stream, &Message::Sockets { slots, last: last.then_some(generation), members }, &fds)?;
        }
        Ok(mine)
    }

    /// Tells the successor that the store is closed and the sockets are its own.
    pub fn released(&self) -> Result<(), HandoverError> {
        send(&self.stream, &Message::Released, &[])
    }

    /// Waits (blocking) until the successor serves.
    pub fn wait_serving(mut self) -> Result<u32, HandoverError> {
        match receive(&self.stream) {
            Ok((Message::Serving { pid }, _)) => Ok(pid),
            Ok((other, _)) => Err(HandoverError::Protocol(format!("expected serving, got {other:?}"))),
            Err(e) => {
                let exited = self.child.try_wait().ok().flatten();
                Err(match exited {
                    Some(status) => HandoverError::Exited { status: status.to_string() },
                    None => e,
                })
            }
        }
    }
}

/// The new process's side: the sockets it inherited and the way back to its
/// predecessor.
pub struct Inherited {
    sockets: std::sync::Mutex<Vec<(Slot, OwnedFd)>>,
    /// The predecessor's connection ID generation and where its datagrams go.
    pub previous: Option<(u8, UnixDatagram)>,
    /// The members the predecessor knew alive.
    pub members: Vec<(String, std::net::SocketAddr)>,
    stream: UnixStream,
}

impl std::fmt::Debug for Inherited {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inherited").finish_non_exhaustive()
    }
}

/// When started as a successor ([`ENV`] set): connects to the predecessor, says hello,
/// and receives the sockets.
pub fn inherit() -> Option<Result<Inherited, HandoverError>> {
    let path = std::env::var_os(ENV)?;
    // Not for this process's own children.
    std::env::remove_var(ENV);
    Some(inherit_from(Path::new(&path)))
}

fn inherit_from(path: &Path) -> Result<Inherited, HandoverError> {
    let stream =
        UnixStream::connect(path).map_err(|error| HandoverError::Socket { path: path.display().to_string(), error })?;
    stream.set_read_timeout(Some(START_TIMEOUT))?;
    send(&stream, &Message::Hello { pid: std::process::id(), version: mesh_proto::VERSION.to_owned() }, &[])?;
    let mut sockets = Vec::new();
    loop {
        let (message, mut fds) = receive(&stream)?;
        let Message::Sockets { slots, last, members } = message else {
            return Err(HandoverError::Protocol(format!("expected sockets, got {message:?}")));
        };
        let datagram = match last {
            Some(_) => fds.pop(),
            None => None,
        };
        if fds.len() != slots.len() {
            return Err(HandoverError::Protocol(format!("{} sockets named, {} received", slots.len(), fds.len())));
        }
        sockets.extend(slots.into_iter().zip(fds));
        if let Some(generation) = last {
            let datagram = datagram.ok_or_else(|| HandoverError::Protocol("no datagram socket".into()))?;
            return Ok(Inherited {
                sockets: std::sync::Mutex::new(sockets),
                previous: Some((generation, UnixDatagram::from(datagram))),
                members,
                stream,
            });
        }
    }
}

impl Inherited {
    fn take(&self, kind: Kind, key: &str) -> Option<OwnedFd> {
        let mut sockets = self.sockets.lock().unwrap_or_else(|p| p.into_inner());
        let at = sockets.iter().position(|(s, _)| s.kind == kind && s.key == key)?;
        Some(sockets.swap_remove(at).1)
    }

    pub fn udp(&self, kind: Kind, key: &str) -> Option<std::net::UdpSocket> {
        self.take(kind, key).map(std::net::UdpSocket::from)
    }

    pub fn tcp(&self, kind: Kind, key: &str) -> Option<std::net::TcpListener> {
        self.take(kind, key).map(std::net::TcpListener::from)
    }

    pub fn unix(&self, key: &str) -> Option<UnixListener> {
        self.take(Kind::Admin, key).map(UnixListener::from)
    }

    /// Closes the inherited sockets nobody took (the config no longer asks for them).
    pub fn close_rest(&self, kind: Kind) {
        let mut sockets = self.sockets.lock().unwrap_or_else(|p| p.into_inner());
        sockets.retain(|(s, _)| {
            let close = s.kind == kind;
            if close {
                tracing::info!(kind = ?s.kind, key = %s.key, "closing an inherited socket the config no longer names");
            }
            !close
        });
    }

    /// Waits (blocking) until the predecessor has closed the store.
    pub fn wait_released(&self) -> Result<(), HandoverError> {
        match receive(&self.stream)? {
            (Message::Released, _) => Ok(()),
            (other, _) => Err(HandoverError::Protocol(format!("expected released, got {other:?}"))),
        }
    }

    /// Tells the predecessor this process serves.
    pub fn serving(&self) -> Result<(), HandoverError> {
        send(&self.stream, &Message::Serving { pid: std::process::id() }, &[])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sockets_cross_a_unix_socket_in_batches_with_their_names() {
        let (a, b) = UnixStream::pair().expect("pair");
        let listeners: Vec<std::net::TcpListener> =
            (0..BATCH + 3).map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("bind")).collect();
        let owned: Vec<(Slot, OwnedFd)> = listeners
            .iter()
            .map(|l| {
                let slot = Slot { kind: Kind::Proxy, key: l.local_addr().expect("addr").to_string() };
                (slot, l.as_fd().try_clone_to_owned().expect("dup"))
            })
            .collect();
        let successor = Successor {
            stream: a,
            pid: 0,
            child: std::process::Command::new("true").spawn().expect("a child to stand for the successor"),
        };
        let sender = std::thread::spawn(move || {
            let slots: Vec<(Slot, BorrowedFd<'_>)> = owned.iter().map(|(s, fd)| (s.clone(), fd.as_fd())).collect();
            let mine = successor.send_sockets(&slots, 7, Vec::new()).expect("sent");
            (successor, mine)
        });
        let inherited = {
            let mut sockets = Vec::new();
            loop {
                let (message, mut fds) = receive(&b).expect("received");
                let Message::Sockets { slots, last, .. } = message else { panic!("sockets") };
                let dgram = last.map(|_| fds.pop().expect("datagram socket"));
                sockets.extend(slots.into_iter().zip(fds));
                if let Some(g) = last {
                    assert_eq!(g, 7);
                    break Inherited {
                        sockets: std::sync::Mutex::new(sockets),
                        previous: dgram.map(|d| (g, UnixDatagram::from(d))),
                        members: Vec::new(),
                        stream: b,
                    };
                }
            }
        };
        let (_successor, mine) = sender.join().expect("sender");
        for l in &listeners {
            let addr = l.local_addr().expect("addr");
            let got = inherited.tcp(Kind::Proxy, &addr.to_string()).expect("each listener arrives under its address");
            assert_eq!(got.local_addr().expect("addr"), addr, "the same socket");
        }
        assert!(inherited.tcp(Kind::Proxy, "127.0.0.1:1").is_none());
        let (_, theirs) = inherited.previous.as_ref().expect("datagram socket");
        theirs.send(b"quic").expect("send");
        let mut buf = [0u8; 8];
        assert_eq!(mine.recv(&mut buf).expect("recv"), 4);
    }
}
