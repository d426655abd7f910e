// Where the app connects and with which token. The server is the page's own origin (the node
// serving the app); the token comes from `?token=` or, on a node in development mode, from its
// `GET /dev/token`.

/** The node's signaling URL: this page's origin, ws: or wss:. */
export function serverUrl() {
  const { protocol, host } = window.location;
  return `${protocol === "https:" ? "wss:" : "ws:"}//${host}`;
}

/** Query parameters of the page. */
export function params() {
  return new URLSearchParams(window.location.search);
}

/** A short random suffix, so two people who type the same name are two identities. */
function suffix() {
  const a = new Uint8Array(3);
  crypto.getRandomValues(a);
  return Array.from(a, (b) => b.toString(16).padStart(2, "0")).join("");
}

/**
 * A token for `room`: the page's `?token=` if it has one, else one from the node's development
 * endpoint for `name` (identity `name-xxxxxx`; `admin`: a host's, with roomAdmin). Throws an Error with a message for people.
 */
export async function fetchToken({ room, name, publish, admin }) {
  const given = params().get("token");
  if (given) return given;
  const base = (name || "guest").trim().slice(0, 64) || "guest";
  const q = new URLSearchParams({
    room,
    identity: `${base}-${suffix()}`,
    name: base,
    publish: publish ? "true" : "false",
    admin: admin ? "true" : "false",
  });
  const r = await fetch(`/dev/token?${q}`);
  if (r.status === 404) {
    throw new Error(
      "This node is not in development mode: open this page with ?token=… (a token your application mints).",
    );
  }
  if (!r.ok) {
    let detail = `${r.status}`;
    try {
      const p = await r.json();
      detail = p.detail || p.title || detail;
    } catch {
      /* not a problem body */
    }
    throw new Error(`No token: ${detail}`);
  }
  return (await r.json()).token;
}
