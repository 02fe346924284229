//! What nodes say to each other, and its encoding on the wire.
//!
//! Two channels: gossip (`GossipMessage`, pushed to every node on the deployment's topic as
//! soon as a local transaction commits) and sync (`SyncRequest` → `SyncResponse`, a pull of
//! everything above the asker's watermark, page by page). Both carry changes in the binary
//! change-batch format of `crates/changeset`; the envelope starts with a version byte so a
//! future format can be told apart and refused with a clear error instead of misread.

use std::io;

use changeset::{Change, DbVersion, SiteId};
use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::StreamProtocol;

/// Envelope version of every message below.
const WIRE_V1: u8 = 1;
/// Largest sync response read from a stream: a full page with the longest titles fits.
pub const MAX_SYNC_MESSAGE_BYTES: usize = 32 * 1024 * 1024;
/// A sync request is exactly this long (version, site id, since, max_changes); a longer frame
/// is refused before anything is allocated for it.
pub const SYNC_REQUEST_BYTES: usize = 1 + 16 + 8 + 4;

/// New local changes: one committed transaction (one db_version) of the publishing node.
#[derive(Debug, Clone, PartialEq)]
pub struct GossipMessage {
    pub changes: Vec<Change>,
}

/// "Send me your changes above `since` that did not originate at `requester`."
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyncRequest {
    pub requester: SiteId,
    pub since: DbVersion,
    pub max_changes: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SyncResponse {
    /// The responder's site id: the watermark is kept per source site.
    pub site_id: SiteId,
    pub changes: Vec<Change>,
    /// Everything of the responder up to this db_version is in this and earlier pages: the
    /// asker's new watermark once it has applied the page.
    pub up_to: DbVersion,
    /// More pages follow: ask again with `since = up_to`.
    pub more: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("empty message")]
    Empty,
    #[error("wire version {0} is not supported (this node speaks {WIRE_V1})")]
    Version(u8),
    #[error("message truncated")]
    Truncated,
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

pub fn encode_request(r: &SyncRequest) -> Vec<u8> {
    let mut out = vec![WIRE_V1];
    out.extend_from_slice(&r.requester.0);
    out.extend_from_slice(&r.since.0.to_be_bytes());
    out.extend_from_slice(&r.max_changes.to_be_bytes());
    out
}

pub fn decode_request(bytes: &[u8]) -> Result<SyncRequest, DecodeError> {
    let body = strip_version(bytes)?;
    if body.len() != 16 + 8 + 4 {
        return Err(DecodeError::Truncated);
    }
    let (site, rest) = body.split_at(16);
    let (since, max) = rest.split_at(8);
    Ok(SyncRequest {
        requester: SiteId(site.try_into().map_err(|_| DecodeError::Truncated)?),
        since: DbVersion(u64::from_be_bytes(
            since.try_into().map_err(|_| DecodeError::Truncated)?,
        )),
        max_changes: u32::from_be_bytes(max.try_into().map_err(|_| DecodeError::Truncated)?),
    })
}

pub fn encode_response(r: &SyncResponse) -> Vec<u8> {
    let mut out = vec![WIRE_V1];
    out.extend_from_slice(&r.site_id.0);
    out.extend_from_slice(&r.up_to.0.to_be_bytes());
    out.push(u8::from(r.more));
    out.extend(changeset::encode_changes(&r.changes));
    out
}

pub fn decode_response(bytes: &[u8]) -> Result<SyncResponse, DecodeError> {
    let body = strip_version(bytes)?;
    if body.len() < 16 + 8 + 1 {
        return Err(DecodeError::Truncated);
    }
    let (site, rest) = body.split_at(16);
    let (up_to, rest) = rest.split_at(8);
    let (more, changes) = rest.split_at(1);
    Ok(SyncResponse {
        site_id: SiteId(site.try_into().map_err(|_| DecodeError::Truncated)?),
        up_to: DbVersion(u64::from_be_bytes(
            up_to.try_into().map_err(|_| DecodeError::Truncated)?,
        )),
        more: more[0] != 0,
        changes: changeset::decode_changes(changes)?,
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

fn invalid(e: DecodeError) -> io::Error {
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
        decode_request(&read_frame(io, SYNC_REQUEST_BYTES).await?).map_err(invalid)
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<SyncResponse>
    where
        T: AsyncRead + Unpin + Send,
    {
        decode_response(&read_frame(io, MAX_SYNC_MESSAGE_BYTES).await?).map_err(invalid)
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
        write_frame(io, &encode_request(&req)).await
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
        write_frame(io, &encode_response(&res)).await
    }
}

#[cfg(test)]
mod tests {
    use changeset::{Value, pack_columns};
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
    fn messages_round_trip() {
        let gossip = GossipMessage {
            changes: vec![change("a"), change("b")],
        };
        assert_eq!(
            decode_gossip(&encode_gossip(&gossip)).expect("gossip"),
            gossip
        );
        let request = SyncRequest {
            requester: SiteId([9; 16]),
            since: DbVersion(u64::MAX - 1),
            max_changes: 5_000,
        };
        assert_eq!(
            decode_request(&encode_request(&request)).expect("request"),
            request
        );
        let response = SyncResponse {
            site_id: SiteId([4; 16]),
            changes: vec![change("c")],
            up_to: DbVersion(7),
            more: true,
        };
        assert_eq!(
            decode_response(&encode_response(&response)).expect("response"),
            response
        );
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
        let exact = encode_request(&SyncRequest {
            requester: SiteId([1; 16]),
            since: DbVersion(3),
            max_changes: 10,
        });
        assert_eq!(exact.len(), SYNC_REQUEST_BYTES);
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
        assert!(matches!(
            decode_request(&[1, 0, 0]),
            Err(DecodeError::Truncated)
        ));
        let bytes = encode_response(&SyncResponse {
            site_id: SiteId([4; 16]),
            changes: vec![change("c")],
            up_to: DbVersion(7),
            more: false,
        });
        for cut in 1..bytes.len() {
            assert!(decode_response(&bytes[..cut]).is_err(), "cut at {cut}");
        }
    }
}
