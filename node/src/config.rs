//! The node's configuration: every setting is an env var with a CLI flag of the same meaning
//! (`PORT` / `--port`). Defaults run a node on localhost with its data in ./data.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use clap::Parser;

#[derive(Debug, Clone, Parser)]
#[command(
    name = "todo-node",
    version,
    about = "The todo list server: SSR pages from a cr-sqlite replica"
)]
pub struct Config {
    /// TCP port for HTTP.
    #[arg(long, env = "PORT", default_value_t = 3000)]
    pub port: u16,

    /// Address to listen on (0.0.0.0 to accept connections from other hosts).
    #[arg(long, env = "HOST", default_value_t = IpAddr::V4(Ipv4Addr::LOCALHOST))]
    pub host: IpAddr,

    /// Folder for the database (created if missing).
    #[arg(long, env = "DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,

    /// Name shown on pages and in /health, to tell nodes apart.
    #[arg(long, env = "NODE_NAME", default_value = "node", value_parser = parse_node_name)]
    pub node_name: String,

    /// Log filter, in tracing's EnvFilter syntax (e.g. "info", "todo_node=debug").
    #[arg(long, env = "LOG", default_value = "info")]
    pub log: String,

    /// Read templates from this folder on every request instead of the embedded copies
    /// (development: edit a template, reload the page).
    #[arg(long, env = "TEMPLATES_DIR")]
    pub templates_dir: Option<PathBuf>,
}

impl Config {
    /// A configuration for tests and embedders: defaults, with the data in `data_dir`.
    pub fn with_data_dir(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            port: 0,
            host: IpAddr::V4(Ipv4Addr::LOCALHOST),
            data_dir: data_dir.into(),
            node_name: "node".to_owned(),
            log: "info".to_owned(),
            templates_dir: None,
        }
    }

    pub fn listen_addr(&self) -> SocketAddr {
        SocketAddr::new(self.host, self.port)
    }
}

fn parse_node_name(s: &str) -> Result<String, String> {
    let name = s.trim();
    if name.is_empty() || name.chars().count() > 64 {
        return Err("must be 1 to 64 characters".to_owned());
    }
    if name.chars().any(char::is_control) {
        return Err("must not contain control characters".to_owned());
    }
    Ok(name.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_run_on_localhost_3000_with_data_in_dot_data() {
        let c = Config::try_parse_from(["todo-node"]).expect("defaults parse");
        assert_eq!(c.listen_addr(), "127.0.0.1:3000".parse().expect("addr"));
        assert_eq!(c.data_dir, PathBuf::from("./data"));
    }

    #[test]
    fn bad_values_name_the_setting() {
        let err = Config::try_parse_from(["todo-node", "--port", "eighty"]).expect_err("bad port");
        assert!(err.to_string().contains("PORT"), "{err}");
        let err = Config::try_parse_from(["todo-node", "--node-name", " "]).expect_err("blank");
        assert!(err.to_string().contains("NODE_NAME"), "{err}");
    }
}
