// One call of LiveKit's server SDK (livekit-server-sdk, from npm) to the control plane's Twirp
// RoomService, for tests that drive a room step by step; prints `{"ok": ...}` or
// `{"error": {"status", "code"}}` as one JSON line.
// Usage: node server-sdk.mjs CONTROL_URL API_KEY API_SECRET update ROOM IDENTITY OPTIONS_JSON
//        node server-sdk.mjs CONTROL_URL API_KEY API_SECRET send ROOM TEXT RELIABLE TOPIC [IDENTITY...]
import { DataPacket_Kind, RoomServiceClient } from "livekit-server-sdk";

const [url, key, secret, command, room, ...args] = process.argv.slice(2);
const rooms = new RoomServiceClient(url, key, secret);
const run = async () => {
  if (command === "update") {
    const [identity, options] = args;
    const p = await rooms.updateParticipant(room, identity, JSON.parse(options));
    return { identity: p.identity, name: p.name, metadata: p.metadata, attributes: p.attributes };
  }
  if (command === "send") {
    const [text, reliable, topic, ...to] = args;
    const kind = reliable === "true" ? DataPacket_Kind.RELIABLE : DataPacket_Kind.LOSSY;
    await rooms.sendData(room, new TextEncoder().encode(text), kind, {
      topic,
      destinationIdentities: to,
    });
    return "sent";
  }
  throw new Error(`unknown command ${command}`);
};
try {
  console.log(JSON.stringify({ ok: await run() }));
} catch (e) {
  console.log(JSON.stringify({ error: { status: e.status, code: e.code, message: e.message } }));
}
