//! What nodes say to each other, and its encoding on the wire.
//!
//! Two channels: gossip (`GossipMessage`, pushed to every node on the deployment's topic as
//! soon as a local transaction commits) and sync (`SyncRequest` → `SyncResponse`, a pull of
//! everything above the asker's watermark, page by page). Both carry changes in the binary
//! change-batch format of `crates/changeset`; the envelope starts with a version byte so a
//! future format can be told apart and refused with a clear error instead of misread.

use std::io;

use changeset::Change;
use changeset::sync::wire as sync_wire;
use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::StreamProtocol;

/// Envelope version of every message below.
const WIRE_V1: u8 = 1;
pub use changeset::sync::wire::{MAX_PAGE_BYTES, REQUEST_BYTES};
/// "Send me your changes above `since` that did not originate at `requester`": the
/// runtime-free crate's sync request, the same one the browser peer speaks.
pub type SyncRequest = changeset::Request;
/// One page of the responder's changes: `source` is its site id, `up_to` the asker's next
/// watermark once applied, `more` whether to ask again from there.
pub type SyncResponse = changeset::Page;

/// New local changes: one committed transaction (one db_version) of the publishing node.
#[derive(Debug, Clone, PartialEq)]
pub struct GossipMessage {
    pub changes: Vec<Change>,
}

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("empty message")]
    Empty,
    #[error("wire version {0} is not supported (this node speaks {WIRE_V1})")]
    Version(u8),
    #[error("change batch: {0}")]
    Changes(#[from] changeset::WireError),
}

pub fn encode_gossip(m: &GossipMessage) -> Vec<u8> {
    let mut out = vec![WIRE_V1];
    out.extend(changeset::encode_changes(&m.changes));
    out
}

pub fn decode_gossip(bytes: &[u8]) -> Result<GossipMessage, DecodeError> {
    let body = strip_version(bytes)?;
    Ok(GossipMessage {
        changes: changeset::decode_changes(body)?,
    })
}

fn strip_version(bytes: &[u8]) -> Result<&[u8], DecodeError> {
    match bytes.split_first() {
        None => Err(DecodeError::Empty),
        Some((&WIRE_V1, body)) => Ok(body),
        Some((&v, _)) => Err(DecodeError::Version(v)),
    }
}

/// The sync protocol's libp2p codec: each message is a u32 big-endian length and the bytes.
#[derive(Debug, Clone, Default)]
pub struct SyncCodec;

/// The sync protocol id names the deployment, so nodes of another deployment never sync.
pub fn sync_protocol(service_name: &str) -> StreamProtocol {
    StreamProtocol::try_from_owned(format!("/todo-hybrid/{service_name}/sync/1"))
        .unwrap_or(StreamProtocol::new("/todo-hybrid/sync/1"))
}

/// Reads one length-prefixed frame of at most `limit` bytes.
async fn read_frame<T: AsyncRead + Unpin + Send>(io: &mut T, limit: usize) -> io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    io.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len > limit {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("sync message of {len} bytes is over the {limit}-byte limit"),
        ));
    }
    let mut buf = vec![0u8; len];
    io.read_exact(&mut buf).await?;
    Ok(buf)
}

async fn write_frame<T: AsyncWrite + Unpin + Send>(io: &mut T, bytes: &[u8]) -> io::Result<()> {
    let len = u32::try_from(bytes.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "message too large"))?;
    io.write_all(&len.to_be_bytes()).await?;
    io.write_all(bytes).await?;
    io.close().await
}

fn invalid(e: impl std::error::Error + Send + Sync + 'static) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

impl libp2p::request_response::Codec for SyncCodec {
    type Protocol = StreamProtocol;
    type Request = SyncRequest;
    type Response = SyncResponse;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<SyncRequest>
    where
        T: AsyncRead + Unpin + Send,
    {
        sync_wire::decode_request(&read_frame(io, REQUEST_BYTES).await?).map_err(invalid)
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<SyncResponse>
    where
        T: AsyncRead + Unpin + Send,
    {
        sync_wire::decode_page(&read_frame(io, MAX_PAGE_BYTES).await?).map_err(invalid)
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: SyncRequest,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_frame(io, &sync_wire::encode_request(&req)).await
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        res: SyncResponse,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_frame(io, &sync_wire::encode_page(&res)).await
    }
}

#[cfg(test)]
mod tests {
    use changeset::{DbVersion, PageLimits, SiteId, Value, pack_columns};
    use libp2p::request_response::Codec;

    use super::*;

    fn change(title: &str) -> Change {
        Change {
            table: "todos".into(),
            pk: pack_columns(&[Value::Text("id".into())]).expect("pk"),
            cid: "title".into(),
            val: Value::Text(title.into()),
            col_version: 2,
            db_version: DbVersion(7),
            site_id: SiteId([3; 16]),
            cl: 1,
            seq: 0,
        }
    }

    #[test]
    fn gossip_round_trips() {
        let gossip = GossipMessage {
            changes: vec![change("a"), change("b")],
        };
        assert_eq!(
            decode_gossip(&encode_gossip(&gossip)).expect("gossip"),
            gossip
        );
    }

    /// The codec carries the runtime-free crate's messages in the bytes deployed nodes send.
    #[test]
    fn sync_messages_keep_their_wire_form() {
        let request = SyncRequest {
            requester: SiteId([9; 16]),
            since: DbVersion(0x0102),
            limits: PageLimits {
                max_changes: 5_000,
                ..PageLimits::default()
            },
        };
        let mut expected = vec![1];
        expected.extend_from_slice(&[9; 16]);
        expected.extend_from_slice(&0x0102u64.to_be_bytes());
        expected.extend_from_slice(&5_000u32.to_be_bytes());
        assert_eq!(sync_wire::encode_request(&request), expected);
        let page = SyncResponse {
            source: SiteId([4; 16]),
            changes: vec![change("c")],
            up_to: DbVersion(7),
            more: true,
        };
        let bytes = sync_wire::encode_page(&page);
        assert_eq!(&bytes[..17], &[[1u8].as_slice(), &[4; 16]].concat()[..]);
        assert_eq!(&bytes[26..], changeset::encode_changes(&page.changes));
        assert_eq!(sync_wire::decode_page(&bytes), Ok(page));
    }

    /// A request frame claiming more than a request's size is refused before its body is
    /// read or anything allocated for it (it used to be accepted up to 32 MiB).
    #[test]
    fn an_oversized_request_frame_is_refused_unread() {
        let mut frame = (64u32 * 1024 * 1024).to_be_bytes().to_vec();
        frame.extend_from_slice(&[0; 64]);
        let mut io = futures::io::Cursor::new(frame);
        let error = futures::executor::block_on(
            SyncCodec.read_request(&sync_protocol("todo-hybrid"), &mut io),
        )
        .expect_err("refused");
        assert_eq!(error.kind(), io::ErrorKind::InvalidData);
        assert_eq!(io.position(), 4, "only the length was read");
    }

    #[test]
    fn garbage_and_other_versions_are_errors() {
        assert!(matches!(decode_gossip(&[]), Err(DecodeError::Empty)));
        assert!(matches!(
            decode_gossip(&[2, 1, 0, 0, 0]),
            Err(DecodeError::Version(2))
        ));
        assert!(matches!(
            decode_gossip(&[1, 0xFF]),
            Err(DecodeError::Changes(_))
        ));
    }
}
