//! Token refresh: the token in use, when to replace it, and the one fetch from the provider
//! that refreshes and reconnects share, so a token is fetched once however many need it.

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use tokio::time::Instant;

use crate::token::{SharedProvider, TokenError, remaining_validity, token_expiry_ms, unix_now_ms};

/// A token fetch in flight.
type TokenFetch = Pin<Box<dyn Future<Output = Result<String, TokenError>> + Send>>;

/// The token in use and when to replace it.
#[derive(Debug, Clone)]
struct CachedToken {
    /// The JWT.
    token: String,
    /// When to refresh it (its `exp` less the margin); `None` when its expiry is unknown.
    refresh_at: Option<Instant>,
    /// Its `exp`, in ms since the Unix epoch.
    expires_at_ms: Option<u64>,
}

/// The token in use and the fetch of the next one.
pub(crate) struct Tokens {
    /// Where tokens come from.
    provider: SharedProvider,
    /// How long before `exp` a token is replaced.
    margin: Duration,
    /// The token in use.
    cached: Option<CachedToken>,
    /// A token fetch in flight, shared by refreshes and reconnects.
    fetch: Option<TokenFetch>,
}

impl Tokens {
    /// No token yet; `margin` before a token's `exp` it is refreshed.
    pub(crate) fn new(provider: SharedProvider, margin: Duration) -> Self {
        Self {
            provider,
            margin,
            cached: None,
            fetch: None,
        }
    }

    /// The token to connect with: the cached one while it is fresh, else the one being
    /// fetched, else a new fetch.
    pub(crate) async fn current(&mut self) -> Result<String, TokenError> {
        if let Some(cached) = &self.cached
            && cached.refresh_at.is_none_or(|at| Instant::now() < at)
        {
            return Ok(cached.token.clone());
        }
        let fetch = self.fetch.take().unwrap_or_else(|| self.new_fetch());
        let token = fetch.await?;
        self.keep(token.clone());
        Ok(token)
    }

    /// Forgets the token in use (the server refused or expired it).
    pub(crate) fn forget(&mut self) {
        self.cached = None;
    }

    /// Keeps `token` as the one in use.
    pub(crate) fn keep(&mut self, token: String) {
        let now_ms = unix_now_ms();
        let refresh_at = remaining_validity(&token, now_ms)
            .map(|left| Instant::now() + left.saturating_sub(self.margin));
        let expires_at_ms = token_expiry_ms(&token);
        self.cached = Some(CachedToken {
            token,
            refresh_at,
            expires_at_ms,
        });
    }

    /// When the token in use should be refreshed; `None` without one or when its expiry is
    /// unknown.
    pub(crate) fn refresh_at(&self) -> Option<Instant> {
        self.cached.as_ref().and_then(|cached| cached.refresh_at)
    }

    /// The token in use's `exp`, in ms since the Unix epoch.
    pub(crate) fn expires_at_ms(&self) -> Option<u64> {
        self.cached.as_ref().and_then(|cached| cached.expires_at_ms)
    }

    /// Whether a fetch is under way.
    pub(crate) fn fetching(&self) -> bool {
        self.fetch.is_some()
    }

    /// Starts a fetch unless one is under way.
    pub(crate) fn start_fetch(&mut self) {
        if self.fetch.is_none() {
            self.fetch = Some(self.new_fetch());
        }
    }

    /// Polls the fetch under way (pending forever without one); it is over once ready.
    pub(crate) fn poll_fetch(&mut self, cx: &mut Context<'_>) -> Poll<Result<String, TokenError>> {
        let Some(fetch) = self.fetch.as_mut() else {
            return Poll::Pending;
        };
        let result = fetch.as_mut().poll(cx);
        if result.is_ready() {
            self.fetch = None;
        }
        result
    }

    /// Asks the provider for a token.
    fn new_fetch(&self) -> TokenFetch {
        let provider = Arc::clone(&self.provider);
        Box::pin(async move { provider.token().await })
    }
}
