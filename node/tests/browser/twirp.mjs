// LiveKit's server SDK (livekit-server-sdk, from npm) against the control plane's Twirp
// RoomService: creates, lists and deletes rooms, lists and removes participants, and reports
// what it saw and the errors it got as one JSON line for the Rust test to check.
// Usage: node twirp.mjs CONTROL_URL API_KEY API_SECRET ROOM IDENTITY_TO_REMOVE
import { RoomServiceClient } from "livekit-server-sdk";

const [url, key, secret, room, remove] = process.argv.slice(2);
const rooms = new RoomServiceClient(url, key, secret);
const identities = async (name) =>
  (await rooms.listParticipants(name)).map((p) => p.identity).sort();
const failure = async (call) => {
  try {
    await call();
    return "succeeded";
  } catch (e) {
    return { status: e.status, code: e.code };
  }
};

const out = {};
const created = await rooms.createRoom({ name: `${room}-new`, maxParticipants: 7 });
out.created = { name: created.name, maxParticipants: created.maxParticipants };
out.rooms = (await rooms.listRooms()).map((r) => r.name).sort();
out.before = await identities(room);
const one = await rooms.getParticipant(room, remove);
out.one = { identity: one.identity, node: one.attributes["sfu.node"] };
await rooms.removeParticipant(room, remove);
// Removal reaches the participant's node at once; its record follows within moments.
for (let i = 0; i < 50; i++) {
  out.after = await identities(room);
  if (!out.after.includes(remove)) break;
  await new Promise((r) => setTimeout(r, 100));
}
out.missing = await failure(() => rooms.getParticipant(room, "nobody"));
const forged = new RoomServiceClient(url, key, "x".repeat(32));
out.forged = await failure(() => forged.listRooms());
out.sendData = await failure(() =>
  rooms.sendData(room, new TextEncoder().encode("hi"), 0, {}),
);
await rooms.deleteRoom(`${room}-new`);
out.roomsAfterDelete = (await rooms.listRooms()).map((r) => r.name).sort();
console.log(JSON.stringify(out));
