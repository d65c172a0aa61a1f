//! In-memory [`ProfileStore`]: one mutex over the whole state, so every method is atomic.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Mutex, MutexGuard};

use async_trait::async_trait;
use chrono::{SubsecRound, Utc};
use uuid::Uuid;

use super::{ProfileStore, UpdatedProfile};
use crate::domain::{
    Profile, ProfileUpdate, Registration, RegistrationOutcome, SearchQuery,
    registration_nickname_candidates,
};
use crate::error::UsersError;

#[derive(Default)]
struct State {
    profiles: HashMap<Uuid, Profile>,
    /// nickname → user id; a BTreeMap so prefix search walks nicknames in order.
    by_nickname: BTreeMap<String, Uuid>,
    processed_events: HashSet<String>,
}

/// Profiles in process memory, for the dev mode and fast tests. Lost on restart.
#[derive(Default)]
pub struct InMemoryProfileStore {
    state: Mutex<State>,
}

impl InMemoryProfileStore {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the maps half-updated (every method
        // checks before it writes), so a poisoned lock is still consistent.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// PostgreSQL keeps microseconds; do the same so both stores return equal timestamps.
fn now() -> chrono::DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

#[async_trait]
impl ProfileStore for InMemoryProfileStore {
    async fn create_from_registration(
        &self,
        registration: &Registration,
    ) -> Result<RegistrationOutcome, UsersError> {
        let mut state = self.lock();
        if !state.processed_events.insert(registration.event_id.clone()) {
            return Ok(RegistrationOutcome::AlreadyProcessed);
        }
        if state.profiles.contains_key(&registration.user_id) {
            return Ok(RegistrationOutcome::ProfileExists);
        }
        let Some(nickname) =
            registration_nickname_candidates(&registration.nickname, registration.user_id)
                .into_iter()
                .find(|candidate| !state.by_nickname.contains_key(candidate.as_str()))
        else {
            // Leave the event unprocessed, as the PostgreSQL transaction would roll back.
            state.processed_events.remove(&registration.event_id);
            return Err(UsersError::NoFreeNickname {
                user_id: registration.user_id.to_string(),
                requested: registration.nickname.to_string(),
            });
        };
        let created_at = now();
        let profile = Profile {
            user_id: registration.user_id,
            nickname: nickname.into_string(),
            bio: String::new(),
            avatar_url: String::new(),
            version: 1,
            created_at,
            updated_at: created_at,
        };
        state
            .by_nickname
            .insert(profile.nickname.clone(), profile.user_id);
        state.profiles.insert(profile.user_id, profile.clone());
        Ok(RegistrationOutcome::Created(profile))
    }

    async fn get(&self, user_id: Uuid) -> Result<Option<Profile>, UsersError> {
        Ok(self.lock().profiles.get(&user_id).cloned())
    }

    async fn get_many(&self, user_ids: &[Uuid]) -> Result<Vec<Profile>, UsersError> {
        let state = self.lock();
        Ok(user_ids
            .iter()
            .filter_map(|id| state.profiles.get(id).cloned())
            .collect())
    }

    async fn get_by_nickname(&self, nickname: &str) -> Result<Option<Profile>, UsersError> {
        let state = self.lock();
        Ok(state
            .by_nickname
            .get(nickname)
            .and_then(|id| state.profiles.get(id))
            .cloned())
    }

    async fn update(
        &self,
        user_id: Uuid,
        update: &ProfileUpdate,
    ) -> Result<UpdatedProfile, UsersError> {
        let mut state = self.lock();
        let Some(current) = state.profiles.get(&user_id).cloned() else {
            return Err(UsersError::ProfileNotFound(user_id.to_string()));
        };
        if let Some(nickname) = &update.nickname
            && state
                .by_nickname
                .get(nickname.as_str())
                .is_some_and(|owner| *owner != user_id)
        {
            return Err(UsersError::NicknameTaken(nickname.to_string()));
        }
        let mut profile = current.clone();
        update.apply_to(&mut profile);
        profile.version += 1;
        profile.updated_at = now().max(current.updated_at);
        state.by_nickname.remove(&current.nickname);
        state.by_nickname.insert(profile.nickname.clone(), user_id);
        state.profiles.insert(user_id, profile.clone());
        Ok(UpdatedProfile {
            profile,
            previous_nickname: current.nickname,
        })
    }

    async fn search(&self, query: &SearchQuery, limit: usize) -> Result<Vec<Profile>, UsersError> {
        use std::ops::Bound;
        let state = self.lock();
        let start = match &query.after {
            Some(after) => Bound::Excluded(after.clone()),
            None => Bound::Included(query.prefix.clone()),
        };
        Ok(state
            .by_nickname
            .range((start, Bound::Unbounded))
            .take_while(|(nickname, _)| nickname.starts_with(&query.prefix))
            .filter_map(|(_, id)| state.profiles.get(id).cloned())
            .take(limit)
            .collect())
    }
}
