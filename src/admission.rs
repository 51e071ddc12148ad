//! The connection limits, `--max-connections` per node and
//! `--max-connections-per-address`, counted from the moment a connection is
//! accepted until its socket is closed, as HAProxy's `maxconn` counts: a
//! connection still in its handshake, or one that never sends a byte
//! (slowloris), holds a socket and memory like any other.
//!
//! A connection over a limit is not served, but as long as the node can
//! afford it, it is not dropped unanswered either: a small reserve
//! ([`RESERVE`] connections at once, [`RESERVE_PER_ADDRESS`] of them from
//! one client address, each for [`RESERVE_TIMEOUT`] at most before its
//! answer) answers health checks as usual (a full node is not a dead one,
//! and its load balancer and probes must see that), a WebSocket upgrade with
//! 101 and close 1013, and anything else with 503. Past the reserve, a
//! connection is closed at once, unread.
//!
//! A client's address is known at accept, unless its peer is a trusted
//! proxy: then it is counted when the proxy names it (its PROXY header, or
//! the `X-Forwarded-For` of an upgrade), and until then only against the
//! node's limit.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Connections over a limit that are answered at once.
pub const RESERVE: usize = 32;
/// Of them, from one client address: one address over its limit cannot take
/// the reserve from the health checks.
pub const RESERVE_PER_ADDRESS: u32 = 4;
/// The longest a connection in the reserve may take over its request (and
/// its PROXY header, TLS handshake): a health check takes milliseconds.
pub const RESERVE_TIMEOUT: Duration = Duration::from_secs(2);

/// Files the process holds besides its clients' sockets: the listener,
/// Redis connections, key files, standard streams, with room to spare.
const FILES_BESIDES_CLIENTS: u64 = 64;

/// Connections per client address.
type Counts = Arc<Mutex<HashMap<IpAddr, u32>>>;

/// Warns when the process may open fewer files than `--max-connections`
/// (and the reserve) need: past its file limit, accepting fails for every
/// connection, health checks included, whatever the limits say. Where the
/// limit cannot be read (not Linux), says nothing.
pub fn warn_if_files_are_short(max_connections: usize) {
    let Some(limit) = open_files_limit() else {
        return;
    };
    let needed = max_connections as u64 + RESERVE as u64 + FILES_BESIDES_CLIENTS;
    if limit < needed {
        tracing::warn!(
            open_files_limit = limit,
            needed,
            "the file limit (ulimit -n, LimitNOFILE) is below what --max-connections needs: \
             raise it, or lower --max-connections, or a flood of connections leaves even \
             health checks unanswered"
        );
    }
}

/// The soft limit on open files, from `/proc/self/limits` (`None` where
/// there is none, or it is unlimited).
fn open_files_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.trim_start_matches("Max open files")
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The node's connection limits; see the module's documentation.
#[derive(Debug)]
pub struct Limits {
    /// One permit per connection: `--max-connections`.
    node: Arc<Semaphore>,
    /// `--max-connections-per-address`.
    addresses: Counts,
    per_address: u32,
    reserve: Arc<Semaphore>,
    reserve_addresses: Counts,
}

/// Which limit a connection is over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    Node,
    Address,
}

impl Limit {
    /// Why the connection is refused: the reason of its close frame (1013),
    /// the body of its 503.
    pub fn reason(self) -> &'static str {
        match self {
            Limit::Node => "too many connections",
            Limit::Address => "too many connections from your address",
        }
    }
}

/// What a connection holds against the limits, from accept until its socket
/// is closed (given back on drop).
#[derive(Debug)]
pub enum Admission {
    /// Within the limits: served.
    Admitted(Place),
    /// Over a limit, in the reserve: health checks answered, an upgrade
    /// closed with 1013, anything else 503.
    Reserve(Limit, Held),
}

/// A place under the limits: the node's permit and, once the client's
/// address is known, its count there.
#[derive(Debug)]
pub struct Place {
    _permit: OwnedSemaphorePermit,
    slot: Option<AddressSlot>,
}

/// A place in the reserve.
#[derive(Debug)]
pub struct Held {
    _permit: OwnedSemaphorePermit,
    _slot: Option<AddressSlot>,
}

impl Limits {
    pub fn new(max_connections: usize, per_address: u32) -> Self {
        Self {
            node: Arc::new(Semaphore::new(max_connections)),
            addresses: Counts::default(),
            per_address,
            reserve: Arc::new(Semaphore::new(RESERVE)),
            reserve_addresses: Counts::default(),
        }
    }

    /// Counts a connection just accepted. `client` is its address where the
    /// peer is the client (`None` for a trusted proxy, which names the
    /// client later: [`Limits::name_client`]). `None`: over a limit with the
    /// reserve full too; close it at once.
    pub fn admit(&self, client: Option<IpAddr>) -> Option<Admission> {
        let Ok(permit) = self.node.clone().try_acquire_owned() else {
            return self.reserve(Limit::Node, client);
        };
        let place = Place {
            _permit: permit,
            slot: None,
        };
        match client {
            None => Some(Admission::Admitted(place)),
            Some(client) => self.count_address(place, client),
        }
    }

    /// Counts an admitted connection against its client's address, once a
    /// trusted proxy has named the client. A connection counted already, or
    /// in the reserve, stays as it is. `None`: over the client's limit with
    /// the reserve full; close it at once.
    pub fn name_client(&self, admission: Admission, client: IpAddr) -> Option<Admission> {
        match admission {
            Admission::Admitted(place) if place.slot.is_none() => self.count_address(place, client),
            counted => Some(counted),
        }
    }

    fn count_address(&self, mut place: Place, client: IpAddr) -> Option<Admission> {
        match AddressSlot::take(&self.addresses, client, self.per_address) {
            Some(slot) => {
                place.slot = Some(slot);
                Some(Admission::Admitted(place))
            }
            None => {
                drop(place);
                self.reserve(Limit::Address, Some(client))
            }
        }
    }

    fn reserve(&self, limit: Limit, client: Option<IpAddr>) -> Option<Admission> {
        let permit = self.reserve.clone().try_acquire_owned().ok()?;
        let slot = match client {
            Some(client) => Some(AddressSlot::take(
                &self.reserve_addresses,
                client,
                RESERVE_PER_ADDRESS,
            )?),
            None => None,
        };
        Some(Admission::Reserve(
            limit,
            Held {
                _permit: permit,
                _slot: slot,
            },
        ))
    }
}

impl Admission {
    /// The limit the connection is over, if any.
    pub fn over(&self) -> Option<Limit> {
        match self {
            Admission::Admitted(_) => None,
            Admission::Reserve(limit, _) => Some(*limit),
        }
    }

    /// The longest its PROXY header, TLS handshake and HTTP request may take
    /// together: `configured` (`--handshake-timeout`), or less in the
    /// reserve.
    pub fn handshake_timeout(&self, configured: Duration) -> Duration {
        match self {
            Admission::Admitted(_) => configured,
            Admission::Reserve(..) => configured.min(RESERVE_TIMEOUT),
        }
    }
}

/// One of a client address's connections; given back on drop.
#[derive(Debug)]
struct AddressSlot {
    counts: Counts,
    address: IpAddr,
}

impl AddressSlot {
    fn take(counts: &Counts, address: IpAddr, max: u32) -> Option<Self> {
        let mut map = counts.lock().unwrap_or_else(|e| e.into_inner());
        let count = map.entry(address).or_default();
        if *count >= max {
            if *count == 0 {
                map.remove(&address);
            }
            return None;
        }
        *count += 1;
        Some(Self {
            counts: counts.clone(),
            address,
        })
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut map = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = map.get_mut(&self.address) {
            *count -= 1;
            if *count == 0 {
                map.remove(&self.address);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 2));

    #[test]
    fn the_open_files_limit_is_read_on_linux() {
        if cfg!(target_os = "linux") {
            assert!(open_files_limit().is_some_and(|n| n > 0));
        }
    }

    #[test]
    fn over_a_limit_into_the_reserve_then_nowhere() {
        let limits = Limits::new(3, 2);
        let a1 = limits.admit(Some(A)).expect("a place");
        let a2 = limits.admit(Some(A)).expect("a place");
        assert_eq!((a1.over(), a2.over()), (None, None));
        // A is at its limit: the reserve, RESERVE_PER_ADDRESS times.
        let over: Vec<_> = (0..RESERVE_PER_ADDRESS)
            .map(|_| limits.admit(Some(A)).expect("the reserve"))
            .collect();
        assert!(over.iter().all(|a| a.over() == Some(Limit::Address)));
        assert!(limits.admit(Some(A)).is_none(), "A's share of the reserve");
        // B takes the node's last place, then the node is full.
        let b1 = limits.admit(Some(B)).expect("a place");
        assert_eq!(b1.over(), None);
        let b2 = limits.admit(Some(B)).expect("the reserve");
        assert_eq!(b2.over(), Some(Limit::Node));
        // A place given back is taken again, the address's too.
        drop(a1);
        assert_eq!(limits.admit(Some(A)).expect("a place").over(), None);
        drop((a2, over, b1, b2));
    }

    #[test]
    fn a_client_named_by_a_proxy_is_counted_then() {
        let limits = Limits::new(10, 1);
        let first = limits.admit(None).expect("a place");
        let first = limits.name_client(first, A).expect("counted for A");
        assert_eq!(first.over(), None);
        let second = limits.admit(None).expect("a place");
        assert_eq!(
            limits.name_client(second, A).expect("the reserve").over(),
            Some(Limit::Address)
        );
        // Counted once: naming again changes nothing.
        let first = limits.name_client(first, B).expect("unchanged");
        assert_eq!(first.over(), None);
        let b = limits.admit(Some(B)).expect("B was never counted");
        assert_eq!(b.over(), None);
        drop((first, b));
    }
}
