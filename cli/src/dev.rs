//! `messenger dev`: gateway, auth, users, friends and chat in one process, talking real
//! gRPC over loopback as in production, on in-memory stores and an in-process event bus —
//! or on real PostgreSQL, Redis, Kafka and MongoDB when told where they are.
//!
//! [`plan`] (pure, table-tested) turns the flags into the variables each service's binary
//! would read; [`run`] builds the configurations from them, binds every socket before
//! anything starts, runs the five services until Ctrl-C or until one fails, and stops all.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use clap::Args;
use messenger_common::config::process_env;
use messenger_common::events::{EventsConfig, InMemoryEventBus};
use messenger_common::service::BindError;
use messenger_common::{ConfigError, LogFormat, Service, Shutdown};
use tokio::task::JoinSet;

/// How long start-up may take before `messenger dev` gives up (a store that accepts
/// connections but never answers).
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the services may drain after Ctrl-C.
const STOP_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Args, Debug, Clone)]
pub struct DevArgs {
    /// PostgreSQL server for auth, users and friends (each creates its own database).
    /// Goes with --redis and --kafka.
    #[arg(long, env = "DATABASE_URL", value_name = "URL")]
    pub postgres: Option<String>,
    /// Redis for sessions and caches. Goes with --postgres and --kafka.
    #[arg(long, env = "REDIS_URL", value_name = "URL")]
    pub redis: Option<String>,
    /// Kafka bootstrap servers (`host:port,...`) for the events. Goes with --postgres and
    /// --redis.
    #[arg(long, env = "KAFKA_BROKERS", value_name = "BROKERS")]
    pub kafka: Option<String>,
    /// MongoDB for chats and messages (on its own; without it they stay in memory).
    #[arg(long, env = "MONGODB_URI", value_name = "URI")]
    pub mongodb: Option<String>,
    /// Create two users who are friends, with a chat and a few messages, and print their
    /// credentials.
    #[arg(long)]
    pub seed_demo: bool,
    /// Added to every default port (8080, 8001-8004, 9001-9004, 9080), to run beside
    /// another instance.
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub port_offset: u16,
    /// Address every socket binds; the default keeps the dev mode off the network.
    #[arg(long, default_value = "127.0.0.1", value_name = "IP")]
    pub listen: IpAddr,
}

/// What stops `messenger dev`; each is printed as one line.
#[derive(Debug, thiserror::Error)]
pub enum DevError {
    #[error("{0}")]
    Usage(String),
    #[error("{service}: {error}")]
    Config {
        service: &'static str,
        error: ConfigError,
    },
    #[error("{service}: {error}")]
    Bind {
        service: &'static str,
        error: BindError,
    },
    #[error("{service} stopped: {reason}")]
    Stopped {
        service: &'static str,
        reason: String,
    },
    #[error("{0}")]
    Start(String),
    #[error("demo data: {0}")]
    Seed(String),
}

/// The five services' names, in start order: users first, so it listens to the event bus
/// before anyone can register; the gateway last.
pub const SERVICES: [&str; 5] = ["users", "friends", "chat", "auth", "gateway"];

/// Where the real stores are, when they are used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RealStores {
    pub postgres: url::Url,
    pub redis: String,
    pub kafka: String,
}

/// Each service's variables, exactly as its binary would read them from the environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// `None`: in-memory stores and the in-process event bus.
    pub real: Option<RealStores>,
    pub vars: BTreeMap<&'static str, BTreeMap<&'static str, String>>,
    pub gateway_url: String,
}

impl Plan {
    /// A lookup over one service's variables, for its `Config::from_lookup`.
    pub fn lookup(&self, service: &str) -> impl Fn(&str) -> Option<String> + use<> {
        let vars = self.vars.get(service).cloned().unwrap_or_default();
        move |name| vars.get(name).cloned()
    }

    /// The admin address of `service` (`/readyz`).
    pub fn admin_addr(&self, service: &str) -> String {
        self.vars[service]["ADMIN_ADDR"].clone()
    }
}

/// Turns the flags into each service's variables; refuses what cannot work, naming the
/// flag.
pub fn plan(args: &DevArgs, internal_key: &str) -> Result<Plan, DevError> {
    let port = |default: u16| {
        default.checked_add(args.port_offset).ok_or_else(|| {
            DevError::Usage(format!(
                "--port-offset {} puts port {default} past 65535",
                args.port_offset
            ))
        })
    };
    let listen = |default: u16| port(default).map(|p| SocketAddr::new(args.listen, p).to_string());
    // Peers are called on loopback when the sockets listen on every interface.
    let connect_ip = if args.listen.is_unspecified() {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    } else {
        args.listen
    };
    let peer =
        |default: u16| port(default).map(|p| format!("http://{}", SocketAddr::new(connect_ip, p)));

    let real = match (&args.postgres, &args.redis, &args.kafka) {
        (None, None, None) => None,
        (Some(postgres), Some(redis), Some(kafka)) => Some(RealStores {
            postgres: parse_url("--postgres", postgres, &["postgres", "postgresql"])?,
            redis: parse_url("--redis", redis, &["redis", "rediss"])?.to_string(),
            kafka: parse_brokers(kafka)?,
        }),
        (postgres, redis, kafka) => {
            let missing: Vec<&str> = [
                ("--postgres (DATABASE_URL)", postgres.is_none()),
                ("--redis (REDIS_URL)", redis.is_none()),
                ("--kafka (KAFKA_BROKERS)", kafka.is_none()),
            ]
            .into_iter()
            .filter_map(|(flag, missing)| missing.then_some(flag))
            .collect();
            return Err(DevError::Usage(format!(
                "--postgres, --redis and --kafka go together (the services keep their events \
                 in PostgreSQL and relay them to Kafka, and auth keeps sessions in Redis); \
                 missing {}",
                missing.join(", ")
            )));
        }
    };
    let mongodb = args
        .mongodb
        .as_deref()
        .map(|uri| parse_url("--mongodb", uri, &["mongodb", "mongodb+srv"]).map(|_| uri))
        .transpose()?;

    let mut vars: BTreeMap<&'static str, BTreeMap<&'static str, String>> = BTreeMap::new();
    let common = [
        ("INTERNAL_AUTH_KEY", internal_key.to_owned()),
        ("LOG_FORMAT", "text".to_owned()),
    ];
    let grpc_service = |grpc: u16, admin: u16| -> Result<BTreeMap<_, _>, DevError> {
        let mut service: BTreeMap<&'static str, String> = common.iter().cloned().collect();
        service.insert("GRPC_ADDR", listen(grpc)?);
        service.insert("ADMIN_ADDR", listen(admin)?);
        Ok(service)
    };
    let database = |name: &str| {
        real.as_ref().map(|real| {
            let mut url = real.postgres.clone();
            url.set_path(name);
            url.to_string()
        })
    };

    let mut auth = grpc_service(8001, 9001)?;
    let mut chat = grpc_service(8002, 9002)?;
    let mut friends = grpc_service(8003, 9003)?;
    let mut users = grpc_service(8004, 9004)?;
    let mut gateway: BTreeMap<&'static str, String> = common.iter().cloned().collect();
    gateway.insert("HTTP_ADDR", listen(8080)?);
    gateway.insert("ADMIN_ADDR", listen(9080)?);
    for (name, default) in [
        ("AUTH_URL", 8001),
        ("CHAT_URL", 8002),
        ("FRIENDS_URL", 8003),
        ("USERS_URL", 8004),
    ] {
        gateway.insert(name, peer(default)?);
    }
    friends.insert("USERS_URL", peer(8004)?);
    chat.insert("FRIENDS_URL", peer(8003)?);
    chat.insert("USERS_URL", peer(8004)?);

    match &real {
        None => {
            auth.insert("AUTH_STORE", "memory".to_owned());
            // No Redis: chat reads history from its store.
            chat.insert("CHAT_CACHE_TTL", "0s".to_owned());
        }
        Some(real) => {
            for (service, db) in [
                (&mut auth, "messenger_auth"),
                (&mut users, "messenger_users"),
                (&mut friends, "messenger_friends"),
            ] {
                service.insert("DATABASE_URL", database(db).unwrap_or_default());
                service.insert("REDIS_URL", real.redis.clone());
                service.insert("KAFKA_BROKERS", real.kafka.clone());
            }
            chat.insert("REDIS_URL", real.redis.clone());
            chat.insert("KAFKA_BROKERS", real.kafka.clone());
            gateway.insert("KAFKA_BROKERS", real.kafka.clone());
        }
    }
    match mongodb {
        Some(uri) => {
            chat.insert("CHAT_STORE", "mongodb".to_owned());
            chat.insert("MONGODB_URI", uri.to_owned());
        }
        None => {
            chat.insert("CHAT_STORE", "memory".to_owned());
        }
    }
    vars.insert("auth", auth);
    vars.insert("chat", chat);
    vars.insert("friends", friends);
    vars.insert("users", users);
    vars.insert("gateway", gateway);
    Ok(Plan {
        real,
        vars,
        gateway_url: peer(8080)?,
    })
}

fn parse_url(flag: &str, value: &str, schemes: &[&str]) -> Result<url::Url, DevError> {
    let url = url::Url::parse(value)
        .map_err(|error| DevError::Usage(format!("{flag}: not a URL ({error})")))?;
    if !schemes.contains(&url.scheme()) {
        return Err(DevError::Usage(format!(
            "{flag}: expected a {} URL, got scheme {:?}",
            schemes.join(" or "),
            url.scheme()
        )));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(DevError::Usage(format!("{flag}: the URL names no host")));
    }
    Ok(url)
}

fn parse_brokers(value: &str) -> Result<String, DevError> {
    let brokers: Vec<&str> = value.split(',').map(str::trim).collect();
    for broker in &brokers {
        let valid = broker
            .rsplit_once(':')
            .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
        if !valid {
            return Err(DevError::Usage(format!(
                "--kafka: {broker:?} is not host:port"
            )));
        }
    }
    Ok(brokers.join(","))
}

/// Runs the five services until Ctrl-C (exit 0) or until one of them fails (an error
/// naming it); either way every service is stopped before this returns.
pub async fn run(args: DevArgs) -> Result<(), DevError> {
    let internal_key = hex::encode(rand::random::<[u8; 32]>());
    let plan = plan(&args, &internal_key)?;
    messenger_common::telemetry::init_with_default("messenger-dev", LogFormat::Text, "warn");

    let bus = InMemoryEventBus::new();
    let in_memory = plan.real.is_none();
    let config_error = |service| move |error| DevError::Config { service, error };

    let mut users = messenger_users::Config::from_lookup(plan.lookup("users"))
        .map_err(config_error("users"))?;
    let mut friends = messenger_friends::Config::from_lookup(plan.lookup("friends"))
        .map_err(config_error("friends"))?;
    let mut chat =
        messenger_chat::Config::from_lookup(plan.lookup("chat")).map_err(config_error("chat"))?;
    // Sign-in providers (AUTH_OAUTH_*) come from the environment; their callback is this
    // gateway unless AUTH_OAUTH_REDIRECT_BASE_URL says otherwise.
    let (auth_vars, gateway_url) = (plan.lookup("auth"), plan.gateway_url.clone());
    let mut auth = messenger_auth::Config::from_lookup(move |name: &str| {
        auth_vars(name).or_else(|| match name {
            "AUTH_OAUTH_REDIRECT_BASE_URL" => {
                Some(process_env(name).unwrap_or_else(|| gateway_url.clone()))
            }
            _ if name.starts_with("AUTH_OAUTH_") => process_env(name),
            _ => None,
        })
    })
    .map_err(config_error("auth"))?;
    let mut gateway = messenger_gateway::Config::from_lookup(plan.lookup("gateway"))
        .map_err(config_error("gateway"))?;
    if in_memory {
        users.storage = messenger_users::Storage::InMemory(bus.clone());
        friends.in_memory = Some(bus.clone());
        chat.events = EventsConfig::InMemory(bus.clone());
        auth.events = EventsConfig::InMemory(bus.clone());
        gateway.events = EventsConfig::InMemory(bus.clone());
    }

    // Every socket first: a busy port stops start-up before anything runs.
    let bind_error = |service| move |error| DevError::Bind { service, error };
    let users_sockets = messenger_users::Service::bind(&users)
        .await
        .map_err(bind_error("users"))?;
    let friends_sockets = messenger_friends::Service::bind(&friends)
        .await
        .map_err(bind_error("friends"))?;
    let chat_sockets = messenger_chat::Service::bind(&chat)
        .await
        .map_err(bind_error("chat"))?;
    let auth_sockets = messenger_auth::Service::bind(&auth)
        .await
        .map_err(bind_error("auth"))?;
    let gateway_sockets = messenger_gateway::Service::bind(&gateway)
        .await
        .map_err(bind_error("gateway"))?;

    let shutdown = Shutdown::on_signal();
    let mut running = JoinSet::new();
    start::<messenger_users::Service>(&mut running, users, users_sockets, &shutdown);
    start::<messenger_friends::Service>(&mut running, friends, friends_sockets, &shutdown);
    start::<messenger_chat::Service>(&mut running, chat, chat_sockets, &shutdown);
    start::<messenger_auth::Service>(&mut running, auth, auth_sockets, &shutdown);
    start::<messenger_gateway::Service>(&mut running, gateway, gateway_sockets, &shutdown);

    messenger_common::tls::install_crypto_provider();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .map_err(|error| DevError::Start(error.to_string()))?;
    // Until Ctrl-C, or until a service stops on its own (its error is the outcome).
    let outcome = async {
        tokio::select! {
            biased;
            () = shutdown.cancelled() => return Ok(()),
            Some(joined) = running.join_next() => return first_exit(joined, &shutdown),
            ready = wait_until_ready(&http, &plan) => ready?,
        }
        let demo = if args.seed_demo {
            let seeded = crate::seed::seed(&http, &plan.gateway_url).await;
            Some(seeded.map_err(DevError::Seed)?)
        } else {
            None
        };
        println!("{}", banner(&plan, demo.as_deref()));
        tokio::select! {
            biased;
            () = shutdown.cancelled() => Ok(()),
            Some(joined) = running.join_next() => first_exit(joined, &shutdown),
        }
    }
    .await;

    shutdown.trigger();
    let drained = tokio::time::timeout(STOP_TIMEOUT, async {
        while let Some(joined) = running.join_next().await {
            if let Ok((service, Err(reason))) = joined {
                tracing::warn!(service, %reason, "stopped with an error");
            }
        }
    })
    .await;
    if drained.is_err() {
        eprintln!("messenger dev: some services did not stop within {STOP_TIMEOUT:?}");
    }
    if outcome.is_ok() {
        eprintln!("messenger dev: stopped");
    }
    outcome
}

type Finished = (&'static str, Result<(), String>);

/// Starts one service on a child of `shutdown`: when it fails it stops itself, and this
/// process notices through `running`.
fn start<S>(
    running: &mut JoinSet<Finished>,
    config: S::Config,
    listeners: S::Listeners,
    shutdown: &Shutdown,
) where
    S: Service,
{
    let shutdown = shutdown.child();
    running.spawn(async move {
        let result = S::run(config, listeners, shutdown).await;
        (S::NAME, result.map_err(|error| error.to_string()))
    });
}

/// What the first service to stop means: nothing after Ctrl-C (the services stop as
/// asked, whichever of the two the runtime notices first), a failure otherwise.
fn first_exit(
    joined: Result<Finished, tokio::task::JoinError>,
    shutdown: &Shutdown,
) -> Result<(), DevError> {
    if shutdown.is_triggered() {
        Ok(())
    } else {
        Err(stopped(joined))
    }
}

fn stopped(joined: Result<Finished, tokio::task::JoinError>) -> DevError {
    match joined {
        Ok((service, Err(reason))) => DevError::Stopped { service, reason },
        Ok((service, Ok(()))) => DevError::Stopped {
            service,
            reason: "it stopped by itself".to_owned(),
        },
        Err(error) => DevError::Start(format!("a service panicked: {error}")),
    }
}

/// Waits until every service's `/readyz` answers 200.
async fn wait_until_ready(http: &reqwest::Client, plan: &Plan) -> Result<(), DevError> {
    let deadline = tokio::time::Instant::now() + START_TIMEOUT;
    for service in SERVICES {
        let url = format!("http://{}/readyz", plan.admin_addr(service));
        loop {
            let ready = http
                .get(&url)
                .send()
                .await
                .is_ok_and(|response| response.status().is_success());
            if ready {
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(DevError::Start(format!(
                    "{service} was not ready within {START_TIMEOUT:?} ({url})"
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(())
}

/// What a newcomer needs: where the web client and the API are, a walkthrough to paste,
/// and the demo users' credentials when there are some.
pub fn banner(plan: &Plan, demo: Option<&str>) -> String {
    let api = &plan.gateway_url;
    let storage = match &plan.real {
        None => "in memory (nothing is kept after Ctrl-C)".to_owned(),
        Some(real) => format!(
            "PostgreSQL {}, Redis, Kafka {}",
            host_of(&real.postgres),
            real.kafka
        ),
    };
    let chats = if plan.vars["chat"]["CHAT_STORE"] == "mongodb" {
        "chats on MongoDB"
    } else {
        "chats in memory"
    };
    format!(
        "\nmessenger dev is running: storage {storage}, {chats}\n\
         \n  Web client   {api}/\
         \n  REST API     {api}/v1   (OpenAPI document: {api}/v1/openapi.json)\
         \n\nTry it with curl:\n\n{walkthrough}\n{demo}Stop with Ctrl-C.\n",
        walkthrough = walkthrough(api),
        demo = demo.map(|demo| format!("{demo}\n")).unwrap_or_default(),
    )
}

fn host_of(url: &url::Url) -> String {
    match url.port() {
        Some(port) => format!("{}:{port}", url.host_str().unwrap_or_default()),
        None => url.host_str().unwrap_or_default().to_owned(),
    }
}

/// A shell session that registers, logs in and reads the new profile; the banner prints
/// it and a test runs it verbatim.
pub fn walkthrough(api: &str) -> String {
    format!(
        "  curl -s -X POST {api}/v1/auth/register -H 'content-type: application/json' \\\n\
         \x20   -d '{{\"email\":\"ann@example.com\",\"password\":\"correct horse battery\",\"nickname\":\"ann\"}}'\n\
         \x20 TOKEN=$(curl -s -X POST {api}/v1/auth/login -H 'content-type: application/json' \\\n\
         \x20   -d '{{\"email\":\"ann@example.com\",\"password\":\"correct horse battery\"}}' \\\n\
         \x20   | sed -E 's/.*\"access_token\":\"([^\"]+)\".*/\\1/')\n\
         \x20 curl -s {api}/v1/users/me -H \"authorization: Bearer $TOKEN\"\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(flags: &[(&str, &str)]) -> DevArgs {
        let mut args = DevArgs {
            postgres: None,
            redis: None,
            kafka: None,
            mongodb: None,
            seed_demo: false,
            port_offset: 0,
            listen: IpAddr::V4(Ipv4Addr::LOCALHOST),
        };
        for (flag, value) in flags {
            let text = Some((*value).to_owned());
            match *flag {
                "postgres" => args.postgres = text,
                "redis" => args.redis = text,
                "kafka" => args.kafka = text,
                "mongodb" => args.mongodb = text,
                "port-offset" => args.port_offset = value.parse().unwrap(),
                "listen" => args.listen = value.parse().unwrap(),
                other => panic!("no flag {other}"),
            }
        }
        args
    }

    const KEY: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn without_flags_everything_is_in_memory_on_the_default_ports() {
        let plan = plan(&args(&[]), KEY).unwrap();
        assert_eq!(plan.real, None);
        assert_eq!(plan.gateway_url, "http://127.0.0.1:8080");
        assert_eq!(plan.vars["gateway"]["HTTP_ADDR"], "127.0.0.1:8080");
        assert_eq!(plan.vars["auth"]["AUTH_STORE"], "memory");
        assert_eq!(plan.vars["chat"]["CHAT_STORE"], "memory");
        assert_eq!(plan.vars["chat"]["CHAT_CACHE_TTL"], "0s");
        for (service, grpc, admin) in [
            ("auth", "127.0.0.1:8001", "127.0.0.1:9001"),
            ("chat", "127.0.0.1:8002", "127.0.0.1:9002"),
            ("friends", "127.0.0.1:8003", "127.0.0.1:9003"),
            ("users", "127.0.0.1:8004", "127.0.0.1:9004"),
        ] {
            assert_eq!(plan.vars[service]["GRPC_ADDR"], grpc);
            assert_eq!(plan.vars[service]["ADMIN_ADDR"], admin);
            assert!(!plan.vars[service].contains_key("DATABASE_URL"));
        }
        for service in SERVICES {
            assert_eq!(plan.vars[service]["INTERNAL_AUTH_KEY"], KEY);
        }
        assert_eq!(plan.vars["friends"]["USERS_URL"], "http://127.0.0.1:8004");
        assert_eq!(plan.vars["gateway"]["CHAT_URL"], "http://127.0.0.1:8002");
    }

    #[test]
    fn every_configuration_accepts_its_variables() {
        for flags in [
            vec![],
            vec![
                ("postgres", "postgres://app:pw@db:5432/anything"),
                ("redis", "redis://cache:6379"),
                ("kafka", "k1:9092, k2:9092"),
                ("mongodb", "mongodb://m:27017/chat"),
            ],
        ] {
            let plan = plan(&args(&flags), KEY).unwrap();
            messenger_auth::Config::from_lookup(plan.lookup("auth")).unwrap();
            messenger_users::Config::from_lookup(plan.lookup("users")).unwrap();
            messenger_friends::Config::from_lookup(plan.lookup("friends")).unwrap();
            messenger_chat::Config::from_lookup(plan.lookup("chat")).unwrap();
            messenger_gateway::Config::from_lookup(plan.lookup("gateway")).unwrap();
        }
    }

    #[test]
    fn real_stores_give_each_service_its_own_database() {
        let plan = plan(
            &args(&[
                (
                    "postgres",
                    "postgres://app:pw@db:5432/postgres?sslmode=disable",
                ),
                ("redis", "redis://cache:6379"),
                ("kafka", "k1:9092, k2:9092"),
            ]),
            KEY,
        )
        .unwrap();
        assert_eq!(
            plan.vars["auth"]["DATABASE_URL"],
            "postgres://app:pw@db:5432/messenger_auth?sslmode=disable"
        );
        assert_eq!(
            plan.vars["users"]["DATABASE_URL"],
            "postgres://app:pw@db:5432/messenger_users?sslmode=disable"
        );
        assert_eq!(
            plan.vars["friends"]["DATABASE_URL"],
            "postgres://app:pw@db:5432/messenger_friends?sslmode=disable"
        );
        assert!(
            !plan.vars["auth"].contains_key("AUTH_STORE"),
            "postgres is auth's default"
        );
        assert_eq!(plan.vars["gateway"]["KAFKA_BROKERS"], "k1:9092,k2:9092");
        assert_eq!(plan.vars["chat"]["REDIS_URL"], "redis://cache:6379");
        assert!(!plan.vars["chat"].contains_key("CHAT_CACHE_TTL"));
        assert!(
            !banner(&plan, None).contains("pw"),
            "the banner shows no password"
        );
    }

    #[test]
    fn mongodb_alone_moves_only_the_chats() {
        let plan = plan(&args(&[("mongodb", "mongodb://m:27017/chat")]), KEY).unwrap();
        assert_eq!(plan.real, None);
        assert_eq!(plan.vars["chat"]["CHAT_STORE"], "mongodb");
        assert_eq!(plan.vars["chat"]["MONGODB_URI"], "mongodb://m:27017/chat");
        assert_eq!(plan.vars["auth"]["AUTH_STORE"], "memory");
    }

    #[test]
    fn offsets_and_listen_addresses_move_every_socket() {
        let plan = plan(&args(&[("port-offset", "100"), ("listen", "0.0.0.0")]), KEY).unwrap();
        assert_eq!(plan.vars["gateway"]["HTTP_ADDR"], "0.0.0.0:8180");
        assert_eq!(plan.vars["users"]["ADMIN_ADDR"], "0.0.0.0:9104");
        // Peers are called on loopback, not on 0.0.0.0.
        assert_eq!(plan.vars["chat"]["FRIENDS_URL"], "http://127.0.0.1:8103");
        assert_eq!(plan.gateway_url, "http://127.0.0.1:8180");
    }

    #[test]
    fn unusable_flags_are_refused_naming_the_flag() {
        for (flags, expected) in [
            (
                vec![("postgres", "postgres://db/x")],
                "missing --redis (REDIS_URL), --kafka (KAFKA_BROKERS)",
            ),
            (
                vec![("redis", "redis://r"), ("kafka", "k:9092")],
                "missing --postgres (DATABASE_URL)",
            ),
            (
                vec![
                    ("postgres", "mysql://db/x"),
                    ("redis", "redis://r"),
                    ("kafka", "k:9092"),
                ],
                "--postgres: expected a postgres or postgresql URL",
            ),
            (
                vec![
                    ("postgres", "not a url"),
                    ("redis", "redis://r"),
                    ("kafka", "k:9092"),
                ],
                "--postgres: not a URL",
            ),
            (
                vec![
                    ("postgres", "postgres://db"),
                    ("redis", "redis://r"),
                    ("kafka", "k9092"),
                ],
                "--kafka: \"k9092\" is not host:port",
            ),
            (
                vec![("mongodb", "http://m")],
                "--mongodb: expected a mongodb or mongodb+srv URL",
            ),
            (
                vec![("port-offset", "60000")],
                "--port-offset 60000 puts port 8001 past 65535",
            ),
        ] {
            let error = plan(&args(&flags), KEY).expect_err(expected).to_string();
            assert!(
                error.contains(expected),
                "{error:?} should contain {expected:?}"
            );
        }
    }

    #[test]
    fn the_walkthrough_uses_the_gateway_address() {
        let text = walkthrough("http://127.0.0.1:8180");
        assert!(text.contains("http://127.0.0.1:8180/v1/auth/register"));
        assert!(text.contains("http://127.0.0.1:8180/v1/users/me"));
        assert!(!text.contains("8080"));
    }
}
