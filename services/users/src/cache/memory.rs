//! In-memory [`ProfileCache`] with the same expiry and version rules as Redis.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use tokio::time::Instant;
use uuid::Uuid;

use super::{ProfileCache, search_page_key};
use crate::domain::{Profile, SearchPage, SearchQuery};
use crate::error::UsersError;

struct Expiring<T> {
    value: T,
    expires_at: Instant,
}

#[derive(Default)]
struct State {
    profiles: HashMap<Uuid, Expiring<Profile>>,
    nicknames: HashMap<String, Expiring<Uuid>>,
    search_pages: HashMap<(u64, String), Expiring<SearchPage>>,
    search_generation: u64,
}

fn live<K: std::hash::Hash + Eq, T: Clone>(
    map: &mut HashMap<K, Expiring<T>>,
    key: &K,
) -> Option<T> {
    match map.get(key) {
        Some(entry) if entry.expires_at > Instant::now() => Some(entry.value.clone()),
        Some(_) => {
            map.remove(key);
            None
        }
        None => None,
    }
}

/// A cache in process memory, for the dev mode and fast tests.
pub struct InMemoryProfileCache {
    ttl: Duration,
    state: Mutex<State>,
}

impl InMemoryProfileCache {
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            state: Mutex::new(State::default()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every method leaves the maps consistent before it can panic.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn expiring<T>(&self, value: T) -> Expiring<T> {
        Expiring {
            value,
            expires_at: Instant::now() + self.ttl,
        }
    }
}

#[async_trait]
impl ProfileCache for InMemoryProfileCache {
    async fn get_profile(&self, user_id: Uuid) -> Result<Option<Profile>, UsersError> {
        Ok(live(&mut self.lock().profiles, &user_id))
    }

    async fn put_profile(&self, profile: &Profile) -> Result<(), UsersError> {
        let mut state = self.lock();
        if live(&mut state.profiles, &profile.user_id)
            .is_some_and(|cached| cached.version > profile.version)
        {
            return Ok(());
        }
        let entry = self.expiring(profile.clone());
        state.profiles.insert(profile.user_id, entry);
        let entry = self.expiring(profile.user_id);
        state.nicknames.insert(profile.nickname.clone(), entry);
        Ok(())
    }

    async fn get_user_id_by_nickname(&self, nickname: &str) -> Result<Option<Uuid>, UsersError> {
        Ok(live(&mut self.lock().nicknames, &nickname.to_owned()))
    }

    async fn forget_nickname(&self, nickname: &str) -> Result<(), UsersError> {
        self.lock().nicknames.remove(nickname);
        Ok(())
    }

    async fn forget_profile(&self, user_id: Uuid) -> Result<(), UsersError> {
        self.lock().profiles.remove(&user_id);
        Ok(())
    }

    async fn search_generation(&self) -> Result<u64, UsersError> {
        Ok(self.lock().search_generation)
    }

    async fn get_search_page(
        &self,
        generation: u64,
        query: &SearchQuery,
    ) -> Result<Option<SearchPage>, UsersError> {
        let key = (generation, search_page_key(query));
        Ok(live(&mut self.lock().search_pages, &key))
    }

    async fn put_search_page(
        &self,
        generation: u64,
        query: &SearchQuery,
        page: &SearchPage,
    ) -> Result<(), UsersError> {
        let entry = self.expiring(page.clone());
        let mut state = self.lock();
        // Pages of older generations are unreachable; drop them instead of letting them pile up.
        let current = state.search_generation;
        state.search_pages.retain(|(g, _), _| *g >= current);
        if generation >= current {
            state
                .search_pages
                .insert((generation, search_page_key(query)), entry);
        }
        Ok(())
    }

    async fn invalidate_searches(&self) -> Result<(), UsersError> {
        let mut state = self.lock();
        state.search_generation += 1;
        state.search_pages.clear();
        Ok(())
    }
}
