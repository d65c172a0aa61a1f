//! One contract for `ProfileStore`, run against the in-memory store and PostgreSQL (a fresh
//! database per test).

use std::sync::Arc;

use messenger_common::testing::TestDatabase;
use messenger_users::UsersError;
use messenger_users::domain::{ProfileUpdate, Registration, RegistrationOutcome, SearchQuery};
use messenger_users::store::{InMemoryProfileStore, PgProfileStore, ProfileStore};
use uuid::Uuid;

fn registration(user_id: Uuid, nickname: &str) -> Registration {
    Registration::parse(&Uuid::now_v7().to_string(), &user_id.to_string(), nickname)
        .expect("valid registration")
}

async fn register(store: &dyn ProfileStore, nickname: &str) -> messenger_users::domain::Profile {
    match store
        .create_from_registration(&registration(Uuid::now_v7(), nickname))
        .await
        .expect("registration stored")
    {
        RegistrationOutcome::Created(profile) => profile,
        other => panic!("expected a new profile for {nickname}, got {other:?}"),
    }
}

fn update(nickname: Option<&str>, bio: Option<&str>, avatar: Option<&str>) -> ProfileUpdate {
    ProfileUpdate::parse(nickname, bio, avatar).expect("valid update")
}

async fn registration_creates_a_profile(store: Arc<dyn ProfileStore>) {
    let user_id = Uuid::now_v7();
    let outcome = store
        .create_from_registration(&registration(user_id, "Alice"))
        .await
        .unwrap();
    let RegistrationOutcome::Created(profile) = outcome else {
        panic!("expected Created, got {outcome:?}");
    };
    assert_eq!(profile.user_id, user_id);
    assert_eq!(profile.nickname, "alice", "stored lower-case");
    assert_eq!(
        (profile.bio.as_str(), profile.avatar_url.as_str()),
        ("", "")
    );
    assert_eq!(profile.version, 1);
    assert_eq!(store.get(user_id).await.unwrap(), Some(profile.clone()));
    assert_eq!(store.get_by_nickname("alice").await.unwrap(), Some(profile));
    assert_eq!(store.get(Uuid::now_v7()).await.unwrap(), None);
    assert_eq!(store.get_by_nickname("nobody").await.unwrap(), None);
}

async fn a_replayed_event_changes_nothing(store: Arc<dyn ProfileStore>) {
    let event = registration(Uuid::now_v7(), "bob");
    let RegistrationOutcome::Created(created) =
        store.create_from_registration(&event).await.unwrap()
    else {
        panic!("first delivery must create the profile");
    };
    let again = store.create_from_registration(&event).await.unwrap();
    assert_eq!(again, RegistrationOutcome::AlreadyProcessed);
    assert_eq!(store.get(event.user_id).await.unwrap(), Some(created));
    assert_eq!(
        store
            .search(&SearchQuery::parse("bob", 10, "").unwrap(), 10)
            .await
            .unwrap()
            .len(),
        1,
        "still exactly one profile"
    );
}

async fn a_second_event_for_an_existing_user_changes_nothing(store: Arc<dyn ProfileStore>) {
    let user_id = Uuid::now_v7();
    let RegistrationOutcome::Created(created) = store
        .create_from_registration(&registration(user_id, "carol"))
        .await
        .unwrap()
    else {
        panic!("first event must create the profile");
    };
    let second = store
        .create_from_registration(&registration(user_id, "caroline"))
        .await
        .unwrap();
    assert_eq!(second, RegistrationOutcome::ProfileExists);
    assert_eq!(store.get(user_id).await.unwrap(), Some(created));
    assert_eq!(store.get_by_nickname("caroline").await.unwrap(), None);
}

async fn concurrent_deliveries_of_one_event_create_one_profile(store: Arc<dyn ProfileStore>) {
    let event = registration(Uuid::now_v7(), "dave");
    let (a, b) = tokio::join!(
        store.create_from_registration(&event),
        store.create_from_registration(&event)
    );
    let outcomes = [a.unwrap(), b.unwrap()];
    let created = outcomes
        .iter()
        .filter(|o| matches!(o, RegistrationOutcome::Created(_)))
        .count();
    assert_eq!(created, 1, "{outcomes:?}");
    assert!(
        outcomes.contains(&RegistrationOutcome::AlreadyProcessed),
        "{outcomes:?}"
    );
}

async fn a_taken_nickname_gets_the_documented_suffix(store: Arc<dyn ProfileStore>) {
    let newcomer = Uuid::parse_str("0190f3a2-7b1c-7d4e-8f00-123456abcdef").unwrap();
    register(&*store, "erin").await;
    let RegistrationOutcome::Created(first) = store
        .create_from_registration(&registration(newcomer, "erin"))
        .await
        .unwrap()
    else {
        panic!("a taken nickname must not lose the registration");
    };
    assert_eq!(first.nickname, "erin-abcdef");

    // When the 6-digit form is taken too, the suffix grows by one digit.
    let other = Uuid::parse_str("0190f3a2-7b1c-7d4e-8f00-ffffff000001").unwrap();
    register(&*store, "frank").await;
    register(&*store, "frank-000001").await;
    let RegistrationOutcome::Created(second) = store
        .create_from_registration(&registration(other, "frank"))
        .await
        .unwrap()
    else {
        panic!("a taken nickname must not lose the registration");
    };
    assert_eq!(second.nickname, "frank-f000001");
}

async fn a_long_taken_nickname_is_truncated_to_32(store: Arc<dyn ProfileStore>) {
    let long = "g".repeat(32);
    register(&*store, &long).await;
    let user_id = Uuid::parse_str("0190f3a2-7b1c-7d4e-8f00-123456abcdef").unwrap();
    let RegistrationOutcome::Created(profile) = store
        .create_from_registration(&registration(user_id, &long))
        .await
        .unwrap()
    else {
        panic!("expected Created");
    };
    assert_eq!(profile.nickname, format!("{}-abcdef", "g".repeat(25)));
}

async fn update_changes_only_the_given_fields(store: Arc<dyn ProfileStore>) {
    let created = register(&*store, "heidi").await;
    let bio_only = store
        .update(created.user_id, &update(None, Some("hello"), None))
        .await
        .unwrap();
    assert_eq!(bio_only.previous_nickname, "heidi");
    let p = &bio_only.profile;
    assert_eq!(
        (p.nickname.as_str(), p.bio.as_str(), p.avatar_url.as_str()),
        ("heidi", "hello", "")
    );
    assert_eq!(p.version, 2);
    assert!(p.updated_at >= created.updated_at);
    assert_eq!(p.created_at, created.created_at);

    let renamed = store
        .update(
            created.user_id,
            &update(Some("Heidi2"), None, Some("https://img.example/h.png")),
        )
        .await
        .unwrap();
    assert_eq!(renamed.previous_nickname, "heidi");
    let p = &renamed.profile;
    assert_eq!((p.nickname.as_str(), p.bio.as_str()), ("heidi2", "hello"));
    assert_eq!(p.avatar_url, "https://img.example/h.png");
    assert_eq!(p.version, 3);
    assert_eq!(store.get(created.user_id).await.unwrap().as_ref(), Some(p));
    assert_eq!(
        store.get_by_nickname("heidi2").await.unwrap().as_ref(),
        Some(p)
    );
    assert_eq!(
        store.get_by_nickname("heidi").await.unwrap(),
        None,
        "old nickname freed"
    );

    let cleared = store
        .update(created.user_id, &update(None, Some(""), Some("")))
        .await
        .unwrap()
        .profile;
    assert_eq!(
        (cleared.bio.as_str(), cleared.avatar_url.as_str()),
        ("", "")
    );

    // Keeping one's own nickname is not a conflict.
    let same = store
        .update(created.user_id, &update(Some("heidi2"), None, None))
        .await
        .unwrap();
    assert_eq!(same.profile.nickname, "heidi2");
    // A freed nickname can be taken by someone else.
    let other = register(&*store, "ivan").await;
    let taken_over = store
        .update(other.user_id, &update(Some("heidi"), None, None))
        .await
        .unwrap();
    assert_eq!(taken_over.profile.nickname, "heidi");
}

async fn update_to_a_taken_nickname_changes_nothing(store: Arc<dyn ProfileStore>) {
    let judy = register(&*store, "judy").await;
    let kim = register(&*store, "kim").await;
    let error = store
        .update(kim.user_id, &update(Some("JUDY"), Some("new bio"), None))
        .await
        .unwrap_err();
    assert!(
        matches!(error, UsersError::NicknameTaken(ref n) if n == "judy"),
        "{error:?}"
    );
    assert_eq!(store.get(kim.user_id).await.unwrap(), Some(kim));
    assert_eq!(store.get(judy.user_id).await.unwrap(), Some(judy));
}

async fn update_of_an_unknown_user_is_not_found(store: Arc<dyn ProfileStore>) {
    let error = store
        .update(Uuid::now_v7(), &update(None, Some("bio"), None))
        .await
        .unwrap_err();
    assert!(matches!(error, UsersError::ProfileNotFound(_)), "{error:?}");
}

async fn racing_renames_to_one_nickname_have_one_winner(store: Arc<dyn ProfileStore>) {
    let a = register(&*store, "racer-a").await;
    let b = register(&*store, "racer-b").await;
    let wanted = update(Some("winner"), None, None);
    let (ra, rb) = tokio::join!(
        store.update(a.user_id, &wanted),
        store.update(b.user_id, &wanted)
    );
    let results = [&ra, &rb];
    assert_eq!(
        results.iter().filter(|r| r.is_ok()).count(),
        1,
        "{results:?}"
    );
    let loser = results.iter().find_map(|r| r.as_ref().err()).unwrap();
    assert!(matches!(loser, UsersError::NicknameTaken(_)), "{loser:?}");
    let owner = store.get_by_nickname("winner").await.unwrap().unwrap();
    assert!(owner.user_id == a.user_id || owner.user_id == b.user_id);
}

async fn search_walks_a_prefix_in_nickname_order(store: Arc<dyn ProfileStore>) {
    for nickname in ["mia", "mike", "mila", "milo", "max", "nina", "mi_x", "mixx"] {
        register(&*store, nickname).await;
    }
    let nicknames = |profiles: Vec<messenger_users::domain::Profile>| {
        profiles.into_iter().map(|p| p.nickname).collect::<Vec<_>>()
    };
    let all = SearchQuery::parse("MI", 10, "").unwrap();
    assert_eq!(
        nicknames(store.search(&all, 10).await.unwrap()),
        ["mi_x", "mia", "mike", "mila", "milo", "mixx"]
    );
    assert_eq!(
        nicknames(store.search(&all, 2).await.unwrap()),
        ["mi_x", "mia"]
    );
    let after = SearchQuery {
        after: Some("mike".into()),
        ..all.clone()
    };
    assert_eq!(
        nicknames(store.search(&after, 10).await.unwrap()),
        ["mila", "milo", "mixx"]
    );
    // `_` is a nickname character, not a wildcard.
    let underscore = SearchQuery::parse("mi_", 10, "").unwrap();
    assert_eq!(
        nicknames(store.search(&underscore, 10).await.unwrap()),
        ["mi_x"]
    );
    let none = SearchQuery::parse("zz", 10, "").unwrap();
    assert!(store.search(&none, 10).await.unwrap().is_empty());
}

async fn get_many_returns_the_profiles_that_exist(store: Arc<dyn ProfileStore>) {
    let ann = register(store.as_ref(), "ann").await;
    let ben = register(store.as_ref(), "ben").await;
    register(store.as_ref(), "cid").await;
    let mut found = store
        .get_many(&[ben.user_id, Uuid::now_v7(), ann.user_id])
        .await
        .unwrap();
    found.sort_by(|a, b| a.nickname.cmp(&b.nickname));
    assert_eq!(found, vec![ann, ben]);
    assert!(store.get_many(&[]).await.unwrap().is_empty());
}

macro_rules! contract {
    ($($test:ident),* $(,)?) => {
        mod in_memory {
            $(
                #[tokio::test]
                async fn $test() {
                    super::$test(std::sync::Arc::new(super::InMemoryProfileStore::new())).await;
                }
            )*
        }

        mod postgres {
            $(
                #[tokio::test]
                async fn $test() {
                    let database =
                        super::TestDatabase::create_migrated(&messenger_users::MIGRATOR).await;
                    let store = super::PgProfileStore::new(database.pool().clone());
                    super::$test(std::sync::Arc::new(store)).await;
                }
            )*
        }
    };
}

contract!(
    registration_creates_a_profile,
    a_replayed_event_changes_nothing,
    a_second_event_for_an_existing_user_changes_nothing,
    concurrent_deliveries_of_one_event_create_one_profile,
    a_taken_nickname_gets_the_documented_suffix,
    a_long_taken_nickname_is_truncated_to_32,
    update_changes_only_the_given_fields,
    update_to_a_taken_nickname_changes_nothing,
    update_of_an_unknown_user_is_not_found,
    racing_renames_to_one_nickname_have_one_winner,
    search_walks_a_prefix_in_nickname_order,
    get_many_returns_the_profiles_that_exist,
);
