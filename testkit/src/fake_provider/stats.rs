//! What reached the fake: request counters and the revocation records a test
//! reads through [`FakeProvider::stats`](super::FakeProvider::stats).

/// One request that reached an RFC 7009 endpoint (`POST /revoke` or
/// `POST /revoke-grant`) past fault injection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevocationRecord {
    /// The path of the endpoint it reached: `/revoke` or `/revoke-grant`.
    pub path: &'static str,
    /// The `token` parameter as sent.
    pub token: String,
    /// The `token_type_hint` parameter as sent, if any.
    pub token_type_hint: Option<String>,
    /// Whether client authentication succeeded (when not, nothing was revoked
    /// and the request was answered 401).
    pub client_authenticated: bool,
    /// Whether the token was a live access or refresh token when the request arrived.
    pub was_active: bool,
    /// Whether the request ended the token's grant (its refresh token and every
    /// access token of it), not only the token presented.
    pub ended_grant: bool,
}

/// One request that reached `POST /bearer-revoke` past fault injection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BearerRevocationRecord {
    /// The token of the `Authorization: Bearer` header, if the request had one.
    pub bearer_token: Option<String>,
    /// Whether the request carried client credentials anywhere (HTTP Basic,
    /// or `client_id`/`client_secret` in the query or a form or JSON body);
    /// the endpoint takes none.
    pub client_credentials_sent: bool,
    /// Whether the body was empty (or the JSON `null` of an argument-less call).
    pub body_empty: bool,
    /// Whether the bearer token was a live access token when the request arrived.
    pub was_active: bool,
    /// Whether the request ended the token's grant (its refresh token and
    /// every access token of it).
    pub ended_grant: bool,
}

/// What a token presented to `POST /slack-revoke` was when the request arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlackTokenKind {
    /// No bearer token was sent.
    None,
    /// A live refresh token.
    Refresh,
    /// A live access token.
    Access,
    /// An access token past its expiry.
    Expired,
    /// A token the fake issued that no longer works (revoked, rotated away,
    /// or of an ended grant).
    Dead,
    /// A token the fake never issued.
    Unknown,
}

/// One request that reached `POST /slack-revoke` past fault injection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlackRevocationRecord {
    /// The token of the `Authorization: Bearer` header, if the request had one.
    pub bearer_token: Option<String>,
    /// What that token was when the request arrived.
    pub kind: SlackTokenKind,
    /// Whether the request carried client credentials anywhere; the endpoint takes none.
    pub client_credentials_sent: bool,
    /// Whether the body was empty.
    pub body_empty: bool,
    /// Whether the token was a live refresh or access token when the request arrived.
    pub was_active: bool,
    /// Whether the request revoked that token (and nothing else).
    pub revoked: bool,
}

/// One request that reached `DELETE /applications/{client_id}/grant` past
/// fault injection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrantDeletionRecord {
    /// The client id in the path.
    pub client_id: String,
    /// The `access_token` of the JSON body, if there was one.
    pub access_token: Option<String>,
    /// Whether HTTP Basic carried the fake's client id and secret (and the
    /// path named that client).
    pub client_authenticated: bool,
    /// Whether the body was sent as `application/json`.
    pub json_body: bool,
    /// The `Accept` header as sent.
    pub accept: Option<String>,
    /// Whether the access token was live when the request arrived.
    pub was_active: bool,
    /// How many grants (of that client, for the token's user) it ended.
    pub grants_deleted: usize,
}

/// A snapshot of what reached the fake.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Requests to `GET /authorize`, including those answered by a fault.
    pub authorize_requests: u64,
    /// Requests to `GET /userinfo`.
    pub userinfo_requests: u64,
    /// Token requests with `grant_type=authorization_code`, successful or not
    /// (including those answered by a fault).
    pub code_exchanges: u64,
    /// Token requests with `grant_type=refresh_token`, successful or not
    /// (including those answered by a fault).
    pub refreshes: u64,
    /// Refresh requests answered with new tokens.
    pub successful_refreshes: u64,
    /// Refresh requests that presented a refresh token the fake had already
    /// rotated away or revoked (what a lost rotation looks like to a provider).
    pub retired_refresh_tokens_presented: u64,
    /// Revocation requests processed (past fault injection), in arrival order.
    pub revocations: Vec<RevocationRecord>,
    /// Every request to `POST /token`, including those answered by a fault.
    pub token_endpoint_requests: u64,
    /// Every request to `POST /refresh` (the separate refresh endpoint),
    /// including those answered by a fault.
    pub refresh_endpoint_requests: u64,
    /// Every request to `POST /revoke` and `POST /revoke-grant`, including
    /// those answered by a fault.
    pub revoke_endpoint_requests: u64,
    /// Grant deletions processed (past fault injection), in arrival order.
    pub grant_deletions: Vec<GrantDeletionRecord>,
    /// Every request to `DELETE /applications/{client_id}/grant`, including
    /// those answered by a fault.
    pub grant_endpoint_requests: u64,
    /// Bearer revocations processed (past fault injection), in arrival order.
    pub bearer_revocations: Vec<BearerRevocationRecord>,
    /// Every request to `POST /bearer-revoke`, including those answered by a fault.
    pub bearer_revoke_endpoint_requests: u64,
    /// Slack-style revocations processed (past fault injection), in arrival order.
    pub slack_revocations: Vec<SlackRevocationRecord>,
    /// Every request to `POST /slack-revoke`, including those answered by a fault.
    pub slack_revoke_endpoint_requests: u64,
}
