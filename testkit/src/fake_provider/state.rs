//! The fake's memory: authorization codes, grants, access and refresh tokens,
//! shared by every request handler and by the test's control methods.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use chrono::{DateTime, TimeDelta, Utc};
use rand::RngCore as _;
use url::Url;

use super::config::{FakeProviderConfig, ACCESS_TOKEN_PREFIX, REFRESH_TOKEN_PREFIX};
use super::faults::Faults;
use super::params::dedup;
use super::stats::Stats;

/// Everything one running fake shares between its handlers and its handle.
pub(super) struct Shared {
    pub(super) config: FakeProviderConfig,
    pub(super) base_url: Url,
    pub(super) state: Mutex<Inner>,
    pub(super) faults: Faults,
    pub(super) stats: Mutex<Stats>,
}

impl Shared {
    pub(super) fn lock_state(&self) -> MutexGuard<'_, Inner> {
        lock(&self.state)
    }

    pub(super) fn count(&self, f: impl FnOnce(&mut Stats)) {
        f(&mut lock(&self.stats));
    }
}

/// The protocol state: who approves, what was issued, what is still live.
pub(super) struct Inner {
    /// The user of the next authorizations.
    pub(super) subject: String,
    /// When set, of the requested scopes only these are granted.
    pub(super) grant_only: Option<Vec<String>>,
    pub(super) codes: HashMap<String, CodeRecord>,
    pub(super) grants: HashMap<u64, Grant>,
    pub(super) access_tokens: HashMap<String, AccessRecord>,
    pub(super) refresh_tokens: HashMap<String, RefreshRecord>,
    next_grant: u64,
}

/// An authorization code and the request it answers.
pub(super) struct CodeRecord {
    pub(super) client_id: String,
    pub(super) redirect_uri: String,
    pub(super) code_challenge: String,
    pub(super) subject: String,
    pub(super) scopes: Vec<String>,
    pub(super) expires_at: DateTime<Utc>,
    pub(super) used: bool,
    /// The grant created by exchanging this code, revoked if the code is replayed.
    pub(super) grant_id: Option<u64>,
}

/// A user's consent to a client for some scopes.
pub(super) struct Grant {
    pub(super) client_id: String,
    pub(super) subject: String,
    pub(super) scopes: Vec<String>,
    pub(super) active: bool,
}

/// An issued access token.
pub(super) struct AccessRecord {
    pub(super) grant_id: u64,
    pub(super) scopes: Vec<String>,
    pub(super) expires_at: DateTime<Utc>,
    pub(super) revoked: bool,
}

/// An issued refresh token.
pub(super) struct RefreshRecord {
    pub(super) grant_id: u64,
    pub(super) active: bool,
}

impl Inner {
    pub(super) fn new() -> Self {
        Self {
            subject: "user-1".to_owned(),
            grant_only: None,
            codes: HashMap::new(),
            grants: HashMap::new(),
            access_tokens: HashMap::new(),
            refresh_tokens: HashMap::new(),
            next_grant: 1,
        }
    }

    pub(super) fn new_grant(&mut self, client_id: &str, subject: &str, scopes: Vec<String>) -> u64 {
        let id = self.next_grant;
        self.next_grant += 1;
        self.grants.insert(
            id,
            Grant {
                client_id: client_id.to_owned(),
                subject: subject.to_owned(),
                scopes,
                active: true,
            },
        );
        id
    }

    pub(super) fn issue_access_token(&mut self, grant_id: u64, scopes: Vec<String>, ttl: Duration) -> String {
        let token = random_token(ACCESS_TOKEN_PREFIX);
        let expires_at = TimeDelta::from_std(ttl)
            .ok()
            .and_then(|ttl| Utc::now().checked_add_signed(ttl))
            .unwrap_or(DateTime::<Utc>::MAX_UTC);
        self.access_tokens.insert(
            token.clone(),
            AccessRecord {
                grant_id,
                scopes,
                expires_at,
                revoked: false,
            },
        );
        token
    }

    pub(super) fn issue_refresh_token(&mut self, grant_id: u64) -> String {
        let token = random_token(REFRESH_TOKEN_PREFIX);
        self.refresh_tokens
            .insert(token.clone(), RefreshRecord { grant_id, active: true });
        token
    }

    /// The grant id of a refresh token that is active and whose grant is live.
    pub(super) fn refresh_grant(&self, refresh_token: &str) -> Option<u64> {
        let record = self.refresh_tokens.get(refresh_token)?;
        let grant = self.grants.get(&record.grant_id)?;
        (record.active && grant.active).then_some(record.grant_id)
    }

    /// The user of a live access token.
    pub(super) fn subject_of_access_token(&self, access_token: &str) -> Option<String> {
        if !self.access_token_live(access_token) {
            return None;
        }
        let record = self.access_tokens.get(access_token)?;
        self.grants.get(&record.grant_id).map(|grant| grant.subject.clone())
    }

    pub(super) fn access_token_live(&self, access_token: &str) -> bool {
        self.access_tokens.get(access_token).is_some_and(|record| {
            !record.revoked
                && record.expires_at > Utc::now()
                && self.grants.get(&record.grant_id).is_some_and(|g| g.active)
        })
    }

    /// Ends a grant; whether it was live until now.
    pub(super) fn deactivate_grant(&mut self, grant_id: u64) -> bool {
        self.grants
            .get_mut(&grant_id)
            .is_some_and(|grant| std::mem::replace(&mut grant.active, false))
    }

    /// Union of the scopes of the subject's live grants for this client.
    pub(super) fn live_scopes(&self, client_id: &str, subject: &str) -> Vec<String> {
        let mut ids: Vec<_> = self
            .grants
            .iter()
            .filter(|(_, g)| g.active && g.client_id == client_id && g.subject == subject)
            .map(|(id, _)| *id)
            .collect();
        ids.sort_unstable();
        dedup(
            ids.iter()
                .filter_map(|id| self.grants.get(id))
                .flat_map(|g| g.scopes.iter().cloned()),
        )
    }
}

/// An opaque token: `prefix` and 32 random bytes, base64url.
pub(super) fn random_token(prefix: &str) -> String {
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    format!("{prefix}{}", URL_SAFE_NO_PAD.encode(bytes))
}

/// Locks a mutex, going on after a panic elsewhere (the state stays usable for the test).
pub(super) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}
