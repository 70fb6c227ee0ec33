//! The real `chronus-gateway` binary as a child process, with its log lines.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// A running gateway process; killed on drop, even when a test fails.
pub struct GatewayProcess {
    pub child: Child,
    pub public_addr: String,
    /// Every log line so far (stderr), in order.
    pub log: Vec<String>,
    lines: mpsc::Receiver<String>,
}

impl GatewayProcess {
    /// Starts the binary with exactly `env` and waits until it listens.
    pub fn start(env: &HashMap<String, String>) -> GatewayProcess {
        let mut child = Command::new(env!("CARGO_BIN_EXE_chronus-gateway"))
            .env_clear()
            .envs(env)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("gateway binary starts");
        let stderr = child.stderr.take().unwrap();
        let (lines_tx, lines) = mpsc::channel::<String>();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = lines_tx.send(line);
            }
        });
        let mut process = GatewayProcess {
            child,
            public_addr: String::new(),
            log: Vec::new(),
            lines,
        };
        // The log names the public address once it listens.
        process.public_addr = loop {
            let line = process
                .lines
                .recv_timeout(Duration::from_secs(20))
                .expect("gateway logs its address");
            process.log.push(line.clone());
            if let Some(rest) = line.split("public listener on ").nth(1) {
                break rest.split([' ', ',']).next().unwrap().to_string();
            }
        };
        process
    }

    /// Collects the log lines written so far (waiting `quiet` for more).
    pub fn drain_log(&mut self, quiet: Duration) -> &[String] {
        while let Ok(line) = self.lines.recv_timeout(quiet) {
            self.log.push(line);
        }
        &self.log
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
