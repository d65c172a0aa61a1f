//! Nicknames resolved through a users service over gRPC: a small in-test tonic
//! `UsersService` on port 0 stands in for `messenger-users`.

mod support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use messenger_common::testing::{self, TestDatabase};
use messenger_common::{Shutdown, grpc, identity};
use messenger_friends::directory::{GrpcUserDirectory, InMemoryUserDirectory, UserDirectory};
use messenger_friends::error::FriendsError;
use messenger_proto::v1::users_service_server::{UsersService, UsersServiceServer};
use messenger_proto::v1::{
    FriendshipStatus, GetUserProfileByNicknameRequest, GetUserProfileRequest,
    GetUserProfilesRequest, GetUserProfilesResponse, SearchUsersRequest, SearchUsersResponse,
    UpdateUserProfileRequest, UserProfile,
};
use support::{Person, assert_code, friend};
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Code, Request, Response, Status};
use uuid::Uuid;

/// Profiles by id; answers after `delay` (to test deadlines). Records the deadline each
/// nickname lookup arrived with.
#[derive(Clone)]
struct FakeUsers {
    profiles: Arc<HashMap<String, String>>,
    delay: Duration,
    deadlines: Arc<Mutex<Vec<Option<Duration>>>>,
    callers: Arc<Mutex<Vec<Option<identity::Caller>>>>,
    /// How many ids each `GetUserProfiles` call asked about.
    batches: Arc<Mutex<Vec<usize>>>,
    /// How many `GetUserProfile` calls there were.
    single_lookups: Arc<Mutex<usize>>,
}

#[tonic::async_trait]
impl UsersService for FakeUsers {
    async fn get_user_profile(
        &self,
        request: Request<GetUserProfileRequest>,
    ) -> Result<Response<UserProfile>, Status> {
        tokio::time::sleep(self.delay).await;
        *self.single_lookups.lock().unwrap() += 1;
        let id = request.into_inner().user_id;
        let nickname = self
            .profiles
            .get(&id)
            .ok_or_else(|| Status::not_found("no profile"))?;
        Ok(Response::new(UserProfile {
            user_id: id,
            nickname: nickname.clone(),
            ..Default::default()
        }))
    }

    async fn get_user_profiles(
        &self,
        request: Request<GetUserProfilesRequest>,
    ) -> Result<Response<GetUserProfilesResponse>, Status> {
        tokio::time::sleep(self.delay).await;
        self.batches
            .lock()
            .unwrap()
            .push(request.get_ref().user_ids.len());
        let profiles = request
            .into_inner()
            .user_ids
            .into_iter()
            .filter_map(|id| {
                let nickname = self.profiles.get(&id)?.clone();
                Some(UserProfile {
                    user_id: id,
                    nickname,
                    ..Default::default()
                })
            })
            .collect();
        Ok(Response::new(GetUserProfilesResponse { profiles }))
    }

    async fn get_user_profile_by_nickname(
        &self,
        request: Request<GetUserProfileByNicknameRequest>,
    ) -> Result<Response<UserProfile>, Status> {
        let deadline = grpc::grpc_timeout(&request.metadata().clone().into_headers());
        self.deadlines.lock().unwrap().push(deadline);
        // What friends forwarded as its caller: the user it acts for, signed anew.
        let caller = request
            .metadata()
            .get(identity::IDENTITY_METADATA)
            .and_then(|v| v.to_str().ok())
            .and_then(|assertion| testing::test_key().verify(assertion).ok());
        self.callers.lock().unwrap().push(caller);
        tokio::time::sleep(self.delay).await;
        let wanted = request.into_inner().nickname.to_lowercase();
        let (id, nickname) = self
            .profiles
            .iter()
            .find(|(_, nickname)| nickname.to_lowercase() == wanted)
            .ok_or_else(|| Status::not_found("no profile"))?;
        Ok(Response::new(UserProfile {
            user_id: id.clone(),
            nickname: nickname.clone(),
            ..Default::default()
        }))
    }

    async fn update_user_profile(
        &self,
        _: Request<UpdateUserProfileRequest>,
    ) -> Result<Response<UserProfile>, Status> {
        Err(Status::unimplemented("not needed by friends"))
    }

    async fn search_users(
        &self,
        _: Request<SearchUsersRequest>,
    ) -> Result<Response<SearchUsersResponse>, Status> {
        Err(Status::unimplemented("not needed by friends"))
    }
}

/// Serves `people` on a port-0 users service; returns its URL.
async fn users_service(people: &[&Person], delay: Duration, shutdown: &Shutdown) -> String {
    recording_users_service(people, delay, shutdown).await.0
}

/// [`users_service`], also returning the fake, whose records show what it was asked.
async fn recording_users_service(
    people: &[&Person],
    delay: Duration,
    shutdown: &Shutdown,
) -> (String, FakeUsers) {
    let profiles = people
        .iter()
        .map(|person| (person.id(), person.nickname.clone()))
        .collect();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let fake = FakeUsers {
        profiles: Arc::new(profiles),
        delay,
        deadlines: Arc::default(),
        callers: Arc::default(),
        batches: Arc::default(),
        single_lookups: Arc::default(),
    };
    let service = UsersServiceServer::new(fake.clone());
    let stop = shutdown.cancelled();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), stop),
    );
    (url, fake)
}

/// A socket that accepts connections (the kernel does) but never answers: a hung users
/// service. Unlike a closed port, no other test can take it over while the test runs.
async fn unresponsive_users_service() -> (TcpListener, String) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    (listener, url)
}

fn person(name: &str) -> Person {
    Person {
        id: Uuid::now_v7().into(),
        nickname: format!("{name}_{}", &Uuid::new_v4().simple().to_string()[..8]),
    }
}

fn directory(url: &str, timeout: Duration) -> GrpcUserDirectory {
    GrpcUserDirectory::new(grpc::connect_channel(url, timeout).unwrap(), timeout)
}

/// The directory contract: case-insensitive nickname lookup, `UnknownNickname` for
/// nobody, `None` for an id without a profile.
async fn directory_resolves_nicknames_both_ways(directory: &dyn UserDirectory, alice: &Person) {
    let found = directory
        .user_id_by_nickname(&alice.nickname.to_lowercase())
        .await;
    assert_eq!(found.unwrap(), alice.id);
    assert!(matches!(
        directory.user_id_by_nickname("nobody").await,
        Err(FriendsError::UnknownNickname(name)) if name == "nobody"
    ));
    assert_eq!(
        directory.nickname_of(alice.id).await.unwrap(),
        Some(alice.nickname.clone())
    );
    assert_eq!(
        directory.nickname_of(Uuid::now_v7().into()).await.unwrap(),
        None
    );
}

#[tokio::test]
async fn grpc_directory_resolves_nicknames_and_passes_not_found_through() {
    let shutdown = Shutdown::new();
    let alice = person("Alice");
    let url = users_service(&[&alice], Duration::ZERO, &shutdown).await;
    directory_resolves_nicknames_both_ways(&directory(&url, Duration::from_secs(2)), &alice).await;
    shutdown.trigger();
}

#[tokio::test]
async fn in_memory_directory_resolves_nicknames_like_the_grpc_one() {
    let alice = person("Alice");
    let directory = InMemoryUserDirectory::new();
    directory.insert(alice.id, alice.nickname.clone());
    directory_resolves_nicknames_both_ways(&directory, &alice).await;
}

#[tokio::test]
async fn grpc_directory_is_unavailable_when_users_is_slow_or_hung() {
    let shutdown = Shutdown::new();
    let alice = person("alice");
    let slow_url = users_service(&[&alice], Duration::from_secs(5), &shutdown).await;
    let slow = directory(&slow_url, Duration::from_millis(300));
    let started = Instant::now();
    assert!(matches!(
        slow.user_id_by_nickname(&alice.nickname).await,
        Err(FriendsError::Unavailable(_))
    ));
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "the deadline cut the call short"
    );

    let (_listener, unresponsive_url) = unresponsive_users_service().await;
    let hung = directory(&unresponsive_url, Duration::from_millis(500));
    assert!(matches!(
        hung.nickname_of(alice.id).await,
        Err(FriendsError::Unavailable(_))
    ));
    shutdown.trigger();
}

#[tokio::test]
async fn service_resolves_nicknames_through_the_users_service() {
    let shutdown = Shutdown::new();
    let (alice, bob, carol) = (person("alice"), person("bob"), person("carol"));
    let (users_url, fake) =
        recording_users_service(&[&alice, &bob, &carol], Duration::ZERO, &shutdown).await;

    let database = TestDatabase::create().await;
    let mut config = support::test_config(&database, testing::kafka_brokers());
    config.users_url = users_url;
    config.users_timeout = Duration::from_secs(2);
    let (listeners, grpc_addr, _) = support::bind().await;
    let server = tokio::spawn(messenger_friends::run(config, listeners, shutdown.clone()));
    let client = support::connect(grpc_addr).await;
    let send = |from: &Person, to: &str| {
        let mut client = client.clone();
        let request = testing::as_user(
            from.id(),
            messenger_proto::v1::SendFriendRequestRequest {
                user_id: from.id(),
                nickname: to.to_owned(),
            },
        );
        async move {
            client
                .send_friend_request(request)
                .await
                .map(|r| r.into_inner().status())
        }
    };

    assert_eq!(
        send(&alice, &bob.nickname).await.unwrap(),
        FriendshipStatus::Requested
    );
    assert_eq!(
        send(&bob, &alice.nickname).await.unwrap(),
        FriendshipStatus::Accepted
    );
    assert_code(send(&alice, "nobody").await, Code::NotFound);
    assert_code(send(&alice, &alice.nickname).await, Code::InvalidArgument);
    assert_eq!(
        send(&carol, &bob.nickname).await.unwrap(),
        FriendshipStatus::Requested
    );
    send(&bob, &carol.nickname).await.unwrap();

    // A page of the list is resolved with one batch call, not one call per friend.
    let lookups_before = *fake.single_lookups.lock().unwrap();
    let friends = client
        .clone()
        .get_friends_list(testing::as_user(
            bob.id(),
            messenger_proto::v1::GetFriendsListRequest {
                user_id: bob.id(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .friends;
    let mut friends: Vec<_> = friends
        .into_iter()
        .map(|f| (f.user_id, f.nickname))
        .collect();
    friends.sort_by(|a, b| a.1.cmp(&b.1));
    assert_eq!(friends, vec![friend(&alice), friend(&carol)]);
    assert_eq!(*fake.batches.lock().unwrap(), vec![2]);
    assert_eq!(*fake.single_lookups.lock().unwrap(), lookups_before);

    shutdown.trigger();
    server.await.unwrap().expect("service stops cleanly");
}

#[tokio::test]
async fn the_callers_deadline_travels_on_to_the_users_service() {
    let shutdown = Shutdown::new();
    let (alice, bob) = (person("alice"), person("bob"));
    let (users_url, fake) =
        recording_users_service(&[&alice, &bob], Duration::ZERO, &shutdown).await;
    let (deadlines, callers) = (fake.deadlines, fake.callers);
    let database = TestDatabase::create().await;
    let mut config = support::test_config(&database, testing::kafka_brokers());
    config.users_url = users_url;
    config.users_timeout = Duration::from_secs(5);
    let (listeners, grpc_addr, _) = support::bind().await;
    let server = tokio::spawn(messenger_friends::run(config, listeners, shutdown.clone()));
    let mut client = support::connect(grpc_addr).await;
    let send = |from: &Person, to: &Person, caller_timeout: Option<Duration>| {
        let mut request = testing::as_user(
            from.id(),
            messenger_proto::v1::SendFriendRequestRequest {
                user_id: from.id(),
                nickname: to.nickname.clone(),
            },
        );
        if let Some(timeout) = caller_timeout {
            request.set_timeout(timeout);
        }
        request
    };

    // No caller deadline: friends' own FRIENDS_USERS_TIMEOUT (5 s) is what users gets.
    client
        .send_friend_request(send(&alice, &bob, None))
        .await
        .unwrap();
    // A caller allowing 1 s: users is told it has at most what is left of that second.
    client
        .send_friend_request(send(&bob, &alice, Some(Duration::from_secs(1))))
        .await
        .unwrap();

    // Each lookup acted for the user friends was serving, in an assertion friends signed.
    let callers = callers.lock().unwrap().clone();
    assert_eq!(
        callers,
        vec![
            Some(identity::Caller::User(alice.id.as_uuid())),
            Some(identity::Caller::User(bob.id.as_uuid()))
        ]
    );
    let deadlines = deadlines.lock().unwrap().clone();
    assert_eq!(deadlines.len(), 2, "{deadlines:?}");
    let own = deadlines[0].expect("a deadline is always sent");
    assert!(
        own > Duration::from_secs(4) && own <= Duration::from_secs(5),
        "{own:?}"
    );
    let forwarded = deadlines[1].expect("a deadline is always sent");
    assert!(
        forwarded > Duration::ZERO && forwarded <= Duration::from_secs(1),
        "the caller's 1 s deadline travels on: {forwarded:?}"
    );

    shutdown.trigger();
    server.await.unwrap().expect("service stops cleanly");
}

#[tokio::test]
async fn service_answers_unavailable_when_users_does_not_answer_and_changes_nothing() {
    let shutdown = Shutdown::new();
    let (alice, bob) = (person("alice"), person("bob"));
    let database = TestDatabase::create().await;
    let mut config = support::test_config(&database, testing::kafka_brokers());
    let (_listener, unresponsive_url) = unresponsive_users_service().await;
    config.users_url = unresponsive_url;
    config.users_timeout = Duration::from_millis(500);
    let (listeners, grpc_addr, _) = support::bind().await;
    let server = tokio::spawn(messenger_friends::run(config, listeners, shutdown.clone()));
    let mut client = support::connect(grpc_addr).await;

    let sent = client
        .send_friend_request(testing::as_user(
            alice.id(),
            messenger_proto::v1::SendFriendRequestRequest {
                user_id: alice.id(),
                nickname: bob.nickname.clone(),
            },
        ))
        .await;
    assert_code(sent, Code::Unavailable);
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM friendships")
        .fetch_one(database.pool())
        .await
        .unwrap();
    assert_eq!(rows, 0);

    shutdown.trigger();
    server.await.unwrap().expect("service stops cleanly");
}
