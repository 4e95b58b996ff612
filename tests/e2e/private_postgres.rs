//! A private PostgreSQL cluster for one test, so that the test may stop and restart it while the
//! shared server at 127.0.0.1:5432 keeps serving the other tests.
//!
//! It is created with the machine's own `initdb` and `pg_ctl` (the newest under
//! `/usr/lib/postgresql/*/bin`) in a temporary directory, listens on a free loopback port with trust
//! authentication, and is destroyed on drop. PostgreSQL refuses to run as root, so when the tests run
//! as root the server runs as the `postgres` user (through `runuser`), which then owns the directory.

use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// How [`PrivatePostgres::restart`] stops the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StopMode {
    /// `pg_ctl stop -m fast`: open transactions roll back, a clean shutdown.
    Fast,
    /// `pg_ctl stop -m immediate`: a crash; the next start replays the WAL.
    Immediate,
}

impl StopMode {
    fn flag(self) -> &'static str {
        match self {
            Self::Fast => "fast",
            Self::Immediate => "immediate",
        }
    }
}

/// A running private cluster; its database `postgres` is owned by user `postgres`.
pub(crate) struct PrivatePostgres {
    bin: PathBuf,
    /// Removed on drop, after the server has stopped.
    dir: tempfile::TempDir,
    port: u16,
    as_postgres_user: bool,
}

impl PrivatePostgres {
    /// Creates and starts a cluster; panics with instructions when PostgreSQL is not installed.
    pub(crate) fn start() -> Self {
        let bin = newest_bin_dir();
        let as_postgres_user = std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0);
        let dir = tempfile::tempdir().expect("a temporary directory");
        if as_postgres_user {
            run(Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir.path()));
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free port")
            .port();
        let cluster = Self {
            bin,
            dir,
            port,
            as_postgres_user,
        };
        run(cluster
            .command("initdb")
            .args([
                "--auth=trust",
                "--username=postgres",
                "--no-sync",
                "--pgdata",
            ])
            .arg(cluster.data()));
        cluster.start_server();
        cluster
    }

    /// The port it listens on at 127.0.0.1.
    pub(crate) fn port(&self) -> u16 {
        self.port
    }

    /// A libpq connection string for database `postgres`.
    pub(crate) fn connection_string(&self) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres dbname=postgres",
            self.port
        )
    }

    /// Stops the server in `mode`, leaves it down for `down`, and starts it again on the same port;
    /// blocks until it accepts connections.
    pub(crate) fn restart(&self, mode: StopMode, down: Duration) {
        run(self
            .command("pg_ctl")
            .args(["stop", "--wait", "--mode", mode.flag(), "--pgdata"])
            .arg(self.data()));
        std::thread::sleep(down);
        self.start_server();
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn start_server(&self) {
        // The socket directory is the cluster's own, so that it never meets the shared server's.
        let options = format!(
            "-c port={} -c listen_addresses=127.0.0.1 -c unix_socket_directories={} -c fsync=off",
            self.port,
            self.dir.path().display()
        );
        run(self
            .command("pg_ctl")
            .args(["start", "--wait", "--options", &options, "--log"])
            .arg(self.dir.path().join("server.log"))
            .arg("--pgdata")
            .arg(self.data()));
    }

    /// `program` from the cluster's PostgreSQL, as the `postgres` user when the tests run as root.
    fn command(&self, program: &str) -> Command {
        let program = self.bin.join(program);
        let mut command = if self.as_postgres_user {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(program);
            command
        } else {
            Command::new(program)
        };
        command.current_dir(self.dir.path());
        command
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let _ = self
            .command("pg_ctl")
            .args(["stop", "--wait", "--mode", "immediate", "--pgdata"])
            .arg(self.data())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// The `bin` directory of the newest PostgreSQL under `/usr/lib/postgresql`.
fn newest_bin_dir() -> PathBuf {
    let root = Path::new("/usr/lib/postgresql");
    std::fs::read_dir(root)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version: u32 = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .max()
        .map(|(_, bin)| bin)
        .unwrap_or_else(|| {
            panic!(
                "no PostgreSQL server under {}/<version>/bin: install the postgresql package",
                root.display()
            )
        })
}

/// Runs `command`; panics with its output if it fails.
fn run(command: &mut Command) {
    let output = command
        .output()
        .unwrap_or_else(|error| panic!("running {command:?}: {error}"));
    assert!(
        output.status.success(),
        "{command:?} failed ({}):\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
