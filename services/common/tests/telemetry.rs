//! Log output: `LOG_FORMAT=json` gives one JSON object per line, `text` gives plain
//! lines, and `RUST_LOG` filters. Each case runs in a child process because the
//! subscriber is process-global.

use std::process::Command;

use messenger_common::{LogFormat, telemetry};

const CHILD_FORMAT: &str = "TELEMETRY_TEST_FORMAT";

/// When spawned as the child of `test`: install the subscriber, log, and report `true`.
fn logged_as_child() -> bool {
    let Ok(format) = std::env::var(CHILD_FORMAT) else {
        return false;
    };
    telemetry::init("users", format.parse::<LogFormat>().unwrap());
    tracing::info!(user_id = "u-42", "profile updated");
    tracing::debug!("hidden at info level");
    true
}

/// Re-runs `test` of this binary in a child process that logs, returning its stdout.
fn run_child(test: &str, format: &str, rust_log: &str) -> String {
    let output = Command::new(std::env::current_exe().unwrap())
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_FORMAT, format)
        .env("RUST_LOG", rust_log)
        .env("NO_COLOR", "1")
        .output()
        .expect("the test binary re-runs itself");
    assert!(output.status.success(), "{output:?}");
    String::from_utf8(output.stdout).unwrap()
}

#[test]
fn json_format_writes_one_json_object_per_line() {
    if logged_as_child() {
        return;
    }
    let stdout = run_child(
        "json_format_writes_one_json_object_per_line",
        "json",
        "info",
    );
    // libtest prints "test child_logger ... " in front of the first line.
    let records: Vec<serde_json::Value> = stdout
        .lines()
        .filter_map(|line| line.find('{').map(|start| &line[start..]))
        .map(|json| serde_json::from_str(json).expect("each log line is JSON"))
        .collect();
    let update = records
        .iter()
        .find(|r| r["message"] == "profile updated")
        .unwrap_or_else(|| panic!("no profile line in {stdout}"));
    assert_eq!(update["level"], "INFO");
    assert_eq!(update["user_id"], "u-42");
    let start = records
        .iter()
        .find(|r| r["message"] == "starting")
        .unwrap_or_else(|| panic!("no start line in {stdout}"));
    assert_eq!(start["service"], "users");
    assert!(!stdout.contains("hidden at info level"));
}

#[test]
fn text_format_is_human_readable_and_rust_log_filters() {
    if logged_as_child() {
        return;
    }
    let stdout = run_child(
        "text_format_is_human_readable_and_rust_log_filters",
        "text",
        "debug",
    );
    let line = stdout
        .lines()
        .find(|l| l.contains("profile updated"))
        .unwrap_or_else(|| panic!("no profile line in {stdout}"));
    assert!(!line.starts_with('{'));
    assert!(
        line.contains("INFO") && line.contains("user_id=\"u-42\""),
        "{line}"
    );
    assert!(
        stdout.contains("hidden at info level"),
        "RUST_LOG=debug shows debug lines"
    );
}
