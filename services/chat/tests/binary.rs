//! The `messenger-chat` binary as an operator runs it: configuration from the
//! environment, a loud warning on the in-memory store, health on the admin port, and a
//! clean exit on SIGTERM.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use messenger_common::testing;

fn binary() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_messenger-chat"));
    command
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env(
            "INTERNAL_AUTH_KEY",
            "a-test-internal-key-of-32-bytes-or-more",
        );
    command
}

#[test]
fn a_missing_or_short_internal_key_stops_start_up_naming_it() {
    for key in [None, Some("too-short")] {
        let mut command = binary();
        match key {
            None => command.env_remove("INTERNAL_AUTH_KEY"),
            Some(key) => command.env("INTERNAL_AUTH_KEY", key),
        };
        let output = command
            .env("CHAT_STORE", "memory")
            .output()
            .expect("run messenger-chat");
        assert!(!output.status.success(), "{key:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("INTERNAL_AUTH_KEY"), "{key:?}: {stderr}");
        assert!(
            !stderr.contains("too-short"),
            "the key is never shown: {stderr}"
        );
    }
}

#[test]
fn bad_configuration_stops_start_up_naming_the_variable() {
    let output = binary()
        .env("CHAT_STORE", "postgres")
        .output()
        .expect("run messenger-chat");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("CHAT_STORE"), "{stderr}");
}

fn http_get(port: u16, path: &str) -> Option<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: chat\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    Some(response)
}

#[test]
fn the_binary_serves_in_memory_warns_and_exits_cleanly_on_sigterm() {
    let (grpc_port, admin_port) = (testing::free_port(), testing::free_port());
    let mut child = binary()
        .env("GRPC_ADDR", format!("127.0.0.1:{grpc_port}"))
        .env("ADMIN_ADDR", format!("127.0.0.1:{admin_port}"))
        .env("CHAT_STORE", "memory")
        .env("REDIS_URL", testing::redis_url())
        .env("KAFKA_BROKERS", testing::kafka_brokers())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start messenger-chat");

    let deadline = Instant::now() + Duration::from_secs(20);
    let healthy = loop {
        if let Some(response) = http_get(admin_port, "/healthz")
            && response.starts_with("HTTP/1.1 200")
        {
            break true;
        }
        if Instant::now() > deadline || child.try_wait().ok().flatten().is_some() {
            break false;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    if !healthy {
        let _ = child.kill();
        let output = child.wait_with_output().expect("collect output");
        panic!(
            "messenger-chat did not become healthy (is Redis up at TEST_REDIS_URL?): {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    assert!(
        TcpStream::connect(("127.0.0.1", grpc_port)).is_ok(),
        "the gRPC port should be open"
    );

    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("send SIGTERM");
    assert!(killed.success());
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for messenger-chat") {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "messenger-chat did not exit within 15s of SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let output = child.wait_with_output().expect("collect output");
    let logs = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(status.success(), "exit status {status}: {logs}");
    assert!(
        logs.contains("WARN") && logs.contains("CHAT_STORE=memory"),
        "the in-memory store must be announced: {logs}"
    );
}
