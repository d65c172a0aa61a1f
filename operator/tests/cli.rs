//! The `messenger-operator` binary's subcommands that need no cluster.

use std::process::Command;

#[test]
fn crd_subcommand_prints_the_committed_crd() {
    let output = Command::new(env!("CARGO_BIN_EXE_messenger-operator"))
        .arg("crd")
        .output()
        .expect("run the binary");
    assert!(
        output.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let printed = String::from_utf8(output.stdout).expect("UTF-8 YAML");
    let committed = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../crds/messengerapps.messenger.dev.yaml"
    ))
    .expect("crds/messengerapps.messenger.dev.yaml exists");
    assert_eq!(
        printed, committed,
        "`messenger-operator crd` must print exactly the committed CRD"
    );
    let crd: serde_yaml::Value = serde_yaml::from_str(&printed).unwrap();
    assert_eq!(
        crd["metadata"]["name"].as_str(),
        Some("messengerapps.messenger.dev")
    );
}

#[test]
fn run_without_a_reachable_cluster_fails_with_a_message() {
    let output = Command::new(env!("CARGO_BIN_EXE_messenger-operator"))
        .arg("run")
        .env("KUBECONFIG", "/nonexistent/kubeconfig")
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env("ADMIN_ADDR", "127.0.0.1:0")
        .output()
        .expect("run the binary");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("messenger-operator:"), "stderr: {stderr}");
}

fn kubectl_messenger(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_kubectl-messenger"))
        .args(args)
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .output()
        .expect("run kubectl-messenger")
}

#[test]
fn simulate_prints_the_timeline_of_a_sample() {
    let output = kubectl_messenger(&[
        "rollout",
        "simulate",
        "-f",
        "config/samples/messengerapp_canary.yaml",
        "--to-version",
        "0.2.0",
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let committed = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/snapshots/simulate_canary.txt"
    ))
    .unwrap();
    assert_eq!(String::from_utf8(output.stdout).unwrap(), committed);

    let json = kubectl_messenger(&[
        "rollout",
        "simulate",
        "-f",
        "config/samples/messengerapp_canary_gateway_api.yaml",
        "--to-version",
        "0.2.0",
        "--fail-analysis-at-step",
        "2",
        "-o",
        "json",
    ]);
    assert!(json.status.success());
    let timeline: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    let last = timeline.as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["phase"], "Degraded");
    assert_eq!(last["weights"]["blue"], 100);
}

#[test]
fn simulate_names_a_bad_argument() {
    let output = kubectl_messenger(&[
        "rollout",
        "simulate",
        "-f",
        "config/samples/messengerapp_canary.yaml",
        "--to-version",
        "0.2.0",
        "--unready",
        "mailer",
    ]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--unready mailer"), "{stderr}");
}
