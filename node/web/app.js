// Demo client for the SFU's WebSocket signaling protocol (docs/signaling.md).
//
// Two peer connections, as the protocol prescribes: one we offer on to publish, one the
// server offers on to send us everyone else's tracks. Query parameters let tests drive the
// page: ?room=R&identity=I&autojoin=1&publish=0|1&simulcast=0|1&token=T&codec=vp8|h264&red=0|1
// &control=URL (ask the cluster's control plane which node to join).
// A draining node sends `migrate`: the page reconnects to the node it names, with the same
// token and the same camera, and publishes and subscribes again there.
// A node that dies (killed, crashed, unreachable) closes the WebSocket without `left`: the
// page shows "reconnecting" and tries again with backoff (see `reconnect`), placed by the
// control plane away from the lost node, or on the same node without &control.
// With &resume=1 the session is resumable: when its WebSocket breaks, the page first takes its
// session over on the same node (`join` with `resume`), keeping its peer connections, and joins
// again fully only if that fails (docs/signaling.md, "Resuming a session"); it leaves on
// `pagehide`, so that a closed tab does not wait in its room for a resume.
//
// Large rooms: tiles are ordered by who spoke last (`speakers` events), each tile tells the
// node the size it renders at (`track_settings`, so the node sends the simulcast layer that
// fits) and whether it is visible; a click pins a tile. The node's `publisher_layers` turns
// off simulcast layers nobody in the cluster watches (dynacast). ?tilewidth=PX sets the tile
// size (tests use it to render small).
//
// Stage and audience: a viewer (a token without canPublish) is in the audience. It sees the
// stage and how many watch (`participant_count`), and may raise its hand. A host (?admin=1,
// a token with roomAdmin) sees the raised hands and promotes or demotes; promoted, the page
// publishes on its existing connection (`permissions_changed`), demoted it stops.
// A node past its join rate answers 429: the page asks `/v1/admission` (or the control plane)
// first and comes back when told.

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
  permissions: null, // {can_publish, can_subscribe, admin}
  counts: null, // {stage, audience, raised_hands}
  hands: new Map(), // sid -> {identity, raised_ms}: the queue (hosts), or our own hand
  messages: {}, // messages received, by type (tests count them)
  busyRetries: 0, // times a join was told to come back later
  node: null, // id of the node the control plane placed us on (null if not placed)
  avoid: [], // nodes we lost while reconnecting, for the control plane to skip
  reconnecting: 0, // attempts of the reconnection under way (0: connected or never lost)
  reconnects: 0, // reconnections that succeeded
  lostAt: null, // when the connection was lost (ms since the epoch)
  lastReconnectMs: null, // how long the last reconnection took, loss to `joined`
  resuming: false, // a resume of our session is under way (&resume=1)
  resumes: 0, // resumes that succeeded
  lastResumeMs: null, // how long the last resume took, loss to `resumed`
  stateBeforeLoss: null, // the state to go back to once resumed
  cameraOpens: 0, // getUserMedia calls (a reconnection reuses the camera: no new prompt)
  marks: {}, // free-form values tests set in the page and read back through sfuStats
  recordings: new Set(), // ids of the room's recordings running (told by `recording`)
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
  const admin = params.get("admin") === "1" || ($("admin") && $("admin").checked);
  const q = new URLSearchParams({ room, identity, publish: String(publish), subscribe: "true", admin: String(admin) });
  const r = await fetch(`/dev/token?${q}`);
  if (!r.ok) throw new Error(`no token: ${(await r.json()).detail}`);
  return (await r.json()).token;
}

// Whether sessions are resumable (&resume=1).
const RESUMABLE = params.get("resume") === "1";

function send(msg) {
  // Nothing to send on while a resume opens its connection.
  if (sfu.ws && sfu.ws.readyState === WebSocket.OPEN) sfu.ws.send(JSON.stringify(msg));
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
    if (sfu.permissions) showRole();
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
    sfu.cameraOpens += 1;
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

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// Waits as a 429 answer says (Retry-After, in seconds), plus up to half as long at random so
// that a crowd told to wait does not come back in the same instant.
async function comeBackLater(r) {
  const secs = Number(r.headers.get("retry-after")) || 1;
  sfu.busyRetries += 1;
  setState(`busy, retrying in ${secs}s`);
  await sleep(secs * 1000 * (1 + Math.random() / 2));
}

// Asks the control plane which node to join, skipping the nodes in `avoid`: {node, url}.
async function place(control, token, avoid) {
  for (;;) {
    const r = await fetch(`${control.replace(/\/$/, "")}/v1/join`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ token, avoid }),
    });
    if (r.status === 429) {
      await comeBackLater(r);
      continue;
    }
    if (!r.ok) throw new Error(`placement: ${(await r.json()).detail}`);
    return await r.json();
  }
}

// Waits until the node admits joins (a refused WebSocket upgrade does not tell a page why).
async function admitted(base) {
  for (;;) {
    const r = await fetch(`${base.replace(/\/$/, "")}/v1/admission`);
    if (r.status !== 429) return;
    await comeBackLater(r);
  }
}

// Stage and audience.
function showRole() {
  const p = sfu.permissions || {};
  $("stagebar").hidden = false;
  $("role").textContent = p.can_publish ? "on stage" : "in the audience";
  $("hand").hidden = !!p.can_publish;
  const mine = sfu.self && sfu.hands.has(sfu.self.sid);
  $("hand").textContent = mine ? "Lower hand" : "Raise hand";
  $("hostpanel").hidden = !p.admin;
  for (const [sid, q] of sfu.participants) {
    if (q.tile) {
      let b = q.tile.querySelector("button.demote");
      if (p.admin && sid !== "self" && q.stage) {
        if (!b) {
          b = document.createElement("button");
          b.className = "demote";
          b.textContent = "Demote";
          b.onclick = (ev) => {
            ev.stopPropagation();
            send({ type: "update_participant", identity: q.identity, can_publish: false });
          };
          q.tile.append(b);
        }
      } else if (b) {
        b.remove();
      }
    }
  }
}

function showCounts() {
  const c = sfu.counts;
  if (!c) return;
  $("counts").textContent = `${c.stage} on stage, ${c.audience} watching, ${c.raised_hands} hands up`;
}

function showHands() {
  const list = $("hands");
  list.textContent = "";
  const queue = [...sfu.hands.entries()].sort((a, b) => a[1].raised_ms - b[1].raised_ms);
  for (const [, h] of queue) {
    const li = document.createElement("li");
    li.textContent = `${h.identity} `;
    const b = document.createElement("button");
    b.textContent = "Promote";
    b.onclick = () => send({ type: "update_participant", identity: h.identity, can_publish: true });
    li.append(b);
    list.append(li);
  }
  showRole();
}

// Promoted: publish on the existing connection. Demoted: the node unpublished our tracks.
async function onPermissions(p) {
  const was = sfu.permissions && sfu.permissions.can_publish;
  sfu.permissions = p;
  log(p.can_publish ? "you are on stage" : "you are in the audience");
  if (p.can_publish && !was) {
    await publish(params.get("simulcast") !== "0", params.get("codec"));
  } else if (!p.can_publish && was) {
    if (sfu.pub) sfu.pub.close();
    sfu.pub = null;
    if (sfu.media) sfu.media.getTracks().forEach((t) => t.stop());
    sfu.media = null;
    removeTile("self");
  }
  showRole();
}

// Leaves the current node without leaving the room, to reconnect elsewhere.
function disconnect() {
  if (sfu.ws) {
    sfu.ws.onclose = null;
    sfu.ws.close();
  }
  sfu.ws = null;
  closePeers();
}

// Closes the peer connections and forgets the room's participants.
function closePeers() {
  for (const pc of [sfu.pub, sfu.sub]) if (pc) pc.close();
  sfu.pub = sfu.sub = null;
  sfu.sections.clear();
  for (const sid of [...sfu.participants.keys()]) if (sid !== "self") removeTile(sid);
}

// Reconnection after a lost node. Exponential backoff with full jitter: attempt n waits a
// random time below min(10 s, 0.5 s * 2^(n-1)), so the first comes within half a second (the
// viewers' bound is 3 s) while the thousand clients of a dead node spread out instead of
// arriving at the control plane and the surviving nodes in the same instant.
const RECONNECT_FIRST_MS = 500;
const RECONNECT_MAX_MS = 10_000;

function reconnect(room, identity, withMedia, token) {
  if (sfu.node && !sfu.avoid.includes(sfu.node)) sfu.avoid.push(sfu.node);
  if (sfu.lostAt === null) sfu.lostAt = Date.now();
  disconnect();
  sfu.reconnecting += 1;
  const ceiling = Math.min(RECONNECT_MAX_MS, RECONNECT_FIRST_MS * 2 ** (sfu.reconnecting - 1));
  const wait = Math.random() * ceiling;
  setState("reconnecting");
  log(`connection lost; reconnecting (attempt ${sfu.reconnecting}) in ${Math.round(wait)} ms`);
  setTimeout(() => {
    // Without a control plane the same node is the only one we know.
    const base = params.get("control") ? null : sfu.url;
    join(room, identity, withMedia, base, token).catch((e) => {
      log(`reconnecting failed: ${e}`);
      reconnect(room, identity, withMedia, token);
    });
  }, wait);
}

// Takes our session over on the same node after its WebSocket broke, keeping the peer
// connections; if that fails (the node is gone, or answers too late), joins again fully.
const RESUME_WAIT_MS = 3000;
function resume(room, identity, withMedia, token) {
  if (sfu.lostAt === null) sfu.lostAt = Date.now();
  sfu.stateBeforeLoss = sfu.state;
  sfu.resuming = true;
  sfu.ws = null;
  setState("resuming");
  log("signaling connection lost; resuming the session");
  const giveUp = () => {
    sfu.resuming = false;
    reconnect(room, identity, withMedia, token);
  };
  setTimeout(() => {
    if (!sfu.resuming) return;
    // A node that does not answer (gone without refusing connections): give up.
    if (sfu.ws) sfu.ws.close(); // its onclose gives up
    else giveUp();
  }, RESUME_WAIT_MS);
  join(room, identity, withMedia, sfu.url, token, sfu.self.sid).catch((e) => {
    log(`resuming failed: ${e}`);
    if (sfu.resuming) giveUp();
  });
}

async function join(room, identity, withMedia, base, token, resumeSid) {
  if (!sfu.reconnecting && !resumeSid) setState("connecting");
  token = token || (await getToken(room, identity, withMedia));
  if (!resumeSid) sfu.node = null;
  if (!base && params.get("control")) {
    const placed = await place(params.get("control"), token, sfu.avoid);
    base = placed.url;
    sfu.node = placed.node;
  }
  base = base || location.origin;
  await admitted(base);
  if (resumeSid && !sfu.resuming) return; // given up meanwhile
  sfu.url = base;
  const url = new URL(base);
  const proto = url.protocol === "https:" ? "wss" : "ws";
  const ws = new WebSocket(`${proto}://${url.host}/rtc?access_token=${encodeURIComponent(token)}`);
  sfu.ws = ws;
  let opened = false;
  ws.onopen = () => {
    opened = true;
    if (resumeSid) send({ type: "join", resumable: true, resume: resumeSid });
    else send(RESUMABLE ? { type: "join", resumable: true } : { type: "join" });
  };
  ws.onclose = () => {
    if (sfu.ws !== ws) return; // replaced by a newer connection
    if (sfu.state === "left") return; // the node ended the session on purpose
    if (resumeSid && sfu.resuming) {
      // The resume's own connection failed: join again fully.
      sfu.resuming = false;
      reconnect(room, identity, withMedia, token);
      return;
    }
    if (RESUMABLE && opened && sfu.self && !sfu.reconnecting && !sfu.resuming && sfu.state !== "connecting") {
      resume(room, identity, withMedia, token);
      return;
    }
    if (sfu.reconnecting || (opened && sfu.state !== "connecting")) {
      reconnect(room, identity, withMedia, token);
      return;
    }
    if (!opened && sfu.state === "connecting") {
      // Refused before the upgrade (most likely too many joins at once): come back.
      sfu.busyRetries += 1;
      setTimeout(() => join(room, identity, withMedia, base, token), 1000 + Math.random() * 1000);
      return;
    }
    setState(sfu.state === "left" ? "left" : "disconnected");
  };
  ws.onmessage = async (ev) => {
    const msg = JSON.parse(ev.data);
    sfu.messages[msg.type] = (sfu.messages[msg.type] || 0) + 1;
    try {
      switch (msg.type) {
        case "resumed":
          sfu.resuming = false;
          sfu.resumes += 1;
          sfu.lastResumeMs = Date.now() - sfu.lostAt;
          sfu.lostAt = null;
          setState(sfu.stateBeforeLoss || "joined");
          log(`resumed after ${sfu.lastResumeMs} ms`);
          // Sizes reported while the connection was down were not sent: report them again.
          for (const sid of sfu.participants.keys()) reportSize(sid);
          break;
        case "joined":
          if (sfu.resuming) {
            // Nothing was left to resume: a new session, on new peer connections.
            log("nothing to resume: joined again");
            sfu.resuming = false;
            sfu.lostAt = null;
            closePeers();
          }
          if (sfu.reconnecting) {
            sfu.reconnects += 1;
            sfu.lastReconnectMs = Date.now() - sfu.lostAt;
            log(`reconnected to ${sfu.url} after ${sfu.lastReconnectMs} ms`);
          }
          sfu.reconnecting = 0;
          sfu.lostAt = null;
          sfu.avoid = [];
          sfu.self = msg.participant;
          for (const p of msg.participants) sfu.participants.set(p.sid, { identity: p.identity, stage: p.stage, stream: new MediaStream(), tile: null });
          sfu.permissions = msg.permissions;
          sfu.counts = msg.counts;
          for (const h of msg.hands || []) sfu.hands.set(h.sid, h);
          setState("joined");
          log(`joined ${msg.room} as ${msg.participant.identity} with ${msg.participants.length} others`);
          showRole();
          showCounts();
          showHands();
          if (withMedia && msg.permissions.can_publish) await publish(params.get("simulcast") !== "0", params.get("codec"));
          break;
        case "participant_count":
          sfu.counts = msg;
          showCounts();
          break;
        case "permissions_changed":
          await onPermissions(msg);
          break;
        case "participant_updated": {
          const p = sfu.participants.get(msg.participant.sid);
          if (p) p.stage = msg.participant.stage;
          showRole();
          break;
        }
        case "hand_raised":
          sfu.hands.set(msg.hand.sid, msg.hand);
          showHands();
          break;
        case "hand_lowered":
          sfu.hands.delete(msg.participant);
          showHands();
          break;
        case "publish_answer":
          await sfu.pub.setRemoteDescription({ type: "answer", sdp: msg.sdp });
          setState("publishing");
          break;
        case "offer":
          await onOffer(msg);
          break;
        case "participant_joined": {
          const known = sfu.participants.get(msg.participant.sid);
          if (known) known.stage = msg.participant.stage;
          else sfu.participants.set(msg.participant.sid, { identity: msg.participant.identity, stage: msg.participant.stage, stream: new MediaStream(), tile: null });
          log(`${msg.participant.identity} joined`);
          showRole();
          break;
        }
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
        case "recording":
          // Everyone is shown that the room (or a track) is being recorded.
          if (msg.active) sfu.recordings.add(msg.id);
          else sfu.recordings.delete(msg.id);
          $("recording").hidden = sfu.recordings.size === 0;
          log(`${msg.kind} recording ${msg.id} ${msg.active ? "started" : "ended"}`);
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
    layerFramesEncoded: {},
    nackCount: 0,
    retransmittedPacketsSent: 0,
    speakers: sfu.speakers.map((sid) => (sfu.participants.get(sid) || {}).identity || sid),
    // The simulcast layers the node last asked this publisher to send (dynacast).
    publisherLayers: sfu.publisherLayers ? sfu.publisherLayers.layers : null,
    left: sfu.left,
    unpublished: sfu.unpublished,
    permissions: sfu.permissions,
    counts: sfu.counts,
    hands: [...sfu.hands.values()].map((h) => h.identity),
    messages: sfu.messages,
    busyRetries: sfu.busyRetries,
    node: sfu.node,
    reconnects: sfu.reconnects,
    lastReconnectMs: sfu.lastReconnectMs,
    resumes: sfu.resumes,
    lastResumeMs: sfu.lastResumeMs,
    cameraOpens: sfu.cameraOpens,
    marks: sfu.marks,
    recordings: [...sfu.recordings],
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
        out.layerFramesEncoded[s.rid || "-"] = s.framesEncoded || 0;
        // Repair of loss on the way to the node: NACKs the node sent, packets sent again.
        out.nackCount += s.nackCount || 0;
        out.retransmittedPacketsSent += s.retransmittedPacketsSent || 0;
      }
      if (s.type === "candidate-pair" && s.nominated && s.availableOutgoingBitrate) {
        out.availableOutgoingBitrate = s.availableOutgoingBitrate;
      }
    });
  }
  return out;
};

// A resumable session leaves when its tab goes, rather than wait in its room for a resume.
window.addEventListener("pagehide", () => {
  if (RESUMABLE && sfu.self) send({ type: "leave" });
});

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
  $("hand").onclick = () => {
    const up = sfu.self && sfu.hands.has(sfu.self.sid);
    send({ type: up ? "lower_hand" : "raise_hand" });
  };
  if (params.get("admin") === "1") $("admin").checked = true;
  if (params.get("tilewidth")) {
    $("grid").style.gridTemplateColumns = `repeat(auto-fill, ${Number(params.get("tilewidth"))}px)`;
  }
  if (params.get("autojoin") === "1") start(params.get("publish") !== "0");
});
