//! The server under test when the harness spawns it: a temporary data dir, a free port on
//! 127.0.0.1 below the ephemeral range (`free_port`), the settings it needs from the
//! environment, `kill -9` and a restart on the same port and data dir, a graceful SIGTERM
//! stop and `panshi audit` at the end.
//! Its stderr (the log) goes to a file next to the data dir, so it cannot drown the
//! progress lines.

use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use anyhow::{bail, Context as _};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use super::api::Credentials;
use super::cpu::ServerPid;

/// Longest wait for a started server to print its address.
pub const LISTEN_WAIT_MAX: Duration = Duration::from_secs(60);
/// Longest wait for a graceful stop after SIGTERM.
pub const STOP_WAIT_MAX: Duration = Duration::from_secs(30);
/// Longest run of `panshi audit`.
pub const AUDIT_WAIT_MAX: Duration = Duration::from_secs(300);
/// Log lines shown in the report.
pub const LOG_TAIL_LINES: usize = 8;
/// What `panshi serve` (and `panshi-nowork`) print once they listen, before the address.
pub const LISTENING_PREFIX: &str = "panshi: listening on http://";

/// Ports handed out for servers that bind later: below Linux's ephemeral range (32768 and
/// up by default), where `bind(0)` and every outgoing connection take their ports. A port
/// from the ephemeral range, free now, can be taken by a client connection's source port
/// before the server binds it (or while a killed server is down).
pub const RESERVED_PORTS: std::ops::Range<u16> = 20_000..32_000;

/// A port of `RESERVED_PORTS` nothing listens on now, never the same twice in one process
/// (while the range lasts); `None` when every one is taken.
pub fn free_port() -> Option<u16> {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let span = RESERVED_PORTS.end - RESERVED_PORTS.start;
    // Processes of one run start at different places (their pids differ).
    let start = (std::process::id() % u32::from(span)) as u16;
    (0..span).find_map(|_| {
        let offset = (start + NEXT.fetch_add(1, Ordering::Relaxed) % span) % span;
        let port = RESERVED_PORTS.start + offset;
        std::net::TcpListener::bind(("127.0.0.1", port))
            .is_ok()
            .then_some(port)
    })
}

pub struct SpawnedServer {
    binary: PathBuf,
    credentials: Credentials,
    /// Deleted on drop unless the run keeps it.
    temp: Option<tempfile::TempDir>,
    root: PathBuf,
    pub data_dir: PathBuf,
    pub log_path: PathBuf,
    child: Option<Child>,
    /// Fixed by the first start; restarts listen on it again.
    pub addr: SocketAddr,
    pub pid: ServerPid,
    /// Settings added after the fixed ones, on every start.
    env: Vec<(String, String)>,
}

impl SpawnedServer {
    pub async fn start(
        binary: &Path,
        credentials: Credentials,
        pid: ServerPid,
        env: Vec<(String, String)>,
    ) -> anyhow::Result<Self> {
        let port = free_port().context("no free port below the ephemeral range")?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        Self::start_at(binary, credentials, pid, env, addr).await
    }

    /// Starts the server on `addr` (a cluster's nodes must know each other's addresses
    /// before any of them starts).
    pub async fn start_at(
        binary: &Path,
        credentials: Credentials,
        pid: ServerPid,
        env: Vec<(String, String)>,
        addr: SocketAddr,
    ) -> anyhow::Result<Self> {
        let temp = tempfile::Builder::new()
            .prefix("panshi-load-")
            .tempdir()
            .context("creating a temporary data dir")?;
        let root = temp.path().to_owned();
        let mut server = Self {
            binary: binary.to_owned(),
            credentials,
            data_dir: root.join("data"),
            log_path: root.join("server.log"),
            root,
            temp: Some(temp),
            child: None,
            addr,
            pid,
            env,
        };
        server.addr = server.launch().await?;
        Ok(server)
    }

    /// Keeps the data dir after the run; returns where it is.
    pub fn keep(&mut self) -> PathBuf {
        if let Some(temp) = self.temp.take() {
            let _ = temp.keep();
        }
        self.root.clone()
    }

    pub fn current_pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }

    async fn launch(&mut self) -> anyhow::Result<SocketAddr> {
        assert!(self.child.is_none(), "one server process at a time");
        let log = File::options()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .context("opening the server log")?;
        let mut child = Command::new(&self.binary)
            .args(["serve", "--listen", &self.addr.to_string(), "--data"])
            .arg(&self.data_dir)
            .env("PANSHI_ADMIN_TOKEN", &self.credentials.admin_token)
            .env("PANSHI_EPAY__PID", &self.credentials.epay_pid)
            .env("PANSHI_EPAY__KEY", &self.credentials.epay_key)
            .env("PANSHI_EPAY__GATEWAY_URL", "http://127.0.0.1:9/epay")
            .env("PANSHI_LOG__LEVEL", "warn") // unless `env` says otherwise
            // All load comes from one host: per-client limits and risk rules would measure
            // themselves, not the shop. They are raised here and only here.
            .env("PANSHI_LIMITS__CREATE__PER_SECOND", "1000000")
            .env("PANSHI_LIMITS__CREATE__BURST", "1000000")
            .env("PANSHI_LIMITS__LOOKUP__PER_SECOND", "1000000")
            .env("PANSHI_LIMITS__LOOKUP__BURST", "1000000")
            .env("PANSHI_LIMITS__WEBSOCKET__PER_SECOND", "1000000")
            .env("PANSHI_LIMITS__WEBSOCKET__BURST", "1000000")
            .env("PANSHI_RISK__RESERVED_UNITS_PER_CONTACT_MAX", "0")
            .env("PANSHI_RISK__RESERVED_UNITS_PER_IP_MAX", "0")
            .env("PANSHI_RISK__ORDERS_PER_CONTACT_PER_WINDOW_MAX", "0")
            .env("PANSHI_RISK__ORDERS_PER_IP_PER_MINUTE_MAX", "0")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", self.binary.display()))?;
        let stdout = child.stdout.take().context("server stdout")?;
        self.pid.set(child.id());
        self.child = Some(child);
        let mut lines = BufReader::new(stdout).lines();
        let addr = tokio::time::timeout(LISTEN_WAIT_MAX, listening_address(&mut lines))
            .await
            .context("the server did not print its address in time")??;
        // Drain the rest of stdout so the server never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(addr)
    }

    /// SIGKILL: no chance to flush anything.
    pub async fn kill9(&mut self) -> anyhow::Result<()> {
        let mut child = self.child.take().context("no server to kill")?;
        child.start_kill().context("kill -9")?;
        child
            .wait()
            .await
            .context("waiting for the killed server")?;
        self.pid.set(None);
        Ok(())
    }

    /// Starts the server again on the same address and data dir.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        let addr = self.launch().await?;
        anyhow::ensure!(
            addr == self.addr,
            "restarted on {addr}, expected {}",
            self.addr
        );
        Ok(())
    }

    /// SIGTERM, then waits for the exit (a kill -9 after `STOP_WAIT_MAX`).
    pub async fn stop(&mut self) -> anyhow::Result<ExitStatus> {
        let mut child = self.child.take().context("no server to stop")?;
        let pid = child.id().context("server pid")?;
        let signalled = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .await
            .context("running kill -TERM")?;
        anyhow::ensure!(signalled.success(), "kill -TERM {pid} failed");
        let status = match tokio::time::timeout(STOP_WAIT_MAX, child.wait()).await {
            Ok(status) => status.context("waiting for the server")?,
            Err(_) => {
                child.start_kill()?;
                child.wait().await?;
                bail!("the server did not stop within {STOP_WAIT_MAX:?} of SIGTERM");
            }
        };
        self.pid.set(None);
        Ok(status)
    }

    /// Runs `panshi audit` on the stopped server's data dir: success and its output.
    pub async fn audit(&self) -> anyhow::Result<(bool, String)> {
        let run = Command::new(&self.binary)
            .args(["audit", "--data"])
            .arg(&self.data_dir)
            .stdin(Stdio::null())
            .output();
        let output = tokio::time::timeout(AUDIT_WAIT_MAX, run)
            .await
            .context("audit took too long")?
            .context("running panshi audit")?;
        Ok((
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
        ))
    }

    /// Line count and the last lines of the server's log.
    pub fn log_tail(&self) -> (usize, Vec<String>) {
        let text = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(LOG_TAIL_LINES)..]
            .iter()
            .map(|line| line.to_string())
            .collect();
        (lines.len(), tail)
    }
}

async fn listening_address(
    lines: &mut tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
) -> anyhow::Result<SocketAddr> {
    while let Some(line) = lines.next_line().await? {
        if let Some(addr) = line.strip_prefix(LISTENING_PREFIX) {
            return addr.trim().parse().context("the server's address");
        }
    }
    bail!("the server exited before listening (see its log)")
}

/// Parses `http://127.0.0.1:PORT[/]`: the harness only ever targets this machine.
pub fn loopback_address(base: &str) -> anyhow::Result<SocketAddr> {
    let rest = base
        .strip_prefix("http://")
        .context("--base must start with http://")?
        .trim_end_matches('/');
    let addr: SocketAddr = rest
        .parse()
        .context("--base must be http://127.0.0.1:PORT")?;
    anyhow::ensure!(
        addr.ip() == std::net::Ipv4Addr::LOCALHOST,
        "--base must be 127.0.0.1: the harness targets only this machine"
    );
    Ok(addr)
}
