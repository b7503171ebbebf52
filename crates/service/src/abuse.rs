//! The limits on what one stranger can make Herald spend before it knows who they are: new
//! connections per second and open connections per client address, and publish requests per
//! second per API key.
//!
//! The client address is the socket's peer, unless the peer is a trusted proxy
//! (`trusted_proxies`): then it is the nearest address in `X-Forwarded-For` that is not a
//! trusted proxy, read from the connection's first request. Rates are GCRA (governor, keyed),
//! read on the gateway's `Clock`.

use std::{
    collections::HashMap,
    hash::Hash,
    net::IpAddr,
    num::NonZeroU32,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use governor::{
    Quota, RateLimiter, clock::Clock as GovernorClock, middleware::NoOpMiddleware,
    state::keyed::DefaultKeyedStateStore,
};
use herald_config::{BaseConfig, IpBlock};
use herald_utils::Clock;
use http::{HeaderMap, HeaderName};

use crate::head::{Headers, text};

/// The header a trusted proxy names its client in.
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// A keyed GCRA limiter on the gateway's clock.
type Keyed<K> = RateLimiter<K, DefaultKeyedStateStore<K>, LimiterClock, NoOpMiddleware<Duration>>;

/// The gateway's `Clock` as governor's clock: the time since the limiter was made.
#[derive(Clone)]
struct LimiterClock {
    clock: Arc<dyn Clock>,
    origin: Instant,
}

impl GovernorClock for LimiterClock {
    type Instant = Duration;

    fn now(&self) -> Duration {
        self.clock.now().saturating_duration_since(self.origin)
    }
}

/// Why a connection or request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The client address opened connections faster than `connection_rate_per_ip`.
    ConnectionRate,
    /// The client address holds `max_connections_per_ip` connections already.
    OpenConnections,
    /// The API key published faster than `api_publish_rate_per_key`; retry after this long.
    PublishRate(Duration),
}

impl Refusal {
    /// The `reason` label of the refusal's metric.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Self::ConnectionRate => "ip_rate",
            Self::OpenConnections => "ip_connections",
            Self::PublishRate(_) => "api_key_publish_rate",
        }
    }
}

/// Every limit of this module and its state.
pub(crate) struct Shield {
    limiter_clock: LimiterClock,
    connection_rate: Option<Keyed<IpAddr>>,
    max_per_ip: u32,
    /// Open connections by client address, for `max_per_ip`; addresses with none are removed.
    open: Mutex<HashMap<IpAddr, u32>>,
    trusted: Vec<IpBlock>,
    /// Keyed by the key's position in `api_keys`, so no copy of a secret is kept here.
    publish_rate: Option<Keyed<usize>>,
}

/// A connection's standing with the limits, held for its whole life: how it counts against
/// its client address (uncounted when dropped), and the limits themselves, for its requests.
pub(crate) struct Client {
    shield: Arc<Shield>,
    count: Count,
}

/// How a connection counts against the per-address limits.
enum Count {
    /// Not counted: the limits are off, or a trusted proxy's request named no client.
    Unlimited,
    /// Counted against this client address.
    Counted(IpAddr),
    /// From a trusted proxy: to be counted by the client its first request names.
    Proxied,
}

impl Drop for Client {
    fn drop(&mut self) {
        if let Count::Counted(ip) = self.count {
            let mut open = self.shield.lock_open();
            if let Some(count) = open.get_mut(&ip) {
                *count -= 1;
                if *count == 0 {
                    open.remove(&ip);
                }
            }
        }
    }
}

impl Shield {
    /// The limits of `config`, on `clock`.
    pub(crate) fn new(config: &BaseConfig, clock: Arc<dyn Clock>) -> Self {
        let limiter_clock = LimiterClock {
            origin: clock.now(),
            clock,
        };
        Self {
            connection_rate: keyed(config.connection_rate_per_ip, &limiter_clock),
            publish_rate: keyed(config.api_publish_rate_per_key, &limiter_clock),
            max_per_ip: config.max_connections_per_ip,
            open: Mutex::new(HashMap::new()),
            trusted: config.trusted_proxies.clone(),
            limiter_clock,
        }
    }

    /// Whether the per-address limits are on at all; when off, nothing is tracked.
    fn limits_addresses(&self) -> bool {
        self.connection_rate.is_some() || self.max_per_ip > 0
    }

    /// Whether `peer` is a trusted proxy, whose connections are counted by the client that
    /// `X-Forwarded-For` names instead.
    fn is_trusted_proxy(&self, peer: IpAddr) -> bool {
        self.trusted.iter().any(|block| block.contains(peer))
    }

    /// Admits a new connection from `peer` at accept, or refuses it (counted in
    /// `herald_abuse_refusals_total`). A trusted proxy's connection is admitted for now and
    /// counted once its first request names the client ([`Client::resolve`]).
    pub(crate) fn accept(self: &Arc<Self>, peer: IpAddr) -> Result<Client, Refusal> {
        let peer = peer.to_canonical();
        let count = if !self.limits_addresses() {
            Count::Unlimited
        } else if self.is_trusted_proxy(peer) {
            Count::Proxied
        } else {
            self.admit(peer)?
        };
        Ok(Client {
            shield: Arc::clone(self),
            count,
        })
    }

    /// The nearest address of `X-Forwarded-For` (every such header, in order, read from the
    /// right) that is not a trusted proxy; `None` when there is none or an entry is not an
    /// address (a list that cannot be trusted as a whole).
    fn forwarded_client(&self, headers: &impl Headers) -> Option<IpAddr> {
        // A value that is not text names no client (rather than skipping it).
        if headers
            .values(&X_FORWARDED_FOR)
            .any(|value| text(value).is_none())
        {
            return None;
        }
        let entries: Vec<&str> = headers.items(&X_FORWARDED_FOR).collect();
        for entry in entries.into_iter().rev() {
            let ip = entry.parse::<IpAddr>().ok()?.to_canonical();
            if !self.is_trusted_proxy(ip) {
                return Some(ip);
            }
        }
        None
    }

    /// Counts a new connection of `ip` against the rate and the open-connection limit.
    fn admit(&self, ip: IpAddr) -> Result<Count, Refusal> {
        if let Some(rate) = &self.connection_rate
            && rate.check_key(&ip).is_err()
        {
            return Err(refused(Refusal::ConnectionRate));
        }
        let mut open = self.lock_open();
        let count = open.entry(ip).or_insert(0);
        if self.max_per_ip > 0 && *count >= self.max_per_ip {
            if *count == 0 {
                open.remove(&ip);
            }
            return Err(refused(Refusal::OpenConnections));
        }
        *count += 1;
        Ok(Count::Counted(ip))
    }

    /// Takes one publish request from the rate of the API key at `key_index` in `api_keys`.
    pub(crate) fn check_publish(&self, key_index: usize) -> Result<(), Refusal> {
        let Some(rate) = &self.publish_rate else {
            return Ok(());
        };
        rate.check_key(&key_index).map_err(|not_until| {
            let now = self.limiter_clock.now();
            refused(Refusal::PublishRate(not_until.wait_time_from(now)))
        })
    }

    /// Forgets the rate state of keys that are back to a full burst, and gives back the
    /// memory; the housekeeping calls this now and then, so a scan of many addresses does not
    /// leave its traces behind.
    pub(crate) fn upkeep(&self) {
        fn trim<K: Hash + Eq + Clone>(limiter: Option<&Keyed<K>>) {
            if let Some(limiter) = limiter {
                limiter.retain_recent();
                limiter.shrink_to_fit();
            }
        }
        trim(self.connection_rate.as_ref());
        trim(self.publish_rate.as_ref());
        self.lock_open().shrink_to_fit();
    }

    /// Client addresses with rate state or open connections counted, for tests.
    #[cfg(test)]
    fn tracked(&self) -> (usize, usize) {
        let rate = self.connection_rate.as_ref().map_or(0, Keyed::len);
        (rate, self.lock_open().len())
    }

    fn lock_open(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, u32>> {
        self.open.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Client {
    /// Moves this connection's count into the returned `Client`, leaving this one uncounted:
    /// for the HTTP path, whose requests and upgrade outlive this borrow (see [`Standing`]).
    pub(crate) fn hand_over(&mut self) -> Self {
        Self {
            shield: Arc::clone(&self.shield),
            count: std::mem::replace(&mut self.count, Count::Unlimited),
        }
    }

    /// For a trusted proxy's connection, counts it by the client that its first request's
    /// `X-Forwarded-For` names (none named: the proxy itself, not limited). Otherwise nothing
    /// changes.
    pub(crate) fn resolve(&mut self, headers: &impl Headers) -> Result<(), Refusal> {
        if let Count::Proxied = self.count {
            self.count = match self.shield.forwarded_client(headers) {
                Some(client) => self.shield.admit(client)?,
                None => Count::Unlimited,
            };
        }
        Ok(())
    }
}

/// A connection's [`Client`] while hyper serves it, shared with its requests: a `GET /ws`
/// upgrade takes it, so the WebSocket keeps counting against its client address after hyper
/// has let the connection go; otherwise it is dropped with the connection.
pub(crate) struct Standing {
    shield: Arc<Shield>,
    client: Mutex<Option<Client>>,
}

impl Standing {
    /// `client`'s standing, for hyper's requests.
    pub(crate) fn new(client: Client) -> Self {
        Self {
            shield: Arc::clone(&client.shield),
            client: Mutex::new(Some(client)),
        }
    }

    /// The limits, for the connection's requests.
    pub(crate) fn shield(&self) -> &Shield {
        &self.shield
    }

    /// Takes the connection's [`Client`] for the WebSocket it is upgraded to, counted by the
    /// client that `headers` name when it came through a trusted proxy ([`Client::resolve`]);
    /// refused, the standing stays. `None` once taken (a connection upgrades once).
    pub(crate) fn take(&self, headers: &HeaderMap) -> Result<Option<Client>, Refusal> {
        let mut slot = self.client.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(client) = slot.as_mut() else {
            return Ok(None);
        };
        client.resolve(headers)?;
        Ok(slot.take())
    }
}

/// A keyed limiter of `per_second` (bursts of as many), or none for zero.
fn keyed<K: Hash + Eq + Clone>(per_second: u32, clock: &LimiterClock) -> Option<Keyed<K>> {
    NonZeroU32::new(per_second).map(|rate| {
        RateLimiter::new(
            Quota::per_second(rate),
            DefaultKeyedStateStore::default(),
            clock.clone(),
        )
    })
}

/// Counts a refusal (`herald_abuse_refusals_total{reason}`) and returns it.
fn refused(refusal: Refusal) -> Refusal {
    metrics::counter!("herald_abuse_refusals_total", "reason" => refusal.label()).increment(1);
    refusal
}

#[cfg(test)]
mod tests {
    use herald_utils::ManualClock;

    use super::*;

    fn shield(config: &BaseConfig, clock: &Arc<ManualClock>) -> Arc<Shield> {
        let clock: Arc<dyn Clock> = Arc::clone(clock) as Arc<dyn Clock>;
        Arc::new(Shield::new(config, clock))
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("an address")
    }

    #[test]
    fn with_no_limits_nothing_is_tracked() {
        let clock = Arc::new(ManualClock::new());
        let shield = shield(&BaseConfig::default(), &clock);
        for _ in 0..100 {
            let client = shield.accept(ip("192.0.2.1")).expect("admitted");
            assert!(matches!(client.count, Count::Unlimited));
        }
        assert_eq!(shield.tracked(), (0, 0));
    }

    #[test]
    fn the_connection_rate_holds_one_address_and_refills_on_the_clock() {
        let clock = Arc::new(ManualClock::new());
        let mut config = BaseConfig::default();
        config.connection_rate_per_ip = 3;
        let shield = shield(&config, &clock);
        let flood = ip("192.0.2.1");
        let mut tickets = Vec::new();
        for _ in 0..3 {
            tickets.push(shield.accept(flood).expect("within the burst"));
        }
        assert_eq!(shield.accept(flood).err(), Some(Refusal::ConnectionRate));
        // Another address is not held by the first one's flood.
        assert!(shield.accept(ip("192.0.2.2")).is_ok());
        // A third of a second later one more connection is allowed, and only one.
        clock.advance(Duration::from_millis(334));
        assert!(shield.accept(flood).is_ok());
        assert_eq!(shield.accept(flood).err(), Some(Refusal::ConnectionRate));
        // Once the burst is whole again, upkeep forgets the address.
        clock.advance(Duration::from_secs(2));
        drop(tickets);
        shield.upkeep();
        assert_eq!(shield.tracked().0, 0);
    }

    #[test]
    fn open_connections_per_address_are_counted_until_dropped() {
        let clock = Arc::new(ManualClock::new());
        let mut config = BaseConfig::default();
        config.max_connections_per_ip = 2;
        let shield = shield(&config, &clock);
        let client = ip("2001:db8::1");
        let first = shield.accept(client).expect("first");
        let second = shield.accept(client).expect("second");
        assert_eq!(shield.accept(client).err(), Some(Refusal::OpenConnections));
        drop(first);
        let third = shield.accept(client).expect("a place was freed");
        drop((second, third));
        assert_eq!(
            shield.tracked().1,
            0,
            "addresses without connections are removed"
        );
    }

    #[test]
    fn an_upgrade_takes_the_connections_count_with_it() {
        let clock = Arc::new(ManualClock::new());
        let mut config = BaseConfig::default();
        config.max_connections_per_ip = 1;
        let shield = shield(&config, &clock);
        let mut accepted = shield.accept(ip("10.0.0.1")).unwrap();
        // The HTTP path holds the count; the accepting task's `Client` no longer does.
        let standing = Standing::new(accepted.hand_over());
        drop(accepted);
        assert_eq!(shield.tracked(), (0, 1));
        let upgraded = standing.take(&HeaderMap::new()).unwrap().unwrap();
        assert!(standing.take(&HeaderMap::new()).unwrap().is_none());
        // The HTTP connection ends; the WebSocket still counts.
        drop(standing);
        assert!(shield.accept(ip("10.0.0.1")).is_err());
        drop(upgraded);
        assert!(shield.accept(ip("10.0.0.1")).is_ok());
    }

    #[test]
    fn forwarded_clients_are_read_from_the_right_past_trusted_proxies() {
        let clock = Arc::new(ManualClock::new());
        let mut config = BaseConfig::default();
        config.trusted_proxies = vec!["10.0.0.0/8".parse().expect("block")];
        let shield = shield(&config, &clock);
        let forwarded = |values: &[&str]| {
            let mut headers = HeaderMap::new();
            for value in values {
                headers.append("x-forwarded-for", value.parse().expect("header value"));
            }
            shield.forwarded_client(&headers)
        };
        assert_eq!(forwarded(&["203.0.113.9"]), Some(ip("203.0.113.9")));
        // A client can write anything on the left; the nearest untrusted hop is the client.
        assert_eq!(
            forwarded(&["1.2.3.4, 203.0.113.9, 10.0.0.2"]),
            Some(ip("203.0.113.9"))
        );
        assert_eq!(
            forwarded(&["1.2.3.4", "203.0.113.9, 10.0.0.2"]),
            Some(ip("203.0.113.9"))
        );
        assert_eq!(forwarded(&["10.0.0.2"]), None);
        assert_eq!(forwarded(&[]), None);
        assert_eq!(forwarded(&["203.0.113.9, junk"]), None);
    }

    #[test]
    fn a_trusted_proxys_connections_count_against_the_forwarded_client() {
        let clock = Arc::new(ManualClock::new());
        let mut config = BaseConfig::default();
        config.max_connections_per_ip = 1;
        config.trusted_proxies = vec!["10.0.0.0/8".parse().expect("block")];
        let shield = shield(&config, &clock);
        let request = |client: &str| {
            let mut headers = HeaderMap::new();
            headers.insert("x-forwarded-for", client.parse().expect("header value"));
            headers
        };
        let proxy = ip("10.0.0.2");
        let mut first = shield.accept(proxy).expect("a proxy is admitted at accept");
        assert!(matches!(first.count, Count::Proxied));
        first
            .resolve(&request("203.0.113.9"))
            .expect("first of its client");
        assert!(matches!(first.count, Count::Counted(_)));
        let mut second = shield.accept(proxy).expect("admitted at accept");
        assert_eq!(
            second.resolve(&request("203.0.113.9")).err(),
            Some(Refusal::OpenConnections)
        );
        let mut other = shield.accept(proxy).expect("admitted at accept");
        other
            .resolve(&request("203.0.113.10"))
            .expect("another client");
        // A peer that is not a trusted proxy is counted by its own address, whatever it
        // forwards.
        let mut direct = shield
            .accept(ip("192.0.2.1"))
            .expect("first of its address");
        direct.resolve(&request("203.0.113.11")).expect("unchanged");
        assert!(shield.accept(ip("192.0.2.1")).is_err());
    }

    #[test]
    fn publish_rate_is_per_key_with_a_retry_after() {
        let clock = Arc::new(ManualClock::new());
        let mut config = BaseConfig::default();
        config.api_publish_rate_per_key = 2;
        let shield = shield(&config, &clock);
        assert_eq!(shield.check_publish(0), Ok(()));
        assert_eq!(shield.check_publish(0), Ok(()));
        assert_eq!(
            shield.check_publish(0),
            Err(Refusal::PublishRate(Duration::from_millis(500)))
        );
        assert_eq!(shield.check_publish(1), Ok(()), "another key");
        clock.advance(Duration::from_millis(500));
        assert_eq!(shield.check_publish(0), Ok(()));
    }
}
