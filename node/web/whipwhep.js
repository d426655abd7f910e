// Minimal WHIP publisher and WHEP player, for people and for tests.
// ?room=R&token=T (or a development token is fetched) &participant=IDENTITY (WHEP only)
// &simulcast=1 (WHIP only) &codec=h264 (WHIP only)

"use strict";

const params = new URLSearchParams(location.search);
const room = params.get("room") || "demo";
const session = { state: "idle", location: null, pc: null, error: null };
window.session = session;

function status(s) {
  session.state = s;
  document.getElementById("status").textContent = s;
}

async function token(publish) {
  if (params.get("token")) return params.get("token");
  const identity = params.get("identity") || `${publish ? "whip" : "whep"}-${Math.floor(Math.random() * 1e6)}`;
  const q = new URLSearchParams({ room, identity, publish: String(publish), subscribe: String(!publish) });
  const r = await fetch(`/dev/token?${q}`);
  if (!r.ok) throw new Error((await r.json()).detail);
  return (await r.json()).token;
}

// One offer/answer over HTTP, as RFC 9725 describes.
async function exchange(pc, url, bearer) {
  await pc.setLocalDescription(await pc.createOffer());
  const r = await fetch(url, {
    method: "POST",
    headers: { "Content-Type": "application/sdp", Authorization: `Bearer ${bearer}` },
    body: pc.localDescription.sdp,
  });
  if (r.status !== 201) {
    const body = await r.text();
    throw new Error(`${r.status}: ${body}`);
  }
  session.location = new URL(r.headers.get("Location"), location.href).href;
  await pc.setRemoteDescription({ type: "answer", sdp: await r.text() });
}

async function whipPublish() {
  status("starting");
  const media = await navigator.mediaDevices.getUserMedia({ audio: true, video: { width: 640, height: 480 } });
  document.getElementById("video").srcObject = media;
  const pc = new RTCPeerConnection();
  session.pc = pc;
  for (const track of media.getTracks()) {
    const init = { direction: "sendonly", streams: [media] };
    if (track.kind === "video" && params.get("simulcast") === "1") {
      init.sendEncodings = [
        { rid: "q", scaleResolutionDownBy: 4 },
        { rid: "h", scaleResolutionDownBy: 2 },
        { rid: "f" },
      ];
    }
    const tr = pc.addTransceiver(track, init);
    const codec = params.get("codec");
    if (track.kind === "video" && codec) {
      const caps = RTCRtpSender.getCapabilities("video").codecs;
      tr.setCodecPreferences([
        ...caps.filter((c) => c.mimeType.toLowerCase() === `video/${codec}`),
        ...caps.filter((c) => c.mimeType.toLowerCase() !== `video/${codec}`),
      ]);
    }
  }
  pc.onconnectionstatechange = () => status(pc.connectionState);
  await exchange(pc, `/whip/${encodeURIComponent(room)}`, await token(true));
}

async function whepPlay() {
  status("starting");
  const pc = new RTCPeerConnection();
  session.pc = pc;
  pc.addTransceiver("audio", { direction: "recvonly" });
  pc.addTransceiver("video", { direction: "recvonly" });
  const stream = new MediaStream();
  document.getElementById("video").srcObject = stream;
  pc.ontrack = (ev) => stream.addTrack(ev.track);
  pc.onconnectionstatechange = () => status(pc.connectionState);
  const who = params.get("participant");
  const url = `/whep/${encodeURIComponent(room)}` + (who ? `?participant=${encodeURIComponent(who)}` : "");
  await exchange(pc, url, await token(false));
}

async function stop() {
  if (session.location) await fetch(session.location, { method: "DELETE" });
  if (session.pc) session.pc.close();
  status("stopped");
}
window.stopSession = stop;

window.sfuStats = async function () {
  const out = { framesDecoded: 0, videoPacketsReceived: 0, audioPacketsReceived: 0, packetsLost: 0, framesEncoded: 0, audioPacketsSent: 0 };
  if (!session.pc) return out;
  (await session.pc.getStats()).forEach((s) => {
    if (s.type === "inbound-rtp") {
      out.packetsLost += s.packetsLost || 0;
      if (s.kind === "video") {
        out.framesDecoded += s.framesDecoded || 0;
        out.videoPacketsReceived += s.packetsReceived || 0;
      } else out.audioPacketsReceived += s.packetsReceived || 0;
    } else if (s.type === "outbound-rtp") {
      if (s.kind === "video") out.framesEncoded += s.framesEncoded || 0;
      else out.audioPacketsSent += s.packetsSent || 0;
    }
  });
  return out;
};

window.addEventListener("DOMContentLoaded", () => {
  const run = document.body.dataset.mode === "whip" ? whipPublish : whepPlay;
  document.getElementById("stop").onclick = stop;
  run().catch((e) => {
    session.error = String(e);
    status(`failed: ${e}`);
  });
});
