//! `messenger dev` as a separate process, as a newcomer runs it: started with flags,
//! read until its banner, stopped with SIGINT (Ctrl-C).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::process::binary;

/// A running `messenger dev` and what it printed at start-up.
pub struct DevProcess {
    child: Child,
    /// Every default port plus this.
    pub port_offset: u16,
    /// Everything printed on stdout up to and including "Stop with Ctrl-C.".
    pub banner: String,
    stderr: mpsc::Receiver<String>,
}

/// A random port offset: every default port plus it stays below the range that
/// `testing::free_port` hands out and away from the components' fixed ports. Another test
/// may pick the same one; [`DevProcess::start`] then tries another.
pub fn port_offset() -> u16 {
    let random = uuid::Uuid::new_v4().as_u128();
    11_000 + (random % 300) as u16 * 10
}

impl DevProcess {
    /// Starts `messenger dev <args> --port-offset <offset>` and waits for its banner; on a
    /// port another test holds, tries another offset.
    pub fn start(args: &[&str]) -> Self {
        Self::start_with_env(args, &[])
    }

    /// [`DevProcess::start`] with extra environment variables (`AUTH_OAUTH_*`, ...).
    pub fn start_with_env(args: &[&str], env: &[(&str, String)]) -> Self {
        let mut output = String::new();
        for _ in 0..5 {
            match Self::start_with(args, env, port_offset()) {
                Ok(dev) => return dev,
                Err(failed) if failed.contains("Address already in use") => output = failed,
                Err(failed) => panic!("messenger dev did not start:\n{failed}"),
            }
        }
        panic!("messenger dev found its ports taken five times:\n{output}");
    }

    /// Like [`DevProcess::start`] with a given offset; `Err` holds what it printed when it
    /// exited instead of starting.
    pub fn start_with_offset(args: &[&str], port_offset: u16) -> Result<Self, String> {
        Self::start_with(args, &[], port_offset)
    }

    fn start_with(args: &[&str], env: &[(&str, String)], port_offset: u16) -> Result<Self, String> {
        let mut child = Command::new(binary("messenger"))
            .arg("dev")
            .args(args)
            .args(["--port-offset", &port_offset.to_string()])
            // The stores come from the flags only, never from the test's environment.
            .env_remove("DATABASE_URL")
            .env_remove("REDIS_URL")
            .env_remove("KAFKA_BROKERS")
            .env_remove("MONGODB_URI")
            .envs(env.iter().map(|(key, value)| (key, value)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start messenger dev");
        let stdout = child.stdout.take().expect("stdout");
        let stderr = child.stderr.take().expect("stderr");
        let (lines, banner_lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = lines.send(line);
            }
        });
        let (errors, stderr_lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = errors.send(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut banner = String::new();
        loop {
            match banner_lines.recv_timeout(Duration::from_millis(200)) {
                Ok(line) => {
                    banner.push_str(&line);
                    banner.push('\n');
                    if line.starts_with("Stop with Ctrl-C") {
                        break;
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = child.wait().expect("wait for messenger dev");
                    // Everything it wrote: the reader ends at the pipe's end, soon after exit.
                    let mut errors = Vec::new();
                    while let Ok(line) = stderr_lines.recv_timeout(Duration::from_secs(5)) {
                        errors.push(line);
                    }
                    return Err(format!(
                        "exited with {status}\nstdout:\n{banner}stderr:\n{}",
                        errors.join("\n")
                    ));
                }
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                return Err(format!("no banner within 60 s; stdout so far:\n{banner}"));
            }
        }
        // Keep reading stdout so the process never blocks on a full pipe.
        std::thread::spawn(move || banner_lines.iter().for_each(drop));
        Ok(Self {
            child,
            port_offset,
            banner,
            stderr: stderr_lines,
        })
    }

    /// The gateway's base URL.
    pub fn gateway_url(&self) -> String {
        format!("http://127.0.0.1:{}", 8080 + self.port_offset)
    }

    /// The admin (`/readyz`) address of each component.
    pub fn admin_urls(&self) -> Vec<(&'static str, String)> {
        [
            ("auth", 9001),
            ("chat", 9002),
            ("friends", 9003),
            ("users", 9004),
            ("gateway", 9080),
        ]
        .into_iter()
        .map(|(name, port)| {
            (
                name,
                format!("http://127.0.0.1:{}", port + self.port_offset),
            )
        })
        .collect()
    }

    /// Sends SIGINT (what Ctrl-C does) and waits for the exit; `None` if it did not exit
    /// within `patience`.
    pub fn interrupt(&mut self, patience: Duration) -> Option<ExitStatus> {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill")
            .args(["-INT", &pid])
            .status()
            .expect("run kill");
        assert!(sent.success(), "kill -INT {pid} failed");
        let deadline = Instant::now() + patience;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// What it printed on stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.try_iter().collect::<Vec<_>>().join("\n")
    }
}

impl Drop for DevProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
