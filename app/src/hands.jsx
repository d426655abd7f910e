// Raise hand and host controls. LiveKit's protocol has no raised-hand message, so a raised
// hand is a data packet on topic `hand` to the room ({"raised": true|false}), sent again when
// someone joins (a late host learns who is waiting). A host (a token with roomAdmin) lists the
// raised hands and brings people on stage or back to the audience through the node's admin
// API (`POST /admin/rooms/R/participants/ID/permissions`, with the host's own token), which
// reaches the participant's client as a permission change.
import { useEffect, useRef, useState } from "react";
import { RoomEvent } from "livekit-client";
import {
  useDataChannel,
  useLocalParticipantPermissions,
  useParticipants,
  useRoomContext,
} from "@livekit/components-react";

const encode = (v) => new TextEncoder().encode(JSON.stringify(v));

/** Whether a token's claims grant roomAdmin (the payload only: the node checks signatures). */
export function isHost(token) {
  try {
    const b64 = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    return !!JSON.parse(atob(b64)).video?.roomAdmin;
  } catch {
    return false;
  }
}

async function setStage(room, identity, token, canPublish) {
  const path = `/admin/rooms/${encodeURIComponent(room)}/participants/${encodeURIComponent(identity)}/permissions`;
  const r = await fetch(path, {
    method: "POST",
    headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
    body: JSON.stringify({ can_publish: canPublish }),
  });
  if (!r.ok) {
    let detail = `${r.status}`;
    try {
      detail = (await r.json()).detail || detail;
    } catch {
      /* not a problem body */
    }
    throw new Error(detail);
  }
}

export function Hands({ token }) {
  const room = useRoomContext();
  const permissions = useLocalParticipantPermissions();
  const participants = useParticipants();
  const host = isHost(token);
  const onStage = !permissions || permissions.canPublish;
  const [raised, setRaised] = useState(false);
  const [hands, setHands] = useState(new Map()); // identity -> name
  const [error, setError] = useState(null);
  const mine = useRef(false);
  mine.current = raised;

  const { send } = useDataChannel("hand", (msg) => {
    if (!msg.from) return;
    let raisedNow = false;
    try {
      raisedNow = !!JSON.parse(new TextDecoder().decode(msg.payload)).raised;
    } catch {
      return;
    }
    const { identity, name } = msg.from;
    setHands((h) => {
      const next = new Map(h);
      if (raisedNow) next.set(identity, name || identity);
      else next.delete(identity);
      return next;
    });
  });

  const toggle = (up) => {
    setRaised(up);
    send(encode({ raised: up }), { reliable: true }).catch((e) => setError(e.message));
  };

  // Someone who joins learns of a hand that is up; on stage, the hand goes down.
  useEffect(() => {
    const again = () => {
      if (mine.current) send(encode({ raised: true }), { reliable: true }).catch(() => {});
    };
    room.on(RoomEvent.ParticipantConnected, again);
    return () => room.off(RoomEvent.ParticipantConnected, again);
  }, [room, send]);
  useEffect(() => {
    if (onStage && raised) toggle(false);
  }, [onStage]);

  const act = (identity, canPublish) => {
    setError(null);
    setStage(room.name, identity, token, canPublish)
      .then(() =>
        setHands((h) => {
          const next = new Map(h);
          next.delete(identity);
          return next;
        }),
      )
      .catch((e) => setError(`${identity}: ${e.message}`));
  };

  const others = participants.filter((p) => !p.isLocal && p.permissions?.canPublish !== false);
  return (
    <div className="hands">
      {!onStage && (
        <button className="lk-button hand-button" onClick={() => toggle(!raised)}>
          {raised ? "Lower hand" : "✋ Raise hand"}
        </button>
      )}
      {host && (hands.size > 0 || others.length > 0) && (
        <div className="host-panel">
          {[...hands].map(([identity, name]) => (
            <div key={identity} className="hand-row">
              ✋ {name}{" "}
              <button className="lk-button promote-button" data-identity={identity} onClick={() => act(identity, true)}>
                Bring on stage
              </button>
            </div>
          ))}
          {others.map((p) => (
            <div key={p.identity} className="stage-row">
              {p.name || p.identity}{" "}
              <button className="lk-button demote-button" data-identity={p.identity} onClick={() => act(p.identity, false)}>
                To audience
              </button>
            </div>
          ))}
        </div>
      )}
      {error && <div className="hand-error">{error}</div>}
    </div>
  );
}
