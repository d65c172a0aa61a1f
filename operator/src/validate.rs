//! Spec checks the operator makes before creating anything. They repeat the CRD's CEL rules
//! (API servers before 1.25 ignore CEL) and add rules a schema cannot state.

use kube::ResourceExt;

use crate::component::{Component, WIRED_ENV};
use crate::crd::{MessengerApp, StrategyType, TrafficRouter};

/// Longest app name: child names append up to 14 characters and must stay DNS labels.
pub const MAX_APP_NAME_LEN: usize = 40;

/// Every problem found in a spec, in a stable order, for the Degraded condition's message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidSpec {
    pub problems: Vec<String>,
}

impl std::fmt::Display for InvalidSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.problems.join("; "))
    }
}

pub fn validate(app: &MessengerApp) -> Result<(), InvalidSpec> {
    let spec = &app.spec;
    let mut problems = Vec::new();

    let name = app.name_any();
    if name.len() > MAX_APP_NAME_LEN {
        problems.push(format!(
            "metadata.name must be at most {MAX_APP_NAME_LEN} characters, got {}",
            name.len()
        ));
    }
    // Children are Services (DNS labels); it also keeps `<app>.canary` from naming
    // another app's Ingress.
    if name.contains('.') {
        problems.push(format!(
            "metadata.name {name:?} must not contain dots: it names Services"
        ));
    }
    if !is_version(&spec.version) {
        problems.push(format!(
            "spec.version {:?} must be an image tag that is also a label value: at most {MAX_VERSION_LEN} characters of letters, digits, '_', '.', '-', starting and ending with a letter or digit",
            spec.version
        ));
    }
    for key in spec.config.keys() {
        if !is_env_name(key) {
            problems.push(format!(
                "spec.config key {key:?} is not an environment variable name"
            ));
        } else if WIRED_ENV.contains(&key.as_str()) {
            problems.push(format!("spec.config key {key} is set by the operator"));
        }
    }
    for component in Component::ALL {
        let c = component.spec(spec);
        if !(0..=100).contains(&c.replicas) {
            problems.push(format!(
                "spec.components.{component}.replicas must be 0..=100, got {}",
                c.replicas
            ));
        }
        if let Some(resources) = &c.resources {
            for (kind, map) in [
                ("requests", &resources.requests),
                ("limits", &resources.limits),
            ] {
                for (name, quantity) in map.iter().flatten() {
                    if !is_quantity(&quantity.0) {
                        problems.push(format!(
                            "spec.components.{component}.resources.{kind}.{name} {:?} is not a quantity (e.g. 250m, 64Mi)",
                            quantity.0
                        ));
                    }
                }
            }
        }
        for var in &c.env {
            if WIRED_ENV.contains(&var.name.as_str()) {
                problems.push(format!(
                    "spec.components.{component}.env redefines {}, which the operator sets",
                    var.name
                ));
            }
        }
    }
    if let Some(pg) = &spec.dependencies.postgres
        && pg.shared.is_none()
        && (pg.auth.is_none() || pg.users.is_none() || pg.friends.is_none())
    {
        problems.push(
            "spec.dependencies.postgres needs `shared` or all of `auth`, `users` and `friends`"
                .to_owned(),
        );
    }
    // Without this, chat would start on per-pod memory and lose chats on every restart.
    match (&spec.dependencies.mongodb, spec.dependencies.chat_in_memory) {
        (None, false) => problems.push(
            "spec.dependencies.mongodb is required: chat keeps chats and messages there \
             (set spec.dependencies.chatInMemory: true to keep them in each pod's memory \
             instead, lost on restart; for trying things out only)"
                .to_owned(),
        ),
        (Some(_), true) => problems.push(
            "spec.dependencies: chatInMemory and mongodb contradict each other; keep one"
                .to_owned(),
        ),
        _ => {}
    }
    if let Some(limit) = spec.migrations.backoff_limit
        && !(0..=10).contains(&limit)
    {
        problems.push(format!(
            "spec.migrations.backoffLimit must be 0..=10, got {limit}"
        ));
    }
    if let Some(seconds) = spec.migrations.active_deadline_seconds
        && seconds < 1
    {
        problems.push(format!(
            "spec.migrations.activeDeadlineSeconds must be at least 1, got {seconds}"
        ));
    }
    if let Some(ingress) = &spec.ingress {
        if ingress.router == TrafficRouter::GatewayApi && ingress.gateway_ref.is_none() {
            problems.push("spec.ingress: router gatewayAPI needs gatewayRef".to_owned());
        }
        if ingress.router == TrafficRouter::GatewayApi && ingress.tls_secret_name.is_some() {
            problems.push("spec.ingress: with gatewayAPI, TLS is configured on the Gateway, not with tlsSecretName".to_owned());
        }
    }
    if spec.strategy.type_ == StrategyType::Canary {
        match &spec.strategy.canary {
            Some(canary) if !canary.steps.is_empty() => {
                if let Some(prometheus) = &canary.prometheus {
                    let url = &prometheus.url;
                    let host = url.strip_prefix("http://").unwrap_or_default();
                    if host.is_empty() || url.chars().any(char::is_whitespace) {
                        problems.push(format!(
                            "spec.strategy.canary.prometheus.url {url:?} must be an http:// URL (plain HTTP, e.g. http://prometheus.monitoring:9090)"
                        ));
                    }
                    if prometheus
                        .selector
                        .as_deref()
                        .is_some_and(|s| s.trim().is_empty())
                    {
                        problems.push(
                            "spec.strategy.canary.prometheus.selector must not be empty".to_owned(),
                        );
                    }
                }
                for (i, step) in canary.steps.iter().enumerate() {
                    let set = [
                        step.set_weight.is_some(),
                        step.pause.is_some(),
                        step.analysis.is_some(),
                        step.set_canary_scale.is_some(),
                    ];
                    if set.iter().filter(|x| **x).count() != 1 {
                        problems.push(format!(
                            "spec.strategy.canary.steps[{i}] must set exactly one of setWeight, pause, analysis, setCanaryScale"
                        ));
                    }
                    if let Some(scale) = &step.set_canary_scale {
                        let field = format!("spec.strategy.canary.steps[{i}].setCanaryScale");
                        let set = [
                            scale.replicas.is_some(),
                            scale.weight.is_some(),
                            scale.match_traffic_weight.is_some(),
                        ];
                        if set.iter().filter(|x| **x).count() != 1 {
                            problems.push(format!(
                                "{field} must set exactly one of replicas, weight, matchTrafficWeight"
                            ));
                        }
                        for (name, value) in
                            [("replicas", scale.replicas), ("weight", scale.weight)]
                        {
                            if let Some(v) = value
                                && !(1..=100).contains(&v)
                            {
                                problems.push(format!("{field}.{name} must be 1..=100, got {v}"));
                            }
                        }
                        if scale.match_traffic_weight == Some(false) {
                            problems.push(format!("{field}.matchTrafficWeight can only be true"));
                        }
                    }
                    if let Some(w) = step.set_weight
                        && !(0..=100).contains(&w)
                    {
                        problems.push(format!(
                            "spec.strategy.canary.steps[{i}].setWeight must be 0..=100, got {w}"
                        ));
                    }
                }
            }
            _ => problems.push("spec.strategy: Canary needs canary.steps".to_owned()),
        }
    }

    if problems.is_empty() {
        Ok(())
    } else {
        Err(InvalidSpec { problems })
    }
}

/// The API server's quantity grammar, `^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$`.
fn is_quantity(value: &str) -> bool {
    let rest = value.strip_prefix(['+', '-']).unwrap_or(value);
    let number_len = rest
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(rest.len());
    if number_len == 0 {
        return false;
    }
    let suffix = &rest[number_len..];
    let suffix = suffix.trim_start_matches(|c: char| "eEinumkKMGTP".contains(c));
    let suffix = suffix.strip_prefix(['+', '-']).unwrap_or(suffix);
    suffix.chars().all(|c| c.is_ascii_digit())
}

/// The version is the image tag and the `app.kubernetes.io/version` label of every child, so
/// it must be both: a label value is at most 63 characters and starts and ends alphanumeric.
pub const MAX_VERSION_LEN: usize = 63;

pub fn is_version(version: &str) -> bool {
    let edge_ok = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    (1..=MAX_VERSION_LEN).contains(&version.len())
        && edge_ok(version.chars().next())
        && edge_ok(version.chars().last())
        && version
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

fn is_env_name(key: &str) -> bool {
    let mut chars = key.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::MessengerAppSpec;

    /// `spec` with a MongoDB reference when it names no chat store: every app must name
    /// one, and the cases here are about other rules (`chat_store_must_be_named` covers it).
    pub(super) fn with_chat_store(mut spec: serde_json::Value) -> serde_json::Value {
        let dependencies = spec
            .as_object_mut()
            .unwrap()
            .entry("dependencies")
            .or_insert_with(|| serde_json::json!({}));
        let dependencies = dependencies.as_object_mut().unwrap();
        if !dependencies.contains_key("chatInMemory") {
            dependencies
                .entry("mongodb")
                .or_insert_with(|| serde_json::json!({"name": "mongodb", "key": "uri"}));
        }
        spec
    }

    fn app(name: &str, spec: serde_json::Value) -> MessengerApp {
        let spec: MessengerAppSpec = serde_json::from_value(with_chat_store(spec)).unwrap();
        let mut app = MessengerApp::new(name, spec);
        app.metadata.namespace = Some("ns".into());
        app
    }

    #[test]
    fn valid_and_invalid_specs() {
        let cases: &[(&str, &str, serde_json::Value, Option<&str>)] = &[
            (
                "minimal",
                "chat",
                serde_json::json!({"version": "1.0.0"}),
                None,
            ),
            (
                "full ingress",
                "chat",
                serde_json::json!({"version": "1.0.0", "ingress": {"host": "m.local", "router": "gatewayAPI", "gatewayRef": {"name": "gw"}}}),
                None,
            ),
            (
                "long name",
                &"x".repeat(41),
                serde_json::json!({"version": "1"}),
                Some("at most 40"),
            ),
            (
                "dotted name",
                "chat.prod",
                serde_json::json!({"version": "1"}),
                Some("must not contain dots"),
            ),
            (
                "bad tag",
                "chat",
                serde_json::json!({"version": "-1 0"}),
                Some("must be an image tag"),
            ),
            (
                "longest version a label holds",
                "chat",
                serde_json::json!({"version": "v".repeat(63)}),
                None,
            ),
            (
                "version longer than a label",
                "chat",
                serde_json::json!({"version": "v".repeat(64)}),
                Some("at most 63"),
            ),
            (
                "version ending in a dash",
                "chat",
                serde_json::json!({"version": "1.0-"}),
                Some("must be an image tag"),
            ),
            (
                "version starting with underscore",
                "chat",
                serde_json::json!({"version": "_1"}),
                Some("must be an image tag"),
            ),
            (
                "gateway api without ref",
                "chat",
                serde_json::json!({"version": "1", "ingress": {"host": "m.local", "router": "gatewayAPI"}}),
                Some("needs gatewayRef"),
            ),
            (
                "partial postgres",
                "chat",
                serde_json::json!({"version": "1", "dependencies": {"postgres": {"auth": {"name": "pg", "key": "url"}}}}),
                Some("postgres needs"),
            ),
            (
                "wired env redefined",
                "chat",
                serde_json::json!({"version": "1", "components": {"chat": {"env": [{"name": "USERS_URL", "value": "http://elsewhere"}]}}}),
                Some("redefines USERS_URL"),
            ),
            (
                "bad quantity",
                "chat",
                serde_json::json!({"version": "1", "components": {"auth": {"resources": {"limits": {"memory": "lots"}}}}}),
                Some("resources.limits.memory \"lots\" is not a quantity"),
            ),
            (
                "good quantities",
                "chat",
                serde_json::json!({"version": "1", "components": {"auth": {"resources": {"requests": {"cpu": "250m", "memory": "1.5Gi"}, "limits": {"cpu": "2", "memory": "1e9"}}}}}),
                None,
            ),
            (
                "config key",
                "chat",
                serde_json::json!({"version": "1", "config": {"bad key": "x"}}),
                Some("not an environment"),
            ),
            (
                "canary without steps",
                "chat",
                serde_json::json!({"version": "1", "strategy": {"type": "Canary"}}),
                Some("Canary needs"),
            ),
            (
                "canary step with two actions",
                "chat",
                serde_json::json!({"version": "1", "strategy": {"type": "Canary", "canary": {"steps": [{"setWeight": 10, "pause": {}}]}}}),
                Some("exactly one"),
            ),
            (
                "replicas out of range",
                "chat",
                serde_json::json!({"version": "1", "components": {"users": {"replicas": 101}}}),
                Some("replicas must be"),
            ),
            (
                "canary scale steps",
                "chat",
                serde_json::json!({"version": "1", "strategy": {"type": "Canary", "canary": {"steps": [{"setCanaryScale": {"replicas": 1}}, {"setCanaryScale": {"weight": 25}}, {"setCanaryScale": {"matchTrafficWeight": true}}, {"setWeight": 10}]}}}),
                None,
            ),
            (
                "canary scale with two fields",
                "chat",
                serde_json::json!({"version": "1", "strategy": {"type": "Canary", "canary": {"steps": [{"setCanaryScale": {"replicas": 1, "weight": 20}}]}}}),
                Some("exactly one of replicas, weight, matchTrafficWeight"),
            ),
            (
                "canary scale of zero pods",
                "chat",
                serde_json::json!({"version": "1", "strategy": {"type": "Canary", "canary": {"steps": [{"setCanaryScale": {"weight": 0}}]}}}),
                Some("setCanaryScale.weight must be 1..=100"),
            ),
            (
                "canary scale matching no weight",
                "chat",
                serde_json::json!({"version": "1", "strategy": {"type": "Canary", "canary": {"steps": [{"setCanaryScale": {"matchTrafficWeight": false}}]}}}),
                Some("matchTrafficWeight can only be true"),
            ),
            (
                "canary step with scale and weight",
                "chat",
                serde_json::json!({"version": "1", "strategy": {"type": "Canary", "canary": {"steps": [{"setWeight": 10, "setCanaryScale": {"replicas": 2}}]}}}),
                Some("exactly one of setWeight, pause, analysis, setCanaryScale"),
            ),
            (
                "prometheus analysis",
                "chat",
                serde_json::json!({"version": "1", "strategy": {"type": "Canary", "canary": {"prometheus": {"url": "http://prometheus.monitoring:9090"}, "steps": [{"analysis": {"maxErrorRate": 0.01}}]}}}),
                None,
            ),
            (
                "prometheus over https",
                "chat",
                serde_json::json!({"version": "1", "strategy": {"type": "Canary", "canary": {"prometheus": {"url": "https://prometheus"}, "steps": [{"setWeight": 5}]}}}),
                Some("must be an http:// URL"),
            ),
            (
                "migrations as Jobs",
                "chat",
                serde_json::json!({"version": "1", "migrations": {"enabled": true, "backoffLimit": 0, "activeDeadlineSeconds": 120}}),
                None,
            ),
            (
                "migration retries out of range",
                "chat",
                serde_json::json!({"version": "1", "migrations": {"enabled": true, "backoffLimit": 11}}),
                Some("backoffLimit must be 0..=10"),
            ),
            (
                "migration deadline of zero",
                "chat",
                serde_json::json!({"version": "1", "migrations": {"activeDeadlineSeconds": 0}}),
                Some("activeDeadlineSeconds must be at least 1"),
            ),
            (
                "MIGRATE_ON_START is the operator's",
                "chat",
                serde_json::json!({"version": "1", "components": {"auth": {"env": [{"name": "MIGRATE_ON_START", "value": "true"}]}}}),
                Some("redefines MIGRATE_ON_START"),
            ),
        ];
        for (case, name, spec, expected) in cases {
            let result = validate(&app(name, spec.clone()));
            match expected {
                None => assert_eq!(result, Ok(()), "{case}"),
                Some(fragment) => {
                    let err = result.expect_err(case);
                    assert!(err.to_string().contains(fragment), "{case}: {err}");
                }
            }
        }
    }
}

/// The CRD's CEL rules, evaluated the way a >= 1.25 API server does, must agree with
/// `validate` on every rule they both state.
#[cfg(test)]
mod cel_tests {
    use kube::CustomResourceExt;

    use super::*;

    fn cel(object: &serde_json::Value) -> Result<(), String> {
        let crd = serde_json::to_value(MessengerApp::crd()).unwrap();
        let schema = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
        kube_cel::validate(schema, object, None).map_err(|errors| {
            errors
                .into_vec()
                .iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join("; ")
        })
    }

    #[test]
    fn cel_rules_agree_with_the_operator() {
        let cases: &[(&str, &str, serde_json::Value, Option<&str>)] = &[
            (
                "minimal",
                "chat",
                serde_json::json!({"version": "1.0.0"}),
                None,
            ),
            (
                "gateway api with ref",
                "chat",
                serde_json::json!({"version": "1", "ingress": {"host": "m.local", "router": "gatewayAPI", "gatewayRef": {"name": "gw"}}}),
                None,
            ),
            (
                "nginx default router",
                "chat",
                serde_json::json!({"version": "1", "ingress": {"host": "m.local"}}),
                None,
            ),
            (
                "gateway api without ref",
                "chat",
                serde_json::json!({"version": "1", "ingress": {"host": "m.local", "router": "gatewayAPI"}}),
                Some("needs gatewayRef"),
            ),
            (
                "gateway api with tls secret",
                "chat",
                serde_json::json!({"version": "1", "ingress": {"host": "m.local", "router": "gatewayAPI", "gatewayRef": {"name": "gw"}, "tlsSecretName": "t"}}),
                Some("TLS is configured on the Gateway"),
            ),
            (
                "long name",
                &"x".repeat(41),
                serde_json::json!({"version": "1"}),
                Some("at most 40"),
            ),
            (
                "partial postgres",
                "chat",
                serde_json::json!({"version": "1", "dependencies": {"postgres": {"auth": {"name": "pg", "key": "url"}}}}),
                Some("postgres needs"),
            ),
            (
                "shared postgres",
                "chat",
                serde_json::json!({"version": "1", "dependencies": {"postgres": {"shared": {"name": "pg", "key": "url"}}}}),
                None,
            ),
            (
                "canary without steps",
                "chat",
                serde_json::json!({"version": "1", "strategy": {"type": "Canary"}}),
                Some("Canary needs"),
            ),
            (
                "canary with steps",
                "chat",
                serde_json::json!({"version": "1", "strategy": {"type": "Canary", "canary": {"steps": [{"setWeight": 10}, {"pause": {}}]}}}),
                None,
            ),
            (
                "canary step with two actions",
                "chat",
                serde_json::json!({"version": "1", "strategy": {"type": "Canary", "canary": {"steps": [{"setWeight": 10, "pause": {}}]}}}),
                Some("exactly one"),
            ),
            (
                "canary scale",
                "chat",
                serde_json::json!({"version": "1", "strategy": {"type": "Canary", "canary": {"steps": [{"setCanaryScale": {"weight": 50}}, {"setCanaryScale": {"matchTrafficWeight": true}}]}}}),
                None,
            ),
            (
                "canary scale with two fields",
                "chat",
                serde_json::json!({"version": "1", "strategy": {"type": "Canary", "canary": {"steps": [{"setCanaryScale": {"replicas": 1, "weight": 20}}]}}}),
                Some("exactly one of replicas, weight, matchTrafficWeight"),
            ),
            (
                "canary scale matching no weight",
                "chat",
                serde_json::json!({"version": "1", "strategy": {"type": "Canary", "canary": {"steps": [{"setCanaryScale": {"matchTrafficWeight": false}}]}}}),
                Some("matchTrafficWeight can only be true"),
            ),
            (
                "canary step with scale and weight",
                "chat",
                serde_json::json!({"version": "1", "strategy": {"type": "Canary", "canary": {"steps": [{"setWeight": 10, "setCanaryScale": {"replicas": 2}}]}}}),
                Some("exactly one of setWeight, pause, analysis, setCanaryScale"),
            ),
        ];
        for (case, name, spec, expected) in cases {
            agree(
                case,
                name,
                super::tests::with_chat_store(spec.clone()),
                *expected,
            );
        }
    }

    /// Both CEL and the operator accept `spec` (`expected` None) or refuse it with an
    /// error containing `expected`.
    fn agree(case: &str, name: &str, spec: serde_json::Value, expected: Option<&str>) {
        let object = serde_json::json!({
            "apiVersion": "messenger.dev/v1alpha1", "kind": "MessengerApp",
            "metadata": {"name": name, "namespace": "ns"}, "spec": spec,
        });
        let by_cel = cel(&object);
        let app: MessengerApp = serde_json::from_value(object).unwrap();
        let by_operator = validate(&app).map_err(|e| e.to_string());
        match expected {
            None => {
                assert_eq!(by_cel, Ok(()), "{case}: CEL");
                assert_eq!(by_operator, Ok(()), "{case}: operator");
            }
            Some(fragment) => {
                let cel_error = by_cel.expect_err(case);
                assert!(cel_error.contains(fragment), "{case}: CEL said {cel_error}");
                let operator_error = by_operator.expect_err(case);
                assert!(
                    operator_error.contains(fragment),
                    "{case}: operator said {operator_error}"
                );
            }
        }
    }

    /// Chat keeps everything in MongoDB; running it on pod memory must be asked for.
    #[test]
    fn chat_store_must_be_named() {
        let mongodb = serde_json::json!({"name": "mongodb", "key": "uri"});
        let required = Some("spec.dependencies.mongodb is required");
        let contradiction = Some("chatInMemory and mongodb contradict each other");
        let cases = [
            (
                "no dependencies",
                serde_json::json!({"version": "1"}),
                required,
            ),
            (
                "dependencies without mongodb",
                serde_json::json!({"version": "1", "dependencies": {"redis": {"name": "r", "key": "url"}}}),
                required,
            ),
            (
                "chat in memory turned off",
                serde_json::json!({"version": "1", "dependencies": {"chatInMemory": false}}),
                required,
            ),
            (
                "mongodb",
                serde_json::json!({"version": "1", "dependencies": {"mongodb": mongodb}}),
                None,
            ),
            (
                "chat in memory asked for",
                serde_json::json!({"version": "1", "dependencies": {"chatInMemory": true}}),
                None,
            ),
            (
                "both",
                serde_json::json!({"version": "1", "dependencies": {"mongodb": mongodb, "chatInMemory": true}}),
                contradiction,
            ),
        ];
        for (case, spec, expected) in cases {
            agree(case, "chat", spec, expected);
        }
    }
}
