//! Table-driven checks of what the builders render.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::*;
use crate::crd::MessengerAppSpec;

fn app(spec: serde_json::Value) -> MessengerApp {
    let spec: MessengerAppSpec = serde_json::from_value(spec).unwrap();
    let mut app = MessengerApp::new("chat-prod", spec);
    app.metadata.namespace = Some("team".into());
    app.metadata.uid = Some("0d5a-uid".into());
    app
}

fn full_app() -> MessengerApp {
    app(serde_json::json!({
        "version": "1.4.2",
        "image": {"registry": "registry.local/m", "pullPolicy": "Always", "pullSecrets": ["regcred"]},
        "components": {
            "gateway": {"replicas": 3},
            "chat": {"replicas": 2, "env": [{"name": "CHAT_CACHE_TTL", "value": "30s"}], "nodeSelector": {"pool": "chat"}},
            "users": {"image": "other.local/users:patched"}
        },
        "dependencies": {
            "postgres": {"shared": {"name": "pg", "key": "url"}, "friends": {"name": "pg-friends", "key": "url"}},
            "redis": {"name": "redis", "key": "url"},
            "mongodb": {"name": "mongo", "key": "uri"},
            "kafka": {"name": "kafka", "key": "brokers"}
        },
        "config": {"AUTH_TOKEN_TTL": "3600"},
        "ingress": {"host": "messenger.local", "className": "nginx", "tlsSecretName": "tls"}
    }))
}

fn env_value(deployment: &Deployment, name: &str) -> Option<String> {
    let container = &deployment.spec.template.spec.as_ref().unwrap().containers[0];
    container
        .env
        .as_ref()
        .unwrap()
        .iter()
        .find(|e| e.name == name)
        .map(|e| {
            e.value.clone().unwrap_or_else(|| {
                let secret = e
                    .value_from
                    .as_ref()
                    .unwrap()
                    .secret_key_ref
                    .as_ref()
                    .unwrap();
                format!("secret:{}/{}", secret.name, secret.key)
            })
        })
}

#[test]
fn every_child_is_owned_labelled_and_namespaced() {
    let app = full_app();
    let children = build_children(&app, ApiCapabilities::ALL);
    let metas: Vec<&ObjectMeta> = children
        .service_accounts
        .iter()
        .map(|o| &o.metadata)
        .chain(children.config_maps.iter().map(|o| &o.metadata))
        .chain(children.deployments.iter().map(|o| &o.metadata))
        .chain(children.services.iter().map(|o| &o.metadata))
        .chain(children.ingresses.iter().map(|o| &o.metadata))
        .chain(children.pdbs.iter().map(|o| &o.metadata))
        .chain(children.network_policies.iter().map(|o| &o.metadata))
        .chain(children.traffic_services.iter().map(|o| &o.metadata))
        .collect();
    // 1 SA + 1 ConfigMap + 5 Deployments + 6 Services + 1 Ingress + 2 PDBs (gateway, chat)
    // + 1 NetworkPolicy.
    assert_eq!(metas.len(), 17);
    assert_eq!(children.count(), 17);
    for meta in metas {
        let name = meta.name.as_deref().unwrap();
        assert_eq!(meta.namespace.as_deref(), Some("team"), "{name}");
        let owner = &meta.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.name.as_str(), owner.uid.as_str()),
            ("MessengerApp", "chat-prod", "0d5a-uid"),
            "{name}"
        );
        assert_eq!(owner.controller, Some(true), "{name}");
        assert_eq!(owner.block_owner_deletion, Some(true), "{name}");
        let labels = meta.labels.as_ref().unwrap();
        assert_eq!(labels[LABEL_INSTANCE], "chat-prod", "{name}");
        assert_eq!(labels[LABEL_MANAGED_BY], MANAGED_BY, "{name}");
        assert_eq!(labels[LABEL_NAME], "messenger", "{name}");
        assert_eq!(labels[LABEL_VERSION], "1.4.2", "{name}");
        assert!(name.len() <= 63, "{name} is not a DNS label");
    }
}

#[test]
fn names_and_labels_carry_the_slot() {
    let app = full_app();
    for slot in [Slot::Blue, Slot::Green] {
        for component in Component::ALL {
            let deployment = build_deployment(&app, component, slot);
            let service = build_service(&app, component, slot);
            let expected = format!("chat-prod-{component}-{slot}");
            assert_eq!(deployment.metadata.name.as_deref(), Some(expected.as_str()));
            assert_eq!(service.metadata.name.as_deref(), Some(expected.as_str()));
            for labels in [
                deployment.metadata.labels.as_ref().unwrap(),
                service.metadata.labels.as_ref().unwrap(),
            ] {
                assert_eq!(labels[LABEL_SLOT], slot.as_str());
                assert_eq!(labels[LABEL_COMPONENT], component.name());
            }
        }
        assert_eq!(
            build_config_map(&app, slot).metadata.name.unwrap(),
            format!("chat-prod-config-{slot}")
        );
    }
}

#[test]
fn selectors_match_pod_labels_and_services_select_the_same_pods() {
    let app = full_app();
    for slot in [Slot::Blue, Slot::Green] {
        for component in Component::ALL {
            let deployment = build_deployment(&app, component, slot);
            let selector = deployment.spec.selector.match_labels.clone().unwrap();
            let pod_labels = deployment
                .spec
                .template
                .metadata
                .as_ref()
                .unwrap()
                .labels
                .clone()
                .unwrap();
            for (k, v) in &selector {
                assert_eq!(
                    pod_labels.get(k),
                    Some(v),
                    "{component}/{slot}: pod lacks selector label {k}"
                );
            }
            assert!(
                !selector.contains_key(LABEL_VERSION),
                "a version in the selector would make upgrades impossible"
            );
            let service = build_service(&app, component, slot);
            assert_eq!(
                service.spec.unwrap().selector.unwrap(),
                selector,
                "{component}/{slot}"
            );
            if let Some(pdb) = build_pdb(&app, component, slot) {
                assert_eq!(
                    pdb.spec.unwrap().selector.unwrap().match_labels.unwrap(),
                    selector
                );
            }
        }
    }
    let entry = build_entry_service(&app, Slot::Green);
    assert_eq!(
        entry.spec.unwrap().selector.unwrap(),
        selector_labels(&app, Component::Gateway, Slot::Green)
    );
}

#[test]
fn ports_agree_across_container_service_probes_and_env() {
    let app = full_app();
    let cases = [
        (Component::Gateway, "http", 8080, 9080, "HTTP_ADDR"),
        (Component::Auth, "grpc", 8001, 9001, "GRPC_ADDR"),
        (Component::Chat, "grpc", 8002, 9002, "GRPC_ADDR"),
        (Component::Friends, "grpc", 8003, 9003, "GRPC_ADDR"),
        (Component::Users, "grpc", 8004, 9004, "GRPC_ADDR"),
    ];
    for (component, api_name, api_port, admin_port, addr_env) in cases {
        let deployment = build_deployment(&app, component, Slot::Blue);
        let container = &deployment.spec.template.spec.as_ref().unwrap().containers[0];
        let ports: Vec<(String, i32)> = container
            .ports
            .as_ref()
            .unwrap()
            .iter()
            .map(|p| (p.name.clone().unwrap(), p.container_port))
            .collect();
        assert_eq!(
            ports,
            vec![
                (api_name.to_owned(), api_port),
                ("admin".to_owned(), admin_port)
            ],
            "{component}"
        );
        assert_eq!(
            env_value(&deployment, addr_env),
            Some(format!("0.0.0.0:{api_port}")),
            "{component}"
        );
        assert_eq!(
            env_value(&deployment, "ADMIN_ADDR"),
            Some(format!("0.0.0.0:{admin_port}")),
            "{component}"
        );
        for (probe, path) in [
            (&container.liveness_probe, "/healthz"),
            (&container.readiness_probe, "/readyz"),
        ] {
            let http = probe.as_ref().unwrap().http_get.as_ref().unwrap();
            assert_eq!(http.path.as_deref(), Some(path));
            assert_eq!(
                http.port,
                IntOrString::String("admin".into()),
                "{component} probes the admin port"
            );
        }
        let service: Service = build_service(&app, component, Slot::Blue);
        let service_ports: Vec<(String, i32, IntOrString)> = service
            .spec
            .unwrap()
            .ports
            .unwrap()
            .into_iter()
            .map(|p| (p.name.unwrap(), p.port, p.target_port.unwrap()))
            .collect();
        assert_eq!(
            service_ports,
            vec![
                (
                    api_name.to_owned(),
                    api_port,
                    IntOrString::String(api_name.into())
                ),
                (
                    "admin".to_owned(),
                    admin_port,
                    IntOrString::String("admin".into())
                ),
            ],
            "{component}"
        );
        let annotations = deployment
            .spec
            .template
            .metadata
            .as_ref()
            .unwrap()
            .annotations
            .clone()
            .unwrap();
        assert_eq!(annotations["prometheus.io/port"], admin_port.to_string());
        assert_eq!(annotations["prometheus.io/scrape"], "true");
    }
}

#[test]
fn peer_addresses_stay_within_the_slot() {
    let app = full_app();
    for slot in [Slot::Blue, Slot::Green] {
        let data = config_data(&app, slot);
        for (var, component, port) in [
            ("AUTH_URL", "auth", 8001),
            ("USERS_URL", "users", 8004),
            ("FRIENDS_URL", "friends", 8003),
            ("CHAT_URL", "chat", 8002),
        ] {
            assert_eq!(
                data[var],
                format!("http://chat-prod-{component}-{slot}:{port}")
            );
            // The URL names a Service that the same build renders for this slot.
            let service = build_service(&app, Component::from_name(component).unwrap(), slot);
            assert!(data[var].contains(&service.metadata.name.unwrap()));
            assert!(
                !data[var].contains(slot.other().as_str()),
                "{var} leaks into the other slot"
            );
        }
        assert_eq!(data["LOG_FORMAT"], "json");
        assert_eq!(data["AUTH_TOKEN_TTL"], "3600");
        for component in Component::ALL {
            let deployment = build_deployment(&app, component, slot);
            let container = &deployment.spec.template.spec.as_ref().unwrap().containers[0];
            let env_from = container.env_from.as_ref().unwrap()[0]
                .config_map_ref
                .as_ref()
                .unwrap();
            assert_eq!(
                env_from.name,
                config_map_name(&app, slot),
                "{component} reads its own slot's ConfigMap"
            );
        }
    }
    let route = build_http_route(
        &app_with_router(serde_json::json!({"host": "m.local", "router": "gatewayAPI", "gatewayRef": {"name": "gw"}})),
        Slot::Green,
    )
    .unwrap();
    assert_eq!(
        route.spec.rules[0].backend_refs[0].name,
        "chat-prod-gateway-green"
    );
}

#[test]
fn chat_runs_on_memory_only_when_the_spec_asks_for_it() {
    let app = app(serde_json::json!({"version": "1", "dependencies": {"chatInMemory": true}}));
    let chat = build_deployment(&app, Component::Chat, Slot::Blue);
    assert_eq!(env_value(&chat, "CHAT_STORE").as_deref(), Some("memory"));
    assert_eq!(env_value(&chat, "MONGODB_URI"), None);
    let gateway = build_deployment(&app, Component::Gateway, Slot::Blue);
    assert_eq!(env_value(&gateway, "CHAT_STORE"), None);
}

#[test]
fn dependencies_come_from_the_referenced_secrets() {
    let app = full_app();
    let cases: &[(Component, &str, Option<&str>)] = &[
        (Component::Auth, "DATABASE_URL", Some("secret:pg/url")),
        (Component::Users, "DATABASE_URL", Some("secret:pg/url")),
        (
            Component::Friends,
            "DATABASE_URL",
            Some("secret:pg-friends/url"),
        ),
        (Component::Chat, "DATABASE_URL", None),
        (Component::Gateway, "DATABASE_URL", None),
        (Component::Chat, "MONGODB_URI", Some("secret:mongo/uri")),
        (Component::Auth, "MONGODB_URI", None),
        (
            Component::Users,
            "KAFKA_BROKERS",
            Some("secret:kafka/brokers"),
        ),
        (
            Component::Gateway,
            "KAFKA_BROKERS",
            Some("secret:kafka/brokers"),
        ),
        (Component::Friends, "REDIS_URL", Some("secret:redis/url")),
        (Component::Gateway, "REDIS_URL", Some("secret:redis/url")),
        (Component::Chat, "CHAT_CACHE_TTL", Some("30s")),
        (Component::Chat, "CHAT_STORE", Some("mongodb")),
        (Component::Auth, "CHAT_STORE", None),
    ];
    for (component, var, expected) in cases {
        let deployment = build_deployment(&app, *component, Slot::Blue);
        assert_eq!(
            env_value(&deployment, var).as_deref(),
            *expected,
            "{component} {var}"
        );
    }
}

#[test]
fn every_component_gets_the_internal_key_from_the_apps_one_secret() {
    for app in [full_app(), app(serde_json::json!({"version": "1.0.0"}))] {
        for slot in [Slot::Blue, Slot::Green] {
            for component in Component::ALL {
                let deployment = build_deployment(&app, component, slot);
                assert_eq!(
                    env_value(&deployment, "INTERNAL_AUTH_KEY").as_deref(),
                    Some("secret:chat-prod-internal-key/internal-auth-key"),
                    "{component}/{slot}"
                );
            }
        }
    }
}

#[test]
fn internal_key_secret_holds_the_random_bytes_as_hex_text() {
    let app = full_app();
    let key: Vec<u8> = (0..INTERNAL_KEY_BYTES as u8).collect();
    let secret = build_internal_key_secret(&app, &key);
    assert_eq!(
        secret.metadata.name.as_deref(),
        Some("chat-prod-internal-key")
    );
    let value = &secret.data.as_ref().unwrap()[INTERNAL_KEY_SECRET_KEY].0;
    assert_eq!(value.len(), 96, "48 bytes as hex");
    assert!(value.len() >= 32, "the services refuse keys under 32 bytes");
    assert_eq!(hex::decode(value).unwrap(), key);
    let owner = &secret.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(
        (owner.uid.as_str(), owner.controller),
        ("0d5a-uid", Some(true)),
        "owned, so deleting the app deletes the key"
    );
    let labels = secret.metadata.labels.unwrap();
    assert_eq!(labels[LABEL_INSTANCE], "chat-prod");
    assert!(
        !labels.contains_key(LABEL_VERSION),
        "the Secret is never rewritten, a version label would go stale"
    );
}

/// Where a connection to a pod of slot blue comes from.
#[derive(Clone, Copy, Debug)]
enum Source {
    SameSlotPod,
    OtherSlotPod,
    OtherAppPod,
    OtherNamespace,
    /// The operator's pod in its own namespace.
    Operator,
}

/// Whether `policy` admits a TCP connection from `source` to `port` of a pod it selects;
/// NetworkPolicy semantics reduced to the peers the builder uses.
fn admits(policy: &NetworkPolicy, app: &MessengerApp, source: Source, port: i32) -> bool {
    let mut labels = BTreeMap::new();
    match source {
        Source::SameSlotPod => labels = slot_pod_labels(app, Slot::Blue),
        Source::OtherSlotPod => labels = slot_pod_labels(app, Slot::Green),
        Source::OtherAppPod => {
            labels.insert(LABEL_INSTANCE.to_owned(), "someone-else".to_owned());
        }
        Source::OtherNamespace => {}
        Source::Operator => {
            labels.insert(LABEL_NAME.to_owned(), OPERATOR_POD_NAME.to_owned());
        }
    }
    let in_namespace = !matches!(source, Source::OtherNamespace | Source::Operator);
    let peer_matches = |peer: &NetworkPolicyPeer| {
        assert!(peer.ip_block.is_none());
        // Only "every namespace" is used as a namespace selector.
        let namespace_ok = match &peer.namespace_selector {
            None => in_namespace,
            Some(selector) => {
                assert_eq!(selector, &LabelSelector::default());
                true
            }
        };
        let wanted = peer
            .pod_selector
            .as_ref()
            .and_then(|s| s.match_labels.clone())
            .unwrap_or_default();
        namespace_ok && wanted.iter().all(|(k, v)| labels.get(k) == Some(v))
    };
    let spec = policy.spec.as_ref().unwrap();
    spec.ingress.iter().flatten().any(|rule| {
        let port_ok = rule.ports.iter().flatten().any(|p| {
            p.port == Some(IntOrString::Int(port)) && p.protocol.as_deref() == Some("TCP")
        });
        let from_ok = match &rule.from {
            None => true,
            Some(peers) => peers.iter().any(peer_matches),
        };
        port_ok && from_ok
    })
}

#[test]
fn network_policy_keeps_internal_ports_inside_the_slot() {
    use Source::*;
    let app = full_app();
    let policy = build_network_policy(&app, Slot::Blue);
    let spec = policy.spec.as_ref().unwrap();
    assert_eq!(
        spec.pod_selector
            .as_ref()
            .unwrap()
            .match_labels
            .as_ref()
            .unwrap(),
        &slot_pod_labels(&app, Slot::Blue),
        "the policy covers every pod of the slot"
    );
    assert_eq!(
        spec.policy_types.as_deref(),
        Some(&["Ingress".to_owned()][..])
    );
    // Every component's pods carry the labels the policy selects.
    for component in Component::ALL {
        let pod = build_deployment(&app, component, Slot::Blue)
            .spec
            .template
            .metadata
            .unwrap()
            .labels
            .unwrap();
        for (k, v) in spec
            .pod_selector
            .as_ref()
            .unwrap()
            .match_labels
            .as_ref()
            .unwrap()
        {
            assert_eq!(pod.get(k), Some(v), "{component}");
        }
    }
    let cases = [
        // Internal gRPC: only the same app's pods in the same slot.
        (SameSlotPod, 8001, true),
        (SameSlotPod, 8002, true),
        (SameSlotPod, 8003, true),
        (SameSlotPod, 8004, true),
        (OtherSlotPod, 8004, false),
        (OtherAppPod, 8001, false),
        (OtherNamespace, 8002, false),
        // The gateway's REST port: anyone.
        (OtherNamespace, 8080, true),
        (OtherAppPod, 8080, true),
        // Admin ports: the namespace (probes, scraping), nobody outside.
        (OtherAppPod, 9080, true),
        (OtherAppPod, 9001, true),
        (SameSlotPod, 9004, true),
        (OtherNamespace, 9003, false),
        (OtherNamespace, 9080, false),
        // The operator scrapes the gateways for canary analysis; nothing else of it.
        (Operator, 9080, true),
        (Operator, 8001, false),
        // Anything else is closed.
        (SameSlotPod, 5432, false),
        (OtherNamespace, 22, false),
    ];
    for (source, port, expected) in cases {
        assert_eq!(
            admits(&policy, &app, source, port),
            expected,
            "{source:?} -> {port}"
        );
    }
    assert_eq!(
        build_network_policy(&app, Slot::Green)
            .metadata
            .name
            .as_deref(),
        Some("chat-prod-green")
    );
}

#[test]
fn gateway_is_wired_to_its_own_slot() {
    let app = full_app();
    for slot in [Slot::Blue, Slot::Green] {
        let deployment = build_deployment(&app, Component::Gateway, slot);
        let data = config_data(&app, slot);
        let cases = [
            ("HTTP_ADDR", Some("0.0.0.0:8080".to_owned())),
            ("ADMIN_ADDR", Some("0.0.0.0:9080".to_owned())),
            ("KAFKA_BROKERS", Some("secret:kafka/brokers".to_owned())),
            ("GRPC_ADDR", None),
            ("DATABASE_URL", None),
        ];
        for (var, expected) in cases {
            assert_eq!(env_value(&deployment, var), expected, "{slot} {var}");
        }
        for (var, service) in [
            ("AUTH_URL", "auth"),
            ("USERS_URL", "users"),
            ("FRIENDS_URL", "friends"),
            ("CHAT_URL", "chat"),
        ] {
            let port = Component::from_name(service).unwrap().api_port();
            assert_eq!(
                data[var],
                format!("http://chat-prod-{service}-{slot}:{port}"),
                "{slot} {var}"
            );
        }
        let container = &deployment.spec.template.spec.as_ref().unwrap().containers[0];
        let admin = container
            .ports
            .as_ref()
            .unwrap()
            .iter()
            .find(|p| p.name.as_deref() == Some("admin"))
            .unwrap();
        assert_eq!(admin.container_port, 9080);
        for (probe, path) in [
            (&container.liveness_probe, "/healthz"),
            (&container.readiness_probe, "/readyz"),
        ] {
            let http = probe.as_ref().unwrap().http_get.as_ref().unwrap();
            assert_eq!(
                (http.path.as_deref(), &http.port),
                (Some(path), &IntOrString::String("admin".into()))
            );
        }
    }
}

#[test]
fn pods_run_locked_down() {
    let app = full_app();
    for component in Component::ALL {
        let deployment = build_deployment(&app, component, Slot::Blue);
        let pod = deployment.spec.template.spec.as_ref().unwrap();
        let pod_sc = pod.security_context.as_ref().unwrap();
        assert_eq!(pod_sc.run_as_non_root, Some(true));
        assert_eq!(
            pod_sc.seccomp_profile.as_ref().unwrap().type_,
            "RuntimeDefault"
        );
        assert_eq!(pod.automount_service_account_token, Some(false));
        assert_eq!(pod.service_account_name.as_deref(), Some("chat-prod"));
        let sc = pod.containers[0].security_context.as_ref().unwrap();
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert_eq!(sc.run_as_non_root, Some(true));
        assert_eq!(
            sc.capabilities.as_ref().unwrap().drop.as_deref(),
            Some(&["ALL".to_owned()][..])
        );
        let resources = pod.containers[0].resources.as_ref().unwrap();
        assert!(
            resources.requests.as_ref().unwrap().contains_key("memory"),
            "{component} has requests"
        );
        assert!(
            resources.limits.as_ref().unwrap().contains_key("memory"),
            "{component} has limits"
        );
    }
}

#[test]
fn images_pull_settings_and_scheduling() {
    let app = full_app();
    let cases = [
        (
            Component::Gateway,
            "registry.local/m/messenger-gateway:1.4.2",
        ),
        (Component::Users, "other.local/users:patched"),
    ];
    for (component, expected) in cases {
        let deployment = build_deployment(&app, component, Slot::Blue);
        let pod = deployment.spec.template.spec.as_ref().unwrap();
        assert_eq!(pod.containers[0].image.as_deref(), Some(expected));
        assert_eq!(
            pod.containers[0].image_pull_policy.as_deref(),
            Some("Always")
        );
        assert_eq!(pod.image_pull_secrets.as_ref().unwrap()[0].name, "regcred");
    }
    let chat = build_deployment(&app, Component::Chat, Slot::Blue);
    assert_eq!(chat.spec.replicas, Some(2));
    assert_eq!(
        chat.spec
            .template
            .spec
            .as_ref()
            .unwrap()
            .node_selector
            .as_ref()
            .unwrap()["pool"],
        "chat"
    );
}

#[test]
fn config_hash_follows_the_config() {
    let base = full_app();
    let hash = |app: &MessengerApp| {
        let d = build_deployment(app, Component::Auth, Slot::Blue);
        d.spec.template.metadata.unwrap().annotations.unwrap()[CONFIG_HASH_ANNOTATION].clone()
    };
    let mut changed_config = base.clone();
    changed_config
        .spec
        .config
        .insert("AUTH_TOKEN_TTL".into(), "60".into());
    let mut changed_log = base.clone();
    changed_log.spec.log_level = "debug".into();
    let mut changed_replicas = base.clone();
    changed_replicas.spec.components.auth.replicas = 4;

    assert_eq!(hash(&base), hash(&base.clone()), "deterministic");
    assert_ne!(
        hash(&base),
        hash(&changed_config),
        "config change rolls pods"
    );
    assert_ne!(
        hash(&base),
        hash(&changed_log),
        "log level change rolls pods"
    );
    assert_eq!(
        hash(&base),
        hash(&changed_replicas),
        "scaling does not roll pods"
    );
    assert_eq!(
        hash(&base),
        config_hash(build_config_map(&base, Slot::Blue).data.as_ref().unwrap())
    );
    let blue = config_hash(&config_data(&base, Slot::Blue));
    let green = config_hash(&config_data(&base, Slot::Green));
    assert_ne!(blue, green, "each slot's ConfigMap names its own peers");
}

fn app_with_router(ingress: serde_json::Value) -> MessengerApp {
    app(serde_json::json!({"version": "1", "ingress": ingress}))
}

#[test]
fn entry_route_depends_on_router_and_capabilities() {
    let nginx = app_with_router(
        serde_json::json!({"host": "m.local", "className": "nginx", "tlsSecretName": "tls"}),
    );
    let gateway_api = app_with_router(
        serde_json::json!({"host": "m.local", "router": "gatewayAPI", "gatewayRef": {"name": "gw", "namespace": "infra"}}),
    );
    let plain = app(serde_json::json!({"version": "1"}));
    let no_gateway_api = ApiCapabilities {
        pdb_v1: true,
        http_route: false,
    };
    let cases = [
        ("nginx", &nginx, ApiCapabilities::ALL, 1, 0, 0),
        ("gateway api", &gateway_api, ApiCapabilities::ALL, 0, 1, 0),
        ("gateway api missing", &gateway_api, no_gateway_api, 0, 0, 1),
        ("no ingress", &plain, ApiCapabilities::ALL, 0, 0, 0),
    ];
    for (case, app, caps, ingresses, routes, skipped) in cases {
        let children = build_children(app, caps);
        assert_eq!(children.ingresses.len(), ingresses, "{case}");
        assert_eq!(children.http_routes.len(), routes, "{case}");
        assert_eq!(children.skipped.len(), skipped, "{case}");
    }
    let ingress = build_ingress(&nginx).unwrap().spec.unwrap();
    assert_eq!(ingress.ingress_class_name.as_deref(), Some("nginx"));
    assert_eq!(ingress.tls.unwrap()[0].secret_name.as_deref(), Some("tls"));
    let backend = ingress.rules.unwrap()[0].http.as_ref().unwrap().paths[0]
        .backend
        .service
        .clone()
        .unwrap();
    assert_eq!(
        backend.name, "chat-prod-gateway",
        "the Ingress goes through the entry Service"
    );
    assert_eq!(backend.port.unwrap().name.as_deref(), Some("http"));
    let route = build_http_route(&gateway_api, Slot::Blue).unwrap();
    assert_eq!(
        route.spec.parent_refs[0].namespace.as_deref(),
        Some("infra")
    );
    assert_eq!(route.spec.hostnames, vec!["m.local".to_owned()]);
    assert_eq!(route.spec.rules[0].backend_refs[0].weight, 100);
}

#[test]
fn pdbs_only_for_replicated_components_and_only_where_served() {
    let app = full_app();
    let names: Vec<String> = build_children(&app, ApiCapabilities::ALL)
        .pdbs
        .iter()
        .map(|p| p.metadata.name.clone().unwrap())
        .collect();
    assert_eq!(names, vec!["chat-prod-gateway-blue", "chat-prod-chat-blue"]);
    let old_cluster = build_children(
        &app,
        ApiCapabilities {
            pdb_v1: false,
            http_route: true,
        },
    );
    assert!(old_cluster.pdbs.is_empty());
    assert_eq!(
        old_cluster.skipped,
        vec![
            "PodDisruptionBudget/chat-prod-gateway-blue",
            "PodDisruptionBudget/chat-prod-chat-blue"
        ]
    );
}

#[test]
fn rendered_objects_serialize_with_type_information() {
    // Server-side apply needs apiVersion and kind in every body.
    let app = full_app();
    let children = build_children(&app, ApiCapabilities::ALL);
    let deployment = serde_json::to_value(&children.deployments[0]).unwrap();
    assert_eq!(
        (
            deployment["apiVersion"].as_str(),
            deployment["kind"].as_str()
        ),
        (Some("apps/v1"), Some("Deployment"))
    );
    let route = serde_json::to_value(build_http_route(
        &app_with_router(serde_json::json!({"host": "m.local", "router": "gatewayAPI", "gatewayRef": {"name": "gw"}})),
        Slot::Blue,
    ))
    .unwrap();
    assert_eq!(route["apiVersion"], "gateway.networking.k8s.io/v1");
    assert_eq!(route["kind"], "HTTPRoute");
    assert_eq!(route["metadata"]["labels"][LABEL_MANAGED_BY], MANAGED_BY);
}

/// The whole rendered output for a fully specified app, committed so a review shows what a
/// builder change does to real objects. Regenerate with `UPDATE_SNAPSHOTS=1`.
#[test]
fn full_app_renders_as_in_the_snapshot() {
    let children = build_children(&full_app(), ApiCapabilities::ALL);
    let mut documents: Vec<serde_json::Value> = Vec::new();
    documents.extend(
        children
            .service_accounts
            .iter()
            .map(|o| serde_json::to_value(o).unwrap()),
    );
    documents.extend(
        children
            .config_maps
            .iter()
            .map(|o| serde_json::to_value(o).unwrap()),
    );
    documents.extend(
        children
            .deployments
            .iter()
            .map(|o| serde_json::to_value(o).unwrap()),
    );
    documents.extend(
        children
            .services
            .iter()
            .map(|o| serde_json::to_value(o).unwrap()),
    );
    documents.extend(
        children
            .traffic_services
            .iter()
            .map(|o| serde_json::to_value(o).unwrap()),
    );
    documents.extend(
        children
            .pdbs
            .iter()
            .map(|o| serde_json::to_value(o).unwrap()),
    );
    documents.extend(
        children
            .ingresses
            .iter()
            .map(|o| serde_json::to_value(o).unwrap()),
    );
    documents.extend(
        children
            .network_policies
            .iter()
            .map(|o| serde_json::to_value(o).unwrap()),
    );
    documents.push(
        serde_json::to_value(build_internal_key_secret(
            &full_app(),
            &[7; INTERNAL_KEY_BYTES],
        ))
        .unwrap(),
    );
    let rendered: String = documents
        .iter()
        .map(|d| format!("---\n{}", crate::canonical_yaml(d).unwrap()))
        .collect();
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/snapshots/children_full_app.yaml"
    );
    if std::env::var_os("UPDATE_SNAPSHOTS").is_some() {
        std::fs::write(path, &rendered).unwrap();
    }
    let committed = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        committed == rendered,
        "{path} differs from the rendered children; review and rerun with UPDATE_SNAPSHOTS=1"
    );
}

/// The status a rollout from 1.4.2 (blue) to 2.0.0 (green) leaves at `weight`.
fn mid_rollout(app: &mut MessengerApp, weight: i32) -> MessengerAppStatus {
    use crate::rollout::{Observed, next_state};
    let t = |s| {
        k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            k8s_openapi::jiff::Timestamp::from_second(s).unwrap(),
        )
    };
    app.status = Some(next_state(app, &Observed::default(), &t(1)).status);
    app.spec.version = "2.0.0".into();
    app.spec.components.chat.replicas = 4;
    let mut status = next_state(app, &Observed::default(), &t(2)).status;
    status.rollout.as_mut().unwrap().weight = weight;
    for slot in &mut status.slots {
        slot.weight = if slot.name == Slot::Green {
            weight
        } else {
            100 - weight
        };
    }
    app.status = Some(status.clone());
    status
}

fn deployment_named<'a>(children: &'a Children, name: &str) -> &'a Deployment {
    children
        .deployments
        .iter()
        .find(|d| d.metadata.name.as_deref() == Some(name))
        .unwrap_or_else(|| panic!("no Deployment {name}"))
}

fn container_image(deployment: &Deployment) -> String {
    deployment.spec.template.spec.as_ref().unwrap().containers[0]
        .image
        .clone()
        .unwrap()
}

#[test]
fn each_slot_is_rendered_from_its_own_revision() {
    let mut app = full_app();
    let status = mid_rollout(&mut app, 0);
    let children = build_children_for(&app, &status, ApiCapabilities::ALL);
    assert_eq!(children.deployments.len(), 10, "both slots run");
    let blue = deployment_named(&children, "chat-prod-chat-blue");
    let green = deployment_named(&children, "chat-prod-chat-green");
    assert_eq!(
        container_image(blue),
        "registry.local/m/messenger-chat:1.4.2",
        "the stable slot keeps its recorded inputs although the spec changed"
    );
    assert_eq!(blue.spec.replicas, Some(2));
    assert_eq!(
        container_image(green),
        "registry.local/m/messenger-chat:2.0.0"
    );
    assert_eq!(green.spec.replicas, Some(4));
    let revision_of = |d: &Deployment| {
        d.spec
            .template
            .metadata
            .as_ref()
            .unwrap()
            .annotations
            .as_ref()
            .unwrap()[REVISION_ANNOTATION]
            .clone()
    };
    let recorded = |slot| {
        status
            .slots
            .iter()
            .find(|s| s.name == slot)
            .unwrap()
            .template_hash
            .clone()
    };
    assert_eq!(revision_of(blue), recorded(Slot::Blue));
    assert_eq!(revision_of(green), recorded(Slot::Green));
    assert_ne!(recorded(Slot::Blue), recorded(Slot::Green));
    assert_eq!(
        blue.metadata.labels.as_ref().unwrap()[LABEL_VERSION],
        "1.4.2"
    );
    let configs: Vec<String> = children
        .config_maps
        .iter()
        .map(|c| c.metadata.name.clone().unwrap())
        .collect();
    assert_eq!(configs, ["chat-prod-config-blue", "chat-prod-config-green"]);
    assert_eq!(children.network_policies.len(), 2);
    assert_eq!(children.protected_slots, [Slot::Blue]);
}

#[test]
fn traffic_follows_the_recorded_weights_on_every_router() {
    let gateway_api = serde_json::json!({"host": "m.local", "router": "gatewayAPI", "gatewayRef": {"name": "gw"}});
    let nginx = serde_json::json!({"host": "m.local", "className": "nginx"});
    for weight in [0, 20, 50] {
        // Gateway API: two weighted backendRefs.
        let mut app = app_with_router(gateway_api.clone());
        app.spec.strategy.type_ = StrategyType::Canary;
        let status = mid_rollout(&mut app, weight);
        let children = build_children_for(&app, &status, ApiCapabilities::ALL);
        let backends: Vec<(String, i32)> = children.http_routes[0].spec.rules[0]
            .backend_refs
            .iter()
            .map(|b| (b.name.clone(), b.weight))
            .collect();
        assert_eq!(
            backends,
            [
                ("chat-prod-gateway-blue".to_owned(), 100 - weight),
                ("chat-prod-gateway-green".to_owned(), weight)
            ]
        );
        // The entry Service stays on the stable slot; the preview reaches the candidate.
        let selector_slot = |name: &str| {
            children
                .traffic_services
                .iter()
                .find(|s| s.metadata.name.as_deref() == Some(name))
                .unwrap()
                .spec
                .as_ref()
                .unwrap()
                .selector
                .as_ref()
                .unwrap()[LABEL_SLOT]
                .clone()
        };
        assert_eq!(selector_slot("chat-prod-gateway"), "blue");
        assert_eq!(selector_slot("chat-prod-gateway-preview"), "green");

        // ingress-nginx: a second Ingress with the canary weight, only while it carries any.
        let mut app = app_with_router(nginx.clone());
        app.spec.strategy.type_ = StrategyType::Canary;
        let status = mid_rollout(&mut app, weight);
        let children = build_children_for(&app, &status, ApiCapabilities::ALL);
        let canary = children
            .ingresses
            .iter()
            .find(|i| i.metadata.name.as_deref() == Some("chat-prod.canary"));
        match canary {
            None => assert_eq!(weight, 0),
            Some(ingress) => {
                let annotations = ingress.metadata.annotations.as_ref().unwrap();
                assert_eq!(annotations[NGINX_CANARY], "true");
                assert_eq!(annotations[NGINX_CANARY_WEIGHT], weight.to_string());
                let backend = ingress.spec.as_ref().unwrap().rules.as_ref().unwrap()[0]
                    .http
                    .as_ref()
                    .unwrap()
                    .paths[0]
                    .backend
                    .service
                    .as_ref()
                    .unwrap()
                    .name
                    .clone();
                assert_eq!(backend, "chat-prod-gateway-green");
            }
        }
    }
}

#[test]
fn a_scaled_down_slot_keeps_its_objects_at_zero_replicas() {
    let mut app = full_app();
    let mut status = mid_rollout(&mut app, 0);
    let green = status
        .slots
        .iter_mut()
        .find(|s| s.name == Slot::Green)
        .unwrap();
    green.scaled_down = true;
    let children = build_children_for(&app, &status, ApiCapabilities::ALL);
    for component in Component::ALL {
        let name = format!("chat-prod-{component}-green");
        assert_eq!(
            deployment_named(&children, &name).spec.replicas,
            Some(0),
            "{name}"
        );
    }
    assert!(
        children
            .pdbs
            .iter()
            .all(|p| !p.metadata.name.as_ref().unwrap().ends_with("-green")),
        "no PDB for a slot without pods"
    );
}

#[test]
fn an_unrecorded_serving_slot_is_not_rendered_and_never_pruned() {
    let mut app = full_app();
    let mut status = mid_rollout(&mut app, 0);
    for slot in &mut status.slots {
        if slot.name == Slot::Blue {
            slot.template = None;
        }
    }
    let children = build_children_for(&app, &status, ApiCapabilities::ALL);
    assert!(
        children
            .deployments
            .iter()
            .all(|d| d.metadata.name.as_ref().unwrap().ends_with("-green"))
    );
    assert_eq!(children.protected_slots, [Slot::Blue]);
}

#[test]
fn without_a_router_the_weight_is_approximated_by_gateway_replicas_behind_one_service() {
    // (stable gateway replicas, weight, candidate gateway replicas; None: slot selector kept)
    let cases = [
        (4, 0, None),
        (4, 20, Some(1)),
        (4, 50, Some(4)),
        (3, 25, Some(1)),
        (3, 60, Some(5)),
        (1, 10, Some(1)),
        (4, 100, None),
    ];
    for (stable_replicas, weight, expected) in cases {
        let mut app = app(serde_json::json!({
            "version": "1.4.2",
            "components": {"gateway": {"replicas": stable_replicas}},
            "strategy": {"type": "Canary", "canary": {"steps": [{"setWeight": 50}]}}
        }));
        let mut status = mid_rollout(&mut app, weight);
        if weight == 100 {
            status.rollout.as_mut().unwrap().weight = 100;
        }
        let children = build_children_for(&app, &status, ApiCapabilities::ALL);
        let entry = children
            .traffic_services
            .iter()
            .find(|s| s.metadata.name.as_deref() == Some("chat-prod-gateway"))
            .unwrap();
        let selector = entry.spec.as_ref().unwrap().selector.clone().unwrap();
        let blue = deployment_named(&children, "chat-prod-gateway-blue");
        let green = deployment_named(&children, "chat-prod-gateway-green");
        assert_eq!(
            blue.spec.replicas,
            Some(stable_replicas),
            "the stable slot is never resized"
        );
        match expected {
            None => {
                assert_eq!(selector[LABEL_SLOT], "blue", "weight {weight}");
                assert_eq!(green.spec.replicas, Some(stable_replicas));
            }
            Some(replicas) => {
                assert!(
                    !selector.contains_key(LABEL_SLOT),
                    "both slots' gateways at weight {weight}"
                );
                assert_eq!(selector[LABEL_COMPONENT], "gateway");
                assert_eq!(
                    green.spec.replicas,
                    Some(replicas),
                    "{stable_replicas} stable at weight {weight}"
                );
            }
        }
    }
    // A router carries the weight itself: no replica games.
    let mut routed = app_with_router(serde_json::json!({"host": "m.local", "className": "nginx"}));
    routed.spec.strategy.type_ = StrategyType::Canary;
    let status = mid_rollout(&mut routed, 20);
    assert_eq!(replica_weighted_canary(&routed, &status), None);
}

#[test]
fn preview_host_reaches_the_candidate_only_during_a_rollout() {
    for router in ["ingressNginx", "gatewayAPI"] {
        let ingress = if router == "gatewayAPI" {
            serde_json::json!({"host": "m.local", "router": "gatewayAPI", "gatewayRef": {"name": "gw"}})
        } else {
            serde_json::json!({"host": "m.local", "className": "nginx"})
        };
        let mut app = app_with_router(ingress);
        app.spec.strategy.blue_green = Some(crate::crd::BlueGreenStrategy {
            preview_host: Some("preview.m.local".into()),
            ..Default::default()
        });
        let steady = build_children(&app, ApiCapabilities::ALL);
        let previews = |children: &Children| -> Vec<(String, String, String)> {
            let from_ingresses = children.ingresses.iter().filter_map(|i| {
                let rule = &i.spec.as_ref()?.rules.as_ref()?[0];
                let backend = rule.http.as_ref()?.paths[0].backend.service.as_ref()?;
                Some((
                    i.metadata.name.clone()?,
                    rule.host.clone()?,
                    backend.name.clone(),
                ))
            });
            let from_routes = children.http_routes.iter().map(|r| {
                (
                    r.metadata.name.clone().unwrap(),
                    r.spec.hostnames[0].clone(),
                    r.spec.rules[0].backend_refs[0].name.clone(),
                )
            });
            from_ingresses
                .chain(from_routes)
                .filter(|(name, _, _)| name.ends_with(".preview"))
                .collect()
        };
        assert_eq!(
            previews(&steady),
            vec![],
            "{router}: no rollout, no preview"
        );
        let status = mid_rollout(&mut app, 0);
        let rolling = build_children_for(&app, &status, ApiCapabilities::ALL);
        let backend = if router == "gatewayAPI" {
            "chat-prod-gateway-green"
        } else {
            "chat-prod-gateway-preview"
        };
        assert_eq!(
            previews(&rolling),
            vec![(
                "chat-prod.preview".to_owned(),
                "preview.m.local".to_owned(),
                backend.to_owned()
            )],
            "{router}"
        );
    }
}

/// Kafka consumers of the candidate slot join the stable slot's consumer groups (README,
/// "Kafka consumers in the candidate slot"): both slots get the same brokers and nothing
/// that would give a slot a group, topic or client identity of its own.
#[test]
fn both_slots_consume_kafka_with_the_same_settings() {
    let mut app = full_app();
    let status = mid_rollout(&mut app, 20);
    let children = build_children_for(&app, &status, ApiCapabilities::ALL);
    for component in Component::ALL {
        let blue = deployment_named(&children, &format!("chat-prod-{component}-blue"));
        let green = deployment_named(&children, &format!("chat-prod-{component}-green"));
        assert_eq!(
            env_value(blue, "KAFKA_BROKERS"),
            env_value(green, "KAFKA_BROKERS"),
            "{component}"
        );
        for deployment in [blue, green] {
            let container = &deployment.spec.template.spec.as_ref().unwrap().containers[0];
            let kafka_specific: Vec<&str> = container
                .env
                .iter()
                .flatten()
                .map(|e| e.name.as_str())
                .filter(|n| n.contains("GROUP") || n.contains("TOPIC") || n.contains("CLIENT_ID"))
                .collect();
            assert_eq!(kafka_specific, Vec::<&str>::new(), "{component}");
        }
    }
    for config in &children.config_maps {
        let keys: Vec<&String> = config
            .data
            .as_ref()
            .unwrap()
            .keys()
            .filter(|k| k.contains("GROUP") || k.contains("TOPIC"))
            .collect();
        assert_eq!(keys, Vec::<&String>::new());
    }
}

fn migrating_app() -> MessengerApp {
    let mut app = full_app();
    app.spec.migrations.enabled = true;
    app
}

#[test]
fn a_migrating_slot_gets_one_job_per_database_service_and_pods_only_once_they_succeeded() {
    let cases: &[(&str, Option<MigrationPhase>, usize, usize)] = &[
        // (case, slot's migrations, Jobs, Deployments)
        ("pending", Some(MigrationPhase::Pending), 3, 0),
        ("failed", Some(MigrationPhase::Failed), 3, 0),
        ("succeeded", Some(MigrationPhase::Succeeded), 3, 5),
    ];
    for (case, phase, jobs, deployments) in cases {
        let app = migrating_app();
        let mut status = initial_status(&app);
        status.slots[0].migrations = *phase;
        let children = build_children_for(&app, &status, ApiCapabilities::ALL);
        assert_eq!(children.jobs.len(), *jobs, "{case}");
        assert_eq!(children.deployments.len(), *deployments, "{case}");
        assert_eq!(children.pdbs.is_empty(), *deployments == 0, "{case}");
        // The slot's Services and ConfigMap (which the Jobs read) exist either way.
        assert_eq!(children.services.len(), 5, "{case}");
        assert_eq!(children.config_maps.len(), 1, "{case}");
    }
    let plain = full_app();
    let children = build_children(&plain, ApiCapabilities::ALL);
    assert!(
        children.jobs.is_empty(),
        "pods migrate at start-up by default"
    );
    assert_eq!(children.deployments.len(), 5);
    assert_eq!(initial_status(&plain).slots[0].migrations, None);
    assert_eq!(
        initial_status(&migrating_app()).slots[0].migrations,
        Some(MigrationPhase::Pending),
        "a new migrating app starts with its Jobs"
    );
}

#[test]
fn a_migration_job_runs_the_slots_image_with_migrate_and_is_named_by_slot_and_revision() {
    let mut app = migrating_app();
    app.metadata.name = Some("a".repeat(MAX_APP_NAME_LEN_FOR_TESTS));
    let job = build_migration_job(&app, Component::Friends, Slot::Green);
    let name = job.name_any();
    let revision = revision(&SlotTemplate::of(&app.spec));
    assert_eq!(
        name,
        format!("{}-friends-green-{}", app.name_any(), &revision[..8])
    );
    assert!(name.len() <= 63, "a Job name is a pod label value: {name}");
    let spec = job.spec.as_ref().unwrap();
    assert_eq!(spec.backoff_limit, Some(DEFAULT_MIGRATION_BACKOFF_LIMIT));
    assert_eq!(
        spec.active_deadline_seconds,
        Some(DEFAULT_MIGRATION_DEADLINE_SECONDS)
    );
    let pod = spec.template.spec.as_ref().unwrap();
    assert_eq!(pod.restart_policy.as_deref(), Some("Never"));
    let container = &pod.containers[0];
    assert_eq!(container.args, Some(vec!["migrate".to_owned()]));
    assert_eq!(
        container.image.as_deref(),
        Some("registry.local/m/messenger-friends:1.4.2")
    );
    assert!(container.readiness_probe.is_none() && container.ports.is_none());
    let deployment = build_deployment(&app, Component::Friends, Slot::Green);
    let env = |c: &k8s_openapi::api::core::v1::Container| {
        c.env
            .clone()
            .unwrap()
            .into_iter()
            .map(|e| e.name)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        env(container),
        env(&deployment.spec.template.spec.as_ref().unwrap().containers[0]),
        "the Job migrates the database the slot's pods will use"
    );
    assert_eq!(
        env_value(&deployment, "DATABASE_URL").as_deref(),
        Some("secret:pg-friends/url")
    );

    // No Service, PodDisruptionBudget or analysis scrape selects a migration pod.
    let pod_labels = spec
        .template
        .metadata
        .as_ref()
        .unwrap()
        .labels
        .clone()
        .unwrap();
    let service = build_service(&app, Component::Friends, Slot::Green);
    let selector = service.spec.unwrap().selector.unwrap();
    assert!(
        !selector.iter().all(|(k, v)| pod_labels.get(k) == Some(v)),
        "{pod_labels:?} must not match {selector:?}"
    );
    assert_eq!(
        pod_labels.get(LABEL_MIGRATION).map(String::as_str),
        Some("friends")
    );

    // Any change of the slot's inputs is a new Job, never an edit of the old one.
    let mut changed = app.clone();
    changed
        .spec
        .config
        .insert("FRIENDS_CACHE_TTL".into(), "1m".into());
    assert_ne!(
        build_migration_job(&changed, Component::Friends, Slot::Green).name_any(),
        name
    );
    assert_ne!(
        build_migration_job(&app, Component::Friends, Slot::Blue).name_any(),
        name
    );
}

const MAX_APP_NAME_LEN_FOR_TESTS: usize = crate::validate::MAX_APP_NAME_LEN;

#[test]
fn pods_of_a_migrating_slot_do_not_migrate_at_start_up() {
    let migrating = migrating_app();
    let plain = full_app();
    for component in Component::ALL {
        let with_jobs = build_deployment(&migrating, component, Slot::Blue);
        let without = build_deployment(&plain, component, Slot::Blue);
        let expected = component.uses_postgres().then(|| "false".to_owned());
        assert_eq!(
            env_value(&with_jobs, MIGRATE_ON_START_ENV),
            expected,
            "{component}"
        );
        assert_eq!(
            env_value(&without, MIGRATE_ON_START_ENV),
            None,
            "{component}"
        );
    }
}

#[test]
fn turning_migration_jobs_on_is_a_new_revision_but_the_default_keeps_old_hashes() {
    let plain = full_app();
    let before = revision(&SlotTemplate::of(&plain.spec));
    let mut explicit_default = plain.clone();
    explicit_default.spec.migrations = crate::crd::MigrationsSpec::default();
    assert_eq!(revision(&SlotTemplate::of(&explicit_default.spec)), before);
    assert_ne!(revision(&SlotTemplate::of(&migrating_app().spec)), before);
}

#[test]
fn canary_scale_counts() {
    use crate::crd::SetCanaryScale;
    let replicas = |n| SetCanaryScale {
        replicas: Some(n),
        ..Default::default()
    };
    let weight = |w| SetCanaryScale {
        weight: Some(w),
        ..Default::default()
    };
    let matching = SetCanaryScale {
        match_traffic_weight: Some(true),
        ..Default::default()
    };
    // (scale, full replicas, traffic weight, pods)
    let cases: &[(SetCanaryScale, i32, i32, i32)] = &[
        (replicas(2), 5, 10, 2),
        (replicas(3), 1, 0, 3),
        (weight(25), 4, 90, 1),
        (weight(25), 10, 0, 3),
        (weight(100), 3, 0, 3),
        (weight(10), 1, 0, 1),
        (weight(50), 0, 0, 0),
        (matching.clone(), 10, 0, 1),
        (matching.clone(), 10, 20, 2),
        (matching.clone(), 10, 55, 6),
        (matching, 3, 100, 3),
    ];
    for (scale, full, traffic, expected) in cases {
        assert_eq!(
            canary_scaled_replicas(scale, *full, *traffic),
            *expected,
            "{scale:?} of {full} at weight {traffic}"
        );
    }
}
