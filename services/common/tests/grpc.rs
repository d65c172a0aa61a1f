//! The gRPC bootstrap on port 0: health, reflection, error mapping, metrics, request
//! deadline, caller verification and request ids, and graceful shutdown, exercised
//! through real gRPC clients.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use messenger_common::grpc::{GrpcServer, connect_channel};
use messenger_common::identity::{self, Caller, IDENTITY_METADATA, InternalKey};
use messenger_common::testing::{self, SignedAs};
use messenger_common::{Metrics, ServiceError, Shutdown};
use messenger_proto::v1::users_service_client::UsersServiceClient;
use messenger_proto::v1::users_service_server::{UsersService, UsersServiceServer};
use messenger_proto::v1::{
    GetUserProfileByNicknameRequest, GetUserProfileRequest, GetUserProfilesRequest,
    GetUserProfilesResponse, SearchUsersRequest, SearchUsersResponse, UpdateUserProfileRequest,
    UserProfile,
};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tonic::{Request, Response, Status};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// A users service whose methods show off one behaviour each.
struct Stub {
    /// Signalled when a slow call has started.
    started: Arc<Notify>,
}

#[tonic::async_trait]
impl UsersService for Stub {
    /// Fails with a domain error.
    async fn get_user_profile(
        &self,
        request: Request<GetUserProfileRequest>,
    ) -> Result<Response<UserProfile>, Status> {
        Err(ServiceError::NotFound(format!("no user {}", request.get_ref().user_id)).into())
    }

    /// Takes as long as the nickname says (in ms), then answers.
    async fn get_user_profile_by_nickname(
        &self,
        request: Request<GetUserProfileByNicknameRequest>,
    ) -> Result<Response<UserProfile>, Status> {
        let millis: u64 = request.get_ref().nickname.parse().unwrap_or(0);
        self.started.notify_one();
        tokio::time::sleep(Duration::from_millis(millis)).await;
        Ok(Response::new(UserProfile {
            nickname: request.into_inner().nickname,
            ..Default::default()
        }))
    }

    /// Fails internally.
    async fn update_user_profile(
        &self,
        _: Request<UpdateUserProfileRequest>,
    ) -> Result<Response<UserProfile>, Status> {
        Err(ServiceError::internal(anyhow::anyhow!("disk on fire at /var/secret")).into())
    }

    async fn get_user_profiles(
        &self,
        _: Request<GetUserProfilesRequest>,
    ) -> Result<Response<GetUserProfilesResponse>, Status> {
        Err(Status::unimplemented("not used by these tests"))
    }

    /// Answers, as its page token, what the handler sees of its caller and what a peer
    /// call it makes would carry: `caller|request id|peer caller|peer request id|peer
    /// traceparent`.
    async fn search_users(
        &self,
        request: Request<SearchUsersRequest>,
    ) -> Result<Response<SearchUsersResponse>, Status> {
        let seen = identity::caller(&request).map(ToString::to_string);
        let (peer, _) = messenger_common::grpc::peer_request((), Duration::from_secs(1));
        let metadata = |name: &str| {
            peer.metadata()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned()
        };
        let peer_caller = testing::test_key()
            .verify(&metadata(IDENTITY_METADATA))
            .map(|caller| caller.to_string())
            .unwrap_or_else(|error| error.to_string());
        let token = [
            seen.unwrap_or_default(),
            messenger_common::grpc::current_request_id().unwrap_or_default(),
            peer_caller,
            metadata("x-request-id"),
            metadata("traceparent"),
        ]
        .join("|");
        Ok(Response::new(SearchUsersResponse {
            users: Vec::new(),
            next_page_token: token,
        }))
    }
}

type UsersClient = UsersServiceClient<
    tonic::service::interceptor::InterceptedService<tonic::transport::Channel, SignedAs>,
>;

struct Running {
    addr: SocketAddr,
    started: Arc<Notify>,
    metrics: Metrics,
    shutdown: Shutdown,
    server: JoinHandle<Result<(), messenger_common::Error>>,
}

async fn start(request_timeout: Duration) -> Running {
    start_with(request_timeout, false).await
}

async fn start_with(request_timeout: Duration, reflection: bool) -> Running {
    start_limited(request_timeout, reflection, 1024).await
}

async fn start_limited(request_timeout: Duration, reflection: bool, max_calls: usize) -> Running {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let metrics = Metrics::new();
    let shutdown = Shutdown::new();
    let started = Arc::new(Notify::new());
    let server = GrpcServer::new(&metrics)
        .request_timeout(request_timeout)
        .drain_timeout(Duration::from_secs(3))
        .internal_key(testing::test_key())
        .reflection(reflection)
        .max_concurrent_calls(max_calls)
        .add_service(UsersServiceServer::new(Stub {
            started: started.clone(),
        }));
    let server = tokio::spawn(server.serve_with_listener(listener, shutdown.clone()));
    Running {
        addr,
        started,
        metrics,
        shutdown,
        server,
    }
}

impl Running {
    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    async fn health(&self) -> HealthClient<tonic::transport::Channel> {
        HealthClient::new(self.channel())
    }

    fn channel(&self) -> tonic::transport::Channel {
        connect_channel(&self.url(), Duration::from_secs(5)).unwrap()
    }

    /// A client calling as the gateway does, signed with the server's key.
    async fn users(&self) -> UsersClient {
        UsersServiceClient::with_interceptor(self.channel(), SignedAs::service("gateway"))
    }

    /// A client that signs nothing.
    fn unsigned(&self) -> UsersServiceClient<tonic::transport::Channel> {
        UsersServiceClient::new(self.channel())
    }
}

async fn status_of(
    client: &mut HealthClient<tonic::transport::Channel>,
    service: &str,
) -> ServingStatus {
    let response = client
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await
        .unwrap();
    response.into_inner().status()
}

#[tokio::test]
async fn health_reports_serving_and_metrics_count_the_calls() {
    let server = start(Duration::from_secs(5)).await;
    let mut health = server.health().await;
    assert_eq!(status_of(&mut health, "").await, ServingStatus::Serving);
    assert_eq!(
        status_of(&mut health, "messenger.v1.UsersService").await,
        ServingStatus::Serving
    );
    let unknown = health
        .check(HealthCheckRequest {
            service: "messenger.v1.Nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::NotFound);

    let text = server.metrics.render();
    assert!(
        text.contains(
            r#"grpc_server_handled_total{method="/grpc.health.v1.Health/Check",code="OK"} 2"#
        ),
        "{text}"
    );
    assert!(
        text.contains(
            r#"grpc_server_handled_total{method="/grpc.health.v1.Health/Check",code="NotFound"} 1"#
        ),
        "{text}"
    );
    assert!(
        text.contains(
            r#"grpc_server_handling_seconds_count{method="/grpc.health.v1.Health/Check"} 3"#
        ),
        "{text}"
    );
    server.shutdown.trigger();
    server.server.await.unwrap().unwrap();
}

#[tokio::test]
async fn service_errors_reach_the_client_with_their_code_and_are_counted() {
    let server = start(Duration::from_secs(5)).await;
    let mut users = server.users().await;

    let not_found = users
        .get_user_profile(GetUserProfileRequest {
            user_id: "u-1".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(not_found.code(), tonic::Code::NotFound);
    assert_eq!(not_found.message(), "no user u-1");

    let internal = users
        .update_user_profile(UpdateUserProfileRequest::default())
        .await
        .unwrap_err();
    assert_eq!(internal.code(), tonic::Code::Internal);
    assert!(
        !internal.message().contains("secret"),
        "{}",
        internal.message()
    );

    let ok = users
        .get_user_profile_by_nickname(GetUserProfileByNicknameRequest {
            nickname: "0".into(),
        })
        .await
        .unwrap();
    assert_eq!(ok.get_ref().nickname, "0");

    let text = server.metrics.render();
    for line in [
        r#"grpc_server_handled_total{method="/messenger.v1.UsersService/GetUserProfile",code="NotFound"} 1"#,
        r#"grpc_server_handled_total{method="/messenger.v1.UsersService/UpdateUserProfile",code="Internal"} 1"#,
        r#"grpc_server_handled_total{method="/messenger.v1.UsersService/GetUserProfileByNickname",code="OK"} 1"#,
    ] {
        assert!(text.contains(line), "missing {line} in\n{text}");
    }
    server.shutdown.trigger();
    server.server.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_request_running_past_the_deadline_is_cut_off() {
    let server = start(Duration::from_millis(200)).await;
    let mut users = server.users().await;
    let started = std::time::Instant::now();
    let error = users
        .get_user_profile_by_nickname(GetUserProfileByNicknameRequest {
            nickname: "3000".into(),
        })
        .await
        .unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(error.code(), tonic::Code::DeadlineExceeded, "{error:?}");
    let text = server.metrics.render();
    assert!(
        text.contains(
            r#"method="/messenger.v1.UsersService/GetUserProfileByNickname",code="DeadlineExceeded""#
        ),
        "{text}"
    );
    server.shutdown.trigger();
    server.server.await.unwrap().unwrap();
}

#[tokio::test]
async fn calls_beyond_the_limit_are_refused_at_once_while_health_still_answers() {
    let server = start_limited(Duration::from_secs(10), false, 2).await;
    // Two slow calls take both slots.
    let mut slow = Vec::new();
    for _ in 0..2 {
        let mut users = server.users().await;
        slow.push(tokio::spawn(async move {
            users
                .get_user_profile_by_nickname(GetUserProfileByNicknameRequest {
                    nickname: "1500".into(),
                })
                .await
        }));
        server.started.notified().await;
    }

    let mut users = server.users().await;
    let refused = users
        .get_user_profile_by_nickname(GetUserProfileByNicknameRequest {
            nickname: "0".into(),
        })
        .await
        .expect_err("a third call while two run must be refused, not queued");
    assert_eq!(
        refused.code(),
        tonic::Code::ResourceExhausted,
        "{refused:?}"
    );
    assert!(
        refused.message().contains("limit of 2 calls"),
        "{refused:?}"
    );
    // Probes still see the server alive.
    assert_eq!(
        status_of(&mut server.health().await, "").await,
        ServingStatus::Serving
    );

    // The slow calls finish normally and free their slots.
    for call in slow {
        call.await
            .unwrap()
            .expect("the calls within the limit are served");
    }
    users
        .get_user_profile_by_nickname(GetUserProfileByNicknameRequest {
            nickname: "0".into(),
        })
        .await
        .expect("a call after the load has passed is served");
    server.shutdown.trigger();
    server.server.await.unwrap().unwrap();
}

#[tokio::test]
async fn reflection_is_off_unless_asked_for() {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;

    let server = start(Duration::from_secs(5)).await;
    let mut client = ServerReflectionClient::new(server.channel());
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let error = client
        .server_reflection_info(tokio_stream::once(request))
        .await
        .expect_err("no reflection service");
    assert_eq!(error.code(), tonic::Code::Unimplemented, "{error:?}");
    server.shutdown.trigger();
    server.server.await.unwrap().unwrap();
}

#[tokio::test]
async fn reflection_lists_the_messenger_services_when_on() {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let server = start_with(Duration::from_secs(5), true).await;
    let mut client = ServerReflectionClient::new(server.channel());
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = client
        .server_reflection_info(tokio_stream::once(request))
        .await
        .unwrap()
        .into_inner();
    let response = responses.message().await.unwrap().expect("one response");
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected reflection response {response:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for expected in [
        "messenger.v1.UsersService",
        "messenger.v1.AuthService",
        "grpc.health.v1.Health",
    ] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} in {names:?}"
        );
    }
    server.shutdown.trigger();
    server.server.await.unwrap().unwrap();
}

#[tokio::test]
async fn shutdown_reports_not_serving_and_lets_in_flight_calls_finish() {
    let server = start(Duration::from_secs(5)).await;
    let mut health = server.health().await;
    let mut watch = health
        .watch(HealthCheckRequest {
            service: "messenger.v1.UsersService".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let first = watch.message().await.unwrap().unwrap();
    assert_eq!(first.status(), ServingStatus::Serving);

    let mut users = server.users().await;
    let in_flight = tokio::spawn(async move {
        users
            .get_user_profile_by_nickname(GetUserProfileByNicknameRequest {
                nickname: "700".into(),
            })
            .await
    });
    server.started.notified().await;
    server.shutdown.trigger();

    let next = watch.message().await.unwrap().unwrap();
    assert_eq!(next.status(), ServingStatus::NotServing);
    let answer = in_flight
        .await
        .unwrap()
        .expect("the in-flight call completes");
    assert_eq!(answer.get_ref().nickname, "700");
    // The open Watch stream would block forever; the drain timeout ends it.
    tokio::time::timeout(Duration::from_secs(10), server.server)
        .await
        .expect("server stops within the drain timeout")
        .unwrap()
        .unwrap();
    assert!(
        tokio::net::TcpStream::connect(server.addr).await.is_err(),
        "the port is closed after shutdown"
    );
}

#[tokio::test]
async fn a_peer_channel_connects_lazily_and_fails_fast_when_the_peer_is_down() {
    assert!(connect_channel("not a url", Duration::from_secs(1)).is_err());

    let dead = format!(
        "http://127.0.0.1:{}",
        messenger_common::testing::free_port()
    );
    let channel = connect_channel(&dead, Duration::from_millis(500)).expect("lazy: no connect yet");
    let mut users = UsersServiceClient::new(channel);
    let started = std::time::Instant::now();
    let error = users
        .get_user_profile(GetUserProfileRequest {
            user_id: "u".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(error.code(), tonic::Code::Unavailable, "{error:?}");
    assert_eq!(ServiceError::from(error).code(), tonic::Code::Unavailable);
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[tokio::test]
async fn a_peer_call_is_bounded_by_the_channel_timeout() {
    let server = start(Duration::from_secs(30)).await;
    let channel = connect_channel(&server.url(), Duration::from_millis(300)).unwrap();
    let mut users = UsersServiceClient::with_interceptor(channel, SignedAs::service("gateway"));
    let started = std::time::Instant::now();
    let error = users
        .get_user_profile_by_nickname(GetUserProfileByNicknameRequest {
            nickname: "5000".into(),
        })
        .await
        .unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert!(
        matches!(
            error.code(),
            tonic::Code::DeadlineExceeded | tonic::Code::Cancelled
        ),
        "{error:?}"
    );
    server.shutdown.trigger();
    server.server.await.unwrap().unwrap();
}

#[tokio::test]
async fn calls_without_a_valid_assertion_are_refused_before_the_handler_runs() {
    let server = start(Duration::from_secs(5)).await;
    let me = Caller::User(uuid::Uuid::new_v4());
    let key = testing::test_key();
    let mut refused = Vec::new();

    refused.push((
        "none",
        server
            .unsigned()
            .search_users(SearchUsersRequest::default())
            .await,
    ));
    let mut forged = UsersServiceClient::with_interceptor(
        server.channel(),
        SignedAs::caller(me.clone()).with_key(InternalKey::generate()),
    );
    refused.push((
        "another key",
        forged.search_users(SearchUsersRequest::default()).await,
    ));
    let mut expired = Request::new(SearchUsersRequest::default());
    expired.metadata_mut().insert(
        IDENTITY_METADATA,
        testing::expired_assertion(&key, &me).parse().unwrap(),
    );
    refused.push(("expired", server.unsigned().search_users(expired).await));
    let mut garbage = Request::new(SearchUsersRequest::default());
    garbage.metadata_mut().insert(
        IDENTITY_METADATA,
        "v1.s.gateway.99999999999.00".parse().unwrap(),
    );
    refused.push(("garbage", server.unsigned().search_users(garbage).await));
    for (what, result) in refused {
        let error = result.expect_err(what);
        assert_eq!(
            error.code(),
            tonic::Code::Unauthenticated,
            "{what}: {error:?}"
        );
    }
    // Probes need no key.
    let mut health = server.health().await;
    assert_eq!(status_of(&mut health, "").await, ServingStatus::Serving);
    server.shutdown.trigger();
    server.server.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_server_without_a_key_refuses_every_call_but_health() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = Shutdown::new();
    let server = GrpcServer::new(&Metrics::new()).add_service(UsersServiceServer::new(Stub {
        started: Arc::new(Notify::new()),
    }));
    let server = tokio::spawn(server.serve_with_listener(listener, shutdown.clone()));
    let channel = connect_channel(&format!("http://{addr}"), Duration::from_secs(5)).unwrap();
    let mut users =
        UsersServiceClient::with_interceptor(channel.clone(), SignedAs::service("gateway"));
    let error = users
        .search_users(SearchUsersRequest::default())
        .await
        .unwrap_err();
    assert_eq!(error.code(), tonic::Code::Unauthenticated, "{error:?}");
    let mut health = HealthClient::new(channel);
    assert_eq!(status_of(&mut health, "").await, ServingStatus::Serving);
    shutdown.trigger();
    server.await.unwrap().unwrap();
}

#[tokio::test]
async fn the_caller_request_id_and_trace_parent_reach_the_handler_and_its_peer_calls() {
    let server = start(Duration::from_secs(5)).await;
    let me = uuid::Uuid::new_v4();
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let mut request = testing::as_user(me.to_string(), SearchUsersRequest::default());
    request
        .metadata_mut()
        .insert("x-request-id", "req-42".parse().unwrap());
    request
        .metadata_mut()
        .insert("traceparent", traceparent.parse().unwrap());
    let token = server
        .unsigned()
        .search_users(request)
        .await
        .unwrap()
        .into_inner()
        .next_page_token;
    let user = format!("user {me}");
    assert_eq!(
        token,
        [
            user.as_str(),
            "req-42",
            user.as_str(),
            "req-42",
            traceparent
        ]
        .join("|")
    );

    // Without a request id the server makes one up, and still forwards it; a malformed
    // trace parent is dropped rather than passed on.
    let mut request = testing::as_service("gateway", SearchUsersRequest::default());
    request
        .metadata_mut()
        .insert("traceparent", "not-a-trace".parse().unwrap());
    let token = server
        .unsigned()
        .search_users(request)
        .await
        .unwrap()
        .into_inner()
        .next_page_token;
    let parts: Vec<&str> = token.split('|').collect();
    assert_eq!(parts[0], "service gateway");
    assert!(!parts[1].is_empty(), "{token}");
    assert_eq!(parts[1], parts[3], "{token}");
    assert_eq!(parts[2], "service gateway");
    assert_eq!(parts[4], "", "{token}");
    server.shutdown.trigger();
    server.server.await.unwrap().unwrap();
}

/// Compile-time check: every long-running future of the crate can be `tokio::spawn`ed.
#[allow(dead_code)]
fn start_up_futures_are_send(addr: SocketAddr, pool: sqlx::PgPool) {
    fn send<T: Send>(_: T) {}
    let metrics = Metrics::new();
    let shutdown = Shutdown::new();
    send(GrpcServer::new(&metrics).serve(addr, shutdown.clone()));
    send(messenger_common::admin::serve(
        addr,
        Default::default(),
        shutdown.clone(),
    ));
    send(messenger_common::postgres::connect("postgres://x"));
    send(messenger_common::postgres::migrate(
        &pool,
        &messenger_common::postgres::COMMON_MIGRATOR,
    ));
    send(messenger_common::redis::connect("redis://x"));
    send(messenger_common::kafka::ensure_topics("x", &["t"]));
}
