//! Headless Chromium driven over WebDriver (fantoccini), for the dashboard's tests.
//! Each browser gets its own chromedriver on a free port and a fresh profile directory.
//! `scripts/ensure-chromium` (run by `scripts/test`) installs Debian's `chromium` and
//! `chromium-driver`. With `KILN_SCREENSHOTS=1`, [`Browser::screenshot`] writes PNGs to
//! `docs/screenshots/`.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};

/// How long a page condition may take before the test fails.
const WAIT_MAX: Duration = Duration::from_secs(30);
/// How often a condition is looked at again while waiting.
const WAIT_EVERY: Duration = Duration::from_millis(50);

pub struct Browser {
    pub client: Client,
    /// Where the pages are: `http://127.0.0.1:{port}`.
    pub base: String,
    driver: Child,
    _profile: tempfile::TempDir,
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("local address").port()
}

impl Browser {
    /// A fresh browser (no cookies) pointed at the app at `base`.
    pub async fn start(base: &str) -> Browser {
        let port = free_port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver runs (scripts/ensure-chromium installs it)");
        let profile = tempfile::tempdir().expect("profile dir");
        let args = json!([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--window-size=1200,900",
            format!("--user-data-dir={}", profile.path().display()),
        ]);
        let mut capabilities = serde_json::Map::new();
        capabilities.insert("goog:chromeOptions".into(), json!({ "args": args, "binary": "/usr/bin/chromium" }));
        let url = format!("http://127.0.0.1:{port}");
        let started = Instant::now();
        // chromedriver listens a moment after it starts: retry the session until it does.
        let client = loop {
            let connector = hyper_util::client::legacy::connect::HttpConnector::new();
            let builder = ClientBuilder::new(connector).capabilities(capabilities.clone()).connect(&url).await;
            match builder {
                Ok(client) => break client,
                Err(error) if started.elapsed() < WAIT_MAX => {
                    let _ = error;
                    tokio::time::sleep(WAIT_EVERY).await;
                }
                Err(error) => panic!("no WebDriver session: {error}"),
            }
        };
        Browser { client, base: base.to_string(), driver, _profile: profile }
    }

    pub async fn goto(&self, path: &str) {
        self.client.goto(&format!("{}{path}", self.base)).await.expect("navigate");
    }

    pub async fn path(&self) -> String {
        self.client.current_url().await.expect("url").path().to_string()
    }

    /// Runs `act` on the element matching `css`, found afresh when the page's script
    /// replaced it between the lookup and the action (the live estimate and job panels
    /// swap their HTML), until `WAIT_MAX` has passed.
    async fn with_element<T, F, Fut>(&self, css: &str, act: F) -> T
    where
        F: Fn(fantoccini::elements::Element) -> Fut,
        Fut: std::future::Future<Output = Result<T, fantoccini::error::CmdError>>,
    {
        let started = Instant::now();
        loop {
            let element = self.client.wait().at_most(WAIT_MAX).for_element(Locator::Css(css)).await.expect(css);
            match act(element).await {
                Ok(value) => return value,
                Err(error) if error.is_stale_element_reference() && started.elapsed() < WAIT_MAX => continue,
                Err(error) => panic!("{css}: {error}"),
            }
        }
    }

    pub async fn fill(&self, css: &str, value: &str) {
        self.with_element(css, |field| async move {
            field.clear().await?;
            field.send_keys(value).await
        })
        .await
    }

    /// Chooses `path` in the file input matching `css`.
    pub async fn attach(&self, css: &str, path: &std::path::Path) {
        let path = path.display().to_string();
        self.with_element(css, |input| {
            let path = path.clone();
            async move { input.send_keys(&path).await }
        })
        .await
    }

    pub async fn click(&self, css: &str) {
        self.with_element(css, |element| async move { element.click().await }).await
    }

    /// The text of the first element matching `css`, once there is one.
    pub async fn text(&self, css: &str) -> String {
        self.with_element(css, |element| async move { element.text().await }).await
    }

    /// The whole page's visible text.
    pub async fn page_text(&self) -> String {
        self.text("body").await
    }

    /// Waits until the element matching `css` shows `expected` (without reloading).
    pub async fn wait_text(&self, css: &str, expected: &str) {
        let started = Instant::now();
        loop {
            let now = match self.client.find(Locator::Css(css)).await {
                Ok(element) => element.text().await.unwrap_or_default(),
                Err(_) => String::new(),
            };
            if now.trim() == expected {
                return;
            }
            assert!(started.elapsed() < WAIT_MAX, "{css} shows {now:?}, waited for {expected:?}");
            tokio::time::sleep(WAIT_EVERY).await;
        }
    }

    /// Reloads `path` until the page contains `expected` (for read models that follow
    /// the log asynchronously).
    pub async fn wait_page_contains(&self, path: &str, expected: &str) {
        let started = Instant::now();
        loop {
            self.goto(path).await;
            let text = self.page_text().await;
            if text.contains(expected) {
                return;
            }
            assert!(started.elapsed() < WAIT_MAX, "{path} never showed {expected:?}; it shows:\n{text}");
            tokio::time::sleep(WAIT_EVERY).await;
        }
    }

    pub async fn run(&self, script: &str) -> Value {
        self.client.execute(script, Vec::new()).await.expect("script")
    }

    /// Pages must fit a phone: nothing wider than the viewport.
    pub async fn assert_fits_width(&self, width: u32) {
        self.client.set_window_size(width, 900).await.expect("resize");
        let overflow = self.run("return document.documentElement.scrollWidth - document.documentElement.clientWidth;").await;
        assert!(overflow.as_i64().unwrap_or(1) <= 0, "the page is {overflow} px wider than {width} px");
        self.client.set_window_size(1200, 900).await.expect("resize");
    }

    /// With `KILN_SCREENSHOTS=1`, the page as `docs/screenshots/{name}.png`.
    pub async fn screenshot(&self, name: &str) {
        if std::env::var("KILN_SCREENSHOTS").as_deref() != Ok("1") {
            return;
        }
        let png = self.client.screenshot().await.expect("screenshot");
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/screenshots");
        std::fs::create_dir_all(&dir).expect("screenshots dir");
        std::fs::write(dir.join(format!("{name}.png")), png).expect("write screenshot");
    }

    pub async fn close(mut self) {
        let _ = self.client.clone().close().await;
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // A failed test still stops its chromedriver (and with it, Chromium).
        let _ = self.driver.kill();
    }
}
