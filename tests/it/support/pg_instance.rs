//! A private PostgreSQL 15 server for a test that stops and starts it (the suite's shared
//! server is never stopped): `initdb` into a fresh directory, started with `pg_ctl` on a
//! free loopback port, as the `postgres` user when the tests run as root (PostgreSQL
//! refuses root). Stopped and deleted when dropped.

use std::path::{Path, PathBuf};
use std::process::Command;

const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

pub struct PgInstance {
    dir: tempfile::TempDir,
    pub port: u16,
}

fn as_owner(program: &str) -> Command {
    let root = Command::new("id").arg("-u").output().is_ok_and(|out| out.stdout.starts_with(b"0\n"));
    if root {
        let mut command = Command::new("setpriv");
        command.args(["--reuid=postgres", "--regid=postgres", "--init-groups", "--"]).arg(Path::new(PG_BIN).join(program));
        command
    } else {
        Command::new(Path::new(PG_BIN).join(program))
    }
}

fn run(mut command: Command, what: &str) {
    let out = command.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(out.status.success(), "{what}: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
}

impl PgInstance {
    /// `None` when PostgreSQL 15's server binaries are not installed (not in CI, where
    /// that fails the test).
    pub fn start() -> Option<PgInstance> {
        if !Path::new(PG_BIN).join("initdb").exists() {
            assert!(std::env::var_os("CI").is_none(), "PostgreSQL 15 ({PG_BIN}) is needed");
            eprintln!("skipped: {PG_BIN} is not installed");
            return None;
        }
        let dir = tempfile::Builder::new().prefix("kiln-pg-").tempdir_in("/tmp").expect("temp dir");
        run(
            {
                let mut chown = Command::new("sh");
                chown.args(["-c", "[ \"$(id -u)\" != 0 ] || chown postgres \"$0\""]).arg(dir.path());
                chown
            },
            "chown the data directory",
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port").local_addr().expect("port").port();
        let instance = PgInstance { dir, port };
        let mut initdb = as_owner("initdb");
        initdb.args(["-N", "-A", "trust", "-U", "postgres", "-E", "UTF8", "--locale", "C", "-D"]).arg(instance.data());
        run(initdb, "initdb");
        instance.pg_ctl_start();
        Some(instance)
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn admin_url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    fn pg_ctl_start(&self) {
        let options = format!("-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200", self.port, self.dir.path().display());
        let mut start = as_owner("pg_ctl");
        start.arg("-D").arg(self.data()).args(["-l"]).arg(self.dir.path().join("log")).args(["-w", "-o", &options, "start"]);
        run(start, "pg_ctl start");
    }

    /// Stops the server (fast shutdown: sessions are ended, as a restart ends them).
    pub fn stop(&self) {
        let mut stop = as_owner("pg_ctl");
        stop.arg("-D").arg(self.data()).args(["-w", "-m", "fast", "stop"]);
        run(stop, "pg_ctl stop");
    }

    pub fn start_again(&self) {
        self.pg_ctl_start();
    }
}

impl Drop for PgInstance {
    fn drop(&mut self) {
        let mut stop = as_owner("pg_ctl");
        stop.arg("-D").arg(self.data()).args(["-w", "-m", "immediate", "stop"]);
        let _ = stop.output();
    }
}
