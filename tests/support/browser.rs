//! A real headless Chromium, driven over WebDriver: Debian's `chromium` and `chromium-driver`
//! (`.ci/run` installs them). `chromedriver` is started on a free loopback port, the browser with a
//! fresh profile; both are ended by PID when the [`Browser`] is dropped.
//!
//! WebDriver rather than the DevTools protocol: `chromedriver` ships with the same Debian version as
//! Chromium, and `fantoccini` gives finding, clicking, typing and screenshots over plain HTTP, where the
//! DevTools protocol would need a WebSocket client and hand-written commands.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;

/// How long any one condition is waited for.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// The Chromium flags, and why:
/// - `--headless`: no display here;
/// - `--no-sandbox`: the tests run as root in a container, where Chromium's sandbox cannot start;
/// - `--disable-gpu`, `--disable-dev-shm-usage`: no GPU, and a small `/dev/shm` in containers;
/// - `--disable-quic`, `--disable-background-networking`, `--disable-component-update`,
///   `--disable-sync`, `--no-first-run`: the network is closed; without these Chromium keeps trying
///   to reach Google's services (updates, sync, field trials), which is slow and noisy;
/// - a fresh `--user-data-dir` per browser: nothing carries over between tests or runs.
const FLAGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--force-device-scale-factor=1",
    "--window-size=1280,900",
];

pub struct Browser {
    pub client: Client,
    driver: Child,
    /// The browser process, as chromedriver reports it: killed on drop if still there.
    browser_pid: Option<u64>,
    driver_output: Arc<Mutex<Vec<String>>>,
    _profile: tempfile::TempDir,
    /// Base URL pages are loaded from, e.g. `http://127.0.0.1:PORT`.
    pub base: String,
}

fn program(env: &str, default: &str) -> String {
    std::env::var(env).unwrap_or_else(|_| default.to_string())
}

impl Browser {
    /// Starts chromedriver and a headless Chromium; pages are loaded relative to `base`.
    pub async fn start(base: &str) -> Browser {
        let chromium = program("HOOKGATE_CHROMIUM", "/usr/bin/chromium");
        let chromedriver = program("HOOKGATE_CHROMEDRIVER", "/usr/bin/chromedriver");
        for p in [&chromium, &chromedriver] {
            assert!(
                std::path::Path::new(p).exists(),
                "`{p}` is missing: the browser tests need Chromium and its WebDriver\n  \
                 help: `apt-get install chromium chromium-driver` (`.ci/run` does), or set \
                 HOOKGATE_CHROMIUM and HOOKGATE_CHROMEDRIVER"
            );
        }
        let mut driver = Command::new(&chromedriver)
            .args(["--port=0", "--allowed-ips=127.0.0.1"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        // It prints "ChromeDriver was started successfully on port N."; keep the rest for failures.
        let output = Arc::new(Mutex::new(Vec::new()));
        let (port_tx, port_rx) = std::sync::mpsc::channel();
        let lines = BufReader::new(driver.stdout.take().unwrap());
        let sink = output.clone();
        std::thread::spawn(move || {
            for line in lines.lines() {
                let Ok(line) = line else { break };
                if let Some(rest) = line.split("started successfully on port ").nth(1) {
                    let port: u16 = rest.trim_end_matches('.').trim().parse().unwrap_or(0);
                    let _ = port_tx.send(port);
                }
                sink.lock().unwrap().push(line);
            }
        });
        let port = port_rx.recv_timeout(PATIENCE).unwrap_or_else(|_| {
            let _ = driver.kill();
            panic!(
                "chromedriver did not start:\n{}",
                output.lock().unwrap().join("\n")
            )
        });
        let profile = tempfile::tempdir().unwrap();
        let mut args: Vec<String> = FLAGS.iter().map(|f| f.to_string()).collect();
        args.push(format!("--user-data-dir={}", profile.path().display()));
        let capabilities = json!({
            "browserName": "chrome",
            "goog:chromeOptions": { "binary": chromium, "args": args },
        });
        let serde_json::Value::Object(capabilities) = capabilities else {
            unreachable!()
        };
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let client = ClientBuilder::new(connector)
            .capabilities(capabilities)
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
            .unwrap_or_else(|e| {
                let _ = driver.kill();
                panic!(
                    "no Chromium session: {e}\n{}",
                    output.lock().unwrap().join("\n")
                )
            });
        let browser_pid = client
            .capabilities()
            .and_then(|c| c.get("goog:processID"))
            .and_then(|p| p.as_u64());
        Browser {
            client,
            driver,
            browser_pid,
            driver_output: output,
            _profile: profile,
            base: base.trim_end_matches('/').to_string(),
        }
    }

    /// Loads `path` (e.g. `/#/jobs`) from the base URL.
    pub async fn open(&self, path: &str) {
        self.client
            .goto(&format!("{}{path}", self.base))
            .await
            .unwrap_or_else(|e| panic!("cannot load `{path}`: {e}"));
    }

    /// Waits until `probe` gives a value; panics with `what` and the page's text after [`PATIENCE`].
    /// Polls (the page changes when its requests answer); never a fixed sleep.
    pub async fn eventually<T>(&self, what: &str, mut probe: impl AsyncFnMut() -> Option<T>) -> T {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(v) = probe().await {
                return v;
            }
            if Instant::now() >= deadline {
                let text = self.text("body").await.unwrap_or_default();
                let url = self
                    .client
                    .current_url()
                    .await
                    .map(|u| u.to_string())
                    .unwrap_or_default();
                panic!("timed out waiting for {what}\n--- page {url} ---\n{text}\n---");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The rendered text of the first element matching `css`, if there is one.
    pub async fn text(&self, css: &str) -> Option<String> {
        let el = self.client.find(Locator::Css(css)).await.ok()?;
        el.text().await.ok()
    }

    /// The rendered texts of every element matching `css`.
    pub async fn texts(&self, css: &str) -> Vec<String> {
        let Ok(els) = self.client.find_all(Locator::Css(css)).await else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for el in els {
            if let Ok(t) = el.text().await {
                out.push(t);
            }
        }
        out
    }

    /// Waits until an element matching `css` shows text that `pred` accepts; returns the text.
    pub async fn wait_text(&self, css: &str, pred: impl Fn(&str) -> bool) -> String {
        self.eventually(&format!("`{css}` to show the expected text"), async || {
            self.text(css).await.filter(|t| pred(t))
        })
        .await
    }

    /// Waits until an element matching `css` exists, then clicks it.
    pub async fn click(&self, css: &str) {
        self.eventually(&format!("`{css}` to be clickable"), async || {
            let el = self.client.find(Locator::Css(css)).await.ok()?;
            el.click().await.ok()
        })
        .await
    }

    /// Clicks the first element matching `css` if there is one now; whether there was.
    pub async fn click_now(&self, css: &str) -> bool {
        match self.client.find(Locator::Css(css)).await {
            Ok(el) => el.click().await.is_ok(),
            Err(_) => false,
        }
    }

    /// Clicks a view's Refresh button (`css`) and waits until the page has drawn the view again (the
    /// page marks `main` `aria-busy` while it loads).
    pub async fn refresh_view(&self, css: &str) {
        if self.click_now(css).await {
            self.eventually("the view to be drawn again", async || {
                self.client
                    .find(Locator::Css("main:not([aria-busy])"))
                    .await
                    .ok()
                    .map(|_| ())
            })
            .await;
        }
    }

    /// Waits until an input matching `css` exists, then types `text` into it.
    pub async fn type_into(&self, css: &str, text: &str) {
        self.eventually(&format!("`{css}` to take input"), async || {
            let el = self.client.find(Locator::Css(css)).await.ok()?;
            el.clear().await.ok()?;
            el.send_keys(text).await.ok()
        })
        .await
    }

    /// Whether the page is wider than the window (a horizontal scroll bar).
    pub async fn overflows_horizontally(&self) -> bool {
        let v = self
            .client
            .execute(
                "return document.documentElement.scrollWidth > document.documentElement.clientWidth;",
                vec![],
            )
            .await
            .unwrap();
        v.as_bool().unwrap()
    }

    /// Ends the session (the browser exits); what is left is killed on drop.
    pub async fn close(mut self) {
        if self.client.clone().close().await.is_ok() {
            // The browser exited with the session: its PID is no longer ours to signal.
            self.browser_pid = None;
        }
    }

    pub fn driver_output(&self) -> Vec<String> {
        self.driver_output.lock().unwrap().clone()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Only the processes this browser started, by PID.
        if let Some(pid) = self.browser_pid
            && Command::new("kill")
                .args(["-0", &pid.to_string()])
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
        if matches!(self.driver.try_wait(), Ok(None)) {
            let _ = self.driver.kill();
            let _ = self.driver.wait();
        }
    }
}
