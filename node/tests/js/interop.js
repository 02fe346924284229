// The js-libp2p side of the WebRTC interoperability test (node/tests/webrtc_interop.rs): a
// browser peer made of js-libp2p's stock parts (WebSocket to the relay, circuit relay v2 client,
// the browser-to-browser WebRTC transport, Noise, Yamux, identify, ping, echo). Bundled by
// ci/build-js-libp2p.sh with esbuild into one script that defines window.jsPeer.
import { noise } from "@chainsafe/libp2p-noise";
import { yamux } from "@chainsafe/libp2p-yamux";
import { circuitRelayTransport } from "@libp2p/circuit-relay-v2";
import { echo } from "@libp2p/echo";
import { identify } from "@libp2p/identify";
import { peerIdFromString } from "@libp2p/peer-id";
import { ping } from "@libp2p/ping";
import { webRTC } from "@libp2p/webrtc";
import { webSockets } from "@libp2p/websockets";
import { multiaddr } from "@multiformats/multiaddr";
import { createLibp2p } from "libp2p";

let node = null;

window.jsPeer = {
  // Reserves a slot on the relay (a multiaddr ending in /p2p/<id>) and accepts WebRTC.
  async start(relay) {
    node = await createLibp2p({
      addresses: { listen: [`${relay}/p2p-circuit`, "/webrtc"] },
      transports: [webSockets(), webRTC(), circuitRelayTransport()],
      connectionEncrypters: [noise()],
      streamMuxers: [yamux()],
      // Everything here is on loopback, which the default gater refuses to dial.
      connectionGater: { denyDialMultiaddr: () => false },
      services: { identify: identify(), ping: ping(), echo: echo() },
    });
    return node.peerId.toString();
  },
  status() {
    return {
      peer_id: node.peerId.toString(),
      addrs: node.getMultiaddrs().map(String),
      connections: node.getConnections().map((c) => ({
        peer_id: c.remotePeer.toString(),
        addr: c.remoteAddr.toString(),
        status: c.status,
      })),
    };
  },
  async dial(addr) {
    const connection = await node.dial(multiaddr(addr));
    return connection.remoteAddr.toString();
  },
  // Milliseconds of one ping round trip.
  async ping(peer) {
    return await node.services.ping.ping(peerIdFromString(peer));
  },
  // Sends `len` bytes to the peer's /echo/1.0.0, checks what comes back; milliseconds taken.
  async echo(peer, len) {
    const data = new Uint8Array(len);
    for (let i = 0; i < len; i++) data[i] = i % 251;
    const started = performance.now();
    const back = (await node.services.echo.echo(peerIdFromString(peer), data)).subarray();
    if (back.length !== len || back.some((b, i) => b !== data[i])) {
      throw new Error(`echo: ${back.length} bytes back for ${len}, or different ones`);
    }
    return performance.now() - started;
  },
};
