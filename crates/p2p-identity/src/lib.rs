//! The libp2p identity of a node or a relay: an ed25519 key kept in its DATA_DIR, so its peer
//! id (which other nodes' BOOTSTRAP_PEERS and RELAY_ADDRS, and browsers, name) survives
//! restarts. The file is the key's protobuf encoding in `p2p-identity.key`, written
//! atomically, readable by its owner only.

use std::io::Write;
use std::path::Path;

use anyhow::Context;
pub use libp2p_identity::Keypair;

pub const KEY_FILE: &str = "p2p-identity.key";

/// Loads the key from `data_dir`, creating the folder and the key on first start.
pub fn load_or_create(data_dir: &Path) -> anyhow::Result<Keypair> {
    let path = data_dir.join(KEY_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => Keypair::from_protobuf_encoding(&bytes).with_context(|| {
            format!(
                "{} is not a libp2p key; move it away to start with a new identity",
                path.display()
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(data_dir)
                .with_context(|| format!("creating DATA_DIR {}", data_dir.display()))?;
            let key = Keypair::generate_ed25519();
            let bytes = key.to_protobuf_encoding().context("encoding the new key")?;
            let tmp = path.with_extension("key.tmp");
            {
                use std::os::unix::fs::OpenOptionsExt;
                let mut file = std::fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .mode(0o600)
                    .open(&tmp)
                    .with_context(|| format!("creating {}", tmp.display()))?;
                file.write_all(&bytes)?;
                file.sync_all()?;
            }
            std::fs::rename(&tmp, &path).with_context(|| format!("saving {}", path.display()))?;
            tracing::info!(peer_id = %key.public().to_peer_id(), path = %path.display(), "created a new p2p identity");
            Ok(key)
        }
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn identity_is_stable_across_loads_and_private() {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("relay-data");
        let a = load_or_create(&data).expect("create");
        let b = load_or_create(&data).expect("load");
        assert_eq!(a.public().to_peer_id(), b.public().to_peer_id());
        let mode = std::fs::metadata(data.join(KEY_FILE))
            .expect("key file")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn a_corrupt_key_file_is_an_error_not_a_new_identity() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join(KEY_FILE), b"garbage").expect("write");
        let err = load_or_create(dir.path()).expect_err("corrupt");
        assert!(err.to_string().contains("is not a libp2p key"), "{err}");
    }

    #[test]
    fn reads_a_key_written_in_the_nodes_format() {
        // The node writes `Keypair::to_protobuf_encoding` to the same file name.
        let dir = tempfile::tempdir().expect("tempdir");
        let key = Keypair::generate_ed25519();
        std::fs::write(
            dir.path().join(KEY_FILE),
            key.to_protobuf_encoding().expect("encode"),
        )
        .expect("write");
        let loaded = load_or_create(dir.path()).expect("load");
        assert_eq!(loaded.public().to_peer_id(), key.public().to_peer_id());
    }
}
