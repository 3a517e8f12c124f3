//! A real PostgreSQL for tests, from Debian's `postgresql` package, and a fixture that opens either
//! queue backend.
//!
//! [`PgServer::start`] runs `initdb` into a temporary directory and starts `postgres` on a free
//! loopback port (127.0.0.1 only; its unix socket stays inside the directory). PostgreSQL refuses to
//! run as root, and CI runs as root: then both run as the `postgres` system user (or `nobody`) through
//! `setpriv`, which execs in place, so the PID we hold is the server's own.
//!
//! [`PgServer::start_tls`] starts one with TLS (`ssl = on`, the certificate and key a test gives) whose
//! `pg_hba.conf` takes TCP connections only over TLS and with a password (SCRAM); the test harness
//! itself connects through the unix socket.
//!
//! The server is started by a small shell watchdog that holds our pipe: it stops the server (fast
//! shutdown, by the PID it started) when told to, or when the pipe closes because the test process
//! ended — so the per-binary [`shared`] server, which lives in a static and is never dropped, does not
//! outlive its test binary, and its directory is removed.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How long the server may take to accept connections.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// The watchdog: starts postgres, waits for a line (or EOF) on stdin, then stops the server by its PID
/// (SIGINT: fast shutdown) and waits for it. On EOF — the test process is gone — it also removes the
/// directory. `$1` data dir, `$2` the whole temporary directory, the rest: the server's command line.
const WATCHDOG: &str = r#"
data="$1"; top="$2"; shift 2
"$@" >&2 &
pid=$!
echo "$pid"
if read -r _; then remove=no; else remove=yes; fi
kill -INT "$pid" 2>/dev/null
wait "$pid"
if [ "$remove" = yes ]; then rm -rf "$top"; fi
"#;

/// TLS for a test server: its certificate (PEM, the chain) and private key (PEM), and the password of
/// the `hookgate` user, which TCP connections must give.
pub struct Tls<'a> {
    pub cert_pem: &'a str,
    pub key_pem: &'a str,
    pub password: &'a str,
}

/// A PostgreSQL server owned by a test (or by the test binary, see [`shared`]).
pub struct PgServer {
    top: PathBuf,
    bin: PathBuf,
    port: u16,
    /// `Some(user)` when the server runs as another user (we are root).
    user: Option<String>,
    /// With TLS: the `hookgate` user's password.
    password: Option<String>,
    running: Mutex<Option<Running>>,
    databases: AtomicUsize,
    /// Remove the directory on drop (false for the shared server: its watchdog does at exit).
    owned: bool,
}

struct Running {
    watchdog: Child,
    stdin: ChildStdin,
    pid: u32,
}

/// The server of this test binary, started on first use. Tests share it and isolate themselves with
/// [`PgServer::database`].
pub fn shared() -> &'static PgServer {
    static SERVER: OnceLock<PgServer> = OnceLock::new();
    SERVER.get_or_init(|| {
        let mut server = PgServer::start();
        server.owned = false;
        server
    })
}

impl PgServer {
    /// `initdb` and start a new server; panics with the server's log if it does not come up.
    pub fn start() -> PgServer {
        PgServer::start_with(None)
    }

    /// A new server with TLS: `ssl = on` with `tls`'s certificate and key, and a `pg_hba.conf` that
    /// takes TCP connections only over TLS (`hostssl`) with the password, unix-socket ones (the
    /// harness's own) without.
    pub fn start_tls(tls: &Tls) -> PgServer {
        PgServer::start_with(Some(tls))
    }

    fn start_with(tls: Option<&Tls>) -> PgServer {
        clean_stale();
        let bin = bin_dir();
        let top = std::env::temp_dir().join(format!(
            "hookgate-pg-{}-{}",
            std::process::id(),
            fastrand::u64(..)
        ));
        std::fs::create_dir(&top).unwrap();
        let user = if euid() == 0 {
            Some(unprivileged_user())
        } else {
            None
        };
        if let Some(user) = &user {
            chown(&top, user);
        }
        let data = top.join("data");
        let out = as_user(&user, bin.join("initdb"))
            .arg("-D")
            .arg(&data)
            .args([
                "-U",
                "hookgate",
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "initdb failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        std::fs::create_dir(top.join("sock")).unwrap();
        if let Some(user) = &user {
            chown(&top.join("sock"), user);
        }
        if let Some(tls) = tls {
            use std::os::unix::fs::PermissionsExt;
            // PostgreSQL refuses a key that others may read, or that is not its own user's (or root's).
            let dir = top.join("tls");
            std::fs::create_dir(&dir).unwrap();
            std::fs::write(dir.join("server.crt"), tls.cert_pem).unwrap();
            std::fs::write(dir.join("server.key"), tls.key_pem).unwrap();
            std::fs::set_permissions(
                dir.join("server.key"),
                std::fs::Permissions::from_mode(0o600),
            )
            .unwrap();
            if let Some(user) = &user {
                for path in [dir.clone(), dir.join("server.crt"), dir.join("server.key")] {
                    chown(&path, user);
                }
            }
            std::fs::write(
                data.join("pg_hba.conf"),
                "local all all trust\n\
                 hostssl all all 127.0.0.1/32 scram-sha-256\n\
                 hostssl all all ::1/128 scram-sha-256\n",
            )
            .unwrap();
        }
        let server = PgServer {
            top,
            bin,
            port: free_port(),
            user,
            password: tls.map(|t| t.password.to_string()),
            running: Mutex::new(None),
            databases: AtomicUsize::new(0),
            owned: true,
        };
        server.start_again();
        if let Some(password) = &server.password {
            let out = server
                .tool("psql")
                .args(["-X", "-v", "ON_ERROR_STOP=1", "-d", "postgres", "-c"])
                .arg(format!("ALTER ROLE hookgate PASSWORD '{password}'"))
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "setting the password failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        server
    }

    /// A client program of the server's version, pointed at it as `hookgate`: over TCP, or through the
    /// unix socket when TCP needs TLS and a password.
    fn tool(&self, name: &str) -> Command {
        let host = match self.password {
            Some(_) => self.top.join("sock").display().to_string(),
            None => "127.0.0.1".to_string(),
        };
        let mut command = Command::new(self.bin.join(name));
        command.args(["-h", &host, "-p", &self.port.to_string(), "-U", "hookgate"]);
        command
    }

    /// The port it listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The URL of database `name` (with the password, on a TLS server).
    pub fn url(&self, name: &str) -> String {
        match &self.password {
            Some(password) => format!(
                "postgres://hookgate:{password}@127.0.0.1:{}/{name}",
                self.port
            ),
            None => format!("postgres://hookgate@127.0.0.1:{}/{name}", self.port),
        }
    }

    /// Creates a new empty database and returns its URL.
    pub fn database(&self) -> String {
        let name = format!(
            "t{}_{}",
            self.databases.fetch_add(1, Ordering::Relaxed),
            fastrand::u32(..)
        );
        let out = self.tool("createdb").arg(&name).output().unwrap();
        assert!(
            out.status.success(),
            "createdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.url(&name)
    }

    /// Runs SQL in database `url` with `psql`; returns its unaligned output.
    pub fn psql(&self, url: &str, sql: &str) -> String {
        let out = Command::new(self.bin.join("psql"))
            .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", url, "-c", sql])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "psql failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Stops the server (fast shutdown: open connections are closed) and waits until it has exited.
    pub fn stop(&self) {
        let Some(mut running) = self.running.lock().unwrap().take() else {
            return;
        };
        let _ = writeln!(running.stdin, "stop");
        let _ = running.watchdog.wait();
    }

    /// Starts the stopped server again on the same port and data; returns once it accepts connections.
    pub fn start_again(&self) {
        let mut running = self.running.lock().unwrap();
        assert!(running.is_none(), "the server is already running");
        let data = self.top.join("data");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.top.join("log"))
            .unwrap();
        let mut server = vec![];
        if self.user.is_some() {
            server.extend(setpriv_args(self.user.as_deref().unwrap()));
        }
        server.push(self.bin.join("postgres").display().to_string());
        server.extend([
            "-D".to_string(),
            data.display().to_string(),
            "-c".into(),
            "listen_addresses=127.0.0.1".into(),
            "-c".into(),
            format!("port={}", self.port),
            "-c".into(),
            format!(
                "unix_socket_directories={}",
                self.top.join("sock").display()
            ),
            "-c".into(),
            "max_connections=300".into(),
        ]);
        if self.password.is_some() {
            let tls = self.top.join("tls");
            server.extend([
                "-c".to_string(),
                "ssl=on".into(),
                "-c".into(),
                format!("ssl_cert_file={}", tls.join("server.crt").display()),
                "-c".into(),
                format!("ssl_key_file={}", tls.join("server.key").display()),
                "-c".into(),
                "password_encryption=scram-sha-256".into(),
            ]);
        }
        let mut watchdog = Command::new("sh")
            .arg("-c")
            .arg(WATCHDOG)
            .arg("watchdog")
            .arg(&data)
            .arg(&self.top)
            .args(&server)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .unwrap();
        let stdin = watchdog.stdin.take().unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(watchdog.stdout.take().unwrap()),
            &mut line,
        )
        .unwrap();
        let pid: u32 = line.trim().parse().unwrap();
        *running = Some(Running {
            watchdog,
            stdin,
            pid,
        });
        drop(running);
        self.wait_ready();
    }

    /// Waits until `pg_isready` says the server accepts connections, backing off from 10 ms to 200 ms.
    fn wait_ready(&self) {
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut pause = Duration::from_millis(10);
        loop {
            let ready = self.tool("pg_isready").arg("-q").status().unwrap();
            if ready.success() {
                return;
            }
            let exited = self
                .running
                .lock()
                .unwrap()
                .as_mut()
                .is_some_and(|r| r.watchdog.try_wait().unwrap().is_some());
            if exited || Instant::now() > deadline {
                let log = std::fs::read_to_string(self.top.join("log")).unwrap_or_default();
                panic!("PostgreSQL did not start:\n{log}");
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(200));
        }
    }

    /// The server's PID (the postgres postmaster), while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.running.lock().unwrap().as_ref().map(|r| r.pid)
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        self.stop();
        if self.owned {
            let _ = std::fs::remove_dir_all(&self.top);
        }
    }
}

/// The newest `/usr/lib/postgresql/*/bin` that has `initdb`.
fn bin_dir() -> PathBuf {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, bin)| bin).unwrap_or_else(|| {
        panic!(
            "PostgreSQL is not installed: no /usr/lib/postgresql/*/bin/initdb\nhelp: apt-get install -y postgresql"
        )
    })
}

/// The effective user id, from `/proc/self/status`.
fn euid() -> u32 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1))
        .and_then(|id| id.parse().ok())
        .unwrap()
}

/// `postgres` (created by Debian's package), else `nobody`.
fn unprivileged_user() -> String {
    for user in ["postgres", "nobody"] {
        if Command::new("id")
            .arg("-u")
            .arg(user)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
        {
            return user.to_string();
        }
    }
    panic!("running as root, and neither `postgres` nor `nobody` exists to run PostgreSQL as")
}

fn id_of(user: &str, flag: &str) -> u32 {
    let out = Command::new("id").arg(flag).arg(user).output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

fn chown(path: &Path, user: &str) {
    std::os::unix::fs::chown(path, Some(id_of(user, "-u")), Some(id_of(user, "-g"))).unwrap();
}

fn setpriv_args(user: &str) -> Vec<String> {
    vec![
        "setpriv".into(),
        format!("--reuid={user}"),
        format!("--regid={}", id_of(user, "-g")),
        "--init-groups".into(),
        "--".into(),
    ]
}

/// `program`, run as `user` when given.
fn as_user(user: &Option<String>, program: PathBuf) -> Command {
    match user {
        None => Command::new(program),
        Some(user) => {
            let args = setpriv_args(user);
            let mut command = Command::new(&args[0]);
            command.args(&args[1..]).arg(program);
            command
        }
    }
}

/// A port nobody listens on now (the OS picks it; the server binds it right after).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Removes the directories of test processes that no longer exist (killed before their watchdog
/// could clean up).
fn clean_stale() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix("hookgate-pg-")) else {
            continue;
        };
        let Some(pid) = rest.split('-').next() else {
            continue;
        };
        let postmaster = entry.path().join("data/postmaster.pid");
        if !Path::new(&format!("/proc/{pid}")).exists() && !postmaster.exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// Which queue a test runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A place for a queue: a temporary directory (SQLite) or a fresh database on the shared server.
/// Open it as often as needed: each open is a new process's (SQLite) or a new replica's (PostgreSQL)
/// view of the same queue.
pub struct Store {
    pub backend: Backend,
    dir: Option<tempfile::TempDir>,
    url: Option<String>,
}

impl Store {
    pub fn new(backend: Backend) -> Store {
        match backend {
            Backend::Sqlite => Store {
                backend,
                dir: Some(tempfile::tempdir().unwrap()),
                url: None,
            },
            Backend::Postgres => Store {
                backend,
                dir: None,
                url: Some(shared().database()),
            },
        }
    }

    /// The `--queue` spec: the directory or the URL.
    pub fn spec(&self) -> String {
        match (&self.dir, &self.url) {
            (Some(dir), _) => dir.path().display().to_string(),
            (_, Some(url)) => url.clone(),
            _ => unreachable!(),
        }
    }

    pub async fn open(&self) -> hookgate::queue::Queue {
        hookgate::queue::Queue::open(&self.spec()).await.unwrap()
    }
}
