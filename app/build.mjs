// Builds the meeting app into dist/: index.html (the meeting), view.html (one video, for
// embedding), their bundles and LiveKit's stylesheet, each also gzipped. `node build.mjs` (npm run build).
import * as esbuild from "esbuild";
import { cpSync, mkdirSync, readFileSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { gzipSync } from "node:zlib";

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
// Gzipped copies, which the node sends to browsers that accept gzip (the bundle is 940 KB, 260
// KB gzipped).
for (const f of readdirSync(`${here}dist`)) {
  if (/\.(js|css|html)$/.test(f)) {
    writeFileSync(`${here}dist/${f}.gz`, gzipSync(readFileSync(`${here}dist/${f}`), { level: 9 }));
  }
}
console.log("app built into dist/");
