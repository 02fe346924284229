//! What peers say to each other over libp2p, and its encoding on the wire: nodes and browsers
//! speak exactly this, so one code path serves both.
//!
//! Three channels:
//! - gossip (`GossipMessage`, published to every node on the deployment's gossipsub topic as
//!   soon as a local transaction commits; nodes only);
//! - push (the same message, sent to one peer by request-response and acknowledged: how a
//!   browser, which runs no gossipsub, announces its transactions, and how it hears others');
//! - sync (`SyncRequest` → `SyncResponse`, a pull of everything above the asker's watermark,
//!   page by page).
//!
//! All carry changes in the binary change-batch format of `crates/changeset`; the envelope
//! starts with a version byte so a future format can be told apart and refused with a clear
//! error instead of misread.

mod backoff;

use std::io;

use changeset::Change;
use changeset::sync::wire as sync_wire;
use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::StreamProtocol;

pub use backoff::Backoff;

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

/// The push protocol id, named after the deployment like sync's.
pub fn push_protocol(service_name: &str) -> StreamProtocol {
    StreamProtocol::try_from_owned(format!("/todo-hybrid/{service_name}/push/1"))
        .unwrap_or(StreamProtocol::new("/todo-hybrid/push/1"))
}

/// The rendezvous namespace browsers of a deployment register under on the relay.
pub fn rendezvous_namespace(service_name: &str) -> String {
    format!("todo-hybrid/{service_name}")
}

/// Identify's protocol version: the peers of one deployment (MDNS_SERVICE_NAME) say the same,
/// and only they are synced with.
pub fn deployment_tag(service_name: &str) -> String {
    format!("/todo-hybrid/{service_name}/1")
}

/// What a peer says of itself in its identify agent string: `<program>/<version>` then
/// `site=<hex>`, `name=<name>` (a node's NODE_NAME) and `url=<origin>` (its PUBLIC_URL).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Agent {
    pub site: Option<changeset::SiteId>,
    pub name: Option<String>,
    /// Where browsers reach it (PUBLIC_URL).
    pub url: Option<String>,
}

impl Agent {
    /// The agent string for `program` (e.g. `todo-node/0.1.0`).
    pub fn to_agent_string(&self, program: &str) -> String {
        let mut agent = program.to_owned();
        if let Some(site) = self.site {
            agent.push_str(&format!(" site={site}"));
        }
        if let Some(name) = &self.name {
            agent.push_str(&format!(" name={}", name.replace(char::is_whitespace, "_")));
        }
        if let Some(url) = &self.url {
            agent.push_str(&format!(" url={url}"));
        }
        agent
    }

    /// Reads `site=`, `name=` and `url=` (http or https only: pages are sent there).
    pub fn parse(agent: &str) -> Self {
        let mut out = Self::default();
        for part in agent.split_whitespace() {
            if let Some(hex) = part.strip_prefix("site=") {
                out.site = hex.parse().ok();
            } else if let Some(n) = part.strip_prefix("name=") {
                out.name = Some(n.to_owned());
            } else if let Some(u) = part.strip_prefix("url=")
                && (u.starts_with("http://") || u.starts_with("https://"))
            {
                out.url = Some(u.to_owned());
            }
        }
        out
    }
}

/// The largest push: one transaction (at most `MAX_CHANGES_PER_TRANSACTION` changes, each
/// bounded by `changeset::validate`), as large as a node's gossip message may be.
pub const MAX_PUSH_BYTES: usize = 4 * 1024 * 1024;

/// The push protocol's libp2p codec: the request is a [`GossipMessage`] in its wire form,
/// the answer one byte (1: merged or already had; 0: refused).
#[derive(Debug, Clone, Default)]
pub struct PushCodec;

/// Whether the receiver took the pushed transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushAck {
    Merged,
    Refused,
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

impl libp2p::request_response::Codec for PushCodec {
    type Protocol = StreamProtocol;
    type Request = GossipMessage;
    type Response = PushAck;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<GossipMessage>
    where
        T: AsyncRead + Unpin + Send,
    {
        decode_gossip(&read_frame(io, MAX_PUSH_BYTES).await?).map_err(invalid)
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<PushAck>
    where
        T: AsyncRead + Unpin + Send,
    {
        match read_frame(io, 1).await?.as_slice() {
            [1] => Ok(PushAck::Merged),
            [0] => Ok(PushAck::Refused),
            other => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("push answer {other:?} is not 0 or 1"),
            )),
        }
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: GossipMessage,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_frame(io, &encode_gossip(&req)).await
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        res: PushAck,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_frame(io, &[u8::from(res == PushAck::Merged)]).await
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
    fn pushes_round_trip_through_the_codec_and_oversized_ones_are_refused() {
        use futures::executor::block_on;
        let protocol = push_protocol("todo-hybrid");
        let push = GossipMessage {
            changes: vec![change("pushed")],
        };
        let mut wire = futures::io::Cursor::new(Vec::new());
        block_on(PushCodec.write_request(&protocol, &mut wire, push.clone())).expect("write");
        wire.set_position(0);
        let read = block_on(PushCodec.read_request(&protocol, &mut wire)).expect("read");
        assert_eq!(read, push);
        for ack in [PushAck::Merged, PushAck::Refused] {
            let mut wire = futures::io::Cursor::new(Vec::new());
            block_on(PushCodec.write_response(&protocol, &mut wire, ack)).expect("write");
            wire.set_position(0);
            assert_eq!(
                block_on(PushCodec.read_response(&protocol, &mut wire)).expect("read"),
                ack
            );
        }
        let mut frame = u32::try_from(MAX_PUSH_BYTES + 1)
            .expect("fits")
            .to_be_bytes()
            .to_vec();
        frame.extend_from_slice(&[1; 16]);
        let mut io = futures::io::Cursor::new(frame);
        assert!(block_on(PushCodec.read_request(&protocol, &mut io)).is_err());
        assert_eq!(io.position(), 4, "only the length was read");
    }

    #[test]
    fn agent_strings_name_site_node_and_public_url() {
        let site = SiteId([0xAB; 16]);
        let agent = Agent::parse(&format!(
            "todo-node/0.1.0 site={site} name=a url=http://10.0.0.2:3001"
        ));
        assert_eq!(
            agent,
            Agent {
                site: Some(site),
                name: Some("a".into()),
                url: Some("http://10.0.0.2:3001".into()),
            }
        );
        assert_eq!(
            Agent::parse(&agent.to_agent_string("todo-node/0.1.0")),
            agent
        );
        let spaced = Agent {
            name: Some("node a".into()),
            ..Agent::default()
        };
        assert_eq!(spaced.to_agent_string("x"), "x name=node_a");
        // A url that is not http(s) is ignored: pages would be sent there.
        assert_eq!(Agent::parse("x url=javascript:alert(1)").url, None);
        assert_eq!(Agent::parse("todo-node/0.1.0"), Agent::default());
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
