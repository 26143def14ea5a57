//! What Holdfast's tests share: a throwaway PostgreSQL cluster made from the installed
//! binaries (Debian's `postgresql` package, which `scripts/test` installs when missing), in a
//! temporary directory on a free port, stopped and removed when dropped — or, for the one a
//! whole test binary shares, when that process ends. [`GatedLog`], a log whose commits wait
//! for the test. And [`KilledOnDrop`], a child process that does not outlive its test.

mod gated;

pub use gated::{Gate, GatedLog};

/// A child process (a server, a till agent) that is killed and reaped when dropped, however
/// the test ends. A child left running after a failed assertion keeps the test's output pipes
/// open, and `cargo test` would wait on it instead of reporting the failure.
pub struct KilledOnDrop(pub std::process::Child);

impl std::ops::Deref for KilledOnDrop {
    type Target = std::process::Child;

    fn deref(&self) -> &std::process::Child {
        &self.0
    }
}

impl std::ops::DerefMut for KilledOnDrop {
    fn deref_mut(&mut self) -> &mut std::process::Child {
        &mut self.0
    }
}

impl Drop for KilledOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

/// A PostgreSQL cluster of the tests' own.
pub struct TestPostgres {
    bin: PathBuf,
    dir: tempfile::TempDir,
    port: u16,
}

impl TestPostgres {
    /// Makes and starts a cluster. Panics with what to do when PostgreSQL is not installed.
    pub fn start() -> TestPostgres {
        let bin = installed_bin().expect(
            "PostgreSQL is not installed: run scripts/test, which installs Debian's postgresql",
        );
        let dir = tempfile::Builder::new()
            .prefix("holdfast-pg-")
            .tempdir()
            .expect("a temporary directory");
        let data = dir.path().join("data");
        std::fs::create_dir(&data).unwrap();
        // initdb refuses to run as root: the cluster belongs to the postgres user then.
        if is_root() {
            hand_to_postgres(dir.path());
        }
        let initdb = as_cluster_owner(&bin.join("initdb"))
            .args([
                "--auth=trust",
                "--username=postgres",
                "--encoding=UTF8",
                "--no-sync",
                "-D",
            ])
            .arg(&data)
            .output()
            .expect("run initdb");
        check("initdb", &initdb);
        let port = free_port();
        let cluster = TestPostgres { bin, dir, port };
        cluster.pg_ctl(&["start", "-w", "-t", "60"]);
        cluster
    }

    /// One cluster for every test of this test binary (each test takes a database of its
    /// own). A process of its own stops the cluster and removes its directory once this
    /// process has ended, however it ends: statics are never dropped.
    pub fn shared() -> &'static TestPostgres {
        static SHARED: OnceLock<TestPostgres> = OnceLock::new();
        SHARED.get_or_init(|| {
            let cluster = TestPostgres::start();
            cluster.clean_up_after(std::process::id());
            cluster
        })
    }

    fn clean_up_after(&self, pid: u32) {
        let stop = format!(
            "{} stop -m immediate -D {}",
            self.bin.join("pg_ctl").display(),
            self.data().display()
        );
        let stop = if is_root() {
            format!("runuser -u postgres -- {stop}")
        } else {
            stop
        };
        let script = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 1; done; {stop} >/dev/null 2>&1; rm -rf '{}'",
            self.dir.path().display()
        );
        // Deliberately never waited for: it must outlive this process to clean up after it.
        #[expect(
            clippy::zombie_processes,
            reason = "the clean-up outlives this process"
        )]
        Command::new("sh")
            .args(["-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the cluster's clean-up");
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Runs `pg_ctl` on this cluster with `args`.
    pub fn pg_ctl(&self, args: &[&str]) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=on -c max_connections=400",
            self.port,
            self.dir.path().display()
        );
        let output = as_cluster_owner(&self.bin.join("pg_ctl"))
            .args(args)
            .arg("-D")
            .arg(self.data())
            .args(["-o", &options, "-l"])
            .arg(self.dir.path().join("log"))
            .output()
            .expect("run pg_ctl");
        check("pg_ctl", &output);
    }

    /// Crashes the server (no shutdown checkpoint) and starts it again, as a power cut would.
    pub fn restart_immediately(&self) {
        self.pg_ctl(&["restart", "-m", "immediate", "-w", "-t", "60"]);
    }

    /// A fresh database in this cluster, as a connection URL.
    pub fn database(&self, name: &str) -> String {
        let output = Command::new(self.bin.join("createdb"))
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                name,
            ])
            .output()
            .expect("run createdb");
        check("createdb", &output);
        self.url(name)
    }

    /// A fresh database with a name no other test of this process uses.
    pub fn fresh_database(&self) -> String {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.database(&format!("test_{}_{n}", std::process::id()))
    }

    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }
}

impl Drop for TestPostgres {
    fn drop(&mut self) {
        let _ = as_cluster_owner(&self.bin.join("pg_ctl"))
            .args(["stop", "-m", "immediate", "-D"])
            .arg(self.data())
            .output();
    }
}

/// The binaries of the newest PostgreSQL installed the Debian way.
fn installed_bin() -> Option<PathBuf> {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|bin| bin.join("initdb").exists())
        .collect();
    // By major version as a number: 16 is newer than 9.6.
    versions.sort_by_key(|bin| {
        let version = bin.parent().and_then(Path::file_name);
        let major = version.and_then(|v| v.to_str()?.split('.').next()?.parse::<u32>().ok());
        major.unwrap_or(0)
    });
    versions.pop()
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// As root, commands on the cluster run as the postgres user, who owns its directory.
fn as_cluster_owner(program: &Path) -> Command {
    if is_root() {
        let mut command = Command::new("runuser");
        command.args(["-u", "postgres", "--"]).arg(program);
        command
    } else {
        Command::new(program)
    }
}

fn hand_to_postgres(dir: &Path) {
    for path in [dir.to_path_buf(), dir.join("data")] {
        let status = Command::new("chown")
            .arg("postgres:postgres")
            .arg(&path)
            .status()
            .expect("run chown");
        assert!(
            status.success(),
            "cannot give {} to postgres",
            path.display()
        );
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn check(what: &str, output: &Output) {
    assert!(
        output.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
