//! [`Service`]: the one shape every messenger service has — configuration from the
//! environment, listeners bound before start, and `run(config, listeners, shutdown)` that
//! serves until `shutdown` fires and then drains. [`main`] is a service binary's whole
//! `main`; `messenger dev` starts all five through the same trait in one process.

use std::fmt::Display;
use std::future::Future;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::config::{ConfigError, LogFormat};
use crate::shutdown::Shutdown;

/// A service: what its binary and the all-in-one mode need to start it.
pub trait Service: 'static {
    /// Its name in logs and messages (`auth`, `gateway`, ...).
    const NAME: &'static str;
    /// Everything it needs to start, read by [`Service::config_from_env`].
    type Config: Send + 'static;
    /// Its sockets, bound before it starts (so a busy port fails start-up at once, and
    /// tests can bind port 0).
    type Listeners: Send + 'static;
    /// What running fails with.
    type Error: Display + Send + 'static;

    /// Reads the configuration from the process environment.
    fn config_from_env() -> Result<Self::Config, ConfigError>;

    /// How it logs (`LOG_FORMAT`).
    fn log_format(config: &Self::Config) -> LogFormat;

    /// Binds its listeners; the error names the variable and address that failed.
    fn bind(
        config: &Self::Config,
    ) -> impl Future<Output = Result<Self::Listeners, BindError>> + Send;

    /// Serves until `shutdown` fires, then drains in-flight work. A failure stops this
    /// service's own tasks only: it must never trigger `shutdown` (others may share it).
    fn run(
        config: Self::Config,
        listeners: Self::Listeners,
        shutdown: Shutdown,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send;

    /// Applies its database migrations and returns: what `<binary> migrate` runs (the
    /// operator's migrations Job, before a new version's pods start). A service without a
    /// database keeps this default, which has nothing to apply.
    fn migrate(
        _config: Self::Config,
    ) -> impl Future<Output = Result<Migrated, Self::Error>> + Send {
        std::future::ready(Ok(Migrated::NothingToMigrate))
    }
}

/// What `<binary> migrate` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Migrated {
    /// Every migration is applied (those applied before were left alone).
    Applied,
    /// The service keeps no schema (no database, or in-memory storage).
    NothingToMigrate,
}

/// What a service binary was asked to do by its arguments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// No argument: serve until SIGTERM/SIGINT.
    Serve,
    /// `migrate`: apply the database migrations and exit.
    Migrate,
}

impl Mode {
    /// Reads the arguments after the program name; anything else is refused with the usage.
    pub fn from_args(name: &str, args: impl IntoIterator<Item = String>) -> Result<Mode, String> {
        let args: Vec<String> = args.into_iter().collect();
        match args.as_slice() {
            [] => Ok(Mode::Serve),
            [one] if one == "migrate" => Ok(Mode::Migrate),
            _ => Err(format!(
                "unexpected arguments {args:?}; usage: messenger-{name} [migrate]"
            )),
        }
    }
}

/// A listener could not be bound.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr} ({variable}): {source}")]
pub struct BindError {
    /// The variable that sets the address (`GRPC_ADDR`, `ADMIN_ADDR`, `HTTP_ADDR`).
    pub variable: &'static str,
    /// The address.
    pub addr: SocketAddr,
    /// Why (e.g. address already in use).
    pub source: std::io::Error,
}

/// Binds `addr`, the value of `variable`.
pub async fn bind(variable: &'static str, addr: SocketAddr) -> Result<TcpListener, BindError> {
    TcpListener::bind(addr).await.map_err(|source| BindError {
        variable,
        addr,
        source,
    })
}

/// How long a service keeps serving after SIGTERM with `/readyz` failing, before it stops
/// accepting and drains (e.g. `5s`; default none). Behind a Kubernetes Service this covers
/// the moment until kube-proxy and load balancers stop sending new connections to a pod
/// that is being deleted.
pub const SHUTDOWN_DELAY_ENV: &str = "SHUTDOWN_DELAY";

/// A service binary's `main`: reads the configuration, starts logging, binds the
/// listeners and runs until SIGTERM/SIGINT (after [`SHUTDOWN_DELAY_ENV`]) — or, with the
/// argument `migrate`, applies the database migrations and exits. Any failure ends with
/// one line naming it and exit status 1 (2 for bad arguments).
pub async fn main<S: Service>() -> ExitCode {
    crate::tls::install_crypto_provider();
    let mode = match Mode::from_args(S::NAME, std::env::args().skip(1)) {
        Ok(mode) => mode,
        Err(usage) => {
            eprintln!("messenger-{}: {usage}", S::NAME);
            return ExitCode::from(2);
        }
    };
    // Read first: a bad value must fail start-up, not the shutdown it would delay.
    let drain_delay = match crate::config::env_duration(SHUTDOWN_DELAY_ENV, Duration::ZERO) {
        Ok(delay) => delay,
        Err(error) => {
            eprintln!("messenger-{}: {error}", S::NAME);
            return ExitCode::FAILURE;
        }
    };
    let config = match S::config_from_env() {
        Ok(config) => config,
        Err(error) => {
            eprintln!("messenger-{}: {error}", S::NAME);
            return ExitCode::FAILURE;
        }
    };
    crate::telemetry::init(S::NAME, S::log_format(&config));
    if mode == Mode::Migrate {
        return match S::migrate(config).await {
            Ok(Migrated::Applied) => {
                tracing::info!("migrations applied");
                ExitCode::SUCCESS
            }
            Ok(Migrated::NothingToMigrate) => {
                tracing::info!("{} keeps no database schema: nothing to migrate", S::NAME);
                ExitCode::SUCCESS
            }
            Err(error) => {
                tracing::error!(%error, "migrations failed");
                eprintln!("messenger-{}: migrations failed: {error}", S::NAME);
                ExitCode::FAILURE
            }
        };
    }
    let listeners = match S::bind(&config).await {
        Ok(listeners) => listeners,
        Err(error) => {
            tracing::error!(%error, "cannot start");
            return ExitCode::FAILURE;
        }
    };
    match S::run(
        config,
        listeners,
        Shutdown::on_signal_with_delay(drain_delay),
    )
    .await
    {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(%error, "{} service failed", S::NAME);
            ExitCode::FAILURE
        }
    }
}

/// Declares `pub struct Service` implementing [`Service`] for a gRPC service crate whose
/// `Config` has the shared settings in `config.service`, whose listeners are
/// [`crate::grpc::Listeners`], and whose `run(config, listeners, shutdown)` serves it:
///
/// ```ignore
/// messenger_common::grpc_service!("friends", Config, Error, run);
/// // with `<binary> migrate` applying its database migrations:
/// messenger_common::grpc_service!("friends", Config, Error, run, migrate = migrate);
/// ```
#[macro_export]
macro_rules! grpc_service {
    ($name:literal, $config:ty, $error:ty, $run:path) => {
        $crate::grpc_service!(@impl $name, $config, $error, $run, {});
    };
    ($name:literal, $config:ty, $error:ty, $run:path, migrate = $migrate:path) => {
        $crate::grpc_service!(@impl $name, $config, $error, $run, {
            async fn migrate(config: $config) -> Result<$crate::service::Migrated, $error> {
                $migrate(config).await
            }
        });
    };
    (@impl $name:literal, $config:ty, $error:ty, $run:path, { $($migrate:tt)* }) => {
        #[doc = concat!("The ", $name, " service, started by its binary and by `messenger dev` through [`messenger_common::Service`].")]
        pub struct Service;

        impl $crate::Service for Service {
            const NAME: &'static str = $name;
            type Config = $config;
            type Listeners = $crate::grpc::Listeners;
            type Error = $error;

            fn config_from_env() -> Result<$config, $crate::ConfigError> {
                <$config>::from_env()
            }

            fn log_format(config: &$config) -> $crate::LogFormat {
                config.service.log_format
            }

            async fn bind(
                config: &$config,
            ) -> Result<$crate::grpc::Listeners, $crate::service::BindError> {
                $crate::grpc::Listeners::bind(&config.service).await
            }

            async fn run(
                config: $config,
                listeners: $crate::grpc::Listeners,
                shutdown: $crate::Shutdown,
            ) -> Result<(), $error> {
                $run(config, listeners, shutdown).await
            }

            $($migrate)*
        }
    };
}
