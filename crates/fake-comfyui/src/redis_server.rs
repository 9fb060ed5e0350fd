//! A real `redis-server` process for the tests and benchmarks of the Redis
//! store: started on a free port with append-only persistence in a fresh
//! directory (as `shared/TOOLCHAIN.md` says: `--save '' --appendonly yes`),
//! restartable on the same port and data, killed when dropped. Not a fake:
//! it runs the Redis the test command installs.

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The environment variable that names the `redis-server` binary explicitly
/// (else it is looked up on `PATH`).
pub const REDIS_SERVER_ENV: &str = "COMFY_REALITY_REDIS_SERVER";

/// A running `redis-server`.
#[derive(Debug)]
pub struct RedisServer {
    binary: PathBuf,
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
    /// Removed when the server is dropped.
    _dir_guard: TempDir,
}

impl RedisServer {
    /// Starts one on a free loopback port, its data in a fresh directory.
    /// Fails with a message that says how to install Redis when it is missing.
    pub fn start() -> io::Result<Self> {
        let binary = binary()?;
        let dir = TempDir::new()?;
        let mut server = Self {
            binary,
            port: 0,
            dir: dir.0.clone(),
            child: None,
            _dir_guard: dir,
        };
        let mut last = None;
        // A port found free can be taken before redis binds it: try a few.
        for _ in 0..5 {
            server.port = free_port()?;
            match server.spawn() {
                Ok(()) => return Ok(server),
                Err(error) => last = Some(error),
            }
        }
        Err(last.unwrap_or_else(|| io::Error::other("redis-server did not start")))
    }

    /// `redis://127.0.0.1:<port>/`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// The TCP port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The process id while it runs (for reading its CPU time from `/proc`).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The data directory (the append-only files live here).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Kills the server (SIGKILL: what a crash does), keeping its data.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port over the same data (after [`RedisServer::kill`],
    /// or kills it first).
    pub fn restart(&mut self) -> io::Result<()> {
        self.kill();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self.spawn() {
                Ok(()) => return Ok(()),
                // The old socket may linger a moment.
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(100))
                }
                Err(error) => return Err(error),
            }
        }
    }

    /// Runs one inline command (e.g. `DBSIZE`) and returns the raw reply line.
    pub fn command(&self, line: &str) -> io::Result<String> {
        let mut stream = TcpStream::connect_timeout(
            &SocketAddr::from((Ipv4Addr::LOCALHOST, self.port)),
            Duration::from_secs(2),
        )?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        stream.write_all(format!("{line}\r\n").as_bytes())?;
        let mut reply = Vec::new();
        let mut buffer = [0u8; 4096];
        while resp_end(&reply, 0).is_none() {
            let n = stream.read(&mut buffer)?;
            if n == 0 {
                break;
            }
            reply.extend_from_slice(&buffer[..n]);
        }
        Ok(String::from_utf8_lossy(&reply).trim_end().to_owned())
    }

    fn spawn(&mut self) -> io::Result<()> {
        let mut child = Command::new(&self.binary)
            .arg("--port")
            .arg(self.port.to_string())
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "yes"])
            .args(["--appendfsync", "everysec", "--daemonize", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| io::Error::other(format!("cannot run {}: {e}", self.binary.display())))?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = child.try_wait()? {
                return Err(io::Error::other(format!(
                    "redis-server exited at start ({status}); port {} may be taken",
                    self.port
                )));
            }
            if self.command("PING").is_ok_and(|reply| reply == "+PONG") {
                self.child = Some(child);
                return Ok(());
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(io::Error::other(
                    "redis-server did not answer PING within 10 s",
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Where the RESP value starting at `at` ends (one past it), or None while incomplete.
fn resp_end(buffer: &[u8], at: usize) -> Option<usize> {
    let line_end = at + buffer.get(at..)?.windows(2).position(|w| w == b"\r\n")?;
    let header = std::str::from_utf8(buffer.get(at + 1..line_end)?).ok()?;
    let after = line_end + 2;
    match buffer.get(at)? {
        b'$' => {
            let length: i64 = header.parse().ok()?;
            if length < 0 {
                return Some(after);
            }
            let end = after + usize::try_from(length).ok()? + 2;
            (buffer.len() >= end).then_some(end)
        }
        b'*' => {
            let count: i64 = header.parse().ok()?;
            let mut next = after;
            for _ in 0..count.max(0) {
                next = resp_end(buffer, next)?;
            }
            Some(next)
        }
        _ => Some(after),
    }
}

/// The `redis-server` to run: `$COMFY_REALITY_REDIS_SERVER`, else the first on `PATH`.
fn binary() -> io::Result<PathBuf> {
    if let Some(path) = std::env::var_os(REDIS_SERVER_ENV) {
        return Ok(PathBuf::from(path));
    }
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("redis-server"))
            .find(|candidate| candidate.is_file())
    });
    found.ok_or_else(|| {
        io::Error::other(
            "redis-server is not installed: the Redis store's tests need it (the test command \
             installs it; by hand: apt-get install redis-server, or set COMFY_REALITY_REDIS_SERVER)",
        )
    })
}

fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
        .local_addr()?
        .port())
}

/// A directory removed on drop.
#[derive(Debug)]
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> io::Result<Self> {
        let dir = std::env::temp_dir().join(format!(
            "comfy-reality-redis-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&dir)?;
        Ok(Self(dir))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
