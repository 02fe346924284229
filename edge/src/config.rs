//! The edge's settings, from wrangler.toml's `[vars]` (strings), checked once.

/// Default seconds between sync rounds with each node (the node's own default).
pub const DEFAULT_SYNC_INTERVAL_SECS: u64 = 10;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Nodes to sync with: their base URLs, without a trailing slash.
    pub node_urls: Vec<String>,
    /// The deployment's name (the nodes' `MDNS_SERVICE_NAME`), reported by `/health`.
    pub deployment: String,
    /// Shown on pages and in `/health`.
    pub edge_name: String,
    pub sync_interval_secs: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{name}: {problem}")]
pub struct ConfigError {
    pub name: &'static str,
    pub problem: String,
}

impl Config {
    /// Reads the settings through `var` (a missing variable is `None`).
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let node_urls = var("NODE_URLS")
            .unwrap_or_default()
            .split(',')
            .map(|u| u.trim().trim_end_matches('/').to_owned())
            .filter(|u| !u.is_empty())
            .map(|u| {
                if u.starts_with("http://") || u.starts_with("https://") {
                    Ok(u)
                } else {
                    Err(ConfigError {
                        name: "NODE_URLS",
                        problem: format!("{u:?} is not an http(s) URL"),
                    })
                }
            })
            .collect::<Result<Vec<_>, _>>()?;
        let sync_interval_secs = match var("SYNC_INTERVAL_SECS") {
            None => DEFAULT_SYNC_INTERVAL_SECS,
            Some(s) => match s.trim().parse::<u64>() {
                Ok(n) if (1..=3600).contains(&n) => n,
                _ => {
                    return Err(ConfigError {
                        name: "SYNC_INTERVAL_SECS",
                        problem: format!("{s:?} is not a number of seconds from 1 to 3600"),
                    });
                }
            },
        };
        Ok(Self {
            node_urls,
            deployment: var("DEPLOYMENT").unwrap_or_else(|| "todo-hybrid".to_owned()),
            edge_name: var("EDGE_NAME").unwrap_or_else(|| "edge".to_owned()),
            sync_interval_secs,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| {
            pairs
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| (*v).to_owned())
        }
    }

    #[test]
    fn settings_are_read_and_checked() {
        let c = Config::from_vars(vars(&[
            ("NODE_URLS", " http://a:1/, https://b ,"),
            ("SYNC_INTERVAL_SECS", "1"),
        ]))
        .expect("valid");
        assert_eq!(c.node_urls, ["http://a:1", "https://b"]);
        assert_eq!(c.sync_interval_secs, 1);
        assert_eq!(c.deployment, "todo-hybrid");
        let bad = Config::from_vars(vars(&[("NODE_URLS", "a:1")])).expect_err("no scheme");
        assert_eq!(bad.name, "NODE_URLS");
        let bad = Config::from_vars(vars(&[("SYNC_INTERVAL_SECS", "0")])).expect_err("zero");
        assert_eq!(bad.name, "SYNC_INTERVAL_SECS");
    }
}
