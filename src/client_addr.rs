//! The real client address behind a load balancer: the PROXY protocol (v1 or
//! v2) or `X-Forwarded-For`, believed only from configured trusted proxies.
//!
//! The address found here is the one the limits count and the logs show.

use std::net::{IpAddr, SocketAddr};

use hyper::HeaderMap;
use ipnet::IpNet;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// Who may tell the relay the client's address, and how.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies {
    pub nets: Vec<IpNet>,
    /// Trusted proxies open each connection with a PROXY protocol header.
    pub proxy_protocol: bool,
}

impl TrustedProxies {
    pub fn trusts(&self, ip: IpAddr) -> bool {
        self.nets.iter().any(|net| net.contains(&ip))
    }

    /// The client address from `X-Forwarded-For`, when the connection comes
    /// from a trusted proxy that does not use the PROXY protocol: the
    /// rightmost address that is not itself a trusted proxy.
    pub fn forwarded_for(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        if self.proxy_protocol || !self.trusts(peer) {
            return peer;
        }
        let hops: Vec<IpAddr> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|hop| hop.trim().parse().ok())
            .collect();
        hops.into_iter()
            .rev()
            .find(|hop| !self.trusts(*hop))
            .unwrap_or(peer)
    }
}

/// The 12-byte signature that opens a PROXY protocol v2 header.
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// Longest v1 header (the specification's bound).
const V1_MAX: usize = 107;
/// Longest v2 header accepted (addresses plus a little room for TLVs).
const V2_MAX: usize = 16 + 512;

/// Reads the PROXY protocol header that a trusted proxy sends first, and
/// returns the client's address (`None` for a proxy's own health check,
/// `LOCAL`/`UNKNOWN`). Reads exactly the header: what follows is the
/// client's own bytes.
pub async fn read_proxy_header(stream: &mut TcpStream) -> Result<Option<SocketAddr>, String> {
    let mut header = vec![0u8; 16];
    stream
        .read_exact(&mut header[..6])
        .await
        .map_err(|e| format!("reading the PROXY header: {e}"))?;
    if &header[..6] == b"PROXY " {
        // v1: text up to CRLF.
        header.truncate(6);
        while !header.ends_with(b"\r\n") {
            if header.len() >= V1_MAX {
                return Err("PROXY v1 header too long".into());
            }
            let byte = stream
                .read_u8()
                .await
                .map_err(|e| format!("reading the PROXY header: {e}"))?;
            header.push(byte);
        }
    } else {
        stream
            .read_exact(&mut header[6..16])
            .await
            .map_err(|e| format!("reading the PROXY header: {e}"))?;
        if &header[..12] != V2_SIGNATURE {
            return Err("the connection did not start with a PROXY protocol header".into());
        }
        let length = usize::from(u16::from_be_bytes([header[14], header[15]]));
        if 16 + length > V2_MAX {
            return Err("PROXY v2 header too long".into());
        }
        header.resize(16 + length, 0);
        stream
            .read_exact(&mut header[16..])
            .await
            .map_err(|e| format!("reading the PROXY header: {e}"))?;
    }
    parse(&header)
}

fn parse(header: &[u8]) -> Result<Option<SocketAddr>, String> {
    use ppp::{HeaderResult, v1, v2};
    match HeaderResult::parse(header) {
        HeaderResult::V1(Ok(h)) => Ok(match h.addresses {
            v1::Addresses::Tcp4(a) => Some(SocketAddr::new(a.source_address.into(), a.source_port)),
            v1::Addresses::Tcp6(a) => Some(SocketAddr::new(a.source_address.into(), a.source_port)),
            v1::Addresses::Unknown => None,
        }),
        HeaderResult::V2(Ok(h)) => {
            let client = match h.addresses {
                v2::Addresses::IPv4(a) => SocketAddr::new(a.source_address.into(), a.source_port),
                v2::Addresses::IPv6(a) => SocketAddr::new(a.source_address.into(), a.source_port),
                v2::Addresses::Unspecified | v2::Addresses::Unix(_) => return Ok(None),
            };
            // ppp reads the TLVs after the addresses only when asked. A header
            // whose TLVs do not fill the rest of it exactly (one running past
            // its declared length, or stray bytes) is not what a proxy sends:
            // refused, as HAProxy refuses it, before its address is believed.
            if let Some(Err(e)) = h.tlvs().find(Result::is_err) {
                return Err(format!("bad PROXY v2 header: {e}"));
            }
            Ok(Some(client))
        }
        HeaderResult::V1(Err(e)) => Err(format!("bad PROXY v1 header: {e}")),
        HeaderResult::V2(Err(e)) => Err(format!("bad PROXY v2 header: {e}")),
    }
}

/// Parses `--trusted-proxies`: addresses or networks (CIDR).
pub fn parse_net(s: &str) -> Result<IpNet, String> {
    let s = s.trim();
    s.parse::<IpNet>()
        .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| format!("{s:?} is neither an address nor a network like 10.0.0.0/8"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_and_v2_headers() {
        assert_eq!(
            parse(b"PROXY TCP4 203.0.113.7 10.0.0.1 51234 8765\r\n").unwrap(),
            Some("203.0.113.7:51234".parse().unwrap())
        );
        assert_eq!(parse(b"PROXY UNKNOWN\r\n").unwrap(), None);
        let mut v2 = V2_SIGNATURE.to_vec();
        v2.extend_from_slice(&[
            0x21, 0x11, 0, 12, 203, 0, 113, 7, 10, 0, 0, 1, 0xc8, 0x22, 0x22, 0x3d,
        ]);
        assert_eq!(
            parse(&v2).unwrap(),
            Some("203.0.113.7:51234".parse().unwrap())
        );
        assert!(parse(b"PROXY TCP4 nonsense\r\n").is_err());
    }

    /// A v2 header from 203.0.113.7:51234 whose declared length covers its
    /// addresses and `tlvs`.
    fn v2_with_tlvs(tlvs: &[u8]) -> Vec<u8> {
        let mut v2 = V2_SIGNATURE.to_vec();
        let length = u16::try_from(12 + tlvs.len()).unwrap();
        v2.extend_from_slice(&[0x21, 0x11]);
        v2.extend_from_slice(&length.to_be_bytes());
        v2.extend_from_slice(&[203, 0, 113, 7, 10, 0, 0, 1, 0xc8, 0x22, 0x22, 0x3d]);
        v2.extend_from_slice(tlvs);
        v2
    }

    #[test]
    fn v2_tlvs_must_fill_the_header_exactly() {
        let client = Some("203.0.113.7:51234".parse().unwrap());
        // NOOP with 2 bytes, ALPN "h2": well formed.
        let good = v2_with_tlvs(&[0x04, 0, 2, 0, 0, 0x01, 0, 2, b'h', b'2']);
        assert_eq!(parse(&good).unwrap(), client);
        // A TLV whose length runs past the header's.
        let overrun = parse(&v2_with_tlvs(&[0x01, 0, 5, b'h'])).unwrap_err();
        assert!(overrun.contains("TLV"), "{overrun}");
        // After a good TLV, two bytes too few for another.
        assert!(parse(&v2_with_tlvs(&[0x04, 0, 0, 0x04, 0])).is_err());
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let trusted = TrustedProxies {
            nets: vec![
                parse_net("10.0.0.0/8").unwrap(),
                parse_net("127.0.0.1").unwrap(),
            ],
            proxy_protocol: false,
        };
        let mut headers = HeaderMap::new();
        headers.insert(
            "x-forwarded-for",
            "198.51.100.1, 203.0.113.9, 10.1.2.3".parse().unwrap(),
        );
        let proxy: IpAddr = "10.0.0.5".parse().unwrap();
        let stranger: IpAddr = "192.0.2.1".parse().unwrap();
        assert_eq!(
            trusted.forwarded_for(proxy, &headers),
            "203.0.113.9".parse::<IpAddr>().unwrap()
        );
        assert_eq!(trusted.forwarded_for(stranger, &headers), stranger);
        assert_eq!(trusted.forwarded_for(proxy, &HeaderMap::new()), proxy);
        assert!(parse_net("nope").is_err());
    }
}
