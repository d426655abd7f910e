// Demo client for the SFU's WebSocket signaling protocol (docs/signaling.md).
//
// Two peer connections, as the protocol prescribes: one we offer on to publish, one the
// server offers on to send us everyone else's tracks. Query parameters let tests drive the
// page: ?room=R&identity=I&autojoin=1&publish=0|1&simulcast=0|1&token=T&codec=vp8|h264&red=0|1
// &control=URL (ask the cluster's control plane which node to join).
// A draining node sends `migrate`: the page reconnects to the node it names, with the same
// token and the same camera, and publishes and subscribes again there.
//
// Large rooms: tiles are ordered by who spoke last (`speakers` events), each tile tells the
// node the size it renders at (`track_settings`, so the node sends the simulcast layer that
// fits) and whether it is visible; a click pins a tile. The node's `publisher_layers` turns
// off simulcast layers nobody in the cluster watches (dynacast). ?tilewidth=PX sets the tile
// size (tests use it to render small).

"use strict";

const params = new URLSearchParams(location.search);
const $ = (id) => document.getElementById(id);

// State the tests read (window.sfu).
const sfu = {
  state: "idle",
  errors: [],
  participants: new Map(), // sid -> {identity, tile, stream}
  sections: new Map(), // mid -> {track, participant}
  pub: null,
  sub: null,
  ws: null,
  self: null,
  url: location.origin, // the node we are connected to
  media: null, // our camera and microphone, kept across migrations
  migrations: 0,
  tracks: new Map(), // track sid -> {participant, kind}
  speakers: [], // participant sids, most recent speaker first
  pinned: new Set(), // participant sids
  publisherLayers: null, // last `publisher_layers` received
  left: [], // identities of participants that left, in order (tests read them)
  unpublished: [], // identities of the publishers of tracks that were unpublished, in order
};
window.sfu = sfu;

function log(msg) {
  const line = `${new Date().toISOString().slice(11, 23)} ${msg}`;
  console.log(line);
  const el = $("log");
  if (el) {
    el.textContent = (line + "\n" + el.textContent).slice(0, 4000);
  }
}

function setState(s) {
  sfu.state = s;
  $("status").textContent = s;
}

async function getToken(room, identity, publish) {
  if (params.get("token")) return params.get("token");
  const q = new URLSearchParams({ room, identity, publish: String(publish), subscribe: "true" });
  const r = await fetch(`/dev/token?${q}`);
  if (!r.ok) throw new Error(`no token: ${(await r.json()).detail}`);
  return (await r.json()).token;
}

function send(msg) {
  sfu.ws.send(JSON.stringify(msg));
}

// Tells the node how large each video of a participant is shown (0 x 0: not visible).
const reportTimers = new Map();
function reportSize(sid) {
  clearTimeout(reportTimers.get(sid));
  reportTimers.set(sid, setTimeout(() => {
    const p = sfu.participants.get(sid);
    if (!p || !p.tile || !sfu.ws || sfu.ws.readyState !== WebSocket.OPEN) return;
    const rect = p.tile.getBoundingClientRect();
    const visible = p.visible !== false && rect.width > 0;
    for (const [track, t] of sfu.tracks) {
      if (t.participant !== sid || t.kind !== "video") continue;
      send({
        type: "track_settings",
        track,
        width: Math.round(rect.width * devicePixelRatio),
        height: Math.round(rect.height * devicePixelRatio),
        enabled: visible,
        pinned: sfu.pinned.has(sid),
      });
    }
  }, 250));
}

const resizeObserver = new ResizeObserver((entries) => {
  for (const e of entries) reportSize(e.target.dataset.sid);
});
const visibilityObserver = new IntersectionObserver((entries) => {
  for (const e of entries) {
    const p = sfu.participants.get(e.target.dataset.sid);
    if (p) p.visible = e.isIntersecting;
    reportSize(e.target.dataset.sid);
  }
});

function tileFor(sid, label) {
  let p = sfu.participants.get(sid);
  if (!p) {
    p = { identity: label, stream: new MediaStream(), tile: null };
    sfu.participants.set(sid, p);
  }
  if (!p.tile) {
    const tile = document.createElement("div");
    tile.className = "tile";
    tile.dataset.sid = sid;
    const video = document.createElement("video");
    video.autoplay = true;
    video.playsInline = true;
    video.srcObject = p.stream;
    const name = document.createElement("span");
    name.textContent = label;
    tile.append(video, name);
    $("grid").append(tile);
    p.tile = tile;
    if (sid !== "self") {
      tile.title = "click to pin";
      tile.onclick = () => {
        if (sfu.pinned.has(sid)) sfu.pinned.delete(sid);
        else sfu.pinned.add(sid);
        tile.classList.toggle("pinned", sfu.pinned.has(sid));
        orderTiles();
        reportSize(sid);
      };
      resizeObserver.observe(tile);
      visibilityObserver.observe(tile);
    }
    orderTiles();
  }
  return p;
}

// Pinned first, then by who spoke last, then in join order.
function orderTiles() {
  let i = 1;
  for (const sid of sfu.pinned) {
    const p = sfu.participants.get(sid);
    if (p && p.tile) p.tile.style.order = i++;
  }
  for (const sid of sfu.speakers) {
    const p = sfu.participants.get(sid);
    if (p && p.tile && !sfu.pinned.has(sid)) p.tile.style.order = i++;
  }
  for (const [sid, p] of sfu.participants) {
    if (p.tile && sid !== "self" && !sfu.pinned.has(sid) && !sfu.speakers.includes(sid)) {
      p.tile.style.order = i++;
    }
  }
}

function onSpeakers(msg) {
  const active = msg.speakers.map((s) => s.participant);
  sfu.speakers = [...active, ...sfu.speakers.filter((s) => !active.includes(s))];
  for (const [sid, p] of sfu.participants) {
    if (p.tile) p.tile.classList.toggle("speaking", active.includes(sid));
  }
  orderTiles();
}

// Dynacast: send only the simulcast layers someone watches.
async function onPublisherLayers(msg) {
  sfu.publisherLayers = msg;
  if (!sfu.pub) return;
  for (const sender of sfu.pub.getSenders()) {
    if (!sender.track || sender.track.id !== msg.name) continue;
    const params = sender.getParameters();
    if (!params.encodings || params.encodings.length < 2) continue;
    let changed = false;
    for (const e of params.encodings) {
      const active = msg.layers.includes(e.rid);
      if (e.active !== active) {
        e.active = active;
        changed = true;
      }
    }
    if (changed) {
      await sender.setParameters(params);
      log(`sending layers ${msg.layers.join(",") || "none"}`);
    }
  }
}

async function shareScreen() {
  const screen = await navigator.mediaDevices.getDisplayMedia({ video: true });
  const track = screen.getVideoTracks()[0];
  sfu.pub.addTransceiver(track, { direction: "sendonly", streams: [screen] });
  const offer = await sfu.pub.createOffer();
  await sfu.pub.setLocalDescription(offer);
  send({ type: "publish", sdp: sfu.pub.localDescription.sdp, sources: { [track.id]: "screen_share" } });
}

function removeTile(sid) {
  const p = sfu.participants.get(sid);
  if (p && p.tile) p.tile.remove();
  sfu.participants.delete(sid);
}

async function publish(simulcast, codec) {
  if (!sfu.media) {
    sfu.media = await navigator.mediaDevices.getUserMedia({
      audio: true,
      video: { width: 640, height: 480, frameRate: 30 },
    });
    const self = tileFor("self", "me");
    self.tile.querySelector("video").muted = true;
    sfu.media.getTracks().forEach((t) => self.stream.addTrack(t));
  }
  const media = sfu.media;

  const pc = new RTCPeerConnection();
  sfu.pub = pc;
  for (const track of media.getTracks()) {
    const init = { direction: "sendonly", streams: [media] };
    if (track.kind === "video" && simulcast) {
      init.sendEncodings = [
        { rid: "q", scaleResolutionDownBy: 4, maxBitrate: 150_000 },
        { rid: "h", scaleResolutionDownBy: 2, maxBitrate: 500_000 },
        { rid: "f", maxBitrate: 1_500_000 },
      ];
    }
    const tr = pc.addTransceiver(track, init);
    // Redundant audio (RED) when the browser has it: a lost packet's audio rides in the next.
    if (track.kind === "audio" && params.get("red") !== "0" && tr.setCodecPreferences) {
      const caps = RTCRtpSender.getCapabilities("audio").codecs;
      const red = caps.filter((c) => c.mimeType.toLowerCase() === "audio/red");
      const rest = caps.filter((c) => c.mimeType.toLowerCase() !== "audio/red");
      if (red.length) tr.setCodecPreferences([...red, ...rest]);
    }
    if (track.kind === "video" && codec && tr.setCodecPreferences) {
      const caps = RTCRtpSender.getCapabilities("video").codecs;
      const wanted = caps.filter((c) => c.mimeType.toLowerCase() === `video/${codec}`);
      const rest = caps.filter((c) => c.mimeType.toLowerCase() !== `video/${codec}`);
      if (wanted.length) tr.setCodecPreferences([...wanted, ...rest]);
    }
  }
  pc.onconnectionstatechange = () => log(`publisher ${pc.connectionState}`);
  const offer = await pc.createOffer();
  await pc.setLocalDescription(offer);
  send({ type: "publish", sdp: pc.localDescription.sdp });
}

async function onOffer(msg) {
  if (!sfu.sub) {
    const pc = new RTCPeerConnection();
    sfu.sub = pc;
    pc.onconnectionstatechange = () => log(`subscriber ${pc.connectionState}`);
    pc.ontrack = (ev) => {
      const section = sfu.sections.get(ev.transceiver.mid);
      const sid = section ? section.participant : "unknown";
      if (section) sfu.tracks.set(section.track, { participant: sid, kind: ev.track.kind });
      const known = sfu.participants.get(sid);
      const p = tileFor(sid, known ? known.identity : sid);
      p.stream.getTracks()
        .filter((t) => t.kind === ev.track.kind)
        .forEach((t) => p.stream.removeTrack(t));
      p.stream.addTrack(ev.track);
      log(`receiving ${ev.track.kind} of ${p.identity}`);
      if (ev.track.kind === "video") reportSize(sid);
    };
  }
  for (const s of msg.tracks) sfu.sections.set(s.mid, s);
  await sfu.sub.setRemoteDescription({ type: "offer", sdp: msg.sdp });
  const answer = await sfu.sub.createAnswer();
  await sfu.sub.setLocalDescription(answer);
  send({ type: "answer", sdp: sfu.sub.localDescription.sdp });
}

// Asks the control plane which node to join.
async function place(control, token) {
  const r = await fetch(`${control.replace(/\/$/, "")}/v1/join`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ token }),
  });
  if (!r.ok) throw new Error(`placement: ${(await r.json()).detail}`);
  return (await r.json()).url;
}

// Leaves the current node without leaving the room, to reconnect elsewhere.
function disconnect() {
  if (sfu.ws) {
    sfu.ws.onclose = null;
    sfu.ws.close();
  }
  for (const pc of [sfu.pub, sfu.sub]) if (pc) pc.close();
  sfu.pub = sfu.sub = sfu.ws = null;
  sfu.sections.clear();
  for (const sid of [...sfu.participants.keys()]) if (sid !== "self") removeTile(sid);
}

async function join(room, identity, withMedia, base, token) {
  setState("connecting");
  token = token || (await getToken(room, identity, withMedia));
  if (!base && params.get("control")) base = await place(params.get("control"), token);
  base = base || location.origin;
  sfu.url = base;
  const url = new URL(base);
  const proto = url.protocol === "https:" ? "wss" : "ws";
  const ws = new WebSocket(`${proto}://${url.host}/rtc?access_token=${encodeURIComponent(token)}`);
  sfu.ws = ws;
  ws.onopen = () => send({ type: "join" });
  ws.onclose = () => setState(sfu.state === "left" ? "left" : "disconnected");
  ws.onmessage = async (ev) => {
    const msg = JSON.parse(ev.data);
    try {
      switch (msg.type) {
        case "joined":
          sfu.self = msg.participant;
          for (const p of msg.participants) sfu.participants.set(p.sid, { identity: p.identity, stream: new MediaStream(), tile: null });
          setState("joined");
          log(`joined ${msg.room} as ${msg.participant.identity} with ${msg.participants.length} others`);
          if (withMedia) await publish(params.get("simulcast") !== "0", params.get("codec"));
          break;
        case "publish_answer":
          await sfu.pub.setRemoteDescription({ type: "answer", sdp: msg.sdp });
          setState("publishing");
          break;
        case "offer":
          await onOffer(msg);
          break;
        case "participant_joined":
          sfu.participants.set(msg.participant.sid, { identity: msg.participant.identity, stream: new MediaStream(), tile: null });
          log(`${msg.participant.identity} joined`);
          break;
        case "participant_left":
          sfu.left.push((sfu.participants.get(msg.participant) || {}).identity || msg.participant);
          log(`${(sfu.participants.get(msg.participant) || {}).identity || msg.participant} left`);
          removeTile(msg.participant);
          break;
        case "track_published":
          log(`${msg.track.kind} track ${msg.track.sid} published`);
          break;
        case "track_unpublished":
          sfu.unpublished.push((sfu.participants.get(msg.participant) || {}).identity || msg.participant);
          break;
        case "error":
          sfu.errors.push(msg);
          log(`error ${msg.code}: ${msg.message}`);
          break;
        case "left":
          if (sfu.state !== "migrating") {
            setState("left");
            log(`left: ${msg.reason}`);
          }
          break;
        case "track_muted":
          log(`track ${msg.track} ${msg.muted ? "muted" : "unmuted"}`);
          break;
        case "speakers":
          onSpeakers(msg);
          break;
        case "publisher_layers":
          await onPublisherLayers(msg);
          break;
        case "migrate":
          if (sfu.state === "migrating" || !msg.url) break;
          log(`moving to ${msg.url}: ${msg.reason}`);
          setState("migrating");
          sfu.migrations += 1;
          disconnect();
          await join(room, identity, withMedia, msg.url, token);
          break;
      }
    } catch (e) {
      sfu.errors.push({ code: "client", message: String(e) });
      log(`client error: ${e}`);
    }
  };
}

// Sums inbound media statistics of the subscriber connection (used by the tests).
window.sfuStats = async function () {
  const out = {
    framesDecoded: 0,
    videoPacketsReceived: 0,
    audioPacketsReceived: 0,
    packetsLost: 0,
    videoTracks: 0,
    migrations: sfu.migrations,
    url: sfu.url,
    frameHeight: 0,
    // Publisher side: bytes sent per simulcast RID (dynacast turns layers off).
    layerBytesSent: {},
    speakers: sfu.speakers.map((sid) => (sfu.participants.get(sid) || {}).identity || sid),
    // The simulcast layers the node last asked this publisher to send (dynacast).
    publisherLayers: sfu.publisherLayers ? sfu.publisherLayers.layers : null,
    left: sfu.left,
    unpublished: sfu.unpublished,
  };
  for (const pc of [sfu.sub]) {
    if (!pc) continue;
    const stats = await pc.getStats();
    stats.forEach((s) => {
      if (s.type !== "inbound-rtp") return;
      out.packetsLost += s.packetsLost || 0;
      if (s.kind === "audio") out.audioPacketsLost = (out.audioPacketsLost || 0) + (s.packetsLost || 0);
      if (s.kind === "video") {
        out.videoBytesReceived = (out.videoBytesReceived || 0) + (s.bytesReceived || 0);
        out.videoTracks += 1;
        out.framesDecoded += s.framesDecoded || 0;
        out.videoPacketsReceived += s.packetsReceived || 0;
        out.frameHeight = Math.max(out.frameHeight, s.frameHeight || 0);
      } else if (s.kind === "audio") {
        out.audioPacketsReceived += s.packetsReceived || 0;
      }
    });
  }
  if (sfu.pub) {
    const stats = await sfu.pub.getStats();
    stats.forEach((s) => {
      if (s.type === "outbound-rtp" && s.kind === "video") {
        out.layerBytesSent[s.rid || "-"] = s.bytesSent || 0;
      }
      if (s.type === "candidate-pair" && s.nominated && s.availableOutgoingBitrate) {
        out.availableOutgoingBitrate = s.availableOutgoingBitrate;
      }
    });
  }
  return out;
};

window.addEventListener("DOMContentLoaded", () => {
  $("room").value = params.get("room") || "demo";
  $("identity").value = params.get("identity") || `guest-${Math.floor(Math.random() * 10000)}`;
  const start = (withMedia) => {
    $("controls").hidden = true;
    join($("room").value, $("identity").value, withMedia).catch((e) => {
      setState("failed");
      sfu.errors.push({ code: "client", message: String(e) });
      log(String(e));
    });
  };
  $("join").onclick = () => start(true);
  $("view").onclick = () => start(false);
  $("screen").onclick = () => shareScreen().catch((e) => log(`screen share: ${e}`));
  if (params.get("tilewidth")) {
    $("grid").style.gridTemplateColumns = `repeat(auto-fill, ${Number(params.get("tilewidth"))}px)`;
  }
  if (params.get("autojoin") === "1") start(params.get("publish") !== "0");
});
