//! `gateway serve` as a real process: started on free loopback ports, its log lines collected, stopped
//! by PID.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// A running `gateway serve` with JSON logs.
pub struct Serve {
    pub child: Child,
    pub hooks: SocketAddr,
    pub admin: SocketAddr,
    logs: Arc<(Mutex<Vec<String>>, Condvar)>,
}

impl Serve {
    /// Starts `gateway serve --rules RULES --data DATA` with `--listen`/`--admin` on port 0 and JSON logs,
    /// plus `args` and `env`; waits for its "hookgate serving" line, which names the bound ports.
    pub fn start(rules: &Path, data: &Path, args: &[&str], env: &[(&str, &str)]) -> Serve {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_gateway"));
        cmd.args(["serve", "--rules"])
            .arg(rules)
            .arg("--data")
            .arg(data)
            .args(["--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
            .args(["--log-format", "json"])
            .args(args)
            .env("RUST_LOG", "info")
            .env_remove("NO_COLOR")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("gateway starts");
        let stderr = child.stderr.take().unwrap();
        let logs = Arc::new((Mutex::new(Vec::new()), Condvar::new()));
        let sink = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                sink.0.lock().unwrap().push(line);
                sink.1.notify_all();
            }
            // EOF: the process ended; wake waiters so they can see it.
            sink.0.lock().unwrap().push(String::new());
            sink.1.notify_all();
        });
        let mut serve = Serve {
            child,
            hooks: "127.0.0.1:0".parse().unwrap(),
            admin: "127.0.0.1:0".parse().unwrap(),
            logs,
        };
        let line = serve
            .wait_for_log(Duration::from_secs(30), |l| l.contains("hookgate serving"))
            .unwrap_or_else(|| panic!("the gateway did not start:\n{}", serve.logs().join("\n")));
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        serve.hooks = v["listen"].as_str().unwrap().parse().unwrap();
        serve.admin = v["admin"].as_str().unwrap().parse().unwrap();
        serve
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Every log line so far.
    pub fn logs(&self) -> Vec<String> {
        self.logs.0.lock().unwrap().clone()
    }

    /// Waits until a log line satisfies `pred`; returns it.
    pub fn wait_for_log(&self, timeout: Duration, pred: impl Fn(&str) -> bool) -> Option<String> {
        let deadline = Instant::now() + timeout;
        let (lines, cv) = &*self.logs;
        let mut guard = lines.lock().unwrap();
        loop {
            if let Some(l) = guard.iter().find(|l| pred(l)) {
                return Some(l.clone());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            guard = cv.wait_timeout(guard, left).unwrap().0;
        }
    }

    /// Sends `signal` (e.g. "TERM") to the process.
    pub fn signal(&self, signal: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{signal}"), &self.pid().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{signal}");
    }

    /// SIGTERM, then waits for the exit; returns the exit code and every log line.
    pub fn stop(mut self) -> (Option<i32>, Vec<String>) {
        self.signal("TERM");
        let status = self.child.wait().unwrap();
        // The reader thread pushes an empty line at EOF.
        let _ = self.wait_for_log(Duration::from_secs(10), str::is_empty);
        (status.code(), self.logs())
    }

    /// SIGKILL (no shutdown, no cleanup), then waits for the process to be gone.
    pub fn kill(&mut self) {
        self.signal("KILL");
        let _ = self.child.wait();
    }

    /// The process's peak resident set, from /proc (kB).
    pub fn peak_rss_kb(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin)
    }

    pub fn hook_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.hooks)
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
