//! Where the lobby store lives: one Redis (`redis://`, `rediss://`) or a
//! Redis Cluster (`redis+cluster://`, `rediss+cluster://`), as the command
//! line, `inspect` and the store read it. (The one connection type of both
//! is in `connections.rs`.)
//!
//! A cluster URL lists seed nodes, comma-separated, with the credentials and
//! options of a plain URL, which apply to every node:
//! `redis+cluster://:secret@10.0.0.1:7000,10.0.0.2:7000,10.0.0.3:7000/`. The
//! seeds only need to include one reachable node; the client learns the rest
//! of the topology (and follows its changes) from the cluster itself.

pub use redis::cluster_routing::Slot;

/// The lobby store's address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// One Redis (or a proxy that looks like one).
    Single(String),
    /// A Redis Cluster, by the URLs of its seed nodes.
    Cluster(Vec<String>),
}

impl Target {
    /// Parses a `--redis-url`: `redis://`, `rediss://`, `unix://`, or the
    /// cluster forms `redis+cluster://` and `rediss+cluster://` with a
    /// comma-separated list of `host:port` seeds.
    pub fn parse(url: &str) -> Result<Target, String> {
        let cluster = [
            ("redis+cluster://", "redis://"),
            ("rediss+cluster://", "rediss://"),
        ]
        .into_iter()
        .find_map(|(prefix, plain)| Some((url.strip_prefix(prefix)?, plain)));
        let Some((rest, scheme)) = cluster else {
            redis::Client::open(url)
                .map_err(|e| format!("{e} (example: redis://127.0.0.1:6379/)"))?;
            return Ok(Target::Single(url.to_owned()));
        };
        // authority [/path] [?query]: the path and query apply to every seed.
        let end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(end);
        let (userinfo, hosts) = match authority.rfind('@') {
            Some(at) => (&authority[..=at], &authority[at + 1..]),
            None => ("", authority),
        };
        let seeds: Vec<String> = hosts
            .split(',')
            .map(str::trim)
            .filter(|h| !h.is_empty())
            .map(|host| format!("{scheme}{userinfo}{host}{tail}"))
            .collect();
        if seeds.is_empty() {
            return Err(format!(
                "a cluster URL names at least one seed node (example: {})",
                "redis+cluster://10.0.0.1:7000,10.0.0.2:7000/"
            ));
        }
        for seed in &seeds {
            redis::Client::open(seed.as_str())
                .map_err(|e| format!("seed {}: {e}", redacted(seed)))?;
        }
        Ok(Target::Cluster(seeds))
    }

    pub fn is_cluster(&self) -> bool {
        matches!(self, Target::Cluster(_))
    }
}

/// A URL with its password replaced by `***`, for messages and logs.
pub fn redacted(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_owned();
    };
    let rest = &url[scheme_end + 3..];
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => {
            let userinfo = &rest[..at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{}{user}:***{}", &url[..scheme_end + 3], &rest[at..])
        }
        None => url.to_owned(),
    }
}

/// The cluster hash slot of a key or channel (its `{hash tag}` if it has
/// one), as Redis Cluster computes it.
pub fn slot(key: &[u8]) -> Slot {
    Slot::for_key(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_urls_stay_as_they_are() {
        assert_eq!(
            Target::parse("redis://127.0.0.1:6379/"),
            Ok(Target::Single("redis://127.0.0.1:6379/".into()))
        );
        assert!(Target::parse("localhost:6379").is_err());
    }

    #[test]
    fn cluster_urls_list_their_seeds_with_shared_credentials_and_options() {
        assert_eq!(
            Target::parse("redis+cluster://:pw@10.0.0.1:7000,10.0.0.2:7001/?protocol=3"),
            Ok(Target::Cluster(vec![
                "redis://:pw@10.0.0.1:7000/?protocol=3".into(),
                "redis://:pw@10.0.0.2:7001/?protocol=3".into(),
            ]))
        );
        assert_eq!(
            Target::parse("rediss+cluster://h1:7000"),
            Ok(Target::Cluster(vec!["rediss://h1:7000".into()]))
        );
        assert!(Target::parse("redis+cluster://").is_err());
        assert!(Target::parse("redis+cluster://,/").is_err());
        assert!(Target::parse("redis+cluster://h1:notaport").is_err());
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redacted("redis://user:secret@h:1/"),
            "redis://user:***@h:1/"
        );
        assert_eq!(redacted("redis://h:1/"), "redis://h:1/");
    }

    #[test]
    fn slots_follow_the_hash_tag() {
        assert_eq!(slot(b"lr:lobby:{abc}"), slot(b"lr:chan:{abc}"));
        assert_eq!(slot(b"foo"), Slot::new(12182).unwrap());
    }
}
