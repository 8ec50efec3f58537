//! `tokenvault serve` as a separate operating-system process, for tests that
//! kill it and for benchmarks that must not share a runtime with their client.
//!
//! The binary's path is the caller's to give: tests and benches of the
//! `tokenvault` package have `env!("CARGO_BIN_EXE_tokenvault")`; anything
//! else (an example) can use [`binary_in_target_dir`].

mod config;

pub use config::ProcessConfig;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

/// How long a server may take to answer its first health check.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// A command for the `tokenvault` binary at `binary` that inherits none of
/// the caller's `TOKENVAULT_*` variables (the binary reads each as
/// configuration, and a test's own, such as `TOKENVAULT_TEST_PG`, would be
/// refused as an unknown field) and no `RUST_LOG`.
pub fn clean_command(binary: &Path) -> Command {
    let mut command = Command::new(binary);
    for (variable, _) in std::env::vars_os() {
        if variable.to_string_lossy().starts_with("TOKENVAULT_") {
            command.env_remove(&variable);
        }
    }
    command.env_remove("RUST_LOG");
    command
}

/// Why a server process did not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProcessError {
    /// Preparing or starting the process failed (no free port, the
    /// configuration or log file, the binary itself).
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// The process exited before its health check answered.
    #[error("tokenvault exited early ({status}): {log}")]
    Exited {
        /// How it exited.
        status: ExitStatus,
        /// What it logged.
        log: String,
    },
    /// The health check did not answer within a minute.
    #[error("tokenvault did not become healthy: {log}")]
    NotHealthy {
        /// What it logged.
        log: String,
    },
    /// It did not exit in time after SIGTERM (or the signal could not be sent).
    #[error("tokenvault did not stop after SIGTERM: {log}")]
    StillRunning {
        /// What it logged.
        log: String,
    },
}

fn io_error(what: &'static str) -> impl FnOnce(std::io::Error) -> ProcessError {
    move |source| ProcessError::Io { what, source }
}

/// A free port on 127.0.0.1 (bound, read, released).
pub fn free_port() -> std::io::Result<u16> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
}

/// The `tokenvault` binary of the build that produced the running executable:
/// `target/<profile>/tokenvault`, found from a test or bench under
/// `target/<profile>/deps/` or an example under `target/<profile>/examples/`.
/// It must have been built (`cargo build --bin tokenvault`).
pub fn binary_in_target_dir() -> std::io::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let mut dir = exe.parent();
    if dir
        .and_then(Path::file_name)
        .is_some_and(|name| name == "deps" || name == "examples")
    {
        dir = dir.and_then(Path::parent);
    }
    let binary = dir
        .map(|dir| dir.join(format!("tokenvault{}", std::env::consts::EXE_SUFFIX)))
        .ok_or_else(|| std::io::Error::other("the running executable has no parent directory"))?;
    if binary.is_file() {
        Ok(binary)
    } else {
        Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!(
                "{} not found: build it with `cargo build --bin tokenvault`",
                binary.display()
            ),
        ))
    }
}

/// A running `tokenvault serve`; killed (SIGKILL) when dropped, or stopped
/// gracefully with [`ServerProcess::terminate`].
#[derive(Debug)]
pub struct ServerProcess {
    child: Child,
    /// The gRPC listener.
    pub grpc: SocketAddr,
    /// The HTTP listener.
    pub http: SocketAddr,
    /// Where its stderr (the log) goes.
    pub log: PathBuf,
}

impl ServerProcess {
    /// Writes the configuration `config(grpc, http)` renders for two free
    /// ports to `dir/<name>.toml`, starts `binary serve --config` on it with
    /// no inherited `TOKENVAULT_*` variable, and waits until its gRPC health
    /// check answers. On failure the process is killed and the error carries
    /// its log.
    pub async fn spawn(
        binary: &Path,
        dir: &Path,
        name: &str,
        config: impl FnOnce(SocketAddr, SocketAddr) -> String,
    ) -> Result<Self, ProcessError> {
        let grpc = SocketAddr::from(([127, 0, 0, 1], free_port().map_err(io_error("find a free port"))?));
        let http = SocketAddr::from(([127, 0, 0, 1], free_port().map_err(io_error("find a free port"))?));
        let config_path = dir.join(format!("{name}.toml"));
        std::fs::write(&config_path, config(grpc, http)).map_err(io_error("write the server configuration"))?;
        let log = dir.join(format!("{name}.log"));
        let log_file = std::fs::File::create(&log).map_err(io_error("create the server log"))?;
        let child = clean_command(binary)
            .args(["serve", "--config"])
            .arg(&config_path)
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .map_err(io_error("start tokenvault"))?;
        let mut server = Self { child, grpc, http, log };
        server.wait_healthy().await?;
        Ok(server)
    }

    async fn wait_healthy(&mut self) -> Result<(), ProcessError> {
        let started = Instant::now();
        loop {
            if let Ok(channel) = self.channel().await {
                if HealthClient::new(channel)
                    .check(HealthCheckRequest::default())
                    .await
                    .is_ok()
                {
                    return Ok(());
                }
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(ProcessError::Exited {
                    status,
                    log: self.log_text(),
                });
            }
            if started.elapsed() >= START_TIMEOUT {
                return Err(ProcessError::NotHealthy { log: self.log_text() });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A new HTTP/2 connection to the gRPC listener.
    pub async fn channel(&self) -> Result<Channel, tonic::transport::Error> {
        Endpoint::try_from(format!("http://{}", self.grpc))?.connect().await
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident set size in bytes (Linux `/proc/<pid>/status`), if readable.
    pub fn rss_bytes(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).ok()?;
        let kib = status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse::<u64>()
            .ok()?;
        Some(kib * 1024)
    }

    /// Kills the process with SIGKILL (no graceful shutdown) and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Stops the process the way an orchestrator does: SIGTERM, then waits
    /// (up to `within`) for it to exit after its graceful shutdown. Returns
    /// its exit status, or an error when it did not exit in time (it is then
    /// killed).
    pub fn terminate(&mut self, within: Duration) -> Result<ExitStatus, ProcessError> {
        let sent = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .map_err(io_error("send SIGTERM"))?;
        if !sent.success() {
            return Err(ProcessError::StillRunning { log: self.log_text() });
        }
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().map_err(io_error("wait for tokenvault"))? {
                return Ok(status);
            }
            if started.elapsed() >= within {
                self.kill();
                return Err(ProcessError::StillRunning { log: self.log_text() });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// What it has logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_binary_is_looked_up_in_the_profile_directory() {
        // This test runs from target/<profile>/deps/.
        let exe = std::env::current_exe().unwrap();
        let profile = exe.parent().and_then(Path::parent).unwrap();
        let expected = profile.join(format!("tokenvault{}", std::env::consts::EXE_SUFFIX));
        match binary_in_target_dir() {
            Ok(binary) => assert_eq!(binary, expected),
            Err(error) => assert!(error.to_string().contains(&expected.display().to_string()), "{error}"),
        }
    }
}
