//! The test's hand on the fake's grants: who consents and to what, grants
//! minted without a browser, token introspection, and revoking or expiring
//! everything at once (as a user or the provider would).

use chrono::{DateTime, TimeDelta, Utc};

use super::params::dedup;
use super::FakeProvider;

/// Tokens minted directly by [`FakeProvider::mint_grant`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MintedGrant {
    /// A live access token for the grant.
    pub access_token: String,
    /// The grant's refresh token.
    pub refresh_token: String,
    /// Lifetime of the access token in seconds.
    pub expires_in: u64,
}

/// What a live access token carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenInfo {
    /// The user the grant belongs to.
    pub subject: String,
    /// The client the token was issued to.
    pub client_id: String,
    /// The scopes of this access token (may be narrower than the grant's).
    pub scopes: Vec<String>,
    /// When the token expires.
    pub expires_at: DateTime<Utc>,
}

impl FakeProvider {
    /// Sets the user ("subject") of the next authorizations (default
    /// `"user-1"`); an authorization request's `login_hint` overrides it.
    pub fn set_subject(&self, subject: &str) {
        self.shared.lock_state().subject = subject.to_owned();
    }

    /// Overrides granted scopes for subsequent authorizations: of the
    /// requested scopes, grant only those in `scopes` (simulates a user
    /// unticking boxes). `None` grants everything requested again.
    pub fn grant_only(&self, scopes: Option<Vec<String>>) {
        self.shared.lock_state().grant_only = scopes;
    }

    /// Mints a grant directly (no browser), for seeding benchmarks.
    pub fn mint_grant(&self, subject: &str, scopes: &[&str]) -> MintedGrant {
        let config = &self.shared.config;
        let scopes = dedup(scopes.iter().map(|s| (*s).to_owned()));
        let mut state = self.shared.lock_state();
        let grant_id = state.new_grant(&config.client_id, subject, scopes.clone());
        let access_token = state.issue_access_token(grant_id, scopes, config.access_token_ttl);
        let refresh_token = state.issue_refresh_token(grant_id);
        MintedGrant {
            access_token,
            refresh_token,
            expires_in: config.access_token_ttl.as_secs(),
        }
    }

    /// What an access token carries, if it is live (issued here, not revoked,
    /// grant still active, not expired).
    pub fn introspect(&self, access_token: &str) -> Option<TokenInfo> {
        let state = self.shared.lock_state();
        let record = state.access_tokens.get(access_token)?;
        let grant = state.grants.get(&record.grant_id)?;
        if record.revoked || !grant.active || record.expires_at <= Utc::now() {
            return None;
        }
        Some(TokenInfo {
            subject: grant.subject.clone(),
            client_id: grant.client_id.clone(),
            scopes: record.scopes.clone(),
            expires_at: record.expires_at,
        })
    }

    /// Whether `refresh_token` would be accepted by the refresh grant now.
    pub fn is_refresh_token_active(&self, refresh_token: &str) -> bool {
        self.shared.lock_state().refresh_grant(refresh_token).is_some()
    }

    /// How many of the user's refresh tokens the refresh grant would accept
    /// now (active, of a live grant of this client).
    pub fn live_refresh_tokens(&self, subject: &str) -> usize {
        let state = self.shared.lock_state();
        state
            .refresh_tokens
            .iter()
            .filter(|(token, record)| {
                state.refresh_grant(token).is_some()
                    && state
                        .grants
                        .get(&record.grant_id)
                        .is_some_and(|g| g.subject == subject && g.client_id == self.shared.config.client_id)
            })
            .count()
    }

    /// The scopes of the user's live grants, in first-granted order.
    pub fn granted_scopes(&self, subject: &str) -> Vec<String> {
        self.shared
            .lock_state()
            .live_scopes(&self.shared.config.client_id, subject)
    }

    /// Invalidates every grant (as if the user revoked access at the
    /// provider): all refresh and access tokens stop working.
    pub fn revoke_all_grants(&self) {
        let mut state = self.shared.lock_state();
        for grant in state.grants.values_mut() {
            grant.active = false;
        }
    }

    /// Makes every access token issued so far expired (refresh tokens stay
    /// valid), so the next use needs a refresh.
    pub fn expire_access_tokens(&self) {
        let past = Utc::now() - TimeDelta::seconds(1);
        let mut state = self.shared.lock_state();
        for record in state.access_tokens.values_mut() {
            record.expires_at = past;
        }
    }

    /// Makes every authorization code issued so far expired.
    pub fn expire_authorization_codes(&self) {
        let past = Utc::now() - TimeDelta::seconds(1);
        let mut state = self.shared.lock_state();
        for code in state.codes.values_mut() {
            code.expires_at = past;
        }
    }
}
