// Builds the meeting app into dist/: index.html (the meeting), view.html (one video, for
// embedding), their bundles and LiveKit's stylesheet. `node build.mjs` (npm run build).
import * as esbuild from "esbuild";
import { cpSync, mkdirSync, rmSync } from "node:fs";

const here = new URL(".", import.meta.url).pathname;
rmSync(`${here}dist`, { recursive: true, force: true });
mkdirSync(`${here}dist`, { recursive: true });
await esbuild.build({
  entryPoints: { meeting: `${here}src/meeting.jsx`, view: `${here}src/view.js` },
  outdir: `${here}dist`,
  bundle: true,
  minify: true,
  sourcemap: true,
  format: "esm",
  target: ["chrome110", "firefox115", "safari16"],
  jsx: "automatic",
  define: { "process.env.NODE_ENV": '"production"' },
  logLevel: "warning",
});
cpSync(`${here}public`, `${here}dist`, { recursive: true });
console.log("app built into dist/");
