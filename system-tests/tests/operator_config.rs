//! What the operator renders configures the services it deploys: for each component of
//! the fully specified sample (`config/samples/messengerapp_full.yaml`), the environment a
//! pod would get (its slot ConfigMap through `envFrom`, then the container's own `env`,
//! Secrets filled with plausible values) is parsed by that service's own configuration
//! code. Every variable the operator or the sample sets must be one the service reads, so
//! a renamed or invented variable fails here instead of in a cluster.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use messenger_operator::builders::{build_config_map, build_deployment};
use messenger_operator::component::Component;
use messenger_operator::crd::{MessengerApp, Slot};

fn sample() -> MessengerApp {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../config/samples/messengerapp_full.yaml"
    );
    let text = std::fs::read_to_string(path).expect("read the full sample");
    serde_yaml::from_str(&text).expect("the full sample is a MessengerApp")
}

/// A value for a variable that comes from a Secret in a real cluster.
fn secret_value(name: &str) -> String {
    match name {
        "DATABASE_URL" => "postgres://app:secret@postgres.messenger.svc:5432/app".into(),
        "REDIS_URL" => "redis://redis.messenger.svc:6379".into(),
        "KAFKA_BROKERS" => "kafka.messenger.svc:9092".into(),
        "MONGODB_URI" => "mongodb://mongodb.messenger.svc:27017/chat".into(),
        "INTERNAL_AUTH_KEY" => "a-per-app-internal-key-of-at-least-32-bytes".into(),
        _ => "from-a-secret".into(),
    }
}

/// The environment of the component's container: ConfigMap first, its own `env` on top
/// (as Kubernetes does); also returns the names set by the container's `env`.
fn pod_environment(
    app: &MessengerApp,
    deployment: &Deployment,
) -> (BTreeMap<String, String>, BTreeSet<String>) {
    let mut env = build_config_map(app, Slot::Blue).data.unwrap_or_default();
    let container = &deployment
        .spec
        .template
        .spec
        .as_ref()
        .expect("pod spec")
        .containers[0];
    let mut own = BTreeSet::new();
    for var in container.env.iter().flatten() {
        let value = match (&var.value, &var.value_from) {
            (Some(value), _) => value.clone(),
            (None, Some(source)) if source.secret_key_ref.is_some() => secret_value(&var.name),
            other => panic!("{}: unexpected env source {other:?}", var.name),
        };
        env.insert(var.name.clone(), value);
        own.insert(var.name.clone());
    }
    // Every service requires INTERNAL_AUTH_KEY; the operator's per-app Secret provides
    // it. Until the operator sets it, stand in for that Secret here.
    env.entry("INTERNAL_AUTH_KEY".to_owned())
        .or_insert_with(|| secret_value("INTERNAL_AUTH_KEY"));
    (env, own)
}

/// Runs `parse` with a lookup over `env`, recording every name it asks for.
fn parse_recording<T, E: std::fmt::Debug>(
    env: &BTreeMap<String, String>,
    parse: impl FnOnce(&dyn Fn(&str) -> Option<String>) -> Result<T, E>,
) -> (T, BTreeSet<String>) {
    let read = RefCell::new(BTreeSet::new());
    let lookup = |name: &str| {
        read.borrow_mut().insert(name.to_owned());
        env.get(name).cloned()
    };
    let config = parse(&lookup).unwrap_or_else(|e| panic!("rejected {env:?}: {e:?}"));
    (config, read.into_inner())
}

#[test]
fn every_service_accepts_and_reads_the_environment_the_operator_gives_it() {
    let app = sample();
    let mut read_by_any = BTreeSet::new();
    for component in [
        Component::Auth,
        Component::Users,
        Component::Friends,
        Component::Chat,
    ] {
        let deployment = build_deployment(&app, component, Slot::Blue);
        let (env, own) = pod_environment(&app, &deployment);
        let read = match component {
            Component::Auth => {
                let (config, read) =
                    parse_recording(&env, |l| messenger_auth::Config::from_lookup(l));
                assert_eq!(
                    config.token_ttl,
                    Duration::from_secs(12 * 3600),
                    "the sample's AUTH_TOKEN_TTL"
                );
                read
            }
            Component::Users => {
                parse_recording(&env, |l| messenger_users::Config::from_lookup(l)).1
            }
            Component::Friends => {
                let (config, read) =
                    parse_recording(&env, |l| messenger_friends::Config::from_lookup(l));
                assert_eq!(
                    config.users_url, "http://messenger-users-blue:8004",
                    "peer in the same slot"
                );
                read
            }
            Component::Chat => {
                let (config, read) =
                    parse_recording(&env, |l| messenger_chat::Config::from_lookup(l));
                match &config.friends {
                    messenger_chat::config::FriendsConfig::Grpc { url, .. } => {
                        assert_eq!(
                            url, "http://messenger-friends-blue:8003",
                            "peer in the same slot"
                        )
                    }
                    other => panic!("chat should call friends over gRPC: {other:?}"),
                }
                assert!(
                    matches!(
                        config.store,
                        messenger_chat::config::StoreConfig::MongoDb(_)
                    ),
                    "chat keeps its data in MongoDB when the app references one"
                );
                read
            }
            Component::Gateway => unreachable!("not built yet"),
        };
        let unread: Vec<_> = own.difference(&read).collect();
        assert!(
            unread.is_empty(),
            "{component:?}: the operator or the sample sets {unread:?}, which the service never reads"
        );
        read_by_any.extend(read);
    }
    // The slot ConfigMap is shared by all components; each of its keys must be read by one
    // of them. RUST_LOG is read by the log filter (messenger_common::telemetry), not by the
    // configuration; AUTH_URL and CHAT_URL are for the gateway, which is not built yet.
    let shared = build_config_map(&app, Slot::Blue).data.unwrap_or_default();
    let unread: Vec<_> = shared
        .keys()
        .filter(|key| {
            !read_by_any.contains(*key)
                && !["RUST_LOG", "AUTH_URL", "CHAT_URL"].contains(&key.as_str())
        })
        .collect();
    assert!(
        unread.is_empty(),
        "the slot ConfigMap sets {unread:?}, which no service reads"
    );
}
