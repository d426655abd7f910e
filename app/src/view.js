// The viewer-only page for embedding (`/view.html?room=NAME`): one video and nothing else.
// It joins without publish permission and shows the room's screen share if there is one, else
// the camera of the latest active speaker (else the first camera), with its audio.
import { Room, RoomEvent, Track } from "livekit-client";
import { addError, setState } from "./probe.js";
import { fetchToken, params, serverUrl } from "./token.js";

const video = document.getElementById("video");
const audios = new Map(); // track sid -> <audio>
let shown = null; // the publication on screen
let speaker = null; // identity of the latest active speaker

function pick(room) {
  const cameras = [];
  for (const p of room.remoteParticipants.values()) {
    for (const pub of p.videoTrackPublications.values()) {
      if (!pub.track || pub.isMuted) continue;
      if (pub.source === Track.Source.ScreenShare) return pub;
      cameras.push({ pub, p });
    }
  }
  const bySpeaker = cameras.find((c) => c.p.identity === speaker);
  return (bySpeaker || cameras[0])?.pub || null;
}

function show(room) {
  const next = pick(room);
  if (next === shown) return;
  if (shown?.track) shown.track.detach(video);
  shown = next;
  if (next) next.track.attach(video);
}

async function main() {
  const name = params().get("room");
  if (!name) {
    addError("no room: open /view.html?room=NAME");
    setState("failed");
    return;
  }
  const room = new Room({ adaptiveStream: false, dynacast: true });
  room
    .on(RoomEvent.TrackSubscribed, (track, pub) => {
      if (track.kind === Track.Kind.Audio) {
        const el = track.attach();
        audios.set(pub.trackSid, el);
        document.body.appendChild(el);
      }
      show(room);
    })
    .on(RoomEvent.TrackUnsubscribed, (track, pub) => {
      audios.get(pub.trackSid)?.remove();
      audios.delete(pub.trackSid);
      show(room);
    })
    .on(RoomEvent.TrackMuted, () => show(room))
    .on(RoomEvent.TrackUnmuted, () => show(room))
    .on(RoomEvent.ActiveSpeakersChanged, (speakers) => {
      const s = speakers.find((p) => p.identity !== room.localParticipant.identity);
      if (s) speaker = s.identity;
      show(room);
    })
    .on(RoomEvent.Disconnected, () => setState("disconnected"));
  setState("connecting");
  try {
    const token = await fetchToken({ room: name, name: "viewer", publish: false });
    await room.connect(serverUrl(), token, { autoSubscribe: true });
    setState("connected");
    window.lkRoom = room;
  } catch (e) {
    addError(e.message);
    setState("failed");
  }
}

// The test probe reads the page's one video (not inside a tile).
window.sfuStats = async () => ({
  videoWidth: video.videoWidth,
  currentTime: video.currentTime,
  shown: shown ? shown.source : null,
});

main();
