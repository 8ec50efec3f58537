//! A real webhook receiver on 127.0.0.1: `testkit/webhooks/receiver.py`,
//! which verifies every delivery with PyPI's `standardwebhooks` (not our
//! code). The Python comes from `TOKENVAULT_WEBHOOK_PYTHON` (scripts/test
//! sets it via scripts/install-webhook-verifier), else `python3`.

use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

/// A running receiver.
pub struct Receiver {
    child: Child,
    port: u16,
    http: reqwest::Client,
}

impl Receiver {
    /// Starts the receiver on a free loopback port.
    pub fn start() -> Self {
        let python = std::env::var("TOKENVAULT_WEBHOOK_PYTHON").unwrap_or_else(|_| "python3".to_owned());
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/testkit/webhooks/receiver.py");
        let mut child = Command::new(&python)
            .arg(script)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {python} {script}: {e}"));
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line
            .strip_prefix("PORT ")
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or_else(|| {
                panic!(
                    "the webhook receiver did not start (got {line:?}); it needs PyPI's standardwebhooks: \
                     run scripts/install-webhook-verifier and set TOKENVAULT_WEBHOOK_PYTHON to the Python it prints"
                )
            });
        Self {
            child,
            port,
            http: reqwest::Client::new(),
        }
    }

    /// The delivery URL.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/hook", self.port)
    }

    fn control(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// The secrets the receiver verifies with.
    pub async fn set_secrets(&self, secrets: &[&str]) {
        self.http
            .put(self.control("/_secrets"))
            .body(secrets.join("\n"))
            .send()
            .await
            .unwrap()
            .error_for_status()
            .unwrap();
    }

    /// Statuses to answer the next deliveries with.
    pub async fn script(&self, statuses: &[u16]) {
        let text: Vec<String> = statuses.iter().map(u16::to_string).collect();
        self.http
            .put(self.control("/_script"))
            .body(text.join(","))
            .send()
            .await
            .unwrap()
            .error_for_status()
            .unwrap();
    }

    /// Every delivery received so far.
    pub async fn received(&self) -> Vec<Value> {
        let text = self
            .http
            .get(self.control("/_received"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        serde_json::from_str(&text).unwrap()
    }

    /// Stops the receiver (its port refuses connections from now on).
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop();
    }
}
